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

import math

import numpy as np
from PIL import Image



def crop_window(mask_box: tuple[int, int, int, int], width: int, height: int, resolution: int,
                context: float = 0.25, min_context: int = 32, feather: int = 0) -> tuple[int, int, int, int]:
    """Square window (x0, y0, x1, y1) around ``mask_box``; see the module docstring."""
    bx0, by0, bx1, by1 = mask_box
    bw, bh = bx1 - bx0, by1 - by0
    mx = max(math.ceil(context * bw), min_context, feather)
    my = max(math.ceil(context * bh), min_context, feather)
    wanted = max(bw + 2 * mx, bh + 2 * my)
    side = max(resolution, min(wanted, max(width, height)))

    def place(lo: int, hi: int, dim: int) -> int:
        if side >= dim:
            return -((side - dim) // 2)  # whole axis inside, padding split evenly
        start = (lo + hi - side) // 2  # floor of centre - side/2
        return min(max(start, 0), dim - side)

    x0 = place(bx0, bx1, width)
    y0 = place(by0, by1, height)
    return x0, y0, x0 + side, y0 + side


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
    """Blend the model output into a copy of ``original`` inside ``window``.

    original uint8 [H, W, 3]; result uint8 [R, R, 3]; alpha float32 in [0, 1] (1 = take the
    model's pixel), either [H, W] or already cut to the window's part of the image. Only pixels
    inside the window with alpha > 0 are written; alpha == 1 pixels take the resized result
    exactly, partial ones round(a * new + (1 - a) * old). All other bytes are the original's.
    """
    h, w = original.shape[:2]
    x0, y0, x1, y1 = window
    side = x1 - x0
    ix0, iy0, ix1, iy1 = window_inside(window, w, h)
    out = original.copy()
    a = alpha[iy0:iy1, ix0:ix1] if alpha.shape == (h, w) else alpha
    if a.shape != (iy1 - iy0, ix1 - ix0):
        raise ValueError(f"alpha shape {alpha.shape} fits neither the image {(h, w)} nor the window part")
    write = a > 0
    if not write.any():
        return out
    big = resize_rgb(np.ascontiguousarray(result), side)
    new = big[iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0][write].astype(np.float32)  # [N, 3]
    region = out[iy0:iy1, ix0:ix1]
    old = region[write].astype(np.float32)
    aw = a[write][:, None]
    region[write] = np.clip(np.rint(aw * new + (1.0 - aw) * old), 0, 255).astype(np.uint8)
    return out
