"""The load benchmark: the whole job over many small rows on a real `ray start` cluster that must spill.

`python -m rayinpaint.bench.load --rows 20000` starts a one-node cluster (`ray start --head`, token authentication
on, as on a production cluster) whose object store is small enough that the run's blocks do not fit, and tells
Ray Data it may over-commit that store, so it spills to disk mid-run. It writes a manifest of `--rows` ids over 64
noisy PNGs (about 150 KB each, read by URI), runs `rayinpaint run` with the
tiny random model on CPU (`--resolution`: the model's side, 64 px by default) against the cluster, and measures
from outside the driver:

- the driver's resident memory, sampled from /proc twice a second;
- the rows done over time, from its progress lines;
- what the raylet spilled, from its log;
- what the output holds: result rows, distinct ids, statuses, the summary's accounting.

It prints one JSON record. `tests/reliability/test_load.py` runs it at a smaller size and asserts on the record;
RELIABILITY.md holds the 20,000-row numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

W, H = 256, 192
OBJECT_STORE = 96 * 1024 * 1024  # bytes: small enough that the run's blocks do not all fit
SOURCES = 64  # distinct images the rows point at
MANIFEST_ROWS = 1000  # rows per manifest file: several files, as a real dataset has
PROGRESS = re.compile(r"^\S+ \S+ INFO rayinpaint\.progress: rows (\d+)/(\d+)")
SPILLED = re.compile(r"Spilled (\d+) MiB, (\d+) objects")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def write_manifest(root: Path, rows: int) -> str:
    """`rows` ids over 64 noisy images; half with a mask file, half with boxes; three prompts, one empty."""
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(SOURCES):
        (root / "img" / f"{i}.png").write_bytes(_png(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)))
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[20:50, 20:60] = 255
    (root / "mask.png").write_bytes(_png(mask))
    t = pa.table({"id": [f"row-{i:06d}" for i in range(rows)],
                  "image": [f"img/{i % SOURCES}.png" for i in range(rows)],
                  "mask": ["mask.png" if i % 2 else None for i in range(rows)],
                  "boxes": [None if i % 2 else [[10.0, 10.0, 40.0, 30.0]] for i in range(rows)],
                  "prompt": [("remove the logo", "clean wall", None)[i % 3] for i in range(rows)]})
    for k, part in enumerate(range(0, rows, MANIFEST_ROWS)):
        pq.write_table(t.slice(part, MANIFEST_ROWS), str(root / f"manifest-{k}.parquet"))
    return str(root)


@contextlib.contextmanager
def small_cluster(object_store: int = OBJECT_STORE):
    """A `ray start --head` cluster of 2 CPUs; yields (address, env for its clients, its temp folder).

    Started with `--block` in a session of its own and stopped by signalling it and that session (`_stop_session`),
    so that only this cluster stops: `ray stop` would stop every Ray on the machine, and a driver whose Ray stops
    exits with it."""
    tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths live here
    ray = str(Path(sys.executable).with_name("ray"))
    # RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION is read by the driver: Ray Data may use several times the store,
    # so the store must spill instead of Ray Data holding back.
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION": "8"}
    log = open(os.path.join(tmp, "ray-start.log"), "w")
    head = subprocess.Popen([ray, "start", "--head", "--block", "--num-cpus", "2", "--object-store-memory",
                             str(object_store), "--include-dashboard", "false", "--port", "0", "--temp-dir", tmp,
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        yield _address_when_up(head, tmp), env, tmp
    finally:
        _stop_session(head)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _address_when_up(head: subprocess.Popen, tmp: str, timeout: float = 120) -> str:
    """The cluster's address, once `ray start` has written it to its temp folder."""
    path, deadline = Path(tmp, "ray_current_cluster"), time.monotonic() + timeout
    while not path.exists() or not path.read_text().strip():
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray start failed: {Path(tmp, 'ray-start.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return path.read_text().strip()


def _stop_session(head: subprocess.Popen) -> None:
    """SIGINT to `ray start --block` (as Ctrl-C: it stops what it started, in about a second), then SIGKILL to
    whatever is left in its session. SIGTERM would not do: the block ignores it, and the stop would wait out its
    whole timeout (30 s measured) before the SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        head.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)  # the head's own processes, should any outlive it
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(10)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def watch(cmd: list[str], env: dict) -> dict:
    """Run the job; its exit code, last stderr lines, RSS samples and progress points (seconds since start)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    t0, samples, progress, lines = time.time(), [], [], []

    def sample():
        while proc.poll() is None:
            m = rss_mb(proc.pid)
            if m is not None:
                samples.append((time.time() - t0, m))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stderr:
        lines.append(line)
        if m := PROGRESS.match(line):
            progress.append((time.time() - t0, int(m.group(1))))
    proc.wait()
    sampler.join()
    return {"rc": proc.returncode, "tail": "".join(lines[-40:]), "elapsed": time.time() - t0,
            "samples": samples, "progress": progress}


def memory_and_rate(seen: dict, rows: int) -> dict:
    """Driver RSS in the first vs the last quarter of the run (after the first progress line), and the rate in
    the second vs the fourth quarter of the rows."""
    progress, samples = seen["progress"], seen["samples"]
    run = [m for t, m in samples if progress and t >= progress[0][0]] or [m for _, m in samples]  # a run too short
    q = max(1, len(run) // 4)

    def rate(a, b):
        seg = [(t, n) for t, n in progress if a <= n / rows < b]
        return (seg[-1][1] - seg[0][1]) / (seg[-1][0] - seg[0][0]) if len(seg) > 1 else 0.0

    return {"driver_rss_mb_first_q": round(max(run[:q])), "driver_rss_mb_last_q": round(max(run[-q:])),
            "driver_rss_mb_max": round(max(m for _, m in samples)),
            "rate_q2": round(rate(0.25, 0.5), 1), "rate_q4": round(rate(0.75, 0.97), 1)}


def output_check(out: Path) -> dict:
    """What the output holds, read with pyarrow alone (not the job's own bookkeeping)."""
    res = pq.read_table(str(out / "results"), columns=["id", "status"])
    summary = json.loads((out / "_SUMMARY.json").read_text())
    statuses = pc.value_counts(res.column("status")).to_pylist()
    return {"result_rows": res.num_rows, "distinct_ids": len(pc.unique(res.column("id"))),
            "statuses": {s["values"]: s["counts"] for s in statuses},
            "summary_complete": summary["complete"], "summary_accounted": summary["accounted"]}


def spilled(ray_tmp: str) -> tuple[int, int]:
    """(MiB, objects): the largest running total the raylet logged as it spilled; (0, 0) if it never did."""
    log = "".join(p.read_text(errors="replace") for p in Path(ray_tmp).glob("session_*/logs/raylet*.out"))
    return max([(int(a), int(b)) for a, b in SPILLED.findall(log)], default=(0, 0))


def run_load(rows: int, workdir: Path, object_store: int = OBJECT_STORE, resolution: int = 64) -> dict:
    """The whole benchmark: one JSON-able record (the job's last stderr lines under "tail" when it failed)."""
    manifest = write_manifest(workdir / "in", rows)
    out = workdir / "out"
    rayinpaint = str(Path(sys.executable).with_name("rayinpaint"))
    with small_cluster(object_store) as (address, env, ray_tmp):
        cmd = [rayinpaint, "run", "--manifest", manifest, "--output", str(out), "--address", address,
               "--weights", "random:tiny", "--steps", "1", "--resolution", str(resolution), "--batch-size", "16",
               "--mask-dilate", "2", "--feather", "2", "--progress-interval", "2"]
        seen = watch(cmd, env)
        mib, objects = spilled(ray_tmp)
    record = {"rows": rows, "rc": seen["rc"], "elapsed_s": round(seen["elapsed"], 1),
              "rows_per_s": round(rows / seen["elapsed"], 1), "object_store_mib": object_store // 2**20,
              "resolution": resolution,
              "spilled_mib": mib, "spilled_objects": objects}
    if seen["rc"] != 0:
        return {**record, "tail": seen["tail"]}
    return {**record, **memory_and_rate(seen, rows), **output_check(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayinpaint.bench.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--object-store-mib", type=int, default=OBJECT_STORE // 2**20)
    p.add_argument("--resolution", type=int, default=64, help="the model's side: its prepared rows' size")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rayinpaint-load-") as d:
        record = run_load(args.rows, Path(d), args.object_store_mib * 2**20, args.resolution)
    print(json.dumps(record))
    return 0 if record["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
