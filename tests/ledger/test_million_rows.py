"""The driver's work for a 1M-row manifest: it reads the id column only and never holds the rows."""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq

from helpers_ledger import begin
from rayinpaint.io.results import results_table
from rayinpaint.jobs.config import JobConfig
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.index import local_index
from rayinpaint.ledger.manifest import list_files, read_ids


N = 1_000_000


def test_million_row_manifest_scan_and_resume_are_cheap(tmp_path):
    folder = tmp_path / "manifest"
    folder.mkdir()
    caption = "x" * 200  # a wide column the driver must not load: 200 MB across the manifest
    for k in range(4):
        ids = [f"row-{i:08d}" for i in range(k * N // 4, (k + 1) * N // 4)]
        pq.write_table(pa.table({"id": ids, "image": [f"s3://b/img/{i}.jpg" for i in ids],
                                 "boxes": [[[1.0, 2.0, 30.0, 40.0]]] * len(ids), "caption": [caption] * len(ids)}),
                       str(folder / f"part{k}.parquet"))
    cfg = JobConfig(manifest=(str(folder),), output=str(tmp_path / "out"), weights="random:tiny")

    before = pa.total_allocated_bytes()
    t0 = time.perf_counter()
    with local_index() as index:
        files = list_files(cfg.manifest, cfg.storage())
        scan = read_ids(files, list(range(len(files))), cfg.column_map(), cfg.storage(), index)
        scan_s = time.perf_counter() - t0
        held = pa.total_allocated_bytes() - before
        assert [len(g) for g in scan.groups] == [4] and index.unique_ids() == N and not index.duplicates()
        assert not scan.missing
    assert held < 8 * 2**20, f"the driver holds {held / 2**20:.0f} MiB after the scan"  # the ids are on local disk
    assert scan_s < 30

    # A ledger of 600k done rows in 60 files: the start (repair, rows left) stays cheap.
    ledger = Ledger(cfg.output, cfg.storage())
    for s in range(60):
        ledger.write_rows(results_table([{"id": f"row-{i:08d}", "status": "ok"}
                                         for i in range(s * 10_000, (s + 1) * 10_000)]))
    t0 = time.perf_counter()
    with local_index() as index:
        plan = begin(ledger, cfg.manifest, cfg.column_map(), cfg.storage(), index)
        assert plan.todo == N - 600_000 and plan.done == 600_000
    assert time.perf_counter() - t0 < 60
