"""Error types of the io layer, and URI redaction for messages.

Three kinds of failure, handled in three places:

- ``RowError``: one row's problem (missing object, corrupt image, bad mask...). It never stops
  the job: ``prepare_row`` / ``finish_row`` turn it into a result row with ``status="error"``,
  ``error_kind`` (a short stable code, listed in ``KINDS``) and ``error`` (a sentence).
- ``ManifestError``: the manifest's schema is unusable (a required column is missing or has the
  wrong type). Raised before any work starts.
- ``SettingsError``: an option value is invalid. Raised before any work starts.

Messages name what failed and where (column, URI) but never credentials: every URI goes
through ``redact_uri`` first (user:password@ and query strings such as presigned-URL
signatures are removed).
"""

from __future__ import annotations

import re

# Stable machine codes for results' error_kind (and RowError.kind); users filter on these.
KINDS = {
    "bad_row": "the row itself is unusable (null id, no image, no mask source, bad seed)",
    "not_found": "the object does not exist (404 / NoSuchKey / no such file)",
    "access_denied": "the object exists but cannot be read or written (403 / permission)",
    "uri_not_allowed": "a URI whose scheme is not allowed (--allowed-schemes), a chained '::' URL, or one with user:password@",
    "io_error": "a storage failure that persisted after retries, or a non-retryable one",
    "empty_input": "zero bytes",
    "not_an_image": "bytes are not a known image format (text, HTML, random bytes)",
    "truncated": "an image whose data ends early",
    "corrupt_image": "an image with a known signature that does not decode",
    "empty_image": "an image with zero width or height",
    "too_large": "an image over the pixel limit (decompression bomb guard), refused before decoding",
    "mask_size_mismatch": "mask size differs from the image size and resizing was not asked for",
    "bad_mask": "a mask that decodes but cannot be used",
    "bad_boxes": "boxes that are not four finite numbers with x0<x1, y0<y1 inside the image",
    "bad_rle": "a COCO RLE that is malformed or of the wrong size",
    "bad_result": "the model output for the row has the wrong shape or dtype",
    "write_failed": "encoding the output image failed (a failed write stops the job instead, see OutputWriteError)",
    "prepare_failed": "an unexpected failure while preparing the row (the message names it)",
    "finish_failed": "an unexpected failure while pasting back the result",
    "detector_error": "the mask detector (--mask-from) failed on this row's image (the message names the error)",
    "source_changed": "the image object changed (size or content) between prepare and finish reading it",
    # Written by the job (jobs/) rather than by a row stage:
    "missing_id": "the manifest row's id is null or empty (recorded under a name built from its file and row)",
    "duplicate_id": "the id appears more than once in the manifest; none of its rows is processed",
    "model_error": "the model failed on this row (the batch was retried row by row; the message names the error)",
    "worker_crash": "the model worker died each time it processed this row (after --max-crash-retries passes)",
}


class RowError(Exception):
    """One row's problem; never fatal to the job."""

    def __init__(self, kind: str, message: str):
        if kind not in KINDS:
            raise ValueError(f"unknown RowError kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def __reduce__(self):  # keep kind/message across pickling (Ray moves exceptions between processes)
        return (RowError, (self.kind, self.message))


class OutputWriteError(Exception):
    """Writing to the output failed after retries (permission denied, disk full, bucket policy...).

    Not a row's problem: the row is not recorded at all (so it is redone on the next run), and the job
    stops with this message instead of turning every later row into an error."""


class ManifestError(ValueError):
    """Schema problem in a manifest: fail fast, message names the column and what was found."""


class SettingsError(ValueError):
    """A bad option value, with one clear line saying which option and why."""


_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]*@")
_QUERY = re.compile(r"(://[^\s?'\"]*)\?[^\s'\"]*")
_BARE_USERINFO = re.compile(r"(^|[\s'\"(=])[^\s/@'\"():]+:[^\s/@'\"]+@")  # user:pw@host quoted without a scheme


def redact_uri(uri: str | None) -> str | None:
    """Drop credentials from a URI, or from every URI inside a message: ``user:pw@`` and query strings.

    >>> redact_uri("https://u:p@host/a.png?X-Amz-Signature=abc")
    'https://***@host/a.png?***'
    >>> redact_uri("GET https://h/x?sig=1 failed: 's3://k:s@b/y'")
    "GET https://h/x?*** failed: 's3://***@b/y'"
    >>> redact_uri('bucket "k:s@b" is not valid')
    'bucket "***@b" is not valid'
    """
    if uri is None:
        return None
    return _BARE_USERINFO.sub(r"\1***@", _QUERY.sub(r"\1?***", _USERINFO.sub(r"\1***@", uri)))


class StorageUnavailable(Exception):
    """Reading the manifest kept failing with transient storage errors (throttling, 5xx, timeouts, resets) after
    the storage client's retries. Nothing was started or recorded; rerunning the same command later resumes.
    The command line reports it in one line with exit code 4."""
