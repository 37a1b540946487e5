"""Repaint masks: from mask images, boxes or RLE; threshold, invert, dilate; feather distances.

Convention (docs/model.md §6.1): **white / 1 = repaint**, black / 0 = keep.

Mask images are reduced to one 8-bit channel, then thresholded:

- ``1``, ``L``: the grey value. ``RGB``, ``CMYK``, ``P`` (opaque) ...: luminance
  (PIL's ITU-R 601-2 "L" conversion). 16-bit greys are scaled by round(v / 257).
- ``LA``, ``RGBA``, ``PA``, ``P`` with transparency: the **alpha channel if it is not fully
  opaque anywhere** (painted strokes on a transparent layer), else the luminance (an opaque RGBA
  export of a black/white mask).
- **0/1 masks.** A mask image whose values are all 0 or 1 (what ``Image.fromarray(mask.astype(uint8))``
  writes from a boolean array, the most common export) is a 0/1 mask: 1 = repaint. Its 1s are read as
  255 before the threshold, so any ``--mask-threshold`` marks them. This is decided per mask image; a
  soft or 0/255 mask with at least one value of 2 or more is read as it always was (a grey mask whose
  only values are 0 and 1 would have been empty under every threshold but 1/255 before, so nothing
  meaningful is lost).
- A pixel is marked when value / 255 >= threshold (default 0.5, so 128..255); ``invert`` flips
  the result afterwards.

Boxes are ``[x0, y0, x1, y1]`` in pixels with x1/y1 exclusive; fractional edges cover every
pixel they touch (floor of x0/y0, ceil of x1/y1). Boxes are clipped to the image; a box with
x1 <= x0 or y1 <= y0, a non-finite or non-numeric value, or a box wholly outside the image is
RowError("bad_boxes").

Distances are exact Euclidean distances to the nearest marked pixel, computed only up to a
bound and only over the mask's bounding box grown by it (two separable passes: running indices
per column, then a bounded minimum along rows taken only on the band around the mask's edge where
the band is thin), which is all dilation and feathering need. Dilation by r marks every pixel
within distance <= r (a disc).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .errors import RowError
from .images import open_image


def mask_values(im: Image.Image) -> np.ndarray:
    """PIL mask image -> uint8 [H, W] grey values per the rules in the module docstring."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        rgba = np.asarray(im.convert("RGBA"))
        alpha = rgba[..., 3]
        if alpha.min() < 255:
            return np.ascontiguousarray(alpha)
        return np.asarray(im.convert("RGB").convert("L"), dtype=np.uint8)
    if mode.startswith("I"):
        v = np.asarray(im).astype(np.int64)
        return ((np.clip(v, 0, 65535) * 2 + 257) // 514).astype(np.uint8)
    if mode == "F":
        return np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
    if mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


def decode_mask_values(data: bytes, max_pixels: int, size: tuple[int, int] | None = None,
                       resize: bool = False) -> np.ndarray:
    """Mask bytes -> uint8 [H, W] grey values, checked against the image size (w, h)."""
    im = open_image(data, "mask", max_pixels)
    values = expand_zero_one(mask_values(im))
    if size is not None and (values.shape[1], values.shape[0]) != tuple(size):
        found = f"{values.shape[1]}x{values.shape[0]}"
        if not resize:
            raise RowError("mask_size_mismatch", f"mask is {found} but the image is "
                                                 f"{size[0]}x{size[1]} (set resize_mask to resize it)")
        # Bilinear on grey values, then the threshold: smoother edges than nearest.
        values = np.asarray(Image.fromarray(values, "L").resize(tuple(size), Image.BILINEAR))
    return values


def expand_zero_one(values: np.ndarray) -> np.ndarray:
    """A 0/1 mask (every value 0 or 1, at least one 1) -> 0/255; any other mask unchanged (module docstring)."""
    if values.size and values.max() == 1:
        return values * np.uint8(255)
    return values


def threshold_mask(values: np.ndarray, threshold: float = 0.5, invert: bool = False) -> np.ndarray:
    """uint8 [H, W] -> bool [H, W]; True = repaint."""
    marked = values.astype(np.float32) / 255.0 >= threshold
    return ~marked if invert else marked


def boxes_to_mask(boxes, width: int, height: int) -> np.ndarray:
    """List of [x0, y0, x1, y1] pixel boxes -> bool [height, width]. Raises RowError("bad_boxes")."""
    mask = np.zeros((height, width), dtype=bool)
    if boxes is None:
        return mask
    for i, box in enumerate(boxes):
        try:
            vals = [float(v) for v in box]
        except (TypeError, ValueError):
            raise RowError("bad_boxes", f"boxes[{i}] = {box!r}: values must be numbers") from None
        if len(vals) != 4:
            raise RowError("bad_boxes", f"boxes[{i}] = {box!r}: expected 4 numbers [x0, y0, x1, y1]")
        if not all(math.isfinite(v) for v in vals):
            raise RowError("bad_boxes", f"boxes[{i}] = {box!r}: values must be finite")
        x0, y0, x1, y1 = vals
        if x1 <= x0 or y1 <= y0:
            raise RowError("bad_boxes", f"boxes[{i}] = {box!r}: need x0 < x1 and y0 < y1")
        ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        ix1, iy1 = min(width, math.ceil(x1)), min(height, math.ceil(y1))
        if ix1 <= ix0 or iy1 <= iy0:
            raise RowError("bad_boxes", f"boxes[{i}] = {box!r}: outside the {width}x{height} image")
        mask[iy0:iy1, ix0:ix1] = True
    return mask


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), end-exclusive, of the True pixels; None when there are none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def squared_distance(mask: np.ndarray, bound: int) -> np.ndarray:
    """Exact squared Euclidean distance to the nearest True pixel, capped at (bound + 1)**2.

    Returns int32 [H, W]: min(d^2, (bound + 1)**2), so every pixel farther than ``bound`` (or every
    pixel, for an empty mask) holds (bound + 1)**2. See ``_bounded_distance`` for how.
    """
    far2 = (bound + 1) ** 2
    if bound < 0:  # nothing is near: 0 on the mask, the cap elsewhere
        return np.where(mask, 0, far2).astype(np.int32)
    out = np.full(mask.shape, far2, dtype=np.int32)
    found = _bounded_distance(mask, bound)
    if found is not None:
        (x0, y0, x1, y1), d2 = found
        out[y0:y1, x0:x1] = d2
    return out


def _bounded_distance(mask: np.ndarray, bound: int):
    """((x0, y0, x1, y1), d2) with d2 = ``squared_distance`` over the mask's bounding box grown by
    ``bound`` (clipped to the array); every pixel outside that box is farther than ``bound``. None
    for an empty mask.

    Pass 1: per column, the vertical distance g to the nearest True pixel, capped at bound + 1, from
    running indices of the last True row above and the first below (a few array passes, whatever the
    bound). Pass 2: d^2(y, x) = min over |dx| <= bound of g(y, x + dx)^2 + dx^2, exact because the
    nearest pixel within ``bound`` lies within ``bound`` columns and rows. It is needed only off the
    mask and within ``bound`` columns of some g <= bound (elsewhere d^2 is 0 or capped), so it runs
    on those pixels alone when they are few (a band around the mask's edge), else on whole rows.
    """
    mask = np.asarray(mask, dtype=bool)
    box = bbox(mask)
    if box is None:
        return None
    h, w = mask.shape
    x0, y0 = max(0, box[0] - bound), max(0, box[1] - bound)
    x1, y1 = min(w, box[2] + bound), min(h, box[3] + bound)
    sub = mask[y0:y1, x0:x1]
    far = bound + 1
    g = _vertical_distance(sub, far)
    cand = ~sub & _near_columns(g < far, bound)
    if 4 * np.count_nonzero(cand) < cand.size:  # gathers cost about 3x a whole-row pass per pixel
        d2 = np.where(sub, 0, far * far).astype(np.int32)
        d2[cand] = _row_min_at(g * g, cand, bound, far * far)
    else:
        d2 = _row_min(g * g, bound, far * far)
    return (x0, y0, x1, y1), d2


def _vertical_distance(mask: np.ndarray, far: int) -> np.ndarray:
    """int32 [H, W]: per column, the distance in rows to the nearest True pixel, capped at ``far``."""
    h = mask.shape[0]
    rows = np.arange(h, dtype=np.int32)[:, None]
    above = np.maximum.accumulate(np.where(mask, rows, np.int32(-far)), axis=0)
    below = np.minimum.accumulate(np.where(mask, rows, np.int32(h - 1 + far))[::-1], axis=0)[::-1]
    g = np.minimum(rows - above, below - rows)
    return np.minimum(g, np.int32(far), out=g)


def _near_columns(near: np.ndarray, bound: int) -> np.ndarray:
    """bool [H, W]: pixels with a True pixel of ``near`` in the same row within ``bound`` columns."""
    h, w = near.shape
    # before[:, k]: True pixels in columns < k - bound, so columns x - bound .. x + bound hold
    # before[:, x + 2 * bound + 1] - before[:, x] of them
    before = np.zeros((h, w + 2 * bound + 1), dtype=np.int32)
    np.cumsum(near, axis=1, dtype=np.int32, out=before[:, bound + 1:bound + 1 + w])
    before[:, bound + 1 + w:] = before[:, bound + w:bound + 1 + w]
    return before[:, 2 * bound + 1:] > before[:, :w]


def _row_min(g2: np.ndarray, bound: int, cap: int) -> np.ndarray:
    """min over |dx| <= bound of g2(y, x + dx) + dx^2, capped at ``cap``: whole-row shifts."""
    w = g2.shape[1]
    d2 = g2.copy()
    for dx in range(1, min(bound, w - 1) + 1):
        np.minimum(d2[:, dx:], g2[:, :-dx] + dx * dx, out=d2[:, dx:])
        np.minimum(d2[:, :-dx], g2[:, dx:] + dx * dx, out=d2[:, :-dx])
    return np.minimum(d2, cap, out=d2)


def _row_min_at(g2: np.ndarray, where: np.ndarray, bound: int, cap: int) -> np.ndarray:
    """``_row_min`` at the True pixels of ``where`` only (in their row-major order): int32 [N]."""
    h, w = g2.shape
    padded = np.full((h, w + 2 * bound), cap, dtype=np.int32)  # columns off the array count as capped
    padded[:, bound:bound + w] = g2
    ys, xs = np.nonzero(where)
    at = ys * (w + 2 * bound) + xs + bound
    flat = padded.ravel()
    best = flat[at]
    for dx in range(1, bound + 1):
        np.minimum(best, flat[at - dx] + dx * dx, out=best)
        np.minimum(best, flat[at + dx] + dx * dx, out=best)
    return np.minimum(best, cap, out=best)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Every pixel within Euclidean distance <= radius of a True pixel. bool [H, W]."""
    if radius <= 0:
        return mask.copy()
    out = np.zeros_like(mask)
    found = _bounded_distance(mask, radius)
    if found is not None:
        # only the bounding box grown by the radius can be marked
        (x0, y0, x1, y1), d2 = found
        out[y0:y1, x0:x1] = d2 <= radius * radius
    return out


def feather_alpha(repaint: np.ndarray, feather: int) -> np.ndarray:
    """Blend weight float32 [H, W]: 1 inside ``repaint``, falling linearly to 0 at ``feather`` px
    outside it (alpha = 1 - d / feather); exactly 0 at distance >= feather."""
    if feather <= 0:
        return repaint.astype(np.float32)
    alpha = np.zeros(repaint.shape, dtype=np.float32)
    found = _bounded_distance(repaint, feather)
    if found is not None:
        # outside the grown bounding box d > feather, so alpha is 0 there already
        (x0, y0, x1, y1), d2 = found
        d = np.sqrt(d2.astype(np.float32))
        alpha[y0:y1, x0:x1] = np.clip(1.0 - d / np.float32(feather), 0.0, 1.0)
    return alpha
