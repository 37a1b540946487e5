"""Regions through the job's own stages (prepare -> model actor -> finish) with the tiny random model, no Ray:
a row of one region is exactly the single-window computation, a row's bytes do not depend on what shares its
batch, and marks far apart keep their detail."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from helpers_io import encode, rand_rgb
from rayinpaint.io.finish import finish_row
from rayinpaint.io.geometry import crop_window, model_inputs, paste_back, window_inside
from rayinpaint.io.masks import bbox, dilate, feather_alpha
from rayinpaint.io.prepare import PREPARED_SCHEMA, prepare_row
from rayinpaint.io.settings import OutputSettings, PrepareSettings
from rayinpaint.jobs.predictor import InpaintPredictor, ModelSettings

R = 64
SETTINGS = PrepareSettings(resolution=R, mask_dilate=2, feather=3, context=0.25, min_context=4).validate()


@pytest.fixture(scope="module")
def actor():
    return InpaintPredictor(ModelSettings("random:tiny", dtype="float32", sampler="dpmpp_2m", steps=2, guidance=3.0,
                                          resolution=R, pad_to=4))


def row(rid: str, w: int, h: int, boxes, seed: int) -> dict:
    return {"id": rid, "image_bytes": encode(rand_rgb(w, h, seed), "PNG"), "boxes": boxes, "prompt": "sky"}


def run(actor, rows: list[dict]) -> dict[str, pa.Table]:
    """Prepared rows through the actor in one block: {id: model outputs (list of bytes per region)}."""
    prepared = [prepare_row(r, SETTINGS) for r in rows]
    out = actor(pa.Table.from_pylist(prepared, schema=PREPARED_SCHEMA))
    assert out.column("status").to_pylist() == ["ready"] * len(rows), out.column("error").to_pylist()
    return {p["id"]: (p, res) for p, res in zip(prepared, out.column("result").to_pylist())}


def test_a_row_of_one_region_is_exactly_the_single_window_computation(actor, tmp_path):
    """The single-window path written out with the lower-level pieces: window around the whole dilated mask,
    crop and resize, the model with the row's own seed at the fixed batch shape, feathered paste-back."""
    r = row("one", 300, 200, [[140, 90, 170, 110]], seed=5)
    (prepared, outputs), = run(actor, [r]).values()
    assert len(prepared["windows"]) == 1

    rgb = rand_rgb(300, 200, 5)
    repaint = dilate(np.asarray(prepared_mask(300, 200, [[140, 90, 170, 110]])), 2)
    window = crop_window(bbox(repaint), 300, 200, R, 0.25, 4, 3)
    image_r, mask_r = model_inputs(rgb, repaint, window, R)
    images = np.repeat(image_r[None], 4, 0)  # the fixed batch shape: padded with copies of the last row
    masks = np.repeat(mask_r[None], 4, 0)
    raw = actor.inpainter.generate(images, masks, ["sky"] * 4, [""] * 4, [prepared["seed"]] * 4)[0][0]
    ix0, iy0, ix1, iy1 = window_inside(window, 300, 200)
    want = paste_back(rgb, raw, window, feather_alpha(repaint[iy0:iy1, ix0:ix1], 3))

    assert outputs[0] == raw.tobytes()
    got = finish_row(prepared, outputs, SETTINGS, OutputSettings(root=str(tmp_path)))
    assert got["status"] == "ok" and got["window"] == list(window)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(got["output_uri"]).convert("RGB")), want)


def prepared_mask(w: int, h: int, boxes) -> np.ndarray:
    from rayinpaint.io.masks import boxes_to_mask

    return boxes_to_mask(boxes, w, h)


def test_a_rows_regions_do_not_depend_on_what_shares_their_batch(actor):
    """A row of three regions and a row of one: alone, together, and in the other order, the same bytes."""
    many = row("many", 600, 400, [[4, 4, 20, 12], [570, 370, 590, 390], [10, 380, 40, 392]], seed=1)
    one = row("one", 300, 200, [[100, 100, 130, 120]], seed=2)
    alone = {**run(actor, [many]), **run(actor, [one])}
    assert len(alone["many"][0]["windows"]) == 3
    for order in ([many, one], [one, many], [one, one | {"id": "copy"}, many]):
        together = run(actor, order)
        for rid in ("many", "one"):
            assert together[rid][1] == alone[rid][1]


def test_marks_far_apart_are_inpainted_at_native_resolution_with_more_detail():
    from rayinpaint.bench.regions import detail_ratio

    rec = detail_ratio(width=1200, height=800, mark=12, count=2, resolution=128, steps=2)
    assert [w[2] - w[0] for w in rec["regions"]["windows"]] == [128, 128]  # each mark: its own native window
    assert [w[2] - w[0] for w in rec["single_window"]["windows"]] == [1200]  # one window, 1200 -> 128 and back
    assert rec["single_window"]["detail_ratio"] < 0.5, rec  # one window loses most of the fills' detail
    assert rec["regions"]["detail_ratio"] > 0.7, rec        # regions keep about what each mark gets alone


def test_max_resolution_runs_a_large_region_at_a_larger_side(actor, tmp_path):
    """A 150-px window: resized to R by default; with --max-resolution 128, run at 128 by the same actor."""
    r = row("large", 300, 200, [[100, 50, 200, 150]], seed=3)
    default = prepare_row(r, SETTINGS)
    assert default["region_res"] == [R] and default["windows"][0][2] - default["windows"][0][0] > R
    larger = PrepareSettings(**{**SETTINGS.__dict__, "max_resolution": 2 * R}).validate()
    prepared = prepare_row(r, larger)
    assert prepared["region_res"] == [2 * R] and len(prepared["model_image"][0]) == (2 * R) ** 2 * 3
    out = actor(pa.Table.from_pylist([prepared], schema=PREPARED_SCHEMA))
    outputs = out.column("result")[0].as_py()
    assert out.column("status")[0].as_py() == "ready" and len(outputs[0]) == (2 * R) ** 2 * 3
    got = finish_row(prepared, outputs, larger, OutputSettings(root=str(tmp_path)))
    assert got["status"] == "ok" and got["regions"] == [{"window": prepared["windows"][0], "resolution": 2 * R}]
