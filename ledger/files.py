"""The results files: `{output}/results/part-*.parquet`, the single source of truth for what is done.

Each file is written whole (atomic rename locally, one PUT on object stores), so a file is either complete or
absent under its final name, and it never changes under its name: rewrites and merges write new files. Names
sort by time (`new_name`), so "the newest file" is the last in name order; a file that replaces others takes a
name that sorts right after the newest of them (`successor_name`), so "the newest wins" keeps its meaning.

An id found in several files (a crash between writing a merged file and removing its inputs, or a retry of an
error row) keeps one row by the rule of ledger/rule.py. Rewrites always write the new file before removing the
old one, so a crash at any point leaves duplicates (resolved by the next run), never a lost row. A file that
cannot be read (a foreign or damaged file) is moved to `{output}/_quarantine/`, never silently used.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import RowError
from rayinpaint.io.results import RESULTS_SCHEMA
from rayinpaint.io.retry import call_with_retries, classify
from rayinpaint.io.storage import filesystem, join_uri, row_error_for, write_bytes

from .layout import Layout

log = logging.getLogger("rayinpaint.ledger")

# The index columns of a results row: what the bookkeeping reads of each file, and keeps of each row a run records.
INDEX_SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()), ("error_kind", pa.string()),
                          ("prompt_truncated", pa.bool_())])
_OPTIONAL = {"prompt_truncated"}  # read as null from files written before the column existed
# Files read at once: each read is one or two requests of tens of milliseconds on an object store, so the index
# of many files is read in (files / READ_THREADS) round trips instead of one per file.
READ_THREADS = 32
READ_ROWS = 1 << 20  # rows whose index columns iter_index reads at once (bounds the driver's memory)


_name_clock = {"last": 0}
_name_lock = threading.Lock()


def new_name() -> str:
    """Sortable by time first, unique by the random tail. The clock is read once (reading it twice named a file
    written just after a second boundary as if it came a second earlier), and within a process each name's time
    is later than the last one's, even if the wall clock steps back."""
    with _name_lock:
        ns = _name_clock["last"] = max(time.time_ns(), _name_clock["last"] + 1)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9))
    return f"part-{stamp}-{ns % 10**9:09d}-{uuid.uuid4().hex[:8]}.parquet"


def successor_name(path: str) -> str:
    """A new file name that sorts right after `path`'s and before any file written later ('_' sorts after
    '.'): the name of a file that replaces `path` (a rewrite, or a merge whose newest input is `path`)."""
    stem = path.rstrip("/").rsplit("/", 1)[-1][: -len(".parquet")].split("_", 1)[0]
    return f"{stem}_{uuid.uuid4().hex[:8]}.parquet"


def is_merged(path: str) -> bool:
    """Written by a merge or a rewrite (successor_name), not by a finish task."""
    return "_" in path.rsplit("/", 1)[-1]


def write_file(results_uri: str, table: pa.Table, storage, name: str | None = None,
               row_group_rows: int | None = None) -> str:
    """Write `table` as one new, complete results file under `results_uri` (named `name`, else a new name that
    sorts after every file so far); returns its URI. The one way any process (driver or finish task) adds rows
    to the ledger."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_rows)
    uri = join_uri(results_uri, name or new_name())
    write_bytes(uri, buf.getvalue(), storage)
    return uri


class Ledger:
    """The results files of one output: list, read (whole or the index columns), write, rewrite, quarantine."""

    def __init__(self, output: str, storage):
        self.layout = Layout(output)
        self.output = self.layout.root
        self.storage = storage
        self.uri = self.layout.results
        self.fs, self.path = filesystem(self.uri, storage)

    def listing(self) -> list[tuple[str, int]]:
        """(path, size in bytes) of every results file, sorted by name (oldest first)."""
        try:
            # refresh: files are written by other processes (the finish tasks); a cached listing misses them.
            entries = self.fs.ls(self.path, detail=True, refresh=True)
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            p = e["name"]
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("part-") and name.endswith(".parquet") and e.get("type", "file") == "file":
                out.append((p, int(e.get("size") or 0)))
        return sorted(out, key=lambda e: e[0].rsplit("/", 1)[-1])

    def paths(self) -> list[str]:
        return [p for p, _ in self.listing()]

    def _quarantine(self, path: str, why: str) -> None:
        name = path.rsplit("/", 1)[-1]
        qdir = self.layout.quarantine
        _, qpath = filesystem(qdir, self.storage)
        log.warning("results file %s is unreadable (%s); moved to %s", name, why, qdir)
        try:
            self.fs.makedirs(qpath, exist_ok=True)
        except Exception:  # noqa: BLE001 - object stores have no folders
            pass
        self.fs.mv(path, f"{qpath}/{name}")

    def _read_index(self, path: str) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            t = pf.read(columns=[c for c in INDEX_SCHEMA.names if c in names or c not in _OPTIONAL])
        for f in INDEX_SCHEMA:
            if f.name not in t.column_names:
                t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
        return t.select(INDEX_SCHEMA.names)

    def _read(self, path: str, columns=None) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns)

    def _read_checked(self, path: str, read) -> pa.Table | None:
        """`read(path)` with retries; None when the file is gone (a concurrent merge removed it) or unreadable
        (moved to _quarantine). Storage trouble is raised: a good file is never quarantined."""
        try:
            return call_with_retries(lambda: read(path), self.storage.retry_policy)
        except Exception as e:  # noqa: BLE001 - sorted below
            verdict = classify(e)
            if verdict == "not_found":
                return None
            if verdict != "permanent":
                err = row_error_for(e, path, "read", self.storage.max_attempts)
                raise RowError(err.kind, f"results file {err.message}") from None
            self._quarantine(path, f"{type(e).__name__}: {e}")
            return None

    def read_many(self, paths: list[str], columns_only: bool = False, checked: bool = True) -> list:
        """Every file of `paths` (whole, or its index columns only), READ_THREADS at a time, in order.
        `checked`: as `_read_checked` (None for a file gone or quarantined), else any error is raised."""
        read = self._read_index if columns_only else self._read
        one = (lambda p: self._read_checked(p, read)) if checked else read
        if len(paths) <= 1:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as ex:
            return list(ex.map(one, paths))

    def iter_index(self, listing: list):
        """(entry, index columns or None) for each (path, size) of `listing`, in order, many files at once but
        about READ_ROWS rows at a time at most: rows per byte are learnt from the files read so far (merged
        files hold up to a million rows; finish tasks' files a few)."""
        k, per_byte = 0, None
        while k < len(listing):
            n, rows = 0, 0.0
            while k + n < len(listing) and n < READ_THREADS * 4:
                guess = listing[k + n][1] * per_byte if per_byte is not None else READ_ROWS
                if n and rows + guess > READ_ROWS:
                    break
                rows, n = rows + guess, n + 1
            chunk = listing[k:k + n]
            for (p, size), t in zip(chunk, self.read_many([p for p, _ in chunk], columns_only=True)):
                if t is not None and size:
                    per_byte = max(per_byte or 0.0, t.num_rows / size)
                yield (p, size), t
            k += n

    def remove(self, path: str) -> None:
        self.fs.rm(path)

    def drop_rows(self, path: str, rows) -> int:
        """Rewrite the file `path` without its rows `rows` (positions; new file first, then the old one
        removed); returns the rows removed."""
        full = self._read(path)
        keep = np.ones(full.num_rows, bool)
        keep[np.asarray(rows, np.int64)] = False
        if keep.any():
            write_file(self.uri, full.filter(pa.array(keep)), self.storage, name=successor_name(path))
        self.remove(path)
        return int((~keep).sum())

    def write_rows(self, table: pa.Table, name: str | None = None, row_group_rows: int | None = None) -> str:
        return write_file(self.uri, table, self.storage, name=name, row_group_rows=row_group_rows)

    def read_all(self) -> pa.Table:
        """Every row of every file, one table (columns a file lacks read as null)."""
        parts = self.read_many(self.paths(), checked=False)
        if not parts:
            return RESULTS_SCHEMA.empty_table()
        return pa.concat_tables(parts, promote_options="permissive")

    def first_value(self, column: str):
        """The first non-null value of `column` in the newest file that has one (or None)."""
        for p in reversed(self.paths()):
            with self.fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                if column not in pf.schema_arrow.names:
                    raise pa.ArrowInvalid(f"No match for column {column} in {p}")
                for g in range(pf.num_row_groups):  # a row group at a time: usually the first one has it
                    values = pc.drop_null(pf.read_row_group(g, columns=[column]).column(0))
                    if len(values):
                        return values[0].as_py()
        return None


def read_results(output: str, storage=None) -> pa.Table:
    """The results of the job whose --output is `output`: every recorded row (the files read afresh)."""
    if storage is None:
        from rayinpaint.io.storage import StorageOptions

        storage = StorageOptions.from_env()
    return Ledger(output, storage).read_all()
