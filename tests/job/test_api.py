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
    out = api.inpaint_dataset(ds, cfg, base_dir=str(tmp_path / "in")).to_arrow_refs()
    got = pa.concat_tables(ray.get(out))
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


def test_examples_are_valid_python(tmp_path):
    """The Airflow DAG and the pipeline example need Airflow / a dataset to run; here they must at least compile."""
    import py_compile
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.py"))
    assert {p.name for p in examples} >= {"airflow_dag.py", "pipeline_transform.py"}
    for p in examples:
        py_compile.compile(str(p), cfile=str(tmp_path / f"{p.stem}.pyc"), doraise=True)
