"""Regions: the parts of a repaint mask that are inpainted each in a window of its own.

A dataset-cleanup mask is rarely one blob (a watermark in one corner, a logo in another, a plate and two
faces). One window around the whole mask would be shrunk to the model resolution and blur every fill, so
the mask is split, and each region gets the window the window rule (geometry.crop_window) gives its own
bounding box. How a region is formed, from the dilated repaint mask:

1. **Parts.** Connected parts of the mask, 8-connected on a grid of ``CELL`` x ``CELL`` pixel cells: marks
   in the same or in touching cells are one part (closer than ``CELL`` px, they would share a window
   anyway). A mask of more than ``MAX_PARTS`` parts (text, speckle) is labelled again on cells larger by a
   power of two (about sqrt(parts / MAX_PARTS)), until it has at most ``MAX_PARTS``. Each part keeps the
   exact pixel bounding box of its pixels.
2. **Groups.** Two groups are joined when the parts of their windows that lie on the image overlap (a
   window must not see another region's unfilled mask as context), or when one window around both is no
   larger than the larger of their own windows (sharing it costs no resolution). The qualifying pair
   with the smallest joint window is joined first, and the rule applied again, until no pair qualifies.
3. **Cap.** While more than ``max_regions`` groups remain, the pair with the smallest joint window is
   joined (then step 2 again).
4. **Order.** Regions are ordered top to bottom, then left to right, by window. Region 0 draws its noise
   from the row's seed, region k > 0 from ``region_seed(seed, k)``; so a row with one region gets exactly
   the window and the noise a whole-mask window always had.

Windows of the final regions do not overlap on the image, and each holds its mask pixels plus the
feather band (the window rule's margin is at least ``feather``): paste-back of every region into one
copy of the original leaves every pixel farther than ``feather`` from the mask untouched.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from .geometry import crop_windows, window_side
from .masks import bbox

CELL = 8                  # px: labelling grid (step 1)
MAX_PARTS = 64            # parts before the grid coarsens (step 1); bounds the O(n^2) grouping work
DEFAULT_MAX_REGIONS = 8   # --max-regions
RESOLUTION_STEP_LARGE = 256  # --max-resolution: large regions run at R, R + 256, ... (fewer batch shapes)


def region_seed(seed: int, index: int) -> int:
    """Seed of region `index` of a row whose seed is `seed`: the row's own seed for region 0, else the first
    8 bytes of SHA-256("seed:index") with the top bit cleared (in [0, 2**63), like row seeds)."""
    if index == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def region_resolution(side: int, resolution: int, max_resolution: int) -> int:
    """Model side for a window of `side` px: R, or with --max-resolution above R, the smallest of R + k * 256
    that holds the window, at most max_resolution (a region is never run above its native size by more
    than one step, and batches see few shapes)."""
    if side <= resolution or max_resolution <= resolution:
        return resolution
    steps = math.ceil((side - resolution) / RESOLUTION_STEP_LARGE)
    return min(max_resolution, resolution + steps * RESOLUTION_STEP_LARGE)


# ---- step 1: parts ---------------------------------------------------------------------------------------

def _cells(mask: np.ndarray, cell: int) -> np.ndarray:
    """bool [ceil(H / cell), ceil(W / cell)]: cells holding at least one marked pixel. Only the bands of rows
    that hold marks are reduced: masks are mostly empty, and a 12-MP mask is read once, by `any`."""
    h, w = mask.shape
    gh, gw = -(-h // cell), -(-w // cell)
    bands = np.unique(np.flatnonzero(mask.any(axis=1)) // cell)
    cols = np.zeros((len(bands), gw * cell), dtype=bool)
    for i, y in enumerate(bands.tolist()):
        cols[i, :w] = mask[y * cell:(y + 1) * cell].any(axis=0)
    grid = np.zeros((gh, gw), dtype=bool)
    grid[bands] = cols.reshape(len(bands), gw, cell).any(axis=2)
    return grid


def _runs(grid: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, end) of every horizontal run of marked cells, end exclusive, in row-major order."""
    edges = np.diff(np.pad(grid.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    ys, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return list(zip(ys.tolist(), starts.tolist(), ends.tolist()))


def _label_runs(runs: list[tuple[int, int, int]]) -> list[int]:
    """Component root per run (union-find): runs in consecutive rows are joined when their cells touch,
    diagonals included. Two pointers over the sorted runs of the row above keep it linear."""
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    above: list[int] = []  # indices of the runs of the previous row
    current: list[int] = []
    row = None
    for i, (y, s, e) in enumerate(runs):
        if y != row:
            above, current, row = (current if row == y - 1 else []), [], y
            j = 0
        while j < len(above) and runs[above[j]][2] < s:  # ends before this run's left neighbour
            j += 1
        k = j
        while k < len(above) and runs[above[k]][1] <= e:  # starts at most one cell past this run's end
            parent[root(i)] = root(above[k])
            k += 1
        current.append(i)
    return [root(i) for i in range(len(runs))]


def _part_boxes(mask: np.ndarray, grid: np.ndarray, cell: int, runs, roots) -> list[tuple[int, int, int, int]]:
    """Exact pixel bounding box of each part's marked pixels, parts in the order of their first run."""
    labels = np.full(grid.shape, -1, dtype=np.int32)
    spans: dict[int, list[int]] = {}  # root -> [cy0, cx0, cy1, cx1] in cells
    for (y, s, e), r in zip(runs, roots):
        labels[y, s:e] = r
        box = spans.setdefault(r, [y, s, y + 1, e])
        box[1], box[2], box[3] = min(box[1], s), y + 1, max(box[3], e)
    boxes = []
    for r, (cy0, cx0, cy1, cx1) in spans.items():
        mine = np.repeat(np.repeat(labels[cy0:cy1, cx0:cx1] == r, cell, axis=0), cell, axis=1)
        sub = mask[cy0 * cell: cy1 * cell, cx0 * cell: cx1 * cell]
        x0, y0, x1, y1 = bbox(sub & mine[:sub.shape[0], :sub.shape[1]])
        boxes.append((x0 + cx0 * cell, y0 + cy0 * cell, x1 + cx0 * cell, y1 + cy0 * cell))
    return boxes


def mask_parts(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Pixel bounding boxes of the mask's parts (step 1 of the module docstring); [] for an empty mask."""
    cell = CELL
    grid = _cells(mask, cell)
    while True:
        runs = _runs(grid)
        roots = _label_runs(runs)
        parts = len(set(roots))
        if parts <= MAX_PARTS:
            return _part_boxes(mask, grid, cell, runs, roots)
        # Coarser by a power of two, chosen so that as many parts spread evenly would fit: one more pass, not many
        factor = 2 ** max(1, math.ceil(math.log2(math.sqrt(parts / MAX_PARTS))))
        grid = _cells(grid, factor)  # the coarser grid of the grid itself
        cell *= factor


# ---- steps 2-4: groups, cap, order -----------------------------------------------------------------------

def _pick_join(boxes: np.ndarray, width: int, height: int, shape: dict, max_regions: int) -> tuple[int, int] | None:
    """The pair of groups to join next (steps 2 and 3), or None when the grouping is final."""
    n = len(boxes)
    lo, hi = np.minimum(boxes[:, None, :2], boxes[None, :, :2]), np.maximum(boxes[:, None, 2:], boxes[None, :, 2:])
    joint = window_side(hi[..., 0] - lo[..., 0], hi[..., 1] - lo[..., 1], width, height, **shape)
    own = window_side(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1], width, height, **shape)
    win = crop_windows(boxes, width, height, **shape)
    inside = np.stack([np.maximum(win[:, 0], 0), np.maximum(win[:, 1], 0),
                       np.minimum(win[:, 2], width), np.minimum(win[:, 3], height)], axis=1)  # on the image
    overlap = ((inside[:, None, 0] < inside[None, :, 2]) & (inside[None, :, 0] < inside[:, None, 2])
               & (inside[:, None, 1] < inside[None, :, 3]) & (inside[None, :, 1] < inside[:, None, 3]))
    pairs = np.triu(np.ones((n, n), dtype=bool), 1)
    wanted = pairs & (overlap | (joint <= np.maximum(own[:, None], own[None, :])))
    if not wanted.any():
        if n <= max_regions:
            return None
        wanted = pairs
    cost = np.where(wanted, joint, np.iinfo(np.int64).max)
    i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)  # ties: the first pair in row-major order
    return int(i), int(j)


def region_windows(repaint: np.ndarray, resolution: int, context: float, min_context: int, feather: int,
                   max_regions: int = DEFAULT_MAX_REGIONS) -> list[tuple[int, int, int, int]]:
    """The windows of the mask's regions, in region order (module docstring); [] for an empty mask."""
    height, width = repaint.shape
    shape = {"resolution": resolution, "context": context, "min_context": min_context, "feather": feather}
    boxes = np.array(mask_parts(repaint), dtype=np.int64).reshape(-1, 4)
    while len(boxes) > 1:
        pair = _pick_join(boxes, width, height, shape, max_regions)
        if pair is None:
            break
        i, j = pair
        boxes[i] = [min(boxes[i, 0], boxes[j, 0]), min(boxes[i, 1], boxes[j, 1]),
                    max(boxes[i, 2], boxes[j, 2]), max(boxes[i, 3], boxes[j, 3])]
        boxes = np.delete(boxes, j, axis=0)
    windows = [tuple(w) for w in crop_windows(boxes, width, height, **shape).tolist()]
    return sorted(windows, key=lambda w: (w[1], w[0]))
