"""The job, as a short list of named steps: pre-flight, the bookkeeping's start (repair the results, find the
ids left), process what is left (Ray), account for every id, write the summary, the report and `_SUCCESS`.

Exactly once: before work, the results (`{output}/results/`, ledger/files.py) are repaired and every id already
`ok`/`unchanged` (or `error`, unless --retry-errors) is skipped (ledger/plan.py); each finish task writes one
complete results file; rows lost to a dead worker are retried (jobs/pipeline.py). Small files are merged into
large ones at the start, during and at the end of a run (ledger/compaction.py). The results are read once per run:
the end-of-run accounting is the start's counts plus the rows the driver received. Duplicate ids in the manifest
become one error row each (`duplicate_id`): which of the rows was meant cannot be known.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

import pyarrow as pa

from rayinpaint.io.errors import RowError
from rayinpaint.io.naming import output_name
from rayinpaint.io.storage import filesystem, join_uri, write_bytes

from rayinpaint.ledger.compaction import RunCompactor, compact
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.fingerprint import settle_settings
from rayinpaint.ledger.index import local_index
from rayinpaint.ledger.layout import Layout
from rayinpaint.ledger.overview import describe_output
from rayinpaint.ledger.plan import Plan, read_manifest, remember, start, totals

from .cards import card_details
from .config import LOG_FORMAT, JobConfig, validate
from .dryrun import dry_run
from .logsafe import REDACT
from .placement import pool_timeout
from .preflight import (OutputUnwritable, check_detector, check_manifest_reachable, check_output_writable,
                        check_weights)
from .progress import Progress
from .report import build_summary, report_html, summary_json
from .tally import Outcome, RunTally, outcome_of

log = logging.getLogger("rayinpaint.job")


def run_job(cfg: JobConfig, model_actor: tuple | None = None) -> int:
    """Run the job; returns the process exit code (0 = success within --max-error-rate). `model_actor`: the
    model actor class and its arguments after the model settings (jobs/pipeline.py PassPlan.actor); None, the
    product's InpaintPredictor.

    Raises SettingsError/ManifestError (bad settings, manifest or weights: nothing started),
    StorageUnavailable (the manifest could not be read for transient storage errors: nothing started) and
    OutputUnwritable (the output cannot be written: the job stopped; a rerun resumes)."""
    try:
        return _run_job(cfg, model_actor)
    except RowError as e:  # only the driver's own storage calls (ledger, summary, report) get here
        raise OutputUnwritable(f"the output cannot be read or written: {e.message}") from None


def _run_job(cfg: JobConfig, model_actor: tuple | None = None) -> int:
    started, t0 = time.time(), time.perf_counter()
    validate(cfg)  # ranges before anything reads the output: `steps=0` is a bad setting, not a settings change
    default_logging()
    storage = cfg.storage()
    cfg.prepare_settings(storage).validate()
    check_weights(cfg, storage)
    check_detector(cfg, storage)
    check_output_writable(cfg.output, storage)
    check_manifest_reachable(cfg.manifest, storage)
    ledger = Ledger(cfg.output, storage)
    with local_index() as index:  # the ids' bookkeeping, in a database on local disk (ledger/index.py)
        reading = read_manifest(ledger, cfg.manifest, cfg.column_map(), storage, index, cfg.retry_errors)
        if cfg.dry_run:
            return dry_run(cfg, storage, start_plan(cfg, storage, ledger, index, reading, write=False))
        fingerprint = settle_settings(cfg, storage, ledger)
        plan = start_plan(cfg, storage, ledger, index, reading)
        tally = RunTally(cfg.preview_count, recorded=index)
        if plan.todo:
            process_rows(cfg, storage, ledger, plan, tally, fingerprint, model_actor=model_actor)
        compact(ledger, file_rows=plan.file_rows)
        counts, accounted = totals(plan)
        outcome = outcome_of(plan, counts, accounted, cfg.max_error_rate, cfg.max_unchanged_rate)
        remember(ledger, plan, counts, accounted, storage)
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


def default_logging() -> None:
    """A script that calls run_job sees the job's lines (progress, warnings, the final line) as the command line
    shows them: when logging is not configured at all (no handler on the root or the `rayinpaint` logger), INFO
    lines go to stderr. Configuring logging, or setting the `rayinpaint` logger's level, chooses otherwise."""
    pkg = logging.getLogger("rayinpaint")
    if logging.getLogger().handlers or pkg.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(REDACT)
    pkg.addHandler(handler)
    if pkg.level == logging.NOTSET:
        pkg.setLevel(logging.INFO)


def release_memory() -> None:
    """Hand the memory Arrow's allocator keeps after a step over millions of ids back to the system, so the
    driver's resident size follows what it holds (the allocator would otherwise keep the step's peak)."""
    pa.default_memory_pool().release_unused()


def start_plan(cfg: JobConfig, storage, ledger: Ledger, index, reading, write: bool = True) -> Plan:
    """The bookkeeping's start (ledger/plan.py), logged."""
    plan = start(ledger, reading, storage, index, retry_errors=cfg.retry_errors, write=write)
    log.info("manifest: %d file(s) (%d read), %d unique id(s), %d duplicated id(s), %d row(s) without an id",
             len(plan.scan.files), len(plan.scan.files) - len(plan.old), plan.unique, len(plan.duplicates),
             len(plan.missing))
    return plan


def process_rows(cfg: JobConfig, storage, ledger: Ledger, plan: Plan, tally: RunTally,
                 fingerprint: str | None = None, model_actor: tuple | None = None) -> None:
    """Start Ray (unless already connected), stream the rows to do through the pipeline, stop Ray."""
    import ray

    from .events import poller, remote_events
    from .pipeline import PassPlan, process, start_ray
    from .stages import FinishContext

    n = plan.todo if cfg.limit is None else min(plan.todo, cfg.limit)
    rows = cfg.prepare_settings(storage)
    run = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "strength": cfg.strength,
           "settings_fingerprint": fingerprint}
    tally.progress = Progress(n, cfg.progress_interval, before=plan.done)
    tally.after_add = RunCompactor(ledger).after_batch
    started_ray = start_ray(cfg)
    events = remote_events()  # what the workers report: each actor's state, the rows written (jobs/events.py)
    finish = FinishContext(rows=rows, out=cfg.output_settings(storage), run=run, results_uri=ledger.uri,
                           events=events)
    passes = PassPlan(storage=storage, groups=plan.groups_to_read(), rows=rows, finish=finish,
                      model=dataclasses.replace(cfg.model_settings(storage), events=events), actor=model_actor,
                      detect=cfg.detect_settings(storage))
    tally.progress.start_ticker(poller(events, timeout=max(1.0, cfg.progress_interval / 4)))
    try:
        process(cfg, passes, ledger, plan, tally, preview_p=min(1.0, 2.0 * cfg.preview_count / max(1, n)))
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
        else:  # a cluster this run joined: the events actor goes with the run
            ray.kill(events)


def write_outputs(cfg: JobConfig, storage, summary: dict, previews: list, success: bool) -> None:
    """_SUMMARY.json, _REPORT.html and the _SUCCESS marker (removed when the run is not a success)."""
    out = Layout(cfg.output)
    root = out.root
    write_bytes(out.summary, summary_json(summary), storage)
    kept = keep_previews(root, previews, cfg, storage)
    cards = card_details(root, storage, Ledger(root, storage), {name for name, _, _ in kept})
    write_bytes(out.report, report_html(summary, kept, cards), storage)
    marker = out.success
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
    print(f"results: {out.results}  summary: {out.summary}  report: {out.report}  success: {success}",
          file=sys.stderr)


def keep_previews(root: str, previews: list, cfg: JobConfig, storage) -> list:
    """Store this run's preview thumbnails under `_previews/` and return the report's sample: a rerun that had
    little or nothing left to do still shows the rows of earlier runs."""
    folder = Layout(root).previews
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
