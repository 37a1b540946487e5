"""How a detector's mask (--mask-from) joins a row's own: `prepare_row` with a detector under each --mask-combine,
the row's `mask_source` and `mask_uri`, a detector that fails or finds nothing, and `finish_row` writing the
detector's mask under {output}/masks/. The detector here is a plain function (what `build_detector` returns is
called the same way); the real detectors are tested in tests/detect/ and through the job in tests/job/."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from helpers_io import make_mask_png, make_png
from rayinpaint.io.errors import SettingsError
from rayinpaint.io.manifest import ColumnMap, canonicalize, check_schema
from rayinpaint.io.prepare import PREPARED_SCHEMA, prepare_row
from rayinpaint.io.finish import finish_row
from rayinpaint.io.settings import OutputSettings, PrepareSettings

W, H = 96, 64
FOUND = (60, 10, 80, 30)     # the box the detector "finds"
OWN = [10, 20, 30, 40]       # the row's own box


def box_detector(rgb: np.ndarray) -> np.ndarray:
    m = np.zeros(rgb.shape[:2], bool)
    m[FOUND[1]:FOUND[3], FOUND[0]:FOUND[2]] = True
    return m


def settings(combine: str = "missing", name: str = "text") -> PrepareSettings:
    return PrepareSettings(resolution=64, mask_dilate=2, feather=2, mask_from=name, mask_combine=combine).validate()


def row(own_box: bool = True, rid: str = "r1") -> dict:
    return {"id": rid, "image_bytes": make_png(W, H, 1), "boxes": [OWN] if own_box else None}


def painted(prepared: dict, key: str = "repaint_mask") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(prepared[key])).convert("1"), bool)


def test_missing_detects_only_rows_without_a_mask_of_their_own():
    s = settings("missing")
    own = prepare_row(row(True), s, box_detector)
    assert (own["status"], own["mask_source"], own["detected_pixels"], own["used_mask"]) == \
        ("ready", "manifest", None, None)
    assert not painted(own)[FOUND[1] + 5, FOUND[0] + 5] and painted(own)[OWN[1] + 5, OWN[0] + 5]
    found = prepare_row(row(False), s, box_detector)
    assert (found["status"], found["mask_source"]) == ("ready", "text")
    assert found["detected_pixels"] == (FOUND[2] - FOUND[0]) * (FOUND[3] - FOUND[1])
    used = painted(found, "used_mask")  # before dilation: exactly the detector's mask
    assert np.array_equal(used, box_detector(np.zeros((H, W, 3), np.uint8)))
    assert painted(found).sum() > used.sum()  # the repaint mask is the dilated one


def test_union_joins_and_replace_ignores_the_rows_own_mask():
    union = prepare_row(row(True), settings("union"), box_detector)
    assert union["mask_source"] == "union"
    used = painted(union, "used_mask")
    assert used[OWN[1] + 5, OWN[0] + 5] and used[FOUND[1] + 5, FOUND[0] + 5]
    replaced = prepare_row(row(True), settings("replace", "prompt:logo"), box_detector)
    assert replaced["mask_source"] == "prompt:logo"
    assert not painted(replaced)[OWN[1] + 5, OWN[0] + 5] and painted(replaced)[FOUND[1] + 5, FOUND[0] + 5]


def test_nothing_found_is_unchanged_and_a_failing_detector_is_the_rows_error():
    nothing = prepare_row(row(False), settings(), lambda rgb: np.zeros(rgb.shape[:2], bool))
    assert (nothing["status"], nothing["mask_source"], nothing["detected_pixels"]) == ("unchanged", "text", 0)

    def broken(rgb):
        raise RuntimeError("onnxruntime: bad input")

    failed = prepare_row(row(False), settings(), broken)
    assert (failed["status"], failed["error_kind"]) == ("error", "detector_error")
    assert "text detector failed: RuntimeError: onnxruntime: bad input" in failed["error"]
    wrong = prepare_row(row(False), settings(), lambda rgb: np.zeros((3, 3), bool))
    assert wrong["error_kind"] == "detector_error" and "(3, 3) mask for a 96x64 image" in wrong["error"]
    # without a detector a row with no mask is a bad row, and the message says how masks could be detected
    bare = prepare_row(row(False), PrepareSettings(resolution=64))
    assert bare["error_kind"] == "bad_row" and "--mask-from" in bare["error"]


def test_manifest_mask_uri_is_recorded_for_the_rows_own_mask(tmp_path):
    path = tmp_path / "m.png"
    path.write_bytes(make_mask_png(W, H, [OWN]))
    p = prepare_row({"id": "u", "image_bytes": make_png(W, H), "mask_uri": str(path)}, PrepareSettings(resolution=64))
    assert (p["status"], p["mask_source"], p["mask_uri"]) == ("ready", "manifest", str(path))


@pytest.mark.parametrize("layout", ["flat", "hashed"])
def test_finish_writes_the_detected_mask_under_masks_in_the_images_layout(tmp_path, layout):
    s = settings("missing")
    p = prepare_row(row(False, "img one"), s, box_detector)  # an id that is no safe file name: hashed stem
    p = {k: p.get(k) for k in PREPARED_SCHEMA.names}
    outs = [np.zeros((r, r, 3), np.uint8) for r in p["region_res"]]
    out = OutputSettings(root=str(tmp_path / "out"), layout=layout)
    r = finish_row(p, outs, s, out)
    assert r["status"] == "ok" and r["mask_source"] == "text"
    stem = r["output_uri"].rsplit("/images/", 1)[1].rsplit(".", 1)[0]
    assert r["mask_uri"] == str(tmp_path / "out" / "masks" / f"{stem}.png")
    written = np.asarray(Image.open(r["mask_uri"]).convert("1"), bool)
    assert np.array_equal(written, painted(p, "used_mask"))
    own = finish_row({k: v for k, v in prepare_row(row(True), s, box_detector).items()}, outs, s, out)
    assert own["mask_source"] == "manifest" and own["mask_uri"] is None  # boxes: no mask file


def test_a_manifest_without_a_mask_column_needs_mask_from():
    schema = pa.schema([("id", pa.string()), ("image", pa.string())])
    with pytest.raises(Exception, match="no mask column.*--mask-from text"):
        check_schema(schema)
    check_schema(schema, ColumnMap(mask_required=False))
    t = canonicalize(pa.table({"id": ["a"], "image": ["x.png"]}, schema=schema), ColumnMap(mask_required=False),
                     source_column=None, base_dir="/data")
    assert t.column("mask_uri").to_pylist() == [None] and t.column("image_uri").to_pylist() == ["/data/x.png"]


def test_mask_combine_is_checked():
    with pytest.raises(SettingsError, match="mask_combine must be one of missing, union, replace"):
        PrepareSettings(mask_combine="both").validate()
