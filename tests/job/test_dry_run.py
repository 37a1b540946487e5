"""`rayinpaint run --dry-run`: pre-flight, rows left to do, a sample fetched and decoded, the output's settings and
a GPU-hours estimate from a bench record; nothing recorded, no Ray."""

from __future__ import annotations

import json

from helpers_job import BAD
from rayinpaint.io.results import results_table
from rayinpaint.jobs.cli import main
from rayinpaint.jobs.config import JobConfig
from rayinpaint.bench.demo import make_dataset
from rayinpaint.ledger.fingerprint import settle_settings
from rayinpaint.ledger.files import Ledger
from rayinpaint.io.storage import StorageOptions


def test_dry_run_reports_rows_sample_settings_and_estimate(tmp_path, capsys):
    manifest = make_dataset(str(tmp_path / "in"), rows=4)   # 4 good rows + 4 bad + 1 empty mask
    out = tmp_path / "out"
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"device": "NVIDIA H100", "date_utc": "2026-12-01T00:00:00Z", "images_per_s": 2.0,
                                 "settings": {"sampler": "dpmpp_2m", "steps": 25, "resolution": 512}}))
    args = ["run", "--manifest", manifest, "--output", str(out), "--weights", "random:tiny", "--dry-run",
            "--dry-run-sample", "9", "--bench-record", str(bench)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dry run: 9 unique id(s) in the manifest, 0 already done, 9 to do"
    assert lines[1].startswith("settings: new output (fingerprint ")
    assert lines[2].startswith("placement: 1 model actor(s) of ") and lines[2].endswith("on this machine fit")
    sample = lines[3]
    assert sample.startswith("sample of 9 row(s) fetched and decoded: ") and "ready 4" in sample
    assert "unchanged 1" in sample and all(f"error:{k} 1" in sample for k in BAD.values()), sample
    assert lines[-2] == "regions: 1.00 per repainted row in the sample (the model's unit of work; README, Regions)"
    # The record's own settings and one region per row: its measured 0.5 s per image, exactly.
    assert lines[-1] == ("GPU-hours: about 0.00 for 9 row(s) at 0.50 s per row per GPU (1.00 region(s) per row at "
                         "512 px, dpmpp_2m 25 steps); from bench record " + str(bench) + " (NVIDIA H100, "
                         "2026-12-01T00:00:00Z: dpmpp_2m 25 steps at 512 px, 2.00 images/s per GPU, the model alone; "
                         "loading and data stages add to it), scaled by counted FLOPs to these steps and sides")
    # At 256 px the demo's row of three marks far apart (img-0002) is three regions: 6 regions for 4 rows.
    assert main(args + ["--resolution", "256"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("regions: 1.50 per repainted row") and "at 256 px" in lines[-1]
    assert not out.exists() or list(out.iterdir()) == []  # nothing recorded (the write probe is removed)

    # Two rows done, and the output recorded with other settings: both are reported, and the dry run fails as
    # the run would (exit 2); with --reprocess the run would go ahead.
    storage = StorageOptions()
    Ledger(str(out), storage).write_rows(results_table([{"id": "img-0000", "status": "ok"},
                                                        {"id": "img-0001", "status": "ok"}]))
    settle_settings(JobConfig(manifest=(manifest,), output=str(out), weights="random:tiny", steps=3), storage,
                    Ledger(str(tmp_path / "elsewhere"), storage))
    assert main(args[:-2] + ["--steps", "2"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dry run: 9 unique id(s) in the manifest, 2 already done, 7 to do"
    assert lines[1] == ("settings: differ from the output's (steps 3 -> 2): a run would stop; use a new --output "
                        "or --reprocess")
    assert lines[-2].startswith("GPU-hours: pass --bench-record FILE")
    assert lines[-1] == "a run with these settings would stop before any work (exit code 2)"
    assert main(args[:-2] + ["--steps", "2", "--reprocess"]) == 0


def estimate(tmp_path, record: dict, **run) -> float:
    """Seconds per row per GPU the estimate gives for one region at each of `run`'s region sides."""
    from rayinpaint.jobs.estimate import read_record, seconds_per_row

    path = tmp_path / "r.json"
    path.write_text(json.dumps(record))
    sides = run.pop("sides", [[512]])
    cfg = JobConfig(manifest=("m",), output="o", **run)
    return seconds_per_row(read_record(str(path), JobConfig), cfg, sides)


def test_estimate_scales_by_steps_sides_and_regions(tmp_path):
    """A record measured at DDIM 50 (0.5 s per image) costs a default run (DPM-Solver++ 25) about half as much:
    the UNet, 25 of 50 calls, is nearly all of it, the VAE the rest. A 768-px region costs more than its 2.25x
    pixels (attention grows faster), two regions twice one."""
    ddim50 = {"images_per_s": 2.0, "settings": {"sampler": "ddim", "steps": 50, "resolution": 512}}
    same = estimate(tmp_path, ddim50, sampler="ddim", steps=50)
    assert abs(same - 0.5) < 1e-12
    default = estimate(tmp_path, ddim50)
    assert 0.25 < default < 0.5 * 0.55
    assert estimate(tmp_path, ddim50, sides=[[512, 512]]) == 2 * default
    assert 2.25 * default < estimate(tmp_path, ddim50, sides=[[768]]) < 4 * default
    # A record that names no settings is a default bench run, which is a default run: no scaling.
    assert abs(estimate(tmp_path, {"images_per_s": 4.0}) - 0.25) < 1e-12


def test_dry_run_stops_where_the_run_would(tmp_path, capsys):
    """A pool this machine cannot place, and a missing manifest column: exit 2, as the run."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = make_dataset(str(tmp_path / "in"), rows=2)
    base = ["run", "--manifest", manifest, "--output", str(tmp_path / "o"), "--weights", "random:tiny", "--dry-run"]
    assert main(base + ["--num-actors", str((os.cpu_count() or 1) + 1)]) == 2
    out = capsys.readouterr().out
    assert "cannot be placed" in out and out.rstrip().endswith("would stop before any work (exit code 2)")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "img": ["x.png"]}), bad)
    assert main(["run", "--manifest", str(bad), "--output", str(tmp_path / "o2"), "--weights", "random:tiny",
                 "--dry-run"]) == 2
    assert "--columns" in capsys.readouterr().err
