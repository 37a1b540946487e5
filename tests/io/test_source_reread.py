"""The encoded original stays out of the model stage: prepare carries the URI, size and digest of a URI row's
image, finish reads it again and refuses a row whose object changed in between."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from helpers_io import decode_png, make_png
from rayinpaint.io.finish import finish_row
from rayinpaint.io.prepare import PREPARED_SCHEMA, prepare_row, source_digest
from rayinpaint.io.settings import OutputSettings, PrepareSettings

RUN = {"sampler": "ddim", "steps": 20, "guidance": 7.5, "strength": 1.0, "model_sha256": "ab" * 32}
S = PrepareSettings(resolution=64, mask_dilate=2, feather=2)


def _through_arrow(p: dict) -> dict:
    """The prepared row as the model actor and finish see it (Arrow, PREPARED_SCHEMA)."""
    return pa.Table.from_pylist([{k: p.get(k) for k in PREPARED_SCHEMA.names}], schema=PREPARED_SCHEMA).to_pylist()[0]


def _result(p: dict) -> list:
    return [np.full((r, r, 3), 7, np.uint8) for r in p["region_res"]]


def test_uri_rows_carry_no_bytes_and_finish_matches_the_inline_path(tmp_path):
    png = make_png(90, 70, seed=3)
    (tmp_path / "a.png").write_bytes(png)
    box = [[10, 10, 40, 30]]
    by_uri = prepare_row({"id": "u", "image_uri": str(tmp_path / "a.png"), "boxes": box}, S)
    inline = prepare_row({"id": "u", "image_bytes": png, "boxes": box}, S)
    assert by_uri["source"] is None and by_uri["source_uri"] == str(tmp_path / "a.png")
    assert by_uri["source_size"] == len(png) and by_uri["source_digest"] == source_digest(png)
    assert inline["source"] == png and inline["source_uri"] is None
    outs = []
    for name, p in (("uri", by_uri), ("inline", inline)):
        r = finish_row(_through_arrow(p), _result(p), S, OutputSettings(root=str(tmp_path / name)), RUN)
        assert r["status"] == "ok", r["error"]
        outs.append(decode_png((tmp_path / name / "images" / "u.png").read_bytes()))
    np.testing.assert_array_equal(outs[0], outs[1])
    original = decode_png(png)
    np.testing.assert_array_equal(outs[0][40:], original[40:])  # far from the box: the decoded input's bytes


def test_an_object_changed_or_gone_during_the_run_is_an_error_row(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(make_png(90, 70, seed=3))
    p = prepare_row({"id": "c", "image_uri": str(path), "boxes": [[10, 10, 40, 30]]}, S)
    unchanged = prepare_row({"id": "e", "image_uri": str(path), "boxes": []}, S)
    assert unchanged["status"] == "unchanged" and unchanged["source"] is None
    path.write_bytes(make_png(90, 70, seed=4))  # same size on disk is not enough: the digest differs
    out = OutputSettings(root=str(tmp_path / "out"))
    for prepared in (p, unchanged):
        r = finish_row(_through_arrow(prepared), _result(prepared), S, out, RUN)
        assert r["status"] == "error" and r["error_kind"] == "source_changed", r
        assert "changed during the run" in r["error"] and r["output_uri"] is None
    path.unlink()
    r = finish_row(_through_arrow(p), _result(p), S, out, RUN)
    assert r["status"] == "error" and r["error_kind"] == "not_found", r
    assert "read again" in r["error"]
    assert not (tmp_path / "out" / "images").exists()
