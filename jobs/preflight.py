"""Pre-flight: everything the driver checks before any work, and the job's own exceptions.

In order: the weights exist and their header matches the model, the output can be written, and the manifest
is listed, every file's schema checked and its id column (only) read (ledger/manifest.py; its storage errors
are sorted by io/manifest.py). A failure here is one clear line and nothing has started.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid


from rayinpaint.io.errors import RowError, SettingsError, StorageUnavailable, redact_uri  # noqa: F401
# The manifest's storage errors are sorted where the manifest is read; re-exported: every pre-flight error is here.
from rayinpaint.io.manifest import manifest_storage_errors  # noqa: F401
from rayinpaint.io.storage import filesystem, join_uri, protocol_of, write_bytes

from .config import DEFAULT_WEIGHTS, JobConfig

log = logging.getLogger("rayinpaint.job")


class WeightsUnavailable(SettingsError):
    """The weights cannot be fetched or do not match the model. Exit code 2, like any bad setting."""


class OutputUnwritable(Exception):
    """The output cannot be written (permission denied, disk full, bucket policy). The job stops; rows whose
    results were not written are not recorded, so rerunning the same command once the output is fixed resumes.
    The command line reports it in one line with exit code 3."""


# ---- weights and output -----------------------------------------------------------------------------

_WEIGHTS_HINT = ("pass --weights with a local path or an object-store URI of 512-inpainting-ema.safetensors "
                 "(e.g. s3://my-bucket/weights/512-inpainting-ema.safetensors), or --weights random:tiny for a "
                 "dry run")


def check_weights(cfg: JobConfig, storage) -> None:
    """The weights exist, are of a format the workers load, and their tensors' names and shapes (from a
    .safetensors header or a checkpoint's pickle part, a few hundred kB even for a 5 GB file) match the model
    exactly. A bad file is one clear line here, not an actor crash."""
    w = cfg.weights
    if w.startswith("random:"):
        return
    try:
        fs, p = filesystem(w, storage)
        found = fs.exists(p)
    except Exception as e:  # noqa: BLE001 - any failure to reach the weights is reported the same way
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsUnavailable(f"cannot fetch the model weights {w}: {type(e).__name__}: {first}; "
                                 f"{_WEIGHTS_HINT}") from None
    if not found:
        what = "the default weights" if w == DEFAULT_WEIGHTS else "the weights"
        raise WeightsUnavailable(f"{what} {w} were not found; {_WEIGHTS_HINT}")
    if not fs.isdir(p):  # a diffusers folder's files are checked when the workers load them
        _check_file(fs, p, cfg)


def check_detector(cfg: JobConfig, storage) -> None:
    """--mask-from: the detector's packages are installed and its model file can be read, or one line (exit 2)
    before Ray starts or any row is read (detect/spec.py DetectorMissing, detect/weights.py)."""
    detect = cfg.detect_settings(storage)
    if detect is None:
        return
    from rayinpaint.detect import detector_identity, require_extra

    require_extra(detect.source)
    detector_identity(detect)


def _check_file(fs, path: str, cfg: JobConfig) -> None:
    """The file's format from its first bytes, then its tensors' names and shapes against the model: a
    `.safetensors` header, or a torch checkpoint's pickle part (model/fileformat.py), never the tensor data. The
    block size keeps each ranged read of an object store small."""
    from rayinpaint.model.checkpoint import WeightsError, check_safetensors_header
    from rayinpaint.model.config import get_config
    from rayinpaint.model.fileformat import CKPT_SUFFIXES, checkpoint_shapes, safetensors_header

    name = redact_uri(cfg.weights)
    try:
        with fs.open(path, "rb", block_size=1 << 20) as f:
            if cfg.weights.endswith(CKPT_SUFFIXES):
                shapes = checkpoint_shapes(f, name)
                header = None if shapes is None else {k: {"shape": s} for k, s in shapes.items()}
            else:
                header = safetensors_header(f, name)
    except WeightsError as e:
        raise WeightsUnavailable(f"--weights: {e}; {_WEIGHTS_HINT}") from None
    if header is None:
        return
    try:
        check_safetensors_header(header, get_config(cfg.model_config), cfg.weights)
    except WeightsError as e:
        raise WeightsUnavailable(f"{e} (is --model-config {cfg.model_config} right?)") from None


# The pre-flight probes' own client settings: a store that does not answer is named within seconds, not after
# the client's whole retry budget (10 attempts with backoff, each waiting on a connection that never answers).
PROBE_TIMEOUT_S = 5
PROBE_ATTEMPTS = 3


def probe_options(storage):
    """`storage` with short timeouts and few attempts, for the pre-flight probes only."""
    extra = dict(storage.extra)
    extra["config_kwargs"] = {**extra.get("config_kwargs", {}), "connect_timeout": PROBE_TIMEOUT_S,
                              "read_timeout": PROBE_TIMEOUT_S}
    return dataclasses.replace(storage, max_attempts=1, client_max_attempts=PROBE_ATTEMPTS, extra=extra)


# Failures that mean no answer at all (no connection, or none in time), as opposed to an answer saying no.
# A connection reset mid-answer is not one of them: the store is there (the real reads retry it).
_NO_ANSWER = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
              "ServerTimeoutError", "ConnectionRefusedError", "TimeoutError", "timeout"}


def _no_answer(error: BaseException) -> bool:
    seen = 0
    while error is not None and seen < 8:
        if type(error).__name__ in _NO_ANSWER:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def unreachable_hint(uri: str, storage, error: BaseException) -> str | None:
    """For an object-store URI that failed for want of an answer (not an error answer): which endpoint was
    tried, and how to name another one. None otherwise."""
    if protocol_of(uri) not in ("s3", "s3a") or not _no_answer(error):
        return None
    if storage.endpoint_url:
        return (f"the object store at {redact_uri(storage.endpoint_url)} did not answer; check --endpoint-url (or "
                f"AWS_ENDPOINT_URL) and that the store is up")
    return (f"the object store at AWS S3's own endpoint (https://s3.{storage.region or 'us-east-1'}.amazonaws.com, "
            f"no --endpoint-url given) did not answer; for an S3-compatible store (MinIO, Ceph, R2, ...) pass "
            f"--endpoint-url URL or set AWS_ENDPOINT_URL")


def check_reachable(uri: str, storage, what: str) -> None:
    """One bounded request to the store of `uri` (an object store; other URIs pass): an unreachable store is one
    line naming the endpoint tried, within about PROBE_ATTEMPTS x 2 x PROBE_TIMEOUT_S seconds."""
    if protocol_of(uri) not in ("s3", "s3a"):
        return
    try:
        fs, path = filesystem(uri.rstrip("/"), probe_options(storage))
        fs.retries = 1  # s3fs's own retry loop around botocore's (5 by default; not a constructor argument)
        fs.info(path)
    except FileNotFoundError:
        return  # the store answered
    except Exception as e:  # noqa: BLE001 - sorted by unreachable_hint; other failures are left to the real read
        hint = unreachable_hint(uri, storage, e)
        if hint is not None:
            raise StorageUnavailable(f"{what} {redact_uri(uri)}: {hint} ({type(e).__name__}: "
                                     f"{redact_uri(str(e).splitlines()[0] if str(e) else '')[:160]})") from None


def check_manifest_reachable(manifest, storage) -> None:
    """check_reachable for the store of each --manifest URI (once per bucket)."""
    seen = set()
    for uri in manifest:
        bucket = uri.split("://", 1)[-1].split("/", 1)[0]
        if (protocol_of(uri), bucket) not in seen:
            seen.add((protocol_of(uri), bucket))
            check_reachable(uri, storage, "--manifest")


def check_output_writable(output: str, storage) -> None:
    """Write and remove a probe object under --output (a folder or prefix: an existing file there is a bad
    option, named as such rather than as a failed write of the probe)."""
    check_reachable(output, storage, "--output")
    try:
        fs, root = filesystem(output.rstrip("/"), storage)
        is_file = fs.isfile(root)
    except Exception:  # noqa: BLE001 - unreachable: the probe below says why, in the storage's words
        is_file = False
    if is_file:
        raise SettingsError(f"--output {redact_uri(output)} is a file; --output names a folder (or an object-store "
                            f"prefix) that results/, images/ and _SUMMARY.json are written under")
    probe = join_uri(output.rstrip("/"), f"_write_probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"", storage)
    except RowError as e:
        raise OutputUnwritable(f"cannot write to --output: {e.message}") from None
    try:
        fs, p = filesystem(probe, storage)
        fs.rm(p)
    except Exception as e:  # noqa: BLE001 - a leftover probe is harmless; say so and go on
        log.warning("could not remove the write probe %s: %s", redact_uri(probe), type(e).__name__)
