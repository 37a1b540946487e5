"""`rayinpaint bench --cpu-stages`'s "detect" record (bench/detectcost.py): its fields hold together, on a small
image and a tiny CLIPSeg (not its timings, which are the machine's)."""

from __future__ import annotations

import numpy as np
import pytest

from rayinpaint.jobs.cli import build_parser

pytest.importorskip("rapidocr")
pytest.importorskip("transformers")


def test_detect_cost_record_has_its_fields():
    from rayinpaint.bench.detectcost import run_detect_cost

    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    rec = run_detect_cost({1: rgb}, images_per_s=6.0, repeat=1, full_size=False)
    assert rec["text"]["max_side"] == 1536 and rec["text"]["build_s"] > 0
    assert rec["clipseg"]["parameters"] > 0
    for kind, want_input in (("text", "384x288"), ("clipseg", "352x352")):
        (row,) = rec[kind]["sizes"]
        assert row["size"] == "400x300" and row["detector_input"] == want_input, (kind, row)
        assert row["ms_per_row"] > 0 and row["cores_per_gpu"] == round(row["ms_per_row"] / 1000 * 6.0, 2)


def test_no_detect_option_parses():
    args = build_parser().parse_args(["bench", "--cpu-stages", "--no-detect"])
    assert args.cpu_stages and args.no_detect
    assert not build_parser().parse_args(["bench", "--cpu-stages"]).no_detect


def test_a_missing_extra_is_recorded_not_fatal(monkeypatch):
    import sys

    from rayinpaint.bench.detectcost import run_detect_cost

    monkeypatch.setitem(sys.modules, "rapidocr", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    rec = run_detect_cost({1: np.zeros((64, 64, 3), np.uint8)}, images_per_s=6.0, repeat=1, full_size=False)
    assert 'pip install "ray-inpaint[detect]"' in rec["text"]["skipped"] and "skipped" in rec["clipseg"]
