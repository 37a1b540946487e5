"""Bad and awkward input through the whole job: one manifest holding every kind, one run, every row's outcome.

Each case is a manifest row (or a manifest) built here, with the outcome the job must give it. The job never
aborts on a row: every row ends as exactly one results row, `ok` / `unchanged` or `error` with its own
`error_kind` and a reason, and the summary's counts add up to the manifest's rows. Manifest-level problems
(missing or mistyped columns, a file that is not Parquet) stop the job before any work with one clear line.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers_io import (coco_rle_encode_string, corrupt_png, encode, exif_jpeg, gif_animated, make_jpeg, make_mask_png,
                        make_png, p_transparent, png_header, rand_rgb)
from rayinpaint.io.errors import ManifestError
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.ledger.files import read_results
from rayinpaint.ledger.manifest import missing_id_name

pytestmark = pytest.mark.timeout(900)

W, H = 64, 48
BOX = (10, 10, 30, 30)
SETTINGS = dict(weights="random:tiny", steps=1, resolution=64, batch_size=4, progress_interval=5.0,
                max_error_rate=1.0, mask_dilate=2, feather=2, min_context=8, max_pixels=1_000_000,
                prompt="clean background")
LONG_PROMPT = " ".join(f"word{i}" for i in range(120))  # about 240 BPE tokens


def soft_mask(w, h):
    """0..255 horizontal gradient: only the right half is at or above the 0.5 threshold."""
    return encode(np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1)), "PNG")


def rgba_only_mask(w, h):
    """RGB all black; the repaint region lives only in the alpha channel (strokes on a transparent layer)."""
    a = np.zeros((h, w, 4), np.uint8)
    a[BOX[1]:BOX[3], BOX[0]:BOX[2], 3] = 255
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def real_bomb():
    """A real PNG of 2000x2000 = 4M pixels in a few KB: over the job's --max-pixels 1M."""
    return encode(Image.new("L", (2000, 2000), 0), "PNG")


MASK = make_mask_png(W, H, [BOX])

# id -> (what the row holds, expected status, expected error_kind). Files are written to images/ and masks/;
# "image"/"mask" name a file there (or are full URIs when they contain "://" or start with "/").
# Each entry is one kind of input.
CASES: dict[str, tuple[dict, str, str | None]] = {
    # image bytes
    "img-corrupt": ({"image_file": ("corrupt.png", corrupt_png())}, "error", "corrupt_image"),
    "img-truncated-png": ({"image_file": ("trunc.png", make_png(W, H)[:300])}, "error", "truncated"),
    "img-truncated-jpeg": ({"image_file": ("trunc.jpg", make_jpeg(W, H)[:-200])}, "error", "truncated"),
    "img-empty-file": ({"image_file": ("empty.png", b"")}, "error", "empty_input"),
    "img-text-file": ({"image_file": ("notes.png", b"id,image\n1,a.png\n")}, "error", "not_an_image"),
    "img-html-error-page": ({"image_file": ("page.png", b"<!DOCTYPE html><html>503</html>")}, "error", "not_an_image"),
    "img-zero-size": ({"image_file": ("zero.png", png_header(0, 10))}, "error", "empty_image"),
    "img-bomb-header": ({"image_file": ("bomb1.png", png_header(30000, 30000))}, "error", "too_large"),
    "img-bomb-real": ({"image_file": ("bomb2.png", real_bomb()), "mask_none": True, "boxes": [[0, 0, 9, 9]]},
                      "error", "too_large"),
    "img-wrong-extension": ({"image_file": ("png-bytes.jpg", make_png(W, H, 1))}, "ok", None),
    "img-1x1": ({"image_file": ("one.png", make_png(1, 1)), "mask_file": ("one.png", make_mask_png(1, 1, [(0, 0, 1, 1)]))},
                "ok", None),
    "img-extreme-aspect": ({"image_file": ("wide.png", make_png(1500, 6)),
                            "mask_file": ("wide.png", make_mask_png(1500, 6, [(700, 0, 760, 6)]))}, "ok", None),
    "img-16bit": ({"image_file": ("i16.png", encode(Image.fromarray(rand_rgb(W, H)[..., 0].astype(np.uint16) * 257)))},
                  "ok", None),
    "img-cmyk": ({"image_file": ("cmyk.jpg", encode(Image.fromarray(rand_rgb(W, H)).convert("CMYK"), "JPEG"))},
                 "ok", None),
    "img-palette-transparent": ({"image_file": ("pal.png", p_transparent())}, "ok", None),
    "img-animated-gif": ({"image_file": ("anim.gif", gif_animated())}, "ok", None),
    "img-exif-rotated": ({"image_file": ("exif.jpg", exif_jpeg())}, "ok", None),
    "img-webp": ({"image_file": ("x.webp", encode(rand_rgb(W, H), "WEBP", lossless=True))}, "ok", None),
    "img-missing-object": ({"image": "does-not-exist.png"}, "error", "not_found"),
    "img-directory": ({"image": "/"}, "error", "io_error"),
    "img-null": ({"image": None}, "error", "bad_row"),
    # masks
    "mask-other-size": ({"mask_file": ("big.png", make_mask_png(W * 2, H, [(0, 0, 9, 9)]))}, "error",
                        "mask_size_mismatch"),
    "mask-empty": ({"mask_file": ("empty.png", make_mask_png(W, H))}, "unchanged", None),
    "mask-full": ({"mask_file": ("full.png", make_mask_png(W, H, [(0, 0, W, H)]))}, "ok", None),
    "mask-soft-gradient": ({"mask_file": ("soft.png", soft_mask(W, H))}, "ok", None),
    "mask-rgba-alpha-only": ({"mask_file": ("rgba.png", rgba_only_mask(W, H))}, "ok", None),
    "mask-not-an-image": ({"mask_file": ("junk.png", b"GIF? no")}, "error", "not_an_image"),
    "mask-missing-object": ({"mask": "nope.png"}, "error", "not_found"),
    "mask-none-at-all": ({"mask_none": True}, "error", "bad_row"),
    "boxes-reversed": ({"mask_none": True, "boxes": [[30, 10, 10, 20]]}, "error", "bad_boxes"),
    "boxes-valid": ({"mask_none": True, "boxes": [[5.5, 4, 20.2, 30]]}, "ok", None),
    "rle-garbage": ({"mask_none": True, "mask_rle": "{not json"}, "error", "bad_rle"),
    "rle-valid": ({"mask_none": True, "mask_rle": json.dumps(coco_rle_encode_string(
        np.pad(np.ones((6, 6), bool), ((3, H - 9), (40, W - 46)))))}, "ok", None),
    # URIs
    "uri-http-metadata": ({"image": "http://169.254.169.254/latest/meta-data/iam/x.png"}, "error", "uri_not_allowed"),
    "uri-ftp": ({"image": "ftp://example.invalid/x.png"}, "error", "uri_not_allowed"),
    "uri-chained": ({"image": "simplecache::file:///etc/hostname"}, "error", "uri_not_allowed"),
    # prompts
    "prompt-null": ({"prompt": None}, "ok", None),
    "prompt-unicode": ({"prompt": "去除水印 ✨ إزالة 🚗 ñandú"}, "ok", None),
    "prompt-long": ({"prompt": LONG_PROMPT}, "ok", None),
    "prompt-long-negative": ({"negative_prompt": LONG_PROMPT}, "ok", None),
    "prompt-huge": ({"prompt": "x " * 50_000}, "ok", None),
    # seeds
    "seed-null": ({"seed": None}, "ok", None),
    "seed-negative": ({"seed": -7}, "error", "bad_row"),
    "seed-max": ({"seed": 2**63 - 1}, "ok", None),
    # ids
    "id/with/slashes": ({}, "ok", None),
    "..": ({}, "ok", None),
    "../../escape-attempt": ({}, "ok", None),
    "/etc/abs-path": ({}, "ok", None),
    "nul\x00inside": ({}, "ok", None),
    "L" * 1000: ({}, "ok", None),
    "CON": ({}, "ok", None),
    "dup-id": ({"copies": 2}, "error", "duplicate_id"),
}
TRUNCATED = {"prompt-long", "prompt-long-negative", "prompt-huge"}
HASHED = {"id/with/slashes", "..", "../../escape-attempt", "/etc/abs-path", "nul\x00inside", "L" * 1000, "CON"}


def build_inputs(root) -> tuple[str, dict]:
    """Write files and a manifest folder with two Parquet files (URI rows; inline-bytes rows with extra
    columns of odd types). Returns (manifest folder, {id: expected (status, kind)})."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "manifests").mkdir()
    (root / "images" / "good.png").write_bytes(make_png(W, H, 7))
    (root / "masks" / "good.png").write_bytes(MASK)
    rows, expected = [], {}
    for rid, (spec, status, kind) in CASES.items():
        row = {"id": rid, "image": "../images/good.png", "mask": "../masks/good.png", "boxes": None,
               "mask_rle": None, "prompt": "remove the object", "negative_prompt": None, "seed": 42}
        if "image_file" in spec:
            name, data = spec["image_file"]
            (root / "images" / name).write_bytes(data)
            row["image"] = f"../images/{name}"
        if "mask_file" in spec:
            name, data = spec["mask_file"]
            (root / "masks" / name).write_bytes(data)
            row["mask"] = f"../masks/{name}"
        if spec.get("mask_none"):
            row["mask"] = None
        for k in ("image", "mask", "boxes", "mask_rle", "prompt", "negative_prompt", "seed"):
            if k in spec:
                row[k] = spec[k] if not (k in ("image", "mask") and spec[k] and "://" not in spec[k]
                                          and not spec[k].startswith("/")) else f"../{k}s/{spec[k]}"
        rows.extend([row] * spec.get("copies", 1))
        expected[rid] = (status, kind)
    # Rows without an id: accounted for as `missing_id` rows, never processed.
    for empty in (None, ""):
        rows.append({**rows[0], "id": empty})
    schema = pa.schema([("id", pa.string()), ("image", pa.string()), ("mask", pa.string()),
                        ("boxes", pa.list_(pa.list_(pa.float64()))), ("mask_rle", pa.string()),
                        ("prompt", pa.string()), ("negative_prompt", pa.string()), ("seed", pa.int64())])
    uri_file = root / "manifests" / "part-0.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(uri_file))
    n = len(rows)
    expected[missing_id_name(str(uri_file), n - 2)] = ("error", "missing_id")
    expected[missing_id_name(str(uri_file), n - 1)] = ("error", "missing_id")

    # Inline bytes, integer seeds as int32, and extra columns the job must ignore.
    inline = pa.table({
        "id": ["inline-png", "inline-jpeg"],
        "image": pa.array([make_png(W, H, 3), make_jpeg(W, H, 4)], pa.binary()),
        "mask": pa.array([MASK, MASK], pa.binary()),
        "prompt": ["a", None],
        "seed": pa.array([1, None], pa.int32()),
        "extra_struct": pa.array([{"a": 1}, {"a": 2}]),
        "extra_list": pa.array([[1, 2], []]),
        "extra_dict": pa.array(["x", "y"]).dictionary_encode(),
    })
    pq.write_table(inline, str(root / "manifests" / "part-1.parquet"))
    expected["inline-png"] = ("ok", None)
    expected["inline-jpeg"] = ("ok", None)
    return str(root / "manifests"), expected


def snapshot(root) -> dict:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            out[p] = os.path.getsize(p)
    return out


@pytest.mark.slow  # a local Ray cluster
def test_every_kind_of_bad_input_through_the_job(ray_local, tmp_path, reliability):
    manifest, expected = build_inputs(tmp_path / "in")
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    manifest_rows = sum(pq.read_metadata(os.path.join(manifest, f)).num_rows for f in os.listdir(manifest))
    assert run_job(JobConfig(manifest=(manifest,), output=str(out), **SETTINGS)) == 0

    res = read_results(str(out)).to_pylist()
    got = {r["id"]: r for r in res}
    assert len(res) == len(got), "an id appears twice in the results"
    assert set(got) == set(expected)
    wrong = {rid: (got[rid]["status"], got[rid]["error_kind"], got[rid]["error"]) for rid, e in expected.items()
             if (got[rid]["status"], got[rid]["error_kind"]) != e}
    assert not wrong, wrong
    for rid, r in got.items():
        if r["status"] == "error":
            assert r["error"] and len(r["error"]) > 10, (rid, r["error"])
        else:
            assert r["output_uri"] and os.path.isfile(r["output_uri"]), rid
            assert os.path.realpath(r["output_uri"]).startswith(str(out / "images") + os.sep)
            assert r["output_name_hashed"] == (rid in HASHED), rid

    # Nothing was written outside the output folder, whatever the ids said.
    after = snapshot(tmp_path)
    outside = {p for p in after if not p.startswith(str(out) + os.sep)}
    assert outside == set(before), sorted(outside ^ set(before))

    # Specific promises behind some "ok" rows.
    assert got["prompt-null"]["prompt"] == "clean background"
    assert got["prompt-unicode"]["prompt"] == CASES["prompt-unicode"][0]["prompt"]
    assert {rid for rid, r in got.items() if r["prompt_truncated"]} == TRUNCATED
    assert all(got[rid]["prompt_truncated"] is False for rid, (s, _) in expected.items()
               if s == "ok" and rid not in TRUNCATED)
    want_seed = int.from_bytes(hashlib.sha256(b"0:seed-null").digest()[:8], "big") & (2**63 - 1)
    assert got["seed-null"]["seed"] == want_seed
    assert got["seed-max"]["seed"] == 2**63 - 1
    assert "seed" in got["seed-negative"]["error"]
    assert "169.254.169.254" in got["uri-http-metadata"]["error"] and "--allowed-schemes" in got["uri-http-metadata"]["error"]
    exif = Image.open(got["img-exif-rotated"]["output_uri"])
    assert exif.size == (W, H)  # shown orientation, not the stored one
    # Gradient mask: columns 32..63 are >= 0.5 of full scale; dilation by 2 px adds columns 30 and 31.
    assert got["mask-soft-gradient"]["mask_pixels"] == (W - 32 + SETTINGS["mask_dilate"]) * H
    wide = Image.open(got["img-extreme-aspect"]["output_uri"])
    assert wide.size == (1500, 6)

    s = json.loads((out / "_SUMMARY.json").read_text())
    assert s["manifest_rows"] == manifest_rows
    assert s["accounted"] + s["duplicate_rows_merged"] == manifest_rows
    assert sum(s["counts_by_status"].values()) == s["accounted"] == len(expected)
    assert sum(s["errors_by_kind"].values()) == s["counts_by_status"]["error"]
    assert s["prompts_truncated"] == len(TRUNCATED)
    assert s["complete"]

    for rid, (status, kind) in expected.items():
        label = "row without an id" if kind == "missing_id" else rid if len(rid) < 40 else f"id of {len(rid)} chars"
        label = label.replace("\x00", "\\0")
        reliability.record("bad input", label, 2 if kind == "duplicate_id" else 1,
                           f"{status}" + (f" ({kind})" if kind else ""))
    reliability.record("security", "ids that try to escape the output ('/', '..', '../../x', absolute, NUL, "
                       "1000 chars, device names)", len(HASHED),
                       "written under {output}/images/ with hashed names; no file created anywhere else")
    reliability.record("security", "URIs outside the allowed schemes (http metadata endpoint, ftp, chained '::')", 3,
                       "uri_not_allowed error row, no request made")
    reliability.record("bad input", "manifest: a second file of another schema (inline image and mask bytes, "
                       "int32 seeds, extra struct, list and dictionary columns)", 1,
                       "extra columns ignored, types accepted; its rows ok")
    reliability.record("bad input", "whole corpus in one job", manifest_rows,
                       f"exit 0; {len(expected)} results rows, every id once; summary adds up")


def test_manifest_level_problems_stop_before_any_work(tmp_path, reliability):
    good = pa.table({"id": ["a"], "image": ["x.png"], "mask": ["m.png"]})
    cases = {
        "missing column": (good.drop_columns(["image"]), "image"),
        "wrong type": (pa.table({"id": ["a"], "image": pa.array([5], pa.int64()), "mask": ["m.png"]}), "image"),
        "wrong id type": (pa.table({"id": pa.array([[1]], pa.list_(pa.int64())), "image": ["x.png"],
                                    "mask": ["m.png"]}), "id"),
    }
    for name, (table, column) in cases.items():
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        pq.write_table(table, str(d / "m.parquet"))
        with pytest.raises(ManifestError) as e:
            run_job(JobConfig(manifest=(str(d / "m.parquet"),), output=str(d / "out"), **SETTINGS))
        assert column in str(e.value) and "m.parquet" in str(e.value), str(e.value)
        assert not (d / "out" / "results").exists()
        reliability.record("bad input", f"manifest: {name}", 1, "stopped before any work, one line naming the column")

    d = tmp_path / "not-parquet"
    d.mkdir()
    (d / "m.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ManifestError) as e:
        run_job(JobConfig(manifest=(str(d / "m.parquet"),), output=str(d / "out"), **SETTINGS))
    assert "m.parquet" in str(e.value) and "Parquet" in str(e.value)
    reliability.record("bad input", "manifest: not a Parquet file", 1, "stopped before any work, one clear line")


def test_zero_row_manifest_succeeds_with_nothing_to_do(tmp_path, reliability):
    schema = pa.schema([("id", pa.string()), ("image", pa.string()), ("mask", pa.string())])
    pq.write_table(schema.empty_table(), str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    assert run_job(JobConfig(manifest=(str(tmp_path / "m.parquet"),), output=str(out), **SETTINGS)) == 0
    s = json.loads((out / "_SUMMARY.json").read_text())
    assert (s["manifest_rows"], s["accounted"], s["success"]) == (0, 0, True)
    assert (out / "_SUCCESS").exists()
    reliability.record("bad input", "manifest: zero rows", 1, "exit 0, summary of 0 rows, _SUCCESS written")
