"""Encode a row's output image in the configured format: `encode_output`.

`--format png | jpeg | webp` encode the whole image (PNG and lossless WebP keep every pixel; JPEG and lossy WebP
re-encode all of them). `--format auto` keeps a JPEG source a JPEG without generation loss: the source's blocks
are kept and only the repainted MCUs replaced (io/jpeg_transplant.py), at a cost that follows what changed.
Other sources, and JPEG sources the transplant does not handle, are written as PNG (the exact format); for a
JPEG source the reason is recorded in the row (`output_fallback`). Each row records the format written
(`output_format`) and its size (`output_bytes`), and its file's extension follows the format written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import RowError
from .images import encode_image, sniff_format
from .jpeg_transplant import Refused, transplant
from .settings import AUTO, TRANSPLANT, OutputSettings


@dataclass(frozen=True)
class Encoded:
    data: bytes
    format: str                  # the format written: png, jpeg, webp or jpeg-transplant
    fallback: str | None = None  # why a JPEG source was not transplanted under --format auto


def encode_output(final: np.ndarray, original: np.ndarray, source: bytes, windows, out: OutputSettings) -> Encoded:
    """The output image's bytes for a row: `final` and `original` (decoded source) are uint8 [H, W, 3] in display
    orientation, `source` the encoded original, `windows` the regions' windows (empty for an unchanged row). An
    encoding failure is the row's (RowError)."""
    fallback = None
    if out.kind == AUTO and sniff_format(source) == "JPEG":
        try:
            return Encoded(transplant(source, final, original, windows)[0], TRANSPLANT)
        except Refused as e:
            fallback = str(e)
        except Exception as e:  # noqa: BLE001 - a library failure costs the row its JPEG output, never its image
            fallback = f"the transplant failed ({type(e).__name__}: {str(e)[:200]})"
    fmt = "png" if out.kind == AUTO else out.kind
    try:
        return Encoded(encode_image(final, fmt, out.quality, out.lossless, out.png_level), fmt, fallback)
    except Exception as e:  # noqa: BLE001
        raise RowError("write_failed", f"encoding {fmt} failed: {type(e).__name__}: {e}") from None
