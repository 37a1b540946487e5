"""The output's overview (ledger/overview.py), which every run and resume builds: run records are fetched together,
not one round trip after another, and only once; the timings column is read only until its sample is full; and
each results file is read whole once (ledger/caches.py)."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from faultproxy import FaultProxy
from rayinpaint.io.results import results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.ledger import overview
from rayinpaint.ledger.files import Ledger


def test_run_records_read_in_name_order_and_cached(tmp_path):
    root, opts = str(tmp_path / "out"), StorageOptions()
    for day in (3, 1, 2):
        overview.record_run(root, opts, {"started": 86_400 * day, "processed": day, "elapsed_s": 1.0})
    assert [r["processed"] for r in overview.read_runs(root, opts)] == [1, 2, 3]
    overview.record_run(root, opts, {"started": 0, "processed": 0, "elapsed_s": 1.0})  # sorts first, not cached yet
    assert [r["processed"] for r in overview.read_runs(root, opts)] == [0, 1, 2, 3]
    cache = tmp_path / "out" / "_index" / overview.RUNS_CACHE
    assert len(json.loads(cache.read_text())["files"]) == 4
    cache.write_text("[")  # unreadable: every record is read again
    assert [r["processed"] for r in overview.read_runs(root, opts)] == [0, 1, 2, 3]
    assert overview.read_runs(str(tmp_path / "none"), opts) == []


def test_run_records_on_s3_are_fetched_concurrently(s3_bucket, s3_server):
    """Each record's GET is held 0.4 s: one after another, 20 records take at least 8 s."""
    bucket, opts = s3_bucket
    root = f"s3://{bucket}/out"
    for k in range(20):
        overview.record_run(root, opts, {"started": 1_700_000_000 + k, "processed": k, "elapsed_s": 1.0})
    with FaultProxy(s3_server, rate=1.0, mix={"slow": 1}, slow_delay=0.4, methods="GET",
                    key_regex=r"_runs/.+\.json") as proxy:
        t0 = time.monotonic()
        runs = overview.read_runs(root, dataclasses.replace(opts, endpoint_url=proxy.url))
        elapsed = time.monotonic() - t0
        assert proxy.counts["slow"] == 20
        again = overview.read_runs(root, dataclasses.replace(opts, endpoint_url=proxy.url))
        assert proxy.counts["slow"] == 20  # the next run takes them from the cache: no record fetched again
    assert [r["processed"] for r in runs] == list(range(20)) and again == runs
    assert elapsed < 4.0, elapsed


def results(start: int, n: int) -> pa.Table:
    return results_table([{"id": f"r{i:05d}", "status": "ok" if i % 4 else "error",
                           "error_kind": None if i % 4 else "not_found", "error": None if i % 4 else "gone",
                           "width": 10, "height": 10, "mask_pixels": i % 100,
                           "timings": {s: float(i) for s in overview.STAGES} if i % 4 else None}
                          for i in range(start, start + n)])


def test_timings_are_read_until_the_sample_is_full(tmp_path, monkeypatch):
    """Newest files first: the sample holds the newest ok rows; every row still counts for mask sizes."""
    monkeypatch.setattr(overview, "_TIMING_SAMPLE", 12)
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    for f in range(3):
        ledger.write_rows(results(f * 40, 40), row_group_rows=8)
    read = []
    real = pq.ParquetFile.read_row_group

    def spy(self, g, columns=None, **kw):
        read.append("timings" in columns)
        return real(self, g, columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    got = overview.results_overview(ledger)
    # the newest file's first two groups (16 rows, 12 of them ok) fill the sample; 13 groups follow without it
    assert read == [True, True] + [False] * 13
    inpaint = got["stage_timings_s"]["inpaint"]
    newest_ok = [i for i in range(80, 96) if i % 4]
    assert inpaint["rows"] == 12 and inpaint["mean"] == round(float(np.mean(newest_ok)), 5)
    assert sum(got["mask_area"].values()) == 90  # the ok rows of all 120
    assert got["error_examples"]["not_found"]["message"] == "gone"


def spied(monkeypatch) -> list:
    """(file name, reads timings, reads mask sizes) of every row group the overview reads."""
    read = []
    real = pq.ParquetFile.read_row_group

    def spy(self, g, columns=None, **kw):
        read.append(("timings" in columns, "mask_pixels" in columns))
        return real(self, g, columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    return read


def test_a_later_run_reads_only_new_files_and_the_newest_timings(tmp_path, monkeypatch):
    monkeypatch.setattr(overview, "_TIMING_SAMPLE", 12)
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    for f in range(3):
        ledger.write_rows(results(f * 40, 40), row_group_rows=8)
    first = overview.results_overview(ledger)
    read = spied(monkeypatch)
    assert overview.results_overview(ledger) == first
    assert read == [(True, False)] * 2  # the newest file's timings until the sample is full, nothing else
    read.clear()
    ledger.write_rows(results(120, 8))  # a new file: read whole; the others come from the cache
    got = overview.results_overview(ledger)
    assert read == [(True, True), (True, False)]
    # newest file first: its errors, then the next file's
    assert got["error_examples"]["not_found"]["ids"] == ["r00120", "r00124", "r00080", "r00084", "r00088"]
    (tmp_path / "out" / "_index" / "overview.json").write_text("{not json")
    read.clear()
    uncached = overview.results_overview(ledger)
    assert uncached == got and sum(m for _, m in read) == 16  # the cache was unreadable: every group read again
    assert sum(uncached["mask_area"].values()) == 96  # the ok rows of all 128
