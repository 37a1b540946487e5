"""Does every stage keep up? The real job (run_job, local Parquet in and out) with stand-in model actors that
sleep per model batch (bench/standin.py), on a local Ray this module starts:

    python -m rayinpaint.bench.keepup --actors 8 --rows 400 --sleep 0.4          # actors the bottleneck
    python -m rayinpaint.bench.keepup --actors 8 --rows 200 --sleep 0.01 --size 1024 --png-level 9
                                                                                   # finish the bottleneck
    python -m rayinpaint.bench.keepup --actors 4 --rows 192 --sleep 2 --size 640 --mask-from text
                                                    # masks detected in prepare (captioned photos, bench/captions.py)

Prints one JSON record: per-actor busy fraction over the streaming window (from the moment every actor has
started its first model call to the moment the first actor ends its last one: start-up and the final drain left
out), rows/s, the peak of the object store bytes Ray Data counts for the dataset's blocks, and the bytes per row
that enter the model stage (prepared blocks, measured on the same rows outside Ray) now and with the encoded
original carried inline as before. Logical CPUs for Ray: one per actor (a sleeping actor uses none) plus
--stage-cpus for prepare and finish (default: this machine's cores).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def make_rows(folder: str, rows: int, size: int, distinct: int = 8) -> str:
    """`rows` manifest rows over `distinct` noise PNGs of size x size*3/4 (slow to encode), one box each."""
    rng = np.random.default_rng(0)
    w, h = size, size * 3 // 4
    os.makedirs(folder, exist_ok=True)
    for k in range(distinct):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(folder, f"{k}.png"))
    recs = [{"id": f"r{i:06d}", "image": os.path.join(folder, f"{i % distinct}.png"),
             "boxes": [[w * 0.3, h * 0.3, w * 0.6, h * 0.6]]} for i in range(rows)]
    path = os.path.join(folder, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(recs), path)
    return path


def model_stage_bytes(manifest: str, batch: int, resolution: int) -> dict:
    """Bytes per row of the prepared blocks entering the model stage, now and with `source` inline (before)."""
    from rayinpaint.io.settings import PrepareSettings
    from rayinpaint.jobs.stages import prepare_batch

    t = pq.read_table(manifest)
    sample = t.slice(0, min(len(t), 4 * batch))
    rows = pa.Table.from_pylist([{"id": r["id"], "image_uri": r["image"], "boxes": r["boxes"]}
                                 for r in sample.to_pylist()])
    after = prepare_batch(rows, PrepareSettings(resolution=resolution))
    inline = [open(u, "rb").read() for u in rows.column("image_uri").to_pylist()]
    before = after.drop_columns(["source_uri", "source_size", "source_digest"])
    before = before.set_column(before.schema.get_field_index("source"), "source", pa.array(inline, pa.binary()))
    return {"after_bytes_per_row": round(after.nbytes / len(rows)), "before_bytes_per_row":
            round(before.nbytes / len(rows)), "source_bytes_per_row": round(sum(map(len, inline)) / len(rows))}


class StoreTracker:
    """The peak of Ray Data's own count of the object store bytes the dataset's blocks hold (what its backpressure
    works from), recorded by wrapping `ResourceManager.update_usages` (run by the streaming executor, in this
    process, every scheduling step). Ray's raylet statistics would need grpc, which this environment lacks."""

    def __enter__(self):
        from ray.data._internal.execution.resource_manager import ResourceManager

        self.samples, self._cls, self._orig = [], ResourceManager, ResourceManager.update_usages
        tracker = self

        def update_usages(rm):
            tracker._orig(rm)
            tracker.samples.append((time.time(), int(rm.get_global_usage().object_store_memory or 0)))

        ResourceManager.update_usages = update_usages
        return self

    def __exit__(self, *exc):
        self._cls.update_usages = self._orig

    @property
    def peak(self) -> int:
        return max((u for _, u in self.samples), default=0)


def actor_busy(log_dir: str) -> dict:
    """Busy fraction per actor over the streaming window (see the module docstring), from the stand-in's logs."""
    calls = {}
    for path in glob.glob(os.path.join(log_dir, "actor-*.txt")):
        with open(path) as f:
            spans = [tuple(float(v) for v in line.split()[:2]) for line in f if line.strip()]
        if spans:
            calls[os.path.basename(path)] = spans
    if not calls:
        return {"actors_with_work": 0, "window_s": 0.0, "busy": {}, "model_calls": {}}
    lo = max(s[0][0] for s in calls.values())
    hi = min(s[-1][1] for s in calls.values())
    busy = {name: sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans) / max(1e-9, hi - lo)
            for name, spans in calls.items()}
    return {"actors_with_work": len(calls), "window_s": round(hi - lo, 3),
            "busy": {k: round(v, 3) for k, v in busy.items()}, "model_calls": {k: len(v) for k, v in calls.items()}}


def run(rows: int, actors: int, sleep: float, size: int = 256, png_level: int = 1, batch: int = 4,
        stage_cpus: int | None = None, workdir: str | None = None, object_store_mb: int = 1024,
        resolution: int = 128, mask_from: str = "") -> dict:
    """Start a local Ray, run the job with the stand-in actors, stop Ray; the measurements as a dict. `mask_from`:
    detect the masks (captioned photos without a mask column) instead of reading boxes (noise PNGs)."""
    import ray

    from rayinpaint.jobs.config import JobConfig
    from rayinpaint.jobs.inpaint import run_job

    from .standin import sleeping_actor

    stage_cpus = stage_cpus or os.cpu_count() or 2
    work = workdir or tempfile.mkdtemp(prefix="keepup-")
    if mask_from:
        from .captions import write_dataset

        manifest = write_dataset(os.path.join(work, "input"), rows, size, size * 3 // 4)
    else:
        manifest = make_rows(os.path.join(work, "input"), rows, size)
    log_dir = os.path.join(work, "actors")
    ray.init(address="local", num_cpus=actors + stage_cpus, object_store_memory=object_store_mb * 2 ** 20,
             include_dashboard=False, logging_level="WARNING")
    tracker = StoreTracker()
    try:
        tracker.__enter__()
        t0 = time.time()
        cfg = JobConfig(manifest=(manifest,), output=os.path.join(work, "out"), weights="random:tiny",
                        num_actors=actors, num_gpus_per_actor=0, batch_size=batch, resolution=resolution,
                        png_level=png_level, steps=1, mask_from=mask_from,
                        progress_interval=5.0, max_error_rate=0.0)
        rc = run_job(cfg, model_actor=sleeping_actor(sleep, log_dir))
        wall = time.time() - t0
    finally:
        tracker.__exit__()
        peak = tracker.peak
        ray.shutdown()
    busy = actor_busy(log_dir)
    with open(os.path.join(work, "out", "_SUMMARY.json")) as f:
        summary = json.load(f)
    return {"counts": summary["counts_by_status"],
            "mask_sources": {k: v["rows"] for k, v in summary.get("mask_sources", {}).items()},
            "rc": rc, "rows": rows, "actors": actors, "sleep_s": sleep, "batch": batch, "size": size,
            "png_level": png_level, "ray_cpus": actors + stage_cpus, "wall_s": round(wall, 2),
            "rows_per_s_wall": round(rows / wall, 2), "object_store_peak_mb": round(peak / 2 ** 20, 1),
            "resolution": resolution,
            "object_store_mb": object_store_mb, "mask_from": mask_from, **busy, "workdir": work,
            "model_stage": None if mask_from else model_stage_bytes(manifest, batch, resolution)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("--actors", type=int, default=8)
    p.add_argument("--sleep", type=float, default=0.4, help="seconds per model batch")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", type=int, default=256, help="image width (height 3/4 of it), noise PNG")
    p.add_argument("--png-level", type=int, default=1)
    p.add_argument("--stage-cpus", type=int, default=None)
    p.add_argument("--resolution", type=int, default=128, help="model side (the prepared inputs' size)")
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument("--mask-from", default="", help="detect the masks (e.g. text) in captioned photos instead")
    a = p.parse_args(argv)
    rec = run(a.rows, a.actors, a.sleep, a.size, a.png_level, a.batch_size, a.stage_cpus,
              object_store_mb=a.object_store_mb, resolution=a.resolution, mask_from=a.mask_from)
    busy = list(rec["busy"].values())
    rec["busy_min"], rec["busy_mean"] = (min(busy), round(sum(busy) / len(busy), 3)) if busy else (0, 0)
    print(json.dumps(rec, indent=1))
    return 0 if rec["rc"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
