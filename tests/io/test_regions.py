"""Regions (io/regions.py): the parts of a mask, their grouping into windows, seeds and model sides."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayinpaint.io.geometry import crop_window, window_inside
from rayinpaint.io.masks import bbox
from rayinpaint.io.regions import (CELL, MAX_PARTS, mask_parts, region_resolution, region_seed,
                                   region_windows)

SHAPE = {"resolution": 64, "context": 0.25, "min_context": 4, "feather": 2}


def brute_parts(mask: np.ndarray, cell: int) -> set[tuple[int, int, int, int]]:
    """Reference: breadth-first search over the cells (8-connected), then each part's pixel bounding box."""
    h, w = mask.shape
    gh, gw = -(-h // cell), -(-w // cell)
    seen = np.zeros((gh, gw), bool)
    marked = np.array([[mask[y * cell:(y + 1) * cell, x * cell:(x + 1) * cell].any() for x in range(gw)]
                       for y in range(gh)]).reshape(gh, gw)
    boxes = set()
    for y0 in range(gh):
        for x0 in range(gw):
            if not marked[y0, x0] or seen[y0, x0]:
                continue
            part = np.zeros((h, w), bool)
            queue = deque([(y0, x0)])
            seen[y0, x0] = True
            while queue:
                y, x = queue.popleft()
                part[y * cell:(y + 1) * cell, x * cell:(x + 1) * cell] = True
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = y + dy, x + dx
                        if 0 <= ny < gh and 0 <= nx < gw and marked[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            boxes.add(bbox(mask & part))
    return boxes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 90), w=st.integers(1, 90), density=st.sampled_from([0.002, 0.01, 0.05, 0.3]),
       seed=st.integers(0, 10_000))
def test_parts_match_a_brute_force_labelling(h, w, density, seed):
    mask = np.random.default_rng(seed).random((h, w)) < density
    got = mask_parts(mask)
    assert len(got) == len(set(got))
    assert set(got) == brute_parts(mask, CELL)


def test_a_mask_of_many_specks_is_labelled_on_a_coarser_grid():
    mask = np.zeros((400, 400), bool)
    mask[::20, ::20] = True  # 400 specks 20 px apart: 400 parts at 8-px cells
    parts = mask_parts(mask)
    assert 1 <= len(parts) <= MAX_PARTS
    covered = np.zeros_like(mask)
    for x0, y0, x1, y1 in parts:
        covered[y0:y1, x0:x1] = True
    assert covered[mask].all()
    assert mask_parts(np.zeros((50, 60), bool)) == []


def check_windows(mask: np.ndarray, windows, shape: dict) -> None:
    """Square, at least R; disjoint on the image; every marked pixel inside one window with the feather band."""
    h, w = mask.shape
    count = np.zeros((h, w), np.int32)
    for win in windows:
        assert win[2] - win[0] == win[3] - win[1] >= shape["resolution"]
        x0, y0, x1, y1 = window_inside(win, w, h)
        count[y0:y1, x0:x1] += 1
    assert count.max() <= 1
    f = shape["feather"]
    ys, xs = np.nonzero(mask)
    for y, x in zip(ys, xs):  # the feather band around each marked pixel lies in the same window
        lo_y, hi_y, lo_x, hi_x = max(0, y - f), min(h, y + f + 1), max(0, x - f), min(w, x + f + 1)
        assert count[lo_y:hi_y, lo_x:hi_x].all()


@st.composite
def marks(draw):
    w, h = draw(st.integers(40, 700)), draw(st.integers(40, 700))
    mask = np.zeros((h, w), bool)
    for _ in range(draw(st.integers(1, 12))):
        x, y = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        mask[y:y + draw(st.integers(1, 60)), x:x + draw(st.integers(1, 60))] = True
    return mask


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=marks(), max_regions=st.integers(1, 9), feather=st.integers(0, 6))
def test_windows_are_disjoint_and_hold_every_mark_with_its_feather(mask, max_regions, feather):
    shape = {**SHAPE, "feather": feather}
    windows = region_windows(mask, max_regions=max_regions, **shape)
    assert 1 <= len(windows) <= max_regions
    check_windows(mask, windows, shape)
    assert windows == sorted(windows, key=lambda v: (v[1], v[0]))  # top to bottom, then left to right
    if len(windows) == 1:  # one region: the window the whole mask always got
        assert windows[0] == crop_window(bbox(mask), mask.shape[1], mask.shape[0], **shape)


def test_marks_far_apart_get_a_native_window_each():
    mask = np.zeros((2000, 3000), bool)
    mask[20:72, 20:72] = True          # top-left corner
    mask[1900:1952, 2900:2952] = True  # bottom-right corner
    shape = {"resolution": 512, "context": 0.25, "min_context": 32, "feather": 8}
    assert region_windows(mask, **shape) == [(0, 0, 512, 512), (2488, 1488, 3000, 2000)]
    assert region_windows(mask, max_regions=1, **shape) == [crop_window((20, 20, 2952, 1952), 3000, 2000, **shape)]


def test_marks_that_fit_one_window_share_it():
    mask = np.zeros((1000, 1000), bool)
    mask[100:140, 100:140] = True
    mask[100:140, 300:340] = True  # both fit in one 512 window: joined, no resolution lost
    shape = {"resolution": 512, "context": 0.25, "min_context": 32, "feather": 8}
    (win,) = region_windows(mask, **shape)
    assert win[2] - win[0] == 512


def test_the_cap_joins_the_closest_groups():
    mask = np.zeros((2000, 4000), bool)
    xs = (400, 1000, 1600, 2200, 2800)  # five marks in a row, 600 px apart: too far to share a 512 window
    for x in xs:
        mask[1000:1030, x:x + 30] = True
    shape = {"resolution": 512, "context": 0.25, "min_context": 32, "feather": 8}
    assert [v[2] - v[0] for v in region_windows(mask, **shape)] == [512] * 5
    three = region_windows(mask, max_regions=3, **shape)
    check_windows(mask, three, shape)
    # neighbours are joined two by two, left to right (ties go to the first pair); the last mark keeps its own
    holds = [[x for x in xs if v[0] <= x and x + 30 <= v[2]] for v in sorted(three)]
    assert holds == [[400, 1000], [1600, 2200], [2800]]
    assert [v[2] - v[0] for v in sorted(three)] == [946, 946, 512]


def test_region_seeds_and_sides():
    assert region_seed(1234, 0) == 1234
    seeds = [region_seed(1234, k) for k in range(1, 50)]
    assert len(set(seeds) | {1234}) == 50 and all(0 <= s < 2 ** 63 for s in seeds)
    assert region_seed(1234, 3) == region_seed(1234, 3) != region_seed(1235, 3)
    assert region_resolution(700, 512, 0) == 512            # off: resized to R
    assert region_resolution(512, 512, 1024) == 512
    assert region_resolution(513, 512, 1024) == 768          # the next step that holds the window
    assert region_resolution(900, 512, 1024) == 1024
    assert region_resolution(3000, 512, 1024) == 1024        # capped
    assert region_resolution(3000, 512, 768) == 768


@pytest.mark.parametrize("size", [(3000, 4000)])
def test_a_12_mp_mask_of_specks_gives_valid_windows(size):
    """Thousands of specks on a 12-MP mask (the coarser-grid path); its cost is measured by bench --regions."""
    rng = np.random.default_rng(1)
    mask = rng.random(size) < 0.0005
    shape = {"resolution": 512, "context": 0.25, "min_context": 32, "feather": 8}
    windows = region_windows(mask, **shape)
    assert 1 <= len(windows) <= 8
    check_windows(mask, windows, shape)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask=marks(), dil=st.integers(0, 4), feather=st.integers(0, 5), seed=st.integers(0, 1000))
def test_paste_back_of_several_regions_keeps_every_pixel_beyond_the_feather(mask, dil, feather, seed):
    """prepare -> (each region's output a flat colour of its own) -> composite: every pixel farther than the
    feather from the dilated mask keeps its bytes; every dilated-mask pixel takes its region's colour."""
    from helpers_io import brute_distance2_bounded, encode, rand_rgb

    from rayinpaint.io.finish import composite
    from rayinpaint.io.prepare import prepare_row
    from rayinpaint.io.settings import PrepareSettings

    h, w = mask.shape
    img = rand_rgb(w, h, seed)
    s = PrepareSettings(resolution=64, mask_dilate=dil, feather=feather, min_context=4).validate()
    p = prepare_row({"id": "x", "image_bytes": encode(img, "PNG"), "mask_bytes": encode(mask.astype(np.uint8) * 255,
                                                                                         "PNG")}, s)
    assert p["status"] == "ready", p["error"]
    colours = [np.full((64, 64, 3), (40 * k + 20) % 256, np.uint8) for k in range(len(p["windows"]))]
    final, _ = composite(p, colours, s)
    d2 = brute_distance2_bounded(mask, dil + feather)
    dilated = d2 <= dil * dil
    reach = dil + feather
    far = ~(d2 < reach * reach) & ~dilated if reach > 0 else ~mask
    np.testing.assert_array_equal(final[far], img[far])
    for (x0, y0, x1, y1), c in zip(p["windows"], colours):
        inside = np.zeros_like(dilated)
        inside[max(0, y0):y1, max(0, x0):x1] = True
        assert (final[dilated & inside] == c[0, 0]).all()
