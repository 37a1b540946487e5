"""The Ray Data job: read manifests -> prepare (CPU) -> model actors -> finish + write (CPU) -> results ledger.

`python -m rayinpaint.jobs.inpaint ARGS` is the same as `rayinpaint run ARGS`.

Exactly once: before work, the ledger (`{output}/results/`) is reconciled and every id already `ok`/`unchanged`
(or `error`, unless --retry-errors) is skipped. Each finish task writes one complete shard. If a model worker
dies, it is restarted and its task retried once; if Ray then gives up on the block, its rows are missing at the
end of the pass. They are retried in passes of their own (one task in flight per actor) while those make
progress, and rows still missing after `--max-crash-retries` passes without progress become error rows
(`worker_crash`). Blocks hold one model batch each up to the model stage, so a crash costs its own batch only,
and the retry passes (batches of one row) recover the other rows of that batch. Duplicate ids in the manifest
become one error row each (`duplicate_id`): which of the rows was meant cannot be known.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import ManifestError, RowError, SettingsError, redact_uri
from rayinpaint.io.manifest import check_schema, list_manifest_files
from rayinpaint.io.results import results_table
from rayinpaint.io.retry import classify
from rayinpaint.io.storage import filesystem, join_uri, protocol_of, row_error_for, write_bytes

from .config import DEFAULT_WEIGHTS, JobConfig
from .ledger import DONE_STATUSES, Ledger
from .progress import Progress
from .report import build_summary, report_html, summary_json
from .stages import UNWRITTEN

log = logging.getLogger("rayinpaint.job")


class WeightsUnavailable(SettingsError):
    pass


class OutputUnwritable(Exception):
    """The output cannot be written (permission denied, disk full, bucket policy). The job stops; rows whose
    results were not written are not recorded, so rerunning the same command once the output is fixed resumes.
    The command line reports it in one line with exit code 3."""


class StorageUnavailable(Exception):
    """Reading the manifest kept failing with transient storage errors (throttling, 5xx, timeouts, resets) after
    the storage client's retries. Nothing was started or recorded; rerunning the same command later resumes.
    The command line reports it in one line with exit code 4."""


@contextmanager
def manifest_storage_errors(uri: str, action: str):
    """Storage failures while scanning the manifest become one clear line: StorageUnavailable when they may
    pass (transient, after the client's retries), a ManifestError when they will not (not found, access
    denied, another storage refusal). Anything that is not a storage error keeps its traceback."""
    try:
        yield
    except (ManifestError, SettingsError):
        raise
    except Exception as e:  # noqa: BLE001 - sorted below
        verdict = classify(e)
        if verdict == "permanent" and not isinstance(e, (OSError, pa.ArrowException)):
            raise
        detail = f"{type(e).__name__}: {redact_uri(str(e).splitlines()[0] if str(e) else '')[:200]}"
        if verdict == "transient":
            raise StorageUnavailable(f"manifest {redact_uri(uri)}: {action} kept failing after the storage "
                                     f"client's retries ({detail}); nothing was started: rerun the same command "
                                     f"when the store answers again") from None
        if verdict == "permanent":  # an OSError or Arrow error that is no store's verdict (one line, not a traceback)
            raise ManifestError(f"manifest {redact_uri(uri)}: {action} failed ({detail})") from None
        hint = "; check the credentials and the bucket policy" if verdict == "access_denied" else ""
        raise ManifestError(f"manifest {row_error_for(e, uri, action, 1).message}{hint}") from None


def check_output_writable(cfg: JobConfig, storage) -> None:
    """Before any work: write and remove a probe object under --output."""
    probe = join_uri(cfg.output.rstrip("/"), f"_write_probe-{uuid.uuid4().hex}")
    try:
        write_bytes(probe, b"", storage)
    except RowError as e:
        raise OutputUnwritable(f"cannot write to --output: {e.message}") from None
    try:
        fs, p = filesystem(probe, storage)
        fs.rm(p)
    except Exception as e:  # noqa: BLE001 - a leftover probe is harmless; say so and go on
        log.warning("could not remove the write probe %s: %s", redact_uri(probe), type(e).__name__)


# ---- pre-flight (driver, before any work) ------------------------------------------------------------

def missing_id_name(path: str, row: int) -> str:
    """The id recorded for a manifest row whose id is null or empty: stable across reruns of the same file."""
    return f"<missing id> {redact_uri(path)}#{row}"


def scan_manifest(cfg: JobConfig, storage) -> tuple[list[list[str]], pa.Array, dict, list[str]]:
    """List manifest files, check every schema, read the id column only.

    Returns (groups of files, unique ids, {duplicated id: count}, [names of rows with a null or empty id]).
    Files in a group share one filesystem and one schema; groups are read separately (a reader unifying the
    schemas of several files would cast one file's URI strings to another's inline bytes). The unique
    ids include those names (see `missing_id_name`): such a row is accounted for by one error row, never
    processed. The driver holds the id column, never the rows.
    """
    with manifest_storage_errors(", ".join(cfg.manifest), "finding the files"):
        files = list_manifest_files(list(cfg.manifest), storage)
    colmap = cfg.column_map()
    id_col = colmap.user("id")

    def one(path):
        with manifest_storage_errors(path, "reading"):
            return read_ids(path)

    def read_ids(path):
        fs, p = filesystem(path, storage)
        with fs.open(p, "rb") as f:
            try:
                pf = pq.ParquetFile(f)
            except (pa.ArrowException, OSError) as e:
                if classify(e) != "permanent":  # storage trouble after the client's retries, not a bad file
                    raise
                raise ManifestError(f"{redact_uri(path)}: not a readable Parquet file ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]})") from None
            try:
                check_schema(pf.schema_arrow, colmap)
            except ManifestError as e:
                raise ManifestError(f"{redact_uri(path)}: {e}") from None
            col = pf.read(columns=[id_col]).column(0)
            key = (protocol_of(path), pf.schema_arrow.to_string(show_schema_metadata=False))
        col = pc.cast(col, pa.string()) if col.type != pa.string() else col
        absent = pc.or_(pc.is_null(col), pc.equal(pc.fill_null(col, ""), ""))
        rows = pc.indices_nonzero(absent).to_pylist() if pc.any(absent).as_py() else []
        kept = pc.drop_null(col.filter(pc.invert(absent))) if rows else col
        return kept, [missing_id_name(path, r) for r in rows], key

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, files))
    groups: dict = {}
    for path, (_, _, key) in zip(files, results):
        groups.setdefault(key, []).append(path)
    missing = [name for _, names, _ in results for name in names]
    chunks = [c for col, _, _ in results for c in col.chunks]
    if missing:
        chunks.append(pa.array(missing, pa.string()))
    ids = pa.chunked_array(chunks, type=pa.string())
    counts = pc.value_counts(ids)
    vals, ns = counts.field("values"), counts.field("counts")
    dup_mask = pc.greater(ns, 1)
    dups = dict(zip(pc.filter(vals, dup_mask).to_pylist(), pc.filter(ns, dup_mask).to_pylist()))
    return list(groups.values()), vals, dups, missing


def check_weights(cfg: JobConfig) -> None:
    """Before any work: the weights exist, and a .safetensors file's header (read alone, a few hundred KB
    even for the 5 GB file) matches the model exactly. A bad file is one clear line here, not an actor crash."""
    w = cfg.weights
    if w.startswith("random:"):
        return
    hint = ("pass --weights with a local path or an object-store URI of 512-inpainting-ema.safetensors "
            "(e.g. s3://my-bucket/weights/512-inpainting-ema.safetensors), or --weights random:tiny for a dry run")
    try:
        fs, p = filesystem(w, cfg.storage())
        ok = fs.exists(p)
    except Exception as e:  # noqa: BLE001 - any failure to reach the weights is reported the same way
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightsUnavailable(f"cannot fetch the model weights {w}: {type(e).__name__}: {first}; {hint}") from None
    if not ok:
        what = "the default weights" if w == DEFAULT_WEIGHTS else "the weights"
        raise WeightsUnavailable(f"{what} {w} were not found; {hint}")
    if not w.endswith(".safetensors") or fs.isdir(p):
        return
    import json
    import struct

    from rayinpaint.model.config import get_config
    from rayinpaint.model.weights import WeightsError, check_safetensors_header

    try:
        with fs.open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n} is not plausible")
            header = json.loads(f.read(n))
        check_safetensors_header(header, get_config(cfg.model_config), w)
    except WeightsError as e:
        raise WeightsUnavailable(f"{e} (is --model-config {cfg.model_config} right?)") from None
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise WeightsUnavailable(f"{w} is not a readable .safetensors file: {e}") from None


# ---- Ray ------------------------------------------------------------------------------------------

def init_ray(cfg: JobConfig):
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    return True


def actor_plan(cfg: JobConfig, on_cluster: bool) -> tuple[int, float, float]:
    """(number of actors, GPUs per actor, CPUs per actor).

    GPUs present: one actor per `--num-gpus-per-actor` GPUs (or `--num-actors`). No GPU present yet but an
    explicit `--num-actors` on a cluster: GPU actors anyway, so an autoscaling cluster that starts from zero
    GPU workers scales up for them. Otherwise (a laptop, CI, `--num-gpus-per-actor 0`): CPU actors.
    """
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    per = cfg.num_gpus_per_actor
    if per > 0 and gpus > 0:
        return cfg.num_actors or max(1, int(gpus // per)), per, 1.0
    if per > 0 and on_cluster and cfg.num_actors:
        log.info("no GPU in the cluster yet; requesting %d GPU actor(s) from the autoscaler", cfg.num_actors)
        return cfg.num_actors, per, 1.0
    if per > 0:
        log.info("no GPU found: running %d model actor(s) on CPU", cfg.num_actors or 1)
    return cfg.num_actors or 1, 0.0, 1.0


def read_manifest(cfg: JobConfig, groups: list[list[str]], storage, *, exclude, include):
    """One dataset of canonical rows (this pass's rows only) over every group of manifest files."""
    import ray

    from .stages import select_rows

    parts = []
    for files in groups:
        fs, _ = filesystem(files[0], storage)
        paths = [filesystem(f, storage)[1] for f in files]
        ds = ray.data.read_parquet(paths, filesystem=_arrow_fs(fs), include_paths=True)
        parts.append(ds.map_batches(select_rows, batch_format="pyarrow", zero_copy_batch=True,
                                    fn_kwargs={"colmap": cfg.column_map(), "exclude": exclude, "include": include,
                                               "protocol": protocol_of(files[0])}))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def run_pass(cfg: JobConfig, groups, *, exclude, include, limit, preview_p, progress, sink) -> None:
    """One streaming pass over the manifest; results go to the ledger, small rows to `sink`."""
    import ray

    from .predictor import InpaintPredictor
    from .stages import finish_and_write, prepare_batch

    storage = cfg.storage()
    ds = read_manifest(cfg, groups, storage, exclude=exclude, include=include)
    if limit is not None:
        ds = ds.limit(limit)
    # Blocks of one model batch each (a streaming split, no shuffle): the block is Ray Data's unit of work, so
    # this lets every CPU prepare in parallel and every model actor get work even from one large manifest file.
    batch = cfg.batch_size if include is None else 1
    ds = ds.repartition(target_num_rows_per_block=batch)
    settings = cfg.prepare_settings()
    ds = ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=batch,
                        fn_kwargs={"settings": settings}, num_cpus=1)
    n_actors, gpus, cpus = actor_plan(cfg, on_cluster=bool(cfg.address or os.environ.get("RAY_ADDRESS")))
    with warnings.catch_warnings():
        # Ray 2.60 takes these only through **ray_remote_args (deprecated, no named parameter yet). A dead
        # actor is always restarted (a poison row must not take the pool down for every later row), but a
        # task is retried once only: Ray Data's default retries forever, so a row that crashes its worker
        # every time would never finish. run_job's crash passes then retry such rows alone and finally turn
        # them into error rows.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(
            InpaintPredictor,
            batch_format="pyarrow",
            batch_size=batch,
            # Retry passes (include is set) queue one task per actor, so a crash takes down only its own row.
            compute=ray.data.ActorPoolStrategy(size=n_actors,
                                               max_tasks_in_flight_per_actor=1 if include is not None else None),
            num_gpus=gpus,
            num_cpus=cpus,
            max_restarts=-1,
            max_task_retries=1,
            fn_constructor_kwargs=dict(weights=cfg.weights, dtype=cfg.dtype, sampler=cfg.sampler, steps=cfg.steps,
                                       guidance=cfg.guidance, strength=cfg.strength, eta=cfg.eta, karras=cfg.karras,
                                       resolution=cfg.resolution, pad_to=cfg.batch_size,
                                       cache_dir=cfg.weights_cache,
                                       weights_sha256=cfg.weights_sha256,
                                       storage_options=storage.fsspec_kwargs(protocol_of(cfg.weights)),
                                       model_config=cfg.model_config, speed=cfg.speed),
        )
    run = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "strength": cfg.strength}
    ds = ds.map_batches(finish_and_write, batch_format="pyarrow", batch_size=max(8, cfg.batch_size), num_cpus=1,
                        fn_kwargs={"settings": settings, "out": cfg.output_settings(), "run": run,
                                   "preview_probability": preview_p,
                                   "results_uri": join_uri(cfg.output.rstrip("/"), "results")})
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        sink(b)
        progress.update(b.column("status").to_pylist())


def keep_previews(root: str, previews: list, cfg: JobConfig, storage) -> list:
    """Store this run's preview thumbnails under `_previews/` and return the report's sample: a rerun that had
    little or nothing left to do still shows the rows of earlier runs."""
    from rayinpaint.io.results import output_name

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


def _guarded(run, *args, progress, **kwargs) -> None:
    """Run a pass; a Ray failure after some rows came out (a worker lost at an unlucky moment) ends the pass
    but not the job: the rows it did not write are found missing and retried. A failure before any row came
    out (the model cannot load, the cluster cannot place the pool) is raised."""
    import ray

    done = progress.done
    try:
        run(*args, progress=progress, **kwargs)
    except ray.exceptions.RayError as e:
        if progress.done == done:
            # The model actors could not start: the weights' own error is the one line the user needs.
            found = re.search(r"WeightsError: ([^\n]+)", str(e))
            if found:
                raise WeightsUnavailable(f"the model could not be loaded: {found.group(1)}") from None
            raise
        log.warning("pass ended early (%s: %s); rows it did not write are retried",
                    type(e).__name__, str(e).splitlines()[0][:200])


def _arrow_fs(fs):
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if getattr(fs, "protocol", None) in ("file", ("file", "local")) or type(fs).__name__ == "LocalFileSystem":
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))


# ---- the job ---------------------------------------------------------------------------------------

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
    started = time.time()
    t0 = time.perf_counter()
    storage = cfg.storage()
    cfg.prepare_settings().validate()
    check_weights(cfg)
    check_output_writable(cfg, storage)
    groups, ids, dups, no_id = scan_manifest(cfg, storage)
    log.info("manifest: %d file(s), %d unique id(s), %d duplicated id(s), %d row(s) without an id",
             sum(len(g) for g in groups), len(ids), len(dups), len(no_id))
    ledger = Ledger(cfg.output, storage)

    # Rows settled by the manifest alone: duplicated ids and rows without an id. One error row each, written
    # once; never processed, never retried (no run can change them).
    fixed_rows = [{"id": i, "status": "error", "error_kind": "duplicate_id",
                   "error": f"id appears {n} times in the manifest; ids must be unique, so none of these rows "
                            f"was processed"} for i, n in sorted(dups.items())]
    fixed_rows += [{"id": name, "status": "error", "error_kind": "missing_id",
                    "error": "the row's id is null or empty; every row needs a unique id, so it was not processed"}
                   for name in no_id]
    fixed_ids = pa.array([r["id"] for r in fixed_rows], pa.string())

    # Reconcile first: repair duplicates from earlier crashes; drop error rows we are about to retry.
    idx = ledger.index()
    retry = None
    if cfg.retry_errors:
        err_ids = idx.ids_with_status(["error"])
        retry = pc.filter(err_ids, pc.invert(pc.is_in(err_ids, value_set=fixed_ids))) if len(fixed_ids) else err_ids
    idx = ledger.reconcile(drop_error_ids=retry, index=idx)
    done_statuses = DONE_STATUSES if cfg.retry_errors else DONE_STATUSES + ("error",)
    done = idx.ids_with_status(done_statuses)
    exclude = pa.concat_arrays([done.cast(pa.string()), fixed_ids]) if len(fixed_ids) else done.cast(pa.string())
    todo_ids = pc.filter(ids, pc.invert(pc.is_in(ids, value_set=exclude)))
    todo = len(todo_ids)
    if cfg.limit is not None:
        todo = min(todo, cfg.limit)
    log.info("ledger: %d row(s) already done; %d to process now", len(done), todo)

    already = set(idx.ids.to_pylist()) if fixed_rows else set()
    new_fixed = [r for r in fixed_rows if r["id"] not in already]
    if new_fixed:
        ledger.write_rows(results_table(new_fixed))

    this_run = {"processed": 0, "by_status": {}, "rows_by_actor": {}}
    previews: list = []
    examples: dict = {}
    sha = {"v": None}

    unwritten: dict = {"rows": 0, "message": None}

    def sink(b: pa.Table):
        for r in b.to_pylist():
            if r["status"] == UNWRITTEN:  # processed but not recorded: the output cannot be written
                unwritten["rows"] += 1
                unwritten["message"] = unwritten["message"] or r["error"]
                continue
            this_run["processed"] += 1
            this_run["by_status"][r["status"]] = this_run["by_status"].get(r["status"], 0) + 1
            if r.get("actor"):
                this_run["rows_by_actor"][r["actor"]] = this_run["rows_by_actor"].get(r["actor"], 0) + 1
            if r["model_sha256"] and not sha["v"]:
                sha["v"] = r["model_sha256"]
            if r["status"] == "error":
                ex = examples.setdefault(r["error_kind"] or "unknown", {"ids": [], "message": r["error"]})
                if len(ex["ids"]) < 5:
                    ex["ids"].append(r["id"])
            if r["preview_jpeg"] and len(previews) < cfg.preview_count:
                previews.append((r["id"], r["status"], r["preview_jpeg"]))
        if unwritten["rows"]:
            raise OutputUnwritable(f"stopped: {unwritten['message']}; {unwritten['rows']} row(s) of the last batch "
                                   f"were not recorded and are redone when the same command is rerun")

    started_ray = False
    if todo:
        started_ray = init_ray(cfg)
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.max_errored_blocks = -1  # a dead worker's rows are retried below, not fatal to the job
        ctx.enable_progress_bars = False
        # Start streaming once every model actor holds its model, so the whole pool shares the work from the
        # first batch (a bounded wait: a pool that cannot be placed fails with Ray's "Timed out" message).
        ctx.wait_for_min_actors_s = 1800
        preview_p = min(1.0, 2.0 * cfg.preview_count / max(1, todo))
        progress = Progress(todo, cfg.progress_interval)
        try:
            _guarded(run_pass, cfg, groups, exclude=exclude, include=None, limit=cfg.limit, preview_p=preview_p,
                     progress=progress, sink=sink)
            # Rows missing after the pass: their block failed (worker crash). Retry them alone, one task in
            # flight per actor, while passes make progress; after --max-crash-retries passes without progress
            # the rows left become error rows. Under --limit the rows a pass took are not known in advance,
            # so lost rows simply wait for the next run.
            stalled = 0  # retry passes that recovered nothing
            before = None
            while cfg.limit is None:
                seen = ledger.index().ids
                missing = pc.filter(todo_ids, pc.invert(pc.is_in(todo_ids, value_set=seen)))
                if not len(missing):
                    break
                if before is not None and len(missing) >= before:
                    stalled += 1
                before = len(missing)
                if stalled >= cfg.max_crash_retries:
                    rows = [{"id": i, "status": "error", "error_kind": "worker_crash",
                             "error": "the model worker died each time it processed this row; "
                                      "see the Ray worker logs"} for i in missing.to_pylist()]
                    ledger.write_rows(results_table(rows))
                    sink(pa.Table.from_pylist([{**r, "model_sha256": None, "actor": None, "preview_jpeg": None}
                                               for r in rows]))
                    break
                log.warning("%d row(s) lost to a failed worker; retrying them one at a time", len(missing))
                _guarded(run_pass, cfg, groups, exclude=None, include=missing, limit=None, preview_p=0.0,
                         progress=progress, sink=sink)
        finally:
            log.info(progress.line())
            if started_ray:
                ray.shutdown()

    # Final accounting from the ledger itself.
    idx = ledger.reconcile()
    by_status, by_kind = idx.counts()
    in_manifest = pc.is_in(idx.table.column("id"), value_set=ids)
    accounted = pc.sum(pc.cast(in_manifest, pa.int64())).as_py() or 0
    complete = accounted == len(ids)
    errors = by_status.get("error", 0)
    error_rate = errors / max(1, sum(by_status.values()))
    within = error_rate <= cfg.max_error_rate
    success = within and complete
    for k in by_kind:
        examples.setdefault(k, {"ids": [], "message": None})
    if not examples.get("duplicate_id", {}).get("ids") and dups:
        examples["duplicate_id"] = {"ids": sorted(dups)[:5], "message": "id appears more than once in the manifest"}
    elapsed = time.perf_counter() - t0
    written = this_run["by_status"].get("ok", 0) + this_run["by_status"].get("unchanged", 0)
    model_sha = sha["v"] or ledger.first_value("model_sha256")  # a run with nothing left loaded no model
    summary = build_summary(cfg=cfg, by_status=by_status, by_kind=by_kind, total_ids=len(ids), this_run=this_run,
                            elapsed=elapsed, images_written=written, model_sha256=model_sha, duplicates=dups,
                            complete=complete, error_rate=error_rate, success=success, examples=examples,
                            started=started, prompts_truncated=idx.prompts_truncated())
    root = cfg.output.rstrip("/")
    write_bytes(join_uri(root, "_SUMMARY.json"), summary_json(summary), storage)
    write_bytes(join_uri(root, "_REPORT.html"), report_html(summary, keep_previews(root, previews, cfg, storage)),
                storage)
    marker = join_uri(root, "_SUCCESS")
    fs, mp = filesystem(marker, storage)
    if success:
        write_bytes(marker, b"", storage)
    elif fs.exists(mp):
        fs.rm(mp)
    log.info("done: %s; error rate %.4f (limit %s); %s", ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())),
             error_rate, cfg.max_error_rate, "complete" if complete else f"{len(ids) - accounted} id(s) not yet done")
    print(f"results: {join_uri(root, 'results')}  summary: {join_uri(root, '_SUMMARY.json')}  "
          f"report: {join_uri(root, '_REPORT.html')}  success: {success}", file=sys.stderr)
    if success:
        return 0
    if within and cfg.limit is not None:
        return 0  # a --limit run is incomplete by request
    return 1


def main(argv=None) -> int:
    from .cli import main as cli_main

    return cli_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
