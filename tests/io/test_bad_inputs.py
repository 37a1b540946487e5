"""A generated corpus of bad (and awkward-but-valid) inputs, each with its asserted outcome.

Every case goes through prepare_row (and finish_row for non-error rows) and must give exactly
the expected (status, error_kind); prepare_row must never raise.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers_io import (coco_rle_encode_string, corrupt_png, encode, exif_jpeg, gif_animated, make_jpeg, make_mask_png,
                        make_png, p_transparent, png_header, rand_rgb)
from rayinpaint.io.finish import finish_row
from rayinpaint.io.prepare import prepare_row
from rayinpaint.io.settings import OutputSettings, PrepareSettings

W, H = 64, 48
MASK = make_mask_png(W, H, [(10, 10, 30, 30)])


def img(data):
    return {"image_bytes": data, "mask_bytes": MASK}


CASES = {
    # name: (row fields, settings overrides, expected status, expected kind, words in message)
    "empty_bytes": (img(b""), {}, "error", "empty_input", "0 bytes"),
    "truncated_png": (img(make_png(W, H)[:300]), {}, "error", "truncated", "PNG"),
    "truncated_jpeg": (img(make_jpeg(W, H)[:-200]), {}, "error", "truncated", "JPEG"),
    "truncated_webp": (img(encode(rand_rgb(W, H), "WEBP")[:-100]), {}, "error", "truncated", "WEBP"),
    "random_bytes": (img(np.random.default_rng(0).bytes(500)), {}, "error", "not_an_image", "no known image"),
    "text_file": (img(b"id,image\n1,a.png\n"), {}, "error", "not_an_image", "text"),
    "html_error_page": (img(b"<!DOCTYPE html><html><body>503 Service Unavailable</body></html>"), {},
                        "error", "not_an_image", "HTML"),
    "zero_size_image": (img(png_header(0, 10)), {}, "error", "empty_image", "zero size"),
    "bomb_header": (img(png_header(20000, 20000)), {}, "error", "too_large", "over the limit"),
    "over_configured_limit": (img(make_png(W, H)), {"max_pixels": 1000}, "error", "too_large", "3072"),
    "corrupt_png": (img(corrupt_png()), {}, "error", "corrupt_image", "does not decode"),
    "missing_local_file": ({"image_uri": "/nonexistent/dir/x.png", "mask_bytes": MASK}, {},
                           "error", "not_found", "/nonexistent/dir/x.png"),
    "missing_mask_file": ({"image_bytes": make_png(W, H), "mask_uri": "/nonexistent/m.png"}, {},
                          "error", "not_found", "mask"),
    "mask_not_an_image": ({"image_bytes": make_png(W, H), "mask_bytes": b"GIF? no"}, {},
                          "error", "not_an_image", "mask"),
    "mask_size_mismatch": ({"image_bytes": make_png(W, H), "mask_bytes": make_mask_png(W + 1, H, [(0, 0, 5, 5)])},
                           {}, "error", "mask_size_mismatch", "65x48"),
    "mask_size_resized": ({"image_bytes": make_png(W, H), "mask_bytes": make_mask_png(W * 2, H * 2, [(0, 0, 9, 9)])},
                          {"resize_mask": True}, "ready", None, None),
    "empty_mask": ({"image_bytes": make_png(W, H), "mask_bytes": make_mask_png(W, H)}, {}, "unchanged", None, None),
    "all_white_mask": ({"image_bytes": make_png(W, H), "mask_bytes": make_mask_png(W, H, [(0, 0, W, H)])}, {},
                       "ready", None, None),
    "inverted_white_mask": ({"image_bytes": make_png(W, H), "mask_bytes": make_mask_png(W, H, [(0, 0, W, H)])},
                            {"mask_invert": True}, "unchanged", None, None),
    "boxes_reversed": ({"image_bytes": make_png(W, H), "boxes": [[30, 10, 10, 20]]}, {}, "error", "bad_boxes", "x0 < x1"),
    "boxes_outside": ({"image_bytes": make_png(W, H), "boxes": [[100, 100, 120, 120]]}, {}, "error", "bad_boxes", "outside"),
    "boxes_non_numeric": ({"image_bytes": make_png(W, H), "boxes": [["left", 0, 5, 5]]}, {}, "error", "bad_boxes", "numbers"),
    "boxes_not_a_list": ({"image_bytes": make_png(W, H), "boxes": "0,0,5,5"}, {}, "error", "bad_boxes", "list"),
    "boxes_empty_list": ({"image_bytes": make_png(W, H), "boxes": []}, {}, "unchanged", None, None),
    "rle_bad_sum": ({"image_bytes": make_png(W, H), "mask_rle": json.dumps({"size": [H, W], "counts": [5, 5]})}, {},
                    "error", "bad_rle", "sum"),
    "rle_wrong_size": ({"image_bytes": make_png(W, H), "mask_rle": json.dumps({"size": [2, 2], "counts": [4]})}, {},
                       "error", "bad_rle", "differs"),
    "rle_garbage": ({"image_bytes": make_png(W, H), "mask_rle": "{not json"}, {}, "error", "bad_rle", "mask_rle"),
    "rle_valid_compressed": ({"image_bytes": make_png(W, H), "mask_rle": json.dumps(
        coco_rle_encode_string(np.pad(np.ones((5, 5), bool), ((3, H - 8), (40, W - 45)))))}, {}, "ready", None, None),
    "null_image": ({"mask_bytes": MASK}, {}, "error", "bad_row", "image is null"),
    "null_id": ({"id": None, **img(make_png(W, H))}, {}, "error", "bad_row", "id is null"),
    "empty_id": ({"id": "", **img(make_png(W, H))}, {}, "error", "bad_row", "id is empty"),
    "negative_seed": ({"seed": -5, **img(make_png(W, H))}, {}, "error", "bad_row", "seed"),
    "no_mask_source": ({"image_bytes": make_png(W, H)}, {}, "error", "bad_row", "no mask"),
    "directory_as_image": ({"image_uri": "/tmp", "mask_bytes": MASK}, {}, "error", "io_error", "/tmp"),
    "cmyk_jpeg_ok": (img(encode(Image.fromarray(rand_rgb(W, H)).convert("CMYK"), "JPEG")), {}, "ready", None, None),
    "i16_png_ok": (img(encode(Image.fromarray((rand_rgb(W, H)[..., 0].astype(np.uint16) * 257)), "PNG")), {},
                   "ready", None, None),
    "palette_transparency_ok": (img(p_transparent()), {}, "ready", None, None),
    "la_png_ok": (img(encode(Image.fromarray(rand_rgb(W, H)[..., :2], "LA"), "PNG")), {}, "ready", None, None),
    "animated_gif_ok": (img(gif_animated()), {}, "ready", None, None),
    "exif_rotated_jpeg_ok": (img(exif_jpeg()), {}, "ready", None, None),
    "tiff_ok": (img(encode(rand_rgb(W, H), "TIFF")), {}, "ready", None, None),
    "bmp_ok": (img(encode(rand_rgb(W, H), "BMP")), {}, "ready", None, None),
}


def test_corpus_has_at_least_20_error_kinds_of_input():
    assert sum(1 for c in CASES.values() if c[2] == "error") >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_outcome(name, tmp_path):
    fields, overrides, status, kind, words = CASES[name]
    row = {"id": name, **fields}
    s = PrepareSettings(resolution=64, **overrides).validate()
    p = prepare_row(row, s)
    assert (p["status"], p["error_kind"]) == (status, kind), p["error"]
    if words is not None:
        assert words in p["error"], p["error"]
    if status == "error":
        assert p["model_image"] == [] and p["window"] is None and p["windows"] == []
    r = finish_row(p, [np.full((64, 64, 3), 128, np.uint8)] * len(p["windows"]) if status == "ready" else None, s,
                   OutputSettings(root=str(tmp_path)), {})
    assert r["status"] == {"ready": "ok", "unchanged": "unchanged", "error": "error"}[status]
    assert r["error_kind"] == kind
    written = os.listdir(tmp_path / "images") if (tmp_path / "images").exists() else []
    assert (len(written) == 1) == (status != "error")
    if name == "exif_rotated_jpeg_ok":
        assert (p["width"], p["height"]) == (W, H)
    if name == "animated_gif_ok":
        out = np.asarray(Image.open(tmp_path / "images" / written[0]).convert("RGB"))
        assert tuple(out[H - 1, W - 1]) == (255, 0, 0)  # first frame kept away from the mask


def test_access_denied_is_a_row_error(tmp_path, monkeypatch):
    import fsspec

    fs = fsspec.filesystem("file")

    def deny(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(fs, "cat_file", deny)
    p = prepare_row({"id": "d", "image_uri": str(tmp_path / "x.png"), "mask_bytes": MASK},
                    PrepareSettings(resolution=64))
    assert (p["status"], p["error_kind"]) == ("error", "access_denied")
    assert "access denied" in p["error"] and "x.png" in p["error"]


def test_s3_access_denied_from_server_error(s3_bucket, monkeypatch):
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from rayinpaint.io.storage import filesystem, write_bytes

    bucket, opts = s3_bucket
    uri = f"s3://{bucket}/secret.png"
    write_bytes(uri, make_png(W, H), opts)
    fs, _ = filesystem(uri, opts)
    calls = []

    def deny(path, *a, **k):
        calls.append(path)
        raise translate_boto_error(ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}},
                                               "GetObject"))

    monkeypatch.setattr(fs, "cat_file", deny)
    p = prepare_row({"id": "s", "image_uri": uri, "mask_bytes": MASK}, PrepareSettings(resolution=64, storage=opts))
    assert (p["error_kind"], len(calls)) == ("access_denied", 1)
