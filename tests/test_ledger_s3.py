"""The ledger on S3 (moto on loopback, behind the tests' proxy that counts requests): the index costs requests
per file, not per row, and compaction on an object store keeps every row."""

from __future__ import annotations

import dataclasses
import math

import pyarrow as pa
import pytest

from faultproxy import FaultProxy
from rayinpaint.jobs.compaction import compact, conform
from rayinpaint.jobs.ledger import Ledger


def rows(start: int, n: int) -> pa.Table:
    ids = [f"r{i:07d}" for i in range(start, start + n)]
    return conform(pa.table({"id": ids, "status": ["ok"] * n, "output_uri": [f"s3://b/o/{i}.png" for i in ids]}))


@pytest.fixture
def proxy(s3_server):
    with FaultProxy(s3_server, max_log=100_000) as p:
        yield p


def index_gets(bucket: str, opts, proxy, name: str, files: int, per_file: int) -> int:
    """GET requests of one Ledger.index() over `files` files of `per_file` rows (written around the proxy)."""
    out = f"s3://{bucket}/{name}"
    direct = Ledger(out, opts)
    for f in range(files):
        direct.write_rows(rows(f * per_file, per_file))
    proxy.reset_counts()
    idx = Ledger(out, dataclasses.replace(opts, endpoint_url=proxy.url)).index()
    assert idx.table.num_rows == files * per_file
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
    files = ledger.shard_paths()
    assert len(files) <= max(1, math.ceil(total / 100_000)), len(files)
    ids = ledger.read_all().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == total


def test_an_index_from_a_current_snapshot_reads_no_results_file_on_s3(s3_bucket, proxy):
    """With the snapshot of exactly the files listed, the index costs one listing and the snapshot's reads
    whatever the number of results files; a results file added after it makes the index read the files."""
    from rayinpaint.jobs.snapshot import save_snapshot

    bucket, opts = s3_bucket
    out = f"s3://{bucket}/snap"
    direct = Ledger(out, opts)
    for f in range(40):
        direct.write_rows(rows(f * 500, 500))
    save_snapshot(direct, direct.index())
    via = Ledger(out, dataclasses.replace(opts, endpoint_url=proxy.url))
    proxy.reset_counts()
    idx = via.index()
    gets = [key for method, key, _ in proxy.history if method == "GET"]
    assert idx.source == "snapshot" and idx.table.num_rows == 20_000
    assert not [k for k in gets if "/results/part-" in k], gets
    assert 1 <= len(gets) <= 4, gets  # the listing and the snapshot (footer, data): not one per file
    direct.write_rows(rows(50_000, 10))
    proxy.reset_counts()
    idx = via.index()
    gets = [key for method, key, _ in proxy.history if method == "GET"]
    assert idx.source == "files" and idx.table.num_rows == 20_010
    assert len([k for k in gets if "/results/part-" in k]) >= 41
