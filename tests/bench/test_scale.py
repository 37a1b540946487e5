"""The bookkeeping's scale benchmark (bench/scale.py) at a small size: the synthetic output it measures is one the
product reads as a finished run (every manifest id recorded once, the statuses it wrote), and the whole measurement
runs through: the no-op resumes and the daily run with new ids, each in a process of its own."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayinpaint.bench.scale import downstream, measure, past_runs, results_chunk, synthesise
from rayinpaint.io.results import RESULTS_SCHEMA
from rayinpaint.io.storage import StorageOptions
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.overview import read_runs


def test_the_synthetic_output_is_a_finished_run_the_product_reads(tmp_path):
    storage = StorageOptions()
    output, manifest = str(tmp_path / "out"), str(tmp_path / "manifest")
    chunk = results_chunk(10, 40)
    assert chunk.schema == RESULTS_SCHEMA and chunk.column("id")[0].as_py() == "row-000000010"
    assert chunk.column("status").to_pylist().count("error") == 2  # ids 20 and 40: one row in twenty

    assert synthesise(output, manifest, 2500, 1000, storage) == 3
    results = Ledger(output, storage).read_all()
    ids = pq.read_table(manifest).column("id").to_pylist()
    assert sorted(results.column("id").to_pylist()) == sorted(ids) and len(set(ids)) == 2500
    assert pc.sum(pc.equal(results.column("status"), "error")).as_py() == 125

    past_runs(output, 3, storage)
    assert len(read_runs(output, storage)) == 3
    d = downstream(output, storage)
    assert d["files"] == 3 and d["bytes_on_storage"] > 0


@pytest.mark.slow  # three resumes of the job's driver, each in a fresh process
@pytest.mark.timeout(600)
def test_the_measurement_runs_through_at_a_small_size(tmp_path):
    storage = StorageOptions()
    args = SimpleNamespace(rows=3000, shard_rows=1000, past_runs=2, new_rows=500, no_downstream=False)
    rec = measure(str(tmp_path / "out"), str(tmp_path / "manifest"), args, storage, {})
    assert rec["files_written"] == 3 and rec["downstream_as_written"]["files"] == 3
    for k in ("first_resume", "second_resume"):
        assert rec[k]["exit_code"] == 0 and rec[k]["accounted"] == 3000, rec[k]
    inc = rec["incremental_resume"]
    assert inc["exit_code"] == 0 and inc["accounted"] == 3500 and inc["new_rows"] == 500, inc
    assert Ledger(str(tmp_path / "out"), storage).read_all().num_rows == 3500
