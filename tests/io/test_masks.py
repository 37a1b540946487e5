"""Masks: channel rules, threshold, boxes, COCO RLE, exact bounded distances, dilation, feather."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers_io import brute_distance2, coco_rle_encode_string, encode
from rayinpaint.io.errors import RowError
from rayinpaint.io.masks import (bbox, boxes_to_mask, decode_mask_values, dilate, feather_alpha,
                                 squared_distance, threshold_mask)
from rayinpaint.io.rle import decode_counts_string, mask_to_rle, rle_to_mask


def test_threshold_default_half_scale_and_invert():
    v = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(threshold_mask(v), [[False, False, True, True]])
    np.testing.assert_array_equal(threshold_mask(v, invert=True), [[True, True, False, False]])
    np.testing.assert_array_equal(threshold_mask(v, 0.1), [[False, True, True, True]])
    np.testing.assert_array_equal(threshold_mask(v, 1.0), [[False, False, False, True]])


def test_mask_channel_rules():
    grey = np.zeros((4, 4), np.uint8)
    grey[1, 1] = 255
    # L and 1
    np.testing.assert_array_equal(decode_mask_values(encode(Image.fromarray(grey, "L"), "PNG"), 10**6), grey)
    np.testing.assert_array_equal(
        decode_mask_values(encode(Image.fromarray(grey > 0).convert("1"), "PNG"), 10**6), grey)
    # RGB: luminance (white stays 255, pure red is 76 -> not marked at 0.5)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1] = 255
    rgb[2, 2] = (255, 0, 0)
    v = decode_mask_values(encode(rgb, "PNG"), 10**6)
    assert v[1, 1] == 255 and v[2, 2] == 76 and v[0, 0] == 0
    # RGBA with transparency: alpha is the mask (strokes on a transparent layer)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, which luminance would read as "all repaint"
    rgba[1, 1, 3] = 255
    np.testing.assert_array_equal(decode_mask_values(encode(rgba, "PNG"), 10**6), grey)
    # RGBA fully opaque: luminance
    rgba2 = np.dstack([np.repeat(grey[..., None], 3, 2), np.full((4, 4), 255, np.uint8)])
    np.testing.assert_array_equal(decode_mask_values(encode(rgba2, "PNG"), 10**6), grey)
    # LA with transparency: alpha
    la = np.dstack([np.full((4, 4), 255, np.uint8), grey])
    np.testing.assert_array_equal(decode_mask_values(encode(Image.fromarray(la, "LA"), "PNG"), 10**6), grey)


def test_zero_one_masks_are_read_as_one_is_repaint():
    """A mask whose values are only 0 and 1 (a boolean array saved with Image.fromarray(m.astype(uint8))) marks
    its 1s at any threshold; 0/255 masks, soft masks and all-black masks read exactly as before."""
    boolean = np.zeros((6, 8), bool)
    boolean[2:4, 3:6] = True
    zero_one = decode_mask_values(encode(Image.fromarray(boolean.astype(np.uint8)), "PNG"), 10**6)
    np.testing.assert_array_equal(zero_one, boolean.astype(np.uint8) * 255)
    for t in (0.01, 0.5, 1.0):
        np.testing.assert_array_equal(threshold_mask(zero_one, t), boolean)
    np.testing.assert_array_equal(threshold_mask(zero_one, 0.5, invert=True), ~boolean)
    # 0/1 in an alpha channel (strokes on a transparent layer) follows the same rule.
    la = np.dstack([np.full((6, 8), 255, np.uint8), boolean.astype(np.uint8)])
    np.testing.assert_array_equal(
        decode_mask_values(encode(Image.fromarray(la, "LA"), "PNG"), 10**6), boolean.astype(np.uint8) * 255)
    # 0/255 and soft masks: values untouched, so the threshold decides as before.
    hard = boolean.astype(np.uint8) * 255
    np.testing.assert_array_equal(decode_mask_values(encode(Image.fromarray(hard), "PNG"), 10**6), hard)
    soft = np.array([[0, 1, 2, 100, 127, 128, 200, 255]], np.uint8)
    v = decode_mask_values(encode(Image.fromarray(soft), "PNG"), 10**6)
    np.testing.assert_array_equal(v, soft)
    np.testing.assert_array_equal(threshold_mask(v), [[False] * 5 + [True] * 3])
    # All black stays empty (the row is `unchanged`).
    black = np.zeros((6, 8), np.uint8)
    assert not threshold_mask(decode_mask_values(encode(Image.fromarray(black), "PNG"), 10**6)).any()


def test_mask_size_check_and_resize():
    m = encode(Image.fromarray(np.full((10, 20), 255, np.uint8), "L"), "PNG")
    with pytest.raises(RowError) as ei:
        decode_mask_values(m, 10**6, size=(40, 20))
    assert ei.value.kind == "mask_size_mismatch" and "20x10" in ei.value.message and "40x20" in ei.value.message
    v = decode_mask_values(m, 10**6, size=(40, 20), resize=True)
    assert v.shape == (20, 40) and (v == 255).all()


def test_boxes():
    m = boxes_to_mask([[1, 2, 4, 3]], 6, 5)
    exp = np.zeros((5, 6), bool)
    exp[2:3, 1:4] = True
    np.testing.assert_array_equal(m, exp)
    m = boxes_to_mask([[0.5, 0.5, 1.2, 1.1], (4, 3, 100, 100)], 6, 5)  # fractional, clipped
    exp = np.zeros((5, 6), bool)
    exp[0:2, 0:2] = True
    exp[3:5, 4:6] = True
    np.testing.assert_array_equal(m, exp)
    assert not boxes_to_mask([], 6, 5).any()


@pytest.mark.parametrize("boxes, words", [
    ([[3, 0, 1, 2]], "x0 < x1"), ([[0, 0, 2]], "4 numbers"), ([["a", 0, 1, 1]], "numbers"),
    ([[0, 0, float("nan"), 1]], "finite"), ([[10, 10, 20, 20]], "outside"), ([[-5, -5, 0, 0]], "outside"),
    ([None], "numbers"), ([[0, 0, 1, 1], [2, 2, 1, 1]], "boxes[1]"),
])
def test_bad_boxes(boxes, words):
    with pytest.raises(RowError) as ei:
        boxes_to_mask(boxes, 6, 5)
    assert ei.value.kind == "bad_boxes" and words in ei.value.message


def test_rle_uncompressed_is_column_major():
    # 2 x 3 mask, column-major flattening: (0,0)(1,0)(0,1)(1,1)(0,2)(1,2)
    m = rle_to_mask({"size": [2, 3], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(m, np.array([[0, 1, 0], [1, 0, 0]], bool))
    assert rle_to_mask({"size": [2, 2], "counts": [0, 4]}).all()
    assert rle_to_mask('{"size": [2, 2], "counts": [4]}').sum() == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**32 - 1), st.floats(0.0, 1.0))
def test_rle_compressed_matches_independent_encoder(h, w, seed, p):
    mask = np.random.default_rng(seed).random((h, w)) < p
    rle = coco_rle_encode_string(mask)
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    np.testing.assert_array_equal(rle_to_mask({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    np.testing.assert_array_equal(rle_to_mask(mask_to_rle(mask)), mask)


def test_rle_large_runs_and_known_string():
    mask = np.zeros((300, 400), bool)
    mask[100:250, 30:390] = True
    np.testing.assert_array_equal(rle_to_mask(coco_rle_encode_string(mask)), mask)
    # hand-decoded: single characters without the continuation bit: "0" = 0, "3" = 3
    assert decode_counts_string("03") == [0, 3]
    # 'R' = 82-48 = 34 = 0x22: more-bit set, value 2; then '1' = 1 -> 2 + (1 << 5) = 34
    assert decode_counts_string("R1") == [34]


@pytest.mark.parametrize("rle, words", [
    ({"size": [2, 2], "counts": [1, 2]}, "sum to 3"),
    ({"size": [2, 2], "counts": "#$"}, "invalid character"),
    ({"size": [2], "counts": [4]}, "'size'"),
    ({"counts": [4]}, "'size'"),
    ({"size": [2, 2], "counts": 4}, "'counts'"),
    ({"size": [2, 2], "counts": [5, -1]}, "negative"),
    ("not json", "Expecting value"),
    ({"size": [2, 2], "counts": "R"}, "middle of a number"),
])
def test_bad_rle(rle, words):
    with pytest.raises(RowError) as ei:
        rle_to_mask(rle)
    assert ei.value.kind == "bad_rle" and words in ei.value.message


def test_rle_size_must_match_image():
    with pytest.raises(RowError, match="differs from the image"):
        rle_to_mask({"size": [2, 2], "counts": [4]}, expected_hw=(3, 2))


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1), st.sampled_from([0.01, 0.05, 0.3]),
       st.integers(0, 9))
def test_squared_distance_exact_within_bound(h, w, seed, p, bound):
    mask = np.random.default_rng(seed).random((h, w)) < p
    got = squared_distance(mask, bound)
    ref = brute_distance2(mask)
    near = ref <= bound * bound
    np.testing.assert_array_equal(got[near], ref[near])
    assert (got[~near] > bound * bound).all()


@st.composite
def _masks(draw):
    """Random dots at a random density, empty, full, or a few boxes (a solid area with a thin band around it,
    where the distances are taken on the band alone); 1-px-wide and non-square shapes included."""
    h, w = draw(st.sampled_from([1, 2, 3, 17, 40])), draw(st.sampled_from([1, 2, 5, 23, 40]))
    kind, seed = draw(st.sampled_from(["dots", "empty", "full", "boxes"])), draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "dots":
        return rng.random((h, w)) < rng.choice([0.002, 0.02, 0.2, 0.8])
    mask = np.full((h, w), kind == "full")
    for _ in range(int(rng.integers(1, 4)) if kind == "boxes" else 0):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        mask[y0:y0 + int(rng.integers(1, h + 1)), x0:x0 + int(rng.integers(1, w + 1))] = True
    return mask


@settings(max_examples=150, deadline=None)
@given(_masks(), st.integers(0, 40))
def test_squared_distance_is_the_capped_brute_force(mask, bound):
    got = squared_distance(mask, bound)
    assert got.dtype == np.int32 and got.shape == mask.shape
    # squared_distance's promise: the brute-force distance, capped at (bound + 1)^2 (everywhere, for an empty mask)
    np.testing.assert_array_equal(got, np.minimum(brute_distance2(mask), (bound + 1) ** 2))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1), st.integers(0, 7), st.integers(0, 6))
def test_dilate_and_feather_match_brute_force(h, w, seed, r, f):
    mask = np.random.default_rng(seed).random((h, w)) < 0.03
    d = dilate(mask, r)
    np.testing.assert_array_equal(d, brute_distance2(mask) <= r * r)
    a = feather_alpha(d, f)
    dd = np.sqrt(brute_distance2(d).astype(float)) if d.any() else np.full(d.shape, np.inf)
    exp = d.astype(float) if f == 0 else np.clip(1 - dd / f, 0, 1)
    np.testing.assert_allclose(a, exp, atol=1e-6)
    assert (a[d] == 1).all() and (a[dd >= max(f, 1e-9)] == 0).all()


def test_bbox():
    m = np.zeros((5, 7), bool)
    assert bbox(m) is None
    m[1, 2] = m[3, 5] = True
    assert bbox(m) == (2, 1, 6, 4)
