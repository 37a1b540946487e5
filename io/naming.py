"""Safe output file names from row ids.

An id becomes the file stem as-is when it is a safe name: 1..128 characters from
``[A-Za-z0-9._-]``, not starting with ``.`` or ``-`` (no hidden files, no ``.``/``..``, nothing
a shell reads as an option), and not a Windows device name. Anything else (separators, ``..``,
spaces, control characters, non-ASCII, too long) is replaced by ``h~`` + the first 40 hex digits
of SHA-256 of the id's UTF-8 bytes. ``~`` is never in a safe stem, so a hashed stem cannot collide
with a kept one; the result row records the mapping (``id``, ``output_uri``,
``output_name_hashed``). Stems can therefore never climb out of ``{output}/images/``.
"""

from __future__ import annotations

import hashlib
import re

MAX_STEM = 128
_SAFE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                     *(f"lpt{i}" for i in range(1, 10))}


def is_safe_stem(name: str) -> bool:
    return bool(_SAFE.fullmatch(name)) and name.split(".")[0].lower() not in _WINDOWS_RESERVED


def hashed_stem(row_id: str) -> str:
    return "h~" + hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


LAYOUTS = ("flat", "hashed")


def image_path(stem: str, layout: str) -> str:
    """Path of an output image's stem under `{output}/images/`: the stem itself ("flat"), or under one of 256
    folders named by the first two hex digits of SHA-256 of the stem ("hashed": `ab/{stem}`), so that 100M
    images are ~400k per folder instead of 100M in one (painful on local and network filesystems; object
    stores do not mind either way)."""
    if layout == "flat":
        return stem
    if layout == "hashed":
        return f"{hashlib.sha256(stem.encode('utf-8')).hexdigest()[:2]}/{stem}"
    raise ValueError(f"unknown image layout {layout!r}")


def output_name(row_id: str) -> tuple[str, bool]:
    """(file stem, hashed?) for a row id; stable across runs and machines."""
    if is_safe_stem(row_id):
        return row_id, False
    return hashed_stem(row_id), True
