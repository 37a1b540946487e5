"""The bookkeeping's start and end (ledger/plan.py, ledger/index.py), on the path the job runs: the manifest's ids,
the results files' index, the repair, the ids left, the rows a pass lost and the totals, each checked against the
answer worked out by hand."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers_ledger import begin
from rayinpaint.io.results import results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.idset import IdSet, PartedIdSet
from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.index import local_index
from rayinpaint.ledger.plan import totals


def test_a_parted_id_set_answers_as_one_id_set():
    rng = np.random.default_rng(3)
    members = sorted(f"row-{i}" for i in rng.choice(10_000, 3_000, replace=False))
    asked = pa.array([f"row-{i}" for i in rng.integers(0, 10_000, 2_000)] + [None, "", "a", "zzz"])
    batches = [pa.array(members[k:k + 400]) for k in range(0, 3_000, 400)]  # sorted across batches
    parted = PartedIdSet.build(batches)
    assert len(parted) == 3_000 and len(parted.parts) == 8
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
    """Start, then account (with a few rows 'recorded by this run') on a copy of the same output."""
    n = 400
    out = tmp_path / name / "out"
    shutil.copytree(tmp_path / "template", out)
    cfg = JobConfig(manifest=(str(tmp_path / "manifest"),), output=str(out), weights="random:tiny",
                    retry_errors=retry_errors)
    ledger = Ledger(str(out), cfg.storage())
    with local_index() as index:
        plan = begin(ledger, cfg.manifest, cfg.column_map(), cfg.storage(), index, retry_errors=retry_errors)
        left = sorted(index.lost().to_pylist())
        index.add_recorded(pa.table({"id": left[:25], "status": ["ok"] * 25, "error_kind": [None] * 25,
                                     "prompt_truncated": [True] * 25}))
        counts, accounted = totals(plan)
        skip = sorted(i for b in index.ids(index.skipped_query(plan.skipped)) for i in b.to_pylist())
        return {"unique": plan.unique, "dups": plan.duplicates, "missing": plan.missing,
                "todo": left, "skip": skip, "done": plan.done, "missing_after": sorted(index.lost().to_pylist()),
                "ledger": sorted(zip(*(Ledger(str(out), cfg.storage()).read_all().column(c).to_pylist()
                                       for c in ("id", "status")))),
                "outcome": (counts.by_status, counts.by_kind, plan.unique, accounted, counts.prompts_truncated,
                            counts.unchanged_examples, accounted == plan.unique), "n": n}


@pytest.mark.parametrize("retry_errors", [False, True])
def test_the_start_and_the_totals_give_the_right_answers(tmp_path, retry_errors):
    _manifest(tmp_path / "manifest", 400)
    _ledger(str(tmp_path / "template"), 400)
    one = _books(tmp_path, "one", retry_errors)
    assert one["unique"] == 402 and one["dups"] == {"r0003": 3, "r0100": 2, "r0101": 2}
    assert len(one["missing"]) == 2
    # best row per id: ok 0-142 (133-142 were errors, then ok), error 143-199, unchanged 200-219, ok r9999
    assert one["done"] == (143 + 20 + 1 if retry_errors else 220 + 1)
    assert len(one["todo"]) == (57 + 180 if retry_errors else 180)
    assert one["todo"][0] == ("r0143" if retry_errors else "r0220")
    assert one["missing_after"] == one["todo"][25:]
    ledger_ids = [i for i, _ in one["ledger"]]
    assert len(ledger_ids) == len(set(ledger_ids))  # every id at most once after the repair
    by_status, by_kind, unique, accounted, truncated, unchanged, complete = one["outcome"]
    assert accounted == unique - len(one["missing_after"]) and not complete
    # the skipped ids: done (and errors unless retried) and the ids the manifest alone settles
    settled = ["r0003", "r0100", "r0101"] + one["missing"]
    assert set(settled) <= set(one["skip"]) and not set(one["todo"]) & set(one["skip"])
    # totals: the repaired results, the 5 settled rows and this run's 25 rows
    # (the repeated ids r0003, r0100, r0101 have ok rows already: only the two rows without an id are written)
    errors_left = 0 if retry_errors else 57
    assert by_status == {"ok": 143 + 1 + 25, "unchanged": 20, "error": errors_left + 2}
    assert by_kind == {"missing_id": 2, **({"not_found": 57} if errors_left else {})}
    cut = [i for i in range(0, 220) if i % 7 == 0 and (errors_left or not 143 <= i < 200)]  # r9999: 9999 % 7 = 3
    assert truncated == 25 + len(cut)
    assert list(unchanged) == [f"r{i:04d}" for i in range(200, 205)]


@pytest.mark.parametrize("done", [300, 30])
def test_the_main_pass_is_never_a_crash_retry_pass(tmp_path, monkeypatch, done):
    """Whether the main pass keeps the ids left (`include`, fewer than the done ones) or skips the done ones
    (`exclude`), it runs as a main pass; only the passes over rows a failed worker lost are retry passes."""
    from rayinpaint.jobs import pipeline
    from rayinpaint.jobs.tally import RunTally
    from rayinpaint.ledger.index import Counts
    from rayinpaint.ledger.manifest import Scan
    from rayinpaint.ledger.plan import Plan

    ids = [f"r{i:04d}" for i in range(400)]
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    ledger.write_rows(results_table([{"id": i, "status": "ok"} for i in ids[:done]]))
    with local_index() as index:
        index.add_manifest_ids(pa.array(ids), 0)
        index.add_results(ledger, ledger.listing())
        plan = Plan(index, Scan([], [], []), 0, done, Counts(), 400, {}, [], skipped=("ok", "unchanged", "error"))
        plan.todo = index.plan(plan.skipped)
        tally = RunTally(0, recorded=index)
        passes = []

        def fake_pass(cfg, plan_, sink, tally_, **kw):
            passes.append(kw)
            asked = pa.array(ids)
            if kw.get("include") is not None:
                kept = np.asarray(kw["include"].contains(asked))
            else:
                kept = ~np.asarray(kw["exclude"].contains(asked))
            lost = {"r0399"} if len(passes) == 1 else set()  # the first pass loses one row
            got = [i for i, k in zip(ids, kept) if k and i not in lost]
            sink(pa.table({"id": got, "status": ["ok"] * len(got), "error_kind": pa.nulls(len(got), pa.string()),
                           "error": pa.nulls(len(got), pa.string())}))

        monkeypatch.setattr(pipeline, "guarded_pass", fake_pass)
        pipeline.process(JobConfig(manifest=("x",), output=str(tmp_path)), None, None, plan, tally, 0.0)
        assert not len(index.lost())
    assert [p.get("retry_pass", False) for p in passes] == [False, True]
    assert ("include" in passes[0]) == (400 - done <= done)
    assert tally.processed == 400 - done  # every id left once, the lost one on the retry pass
