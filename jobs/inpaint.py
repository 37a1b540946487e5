"""The job, as a short list of named steps: pre-flight, reconcile the ledger, process what is left (Ray),
account for every id, write the summary, the report and `_SUCCESS`.

Exactly once: before work, the ledger (`{output}/results/`, jobs/ledger.py) is reconciled and every id already
`ok`/`unchanged` (or `error`, unless --retry-errors) is skipped; each finish task writes one complete shard;
rows lost to a dead worker are retried (jobs/pipeline.py). Small shards are merged into large files at the
start, during and at the end of a run (jobs/compaction.py). The ledger is read once per run: the end-of-run
accounting is the start's index plus the rows the driver received. Duplicate ids in the manifest become one error row
each (`duplicate_id`): which of the rows was meant cannot be known.
"""

from __future__ import annotations

import logging
import sys
import time

import pyarrow as pa

from rayinpaint.io.errors import RowError
from rayinpaint.io.naming import output_name
from rayinpaint.io.storage import filesystem, join_uri, write_bytes

from .accounting import RECORDED_SCHEMA, Outcome, RunTally
from .books import outcome_of, reconcile
from .cards import card_details
from .compaction import RunCompactor, compact
from .config import JobConfig
from .dryrun import dry_run
from .fingerprint import settle_settings
from .index_spill import spill_index
from .ledger import Ledger
from .manifest_ids import ManifestScan, scan_manifest
from .overview import describe_output
from .preflight import OutputUnwritable, check_output_writable, check_weights
from .placement import pool_timeout
from .progress import Progress
from .report import build_summary, report_html, summary_json
from .snapshot import save_snapshot
from .spill import SpillFolder

log = logging.getLogger("rayinpaint.job")


def run_job(cfg: JobConfig) -> int:
    """Run the job; returns the process exit code (0 = success within --max-error-rate).

    Raises SettingsError/ManifestError (bad settings, manifest or weights: nothing started),
    StorageUnavailable (the manifest could not be read for transient storage errors: nothing started) and
    OutputUnwritable (the output cannot be written: the job stopped; a rerun resumes)."""
    try:
        return _run_job(cfg)
    except RowError as e:  # only the driver's own storage calls (ledger, summary, report) get here
        raise OutputUnwritable(f"the output cannot be read or written: {e.message}") from None


def _run_job(cfg: JobConfig) -> int:
    started, t0 = time.time(), time.perf_counter()
    storage = cfg.storage()
    cfg.prepare_settings(storage).validate()
    check_weights(cfg, storage)
    check_output_writable(cfg.output, storage)
    with SpillFolder() as spill:  # the ids' bookkeeping on local disk, in parts (jobs/spill.py)
        scan = scan_manifest(cfg, storage, spill)
        log.info("manifest: %d file(s), %d unique id(s), %d duplicated id(s), %d row(s) without an id",
                 sum(len(g) for g in scan.groups), scan.unique, len(scan.duplicates), len(scan.missing))
        ledger = Ledger(cfg.output, storage)
        if cfg.dry_run:
            return dry_run(cfg, storage, scan, spill_index(ledger, spill, scan.parts), spill)
        fingerprint = settle_settings(cfg, storage, ledger)
        todo = reconcile(cfg, ledger, scan, spill)
        tally = RunTally(cfg.preview_count, recorded_rows=spill.table(RECORDED_SCHEMA, scan.parts))
        if todo.count:
            process_rows(cfg, storage, scan, ledger, todo, tally, fingerprint)
        compact(ledger, file_rows=todo.file_rows)
        keep_snapshot(ledger, todo.index)
        outcome = outcome_of(todo, scan, tally.recorded_rows, cfg.max_error_rate, cfg.max_unchanged_rate)
        release_memory()
    model_sha = tally.model_sha256 or ledger.first_value("model_sha256")  # a run with nothing left loaded no model
    elapsed = time.perf_counter() - t0
    whole = describe_output(cfg.output.rstrip("/"), storage, ledger, {
        "started": started, "elapsed_s": round(elapsed, 3), "settings_fingerprint": fingerprint, **tally.this_run()})
    summary = build_summary(cfg, outcome, tally, elapsed=elapsed, started=started, model_sha256=model_sha,
                            whole=whole)
    summary["settings_fingerprint"] = fingerprint
    write_outputs(cfg, storage, summary, tally.previews, outcome.success)
    return _exit_code(cfg, outcome)


def release_memory() -> None:
    """Hand the memory Arrow's allocator keeps after a step over millions of ids back to the system, so the
    driver's resident size follows what it holds (the allocator would otherwise keep the step's peak)."""
    pa.default_memory_pool().release_unused()


def keep_snapshot(ledger: Ledger, read) -> None:
    """Write the index snapshot of the results as they are at the end of the run (jobs/snapshot.py): a cache,
    so a failure to write it is only logged (the next run reads the results files instead)."""
    try:
        save_snapshot(ledger, read)
    except Exception as e:  # noqa: BLE001 - the ledger itself is complete without it
        log.warning("index snapshot not written (%s: %s); the next run reads the results files instead",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")


def process_rows(cfg: JobConfig, storage, scan: ManifestScan, ledger: Ledger, todo, tally: RunTally,
                 fingerprint: str | None = None) -> None:
    """Start Ray (unless already connected), stream the rows to do through the pipeline, stop Ray."""
    import ray

    from .pipeline import PassPlan, process, start_ray
    from .stages import FinishContext

    n = todo.count if cfg.limit is None else min(todo.count, cfg.limit)
    rows = cfg.prepare_settings(storage)
    run = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "strength": cfg.strength,
           "settings_fingerprint": fingerprint}
    finish = FinishContext(rows=rows, out=cfg.output_settings(storage), run=run,
                           results_uri=join_uri(cfg.output.rstrip("/"), "results"))
    plan = PassPlan(storage=storage, groups=scan.groups, rows=rows, finish=finish,
                    model=cfg.model_settings(storage))
    tally.progress = Progress(n, cfg.progress_interval, before=todo.done)
    tally.after_add = RunCompactor(ledger).after_batch
    tally.progress.start_ticker()
    started_ray = start_ray(cfg)
    try:
        process(cfg, plan, ledger, todo, tally, preview_p=min(1.0, 2.0 * cfg.preview_count / max(1, n)))
    except Exception as e:
        timed_out = pool_timeout(e, cfg.wait_for_actors)  # the pool never started: one line, not a traceback
        if timed_out is None:
            raise
        raise timed_out from None
    finally:
        tally.progress.close()
        log.info(tally.progress.line())
        if started_ray:
            ray.shutdown()


def write_outputs(cfg: JobConfig, storage, summary: dict, previews: list, success: bool) -> None:
    """_SUMMARY.json, _REPORT.html and the _SUCCESS marker (removed when the run is not a success)."""
    root = cfg.output.rstrip("/")
    write_bytes(join_uri(root, "_SUMMARY.json"), summary_json(summary), storage)
    kept = keep_previews(root, previews, cfg, storage)
    cards = card_details(root, storage, Ledger(root, storage), {name for name, _, _ in kept})
    write_bytes(join_uri(root, "_REPORT.html"), report_html(summary, kept, cards), storage)
    marker = join_uri(root, "_SUCCESS")
    fs, mp = filesystem(marker, storage)
    if success:
        write_bytes(marker, b"", storage)
    elif fs.exists(mp):
        fs.rm(mp)
    for warning in summary["warnings"]:
        log.warning(warning)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(summary["counts_by_status"].items()))
    left = summary["unique_ids"] - sum(summary["counts_by_status"].values())
    log.info("done: %s; %d region(s) inpainted this run; error rate %.4f (limit %s); %s", counts,
             summary["this_run"]["regions"], summary["error_rate"], cfg.max_error_rate,
             "complete" if summary["complete"] else f"{left} id(s) not yet done")
    print(f"results: {join_uri(root, 'results')}  summary: {join_uri(root, '_SUMMARY.json')}  "
          f"report: {join_uri(root, '_REPORT.html')}  success: {success}", file=sys.stderr)


def keep_previews(root: str, previews: list, cfg: JobConfig, storage) -> list:
    """Store this run's preview thumbnails under `_previews/` and return the report's sample: a rerun that had
    little or nothing left to do still shows the rows of earlier runs."""
    folder = join_uri(root, "_previews")
    for rid, status, jpeg in previews:
        write_bytes(join_uri(folder, f"{output_name(rid)[0]}.{status}.jpg"), jpeg, storage)
    fs, path = filesystem(folder, storage)
    try:
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".jpg"))
    except FileNotFoundError:
        return []
    out = []
    for name in names[: cfg.preview_count]:
        stem, status, _ = name.rsplit(".", 2)
        out.append((stem, status, fs.cat_file(f"{path}/{name}")))
    return out


def _exit_code(cfg: JobConfig, outcome: Outcome) -> int:
    if outcome.success:
        return 0
    if outcome.within_rates and cfg.limit is not None:
        return 0  # a --limit run is incomplete by request
    return 1
