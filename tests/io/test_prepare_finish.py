"""prepare_row / finish_row end to end: seeds, statuses, outputs on local, memory:// and S3."""

from __future__ import annotations

import io
import os

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers_io import decode_png, encode, make_mask_png, make_png, rand_rgb, write_manifest
from rayinpaint.io.errors import SettingsError
from rayinpaint.io.finish import finish_row
from rayinpaint.io.manifest import ColumnMap, canonicalize, check_schema, list_manifest_files
from rayinpaint.io.naming import output_name
from rayinpaint.io.prepare import prepare_row, row_seed
from rayinpaint.io.results import RESULTS_SCHEMA, results_table
from rayinpaint.io.settings import OutputSettings, PrepareSettings
from rayinpaint.io.storage import filesystem, read_bytes

RUN = {"sampler": "ddim", "steps": 20, "guidance": 7.5, "strength": 1.0, "model_sha256": "ab" * 32,
       "t_inpaint": 0.5}


def test_row_seed_stable_and_in_range():
    import hashlib

    exp = int.from_bytes(hashlib.sha256(b"7:row-1").digest()[:8], "big") & (2**63 - 1)
    assert row_seed(7, "row-1") == exp
    assert row_seed(7, "row-1") != row_seed(8, "row-1") != row_seed(7, "row-2")
    assert all(0 <= row_seed(0, str(i)) < 2**63 for i in range(200))


@pytest.mark.parametrize("kw, words", [
    ({"resolution": 500}, "multiple of 64"), ({"mask_threshold": 0}, "mask_threshold"),
    ({"mask_dilate": -1}, "mask_dilate"), ({"feather": 1.5}, "feather"), ({"max_pixels": 0}, "max_pixels"),
    ({"job_seed": -1}, "job_seed"), ({"max_pixels": 10**12}, "decompression-bomb"),
])
def test_settings_validation(kw, words):
    with pytest.raises(SettingsError, match=words):
        PrepareSettings(**kw).validate()


@pytest.mark.parametrize("kw, words", [({"format": "gif"}, "format"), ({"quality": 0}, "quality"),
                                       ({"lossless": True}, "webp only"), ({"root": ""}, "root"),
                                       ({"png_level": 10}, "PNG level"), ({"png_level": -1}, "PNG level"),
                                       ({"png_level": True}, "PNG level")])
def test_output_settings_validation(kw, words):
    with pytest.raises(SettingsError, match=words):
        OutputSettings(**{"root": "/tmp/x", **kw})


def test_output_name():
    assert output_name("img_001.v2") == ("img_001.v2", False)
    for bad in ("a/b", "../x", "..", ".hidden", "a\\b", "a\nb", "x" * 129, "naïve", "con", "", "-rf", "a b"):
        stem, hashed = output_name(bad)
        assert hashed and stem.startswith("h~") and len(stem) == 42 and "/" not in stem
    assert output_name("a/b") == output_name("a/b") and output_name("a/b") != output_name("a/c")


def test_prepare_defaults_and_row_values():
    s = PrepareSettings(resolution=64, default_prompt="clean", default_negative_prompt="blur", job_seed=3)
    row = {"id": "r", "image_bytes": make_png(80, 60), "mask_bytes": make_mask_png(80, 60, [(10, 10, 20, 20)])}
    p = prepare_row(row, s)
    assert p["status"] == "ready" and p["error"] is None
    assert (p["prompt"], p["negative_prompt"], p["seed"]) == ("clean", "blur", row_seed(3, "r"))
    assert (p["width"], p["height"], p["resolution"]) == (80, 60, 64)
    assert len(p["model_image"]) == 1 and len(p["model_image"][0]) == 64 * 64 * 3 and len(p["model_mask"][0]) == 64 * 64
    assert p["windows"] == [p["window"]] and p["region_seeds"] == [p["seed"]]  # one region: the row's own seed
    p2 = prepare_row({**row, "prompt": "sky", "negative_prompt": "", "seed": 42}, s)
    assert (p2["prompt"], p2["negative_prompt"], p2["seed"]) == ("sky", "", 42)
    # deterministic
    assert prepare_row(row, s)["model_image"] == p["model_image"]


def test_arrow_friendly_prepared_rows():
    s = PrepareSettings(resolution=64)
    rows = [prepare_row({"id": "a", "image_bytes": make_png(70, 50), "boxes": [[5, 5, 15, 15]]}, s),
            prepare_row({"id": "b", "image_bytes": b""}, s),
            prepare_row({"id": "c", "image_bytes": make_png(70, 50), "boxes": []}, s)]
    t = pa.Table.from_pylist(rows)
    assert t.num_rows == 3 and t.column("status").to_pylist() == ["ready", "error", "unchanged"]


@pytest.mark.parametrize("fmt, ext", [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
def test_finish_writes_each_format(tmp_path, fmt, ext):
    s = PrepareSettings(resolution=64)
    p = prepare_row({"id": "a/../b", "image_bytes": make_png(90, 70), "boxes": [[20, 20, 40, 40]]}, s)
    out = OutputSettings(root=str(tmp_path / "out"), format=fmt, quality=80)
    r = finish_row(p, [np.zeros((64, 64, 3), np.uint8)], s, out, RUN, preview=True)
    assert r["status"] == "ok" and r["output_name_hashed"] is True
    assert r["output_uri"] == str(tmp_path / "out" / "images" / f"{output_name('a/../b')[0]}.{ext}")
    im = Image.open(io.BytesIO(read_bytes(r["output_uri"])))
    assert im.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt] and im.size == (90, 70)
    assert (r["sampler"], r["steps"], r["model_sha256"]) == ("ddim", 20, "ab" * 32)
    assert r["timings"]["inpaint"] == 0.5 and r["timings"]["write"] > 0
    pv = Image.open(io.BytesIO(r["preview_jpeg"]))
    assert pv.format == "JPEG" and pv.size[1] == 192 and pv.size[0] > 3 * 192 * 90 / 70 - 5
    # nothing outside {output}/images
    written = sorted(p_.relative_to(tmp_path) for p_ in tmp_path.rglob("*") if p_.is_file())
    assert [str(w) for w in written] == [f"out/images/{output_name('a/../b')[0]}.{ext}"]
    table = results_table([r])
    assert table.schema == RESULTS_SCHEMA and table.column("window").to_pylist()[0] == p["window"]
    assert table.column("regions").to_pylist()[0] == [{"window": p["window"], "resolution": 64}]


def test_unchanged_and_error_rows(memfs_root):
    s = PrepareSettings(resolution=64)
    out = OutputSettings(root=memfs_root)
    img = rand_rgb(50, 40, 9)
    p = prepare_row({"id": "u", "image_bytes": encode(img, "PNG"), "mask_bytes": make_mask_png(50, 40)}, s)
    assert p["status"] == "unchanged" and p["model_image"] == [] and p["window"] is None
    r = finish_row(p, None, s, out, RUN)
    assert r["status"] == "unchanged" and r["window"] is None and r["regions"] is None
    np.testing.assert_array_equal(decode_png(read_bytes(r["output_uri"])), img)
    pe = prepare_row({"id": "e", "image_bytes": b"junk"}, s)
    re_ = finish_row(pe, None, s, out, RUN, preview=True)
    assert (re_["status"], re_["error_kind"], re_["output_uri"], re_["preview_jpeg"]) == \
        ("error", "not_an_image", None, None)
    fs, path = filesystem(memfs_root)
    assert fs.ls(path + "/images", detail=False) == [path + "/images/u.png"]


def test_finish_failures_become_error_rows(tmp_path, monkeypatch):
    s = PrepareSettings(resolution=64)
    p = prepare_row({"id": "a", "image_bytes": make_png(60, 60), "boxes": [[1, 1, 9, 9]]}, s)
    out = OutputSettings(root=str(tmp_path))
    bad = finish_row(p, [np.zeros((32, 32, 3), np.uint8)], s, out, RUN)
    assert bad["status"] == "error" and bad["error_kind"] == "bad_result" and "[64, 64, 3]" in bad["error"]
    assert "region 1 of 1" in bad["error"] and bad["regions"] is None and bad["window"] is None
    assert finish_row(p, None, s, out, RUN)["error_kind"] == "bad_result"
    assert finish_row(p, [None], s, out, RUN)["error_kind"] == "bad_result"
    assert finish_row(p, [np.zeros((64, 64, 3), np.float32)], s, out, RUN)["error_kind"] == "bad_result"
    two = finish_row(p, [np.zeros((64, 64, 3), np.uint8)] * 2, s, out, RUN)  # more outputs than regions
    assert two["error_kind"] == "bad_result" and "2 model output(s) for 1 region(s)" in two["error"]

    import rayinpaint.io.storage as storage

    def deny(*a, **k):
        raise PermissionError("read-only")

    # A failed write is the output's problem, not the row's: no results row, an OutputWriteError instead
    # (the job stops and the row is redone by the next run).
    from rayinpaint.io.errors import OutputWriteError

    monkeypatch.setattr(storage.os, "replace", deny)
    with pytest.raises(OutputWriteError, match="access denied"):
        finish_row(p, [np.zeros((64, 64, 3), np.uint8)], s, out, RUN)
    assert not (tmp_path / "images" / "a.png").exists()
    assert not [f for f in os.listdir(tmp_path / "images") if "tmp" in f]  # no partial file left


def test_results_table_fills_missing_and_ignores_extra():
    t = results_table([{"id": "a", "status": "error", "error_kind": "bad_row", "preview_jpeg": b"x"}, {}])
    assert t.schema == RESULTS_SCHEMA and t.num_rows == 2
    assert t.column("timings").to_pylist()[0] is None
    for name in ("id", "status", "error_kind", "error", "output_uri", "width", "height", "seed", "prompt",
                 "negative_prompt", "sampler", "steps", "guidance", "strength", "window", "regions", "model_sha256",
                 "timings", "output_name_hashed"):
        assert name in RESULTS_SCHEMA.names


def test_s3_end_to_end_manifest_images_outputs(s3_bucket):
    """Manifest, images and outputs on the loopback S3 endpoint, through s3fs as in production."""
    bucket, opts = s3_bucket
    s3 = fsspec.filesystem("s3", **opts.fsspec_kwargs("s3"))
    imgs = {i: rand_rgb(96, 72, i) for i in range(3)}
    for i, arr in imgs.items():
        s3.pipe_file(f"{bucket}/data/img/{i}.png", encode(arr, "PNG"))
        s3.pipe_file(f"{bucket}/data/mask/{i}.png", make_mask_png(96, 72, [(10 * i, 5, 10 * i + 20, 30)]))
    rows = [{"key": f"k{i}", "img": f"img/{i}.png", "m": f"mask/{i}.png", "p": f"prompt {i}"} for i in range(3)]
    rows.append({"key": "missing", "img": "img/none.png", "m": "mask/0.png", "p": None})
    write_manifest(f"{bucket}/data/manifest.parquet", rows, fs=s3)

    files = list_manifest_files([f"s3://{bucket}/data"], opts)
    assert files == [f"s3://{bucket}/data/manifest.parquet"]
    fs, path = filesystem(files[0], opts)
    table = pq.read_table(path, filesystem=fs)
    table = table.append_column("path", pa.array([path] * table.num_rows))  # as Ray adds it (no scheme)
    cm = ColumnMap.parse("id=key,image=img,mask=m,prompt=p")
    check_schema(table.schema, cm)
    canon = canonicalize(table, cm, "path", protocol="s3")
    s = PrepareSettings(resolution=64, storage=opts, default_prompt="dflt")
    out = OutputSettings(root=f"s3://{bucket}/out", storage=opts)
    results = []
    for row in canon.to_pylist():
        p = prepare_row(row, s)
        res = [np.full((64, 64, 3), 255, np.uint8)] if p["status"] == "ready" else None
        results.append(finish_row(p, res, s, out, RUN))
    t = results_table(results)
    assert t.column("status").to_pylist() == ["ok", "ok", "ok", "error"]
    assert t.column("error_kind").to_pylist()[3] == "not_found"
    assert f"s3://{bucket}/data/img/none.png" in t.column("error").to_pylist()[3]
    assert t.column("prompt").to_pylist() == ["prompt 0", "prompt 1", "prompt 2", "dflt"]
    for i in range(3):
        got = decode_png(s3.cat_file(f"{bucket}/out/images/k{i}.png"))
        assert got.shape == (72, 96, 3)
        np.testing.assert_array_equal(got[60:, :], imgs[i][60:, :])   # far from every mask
        assert (got[10:25, 10 * i + 2: 10 * i + 18] == 255).all()     # inside the mask
    assert sorted(s3.ls(f"{bucket}/out/images", detail=False)) == [f"{bucket}/out/images/k{i}.png" for i in range(3)]


def test_finish_accepts_prepared_rows_without_optional_keys(tmp_path):
    """The jobs layer may carry only the core prepared keys through Arrow (no resolution etc.)."""
    s = PrepareSettings(resolution=64)
    p = prepare_row({"id": "a", "image_bytes": make_png(60, 50), "boxes": [[5, 5, 20, 20]]}, s)
    core = {k: p[k] for k in ("id", "status", "error_kind", "error", "seed", "prompt", "negative_prompt",
                              "model_image", "model_mask", "windows", "region_res", "window", "width", "height", "source",
                              "repaint_mask", "t_fetch", "t_decode", "t_prepare")}
    t = pa.Table.from_pylist([core])          # through Arrow and back, as Ray would
    r = finish_row(t.to_pylist()[0], [np.zeros((64, 64, 3), np.uint8)], s, OutputSettings(root=str(tmp_path)), RUN)
    assert r["status"] == "ok" and r["resolution"] == 64
