"""Everything that touches Ray: start it, size the model pool, build the streaming pipeline, run passes.

One pass is read -> select -> prepare (CPU) -> model actors -> finish + write (CPU); the driver receives a
small table per finish task (`stages.DRIVER_SCHEMA`) and hands it to a sink.

Crash retries. A dead model worker is restarted and its task retried once; if Ray then gives up on the block,
that block's rows are simply missing at the end of the pass (`max_errored_blocks = -1`). `process` retries the
missing rows in passes of their own, batches of one row with one task in flight per actor (so a crash takes down
only its own row), while those passes make progress; rows still missing after `--max-crash-retries` passes
without progress become `worker_crash` error rows. Blocks hold a whole number of model batches, at least 8 rows
(jobs/sizing.py), so a crash costs its own block only.

CPU sizing. prepare and finish each have a cap on tasks in flight, splitting the CPUs the model actors leave
(sizing.stage_sizes), so neither can starve the other or the actors.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import re
import warnings
from dataclasses import dataclass

import pyarrow as pa

from rayinpaint.io.results import ERROR, results_table
from rayinpaint.io.storage import filesystem, protocol_of

from .config import JobConfig
from .estimate import cpu_batch_line
from .idset import IdSet, PartedIdSet
from .placement import check_pool
from .raylogs import name_ray_logs, quiet_ray_console
from .preflight import WeightsUnavailable

log = logging.getLogger("rayinpaint.job")

# The actor pools' (model and detector actors) fault tolerance. Ray 2.60 takes these only through **ray_remote_args
# (deprecated, no named parameter yet: the callers silence the warning). A dead actor is always restarted (a poison
# row must not take the pool down for every later row), but a task is retried once only: Ray Data's default retries
# forever, so a row that crashes its worker every time would never finish (see the module docstring).
ACTOR_RETRIES = {"max_restarts": -1, "max_task_retries": 1}


@dataclass(frozen=True)
class PassPlan:
    """What one pass needs besides the config, built once per run on the driver."""
    storage: object          # io.storage.StorageOptions
    groups: list             # manifest file groups to read (ledger/plan.py Plan.groups_to_read)
    rows: object             # io.settings.PrepareSettings: prepare and finish
    finish: object           # stages.FinishContext
    model: object            # predictor.ModelSettings
    detect: object = None    # detect.DetectSettings of --mask-from (prepare runs as detector actors), or None
    # The model actor: (callable class, constructor arguments after `model`), built as cls(model, *args) in
    # each actor. None: predictor.InpaintPredictor. Callers pass another one for tests and benchmarks
    # (bench/standin.py sleeps instead of running a model); nothing in the config selects it.
    actor: tuple | None = None


def start_ray(cfg: JobConfig) -> bool:
    """Connect to --address / $RAY_ADDRESS or start a local Ray, unless the caller already did; True when this
    call started it. Either way Ray Data's context is set for the job (`configure_data`)."""
    import ray
    import ray.data  # noqa: F401 - before quiet_ray_console: importing Ray Data sets up its own console logging

    started = not ray.is_initialized()
    if started:
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        # Workers' output stays in Ray's session logs (named below) unless -v: the console is the job's.
        kwargs = {"logging_level": logging.WARNING, "log_to_driver": cfg.verbose}
        if not cfg.verbose:
            quiet_ray_console()  # before init too: Ray logs while connecting
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(include_dashboard=False, **kwargs)
        if not cfg.verbose:
            quiet_ray_console()
        name_ray_logs()
    configure_data(cfg)
    return started


def configure_data(cfg: JobConfig) -> None:
    """The driver's Ray Data context as the job needs it, also under a Ray the caller started (the Python API)."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.max_errored_blocks = -1  # a dead worker's rows are retried by `process`, not fatal to the job
    ctx.enable_progress_bars = False
    # Start streaming once every model actor holds its model, so the whole pool shares the work from the first
    # batch; bounded by --wait-for-actors (a pool that can never be placed is refused earlier: jobs/placement.py).
    ctx.wait_for_min_actors_s = int(cfg.wait_for_actors)


def actor_plan(cfg: JobConfig, on_cluster: bool, gpus: float | None = None) -> tuple[int, float, float]:
    """(number of actors, GPUs per actor, CPUs per actor).

    GPUs present: one actor per `--num-gpus-per-actor` GPUs (or `--num-actors`). No GPU present yet but an
    explicit `--num-actors` on a cluster: GPU actors anyway, so an autoscaling cluster that starts from zero
    GPU workers scales up for them. Otherwise (a laptop, CI, `--num-gpus-per-actor 0`): CPU actors.
    `gpus`: the cluster's GPUs (None: asked of the running Ray; the dry run passes this machine's).
    """
    gpus = ray_gpus() if gpus is None else gpus
    per = cfg.num_gpus_per_actor
    if per > 0 and gpus > 0:
        return cfg.num_actors or max(1, int(gpus // per)), per, 1.0
    if per > 0 and on_cluster and cfg.num_actors:
        return cfg.num_actors, per, 1.0
    return cfg.num_actors or 1, 0.0, 1.0


def read_manifest(cfg: JobConfig, plan: PassPlan, *, exclude, include):
    """One dataset of canonical rows (this pass's rows only) over every group of manifest files."""
    import ray

    from .stages import select_rows

    parts = []
    for files in plan.groups:
        fs, _ = filesystem(files[0], plan.storage)
        paths = [filesystem(f, plan.storage)[1] for f in files]
        ds = ray.data.read_parquet(paths, filesystem=_arrow_fs(fs), include_paths=True)
        parts.append(ds.map_batches(select_rows, batch_format="pyarrow", zero_copy_batch=True,
                                    fn_kwargs={"colmap": cfg.column_map(), "exclude": exclude, "include": include,
                                               "protocol": protocol_of(files[0])}))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _arrow_fs(fs):
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if getattr(fs, "protocol", None) in ("file", ("file", "local")) or type(fs).__name__ == "LocalFileSystem":
        return LocalFileSystem()
    return PyFileSystem(FSSpecHandler(fs))


def model_pool(cfg: JobConfig) -> tuple[int, float, float]:
    """actor_plan, refused in one line (placement.check_pool) when the cluster can never place it."""
    on_cluster, gpus = bool(cfg.address or os.environ.get("RAY_ADDRESS")), ray_gpus()
    pool = actor_plan(cfg, on_cluster=on_cluster, gpus=gpus)
    if pool[1] > 0 and on_cluster and not gpus:
        log.info("no GPU in the cluster yet; requesting %d GPU actor(s) from the autoscaler", pool[0])
    elif cfg.num_gpus_per_actor > 0 and pool[1] == 0:  # GPU-sized defaults on a CPU: say what to expect
        slow = cpu_batch_line(cfg)
        if slow is None:
            log.info("no GPU found: running %d model actor(s) on CPU (the tiny model: seconds per batch)", pool[0])
        else:
            log.warning("%s (%d model actor(s))", slow, pool[0])
    check_pool(*pool, cfg.wait_for_actors)
    return pool


def ray_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def _model_stage(ds, cfg: JobConfig, plan: PassPlan, batch: int, retry_pass: bool, pool: tuple):
    import ray

    from .predictor import InpaintPredictor

    n_actors, gpus, cpus = pool
    actor_cls, actor_args = plan.actor or (InpaintPredictor, ())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ACTOR_RETRIES
        return ds.map_batches(
            actor_cls,
            batch_format="pyarrow",
            batch_size=batch,
            compute=ray.data.ActorPoolStrategy(size=n_actors,
                                               max_tasks_in_flight_per_actor=1 if retry_pass else None),
            num_gpus=gpus,
            num_cpus=cpus,
            **ACTOR_RETRIES,
            fn_constructor_args=(plan.model, *actor_args),
        )


def _prepare_stage(ds, plan: PassPlan, block: int, cpus: float, tasks, actors: tuple[int, float]):
    """prepare as tasks of `cpus` CPUs (`tasks`: their TaskPoolStrategy), or, when the job detects masks, as actors
    that each build the detector once (stages.DetectingPrepare): `actors` is (how many, CPUs each), from
    sizing.StageSizes.detector_actors."""
    import ray

    from .stages import DetectingPrepare, prepare_batch

    if plan.detect is None:
        return ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=block, num_cpus=cpus, compute=tasks,
                              fn_kwargs={"settings": plan.rows})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ACTOR_RETRIES
        return ds.map_batches(DetectingPrepare, batch_format="pyarrow", batch_size=block, num_cpus=actors[1],
                              compute=ray.data.ActorPoolStrategy(size=actors[0]), **ACTOR_RETRIES,
                              fn_constructor_args=(plan.rows, plan.detect))


def run_pass(cfg: JobConfig, plan: PassPlan, sink, *, exclude=None, include=None, retry_pass: bool = False,
             limit=None, preview_p: float = 0.0) -> None:
    """One streaming pass over the manifest: results go to the ledger (written by the finish tasks), the
    driver's small table per finish task to `sink`. Ids tested against `exclude` (skipped) or `include` (kept):
    idset.IdSet or PartedIdSet. `retry_pass`: a crash-retry pass (one row per batch and task in flight)."""
    import ray

    from .sizing import DETECT_PREPARE_WEIGHT, cpu_block_rows, stage_sizes
    from .stages import finish_and_write

    pool = model_pool(cfg)
    sizes = stage_sizes(float(ray.cluster_resources().get("CPU", 0)), pool[0], pool[2],
                        DETECT_PREPARE_WEIGHT if plan.detect is not None else 1.0)
    ds = read_manifest(cfg, plan, exclude=exclude, include=include)
    if limit is not None:
        ds = ds.limit(limit)
    # A streaming split, no shuffle: the block is Ray Data's unit of work, so this lets every CPU prepare in
    # parallel and every model actor get work even from one large manifest file (sizing.cpu_block_rows).
    block = cpu_block_rows(cfg.batch_size, retry_pass)
    ds = ds.repartition(target_num_rows_per_block=block)
    # Caps only where the free CPUs hold a task of each stage at once. With fewer (a 2-CPU Ray and one actor), and
    # in crash-retry passes, one prepare task and the finish tasks share the free CPU at half a logical CPU each:
    # there, prepare held the one free CPU and finish waited with a CPU budget of 0 (tests/reliability/test_load.py),
    # with the caps or without them.
    capped = not retry_pass and sizes.fit
    caps = (ray.data.TaskPoolStrategy(size=sizes.prepare), ray.data.TaskPoolStrategy(size=sizes.finish)) \
        if capped else (ray.data.TaskPoolStrategy(size=1), None)
    stage_cpus = 1 if capped else 0.5
    ds = _prepare_stage(ds, plan, block, stage_cpus, caps[0], sizes.detector_actors(retry_pass))
    ds = _model_stage(ds, cfg, plan, 1 if retry_pass else cfg.batch_size, retry_pass, pool)
    ds = ds.map_batches(finish_and_write, batch_format="pyarrow", batch_size=max(8, cfg.batch_size),
                        num_cpus=stage_cpus,
                        compute=caps[1],
                        fn_kwargs={"ctx": dataclasses.replace(plan.finish, preview_probability=preview_p)})
    share = f"prepare <= {sizes.prepare} and finish <= {sizes.finish} task(s) in flight" if capped \
        else "one prepare task and the finish tasks share the free CPU"
    if plan.detect is not None:  # prepare runs in detector actors (_prepare_stage)
        share = (f"prepare in {sizes.prepare} {plan.rows.mask_from} detector actor(s), finish <= {sizes.finish} "
                 f"task(s) in flight") if capped else \
            f"one {plan.rows.mask_from} detector actor for prepare and the finish tasks share the free CPU"
    log.info("stages: %d model actor(s); %s; %d row(s) per block", pool[0], share, block)
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        sink(b)


def guarded_pass(cfg: JobConfig, plan: PassPlan, sink, tally, **kwargs) -> None:
    """Run a pass; a Ray failure after some rows came out (a worker lost at an unlucky moment) ends the pass
    but not the job: the rows it did not write are found missing and retried. A failure before any row came
    out (the model cannot load, the cluster cannot place the pool) is raised."""
    import ray

    before = tally.received
    try:
        run_pass(cfg, plan, sink, **kwargs)
    except ray.exceptions.RayError as e:
        if tally.received == before:
            # The model actors could not start: the weights' own error is the one line the user needs.
            found = re.search(r"WeightsError: ([^\n]+)", str(e))
            if found:
                raise WeightsUnavailable(f"the model could not be loaded: {found.group(1)}") from None
            raise
        log.warning("pass ended early (%s: %s); rows it did not write are retried",
                    type(e).__name__, str(e).splitlines()[0][:200])


def selector(plan) -> dict:
    """What the main pass's read tasks test ids against (ledger/plan.py Plan): the smaller of `include` (the ids
    left) and `exclude` (the ids to skip), each built a part at a time and held in Ray's object store. A daily run
    always includes: it knows the new ids only."""
    import ray

    put = ray.put if ray.is_initialized() else None
    skipped = plan.index.skipped_query(plan.skipped)
    if plan.old or plan.todo <= plan.index.count(skipped):
        return {"include": PartedIdSet.build(plan.index.ids("SELECT id FROM todo"), put)}
    return {"exclude": PartedIdSet.build(plan.index.ids(skipped), put)}


def process(cfg: JobConfig, passes: PassPlan, ledger, plan, tally, preview_p: float) -> None:
    """The main pass over the ids left (ledger/plan.py Plan), then crash-retry passes until no row is missing
    (see the module docstring). Under --limit the rows a pass took are not known in advance, so lost rows simply
    wait for the next run."""
    guarded_pass(cfg, passes, tally.add, tally, **selector(plan), limit=cfg.limit, preview_p=preview_p)
    stalled, before = 0, None  # retry passes that recovered nothing; rows missing after the last pass
    while cfg.limit is None:
        missing = plan.index.lost()  # from what this run received: the results are not read again
        if not len(missing):
            return
        if before is not None and len(missing) >= before:
            stalled += 1
        before = len(missing)
        if stalled >= cfg.max_crash_retries:
            _record_worker_crashes(ledger, missing, tally)
            return
        log.warning("%d row(s) lost to a failed worker; retrying them one at a time", len(missing))
        # The last pass's model actors die only once nothing references them, and Ray Data's executor holds them
        # in reference cycles: collect now, or they keep their CPUs or GPUs until Python's collector happens to
        # run, and the retry pass waits for them (27 s measured in tests/job/test_end_to_end.py's crash test).
        gc.collect()
        guarded_pass(cfg, passes, tally.add, tally, include=IdSet(missing), retry_pass=True)


def _record_worker_crashes(ledger, missing: pa.Array, tally) -> None:
    rows = results_table([{"id": i, "status": ERROR, "error_kind": "worker_crash",
                           "error": "the model worker died each time it processed this row; see the Ray worker logs"}
                          for i in missing.to_pylist()])
    ledger.write_rows(rows)
    tally.add(rows)
