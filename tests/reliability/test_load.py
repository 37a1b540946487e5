"""Load: a 20,000-row manifest with the tiny model on CPU, on a real Ray cluster (`ray start --head`) whose
object store is made small enough that it must spill to disk.

Measured over the run, from outside the driver: its resident memory (sampled from /proc twice a second) and
the rows done (its progress lines). Asserted: every row done exactly once, the driver's memory flat between
the first and the last quarter of the run, the rate of the last quarter close to that of the second, and
that the object store really spilled. `RAYINPAINT_LOAD_ROWS` changes the row count (default 20000).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helpers_io import make_mask_png, make_png
from helpers_job import cli_cmd
from rayinpaint.ledger.files import read_results

W, H = 256, 192  # noisy PNGs of ~100 KB: each prepared block carries its rows' source bytes
ROWS = int(os.environ.get("RAYINPAINT_LOAD_ROWS", "20000"))
OBJECT_STORE = 96 * 1024 * 1024  # bytes: small enough that the run's blocks do not all fit
pytestmark = [pytest.mark.timeout(2400), pytest.mark.slow]

PROGRESS = re.compile(r"^(\S+ \S+) INFO rayinpaint\.progress: rows (\d+)/(\d+)")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@pytest.fixture
def small_ray_cluster():
    tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths live here
    ray = str(Path(sys.executable).with_name("ray"))
    # Token authentication on, as on a production cluster: the driver must present the same token.
    # Ray Data is told it may use several times the object store (its own env knob, read by the driver), so
    # that it over-commits and the store must spill to disk mid-run instead of being held back.
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_DATA_OBJECT_STORE_MEMORY_LIMIT_FRACTION": "8"}
    r = subprocess.run([ray, "start", "--head", "--num-cpus", "2", "--object-store-memory", str(OBJECT_STORE),
                        "--include-dashboard", "false", "--port", "0", "--temp-dir", tmp, "--disable-usage-stats"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    address = open(os.path.join(tmp, "ray_current_cluster")).read().strip()
    yield address, env, tmp
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=env, timeout=120)
    shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(root: Path, rows: int) -> str:
    """`rows` ids over 64 distinct small images; a few prompts; mask files and boxes."""
    (root / "img").mkdir(parents=True)
    for i in range(64):
        (root / "img" / f"{i}.png").write_bytes(make_png(W, H, seed=i))
    (root / "mask.png").write_bytes(make_mask_png(W, H, [(20, 20, 60, 50)]))
    ids = [f"row-{i:06d}" for i in range(rows)]
    t = pa.table({"id": ids,
                  "image": [f"img/{i % 64}.png" for i in range(rows)],
                  "mask": ["mask.png" if i % 2 else None for i in range(rows)],
                  "boxes": [None if i % 2 else [[10.0, 10.0, 40.0, 30.0]] for i in range(rows)],
                  "prompt": [("remove the logo", "clean wall", None)[i % 3] for i in range(rows)]})
    for k, part in enumerate(range(0, rows, 5000)):  # several manifest files, as a real dataset has
        pq.write_table(t.slice(part, 5000), str(root / f"manifest-{k}.parquet"))
    return str(root)


def test_20k_rows_driver_memory_flat_throughput_steady_spilling_loses_nothing(tmp_path, small_ray_cluster,
                                                                               reliability):
    address, env, ray_tmp = small_ray_cluster
    manifest = write_manifest(tmp_path / "in", ROWS)
    out = tmp_path / "out"
    cmd = cli_cmd("run", "--manifest", manifest, "--output", str(out), "--address", address,
                  "--weights", "random:tiny", "--steps", "1", "--resolution", "64", "--batch-size", "16",
                  "--mask-dilate", "2", "--feather", "2", "--progress-interval", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    samples: list[tuple[float, float]] = []
    t0 = time.time()

    def sample():
        while proc.poll() is None:
            m = rss_mb(proc.pid)
            if m is not None:
                samples.append((time.time() - t0, m))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    progress: list[tuple[float, int]] = []
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if PROGRESS.match(line):
            progress.append((time.time() - t0, int(PROGRESS.match(line).group(2))))
    proc.wait()
    sampler.join()
    elapsed = time.time() - t0
    assert proc.returncode == 0, "".join(lines[-40:])

    # Every row exactly once, all done.
    res = read_results(str(out)).select(["id", "status"])
    assert res.num_rows == ROWS == len(pc.unique(res.column("id")))
    assert pc.all(pc.equal(res.column("status"), "ok")).as_py()
    s = json.loads((out / "_SUMMARY.json").read_text())
    assert s["complete"] and s["accounted"] == ROWS

    # Driver memory: flat between the first and the last quarter of the run (after start-up).
    run = [(t, m) for t, m in samples if progress and t >= progress[0][0]]
    q = len(run) // 4
    first = max(m for _, m in run[:q])
    last = max(m for _, m in run[-q:])
    assert last - first < 100, f"driver RSS grew from {first:.0f} to {last:.0f} MB"

    # Throughput: the last quarter's rate is close to the second quarter's.
    def rate(a, b):
        seg = [(t, n) for t, n in progress if a <= n / ROWS < b]
        return (seg[-1][1] - seg[0][1]) / (seg[-1][0] - seg[0][0])
    r2, r4 = rate(0.25, 0.5), rate(0.75, 0.97)
    assert r4 > 0.6 * r2, f"rate fell from {r2:.1f} to {r4:.1f} rows/s"

    # The object store spilled during the run, and no row was lost to it.
    # The raylet logs "Spilled N MiB, M objects, ..." as it spills; take the largest running total.
    raylet_log = "".join(p.read_text(errors="replace") for p in Path(ray_tmp).glob("session_*/logs/raylet*.out"))
    totals = [(int(a), int(b)) for a, b in re.findall(r"Spilled (\d+) MiB, (\d+) objects", raylet_log)]
    assert totals and max(totals)[0] > 0, "the object store never spilled: make OBJECT_STORE smaller"
    spilled_mib, spilled_objects = max(totals)

    report = {"rows": ROWS, "elapsed_s": round(elapsed, 1), "rows_per_s": round(ROWS / elapsed, 1),
              "rate_q2": round(r2, 1), "rate_q4": round(r4, 1), "driver_rss_mb_first_q": round(first),
              "driver_rss_mb_last_q": round(last), "driver_rss_mb_max": round(max(m for _, m in samples)),
              "spilled_mib": spilled_mib, "spilled_objects": spilled_objects,
              "object_store_mib": OBJECT_STORE // 2**20}
    print("LOAD", json.dumps(report))
    reliability.record("load", f"{ROWS} rows, tiny model on CPU, {OBJECT_STORE // 2**20} MiB object store", ROWS,
                       f"every id once; driver RSS {report['driver_rss_mb_first_q']} -> "
                       f"{report['driver_rss_mb_last_q']} MB (first vs last quarter); "
                       f"{report['rate_q2']} -> {report['rate_q4']} rows/s (2nd vs 4th quarter); "
                       f"{report['spilled_mib']} MiB spilled in {report['spilled_objects']} objects, no row lost")
