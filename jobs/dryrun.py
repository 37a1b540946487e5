"""`rayinpaint run --dry-run`: everything a run would check, without Ray, a model or a write.

After the usual pre-flight (weights header, output reachable, manifest schemas and ids), it reads the output's
results (read only), counts the rows left to do, fetches and decodes a sample of them on the driver (the same
prepare step the workers run: image, mask, crop), says whether the output's recorded settings match, and, given
a `rayinpaint bench` record, estimates the GPU-hours the rows left would take.
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


def dry_run(cfg, storage, plan) -> int:
    """Print the dry run's findings (stdout, one fact a line); 0 when the sample holds a row that would be
    repainted, 1 otherwise (every sampled row an error or unchanged: a real run would not be a success).
    `plan`: the bookkeeping's start, made without writing (ledger/plan.py)."""
    todo_n = plan.todo if cfg.limit is None else min(plan.todo, cfg.limit)
    print(f"dry run: {plan.unique} unique id(s) in the manifest, {plan.done} already done, {todo_n} to do")
    print(f"settings: {_settings_line(cfg, storage)}")
    sample = sample_rows(cfg, storage, plan)
    statuses = Counter(r["status"] if r["status"] != ERROR else f"error:{r['error_kind']}" for r in sample)
    print(f"sample of {len(sample)} row(s) fetched and decoded: "
          + (", ".join(f"{k} {v}" for k, v in sorted(statuses.items())) or "none"))
    for r in [r for r in sample if r["status"] == ERROR][:5]:
        print(f"  {r['id']}: {r['error_kind']}: {r['error']}")
    ready = [len(r["windows"]) for r in sample if r["status"] == "ready"]
    per_row = sum(ready) / len(ready) if ready else 1.0
    if ready:
        print(f"regions: {per_row:.2f} per repainted row in the sample (the model's unit of work; README, Regions)")
    print(estimate_line(cfg, todo_n, per_row))
    return 0 if statuses.get("ready") or not sample else 1


def _settings_line(cfg, storage) -> str:
    settings = pixel_settings(cfg, model_identity(cfg, storage))
    fs, path = filesystem(Layout(cfg.output).settings, storage)
    if not fs.exists(path):
        return f"new output (fingerprint {fingerprint_of(settings)})"
    recorded = json.loads(fs.cat_file(path))
    diff = differences(recorded.get("settings", {}), settings)
    return "same as the output's" if not diff else (
        f"differ from the output's ({'; '.join(diff)}): a run would stop; use a new --output or --reprocess")


def sample_rows(cfg, storage, plan) -> list[dict]:
    """Prepared rows (status, error kind and message) for the first --dry-run-sample manifest rows whose id is
    left to do, reading manifest files in order until there are enough."""
    out = []
    want = min(cfg.dry_run_sample, plan.todo)
    settings = cfg.prepare_settings(storage)
    for path in (p for group in plan.groups_to_read() for p in group):
        if len(out) >= want:
            break
        fs, p = filesystem(path, storage)
        with fs.open(p, "rb") as f:
            t = pq.read_table(f)
        t = canonicalize(t, cfg.column_map(), source_column=None, base_dir=dirname_uri(path))
        t = t.filter(pc.fill_null(pc.not_equal(t.column("id"), ""), False))
        t = t.filter(pa.array(plan.index.among(t.column("id").combine_chunks(), "todo")))
        out += [prepare_row(row, settings) for row in t.to_pylist()[: want - len(out)]]
    return out


def estimate_line(cfg, rows: int, regions_per_row: float = 1.0) -> str:
    """GPU-hours for `rows` rows from a bench record: the whole job's rate as measured, or the model's rate
    (one region per image) times the regions per row."""
    if not cfg.bench_record:
        return "GPU-hours: pass --bench-record FILE (the JSON line `rayinpaint bench` prints) for an estimate"
    with open(cfg.bench_record) as f:
        record = json.load(f)  # what `rayinpaint bench --json FILE` writes
    e2e = record.get("e2e") or {}
    if record.get("e2e_images_per_s"):  # the whole job, per model actor (one per GPU)
        per_s, what = record["e2e_images_per_s"] / max(1, e2e.get("gpus") or 1), "the whole job"
    elif record.get("images_per_s"):
        per_s = record["images_per_s"] / max(regions_per_row, 1e-9)
        what = f"the model alone at {regions_per_row:.2f} regions per row; loading and data stages add to it"
    else:
        per_s = None
    if not per_s:
        return f"GPU-hours: {cfg.bench_record} has no images_per_s"
    bench_steps = (record.get("settings") or {}).get("steps")
    steps_note = ("" if bench_steps in (None, cfg.steps)
                  else f"; measured at {bench_steps} steps, this run has {cfg.steps}")
    return (f"GPU-hours: about {rows / per_s / 3600:.2f} for {rows} row(s) at {per_s:.2f} rows/s per GPU on "
            f"{record.get('device', 'an unrecorded device')} ({what}{steps_note})")

