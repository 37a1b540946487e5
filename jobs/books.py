"""The driver's bookkeeping over every id, part by part (jobs/spill.py): what is left to do at the start, which
rows a pass lost, and the accounting at the end. Each step reads one part of the manifest's ids, the ledger's
index and this run's rows at a time, so the driver's memory does not grow with the number of ids.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .accounting import RECORDED_SCHEMA, Outcome
from .compaction import compact
from .idset import PartedIdSet, buckets, is_in, per_part
from .index_spill import SpilledIndex, spill_index
from .ledger import DONE_STATUSES, Ledger, rows_to_drop
from .overview import EXAMPLES_PER_KIND
from .manifest_ids import ID_SCHEMA, ManifestScan, settled_rows
from .spill import PartedTable, SpillFolder

log = logging.getLogger("rayinpaint.job")


@dataclass(frozen=True)
class Todo:
    """The rows this run processes (ids not yet done) and the ids a pass must skip (done, or settled by the
    manifest alone), both in parts."""
    ids: PartedTable     # manifest ids still to do (before --limit)
    skip: PartedTable    # ids done (per the ledger) or settled by the manifest alone
    done: int            # ids already done
    index: SpilledIndex  # the reconciled ledger at the start, as read (for the accounting and the snapshot)
    settled: pa.Table    # rows the manifest alone settled, written by this run's start
    file_rows: dict      # rows of each results file after the start's merge (large files are not read again)

    @property
    def count(self) -> int:
        return self.ids.rows

    def selector(self) -> dict:
        """What a pass's read tasks test ids against: the smaller of `include` (the ids to do) and `exclude` (the
        ids to skip), as a PartedIdSet whose parts the driver builds one at a time."""
        if self.ids.rows <= self.skip.rows:
            return {"include": PartedIdSet.build(self.ids)}
        return {"exclude": PartedIdSet.build(self.skip) if self.skip.rows else None}

    def missing(self, recorded: PartedTable) -> pa.Array:
        """Ids to do that this run has not recorded (rows a failed worker lost)."""
        lost = []
        for k in range(self.ids.parts):
            ids = self.ids.ids(k)
            if len(ids):
                lost.append(ids.filter(pa.array(~is_in(ids, recorded.ids(k)))))
        return pa.concat_arrays(lost) if lost else pa.array([], pa.string())


def skipped_statuses(cfg) -> tuple:
    """Statuses whose ids a run does not process again: done ones, and errors unless --retry-errors."""
    return DONE_STATUSES if cfg.retry_errors else DONE_STATUSES + ("error",)


def _split(ids: pa.Array, parts: int, k: int) -> pa.Array:
    """The ids of `ids` (a few) that fall in part k."""
    return ids.filter(pa.array(buckets(ids, parts) == k)) if parts > 1 else ids


def reconcile(cfg, ledger: Ledger, scan: ManifestScan, spill: SpillFolder) -> Todo:
    """Repair the ledger (duplicates from earlier crashes; error rows about to be retried), record the rows the
    manifest alone settles, and work out what is left to do."""
    settled = settled_rows(scan)
    settled_ids = settled.column("id").combine_chunks()
    idx = spill_index(ledger, spill, scan.parts)
    if _repair(cfg, ledger, idx, settled_ids, scan.parts):
        idx.drop()
        idx = spill_index(ledger, spill, scan.parts)
    todo, skip = spill.table(ID_SCHEMA, scan.parts), spill.table(ID_SCHEMA, scan.parts)
    new_settled, done = [], 0
    statuses = skipped_statuses(cfg)
    for k in range(scan.parts):
        part, ids, settled_k = idx.part(k), scan.ids.ids(k), _split(settled_ids, scan.parts, k)
        done_k = part.ids_with_status(statuses)
        done += len(done_k)
        todo.add(pa.table({"id": ids.filter(pa.array(~(is_in(ids, done_k) | is_in(ids, settled_k))))}), part=k)
        skip.add(pa.table({"id": pa.concat_arrays([done_k.cast(pa.string()), settled_k])}), part=k)
        new_settled.append(settled_k.filter(pa.array(~is_in(settled_k, part.ids))))
    todo.close()
    skip.close()
    fresh = pa.concat_arrays(new_settled) if new_settled else pa.array([], pa.string())
    new_rows = settled.filter(pa.array(is_in(settled_ids, fresh)))
    if new_rows.num_rows:
        ledger.write_rows(new_rows)
    merged = compact(ledger, file_rows=idx.rows_per_shard())
    t = Todo(ids=todo, skip=skip, done=done, index=idx, settled=new_rows, file_rows=merged.file_rows)
    n = t.count if cfg.limit is None else min(t.count, cfg.limit)
    log.info("ledger: %d row(s) already done; %d to process now", done, n)
    return t


def _repair(cfg, ledger: Ledger, idx: SpilledIndex, settled_ids: pa.Array, parts: int) -> bool:
    """Remove superseded rows and, with --retry-errors, the error rows of ids about to be retried (not the ones
    the manifest settles); True when anything was removed (the index must be read again)."""
    shard, pos = [], []
    for k in range(parts):
        part = idx.part(k)
        retry = None
        if cfg.retry_errors:
            err_ids = part.ids_with_status(["error"])
            retry = err_ids.filter(pa.array(~is_in(err_ids, _split(settled_ids, parts, k))))
        drop = rows_to_drop(part, retry)
        shard.append(part.table.column("shard").to_numpy()[drop])
        pos.append(part.table.column("pos").to_numpy()[drop])
    shard, pos = np.concatenate(shard), np.concatenate(pos)
    if len(shard):
        ledger.drop_places(idx.shards, shard, pos)
    return bool(len(shard))


def outcome_of(todo: Todo, scan: ManifestScan, recorded: PartedTable, max_error_rate: float,
            max_unchanged_rate: float = 1.0) -> Outcome:
    """The output as a whole: the start's index, plus the rows the start settled and the rows this run
    recorded, part by part."""
    by_status, by_kind, accounted, truncated, unchanged = Counter(), Counter(), 0, 0, []
    for k in range(scan.parts):
        rows = pa.concat_tables([_split_rows(todo.settled, scan.parts, k), recorded.part(k)],
                                promote_options="permissive")
        part = todo.index.part(k).with_rows(rows)
        s, e = part.counts()
        by_status.update(s)
        by_kind.update(e)
        accounted += int(is_in(part.ids, scan.ids.ids(k)).sum())
        truncated += part.prompts_truncated()
        if len(unchanged) < 200:
            unchanged += part.ids_with_status(["unchanged"]).slice(0, 200).to_pylist()
    return Outcome(by_status=dict(by_status), by_kind=dict(by_kind), unique_ids=scan.unique, accounted=accounted,
                   duplicates=scan.duplicates, prompts_truncated=truncated, max_error_rate=max_error_rate,
                   max_unchanged_rate=max_unchanged_rate,
                   unchanged_examples=tuple(sorted(unchanged)[:EXAMPLES_PER_KIND]))


def _split_rows(rows: pa.Table, parts: int, k: int) -> pa.Table:
    rows = rows.select(RECORDED_SCHEMA.names)
    return rows.filter(pa.array(buckets(rows.column("id"), parts) == k)) if parts > 1 else rows


def left_to_do(cfg, scan: ManifestScan, idx: SpilledIndex, spill: SpillFolder) -> tuple[int, PartedTable]:
    """(ids done, the ids left, in parts) without changing anything (the dry run)."""
    statuses = skipped_statuses(cfg)
    done = 0
    left = spill.table(ID_SCHEMA, scan.parts)
    for k in range(scan.parts):
        done_k = idx.part(k).ids_with_status(statuses)
        ids = scan.ids.ids(k)
        left.add(pa.table({"id": ids.filter(pa.array(~is_in(ids, done_k.cast(pa.string()))))}), part=k)
        done += len(done_k)
    left.close()
    return done, left


def among(ids: pa.Array, table: PartedTable) -> np.ndarray:
    """One bool per id of `ids`: whether it is in `table` (reads each part of `table` the ids fall in)."""
    return per_part(ids, table.parts, lambda k, part_ids: is_in(part_ids, table.ids(k)))
