"""The driver's bookkeeping in parts (jobs/spill.py, jobs/books.py): the answers with many parts (a few ids
each) are exactly the answers with one part (every id in memory at once), which is what lets the driver's memory
stay flat as the ids grow."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayinpaint.io.results import results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.jobs import spill as spill_mod
from rayinpaint.jobs.accounting import RECORDED_SCHEMA
from rayinpaint.jobs.books import outcome_of, reconcile
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.idset import IdSet, PartedIdSet, buckets
from rayinpaint.jobs.index_spill import spill_index
from rayinpaint.jobs.ledger import Ledger
from rayinpaint.jobs.manifest_ids import ID_SCHEMA, scan_manifest
from rayinpaint.jobs.snapshot import save_snapshot
from rayinpaint.jobs.spill import SpillFolder


def test_a_parted_table_keeps_every_row_once_in_its_ids_part(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYINPAINT_SPILL_DIR", str(tmp_path / "spill"))
    with SpillFolder() as folder:
        t = folder.table(ID_SCHEMA, 5)
        ids = [f"x{i}" for i in range(500)]
        t.add(pa.table({"id": ids[:300]}))
        assert len(t.part(2)) > 0  # a part read back, then more rows added to it
        t.add(pa.table({"id": ids[300:] + ids[:10]}))
        got = [t.ids(k).to_pylist() for k in range(5)]
        assert sorted(sum(got, [])) == sorted(ids + ids[:10]) and t.rows == 510
        where = buckets(pa.array(ids), 5)
        for k in range(5):
            mine = [i for i, b in zip(ids, where) if b == k]
            assert got[k] == mine + [i for i in ids[:10] if i in mine]  # in the order added
        assert (tmp_path / "spill").exists()
    assert not any((tmp_path / "spill").iterdir())  # removed at the end


def test_a_parted_id_set_answers_as_one_id_set(tmp_path):
    rng = np.random.default_rng(3)
    members = [f"row-{i}" for i in rng.choice(10_000, 3_000, replace=False)]
    asked = pa.array([f"row-{i}" for i in rng.integers(0, 10_000, 2_000)] + [None, ""])
    with SpillFolder() as folder:
        t = folder.table(ID_SCHEMA, 7)
        t.add(pa.table({"id": members}))
        parted = PartedIdSet.build(t)
        assert len(parted) == 3_000 and len(parted.parts) == 7
        assert parted.contains(asked).tolist() == IdSet(pa.array(members)).contains(asked).tolist()


def _manifest(folder, n: int):
    """Two manifest files: ids 0..n-1, with three ids repeated and two rows without an id."""
    folder.mkdir()
    ids = [f"r{i:04d}" for i in range(n)]
    first = ids[: n // 2] + ["r0003", None]
    second = ids[n // 2:] + ["r0003", "r0100", "", "r0101"]
    for k, part in enumerate((first, second)):
        boxes = [[[0.0, 0.0, 8.0, 8.0]]] * len(part)
        pq.write_table(pa.table({"id": part, "image": [f"/img/{i}.png" for i in part], "boxes": boxes}),
                       str(folder / f"m{k}.parquet"))
    return ids


def _ledger(output: str, n: int):
    """Done, error and unchanged rows, some ids twice across files (an earlier crash), one id not in the
    manifest."""
    ledger = Ledger(output, StorageOptions())
    row = lambda i, status: {"id": f"r{i:04d}", "status": status, "prompt_truncated": i % 7 == 0,  # noqa: E731
                             "error_kind": "not_found" if status == "error" else None}
    ledger.write_rows(results_table([row(i, "ok") for i in range(0, n // 3)] + [row(9999, "ok")]))
    ledger.write_rows(results_table([row(i, "error") for i in range(n // 3, n // 2)]))
    ledger.write_rows(results_table([row(i, "unchanged") for i in range(n // 2, n // 2 + 20)]
                                    + [row(i, "error") for i in range(0, 30)]  # superseded by the ok rows
                                    + [row(i, "ok") for i in range(n // 3, n // 3 + 10)]))  # supersede errors
    return ledger


def _books(tmp_path, name: str, retry_errors: bool) -> dict:
    """Scan, reconcile and account (with a few rows 'recorded by this run') on a copy of the same output."""
    n = 400
    out = tmp_path / name / "out"
    shutil.copytree(tmp_path / "template", out)
    cfg = JobConfig(manifest=(str(tmp_path / "manifest"),), output=str(out), weights="random:tiny",
                    retry_errors=retry_errors)
    with SpillFolder() as folder:
        scan = scan_manifest(cfg, cfg.storage(), folder)
        ledger = Ledger(str(out), cfg.storage())
        todo = reconcile(cfg, ledger, scan, folder)
        recorded = folder.table(RECORDED_SCHEMA, scan.parts)
        left = sorted(todo.missing(recorded).to_pylist())
        recorded.add(pa.table({"id": left[:25], "status": ["ok"] * 25, "error_kind": [None] * 25,
                               "prompt_truncated": [True] * 25}, schema=RECORDED_SCHEMA))
        o = outcome_of(todo, scan, recorded, max_error_rate=0.5)
        skip = sorted(sum((todo.skip.ids(k).to_pylist() for k in range(todo.skip.parts)), []))
        return {"parts": scan.parts, "unique": scan.unique, "dups": scan.duplicates, "missing": scan.missing,
                "todo": left, "skip": skip, "done": todo.done, "missing_after": sorted(todo.missing(recorded).to_pylist()),
                "ledger": sorted(zip(*(Ledger(str(out), cfg.storage()).read_all().column(c).to_pylist()
                                       for c in ("id", "status")))),
                "outcome": (o.by_status, o.by_kind, o.unique_ids, o.accounted, o.prompts_truncated,
                            o.unchanged_examples, o.complete), "n": n}


@pytest.mark.parametrize("retry_errors", [False, True])
def test_many_parts_give_the_answers_of_one(tmp_path, monkeypatch, retry_errors):
    _manifest(tmp_path / "manifest", 400)
    _ledger(str(tmp_path / "template"), 400)
    one = _books(tmp_path, "one", retry_errors)
    monkeypatch.setattr(spill_mod, "PART_IDS", 37)  # 400 ids and 2 missing-id names in 11 parts
    many = _books(tmp_path, "many", retry_errors)
    assert one["parts"] == 1 and many["parts"] == 11
    for key in one:
        if key != "parts":
            assert many[key] == one[key], key
    # and the answers are the right ones
    assert one["unique"] == 402 and one["dups"] == {"r0003": 3, "r0100": 2, "r0101": 2}
    assert len(one["missing"]) == 2
    # best row per id: ok 0-142 (133-142 were errors, then ok), error 143-199, unchanged 200-219, ok r9999
    assert one["done"] == (143 + 20 + 1 if retry_errors else 220 + 1)
    assert len(one["todo"]) == (57 + 180 if retry_errors else 180)
    assert one["todo"][0] == ("r0143" if retry_errors else "r0220")
    assert one["missing_after"] == one["todo"][25:]
    ledger_ids = [i for i, _ in one["ledger"]]
    assert len(ledger_ids) == len(set(ledger_ids))  # every id at most once after the reconcile
    by_status, _, unique, accounted, _, _, complete = one["outcome"]
    assert accounted == unique - len(one["missing_after"]) and not complete


def test_a_snapshot_made_from_a_spilled_index_equals_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(spill_mod, "PART_IDS", 5)
    ledger = _ledger(str(tmp_path / "out"), 120)
    truth = ledger.index(use_snapshot=False)
    with SpillFolder() as folder:
        idx = spill_index(ledger, folder, 9)
        assert idx.source == "files" and idx.rows == truth.table.num_rows
        assert save_snapshot(ledger, idx) > 0
        from_snapshot = spill_index(ledger, folder, 9)
        assert from_snapshot.source == "snapshot"
        for k in range(9):
            assert from_snapshot.part(k).table.equals(idx.part(k).table)
    got = ledger.index()
    assert got.source == "snapshot" and got.table.equals(truth.table)


@pytest.mark.parametrize("done", [300, 30])
def test_the_main_pass_is_never_a_crash_retry_pass(tmp_path, monkeypatch, done):
    """Whether the main pass keeps the ids left (`include`, fewer than the done ones) or skips the done ones
    (`exclude`), it runs as a main pass; only the passes over rows a failed worker lost are retry passes."""
    from rayinpaint.jobs import pipeline
    from rayinpaint.jobs.accounting import RunTally
    from rayinpaint.jobs.books import Todo

    monkeypatch.setattr(spill_mod, "PART_IDS", 40)
    ids = [f"r{i:04d}" for i in range(400)]
    with SpillFolder() as folder:
        todo_t, skip_t = folder.table(ID_SCHEMA, 10), folder.table(ID_SCHEMA, 10)
        todo_t.add(pa.table({"id": ids[done:]}))
        skip_t.add(pa.table({"id": ids[:done]}))
        todo = Todo(ids=todo_t, skip=skip_t, done=done, index=None, settled=None, file_rows={})
        tally = RunTally(0, recorded_rows=folder.table(RECORDED_SCHEMA, 10))
        passes = []

        def fake_pass(cfg, plan, sink, tally_, **kw):
            passes.append(kw)
            asked = pa.array(ids)
            if kw.get("include") is not None:
                kept = np.asarray(kw["include"].contains(asked))
            else:
                kept = ~np.asarray(kw["exclude"].contains(asked)) if kw.get("exclude") is not None \
                    else np.ones(len(ids), bool)
            lost = {"r0399"} if len(passes) == 1 else set()  # the first pass loses one row
            got = [i for i, k in zip(ids, kept) if k and i not in lost]
            sink(pa.table({"id": got, "status": ["ok"] * len(got), "error_kind": pa.nulls(len(got), pa.string()),
                           "error": pa.nulls(len(got), pa.string())}))

        monkeypatch.setattr(pipeline, "guarded_pass", fake_pass)
        pipeline.process(JobConfig(manifest=("x",), output=str(tmp_path)), None, None, todo, tally, 0.0)
    assert [p.get("retry_pass", False) for p in passes] == [False, True]
    assert ("include" in passes[0]) == (400 - done <= done)
    assert tally.processed == 400 - done  # every id left once, the lost one on the retry pass
