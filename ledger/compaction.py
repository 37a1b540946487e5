"""Compaction: the many small results files (one per finish task) merged into few large files.

A finish task writes one file of a few rows; a million rows would be tens of thousands of files, each a
request to list and read, mostly Parquet metadata. The driver merges small files into files of up to
`target_rows` rows: at the start of a run (after the ledger is repaired), every `IN_RUN_BATCHES` batches
during a run (this run's new files only, so a long run does not re-read what it merged already), and at the
end of a run.

Crash safety: a merged file is written whole before any file it replaces is removed, and it is named to sort
right after its newest input (ledger/files.py successor_name). A crash at any point leaves rows present twice, never
absent; the next run keeps one copy of each. Duplicate ids among the files of one merge (a row
written twice by crash retries) are resolved in the merge by the supersede rule (ledger/rule.py).

Every merged file has the results schema (io.results.RESULTS_SCHEMA) in its column order, so readers that
take `results/*.parquet` as one table (DuckDB, Polars, pandas, pyarrow.dataset, HF datasets) see one schema.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from rayinpaint.io.results import RESULTS_SCHEMA

from .files import READ_THREADS, Ledger, is_merged, successor_name
from .rule import place_order, superseded

log = logging.getLogger("rayinpaint.ledger")

TARGET_ROWS = 1_000_000
# A file this large on storage is left alone; smaller ones are merged again (a file closed at TARGET_ROWS is
# far larger: a results row takes well over 8 bytes).
SMALL_BYTES = 8 * 2**20
# A merge never holds more than this much of the rows in memory (wide prompts or error texts).
MAX_MERGE_BYTES = 512 * 2**20
IN_RUN_BATCHES = 256
# Merged files are sorted by id in row groups of this many rows, so a reader looking ids up skips the row groups
# whose min/max statistics exclude them.
ROW_GROUP_ROWS = 128 * 1024


@dataclass
class Compaction:
    """What one compaction did."""
    merged: int = 0           # files written
    replaced: int = 0         # files removed
    rows: int = 0             # rows written
    duplicates: int = 0       # superseded rows dropped
    written: list = field(default_factory=list)
    file_rows: dict = field(default_factory=dict)   # rows of each file left after the merge, where known


def conform(table: pa.Table) -> pa.Table:
    """`table` with the results schema's columns in its order (missing ones null) and types; columns the
    schema does not know are kept after them."""
    arrays, names = [], []
    for f in RESULTS_SCHEMA:
        col = table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        arrays.append(col.cast(f.type) if col.type != f.type else col)
        names.append(f.name)
    for name in table.column_names:
        if name not in RESULTS_SCHEMA.names:
            arrays.append(table.column(name))
            names.append(name)
    return pa.table(arrays, names=names)


def compact(ledger: Ledger, *, target_rows: int = TARGET_ROWS, new_only: bool = False,
            file_rows: dict | None = None) -> Compaction:
    """Merge the ledger's small files, oldest first, into files of up to `target_rows` rows. `new_only`:
    only files written by finish tasks (not earlier merges), for compactions during a run. `file_rows`: rows
    per file where known (the index has them): a file is small when it holds under half `target_rows` rows,
    and, where its rows are not known, when it is under SMALL_BYTES; large files are never read."""
    known = dict(file_rows or {})
    listing = ledger.listing()
    done = Compaction(file_rows={p: known[p] for p, _ in listing if p in known})
    candidates = [p for p, size in listing
                  if (known[p] < target_rows // 2 if p in known else size < SMALL_BYTES)
                  and not (new_only and is_merged(p))]
    if len(candidates) < 2:
        return done
    group, rows, nbytes = [], 0, 0
    step = READ_THREADS * 4
    for k in range(0, len(candidates), step):
        chunk = candidates[k:k + step]
        for path, t in zip(chunk, ledger.read_many(chunk)):
            if t is None:  # gone or quarantined meanwhile
                continue
            if t.num_rows >= target_rows // 2:  # large after all (rows not known before): left as it is
                done.file_rows[path] = t.num_rows
                continue
            group.append((path, t))
            rows, nbytes = rows + t.num_rows, nbytes + t.nbytes
            if rows >= target_rows or nbytes >= MAX_MERGE_BYTES:
                _merge(ledger, group, done)
                group, rows, nbytes = [], 0, 0
    if len(group) >= 2:
        _merge(ledger, group, done)
    if done.merged:
        log.info("merged %d file(s) into %d (%d row(s), %d duplicate(s) dropped)", done.replaced,
                 done.merged, done.rows, done.duplicates)
    return done


def _merge(ledger: Ledger, group: list, done: Compaction) -> None:
    tables = [conform(t) for _, t in group]
    merged = pa.concat_tables(tables, promote_options="permissive")
    order = place_order(np.repeat(np.arange(len(tables)), [t.num_rows for t in tables]),
                        np.concatenate([np.arange(t.num_rows) for t in tables]))
    drop = superseded(merged, order)
    if len(drop):
        keep = np.ones(merged.num_rows, bool)
        keep[drop] = False
        merged = merged.filter(pa.array(keep))
    merged = merged.sort_by("id")
    written = ledger.write_rows(merged, name=successor_name(group[-1][0]), row_group_rows=ROW_GROUP_ROWS)
    done.written.append(written)
    done.file_rows[written.split("://", 1)[-1] if "://" in written else written] = merged.num_rows
    for path, _ in group:
        remove_merged(ledger, path)
        done.file_rows.pop(path, None)
    done.merged += 1
    done.replaced += len(group)
    done.rows += merged.num_rows
    done.duplicates += len(drop)


def remove_merged(ledger: Ledger, path: str) -> None:
    """Remove one input of a merge once the merged file is written (a step of its own: tests kill the
    driver between two of them)."""
    ledger.remove(path)


class RunCompactor:
    """Merges this run's new files every `every` batches the driver receives (see the module docstring)."""

    def __init__(self, ledger: Ledger, target_rows: int = TARGET_ROWS, every: int = IN_RUN_BATCHES):
        self.ledger, self.target_rows, self.every = ledger, target_rows, every
        self.batches = 0

    def after_batch(self) -> None:
        self.batches += 1
        if self.batches % self.every == 0:
            compact(self.ledger, target_rows=self.target_rows, new_only=True)
