"""Crop windows around the repaint mask, model-resolution crops, and paste-back.

Window rule (``crop_window``), all in original pixels, end-exclusive:

1. Start from the bounding box of the repaint mask (after dilation), size bw x bh.
2. Add context on each side: max(ceil(context * bw), min_context, feather) horizontally and the
   same with bh vertically. Including ``feather`` keeps the whole feathered band inside.
3. Make it square (the model's 1:1 aspect ratio) with side
   s = max(R, min(max(wanted_w, wanted_h), max(W, H))): at least the model resolution R (so a
   small region is never upscaled when the image has room), and never larger than the image's
   longer side (beyond that there is no more context to take).
4. Centre it on the box, then shift it to lie inside the image along every axis where s fits.
   Along an axis where the image is shorter than s, the window covers the whole image and
   extends past it equally on both sides: those pixels are filled by reflection
   (``np.pad(mode="reflect")``), never by stretching. So a window may have x0 < 0 or x1 > W.

The crop (s x s) is resized to R x R: LANCZOS for the image, NEAREST for the mask. Paste-back
resizes the model output back to s x s (LANCZOS), keeps the part over the image, and blends it
into a copy of the original with the feathered alpha, writing only pixels where alpha > 0; every
other pixel keeps the decoded input's bytes.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .masks import bbox



def window_side(bw, bh, width: int, height: int, resolution: int, context: float = 0.25, min_context: int = 32,
                feather: int = 0):
    """Side of the square window around a box of bw x bh (steps 2 and 3 of the module docstring); numpy
    arrays of box sizes give an array of sides (io/regions.py compares many candidate windows at once)."""
    bw, bh = np.asarray(bw, dtype=np.int64), np.asarray(bh, dtype=np.int64)
    mx = np.maximum(np.maximum(np.ceil(context * bw).astype(np.int64), min_context), feather)
    my = np.maximum(np.maximum(np.ceil(context * bh).astype(np.int64), min_context), feather)
    wanted = np.maximum(bw + 2 * mx, bh + 2 * my)
    return np.maximum(resolution, np.minimum(wanted, max(width, height)))


def crop_windows(boxes: np.ndarray, width: int, height: int, resolution: int, context: float = 0.25,
                 min_context: int = 32, feather: int = 0) -> np.ndarray:
    """Square windows int64 [n, 4] (x0, y0, x1, y1) around mask boxes int [n, 4]; see the module docstring."""
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    side = window_side(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], width, height, resolution, context, min_context,
                       feather)

    def place(lo: np.ndarray, hi: np.ndarray, dim: int) -> np.ndarray:
        inside = np.minimum(np.maximum((lo + hi - side) // 2, 0), dim - side)  # floor of centre - side/2, shifted in
        return np.where(side >= dim, -((side - dim) // 2), inside)  # whole axis inside: padding split evenly

    x0, y0 = place(b[:, 0], b[:, 2], width), place(b[:, 1], b[:, 3], height)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def crop_window(mask_box: tuple[int, int, int, int], width: int, height: int, resolution: int,
                context: float = 0.25, min_context: int = 32, feather: int = 0) -> tuple[int, int, int, int]:
    """Square window (x0, y0, x1, y1) around ``mask_box``; see the module docstring."""
    w = crop_windows(np.array([mask_box]), width, height, resolution, context, min_context, feather)[0]
    return int(w[0]), int(w[1]), int(w[2]), int(w[3])


def window_inside(window, width: int, height: int) -> tuple[int, int, int, int]:
    """Intersection of the window with the image, (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = window
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def crop_padded(arr: np.ndarray, window) -> np.ndarray:
    """arr[y0:y1, x0:x1] with reflection where the window leaves the array. [s, s, ...]."""
    h, w = arr.shape[:2]
    x0, y0, x1, y1 = window
    ix0, iy0, ix1, iy1 = window_inside(window, w, h)
    crop = arr[iy0:iy1, ix0:ix1]
    pads = ((iy0 - y0, y1 - iy1), (ix0 - x0, x1 - ix1)) + ((0, 0),) * (arr.ndim - 2)
    if any(p for pair in pads for p in pair):
        crop = np.pad(crop, pads, mode="reflect")
    return np.ascontiguousarray(crop)


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 [s, s, 3] -> uint8 [size, size, 3], LANCZOS."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb, "RGB").resize((size, size), Image.LANCZOS))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool [s, s] -> uint8 [size, size] in {0, 255}, NEAREST."""
    m = mask.astype(np.uint8) * 255
    if m.shape[0] == size and m.shape[1] == size:
        return m
    return np.asarray(Image.fromarray(m, "L").resize((size, size), Image.NEAREST))


def model_inputs(rgb: np.ndarray, repaint: np.ndarray, window, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [R, R, 3], mask uint8 [R, R] 0/255) for the model."""
    return (resize_rgb(crop_padded(rgb, window), resolution),
            resize_mask(crop_padded(repaint, window), resolution))


def paste_back(original: np.ndarray, result: np.ndarray, window, alpha: np.ndarray) -> np.ndarray:
    """A copy of ``original`` with the model output blended in inside ``window`` (``paste_into``)."""
    out = original.copy()
    paste_into(out, result, window, alpha)
    return out


def paste_into(out: np.ndarray, result: np.ndarray, window, alpha: np.ndarray) -> np.ndarray:
    """Blend the model output into ``out`` (in place) inside ``window``.

    out uint8 [H, W, 3]; result uint8 [r, r, 3]; alpha float32 in [0, 1] (1 = take the
    model's pixel), either [H, W] or already cut to the window's part of the image. Only pixels
    inside the window with alpha > 0 are written; alpha == 1 pixels take the resized result
    exactly, partial ones round(a * new + (1 - a) * old). All other bytes are left as they are.
    """
    h, w = out.shape[:2]
    x0, y0, x1, y1 = window
    side = x1 - x0
    ix0, iy0, ix1, iy1 = window_inside(window, w, h)
    a = alpha[iy0:iy1, ix0:ix1] if alpha.shape == (h, w) else alpha
    if a.shape != (iy1 - iy0, ix1 - ix0):
        raise ValueError(f"alpha shape {alpha.shape} fits neither the image {(h, w)} nor the window part")
    write = a > 0
    box = bbox(write)
    if box is None:
        return out
    big = resize_rgb(np.ascontiguousarray(result), side)
    # only the written pixels' bounding box is touched: the feathered band is thin around a repaint area
    c0, r0, c1, r1 = box
    a, write = a[r0:r1, c0:c1], write[r0:r1, c0:c1]
    region = out[iy0 + r0:iy0 + r1, ix0 + c0:ix0 + c1]
    fresh = big[iy0 - y0 + r0:iy0 - y0 + r1, ix0 - x0 + c0:ix0 - x0 + c1]
    # between uint8 images round(1 * new + 0 * old) is new itself: those pixels are copied, not blended
    blend = write
    if big.dtype == out.dtype == np.uint8 and _copy_pixels(region, fresh, a == 1):
        blend = write & (a != 1)
    ys, xs = np.nonzero(blend)
    new = fresh[ys, xs].astype(np.float32)  # [N, 3]
    old = region[ys, xs].astype(np.float32)
    aw = a[ys, xs][:, None]
    region[ys, xs] = np.clip(np.rint(aw * new + (1.0 - aw) * old), 0, 255).astype(np.uint8)
    return out


def _copy_pixels(dst: np.ndarray, src: np.ndarray, where: np.ndarray) -> bool:
    """dst[where] = src[where] for images [h, w, c] of one dtype whose pixels are contiguous, through views with
    one element per pixel (a masked copy of whole pixels runs many times faster than of their bytes); False,
    copying nothing, when the layouts do not allow it."""
    if dst.shape != src.shape or dst.dtype != src.dtype or dst.ndim != 3 or dst.strides[-1] != dst.itemsize \
            or src.strides[-1] != src.itemsize:
        return False
    pixel = np.dtype((np.void, dst.shape[-1] * dst.itemsize))
    np.copyto(dst.view(pixel)[..., 0], src.view(pixel)[..., 0], where=where)
    return True
