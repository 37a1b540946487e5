"""`--format auto` through the whole job on a local Ray cluster: JPEG sources become `.jpg` images whose pixels
outside the boxes (grown by dilation and feather, rounded out to 16 px, plus 1) are the source's; a PNG source
becomes a `.png`; the results record the format and bytes written per row and `_SUMMARY.json` the bytes by
format."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayinpaint.jobs as api
from helpers_io import encode, jpeg_source, smooth_rgb
from helpers_job import FAST_TINY
from rayinpaint.io.images import decode_image

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow  # a local Ray cluster
def test_auto_writes_jpeg_sources_as_transplanted_jpegs(ray_local, tmp_path):
    sources = {"j420": jpeg_source(smooth_rgb(200, 150, 1), "4:2:0"),
               "j444-rot": jpeg_source(smooth_rgb(150, 200, 2), "4:4:4", orientation=6),
               "png": encode(smooth_rgb(120, 90, 3), "PNG")}
    box = [40, 30, 70, 60]
    pq.write_table(pa.table({"id": list(sources), "image": list(sources.values()),
                             "boxes": [[box]] * len(sources)}), str(tmp_path / "m.parquet"))
    out = tmp_path / "out"
    assert api.run_job(api.JobConfig(manifest=str(tmp_path / "m.parquet"), output=str(out), format="auto",
                                     **FAST_TINY)) == 0
    rows = {r["id"]: r for r in api.read_results(str(out)).to_pylist()}
    assert {k: (r["status"], r["output_format"]) for k, r in rows.items()} == {
        "j420": ("ok", "jpeg-transplant"), "j444-rot": ("ok", "jpeg-transplant"), "png": ("ok", "png")}
    grow = FAST_TINY["mask_dilate"] + FAST_TINY["feather"]
    for rid in ("j420", "j444-rot"):
        data = (out / "images" / f"{rid}.jpg").read_bytes()
        assert rows[rid]["output_uri"].endswith(f"/images/{rid}.jpg") and rows[rid]["output_bytes"] == len(data)
        got, src = decode_image(data), decode_image(sources[rid])
        keep = np.ones(got.shape[:2], bool)
        # 16-px MCUs in stored orientation: for the 90-degree turn the display grid is offset by the stored width
        x0, y0, x1, y1 = box[0] - grow, box[1] - grow, box[2] + grow, box[3] + grow
        keep[max(0, y0 // 16 * 16 - 17):y1 + 17, max(0, x0 // 16 * 16 - 17):x1 + 17] = False
        assert np.array_equal(got[keep], src[keep]), rid
    assert (out / "images" / "png.png").exists()
    summary = json.loads((out / "_SUMMARY.json").read_text())
    assert summary["output_bytes"]["jpeg-transplant"]["rows"] == 2
    assert summary["output_bytes"]["png"]["bytes"] == rows["png"]["output_bytes"]
    assert summary["settings"]["format"] == "auto"
