"""The Python API: `rayinpaint.jobs.run_job(JobConfig(...))` and the dataset transform `inpaint_dataset(ds, cfg)`
for an existing Ray Data pipeline, which gives the same rows and the same image bytes as the job."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import rayinpaint.jobs as api
from helpers_job import BAD, FAST_TINY
from rayinpaint.io.results import RESULTS_SCHEMA
from rayinpaint.bench.demo import make_dataset

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow  # a local Ray cluster
def test_inpaint_dataset_matches_the_job(ray_local, tmp_path):
    import ray

    manifest = make_dataset(str(tmp_path / "in"), rows=4)
    job_out = tmp_path / "job"
    assert api.run_job(api.JobConfig(manifest=(manifest,), output=str(job_out), **FAST_TINY)) == 0

    # A pipeline of the caller's own: manifest rows with other column names, mapped with `columns`.
    table = pq.read_table(manifest).rename_columns(["key", "img", "mask", "boxes", "prompt", "seed"])
    ds = ray.data.from_arrow(table)
    cfg = api.JobConfig(manifest=(), output=str(tmp_path / "api"), columns="id=key,image=img", **FAST_TINY)
    lazy = api.inpaint_dataset(ds, cfg, base_dir=str(tmp_path / "in"))
    got = pa.concat_tables(ray.get(lazy.to_arrow_refs()))
    assert got.schema == RESULTS_SCHEMA
    rows = {r["id"]: r for r in got.to_pylist()}
    job_rows = {r["id"]: r for r in api.read_results(str(job_out)).to_pylist()}
    assert sorted(rows) == sorted(job_rows)                       # one results row per input row
    for rid, kind in BAD.items():
        assert (rows[rid]["status"], rows[rid]["error_kind"]) == ("error", kind)
    for rid, r in rows.items():
        assert r["status"] == job_rows[rid]["status"]
        assert r["settings_fingerprint"] == job_rows[rid]["settings_fingerprint"]  # same pixel settings
        if r["status"] != "error":
            name = r["output_uri"].rsplit("/", 1)[-1]
            assert (tmp_path / "api" / "images" / name).read_bytes() == (job_out / "images" / name).read_bytes()
    assert not (tmp_path / "api" / "results").exists()  # no ledger: the caller's pipeline owns the rows
    # The dataset is lazy: executing it again runs the rows again and writes the same images, byte for byte.
    images = {p.name: p.read_bytes() for p in (tmp_path / "api" / "images").iterdir()}
    again = pa.concat_tables(ray.get(lazy.to_arrow_refs()))
    key = lambda t: sorted((r["id"], r["status"], r["output_uri"]) for r in t.to_pylist())  # noqa: E731
    assert key(again) == key(got)
    assert {p.name: p.read_bytes() for p in (tmp_path / "api" / "images").iterdir()} == images


def test_examples_are_valid_python(tmp_path):
    """The Airflow DAG and the pipeline example need Airflow / a dataset to run; here they must at least compile."""
    import py_compile
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
    assert {p.name for p in examples} >= {"airflow_dag.py", "pipeline_transform.py"}
    for p in examples:
        py_compile.compile(str(p), cfile=str(tmp_path / f"{p.stem}.pyc"), doraise=True)


def _finished(tmp_path, n: int = 6) -> str:
    """A manifest of `n` rows whose output already holds a done row for each (a run has nothing to do: no Ray)."""
    from rayinpaint.io.results import results_table
    from rayinpaint.io.storage import StorageOptions
    from rayinpaint.ledger.files import Ledger

    ids = [f"r{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "image": [f"/img/{i}.png" for i in ids],
                             "boxes": [[[0.0, 0.0, 8.0, 8.0]]] * n}), str(tmp_path / "m.parquet"))
    Ledger(str(tmp_path / "out"), StorageOptions()).write_rows(results_table([{"id": i, "status": "ok"} for i in ids]))
    return str(tmp_path / "m.parquet")


def test_a_manifest_given_as_one_string_is_one_manifest(tmp_path):
    manifest = _finished(tmp_path)
    cfg = api.JobConfig(manifest=manifest, output=str(tmp_path / "out"), weights="random:tiny")
    assert cfg.manifest == (manifest,)
    assert api.JobConfig(manifest=[manifest], output="o").manifest == (manifest,)
    assert api.run_job(cfg) == 0


def test_a_setting_out_of_range_is_named_before_the_outputs_settings_are_compared(tmp_path):
    """On an output made with steps=25, steps=0 is a bad setting (its range), not a change of settings."""
    manifest = _finished(tmp_path)
    assert api.run_job(api.JobConfig(manifest=(manifest,), output=str(tmp_path / "out"), weights="random:tiny")) == 0
    from rayinpaint.io.errors import SettingsError

    with pytest.raises(SettingsError) as e:
        api.run_job(api.JobConfig(manifest=(manifest,), output=str(tmp_path / "out"), weights="random:tiny", steps=0))
    assert "--steps" in str(e.value) and "other settings" not in str(e.value), str(e.value)


def test_a_plain_script_shows_the_jobs_lines(tmp_path):
    """No logging configured: run_job prints the job's lines (the manifest, the final count) as the command
    line does."""
    import subprocess
    import sys

    manifest = _finished(tmp_path)
    script = ("from rayinpaint.jobs import JobConfig, run_job\n"
              f"raise SystemExit(run_job(JobConfig(manifest={manifest!r}, output={str(tmp_path / 'out')!r}, "
              "weights='random:tiny')))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "INFO rayinpaint.job: manifest: 1 file(s)" in r.stderr and "done: ok 6" in r.stderr, r.stderr[-2000:]


@pytest.mark.slow  # a local Ray cluster
def test_a_ray_the_caller_started_gets_the_jobs_data_settings(ray_local):
    """Under the caller's own `ray.init()` the job still tolerates failed blocks (its crash retries depend on it),
    hides Ray Data's progress bars and waits --wait-for-actors for its pool."""
    from rayinpaint.jobs.pipeline import start_ray

    ctx = ray_local.data.DataContext.get_current()
    saved = (ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.wait_for_min_actors_s)
    ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.wait_for_min_actors_s = 0, True, 0
    try:
        assert start_ray(api.JobConfig(manifest="m.parquet", output="o", wait_for_actors=77)) is False
        assert (ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.wait_for_min_actors_s) == (-1, False, 77)
    finally:
        ctx.max_errored_blocks, ctx.enable_progress_bars, ctx.wait_for_min_actors_s = saved
