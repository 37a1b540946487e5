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
    bench.write_text(json.dumps({"device": "NVIDIA H100", "images_per_s": 2.0, "settings": {"steps": 25}}))
    args = ["run", "--manifest", manifest, "--output", str(out), "--weights", "random:tiny", "--dry-run",
            "--dry-run-sample", "9", "--bench-record", str(bench)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dry run: 9 unique id(s) in the manifest, 0 already done, 9 to do"
    assert lines[1].startswith("settings: new output (fingerprint ")
    sample = lines[2]
    assert sample.startswith("sample of 9 row(s) fetched and decoded: ") and "ready 4" in sample
    assert "unchanged 1" in sample and all(f"error:{k} 1" in sample for k in BAD.values()), sample
    assert lines[-2] == "regions: 1.00 per repainted row in the sample (the model's unit of work; README, Regions)"
    assert lines[-1] == ("GPU-hours: about 0.00 for 9 row(s) at 2.00 rows/s per GPU on NVIDIA H100 (the model "
                         "alone at 1.00 regions per row; loading and data stages add to it)")
    # At 256 px the demo's row of three marks far apart (img-0002) is three regions: 6 regions for 4 rows.
    assert main(args + ["--resolution", "256"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("regions: 1.50 per repainted row") and "at 1.33 rows/s per GPU" in lines[-1]
    assert not out.exists() or list(out.iterdir()) == []  # nothing recorded (the write probe is removed)

    # Two rows done, and the output recorded with other settings: both are reported.
    storage = StorageOptions()
    Ledger(str(out), storage).write_rows(results_table([{"id": "img-0000", "status": "ok"},
                                                        {"id": "img-0001", "status": "ok"}]))
    settle_settings(JobConfig(manifest=(manifest,), output=str(out), weights="random:tiny", steps=3), storage,
                    Ledger(str(tmp_path / "elsewhere"), storage))
    assert main(args[:-2] + ["--steps", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dry run: 9 unique id(s) in the manifest, 2 already done, 7 to do"
    assert lines[1] == ("settings: differ from the output's (steps 3 -> 2): a run would stop; use a new --output "
                        "or --reprocess")
    assert lines[-1].startswith("GPU-hours: pass --bench-record FILE")
