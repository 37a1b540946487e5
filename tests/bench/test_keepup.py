"""Every stage keeps up: the real job (run_job on a local Ray this test starts) with stand-in model actors that
sleep per model batch (bench/standin.py), measured by bench/keepup.py; and the measurement's pieces on inputs
worked out by hand, without Ray.

Sized for 2 shared cores: 8 actors asking for 8 rows/s in all (4 rows per 4 s each), which prepare and finish
deliver there; a sleeping actor uses no CPU, so Ray is given one logical CPU per actor plus 2 for the CPU stages.
`python -m rayinpaint.bench.keepup` runs larger or faster cases on a machine with more cores (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from rayinpaint.bench.keepup import actor_busy, make_rows, model_stage_bytes, run

pytestmark = pytest.mark.timeout(900)


@pytest.mark.slow  # a local Ray and the job, for a minute
def test_every_actor_stays_busy_when_the_model_is_the_slowest_stage(tmp_path):
    rec = run(rows=384, actors=8, sleep=4.0, size=128, batch=4, stage_cpus=2, workdir=str(tmp_path))
    assert rec["rc"] == 0
    assert rec["actors_with_work"] == 8 and all(n >= 8 for n in rec["model_calls"].values()), rec
    assert rec["window_s"] > 20, rec
    assert min(rec["busy"].values()) >= 0.9, rec


@pytest.mark.slow  # a local Ray and the job
def test_object_store_stays_bounded_when_finish_is_the_slowest_stage(tmp_path):
    # Noise images, PNG level 9: finish is slow; the actors are fast (0.05 s per batch). 512-px model inputs make
    # each prepared row ~1 MB, so the rows together (~170 MB prepared, as much again out of the model) are far more
    # than Ray Data's budget for the dataset (half of the 200 MB object store given to Ray here).
    rec = run(rows=160, actors=4, sleep=0.05, size=512, png_level=9, batch=4, stage_cpus=2, workdir=str(tmp_path),
              object_store_mb=200, resolution=512)
    assert rec["rc"] == 0
    stage = rec["model_stage"]
    # The encoded original (a 512x384 noise PNG, ~590 KB) no longer crosses the model stage.
    assert stage["before_bytes_per_row"] - stage["after_bytes_per_row"] > 0.9 * stage["source_bytes_per_row"], stage
    everything_mb = rec["rows"] * stage["after_bytes_per_row"] / 2 ** 20
    assert rec["object_store_peak_mb"] <= 1.1 * 100, rec  # bounded by the budget, not by the row count
    assert everything_mb > 1.5 * rec["object_store_peak_mb"], rec


@pytest.mark.slow  # the job in a subprocess
def test_the_command_line_runs_with_the_stand_in(tmp_path):
    """`python -m rayinpaint.bench.standin ... -- run ...`: the `rayinpaint run` command with the sleeping actors."""
    manifest = make_rows(str(tmp_path / "input"), rows=8, size=64)
    cmd = [sys.executable, "-m", "rayinpaint.bench.standin", "--sleep", "0.01", "--log", str(tmp_path / "actors"),
           "--", "run", "--manifest", manifest, "--output", str(tmp_path / "out"), "--weights", "random:tiny",
           "--resolution", "64", "--batch-size", "4", "--num-gpus-per-actor", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "_SUMMARY.json").read_text())
    assert summary["counts_by_status"] == {"ok": 8} and summary["model_sha256"] == "standin-sleep", summary
    calls = [line.split() for f in (tmp_path / "actors").glob("actor-*.txt") for line in f.read_text().splitlines()]
    assert sum(int(c[2]) for c in calls) == 8, calls  # every region went through the stand-in's model call


def test_the_measurements_pieces_without_ray(tmp_path):
    """The rows, the model stage's bytes per row and the actors' busy fractions, on inputs worked out by hand."""
    manifest = make_rows(str(tmp_path / "input"), rows=10, size=64, distinct=2)
    t = pq.read_table(manifest)
    assert t.num_rows == 10 and len(set(t.column("id").to_pylist())) == 10
    assert sorted(set(t.column("image").to_pylist())) == [str(tmp_path / "input" / f"{k}.png") for k in (0, 1)]
    stage = model_stage_bytes(manifest, batch=2, resolution=64)
    assert stage["source_bytes_per_row"] == os.path.getsize(tmp_path / "input" / "0.png")  # one size: noise PNGs
    assert stage["before_bytes_per_row"] - stage["after_bytes_per_row"] > 0.9 * stage["source_bytes_per_row"], stage

    logs = tmp_path / "actors"
    assert actor_busy(str(logs))["actors_with_work"] == 0
    logs.mkdir()
    (logs / "actor-1.txt").write_text("0 1 4\n1 2 4\n2 3 4\n")
    (logs / "actor-2.txt").write_text("0.5 1.5 4\n2 3 1\n")
    # the window every actor was streaming: from the last first start (0.5) to the first last end (3)
    assert actor_busy(str(logs)) == {"actors_with_work": 2, "window_s": 2.5,
                                     "busy": {"actor-1.txt": 1.0, "actor-2.txt": 0.8},
                                     "model_calls": {"actor-1.txt": 3, "actor-2.txt": 2}}


@pytest.mark.slow  # a local Ray and the job, for about a minute
def test_every_actor_stays_busy_with_masks_detected_in_prepare(tmp_path):
    """--mask-from text: prepare runs as a detector actor (rapidocr on 640x480 captioned photos, a quarter of them
    without text; about 110 ms a row on one core), and the 4 sleeping model actors asking 4 rows/s in all (4 rows per
    4 s each) never wait for input: detection keeps up with them, and finish with it."""
    pytest.importorskip("rapidocr")
    rec = run(rows=96, actors=4, sleep=4.0, size=640, batch=4, stage_cpus=2, workdir=str(tmp_path),
              mask_from="text")
    assert rec["rc"] == 0 and rec["mask_sources"] == {"text": 96}, rec
    assert rec["counts"] == {"ok": 72, "unchanged": 24}, rec  # the text-free quarter is left as it was
    assert rec["actors_with_work"] == 4 and rec["window_s"] > 10, rec
    assert min(rec["busy"].values()) >= 0.9, rec
