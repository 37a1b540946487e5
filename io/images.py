"""Decode image bytes to RGB uint8 safely; encode results.

Decoding rules (``decode_image``):

- Formats: PNG, JPEG, WebP, TIFF, BMP, GIF (anything else PIL reads is accepted too). Animated
  files (GIF, APNG, WebP) give their first frame.
- EXIF orientation is applied (``ImageOps.exif_transpose``), so pixels are as a viewer shows them.
- Size is checked from the header *before* any pixel is decoded: width*height over the limit is
  RowError("too_large"). PIL's own DecompressionBombError is mapped to the same kind.
- Mode conversion to RGB uint8:
  * ``1``, ``L``, ``P`` (no transparency), ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's
    standard conversion to RGB.
  * 16-bit and 32-bit integer greys (``I;16``, ``I;16B``, ``I``): values are read as 16-bit
    (clipped to 0..65535) and scaled to 8 bits with round(v / 257); then grey to RGB.
  * ``F`` (float): clipped to 0..255 and rounded.
  * **Alpha** (``LA``, ``PA``, ``RGBA``, ``La``, ``RGBa``, ``P`` with a transparency entry): the
    image is **composited over white**: rgb = round((c*a + 255*(255-a)) / 255). Fully
    transparent pixels therefore become white, whatever colour they carried. The output has no
    alpha; the paste-back invariant holds for this decoded RGB image.
- Failures: zero bytes -> "empty_input"; bytes with no known image signature -> "not_an_image"
  (the message says when they look like text or HTML); a known signature that ends early ->
  "truncated"; otherwise a decode failure -> "corrupt_image"; zero width or height ->
  "empty_image".
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import RowError

# (format name, signature test)
_SIGNATURES = (
    ("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff")),
    ("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("WEBP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("TIFF", lambda b: b[:4] in (b"II*\x00", b"MM\x00*")),
    ("BMP", lambda b: b[:2] == b"BM"),
)


def sniff_format(data: bytes) -> str | None:
    for name, test in _SIGNATURES:
        if test(data):
            return name
    return None


def looks_truncated(data: bytes, fmt: str | None) -> bool:
    """True when the container says more bytes should follow (end marker or size field)."""
    if fmt == "PNG":
        return b"IEND" not in data[-64:]
    if fmt == "JPEG":
        return b"\xff\xd9" not in data.rstrip(b"\x00")[-16:]
    if fmt == "GIF":
        return not data.rstrip(b"\x00").endswith(b";")
    if fmt == "WEBP" and len(data) >= 8:
        return len(data) < struct.unpack("<I", data[4:8])[0] + 8
    if fmt == "BMP" and len(data) >= 6:
        return len(data) < struct.unpack("<I", data[2:6])[0]
    return False


def _describe_non_image(data: bytes) -> str:
    head = data[:256]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"{len(data)} bytes with no known image signature (starts {data[:8].hex()})"
    if text.lstrip().lower().startswith(("<!doctype html", "<html", "<?xml", "<error")):
        return f"bytes look like an HTML/XML document, not an image ({text.strip()[:60]!r})"
    return f"bytes look like text, not an image ({text.strip()[:60]!r})"


def header_size(data: bytes, fmt: str | None) -> tuple[int, int] | None:
    """(w, h) read straight from a PNG/GIF/BMP header, for headers PIL refuses (e.g. zero size)."""
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "BMP":
            w, h = struct.unpack("<ii", data[18:26])
            return w, abs(h)
    except struct.error:
        return None
    return None


def _open_checked(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse empty, unknown, oversized and zero-size images."""
    if len(data) == 0:
        raise RowError("empty_input", f"{what}: empty (0 bytes)")
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data" warnings from headers
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # over PIL's own limit (2 x MAX_IMAGE_PIXELS)
        size = header_size(data, fmt)
        detail = (f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else str(exc))
        raise RowError("too_large", f"{what}: {detail} is over the limit of {max_pixels} "
                                    f"(refused before decoding)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        if fmt is None:
            raise RowError("not_an_image", f"{what}: {_describe_non_image(data)}") from None
        size = header_size(data, fmt)
        if size is not None and 0 in size:
            raise RowError("empty_image", f"{what}: {fmt} header says zero size ({size[0]}x{size[1]})") from None
        if looks_truncated(data, fmt) or "truncat" in str(exc).lower():
            raise RowError("truncated", f"{what}: {fmt} data ends early ({len(data)} bytes)") from None
        raise RowError("corrupt_image", f"{what}: {fmt} header does not parse ({type(exc).__name__})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise RowError("empty_image", f"{what}: image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise RowError("too_large", f"{what}: {w}x{h} = {w * h} pixels is over the limit of "
                                    f"{max_pixels} (refused before decoding)")
    return im


def _load(im: Image.Image, data: bytes, what: str) -> Image.Image:
    """Decode the first frame fully, mapping failures to truncated / corrupt_image."""
    fmt = sniff_format(data) or (im.format or "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            # exif_transpose decodes nothing new; it reads the orientation tag (1..8) and flips.
            out = ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as exc:
        raise RowError("too_large", f"{what}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError...
        if looks_truncated(data, sniff_format(data)) or "truncat" in str(exc).lower():
            raise RowError("truncated", f"{what}: {fmt} data ends early ({len(data)} bytes; {exc})") from None
        raise RowError("corrupt_image", f"{what}: {fmt} data does not decode ({type(exc).__name__}: {exc})") from None
    return out if out is not None else im


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite straight-alpha RGB over white, rounding to nearest. rgb [H,W,3], alpha [H,W]."""
    a = alpha.astype(np.uint32)[..., None]
    out = (rgb.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3] following the rules in the module docstring."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))  # PIL un-premultiplies La/RGBa here
        return _over_white(rgba[..., :3], rgba[..., 3])
    if mode.startswith("I"):
        v = np.asarray(im).astype(np.int64)
        grey = ((np.clip(v, 0, 65535) * 2 + 257) // 514).astype(np.uint8)  # round(v/257)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        grey = np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))


def open_image(data: bytes, what: str = "image", max_pixels: int = 50_000_000) -> Image.Image:
    """Checked, fully decoded, EXIF-oriented PIL image (any mode). Raises RowError."""
    im = _open_checked(data, what, max_pixels)
    return _load(im, data, what)


def decode_image(data: bytes, what: str = "image", max_pixels: int = 50_000_000) -> np.ndarray:
    """Bytes -> uint8 [H, W, 3] RGB. Raises RowError (see module docstring)."""
    return to_rgb_array(open_image(data, what, max_pixels))


# zlib level of PNG output. Level 6 (PIL's and zlib's default) spends ~90% of the finish stage's time on large
# images; level 1 is several times faster for somewhat larger files (BENCHMARKS.md, `rayinpaint bench
# --cpu-stages`). Pixels are identical at every level.
PNG_LEVEL = 1
MAX_PNG_LEVEL = 9
# Lossless WebP at its fastest effort: exact pixels and smaller than PNG level 1 (BENCHMARKS.md); higher efforts
# (up to method 6, quality 100) save a few % more bytes for many times the encoding time.
WEBP_LOSSLESS = {"method": 0, "quality": 0}


def encode_image(rgb: np.ndarray, fmt: str = "png", quality: int = 95, lossless: bool = False,
                 png_level: int = PNG_LEVEL) -> bytes:
    """uint8 [H, W, 3] -> PNG (zlib level `png_level`) / JPEG (quality) / WebP (quality or lossless) bytes."""
    im = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    buf = io.BytesIO()
    fmt = fmt.lower()
    if fmt == "png":
        im.save(buf, "PNG", compress_level=int(png_level))
    elif fmt in ("jpeg", "jpg"):
        im.save(buf, "JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        if lossless:
            im.save(buf, "WEBP", lossless=True, **WEBP_LOSSLESS)
        else:
            im.save(buf, "WEBP", quality=int(quality), method=4)
    else:
        raise ValueError(f"unknown output format {fmt!r}")
    return buf.getvalue()


EXTENSIONS = {"png": "png", "jpeg": "jpg", "jpg": "jpg", "webp": "webp", "jpeg-transplant": "jpg"}
