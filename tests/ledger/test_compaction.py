"""The results files' compaction and repair: small files merged into few files with one schema, every row kept
exactly once whatever point a merge stops at, duplicates resolved by the same rule everywhere."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayinpaint.io.results import RESULTS_SCHEMA, results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.ledger import compaction, files as files_mod
from rayinpaint.ledger.compaction import RunCompactor, compact
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.index import local_index
from rayinpaint.ledger.plan import repair

from helpers_ledger import index_rows


def repaired(ledger: Ledger) -> pa.Table:
    """The repair a run's start makes (ledger/plan.py), then the index read again."""
    with local_index() as index:
        index.add_results(ledger, ledger.listing())
        repair(ledger, index, retry_errors=False)
    return index_rows(ledger)[0]


def rows(start: int, n: int, status: str = "ok") -> pa.Table:
    return results_table([{"id": f"r{i:05d}", "status": status, "output_uri": f"/o/r{i:05d}.png",
                           "error_kind": "not_found" if status == "error" else None}
                          for i in range(start, start + n)])


def ledger_of(tmp_path, shards: int, per: int = 8) -> Ledger:
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    for s in range(shards):
        ledger.write_rows(rows(s * per, per))
    return ledger


def by_id(ledger: Ledger) -> dict:
    t = ledger.read_all()
    ids = t.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "an id recorded twice"
    return {r["id"]: r for r in t.to_pylist()}


@pytest.mark.parametrize("clock", [
    [5_999_999_999, 6_000_000_001],  # across a second boundary: seconds and fraction from one reading
    [7_000_000_000, 6_500_000_000, 6_500_000_000],  # the wall clock stepped back, then stood still
])
def test_file_names_sort_in_the_order_they_were_made(monkeypatch, clock):
    """A repair keeps the newest copy of an id by file name, so names made one after another must sort
    one after another whatever the wall clock does."""
    readings = iter(clock)
    monkeypatch.setattr(files_mod, "_name_clock", {"last": 0})  # as in a process that has named no file yet
    monkeypatch.setattr(files_mod.time, "time_ns", lambda: next(readings))
    names = [files_mod.new_name() for _ in clock]
    assert names == sorted(names) and len(set(names)) == len(names)
    first_s, first_ns = divmod(clock[0], 10**9)
    assert names[0].startswith(f"part-19700101T0000{first_s:02d}-{first_ns:09d}-")


def test_small_files_merge_into_one_file_with_the_results_schema(tmp_path):
    ledger = ledger_of(tmp_path, 40)
    before = by_id(ledger)
    # A file written before `prompt_truncated` and `image_uri` existed: the merged file has every column.
    old = rows(1000, 3).drop_columns(["prompt_truncated", "image_uri"])
    pq.write_table(old, str(tmp_path / "out" / "results" / "part-20000101T000000-000000000-00000000.parquet"))
    done = compact(ledger)
    assert (done.merged, done.replaced, done.rows) == (1, 41, 323)
    files = ledger.paths()
    assert len(files) == 1
    assert pq.read_schema(files[0]).remove_metadata() == RESULTS_SCHEMA
    after = by_id(ledger)
    assert set(after) == set(before) | {f"r{i:05d}" for i in range(1000, 1003)}
    assert all(after[i] == r for i, r in before.items())
    assert compact(ledger).merged == 0  # one file: nothing left to merge


def test_target_rows_bounds_each_merged_file(tmp_path):
    ledger = ledger_of(tmp_path, 50, per=10)
    compact(ledger, target_rows=120)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in ledger.paths()]
    assert sum(sizes) == 500 and all(s <= 120 for s in sizes) and len(sizes) == 5, sizes


@pytest.mark.parametrize("removed", [0, 1, 5])
def test_a_merge_stopped_after_writing_loses_nothing(tmp_path, monkeypatch, removed):
    """The merged file is written before its inputs are removed: stopped after `removed` removals, every row
    is still there (some twice), and the next run's repair keeps exactly one copy of each."""
    ledger = ledger_of(tmp_path, 12)
    before = by_id(ledger)
    calls = []

    def stop_after(led, path):
        if len(calls) == removed:
            raise KeyboardInterrupt("stopped")
        calls.append(path)
        led.remove(path)

    monkeypatch.setattr(compaction, "remove_merged", stop_after)
    with pytest.raises(KeyboardInterrupt):
        compact(ledger)
    t = ledger.read_all()
    assert set(t.column("id").to_pylist()) == set(before)
    assert t.num_rows == len(before) + (len(before) - 8 * removed)  # the merged copy plus what was not removed
    monkeypatch.undo()
    assert repaired(ledger).num_rows == len(before)
    assert by_id(ledger) == before
    compact(ledger)
    assert len(ledger.paths()) == 1 and by_id(ledger) == before


def test_duplicates_inside_one_file_keep_one_row(tmp_path):
    """An id twice in the same file (two crash-retry copies merged together): the repair keeps one, the done one."""
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    ledger.write_rows(pa.concat_tables([rows(0, 4, "error"), rows(0, 4), rows(4, 2)]))
    idx = repaired(ledger)
    assert sorted(idx.column("id").to_pylist()) == [f"r{i:05d}" for i in range(6)]
    assert set(idx.column("status").to_pylist()) == {"ok"}
    assert by_id(ledger)["r00001"]["status"] == "ok"


def test_a_merge_drops_superseded_copies(tmp_path):
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    ledger.write_rows(rows(0, 4))
    ledger.write_rows(rows(2, 4, "error"))   # newer, but an error: the done rows win
    ledger.write_rows(rows(5, 2))            # newer done copy of r00005 beats the error
    done = compact(ledger)
    assert done.duplicates == 3
    got = by_id(ledger)
    assert {i: r["status"] for i, r in got.items()} == {"r00000": "ok", "r00001": "ok", "r00002": "ok",
                                                        "r00003": "ok", "r00004": "error", "r00005": "ok",
                                                        "r00006": "ok"}


def test_index_places_and_this_runs_rows(tmp_path):
    ledger = ledger_of(tmp_path, 2, per=3)
    rows_, files = index_rows(ledger)
    assert files == ledger.paths() and rows_.column("pos").to_pylist() == [0, 1, 2, 0, 1, 2]
    assert rows_.column("file").to_pylist() == [0, 0, 0, 1, 1, 1]
    with local_index() as index:  # this run's rows: one per id by the same rule, later rows newer
        index.add_recorded(pa.table({"id": ["r1", "r2", "r3"], "status": ["ok", "error", "error"],
                                     "error_kind": [None, "decode", "decode"]}))
        index.add_recorded(pa.table({"id": ["r1", "r2", "r3"], "status": ["error", "ok", "error"],
                                     "error_kind": ["decode", None, "not_found"]}))
        counts = index.counts("recorded")
    assert counts.by_status == {"ok": 2, "error": 1} and counts.by_kind == {"not_found": 1}


def test_in_run_compaction_merges_new_files_only(tmp_path):
    ledger = ledger_of(tmp_path, 6)
    compact(ledger)
    merged = ledger.paths()
    for s in range(6, 10):
        ledger.write_rows(rows(s * 8, 8))
    c = RunCompactor(ledger, every=2)
    c.after_batch()
    assert len(ledger.paths()) == 5  # nothing yet
    c.after_batch()
    files = ledger.paths()
    assert len(files) == 2 and merged[0] in files  # the earlier merged file was not read again
    assert len(by_id(ledger)) == 80


def test_merged_files_are_sorted_by_id_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "ROW_GROUP_ROWS", 50)
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    for s in reversed(range(20)):  # written in descending id order
        ledger.write_rows(rows(s * 10, 10))
    compact(ledger)
    (path,) = ledger.paths()
    meta = pq.ParquetFile(path).metadata
    assert meta.num_row_groups == 4
    ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 200
    stats = [meta.row_group(g).column(0).statistics for g in range(4)]
    assert all(a.max < b.min for a, b in zip(stats, stats[1:]))  # disjoint: a lookup reads one row group


def test_files_known_to_be_large_are_not_read_again(tmp_path, monkeypatch):
    """With the rows per file from the index, a merge reads only the small files; a file found large after
    reading (rows not known) is left as it is, not rewritten."""
    ledger = ledger_of(tmp_path, 3, per=60)  # three files of 60 rows: large for a target of 100
    for s in range(3, 6):
        ledger.write_rows(rows(s * 60, 10))
    big = ledger.paths()[:3]
    t, files = index_rows(ledger)
    known = dict(zip(files, [t.column("file").to_pylist().count(k) for k in range(len(files))]))
    read = []
    real = Ledger.read_many
    monkeypatch.setattr(Ledger, "read_many", lambda self, paths, **kw: read.extend(paths) or real(self, paths, **kw))
    done = compact(ledger, target_rows=100, file_rows=known)
    assert not set(read) & set(big) and len(read) == 3 and done.merged == 1
    assert all(p in ledger.paths() for p in big)
    assert done.file_rows[done.written[0].split("://")[-1]] == 30 and all(done.file_rows[p] == 60 for p in big)
    read.clear()
    again = compact(ledger, target_rows=100)  # rows not given: the 60-row files are read, found large, kept
    assert again.merged == 0 and all(p in ledger.paths() for p in big)
