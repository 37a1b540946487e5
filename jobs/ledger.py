"""The results ledger: `{output}/results/part-*.parquet`, the single source of truth for what is done.

Each shard is written whole (atomic rename locally, one PUT on object stores), so a shard is either complete or
absent under its final name. Reconciling before and after a run keeps the invariant "every id at most once":

- a shard that cannot be read (foreign or damaged file) is moved to `{output}/_quarantine/`, never silently used;
- an id found in several shards (a crash between writing a rewritten shard and deleting the old one, or a retry
  of an error row) keeps one row: `ok`/`unchanged` beats `error`, then the newest shard (names sort by time);
- with `--retry-errors`, error rows of ids about to be retried are removed first.

Rewrites always write the new shard before deleting the old one, so a crash at any point leaves duplicates
(resolved on the next reconcile), never a lost row.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import RowError
from rayinpaint.io.retry import call_with_retries, classify
from rayinpaint.io.storage import filesystem, join_uri, row_error_for, write_bytes

log = logging.getLogger("rayinpaint.ledger")

DONE_STATUSES = ("ok", "unchanged")
_INDEX_COLUMNS = ["id", "status", "error_kind"]
# Read when present (shards written before the column existed read as null).
_OPTIONAL_INDEX_COLUMNS = {"prompt_truncated": pa.bool_()}


def new_shard_name() -> str:
    # Sortable by time first, unique by the random tail.
    return f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}-{uuid.uuid4().hex[:8]}.parquet"


def write_shard(results_uri: str, table: pa.Table, storage) -> str:
    """Write `table` as one new, complete results shard under `results_uri`; returns its URI. The one way any
    process (driver or finish task) adds rows to the ledger."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    uri = join_uri(results_uri, new_shard_name())
    write_bytes(uri, buf.getvalue(), storage)
    return uri


@dataclass
class LedgerIndex:
    """id, status, error_kind, prompt_truncated and shard name of every row in the ledger."""

    table: pa.Table  # columns id, status, error_kind, prompt_truncated, shard

    @property
    def ids(self) -> pa.Array:
        return self.table.column("id").combine_chunks()

    def ids_with_status(self, statuses) -> pa.Array:
        mask = pc.is_in(self.table.column("status"), value_set=pa.array(list(statuses), pa.string()))
        return self.table.filter(mask).column("id").combine_chunks()

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


class Ledger:
    def __init__(self, output: str, storage):
        self.output = output.rstrip("/")
        self.storage = storage
        self.uri = join_uri(self.output, "results")
        self.fs, self.path = filesystem(self.uri, storage)

    # ---- listing ------------------------------------------------------------------------------------
    def shard_paths(self) -> list[str]:
        try:
            # refresh: shards are written by other processes (the finish tasks); a cached listing misses them.
            entries = self.fs.ls(self.path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        out = []
        for p in entries:
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.startswith("part-") and name.endswith(".parquet"):
                out.append(p)
        return sorted(out, key=lambda p: p.rsplit("/", 1)[-1])

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

    # ---- index and repair ---------------------------------------------------------------------------
    def index(self) -> LedgerIndex:
        parts = []
        for p in self.shard_paths():
            try:
                t = call_with_retries(lambda: self._read_index(p), self.storage.retry_policy)
            except Exception as e:  # noqa: BLE001 - sorted below
                verdict = classify(e)
                if verdict == "not_found":  # removed meanwhile (a concurrent reconcile): nothing to index
                    continue
                if verdict != "permanent":  # storage trouble, not a bad file: never quarantine a good shard
                    err = row_error_for(e, p, "read", self.storage.max_attempts)
                    raise RowError(err.kind, f"results shard {err.message}") from None
                self._quarantine(p, f"{type(e).__name__}: {e}")
                continue
            parts.append(t.append_column("shard", pa.array([p] * t.num_rows, pa.string())))
        if not parts:
            schema = pa.schema([("id", pa.string()), ("status", pa.string()), ("error_kind", pa.string()),
                                *_OPTIONAL_INDEX_COLUMNS.items(), ("shard", pa.string())])
            return LedgerIndex(schema.empty_table())
        return LedgerIndex(pa.concat_tables(parts, promote_options="permissive"))

    def reconcile(self, drop_error_ids: pa.Array | None = None, *, index: LedgerIndex | None = None) -> LedgerIndex:
        """Resolve duplicates and drop retried error rows; returns the repaired index. `index`: the ledger's
        index just read by the caller (saves reading every shard again), else it is read here."""
        idx = self.index() if index is None else index
        t = idx.table
        if t.num_rows == 0:
            return idx
        # Rank rows: done statuses first, then newest shard; keep the first row of each id.
        done = pc.is_in(t.column("status"), value_set=pa.array(DONE_STATUSES, pa.string()))
        ranked = t.append_column("_done", done).append_column("_row", pa.array(range(t.num_rows), pa.int64()))
        ranked = ranked.sort_by([("id", "ascending"), ("_done", "descending"), ("shard", "descending")])
        ids = ranked.column("id").to_pylist()
        rows = ranked.column("_row").to_pylist()
        drop_rows = set()
        prev = None
        for i, r in zip(ids, rows):
            if i == prev:
                drop_rows.add(r)
            prev = i
        if drop_error_ids is not None and len(drop_error_ids):
            is_err = pc.equal(t.column("status"), "error")
            retried = pc.is_in(t.column("id"), value_set=drop_error_ids)
            sel = pc.and_(is_err, retried)
            for r, s in enumerate(sel.to_pylist()):
                if s:
                    drop_rows.add(r)
        if not drop_rows:
            return idx
        # Group dropped (shard, id) pairs per shard and rewrite those shards.
        shard_col = t.column("shard").to_pylist()
        id_col = t.column("id").to_pylist()
        per_shard: dict[str, set] = {}
        for r in drop_rows:
            per_shard.setdefault(shard_col[r], set()).add(id_col[r])
        n = 0
        for shard, drop in per_shard.items():
            full = self._read(shard)
            keep = full.filter(pc.invert(pc.is_in(full.column("id"), value_set=pa.array(sorted(drop), pa.string()))))
            if keep.num_rows:
                write_shard(self.uri, keep, self.storage)
            self.fs.rm(shard)
            n += full.num_rows - keep.num_rows
        log.info("ledger: removed %d superseded row(s) from %d shard(s)", n, len(per_shard))
        return self.index()

    def write_rows(self, table: pa.Table) -> str:
        return write_shard(self.uri, table, self.storage)

    def read_all(self) -> pa.Table:
        """Every row of every shard, one table (columns a shard lacks read as null)."""
        parts = [self._read(p) for p in self.shard_paths()]
        if not parts:
            from rayinpaint.io.results import RESULTS_SCHEMA

            return RESULTS_SCHEMA.empty_table()
        return pa.concat_tables(parts, promote_options="permissive")

    def first_value(self, column: str):
        """The first non-null value of `column` in the newest shard that has one (or None)."""
        for p in reversed(self.shard_paths()):
            values = pc.drop_null(self._read(p, columns=[column]).column(0))
            if len(values):
                return values[0].as_py()
        return None


def read_results(output: str, storage=None) -> pa.Table:
    """The results of the job whose --output is `output`: one row per recorded id (read the shards afresh)."""
    if storage is None:
        from rayinpaint.io.storage import StorageOptions

        storage = StorageOptions.from_env()
    return Ledger(output, storage).read_all()
