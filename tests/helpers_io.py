"""Reusable test helpers: synthetic images, masks, manifests, and an independent COCO RLE encoder."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def rand_rgb(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB uint8 [h, w, 3] (gradients + noise, so resizes are not trivial)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                     ((xx + yy) * 127 // max(w + h - 2, 1))], axis=-1)
    noise = rng.integers(-20, 21, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(arr_or_img, fmt: str = "PNG", **kw) -> bytes:
    im = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def make_png(w: int, h: int, seed: int = 0) -> bytes:
    return encode(rand_rgb(w, h, seed), "PNG")


def make_jpeg(w: int, h: int, seed: int = 0, quality: int = 90) -> bytes:
    return encode(rand_rgb(w, h, seed), "JPEG", quality=quality)


def make_mask_png(w: int, h: int, boxes=(), mode: str = "L") -> bytes:
    """White (255) rectangles [x0, y0, x1, y1) on black, as a PNG of the given mode."""
    m = np.zeros((h, w), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 255
    return encode(Image.fromarray(m, "L").convert(mode), "PNG")


# Awkward images shared by the bad-input corpus row by row (tests/io/test_bad_inputs.py) and through the whole job
# (tests/reliability/test_inputs.py); 64 x 48 unless told.

def png_header(w, h, idat=b""):
    """A PNG of IHDR (w x h, RGB 8-bit), the given IDAT and IEND: the header says what the bytes do not hold."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def corrupt_png(w: int = 64, h: int = 48) -> bytes:
    good = bytearray(make_png(w, h, 1))
    i = good.index(b"IDAT") + 8
    for k in range(60):
        good[i + k] ^= 0xFF
    return bytes(good)


def gif_animated(w: int = 64, h: int = 48) -> bytes:
    frames = [Image.new("RGB", (w, h), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=40)
    return buf.getvalue()


def exif_jpeg(w: int = 64, h: int = 48) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = 6
    return encode(Image.fromarray(rand_rgb(h, w, 3)), "JPEG", exif=ex.tobytes())  # stored h x w, shown w x h


def p_transparent(w: int = 64, h: int = 48) -> bytes:
    p = Image.new("P", (w, h), 0)
    p.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    return encode(p, "PNG", transparency=0)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_manifest(path, rows: list[dict], schema: pa.Schema | None = None, fs=None) -> None:
    """Write rows (list of dicts) as a Parquet file at a local path, or via fs when given."""
    table = pa.Table.from_pylist(rows, schema=schema)
    if fs is None:
        pq.write_table(table, str(path))
    else:
        with fs.open(path, "wb") as f:
            pq.write_table(table, f)


def coco_rle_encode_string(mask: np.ndarray) -> dict:
    """Compressed COCO RLE, written from the format description (independent of io/rle.py)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts = []
    prev, run = 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = not ((ch & 0x10) == 0 and x == 0 or (ch & 0x10) != 0 and x == -1)
            if more:
                ch |= 0x20
            chars.append(chr(ch + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def brute_distance2(mask: np.ndarray) -> np.ndarray:
    """Exact squared distance to the nearest True pixel by brute force (small masks only)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return np.full((h, w), np.iinfo(np.int64).max, dtype=np.int64)
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return d2.min(axis=-1)


def brute_distance2_bounded(mask: np.ndarray, bound: int) -> np.ndarray:
    """Squared distance to the nearest True pixel, exact up to bound**2 (larger values mean
    "farther than bound"): the minimum of dy^2 + dx^2 over every shifted copy of the mask."""
    h, w = mask.shape
    far = (bound + 1) ** 2
    out = np.full((h, w), far, dtype=np.int64)
    for dy in range(-bound, bound + 1):
        for dx in range(-bound, bound + 1):
            d2 = dy * dy + dx * dx
            if d2 > bound * bound or abs(dy) >= h or abs(dx) >= w:
                continue
            shifted = np.zeros_like(mask)
            shifted[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = \
                mask[max(0, -dy):h + min(0, -dy), max(0, -dx):w + min(0, -dx)]
            np.minimum(out, np.where(shifted, d2, far), out=out)
    return out


def write_tiny_checkpoint(path) -> str:
    """A tiny random model saved with the real single-file layout; returns the file's sha256."""
    import hashlib

    from safetensors.torch import save_file

    from rayinpaint.model import load_model
    from rayinpaint.model.sd2 import single_file_state_dict

    save_file(single_file_state_dict(load_model("random:tiny:3")), str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# JPEG sources of every layout the block transplant handles (io/jpeg_transplant.py): PIL's `subsampling` 0/1/2 is
# 4:4:4/4:2:2/4:2:0; "grey" is a one-component JPEG.
JPEG_LAYOUTS = ("4:4:4", "4:2:2", "4:2:0", "grey")


def smooth_rgb(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A photo-like image: smooth colour fields, a few hard-edged boxes, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    phase = rng.uniform(0, 6, 3)
    base = np.stack([127 + 90 * np.sin(x / max(w, 1) * 4 + p) * np.cos(y / max(h, 1) * 3 - p) for p in phase], -1)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        base[y0:y0 + int(rng.integers(4, 40)), x0:x0 + int(rng.integers(4, 40))] = rng.integers(0, 255, 3)
    return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def jpeg_source(rgb: np.ndarray, layout: str = "4:2:0", orientation: int = 1, quality: int = 90,
                progressive: bool = False, restart: int = 0) -> bytes:
    """`rgb` (stored orientation) as a JPEG of `layout` with an EXIF orientation tag (1: none)."""
    im = Image.fromarray(rgb).convert("L") if layout == "grey" else Image.fromarray(rgb)
    kw = {"quality": quality, "progressive": progressive}
    if layout != "grey":
        kw["subsampling"] = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}[layout]
    if restart:
        kw["restart_marker_blocks"] = restart
    if orientation != 1:
        ex = Image.Exif()
        ex[0x0112] = orientation
        kw["exif"] = ex.tobytes()
    return encode(im, "JPEG", **kw)
