"""The job's CPU stages (jobs/stages.py) called as Ray calls them, without Ray: select keeps the rows a pass must do,
prepare -> model actor -> finish_and_write writes each image and the batch's rows as one results file, and the
Python API's finish (jobs/api.py) gives the same results rows and image bytes as the job's."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from helpers_io import make_mask_png, make_png
from rayinpaint.io.manifest import ColumnMap
from rayinpaint.io.settings import OutputSettings, PrepareSettings
from rayinpaint.io.storage import StorageOptions
from rayinpaint.jobs.api import finish_results
from rayinpaint.jobs.idset import IdSet
from rayinpaint.jobs.predictor import InpaintPredictor, ModelSettings
from rayinpaint.jobs.stages import DRIVER_SCHEMA, FinishContext, finish_and_write, prepare_batch, select_rows
from rayinpaint.ledger.files import read_results

R = 64
SETTINGS = PrepareSettings(resolution=R, mask_dilate=2, feather=3, min_context=4).validate()
RUN = {"sampler": "ddim", "steps": 2, "guidance": 3.0, "strength": 1.0, "settings_fingerprint": "f"}


@pytest.fixture(scope="module")
def actor():
    return InpaintPredictor(ModelSettings("random:tiny", dtype="float32", sampler="ddim", steps=2, guidance=3.0,
                                          resolution=R, pad_to=4))


def manifest_batch() -> pa.Table:
    """A batch as Ray reads it (`path`: the manifest file, without its protocol): one row to repaint, one with an
    empty mask, one that is not an image, one done by an earlier pass, one without an id."""
    ids = ["paint", "empty", "broken", "done", ""]
    images = [make_png(96, 80, 1), make_png(50, 40, 2), b"not an image", make_png(40, 30, 3), make_png(40, 30, 4)]
    masks = [make_mask_png(96, 80, [(30, 20, 50, 40)]), make_mask_png(50, 40), make_mask_png(8, 8),
             make_mask_png(40, 30, [(1, 1, 5, 5)]), make_mask_png(40, 30, [(1, 1, 5, 5)])]
    return pa.table({"id": ids, "image": pa.array(images, pa.binary()), "mask": pa.array(masks, pa.binary()),
                     "prompt": ["sky"] * 5, "path": ["data/manifest.parquet"] * 5})


def test_select_prepare_model_and_finish_write_each_row_once(actor, tmp_path):
    selected = select_rows(manifest_batch(), ColumnMap(), IdSet(pa.array(["done"])), None, "file")
    assert selected.column("id").to_pylist() == ["paint", "empty", "broken"]  # no id: recorded by the driver
    only = select_rows(manifest_batch(), ColumnMap(), None, IdSet(pa.array(["empty"])), "file")
    assert only.column("id").to_pylist() == ["empty"]

    prepared = prepare_batch(selected, SETTINGS)
    assert prepared.column("status").to_pylist() == ["ready", "unchanged", "error"]
    modelled = actor(prepared)

    out = OutputSettings(root=str(tmp_path / "out"))
    ctx = FinishContext(rows=SETTINGS, out=out, run=RUN, results_uri=str(tmp_path / "out" / "results"),
                        preview_probability=1.0)
    driver = finish_and_write(modelled, ctx)
    assert driver.schema == DRIVER_SCHEMA
    assert driver.column("status").to_pylist() == ["ok", "unchanged", "error"]
    assert driver.column("error_kind").to_pylist()[2] == "not_an_image"
    assert driver.column("region_count").to_pylist() == [1, 0, 0]
    previews = driver.column("preview_jpeg").to_pylist()
    assert previews[0][:2] == b"\xff\xd8" and previews[2] is None  # a preview of every written row, asked for

    recorded = read_results(str(tmp_path / "out"), StorageOptions())
    assert sorted(recorded.column("id").to_pylist()) == ["broken", "empty", "paint"]
    by_id = {r["id"]: r for r in recorded.to_pylist()}
    assert by_id["paint"]["status"] == "ok" and by_id["paint"]["sampler"] == "ddim"
    assert Path(by_id["paint"]["output_uri"]).parent == tmp_path / "out" / "images"

    # The API's finish on the same model outputs: the same rows, the same image bytes.
    api_out = OutputSettings(root=str(tmp_path / "api"))
    api_rows = {r["id"]: r for r in finish_results(actor(prepared), SETTINGS, api_out, RUN).to_pylist()}
    assert {k: r["status"] for k, r in api_rows.items()} == {k: r["status"] for k, r in by_id.items()}
    for rid in ("paint", "empty"):
        job_file, api_file = Path(by_id[rid]["output_uri"]), Path(api_rows[rid]["output_uri"])
        assert api_file.relative_to(tmp_path / "api") == job_file.relative_to(tmp_path / "out")
        assert api_file.read_bytes() == job_file.read_bytes()
