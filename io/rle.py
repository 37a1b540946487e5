"""COCO run-length encoding (RLE) decoding, written from the format description.

A COCO RLE is ``{"size": [h, w], "counts": ...}``. The mask is flattened in **column-major**
(Fortran) order, and ``counts`` gives alternating run lengths starting with a run of zeros
(which may be 0). ``counts`` is either a list of ints ("uncompressed RLE") or a string/bytes
("compressed RLE") in which each run length is coded as a variable-length sequence of 6-bit
groups, least significant group first: each character c gives x = ord(c) - 48; bit 5 (0x20) of
x says "more groups follow"; after the last group, bit 4 (0x10) of that group is the sign bit
and the value is sign-extended. From the third count on, each value is a delta to the count two
positions earlier (runs of the same colour), i.e. counts[i] += counts[i-2] for i > 2.
"""

from __future__ import annotations

import json

import numpy as np

from .errors import RowError


def decode_counts_string(s: str | bytes) -> list[int]:
    """Compressed COCO counts string -> list of run lengths."""
    if isinstance(s, (bytes, bytearray)):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("counts string ends in the middle of a number")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid character {s[p]!r} in counts string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_mask(rle, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLE (dict, or its JSON text) -> bool [h, w]. Raises RowError("bad_rle")."""
    try:
        if isinstance(rle, (str, bytes)):
            rle = json.loads(rle)
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError("expected an object with 'size' [h, w] and 'counts'")
        size = rle["size"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
            raise ValueError(f"'size' must be two non-negative integers [h, w], got {size!r}")
        h, w = size
        counts = rle["counts"]
        if isinstance(counts, (str, bytes, bytearray)):
            counts = decode_counts_string(counts)
        elif isinstance(counts, (list, tuple)):
            if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
                raise ValueError("'counts' list must hold integers")
            counts = [int(c) for c in counts]
        else:
            raise ValueError(f"'counts' must be a string or a list, got {type(counts).__name__}")
        if any(c < 0 for c in counts):
            raise ValueError("negative run length")
        if sum(counts) != h * w:
            raise ValueError(f"run lengths sum to {sum(counts)} but size {h}x{w} needs {h * w}")
    except RowError:
        raise
    except (ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RowError("bad_rle", f"mask_rle: {exc}") from None
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise RowError("bad_rle", f"mask_rle: size {h}x{w} (h x w) differs from the image's "
                                  f"{expected_hw[0]}x{expected_hw[1]}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True  # runs alternate 0, 1, 0, ... starting with zeros
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()  # column-major: fill down columns first


def mask_to_rle(mask: np.ndarray) -> dict:
    """bool [h, w] -> uncompressed COCO RLE (used by tests and tools)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    counts = []
    current = False
    run = 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current = v
            run = 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}
