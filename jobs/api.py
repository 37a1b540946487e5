"""The Python API.

- `run_job(JobConfig(...))` (jobs/inpaint.py): the whole job, exactly as `rayinpaint run` runs it (pre-flight,
  resume, summary, report, `_SUCCESS`); returns the exit code. For scripts and Airflow tasks.
- `inpaint_dataset(ds, cfg)` (here): for people who already have a Ray Data pipeline. A dataset of manifest rows
  in, a dataset of results rows (`io.results.RESULTS_SCHEMA`) out; output images are written under
  `{cfg.output}/images/`. No ledger, resume, summary or report: the caller's pipeline decides what to do with
  the rows (write them, filter errors, join them back). The same row with the same settings gives the same
  image bytes as `run_job`. The dataset it returns is lazy, like any Ray Dataset: each execution (`write_parquet`,
  `count`, iterating) runs the model over the rows again and rewrites the same images with the same bytes. To
  use the results more than once, run it once: `results = inpaint_dataset(ds, cfg).materialize()`.
"""

from __future__ import annotations

import pyarrow as pa

from rayinpaint.io.errors import SettingsError
from rayinpaint.io.finish import finish_row
from rayinpaint.io.manifest import canonicalize
from rayinpaint.io.results import results_table

from .config import JobConfig, validate
from rayinpaint.ledger.fingerprint import fingerprint_of, model_identity, pixel_settings


def inpaint_dataset(ds, cfg: JobConfig, *, base_dir: str | None = None):
    """`ds`: a Ray Dataset with the manifest's columns (`cfg.columns` maps other names; see README, Manifests);
    relative image and mask URIs resolve against `base_dir`. Needs a running Ray (`ray.init()`); `cfg.manifest`
    is not used. Returns the lazy Dataset of results rows (one per input row, whatever happened to it)."""
    import ray

    from .pipeline import PassPlan, _model_stage, _prepare_stage, model_pool
    from .preflight import check_detector
    from .sizing import DETECT_PREPARE_WEIGHT, stage_sizes

    if not cfg.output:
        raise SettingsError("inpaint_dataset: cfg.output is required (images are written under it)")
    validate(cfg)
    storage = cfg.storage()
    rows = cfg.prepare_settings(storage)
    rows.validate()
    check_detector(cfg, storage)
    run = {"sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "strength": cfg.strength,
           "settings_fingerprint": fingerprint_of(pixel_settings(cfg, model_identity(cfg, storage)))}
    plan = PassPlan(storage=storage, groups=[], rows=rows, finish=None, model=cfg.model_settings(storage),
                    detect=cfg.detect_settings(storage))
    ds = ds.map_batches(canonicalize, batch_format="pyarrow",
                        fn_kwargs={"colmap": cfg.column_map(), "source_column": None, "base_dir": base_dir})
    pool = model_pool(cfg)
    sizes = stage_sizes(float(ray.cluster_resources().get("CPU", 0)), pool[0], pool[2], DETECT_PREPARE_WEIGHT)
    ds = _prepare_stage(ds, plan, cfg.batch_size, 1, None, sizes.detector_actors())
    ds = _model_stage(ds, cfg, plan, cfg.batch_size, False, pool)
    return ds.map_batches(finish_results, batch_format="pyarrow", batch_size=cfg.batch_size, num_cpus=1,
                          fn_kwargs={"rows": rows, "out": cfg.output_settings(storage), "run": run})


def finish_results(batch: pa.Table, rows, out, run: dict) -> pa.Table:
    """Paste back and write each row's image; the batch's results rows. An unwritable output raises (the
    caller's pipeline fails, as any of its writes would)."""
    results = []
    for row in batch.to_pylist():
        res = row.pop("result", None)  # one output per region (bytes), or None
        info = {**run, "model_sha256": row.pop("model_sha256", None), "t_inpaint": row.pop("t_inpaint", None) or 0.0}
        row.pop("actor", None)
        results.append(finish_row(row, res, rows, out, info))
    return results_table(results)
