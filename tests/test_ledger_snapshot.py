"""The index snapshot (`{output}/_index/done.parquet`, jobs/snapshot.py): a resume of a finished output reads it
instead of every results file; a stale or corrupt one is ignored and every id is still recorded exactly once;
readers of `results/*.parquet` never see it."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from rayinpaint.io.results import results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.jobs import snapshot
from rayinpaint.jobs.compaction import compact
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.jobs.ledger import Ledger
from rayinpaint.jobs.snapshot import save_snapshot, snapshot_uri


def rows(start: int, n: int, status: str = "ok") -> pa.Table:
    return results_table([{"id": f"r{i:05d}", "status": status, "output_uri": f"/o/r{i:05d}.png",
                           "error_kind": "not_found" if status == "error" else None}
                          for i in range(start, start + n)])


@pytest.fixture
def reads(monkeypatch):
    """Paths whose index columns were read from a results file."""
    seen = []
    real = Ledger._read_index
    monkeypatch.setattr(Ledger, "_read_index", lambda self, path: seen.append(path) or real(self, path))
    return seen


def ledger_of(tmp_path, files: int, per: int = 10) -> Ledger:
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    for f in range(files):
        ledger.write_rows(rows(f * per, per, "error" if f == 1 else "ok"))
    return ledger


def same_index(a, b) -> bool:
    return a.table.equals(b.table) and a.shards == b.shards


def test_an_index_from_the_snapshot_equals_the_files_and_reads_none_of_them(tmp_path, reads):
    ledger = ledger_of(tmp_path, 5)
    from_files = ledger.index()
    assert from_files.source == "files" and len(reads) == 5
    assert save_snapshot(ledger, from_files) > 0
    reads.clear()
    got = ledger.index()
    assert got.source == "snapshot" and reads == [] and same_index(got, from_files)
    assert got.counts() == from_files.counts()
    assert save_snapshot(ledger, got) is None  # current already: not written again


def test_the_snapshot_is_not_a_results_file_for_any_reader(tmp_path):
    ledger = ledger_of(tmp_path, 3)
    save_snapshot(ledger, ledger.index())
    assert (tmp_path / "out" / "_index" / "done.parquet").exists()
    assert len(ledger.shard_paths()) == 3 and ledger.read_all().num_rows == 30
    ds = pads.dataset(str(tmp_path / "out" / "results"), format="parquet")
    assert len(ds.files) == 3 and ds.count_rows() == 30


@pytest.mark.parametrize("change", ["added", "removed", "merged"])
def test_a_stale_snapshot_is_ignored(tmp_path, reads, change):
    ledger = ledger_of(tmp_path, 4)
    save_snapshot(ledger, ledger.index())
    if change == "added":  # e.g. a crash after the run's last results file, before its snapshot
        ledger.write_rows(rows(1000, 3))
    elif change == "removed":
        ledger.remove(ledger.shard_paths()[0])
    else:
        compact(ledger)
    reads.clear()
    got = ledger.index()
    assert got.source == "files" and reads
    assert same_index(got, Ledger(ledger.output, ledger.storage).index())
    ids = set(got.ids.to_pylist())
    assert ("r01000" in ids) == (change == "added") and ("r00000" in ids) == (change != "removed")


def test_a_crash_before_the_snapshot_never_loses_or_duplicates_a_row(tmp_path):
    """A merge stopped after writing its file (rows twice), with the snapshot of the files before it: the
    snapshot is stale, the files are read, reconcile keeps one copy of each row."""
    ledger = ledger_of(tmp_path, 4)
    save_snapshot(ledger, ledger.index())
    ledger.write_rows(pa.concat_tables([rows(0, 10), rows(10, 10, "ok")]))  # copies of two files' rows
    idx = ledger.reconcile()
    assert idx.source == "files" and sorted(idx.ids.to_pylist()) == [f"r{i:05d}" for i in range(40)]
    assert dict(zip(idx.ids.to_pylist(), idx.table.column("status").to_pylist()))["r00015"] == "ok"
    ids = ledger.read_all().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 40


@pytest.mark.parametrize("damage", ["garbage", "truncated", "rows", "foreign"])
def test_a_corrupt_snapshot_is_ignored_with_a_warning(tmp_path, reads, caplog, damage):
    ledger = ledger_of(tmp_path, 3)
    truth = ledger.index()
    save_snapshot(ledger, truth)
    path = tmp_path / "out" / "_index" / "done.parquet"
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not parquet at all")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "rows":  # the footer's files, but a row missing
        t = pq.read_table(str(path))
        pq.write_table(t.slice(1), str(path))
    else:  # a Parquet file that is not a snapshot
        pq.write_table(rows(0, 3), str(path))
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="rayinpaint.ledger"):
        got = ledger.index()
    assert got.source == "files" and len(reads) == 3 and same_index(got, truth)
    assert "index snapshot" in caplog.text and "ignored" in caplog.text


def test_a_snapshot_reuses_the_rows_of_files_it_knows_and_reads_the_others(tmp_path, reads):
    ledger = ledger_of(tmp_path, 3)
    known = ledger.index()
    ledger.write_rows(rows(500, 4))
    reads.clear()
    save_snapshot(ledger, known)
    assert len(reads) == 1  # only the new file
    reads.clear()
    got = ledger.index()
    assert got.source == "snapshot" and not reads and got.table.num_rows == 34


def finished_output(tmp_path, n: int = 60) -> JobConfig:
    """A manifest of n ids whose every row is done in the results (no row left: no Ray)."""
    folder = tmp_path / "manifest"
    folder.mkdir()
    ids = [f"r{i:05d}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "image": [f"/img/{i}.jpg" for i in ids],
                             "boxes": [[[0.0, 0.0, 8.0, 8.0]]] * n}), str(folder / "m.parquet"))
    cfg = JobConfig(manifest=(str(folder),), output=str(tmp_path / "out"), weights="random:tiny")
    ledger = Ledger(cfg.output, cfg.storage())
    for s in range(0, n, 20):
        ledger.write_rows(rows(s, 20))
    return cfg


def test_a_no_op_resume_reads_the_snapshot_only(tmp_path, reads):
    cfg = finished_output(tmp_path)
    assert run_job(cfg) == 0  # reads the files, merges them, writes the snapshot
    assert reads and (tmp_path / "out" / "_index" / "done.parquet").exists()
    reads.clear()
    assert run_job(cfg) == 0
    assert reads == []
    ids = Ledger(cfg.output, cfg.storage()).read_all().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 60


def test_a_resume_after_a_stale_snapshot_is_exactly_once(tmp_path, reads):
    cfg = finished_output(tmp_path)
    assert run_job(cfg) == 0
    ledger = Ledger(cfg.output, cfg.storage())
    ledger.write_rows(rows(10, 5, "error"))  # a crash-retry copy of five done rows, after the snapshot
    reads.clear()
    assert run_job(cfg) == 0
    assert reads  # stale: the files were read
    t = ledger.read_all()
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 60 and set(t.column("status").to_pylist()) == {"ok"}
    reads.clear()
    assert run_job(cfg) == 0 and reads == []  # the snapshot written at the end of that run is current


def test_snapshot_uri_is_outside_the_results_folder():
    assert snapshot_uri("s3://b/out/") == "s3://b/out/_index/done.parquet"
    assert not snapshot.snapshot_uri("/x/out").startswith("/x/out/results")
