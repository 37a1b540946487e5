"""Crop windows and paste-back: property tests of the paste-back invariant, plus fixed cases.

The invariant (README, "What it promises"): every pixel farther than dilate + feather from the mask is
byte-identical to the decoded input. The expected regions are computed here by brute force,
independently of io/masks.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers_io import brute_distance2, brute_distance2_bounded, decode_png, encode, rand_rgb
from rayinpaint.io.finish import composite, finish_row
from rayinpaint.io.geometry import crop_window
from rayinpaint.io.prepare import prepare_row
from rayinpaint.io.settings import OutputSettings, PrepareSettings


@st.composite
def mask_cases(draw):
    w = draw(st.integers(4, 160))
    h = draw(st.integers(4, 160))
    mask = np.zeros((h, w), bool)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["rect", "hline", "vline", "corner", "edge", "big"]))
        x = draw(st.integers(0, w - 1))
        y = draw(st.integers(0, h - 1))
        if kind == "rect":
            mask[y:y + draw(st.integers(1, h)), x:x + draw(st.integers(1, w))] = True
        elif kind == "hline":
            mask[y, x:x + draw(st.integers(1, w))] = True
        elif kind == "vline":
            mask[y:y + draw(st.integers(1, h)), x] = True
        elif kind == "corner":
            mask[draw(st.sampled_from([0, h - 1])), draw(st.sampled_from([0, w - 1]))] = True
        elif kind == "edge":
            mask[:, draw(st.sampled_from([0, w - 1]))] = True
        else:  # covers most of the image, larger than the model resolution when R is small
            mask[h // 8: h - h // 8 or h, : w - 1 or w] = True
    return w, h, mask


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mask_cases(), resolution=st.sampled_from([64, 128]), dil=st.integers(0, 6),
       feather=st.integers(0, 6), context=st.sampled_from([0.0, 0.25, 1.0]), min_context=st.integers(0, 16),
       color=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
       seed=st.integers(0, 1000))
def test_window_contains_mask_and_untouched_pixels_are_untouched(case, resolution, dil, feather, context,
                                                                 min_context, color, seed):
    w, h, mask = case
    img = rand_rgb(w, h, seed)
    s = PrepareSettings(resolution=resolution, mask_dilate=dil, feather=feather, context=context,
                        min_context=min_context).validate()
    mask_png = encode((mask * 255).astype(np.uint8), "PNG")
    p = prepare_row({"id": "x", "image_bytes": encode(img, "PNG"), "mask_bytes": mask_png}, s)
    assert p["status"] == "ready", p["error"]

    # each region's window: square, at least R, no larger than needed, inside the image where it fits;
    # the windows' parts on the image do not overlap
    covered = np.zeros((h, w), np.int32)
    for x0, y0, x1, y1 in p["windows"]:
        side = x1 - x0
        assert y1 - y0 == side and resolution <= side <= max(w, h, resolution)
        for lo, hi, dim in ((x0, x1, w), (y0, y1, h)):
            if side <= dim:
                assert 0 <= lo and hi <= dim
            else:
                assert lo <= 0 and hi >= dim
        covered[max(0, y0):y1, max(0, x0):x1] += 1
    assert covered.max() == 1 and p["region_res"] == [resolution] * len(p["windows"])

    # brute-force regions
    d2 = brute_distance2_bounded(mask, dil + feather)
    dilated = d2 <= dil * dil
    reach = dil + feather
    touched_max = d2 < reach * reach if reach > 0 else mask
    assert covered[touched_max | dilated].all()  # every pixel a region may write lies in a window
    assert p["mask_pixels"] == int(dilated.sum())
    for (x0, _, x1, _), mm in zip(p["windows"], p["model_mask"]):
        model_mask = np.frombuffer(mm, np.uint8).reshape(resolution, resolution)
        assert set(np.unique(model_mask)) <= {0, 255} and (model_mask == 255).any() or x1 - x0 > resolution

    result = np.empty((resolution, resolution, 3), np.uint8)
    result[:] = color
    final, original = composite(p, [result] * len(p["windows"]), s)
    np.testing.assert_array_equal(original, img)
    untouched = ~touched_max & ~dilated
    np.testing.assert_array_equal(final[untouched], img[untouched])      # the key promise
    np.testing.assert_array_equal(final[dilated], np.broadcast_to(color, final[dilated].shape))
    band = ~untouched & ~dilated                                           # feathered: in between
    lo = np.minimum(img[band], np.array(color, np.uint8))
    hi = np.maximum(img[band], np.array(color, np.uint8))
    assert ((final[band] >= lo) & (final[band] <= hi)).all()


def test_crop_is_exact_when_window_equals_resolution():
    img = rand_rgb(300, 200, 1)
    mask = np.zeros((200, 300), np.uint8)
    mask[90:100, 140:160] = 255
    s = PrepareSettings(resolution=64, mask_dilate=0, feather=0, context=0.0, min_context=4).validate()
    p = prepare_row({"id": "a", "image_bytes": encode(img, "PNG"), "mask_bytes": encode(mask, "PNG")}, s)
    x0, y0, x1, y1 = p["window"]
    assert (x1 - x0, y1 - y0) == (64, 64)
    assert x0 <= 136 and x1 >= 164 and y0 <= 86 and y1 >= 104
    model_image = np.frombuffer(p["model_image"][0], np.uint8).reshape(64, 64, 3)
    np.testing.assert_array_equal(model_image, img[y0:y1, x0:x1])
    model_mask = np.frombuffer(p["model_mask"][0], np.uint8).reshape(64, 64)
    np.testing.assert_array_equal(model_mask, mask[y0:y1, x0:x1])


def test_small_image_is_reflect_padded_not_stretched():
    img = rand_rgb(40, 30, 2)
    mask = np.zeros((30, 40), np.uint8)
    mask[10:20, 10:20] = 255
    s = PrepareSettings(resolution=64, mask_dilate=2, feather=2).validate()
    p = prepare_row({"id": "a", "image_bytes": encode(img, "PNG"), "mask_bytes": encode(mask, "PNG")}, s)
    x0, y0, x1, y1 = p["window"]
    assert (x1 - x0, y1 - y0) == (64, 64) and x0 == -12 and y0 == -17
    mi = np.frombuffer(p["model_image"][0], np.uint8).reshape(64, 64, 3)
    np.testing.assert_array_equal(mi[-y0:-y0 + 30, -x0:-x0 + 40], img)            # 1:1, no resampling
    np.testing.assert_array_equal(mi[-y0 - 1, -x0:-x0 + 40], img[1])              # reflected row above
    np.testing.assert_array_equal(mi[:, -x0 + 40], mi[:, -x0 + 38])               # reflected column right


def test_large_mask_window_is_downscaled_to_resolution():
    img = rand_rgb(500, 300, 3)
    mask = np.zeros((300, 500), np.uint8)
    mask[50:250, 100:400] = 255
    s = PrepareSettings(resolution=128, mask_dilate=0, feather=0, context=0.1, min_context=8).validate()
    p = prepare_row({"id": "a", "image_bytes": encode(img, "PNG"), "mask_bytes": encode(mask, "PNG")}, s)
    x0, y0, x1, y1 = p["window"]
    assert x1 - x0 == 360 and x0 == 70 and y0 == -30 and y1 == 330   # 300 + 2 * 30, centred
    assert len(p["model_image"]) == 1 and len(p["model_image"][0]) == 128 * 128 * 3


@pytest.mark.parametrize("box, W, H, R, expect", [
    ((0, 0, 1, 1), 1000, 800, 512, (0, 0, 512, 512)),            # corner: shifted inside
    ((999, 799, 1000, 800), 1000, 800, 512, (488, 288, 1000, 800)),
    ((450, 350, 550, 450), 1000, 800, 512, (244, 144, 756, 656)),
    ((0, 0, 1000, 800), 1000, 800, 512, (0, -100, 1000, 900)),     # whole image: longer side
])
def test_crop_window_cases(box, W, H, R, expect):
    assert crop_window(box, W, H, R, 0.25, 32, 8) == expect


def test_paste_back_end_to_end_png_written(memfs_root):
    img = rand_rgb(120, 90, 4)
    mask = np.zeros((90, 120), np.uint8)
    mask[0:5, 100:120] = 255     # touches the top-right border
    s = PrepareSettings(resolution=64, mask_dilate=3, feather=4).validate()
    p = prepare_row({"id": "e", "image_bytes": encode(img, "PNG"), "mask_bytes": encode(mask, "PNG")}, s)
    result = np.full((64, 64, 3), 200, np.uint8)
    out = OutputSettings(root=memfs_root, format="png")
    row = finish_row(p, [result], s, out, {})
    assert row["status"] == "ok"
    from rayinpaint.io.storage import read_bytes
    final = decode_png(read_bytes(row["output_uri"]))
    far = brute_distance2(mask > 0) >= 7 * 7
    np.testing.assert_array_equal(final[far], img[far])
    assert (final[mask > 0] == 200).all()
