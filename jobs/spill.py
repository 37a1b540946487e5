"""Tables of millions of ids kept on the driver's local disk, split into parts by id, so the driver holds one
part at a time and its memory does not grow with the number of ids.

The driver's bookkeeping (the manifest's ids, the ledger's index, the rows a run recorded) is O(ids); held in
memory it costs about 90 bytes per id at 10M ids (9 GB at 100M). Every question the driver asks of those ids
(which are duplicated, which are done, which are left, which came back) is a question about one id at a time,
so it can be answered part by part when every table is split by the same function of the id (idset.buckets):
an id's rows in the manifest, the index and this run's rows are always in the same part. Parts hold about
PART_IDS ids each; a job of fewer ids has one part.

Each part is an Arrow IPC stream file in a temporary folder (`$RAYINPAINT_SPILL_DIR`, else the system's temp
folder), removed when the run ends; LZ4-compressed, so 100M ids cost a few GB of local disk.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa

from .idset import buckets, one_array

PART_IDS = 1 << 20   # ids per part (what the driver holds at a time)
MAX_PARTS = 256      # idset.buckets returns one byte: 256 parts hold 268M ids at PART_IDS (more: larger parts)
_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def parts_for(ids: int) -> int:
    """How many parts `ids` ids are split into."""
    return max(1, min(MAX_PARTS, math.ceil(ids / PART_IDS)))


class SpillFolder:
    """A temporary folder for the run's spilled tables; `with SpillFolder() as folder:` removes it."""

    def __init__(self):
        base = os.environ.get("RAYINPAINT_SPILL_DIR") or None
        if base:
            os.makedirs(base, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix="rayinpaint-spill-", dir=base)
        self._count = 0

    def new_path(self, stem: str) -> str:
        """A path in the folder that no other call returned."""
        self._count += 1
        return os.path.join(self.path, f"{stem}-{self._count}")

    def table(self, schema: pa.Schema, parts: int) -> "PartedTable":
        return PartedTable(self.new_path("t"), schema, parts)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> "SpillFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PartedTable:
    """Rows of `schema` (with an `id` column) split into `parts` files by id; append with `add`, then `part(k)`
    reads part k back whole (appending after a read is allowed)."""

    def __init__(self, folder: str, schema: pa.Schema, parts: int):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.schema, self.parts = folder, schema, parts
        self.rows = 0
        self._writers: dict = {}

    def _path(self, k: int) -> str:
        return os.path.join(self.folder, f"part-{k:03d}.arrow")

    def add(self, table: pa.Table, part: int | None = None) -> None:
        """Append `table`'s rows to their parts. `part`: every row is known to be in that part (the caller split
        them): written there and the part's file closed, so a table written part after part keeps one file open."""
        if not table.num_rows:
            return
        table = table.select(self.schema.names).cast(self.schema)
        self.rows += table.num_rows
        if part is not None or self.parts == 1:
            k = 0 if part is None else part
            self._writer(k).write_table(table)
            if part is not None:
                self._writers.pop(k).close()
            return
        where = buckets(table.column("id"), self.parts)
        order = np.argsort(where, kind="stable")  # one copy of the rows, grouped by part, each in its order
        counts = np.bincount(where, minlength=self.parts)
        grouped, start = table.take(pa.array(order)), 0
        for k in np.flatnonzero(counts):
            self._writer(int(k)).write_table(grouped.slice(start, int(counts[k])))
            start += int(counts[k])

    def _writer(self, k: int):
        if k not in self._writers:
            # A new stream file per writer: appending to a closed IPC stream is not possible, so a part written
            # again after a read gets a second file (read back together, in order).
            n = sum(1 for name in os.listdir(self.folder) if name.startswith(f"part-{k:03d}."))
            path = self._path(k) if n == 0 else self._path(k) + f".{n}"
            self._writers[k] = pa.ipc.new_stream(path, self.schema, options=_OPTIONS)
        return self._writers[k]

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def batches(self, k: int):
        """The record batches of part k, in the order added, one at a time."""
        w = self._writers.pop(k, None)
        if w is not None:
            w.close()
        names = sorted((n for n in os.listdir(self.folder) if n.startswith(f"part-{k:03d}.")),
                       key=lambda n: (len(n), n))
        for name in names:
            with pa.OSFile(os.path.join(self.folder, name)) as f:
                yield from pa.ipc.open_stream(f)

    def part(self, k: int) -> pa.Table:
        """Every row of part k, in the order added (one table; its chunks combined)."""
        return pa.Table.from_batches(list(self.batches(k)), schema=self.schema).combine_chunks()

    def drop(self) -> None:
        """Remove the files (the table is not used again)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def ids(self, k: int) -> pa.Array:
        return one_array(self.part(k).column("id"))
