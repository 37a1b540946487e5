"""The ledger's index for the job's own bookkeeping, spilled to local disk (jobs/spill.py) so that the driver
holds one part of it at a time.

`spill_index` reads the index the way Ledger.index() does (the snapshot when it was made from exactly the files
listed, else the index columns of every results file, many at a time) but never holds it whole: each file's (or
snapshot row group's) rows are split by id into the parts of a PartedTable, with their place (file number,
position) as in a LedgerIndex, and also kept in file order in one local file, from which the end of the run
writes the next snapshot without reading those results files again.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .ledger import INDEX_SCHEMA, Ledger, LedgerIndex
from .snapshot import COLUMNS, SCHEMA as SNAPSHOT_SCHEMA, row_groups
from .spill import PartedTable, SpillFolder


class FileOrder:
    """Index rows (snapshot columns) in results-file order in one local Arrow IPC file, read back by range."""

    def __init__(self, path: str):
        self.path = path
        self.starts: list = []  # first row of each record batch
        self.rows = 0
        self._writer = None

    def add(self, t: pa.Table) -> None:
        if self._writer is None:
            self._writer = pa.ipc.new_file(self.path, SNAPSHOT_SCHEMA)
        for b in t.select(list(COLUMNS)).cast(SNAPSHOT_SCHEMA).combine_chunks().to_batches():
            if b.num_rows:
                self.starts.append(self.rows)
                self._writer.write_batch(b)
                self.rows += b.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def range(self, start: int, n: int) -> pa.Table:
        self.close()
        if not n:
            return SNAPSHOT_SCHEMA.empty_table()
        first = bisect.bisect_right(self.starts, start) - 1
        batches, k = [], first
        with pa.OSFile(self.path) as f:
            reader = pa.ipc.open_file(f)
            while k < len(self.starts) and self.starts[k] < start + n:
                batches.append(reader.get_batch(k))
                k += 1
        return pa.Table.from_batches(batches, SNAPSHOT_SCHEMA).slice(start - self.starts[first], n).combine_chunks()


@dataclass
class SpilledIndex:
    """A LedgerIndex in parts: `part(k)` is the LedgerIndex of the ids of part k (file numbers are global)."""

    parts: PartedTable                              # INDEX_SCHEMA rows, split by id
    order: FileOrder                                # the same rows in file order
    shards: list = field(default_factory=list)      # file paths by number, sorted by name
    sizes: list = field(default_factory=list)       # bytes of each file when listed
    file_rows: list = field(default_factory=list)   # rows of each file
    source: str = "files"                           # "files" or "snapshot"

    @property
    def rows(self) -> int:
        return self.parts.rows

    def part(self, k: int) -> LedgerIndex:
        return LedgerIndex(self.parts.part(k), self.shards)

    def rows_per_shard(self) -> dict:
        return dict(zip(self.shards, self.file_rows))

    def file_table(self, k: int) -> pa.Table:
        """The index rows of file k (snapshot.save_snapshot)."""
        start = int(sum(self.file_rows[:k]))
        return self.order.range(start, self.file_rows[k])

    def close(self) -> None:
        """Done adding: the files are complete."""
        self.parts.close()
        self.order.close()

    def drop(self) -> None:
        """Remove the files (not used again)."""
        self.parts.drop()
        self.order.close()
        if os.path.exists(self.order.path):
            os.remove(self.order.path)

    def _add(self, t: pa.Table, shard: np.ndarray, pos: np.ndarray) -> None:
        self.order.add(t)
        cols = [t.column(c) for c in COLUMNS] + [pa.array(shard, pa.int32()), pa.array(pos, pa.int32())]
        self.parts.add(pa.Table.from_arrays(cols, schema=INDEX_SCHEMA))


def spill_index(ledger: Ledger, spill: SpillFolder, parts: int) -> SpilledIndex:
    """The ledger's index (from its snapshot when current, else its files), in `parts` parts on local disk."""
    listing = ledger.listing()
    idx = SpilledIndex(spill.table(INDEX_SCHEMA, parts), FileOrder(spill.new_path("order")))
    snap = ledger.open_snapshot(listing) if listing else None
    if snap is not None:
        pf, rows = snap
        starts = np.concatenate([[0], np.cumsum(rows)])
        done = 0
        for t in row_groups(pf):
            at = np.arange(done, done + t.num_rows)
            shard = np.searchsorted(starts, at, side="right") - 1
            idx._add(t, shard, at - starts[shard])
            done += t.num_rows
        idx.shards, idx.sizes, idx.file_rows, idx.source = [p for p, _ in listing], [s for _, s in listing], rows, \
            "snapshot"
        idx.close()
        return idx
    for (path, size), t in ledger.iter_index(listing):
        if t is None:  # gone or quarantined
            continue
        idx._add(t, np.full(t.num_rows, len(idx.shards)), np.arange(t.num_rows))
        idx.shards.append(path)
        idx.sizes.append(size)
        idx.file_rows.append(t.num_rows)
    idx.close()
    return idx
