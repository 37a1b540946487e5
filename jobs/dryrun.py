"""`rayinpaint run --dry-run`: everything a run would check, without Ray, a model or a write.

After the usual pre-flight (weights header, output reachable, manifest schemas and ids), it reads the output's
results (read only), counts the rows left to do, fetches and decodes a sample of them on the driver (the same
prepare step the workers run: image, mask (detected, with --mask-from), crop), says whether the output's recorded
settings match, and, given a `rayinpaint bench` record, estimates the GPU-hours the rows left would take.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.manifest import canonicalize
from rayinpaint.io.prepare import prepare_row
from rayinpaint.io.storage import dirname_uri, filesystem

from rayinpaint.ledger.fingerprint import differences, fingerprint_of, model_identity, pixel_settings
from rayinpaint.ledger.layout import ERROR, Layout

from .estimate import estimate_line


def dry_run(cfg, storage, plan) -> int:
    """Print the dry run's findings (stdout, one fact a line). Exit code: 2 when a run would stop before any work
    (the output's settings differ, the model pool cannot be placed: what a real run exits with); 1 when every
    sampled row is an error or unchanged (a real run would not be a success); 0 otherwise.
    `plan`: the bookkeeping's start, made without writing (ledger/plan.py)."""
    todo_n = plan.todo if cfg.limit is None else min(plan.todo, cfg.limit)
    print(f"dry run: {plan.unique} unique id(s) in the manifest, {plan.done} already done, {todo_n} to do")
    settings_ok, line = _settings_line(cfg, storage)
    print(f"settings: {line}")
    placement_ok, line = placement_line(cfg)
    print(f"placement: {line}")
    sample = sample_rows(cfg, storage, plan)
    statuses = Counter(r["status"] if r["status"] != ERROR else f"error:{r['error_kind']}" for r in sample)
    print(f"sample of {len(sample)} row(s) fetched and decoded: "
          + (", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none"))
    for r in [r for r in sample if r["status"] == ERROR][:5]:
        print(f"  {r['id']}: {r['error_kind']}: {r['error']}")
    sides = [list(r["region_res"]) for r in sample if r["status"] == "ready"]
    if sides:
        print(f"regions: {sum(map(len, sides)) / len(sides):.2f} per repainted row in the sample (the model's unit "
              f"of work; README, Regions)")
    print(estimate_line(cfg, todo_n, sides))
    if not (settings_ok and placement_ok):
        print("a run with these settings would stop before any work (exit code 2)")
        return 2
    return 0 if statuses.get("ready") or not sample else 1


def _settings_line(cfg, storage) -> tuple[bool, str]:
    """(whether a run would accept the output's recorded settings, the line saying so)."""
    settings = pixel_settings(cfg, model_identity(cfg, storage))
    fs, path = filesystem(Layout(cfg.output).settings, storage)
    if not fs.exists(path):
        return True, f"new output (fingerprint {fingerprint_of(settings)})"
    recorded = json.loads(fs.cat_file(path))
    diff = differences(recorded.get("settings", {}), settings)
    if not diff:
        return True, "same as the output's"
    if cfg.reprocess:
        return True, f"differ from the output's ({'; '.join(diff)}): --reprocess redoes every row under these"
    return False, (f"differ from the output's ({'; '.join(diff)}): a run would stop; use a new --output or "
                   f"--reprocess")


def placement_line(cfg) -> tuple[bool, str]:
    """(whether the model pool fits, the line saying so) on this machine, as a run without --address places it
    (jobs/placement.py), from its CPU and GPU counts; a cluster's placement is checked when the run connects."""
    import os

    from .pipeline import actor_plan
    from .placement import shortfall

    if cfg.address or os.environ.get("RAY_ADDRESS"):
        return True, "not checked: a dry run does not connect to the cluster; the run checks it before any work"
    node = {"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus())}
    pool = actor_plan(cfg, on_cluster=False, gpus=node["GPU"])
    why = shortfall(*pool, [node])
    what = f"{pool[0]} model actor(s) of {pool[1]:g} GPU and {pool[2]:g} CPU on this machine"
    return (False, f"{what} cannot be placed: {why}") if why else (True, f"{what} fit")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def sample_rows(cfg, storage, plan) -> list[dict]:
    """Prepared rows (status, error kind and message) for the first --dry-run-sample manifest rows whose id is
    left to do, reading manifest files in order until there are enough."""
    out = []
    want = min(cfg.dry_run_sample, plan.todo)
    settings = cfg.prepare_settings(storage)
    detector = None
    if cfg.mask_from and want:  # the workers' detector, built here once: the sample's masks are what a run makes
        from rayinpaint.detect import build_detector

        detector = build_detector(cfg.detect_settings(storage))
    for path in (p for group in plan.groups_to_read() for p in group):
        if len(out) >= want:
            break
        fs, p = filesystem(path, storage)
        with fs.open(p, "rb") as f:
            t = pq.read_table(f)
        t = canonicalize(t, cfg.column_map(), source_column=None, base_dir=dirname_uri(path))
        t = t.filter(pc.fill_null(pc.not_equal(t.column("id"), ""), False))
        t = t.filter(pa.array(plan.index.among(t.column("id").combine_chunks(), "todo")))
        out += [prepare_row(row, settings, detector) for row in t.to_pylist()[: want - len(out)]]
    return out
