"""Faults during a real run (the `rayinpaint` command in a subprocess, a local Ray cluster, the tiny model):
a model actor killed mid-batch, the driver killed at random points, the output becoming unwritable.

After every fault the ledger must say exactly once what happened to each row, and nothing may be marked done
that was not written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayinpaint.jobs.demo import make_dataset

pytestmark = pytest.mark.timeout(900)

HOOKS = str(Path(__file__).parent / "faulthooks")
ARGS = ["--weights", "random:tiny", "--steps", "1", "--resolution", "64", "--batch-size", "2",
        "--max-error-rate", "0.5", "--mask-dilate", "2", "--feather", "2", "--progress-interval", "2"]
DEMO_BAD = 5  # make_dataset adds five extra rows: four bad ones and one with an empty mask


def job(manifest, out, *extra) -> list[str]:
    return [sys.executable, "-m", "rayinpaint.jobs", "run", "--manifest", str(manifest), "--output", str(out),
            *ARGS, *extra]


def start(cmd, env=None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})


def kill_group(proc: subprocess.Popen) -> None:
    """The driver's process group: its Ray processes (GCS, raylet, workers) started in-process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def results(out: Path) -> list[dict]:
    folder = out / "results"
    shards = sorted(p for p in folder.iterdir() if p.name.endswith(".parquet")) if folder.exists() else []
    return [r for p in shards for r in pq.read_table(str(p)).to_pylist()]


def shard_count(out: Path) -> int:
    folder = out / "results"
    return len([p for p in folder.iterdir() if p.name.endswith(".parquet")]) if folder.exists() else 0


def check_exactly_once(out: Path, rows: int) -> dict:
    res = results(out)
    ids = [r["id"] for r in res]
    assert len(ids) == len(set(ids)) == rows, (len(ids), len(set(ids)), rows)
    for r in res:  # nothing is marked done that was not written
        if r["status"] in ("ok", "unchanged"):
            assert os.path.isfile(r["output_uri"]), r["id"]
    return {r["id"]: r for r in res}


def model_actor_pids() -> list[int]:
    """Processes whose title names the model actor (Ray sets `ray::MapWorker(MapBatches(InpaintPredictor))`)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "InpaintPredictor" in cmd and "MapWorker" in cmd:
            pids.append(int(d))
    return pids


def wait_for(cond, proc, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}: rc={proc.returncode}\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_model_actor_killed_mid_batch(tmp_path, reliability):
    manifest = make_dataset(str(tmp_path / "in"), rows=30)
    out = tmp_path / "out"
    proc = start(job(manifest, out))
    try:
        wait_for(lambda: shard_count(out) >= 2 and model_actor_pids(), proc, what="the first results")
        victims = model_actor_pids()
        for pid in victims:
            os.kill(pid, signal.SIGKILL)  # mid-run: the actor holds a batch or is about to get one
        _, err = proc.communicate(timeout=600)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    got = check_exactly_once(out, 30 + DEMO_BAD)
    assert all(r["status"] in ("ok", "unchanged") for rid, r in got.items() if rid.startswith(("img-", "empty-")))
    assert sum(r["status"] == "error" for r in got.values()) == 4  # the four bad rows, nothing else
    reliability.record("fault", "model actor process SIGKILLed mid-run", len(victims),
                       "actor restarted, its batch retried; exit 0, every id once, all good rows ok")


@pytest.mark.parametrize("trial", range(3))
def test_driver_killed_at_a_random_point_then_rerun(tmp_path, trial, reliability):
    rng = random.Random(1000 + trial)
    manifest = make_dataset(str(tmp_path / "in"), rows=24)
    out = tmp_path / "out"
    kills = []
    # Up to three kills at random moments of successive runs (start-up, mid-run, near the end), then a full run.
    for k in range(rng.randint(1, 3)):
        proc = start(job(manifest, out))
        try:
            delay = rng.uniform(0.5, 25.0)
            t0 = time.time()
            while time.time() - t0 < delay and proc.poll() is None:
                time.sleep(0.05)
            finished = proc.poll() is not None
            before = shard_count(out)
            os.kill(proc.pid, signal.SIGKILL) if not finished else None
        finally:
            kill_group(proc)
        kills.append((round(delay, 1), before, finished))
        assert not finished or proc.returncode == 0
    r = subprocess.run(job(manifest, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = check_exactly_once(out, 24 + DEMO_BAD)
    assert all(x["status"] in ("ok", "unchanged") for rid, x in got.items() if rid.startswith(("img-", "empty-")))
    s = json.loads((out / "_SUMMARY.json").read_text())
    assert s["complete"] and s["accounted"] == 24 + DEMO_BAD
    n = sum(1 for _, _, f in kills if not f)
    reliability.record("fault", f"driver SIGKILLed at random points (trial {trial}: after "
                       + ", ".join(f"{d}s/{b} shards" for d, b, _ in kills) + ")", n,
                       "rerun: exit 0, every id exactly once, done rows not redone")


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES"])
def test_output_becomes_unwritable_mid_run(tmp_path, code, reliability):
    manifest = make_dataset(str(tmp_path / "in"), rows=24)
    out = tmp_path / "out"
    state = tmp_path / "fault-state"
    env = {"PYTHONPATH": os.pathsep.join([HOOKS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "RAYINPAINT_FAULT_OUTPUT": str(out), "RAYINPAINT_FAULT_STATE": str(state),
           "RAYINPAINT_FAULT_BUDGET": "12", "RAYINPAINT_FAULT_ERRNO": code}
    r = subprocess.run(job(manifest, out), capture_output=True, text=True, timeout=600, env={**os.environ, **env})
    assert r.returncode == 3, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rayinpaint: error: stopped:")
    assert {"ENOSPC": "No space left on device", "EACCES": "access denied"}[code] in last, last
    assert "rerun" in last and "Traceback" not in r.stderr
    assert state.read_text().count("x") >= 1  # the fault really happened
    # Nothing marked done that was not written; no partial files left behind.
    recorded = results(out)
    for x in recorded:
        if x["status"] in ("ok", "unchanged"):
            assert os.path.isfile(x["output_uri"]), x["id"]
    assert not [p for p in out.rglob(".*tmp-*")]
    assert not (out / "_SUCCESS").exists()

    # Space is back: the same command finishes the job, exactly once.
    r = subprocess.run(job(manifest, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = check_exactly_once(out, 24 + DEMO_BAD)
    assert all(x["status"] in ("ok", "unchanged") for rid, x in got.items() if rid.startswith(("img-", "empty-")))
    reliability.record("fault", f"output unwritable mid-run ({code}, simulated at fsync)", 1,
                       f"exit 3 with one line; {len(recorded)} rows recorded before, all written; rerun exit 0, "
                       "every id once")


def test_output_unwritable_from_the_start(tmp_path, reliability):
    manifest = make_dataset(str(tmp_path / "in"), rows=2)
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    r = subprocess.run(job(manifest, blocker), capture_output=True, text=True, timeout=300)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rayinpaint: error: cannot write to --output") and str(blocker) in last
    assert blocker.read_text().startswith("a file")
    reliability.record("fault", "output path not writable at start", 1, "exit 3 before any work, one clear line")
