"""The bookkeeping on S3 (moto on loopback, behind the tests' proxy that counts requests): the index costs
requests per file, not per row, compaction on an object store keeps every row, and a daily run with nothing new
reads no results file and no manifest file."""

from __future__ import annotations

import dataclasses
import math

import pyarrow as pa
import pytest

from faultproxy import FaultProxy
from rayinpaint.io.manifest import ColumnMap
from rayinpaint.io.storage import filesystem
from rayinpaint.ledger.compaction import compact, conform
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.index import local_index
from rayinpaint.ledger.plan import remember, totals

from helpers_ledger import begin, index_rows


def rows(start: int, n: int) -> pa.Table:
    ids = [f"r{i:07d}" for i in range(start, start + n)]
    return conform(pa.table({"id": ids, "status": ["ok"] * n, "output_uri": [f"s3://b/o/{i}.png" for i in ids]}))


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server, max_log=100_000) as p:
        yield p


def index_gets(bucket: str, opts, proxy, name: str, files: int, per_file: int) -> int:
    """GET requests of reading the index (as a run's start does) over `files` files of `per_file` rows (written
    around the proxy)."""
    out = f"s3://{bucket}/{name}"
    direct = Ledger(out, opts)
    for f in range(files):
        direct.write_rows(rows(f * per_file, per_file))
    proxy.reset_counts()
    idx, _ = index_rows(Ledger(out, dataclasses.replace(opts, endpoint_url=proxy.url)))
    assert idx.num_rows == files * per_file
    return sum(1 for method, _, _ in proxy.history if method == "GET")


def test_index_requests_grow_with_files_not_rows(s3_bucket, proxy):
    bucket, opts = s3_bucket
    small = index_gets(bucket, opts, proxy, "a", files=4, per_file=20_000)
    large = index_gets(bucket, opts, proxy, "b", files=4, per_file=200_000)
    many = index_gets(bucket, opts, proxy, "c", files=40, per_file=2_000)
    assert large == small, (small, large)        # 10x the rows in as many files: the same requests
    per_file = (small - 1) / 4                     # one listing, then a few reads per file
    assert 1 <= per_file <= 3 and many <= 1 + 40 * per_file, (small, many)
    assert many >= 40, many                        # ...and 10x the files, 10x the reads


def test_compaction_on_s3_keeps_every_row_and_bounds_the_file_count(s3_bucket):
    bucket, opts = s3_bucket
    ledger = Ledger(f"s3://{bucket}/out", opts)
    total = 0
    for s in range(60):
        n = 2_500 if s % 2 else 16
        ledger.write_rows(rows(total, n))
        total += n
    compact(ledger)
    files = ledger.paths()
    assert len(files) <= max(1, math.ceil(total / 100_000)), len(files)
    ids = ledger.read_all().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == total


def test_a_daily_run_with_nothing_new_reads_no_results_file_and_no_manifest_file_on_s3(s3_bucket, proxy):
    """After a run that accounted for every id, the next run with the same manifest files costs the listings and
    the record (ledger/accounted.py), whatever the number of results files; a results file added since makes it
    read every file again."""
    bucket, opts = s3_bucket
    out, manifest = f"s3://{bucket}/daily", f"s3://{bucket}/daily-manifest"
    direct = Ledger(out, opts)
    fs, mpath = filesystem(manifest, opts)
    for f in range(40):
        direct.write_rows(rows(f * 500, 500))
        with fs.open(f"{mpath}/m{f:02d}.parquet", "wb") as fh:
            pa.parquet.write_table(rows(f * 500, 500).select(["id"]).append_column(
                "image", pa.array([f"s3://b/i/{k}.jpg" for k in range(500)])).append_column(
                "boxes", pa.array([[[0.0, 0.0, 8.0, 8.0]]] * 500)), fh)
    def books(storage) -> tuple:
        ledger = Ledger(out, storage)
        with local_index() as index:
            plan = begin(ledger, (manifest,), ColumnMap(), storage, index, write=False)
            counts, ids_with_a_row = totals(plan)
            remember(ledger, plan, counts, ids_with_a_row, storage)
            return plan.todo, len(plan.old), ids_with_a_row

    assert books(opts) == (0, 0, 20_000)
    via = dataclasses.replace(opts, endpoint_url=proxy.url)
    proxy.reset_counts()
    assert books(via) == (0, 40, 20_000)
    gets = [key for method, key, _ in proxy.history if method == "GET"]
    assert not [k for k in gets if k.split("?")[0].endswith(".parquet")], gets  # no results or manifest file
    assert len(gets) <= 6, gets  # the two listings and the record: not one per file
    direct.write_rows(rows(50_000, 10))
    proxy.reset_counts()
    assert books(via) == (0, 0, 20_000)
    gets = [key for method, key, _ in proxy.history if method == "GET"]
    assert len([k for k in gets if "/results/part-" in k]) >= 41
