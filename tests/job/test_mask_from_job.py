"""Masks from detectors through the whole job on a local Ray: a manifest of image URIs only, `--mask-from text`
with the real rapidocr detector, and `--mask-from prompt:...` with a tiny random CLIPSeg folder.

Checked: every row accounted for (text-free images `unchanged`); each detected row's `mask_uri` file exists under
{output}/masks/, is what the detector finds on the image, and is what was inpainted (every pixel farther than
dilation + feather from it is the input's, byte for byte, in the PNG output); the summary counts rows per mask
source; the report's cards name the source; a row with its own mask keeps it."""

from __future__ import annotations

import json
import re
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import rayinpaint.jobs as api
from helpers_job import FAST_TINY
from rayinpaint.bench.captions import write_dataset
from rayinpaint.io.images import decode_image
from rayinpaint.io.masks import dilate

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # a local Ray and the job


@pytest.fixture(scope="module")
def tiny_clipseg(tmp_path_factory) -> str:
    pytest.importorskip("transformers")
    from rayinpaint.bench.clipseg_standin import save_clipseg

    return save_clipseg(str(tmp_path_factory.mktemp("clipseg")))


def beyond(mask: np.ndarray, grow: int) -> np.ndarray:
    """Pixels farther than `grow` from the mask (the disc dilation the job uses, one pixel more for the feather's
    last partly blended ring)."""
    return ~dilate(mask, grow + 1)


def test_text_masks_detected_written_and_the_only_pixels_repainted(ray_local, tmp_path):
    pytest.importorskip("rapidocr")
    from rayinpaint.detect.text import TextDetector

    manifest = write_dataset(str(tmp_path / "in"), rows=8, width=320, height=240, distinct=4)
    out = tmp_path / "out"
    assert api.run_job(api.JobConfig(manifest=manifest, output=str(out), mask_from="text", **FAST_TINY)) == 0
    rows = {r["id"]: r for r in api.read_results(str(out)).to_pylist()}
    assert len(rows) == 8 and {r["mask_source"] for r in rows.values()} == {"text"}
    assert sorted(r["status"] for r in rows.values()) == ["ok"] * 6 + ["unchanged"] * 2  # photo-3 has no text
    detector, grow = TextDetector(), FAST_TINY["mask_dilate"] + FAST_TINY["feather"]
    for rid, r in rows.items():
        src = decode_image((tmp_path / "in" / f"photo-{int(rid[-6:]) % 4}.jpg").read_bytes())
        if r["status"] == "unchanged":
            assert r["mask_uri"] is None and not detector(src).any()
            continue
        used = np.asarray(Image.open(r["mask_uri"]).convert("1"), bool)
        assert r["mask_uri"] == str(out / "masks" / f"{rid}.png")
        assert np.array_equal(used, detector(src)), rid  # the mask used is the detector's, before dilation
        assert r["mask_pixels"] == int(dilate(used, FAST_TINY["mask_dilate"]).sum())
        got = decode_image((out / "images" / f"{rid}.png").read_bytes())
        keep = beyond(used, grow)
        assert np.array_equal(got[keep], src[keep]), rid
        assert not np.array_equal(got, src)  # something was repainted
    summary = json.loads((out / "_SUMMARY.json").read_text())
    assert summary["mask_sources"]["text"]["rows"] == 8
    assert sum(summary["this_run"]["detected_area"].values()) == 8 and summary["this_run"]["detect_s_per_row"] > 0
    assert summary["settings"]["mask_from"] == "text"
    settings = json.loads((out / "_SETTINGS.json").read_text())["settings"]
    assert settings["detector"]["kind"] == "text" and settings["mask_combine"] == "missing"
    report = (out / "_REPORT.html").read_text()
    assert "mask source: <code>text</code>" in report and "Mask sources" in report
    links = re.findall(r'href="(masks/[^"]+)"', report)  # each card's link to its detected mask, relative
    assert links and all((out / urllib.parse.unquote(link)).is_file() for link in links), links


def test_clipseg_prompt_masks_through_the_job_and_own_masks_kept(ray_local, tmp_path, tiny_clipseg):
    photos = write_dataset(str(tmp_path / "in"), rows=4, width=160, height=120, distinct=4)
    t = pq.read_table(photos)
    own = [None, None, [[10.0, 10.0, 40.0, 40.0]], None]
    pq.write_table(t.append_column("boxes", pa.array(own, pa.list_(pa.list_(pa.float64())))), photos)
    out = tmp_path / "out"
    cfg = api.JobConfig(manifest=photos, output=str(out), mask_from="prompt:watermark", detector_weights=tiny_clipseg,
                        detector_threshold=0.0, **FAST_TINY)  # threshold 0: the random model's every pixel is kept
    assert api.run_job(cfg) == 0
    rows = {r["id"]: r for r in api.read_results(str(out)).to_pylist()}
    assert [rows[f"row-{i:06d}"]["mask_source"] for i in range(4)] == \
        ["prompt:watermark", "prompt:watermark", "manifest", "prompt:watermark"]
    assert {r["status"] for r in rows.values()} == {"ok"}
    whole = np.asarray(Image.open(rows["row-000000"]["mask_uri"]).convert("1"), bool)
    assert whole.shape == (120, 160) and whole.all()
    assert rows["row-000002"]["mask_uri"] is None and rows["row-000002"]["mask_pixels"] < 160 * 120 // 4


def test_inpaint_dataset_detects_masks_too(ray_local, tmp_path):
    """The Python API over a Ray Dataset of image URIs only: the same detector actors, the same recorded fields."""
    pytest.importorskip("rapidocr")
    import ray

    manifest = write_dataset(str(tmp_path / "in"), rows=4, width=320, height=240, distinct=4)
    cfg = api.JobConfig(manifest="unused", output=str(tmp_path / "out"), mask_from="text", **FAST_TINY)
    rows = api.inpaint_dataset(ray.data.from_arrow(pq.read_table(manifest)), cfg, base_dir=str(tmp_path / "in"))
    got = {r["id"]: r for r in rows.take_all()}
    assert {k: (r["status"], r["mask_source"]) for k, r in got.items()} == {
        "row-000000": ("ok", "text"), "row-000001": ("ok", "text"), "row-000002": ("ok", "text"),
        "row-000003": ("unchanged", "text")}
    assert all(Image.open(got[f"row-00000{i}"]["mask_uri"]).size == (320, 240) for i in range(3))
