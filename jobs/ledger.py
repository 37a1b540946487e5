"""The results ledger: `{output}/results/part-*.parquet`, the single source of truth for what is done.

Each shard is written whole (atomic rename locally, one PUT on object stores), so a shard is either complete or
absent under its final name. Reconciling before and after a run keeps the invariant "every id at most once":

- a shard that cannot be read (foreign or damaged file) is moved to `{output}/_quarantine/`, never silently used;
- an id found in several shards (a crash between writing a rewritten shard and deleting the old one, or a retry
  of an error row) keeps one row: `ok`/`unchanged` beats `error`, then the newest shard (names sort by time);
- with `--retry-errors`, error rows of ids about to be retried are removed first.

Rewrites always write the new shard before deleting the old one, so a crash at any point leaves duplicates
(resolved on the next reconcile), never a lost row. A rewritten or merged file takes a name that sorts right
after the newest file it replaces (`successor_name`), so "the newest shard wins" keeps its meaning.

Small shards are merged into few large files by jobs/compaction.py. The index reads only the index columns of
each file, many files at once (object stores answer each GET in tens of milliseconds), and holds one compact
row per recorded row: id, status, error_kind, prompt_truncated and the row's place (shard number, position).
When the snapshot written at the end of the last run (jobs/snapshot.py) was made from exactly the files listed,
the index is read from it instead: one file whatever the number of results files.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import RowError
from rayinpaint.io.retry import call_with_retries, classify
from rayinpaint.io.storage import filesystem, join_uri, row_error_for, write_bytes

from .idset import count_distinct, one_array
from .snapshot import COLUMNS as SNAPSHOT_COLUMNS, open_snapshot, row_groups, snapshot_uri

log = logging.getLogger("rayinpaint.ledger")

DONE_STATUSES = ("ok", "unchanged")
_INDEX_COLUMNS = ["id", "status", "error_kind"]
# Read when present (shards written before the column existed read as null).
_OPTIONAL_INDEX_COLUMNS = {"prompt_truncated": pa.bool_()}
INDEX_SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()), ("error_kind", pa.string()),
                          ("prompt_truncated", pa.bool_()), ("shard", pa.int32()), ("pos", pa.int32())])
# Files read at once: each read is one or two requests of tens of milliseconds on an object store, so the index
# of many files is read in (files / READ_THREADS) round trips instead of one per file.
READ_THREADS = 32
READ_ROWS = 1 << 20  # rows whose index columns iter_index reads at once (bounds the driver's memory)


_name_clock = {"last": 0}
_name_lock = threading.Lock()


def new_shard_name() -> str:
    """Sortable by time first, unique by the random tail. The clock is read once (reading it twice named a file
    written just after a second boundary as if it came a second earlier), and within a process each name's time
    is later than the last one's, even if the wall clock steps back."""
    with _name_lock:
        ns = _name_clock["last"] = max(time.time_ns(), _name_clock["last"] + 1)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9))
    return f"part-{stamp}-{ns % 10**9:09d}-{uuid.uuid4().hex[:8]}.parquet"


def successor_name(path: str) -> str:
    """A new shard name that sorts right after `path`'s and before any shard written later ('_' sorts after
    '.'): the name of a file that replaces `path` (a rewrite, or a merge whose newest input is `path`)."""
    stem = path.rstrip("/").rsplit("/", 1)[-1][: -len(".parquet")].split("_", 1)[0]
    return f"{stem}_{uuid.uuid4().hex[:8]}.parquet"


def write_shard(results_uri: str, table: pa.Table, storage, name: str | None = None,
                row_group_rows: int | None = None) -> str:
    """Write `table` as one new, complete results shard under `results_uri` (named `name`, else a new name that
    sorts after every shard so far); returns its URI. The one way any process (driver or finish task) adds rows
    to the ledger."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group_rows)
    uri = join_uri(results_uri, name or new_shard_name())
    write_bytes(uri, buf.getvalue(), storage)
    return uri


def superseded(table: pa.Table, newer: np.ndarray) -> np.ndarray:
    """Row numbers of `table` (columns id, status) that another row of the same id supersedes: a done row beats
    an error row, then the larger `newer` wins. Every id unique (the usual case) is found by hashing, without
    sorting."""
    ids = table.column("id")
    if count_distinct(ids) == table.num_rows:
        return np.empty(0, np.int64)
    done = pc.is_in(table.column("status"), value_set=pa.array(DONE_STATUSES, pa.string()))
    ranked = pa.table({"id": ids, "done": done, "newer": pa.array(newer, pa.int64()),
                       "row": pa.array(np.arange(table.num_rows), pa.int64())})
    ranked = ranked.sort_by([("id", "ascending"), ("done", "descending"), ("newer", "descending")])
    sorted_ids = ranked.column("id").combine_chunks()
    same_as_previous = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
    rows = ranked.column("row").to_numpy()[1:]
    return rows[same_as_previous.to_numpy(zero_copy_only=False)]


def place_order(shard, pos) -> np.ndarray:
    """One int64 per row ordering rows by (shard number, position in the shard): later is newer."""
    return (np.asarray(shard, np.int64) << 32) | np.asarray(pos, np.int64)


@dataclass
class LedgerIndex:
    """id, status, error_kind, prompt_truncated and place (shard number, position) of every row in the ledger."""

    table: pa.Table                                  # INDEX_SCHEMA
    shards: list = field(default_factory=list)       # shard paths by number, sorted by name: higher is newer
    sizes: list = field(default_factory=list)        # bytes of each shard when listed (where known)
    source: str = "files"                            # "files" or "snapshot" (jobs/snapshot.py)
    _starts: np.ndarray | None = field(default=None, repr=False)  # first row of each file (file_table)

    @classmethod
    def empty(cls) -> "LedgerIndex":
        return cls(INDEX_SCHEMA.empty_table(), [])

    @property
    def ids(self) -> pa.Array:
        return one_array(self.table.column("id"))

    def ids_with_status(self, statuses) -> pa.Array:
        mask = pc.is_in(self.table.column("status"), value_set=pa.array(list(statuses), pa.string()))
        if pc.all(mask).as_py() is not False:  # every row (the usual case): the index's own ids, not a copy
            return self.ids
        return pc.filter(self.table.column("id"), mask).combine_chunks()

    def counts(self) -> tuple[dict, dict]:
        by_status = {}
        for row in self.table.group_by("status").aggregate([("id", "count")]).to_pylist():
            by_status[row["status"]] = row["id_count"]
        errors = self.table.filter(pc.equal(self.table.column("status"), "error"))
        by_kind = {}
        if errors.num_rows:
            for row in errors.group_by("error_kind").aggregate([("id", "count")]).to_pylist():
                by_kind[row["error_kind"] or "unknown"] = row["id_count"]
        return by_status, by_kind

    def prompts_truncated(self) -> int:
        """Rows whose prompt or negative prompt was longer than the text encoder's 77 tokens (cut)."""
        return pc.sum(pc.cast(pc.fill_null(self.table.column("prompt_truncated"), False), pa.int64())).as_py() or 0

    def rows_per_shard(self) -> dict:
        """{shard path: rows} of the shards this index was read from."""
        counts = np.bincount(self.table.column("shard").to_numpy(), minlength=len(self.shards))
        return {p: int(n) for p, n in zip(self.shards, counts)}

    def file_table(self, k: int) -> pa.Table:
        """The index rows of file k (snapshot.save_snapshot), for an index as Ledger.index() returned it."""
        if self._starts is None:
            self._starts = np.concatenate([[0], np.cumsum(list(self.rows_per_shard().values()))])
        t = self.table.slice(int(self._starts[k]), int(self._starts[k + 1] - self._starts[k]))
        shard = t.column("shard")
        if t.num_rows and (shard[0].as_py() != k or shard[-1].as_py() != k):
            raise AssertionError("the index is not in file order")  # not made by Ledger.index
        return t

    def with_rows(self, rows: pa.Table) -> "LedgerIndex":
        """This index plus rows recorded after it was read (columns id, status, error_kind and optionally
        prompt_truncated, e.g. what the driver received during a run), one row per id: a later row replaces an
        earlier one of the same id unless it is an error and the earlier one is done."""
        n = rows.num_rows
        if not n:
            return self
        truncated = rows.column("prompt_truncated") if "prompt_truncated" in rows.column_names \
            else pa.nulls(n, pa.bool_())
        extra = pa.table([rows.column("id"), rows.column("status"), rows.column("error_kind"), truncated,
                          pa.array(np.full(n, len(self.shards), np.int32)), pa.array(np.arange(n, dtype=np.int32))],
                         schema=INDEX_SCHEMA)
        t = pa.concat_tables([self.table, extra])
        drop = superseded(t, place_order(t.column("shard"), t.column("pos")))
        if len(drop):
            keep = np.ones(t.num_rows, bool)
            keep[drop] = False
            t = t.filter(pa.array(keep))
        return LedgerIndex(t, list(self.shards))  # no sizes: not the rows of files (save_snapshot reads them)


class Ledger:
    def __init__(self, output: str, storage):
        self.output = output.rstrip("/")
        self.storage = storage
        self.uri = join_uri(self.output, "results")
        self.fs, self.path = filesystem(self.uri, storage)

    # ---- listing ------------------------------------------------------------------------------------
    def listing(self) -> list[tuple[str, int]]:
        """(path, size in bytes) of every shard, sorted by name (oldest first)."""
        try:
            # refresh: shards are written by other processes (the finish tasks); a cached listing misses them.
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

    def shard_paths(self) -> list[str]:
        return [p for p, _ in self.listing()]

    def _quarantine(self, path: str, why: str) -> None:
        name = path.rsplit("/", 1)[-1]
        qdir = join_uri(self.output, "_quarantine")
        _, qpath = filesystem(qdir, self.storage)
        log.warning("results shard %s is unreadable (%s); moved to %s", name, why, qdir)
        try:
            self.fs.makedirs(qpath, exist_ok=True)
        except Exception:  # noqa: BLE001 - object stores have no folders
            pass
        self.fs.mv(path, f"{qpath}/{name}")

    def _read_index(self, path: str) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            t = pf.read(columns=_INDEX_COLUMNS + [c for c in _OPTIONAL_INDEX_COLUMNS if c in names])
        for name, typ in _OPTIONAL_INDEX_COLUMNS.items():
            if name not in names:
                t = t.append_column(name, pa.nulls(t.num_rows, typ))
        return t

    def _read(self, path: str, columns=None) -> pa.Table:
        with self.fs.open(path, "rb") as f:
            return pq.read_table(f, columns=columns)

    def _read_checked(self, path: str, read) -> pa.Table | None:
        """`read(path)` with retries; None when the shard is gone (a concurrent reconcile or merge removed it)
        or unreadable (moved to _quarantine). Storage trouble is raised: a good shard is never quarantined."""
        try:
            return call_with_retries(lambda: read(path), self.storage.retry_policy)
        except Exception as e:  # noqa: BLE001 - sorted below
            verdict = classify(e)
            if verdict == "not_found":
                return None
            if verdict != "permanent":
                err = row_error_for(e, path, "read", self.storage.max_attempts)
                raise RowError(err.kind, f"results shard {err.message}") from None
            self._quarantine(path, f"{type(e).__name__}: {e}")
            return None

    def read_many(self, paths: list[str], columns_only: bool = False, checked: bool = True) -> list:
        """Every shard of `paths` (whole, or its index columns only), READ_THREADS at a time, in order.
        `checked`: as `_read_checked` (None for a shard gone or quarantined), else any error is raised."""
        read = self._read_index if columns_only else self._read
        one = (lambda p: self._read_checked(p, read)) if checked else read
        if len(paths) <= 1:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(min(READ_THREADS, len(paths))) as ex:
            return list(ex.map(one, paths))

    def iter_index(self, listing: list):
        """(entry, index columns or None) for each (path, size) of `listing`, in order, many files at once but
        about READ_ROWS rows at a time at most: rows per byte are learnt from the files read so far (merged
        files hold up to a million rows; finish tasks' shards a few)."""
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

    # ---- index and repair ---------------------------------------------------------------------------
    def index(self, use_snapshot: bool = True) -> LedgerIndex:
        """The index of every results file: from the snapshot when it was made from exactly the files listed
        now (jobs/snapshot.py), else from the index columns of each file."""
        listing = self.listing()
        if not listing:
            return LedgerIndex.empty()
        snap = self.open_snapshot(listing) if use_snapshot else None
        if snap is not None:
            pf, rows = snap
            cols = {c: [] for c in SNAPSHOT_COLUMNS}
            for t in row_groups(pf):  # group by group: never two copies of the whole column
                for c in SNAPSHOT_COLUMNS:
                    cols[c].extend(t.column(c).chunks)
            return _assemble(cols, rows, listing, "snapshot")
        cols = {name: [] for name in _INDEX_COLUMNS + list(_OPTIONAL_INDEX_COLUMNS)}
        rows, kept = [], []
        for entry, t in self.iter_index(listing):
            if t is None:
                continue
            for name in cols:
                cols[name].extend(t.column(name).chunks)
            rows.append(t.num_rows)
            kept.append(entry)
        return _assemble(cols, rows, kept, "files")

    def open_snapshot(self, listing: list):
        """snapshot.open_snapshot of this output's snapshot for `listing` (None: read the files instead)."""
        return open_snapshot(self.fs, filesystem(snapshot_uri(self.output), self.storage)[1], listing)

    def reconcile(self, drop_error_ids: pa.Array | None = None, *, index: LedgerIndex | None = None) -> LedgerIndex:
        """Resolve duplicates and drop retried error rows; returns the repaired index. `index`: the ledger's
        index just read by the caller (saves reading every shard again), else it is read here."""
        idx = self.index() if index is None else index
        drop = rows_to_drop(idx, drop_error_ids)
        if not len(drop):
            return idx
        shard, pos = idx.table.column("shard").to_numpy()[drop], idx.table.column("pos").to_numpy()[drop]
        self.drop_places(idx.shards, shard, pos)
        return self.index()

    def drop_places(self, shards: list, shard: np.ndarray, pos: np.ndarray) -> None:
        """Rewrite each file `shards[shard[i]]` without its row `pos[i]` (new file first, then the old one
        removed)."""
        n = 0
        for s in np.unique(shard):
            path = shards[s]
            full = self._read(path)
            keep = np.ones(full.num_rows, bool)
            keep[pos[shard == s]] = False
            if keep.any():
                write_shard(self.uri, full.filter(pa.array(keep)), self.storage, name=successor_name(path))
            self.remove(path)
            n += int((~keep).sum())
        log.info("ledger: removed %d superseded row(s) from %d shard(s)", n, len(np.unique(shard)))

    def write_rows(self, table: pa.Table, name: str | None = None, row_group_rows: int | None = None) -> str:
        return write_shard(self.uri, table, self.storage, name=name, row_group_rows=row_group_rows)

    def read_all(self) -> pa.Table:
        """Every row of every shard, one table (columns a shard lacks read as null)."""
        parts = self.read_many(self.shard_paths(), checked=False)
        if not parts:
            from rayinpaint.io.results import RESULTS_SCHEMA

            return RESULTS_SCHEMA.empty_table()
        return pa.concat_tables(parts, promote_options="permissive")

    def first_value(self, column: str):
        """The first non-null value of `column` in the newest shard that has one (or None)."""
        for p in reversed(self.shard_paths()):
            with self.fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                if column not in pf.schema_arrow.names:
                    raise pa.ArrowInvalid(f"No match for column {column} in {p}")
                for g in range(pf.num_row_groups):  # a row group at a time: usually the first one has it
                    values = pc.drop_null(pf.read_row_group(g, columns=[column]).column(0))
                    if len(values):
                        return values[0].as_py()
        return None


def rows_to_drop(idx: LedgerIndex, drop_error_ids: pa.Array | None = None) -> np.ndarray:
    """Rows of `idx` that a reconcile removes: superseded rows, and the error rows of `drop_error_ids`."""
    t = idx.table
    if t.num_rows == 0:
        return np.empty(0, np.int64)
    drop = superseded(t, place_order(t.column("shard"), t.column("pos")))
    if drop_error_ids is not None and len(drop_error_ids):
        retried = pc.and_(pc.equal(t.column("status"), "error"), pc.is_in(t.column("id"), value_set=drop_error_ids))
        drop = np.union1d(drop, np.flatnonzero(retried.to_numpy(zero_copy_only=False)))
    return drop


def _assemble(cols: dict, rows: list, listing: list, source: str) -> LedgerIndex:
    """A LedgerIndex from each column's chunks (file after file) and the rows of each file; each column is made
    one array in turn, its chunks released as it goes (never two copies of the whole index)."""
    if not listing:
        return LedgerIndex.empty()
    n = np.asarray(rows, np.int64)
    cols["shard"] = [pa.array(np.repeat(np.arange(len(n), dtype=np.int32), n))]
    cols["pos"] = [pa.array(np.arange(k, dtype=np.int32)) for k in n]
    arrays = [pa.chunked_array(cols.pop(f.name), f.type).combine_chunks() for f in INDEX_SCHEMA]
    return LedgerIndex(pa.Table.from_arrays(arrays, schema=INDEX_SCHEMA), [p for p, _ in listing],
                       [s for _, s in listing], source)


def read_results(output: str, storage=None) -> pa.Table:
    """The results of the job whose --output is `output`: one row per recorded id (read the shards afresh)."""
    if storage is None:
        from rayinpaint.io.storage import StorageOptions

        storage = StorageOptions.from_env()
    return Ledger(output, storage).read_all()
