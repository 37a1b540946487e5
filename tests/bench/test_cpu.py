"""`rayinpaint bench --cpu-stages`: the record's fields hold together (not its timings, which are the
machine's)."""

from __future__ import annotations

from rayinpaint.jobs.cli import build_parser
from rayinpaint.bench.cpu import run_cpu_bench


def test_cpu_stage_record_is_consistent():
    rec = run_cpu_bench([1], images_per_s=6.0, levels=[0, 6], repeat=1)
    (size,) = rec["sizes"]
    assert size["size"] == "1152x864" and size["prepare_ms"] > 0 and size["composite_ms"] > 0
    outs = size["outputs"]
    assert set(outs) == {"png-level0", "png-level6", "webp-lossless", "jpeg-q95", "auto"}
    assert outs["auto"]["format_written"] == "jpeg-transplant" and "psnr_in_repaint_db" in outs["auto"]
    assert size["transplant_parts_ms"]["mcus_replaced"] > 0 and size["transplant_parts_ms"]["write_coefficients"] > 0
    assert outs["png-level0"]["format_written"] == "png" and "psnr_in_repaint_db" not in outs["png-level0"]
    for name, o in outs.items():
        assert o["bytes"] > 0 and o["finish_ms"] > 0 and o["encode_ms"] > 0, name
        want = (size["prepare_ms"] + o["finish_ms"]) / 1000 * 6.0
        assert abs(o["cores_per_gpu"] - want) < 0.01, (name, o, want)
    assert outs["png-level0"]["bytes"] > outs["png-level6"]["bytes"] > outs["jpeg-q95"]["bytes"]
    assert outs["auto"]["bytes_vs_source"] == round(outs["auto"]["bytes"] / size["source_bytes"], 3)


def test_cpu_stages_option_parses():
    args = build_parser().parse_args(["bench", "--cpu-stages", "--megapixels", "4", "--png-levels", "1,6"])
    assert args.cpu_stages and args.megapixels == "4" and args.png_levels == "1,6" and args.images_per_s == 6.0
