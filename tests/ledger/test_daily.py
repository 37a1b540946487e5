"""A daily run costs what is new (ledger/accounted.py, ledger/plan.py): manifest files accounted for by an earlier
run and unchanged are not read again, and the totals equal those of a run that reads every file. A changed or
removed file, new files repeating old ids, results changed since, an unreadable record or a run that left ids
undone all mean every file is read, so no answer ever depends on the record being right."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_ledger import begin
from rayinpaint.io.results import results_table
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.inpaint import run_job
from rayinpaint.ledger import accounted, manifest as manifest_mod
from rayinpaint.ledger.compaction import compact
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.index import local_index
from rayinpaint.ledger.plan import remember, totals


@pytest.fixture
def reads(monkeypatch):
    """Manifest files whose id column was read."""
    seen = []
    real = manifest_mod._read_ids
    monkeypatch.setattr(manifest_mod, "_read_ids", lambda path, *a: seen.append(os.path.basename(path)) or real(path, *a))
    return seen


def write_manifest(folder, name: str, ids: list) -> None:
    folder.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": ids, "image": [f"/img/{i}.jpg" for i in ids],
                             "boxes": [[[0.0, 0.0, 8.0, 8.0]]] * len(ids)}), str(folder / name))


def ids(a: int, b: int) -> list:
    return [f"r{i:04d}" for i in range(a, b)]


def run_books(cfg: JobConfig, do: int | None = None) -> dict:
    """A run's bookkeeping as the job does it, its pass replaced by writing an `ok` row for each id left
    (the first `do` of them, else all)."""
    storage = cfg.storage()
    ledger = Ledger(cfg.output, storage)
    with local_index() as index:
        plan = begin(ledger, cfg.manifest, cfg.column_map(), storage, index, retry_errors=cfg.retry_errors)
        left = index.lost().to_pylist()[:do]
        if left:
            rows = results_table([{"id": i, "status": "ok"} for i in left])
            ledger.write_rows(rows)
            index.add_recorded(rows)
        compact(ledger, file_rows=plan.file_rows)
        counts, ids_with_a_row = totals(plan)
        remember(ledger, plan, counts, ids_with_a_row, storage)
        return {"old": len(plan.old), "todo": plan.todo, "read": [os.path.basename(p) for g in plan.groups_to_read()
                                                                    for p in g], "done": plan.done, "unique": plan.unique,
                "accounted": ids_with_a_row, "by_status": counts.by_status, "duplicates": plan.duplicates}


@pytest.fixture
def daily(tmp_path):
    """An output whose first run accounted for three manifest files of 30 ids each, one of them repeated."""
    folder = tmp_path / "manifest"
    for k in range(3):
        write_manifest(folder, f"day{k}.parquet", ids(30 * k, 30 * k + 30) + (["r0005"] if k == 2 else []))
    cfg = JobConfig(manifest=(str(folder),), output=str(tmp_path / "out"), weights="random:tiny")
    first = run_books(cfg)
    assert first["old"] == 0 and first["todo"] == 89 and first["accounted"] == 90
    assert first["duplicates"] == {"r0005": 2}
    return cfg, folder


def full_answer(cfg: JobConfig, tmp_path) -> dict:
    """The same run on a copy of the output without the record: every file read."""
    copy = tmp_path / "copy"
    shutil.copytree(cfg.output, copy)
    accounted.forget(str(copy), cfg.storage())
    return run_books(JobConfig(manifest=cfg.manifest, output=str(copy), weights="random:tiny"))


def test_a_daily_run_reads_only_the_new_files_and_counts_as_a_full_run(daily, reads, tmp_path):
    cfg, folder = daily
    write_manifest(folder, "day3.parquet", ids(90, 100))
    reads.clear()
    got = run_books(cfg)
    assert reads == ["day3.parquet"] and got["old"] == 3 and got["todo"] == 10
    assert got["read"] == ["day3.parquet"]  # the pass reads the new file only
    full = full_answer(cfg, tmp_path)
    assert full["old"] == 0 and full["todo"] == 0
    for key in ("unique", "accounted", "by_status", "duplicates"):
        assert got[key] == full[key], key
    assert got["unique"] == got["accounted"] == 100 and got["by_status"] == {"ok": 99, "error": 1}
    reads.clear()
    again = run_books(cfg)  # nothing new: nothing read
    assert reads == [] and again["old"] == 4 and again["todo"] == 0 and again["accounted"] == 100


@pytest.mark.parametrize("change", ["changed", "removed", "repeats old ids", "results changed", "unreadable"])
def test_anything_the_record_does_not_describe_means_every_file_is_read(daily, reads, tmp_path, change):
    cfg, folder = daily
    expected_todo = 10
    write_manifest(folder, "day3.parquet", ids(90, 100))
    if change == "changed":  # an old file rewritten with five more ids
        write_manifest(folder, "day1.parquet", ids(30, 60) + ids(200, 205))
        expected_todo = 15
    elif change == "removed":
        os.remove(folder / "day0.parquet")
    elif change == "repeats old ids":
        write_manifest(folder, "day3.parquet", ids(90, 100) + ["r0007"])
    elif change == "results changed":  # a file written by another process since
        Ledger(cfg.output, cfg.storage()).write_rows(results_table([{"id": "r0001", "status": "error"}]))
    else:
        (tmp_path / "out" / "_index" / accounted.NAME).write_text("{not json")
    reads.clear()
    got = run_books(cfg)
    assert sorted(set(reads)) == sorted(os.listdir(folder)) and got["todo"] == expected_todo
    # the pass reads only the files holding ids left: the new one, and the changed one's new ids
    assert got["read"] == (["day1.parquet", "day3.parquet"] if change == "changed" else ["day3.parquet"])
    full = full_answer(cfg, tmp_path)
    for key in ("unique", "accounted", "by_status", "duplicates"):
        assert got[key] == full[key], key
    if change == "removed":
        # day0 gone: 30..99 and r0005 (of day2, no longer repeated); day0's other ids are not counted as left
        assert got["unique"] == got["accounted"] == 71 and got["duplicates"] == {}
    if change == "repeats old ids":
        assert got["duplicates"] == {"r0005": 2, "r0007": 2}


def test_a_run_that_leaves_ids_undone_forgets_the_record(daily, reads):
    cfg, folder = daily
    write_manifest(folder, "day3.parquet", ids(90, 100))
    partial = run_books(cfg, do=4)
    assert partial["accounted"] == 94
    assert accounted.load(cfg.output, cfg.storage()) is None
    reads.clear()
    rest = run_books(cfg)
    assert len(set(reads)) == 4 and rest["todo"] == 6 and rest["accounted"] == 100


def test_a_no_op_resume_of_the_job_reads_no_manifest_file(tmp_path, reads):
    folder = tmp_path / "manifest"
    write_manifest(folder, "m.parquet", ids(0, 60))
    cfg = JobConfig(manifest=(str(folder),), output=str(tmp_path / "out"), weights="random:tiny")
    Ledger(cfg.output, cfg.storage()).write_rows(results_table([{"id": i, "status": "ok"} for i in ids(0, 60)]))
    assert run_job(cfg) == 0 and reads == ["m.parquet"]  # nothing left: Ray is not started
    reads.clear()
    assert run_job(cfg) == 0 and reads == []
    t = Ledger(cfg.output, cfg.storage()).read_all()
    assert sorted(t.column("id").to_pylist()) == ids(0, 60)
