"""The bookkeeping's set questions, in SQL over an embedded database (DuckDB) on the driver's local disk.

Three tables hold every id the driver knows, never the rows themselves:

    manifest(id, file)                                   one row per manifest row read (ledger/manifest.py)
    results(id, status, error_kind, prompt_truncated,    the index columns of every results file, with each
            file, pos)                                   row's place (file number, position in the file)
    recorded(id, status, error_kind, prompt_truncated,   the rows this run wrote (the driver's copy), and the
             seq)                                        rows the manifest alone settled that it wrote
    settled(id)                                          ids the manifest alone settles (duplicated, missing)
    todo(id)                                             the ids this run processes

Each question (duplicate ids, superseded rows, ids left, rows lost, the counts) is one query. DuckDB keeps
the tables in a database file and works within `memory_limit`, spilling to disk beyond it, so the driver's memory
does not grow with the number of ids. Ids arrive and leave as Arrow arrays, a batch at a time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .files import INDEX_SCHEMA, Ledger
from .layout import DONE_STATUSES, ERROR, UNCHANGED
from .rule import RANK, connect

EXAMPLES = 5           # ids kept as examples (unchanged rows)
BATCH_IDS = 1 << 20    # ids handed out at once (what the driver holds of a table at a time)
# The engine's own bound: beyond it, DuckDB spills to the index's folder (`$RAYINPAINT_MEMORY_LIMIT` to change).
MEMORY_LIMIT = os.environ.get("RAYINPAINT_MEMORY_LIMIT", "128MB")

_TABLES = """
CREATE TABLE manifest (id VARCHAR, file INTEGER);
CREATE TABLE results (id VARCHAR, status VARCHAR, error_kind VARCHAR, prompt_truncated BOOLEAN,
                      file INTEGER, pos INTEGER);
CREATE TABLE recorded (id VARCHAR, status VARCHAR, error_kind VARCHAR, prompt_truncated BOOLEAN, seq BIGINT);
CREATE TABLE settled (id VARCHAR);
CREATE TABLE todo (id VARCHAR);
"""


def _insert(con, table: str, rows: pa.Table, where: str = "") -> None:
    """INSERT the Arrow table `rows` into `table` (columns in order), filtered by `where`."""
    con.register("incoming", rows)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM incoming {where}").fetchall()
    finally:
        con.unregister("incoming")


def _in(statuses) -> str:
    return "(" + ", ".join(f"'{s}'" for s in statuses) + ")"


@dataclass
class Counts:
    """Rows by status and error kind, prompts cut, and a few `unchanged` ids: what the summary counts."""
    by_status: dict = field(default_factory=dict)
    by_kind: dict = field(default_factory=dict)
    prompts_truncated: int = 0
    unchanged_examples: list = field(default_factory=list)

    def plus(self, other: "Counts") -> "Counts":
        add = lambda a, b: {k: a.get(k, 0) + b.get(k, 0) for k in sorted({*a, *b})}  # noqa: E731
        return Counts(add(self.by_status, other.by_status), add(self.by_kind, other.by_kind),
                      self.prompts_truncated + other.prompts_truncated,
                      sorted(self.unchanged_examples + other.unchanged_examples)[:EXAMPLES])

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: dict) -> "Counts":
        return cls(**doc)


class Index:
    """The tables above in a database under `folder` (removed by the caller); see the module docstring."""

    def __init__(self, folder: str, memory_limit: str = MEMORY_LIMIT):
        self.con = connect(folder, memory_limit)
        self.run(_TABLES)
        self.files: list = []   # results file paths by number (name order: later is newer)
        self.rows: list = []    # their rows
        self._seq = 0

    def close(self) -> None:
        self.con.close()

    def sql(self, query: str, params=None):
        return self.con.sql(query, params=params)

    def one(self, query: str, params=None):
        return self.con.execute(query, params or []).fetchall()[0][0]

    def run(self, statement: str) -> None:
        """A statement, to its end (DuckDB holds a connection until its last result is fetched)."""
        self.con.execute(statement).fetchall()

    # ---- loading ---------------------------------------------------------------------------------------
    def add_manifest_ids(self, ids: pa.Array, file: int, con=None) -> None:
        """Append manifest ids read from file number `file` (`con`: a cursor of this index, for a thread)."""
        rows = pa.table({"id": ids.cast(pa.string()), "file": pa.array(np.full(len(ids), file, np.int32))})
        _insert(con or self.con, "manifest", rows)

    def add_results(self, ledger: Ledger, listing: list, only_manifest_ids: bool = False) -> None:
        """Read the index columns of every file of `listing` ((path, size), name order), a few files at a time.
        `only_manifest_ids`: keep only the rows of ids in the manifest table (a daily run's new ids)."""
        keep = "WHERE id IN (SELECT id FROM manifest)" if only_manifest_ids else ""
        for (path, _), t in ledger.iter_index(listing):
            if t is None:  # gone or quarantined since it was listed
                continue
            place = pa.table({"file": pa.array(np.full(t.num_rows, len(self.files), np.int32)),
                              "pos": pa.array(np.arange(t.num_rows, dtype=np.int32))})
            rows = pa.Table.from_arrays(t.columns + place.columns, names=t.column_names + place.column_names)
            _insert(self.con, "results", rows, keep)
            self.files.append(path)
            self.rows.append(t.num_rows)

    def clear_results(self) -> None:
        self.run("DELETE FROM results")
        self.files, self.rows = [], []

    def clear_recorded(self) -> None:
        self.run("DELETE FROM recorded")

    def reset(self) -> None:
        """Empty every table (the index is read again from the start)."""
        for table in ("manifest", "settled", "todo", "recorded"):
            self.run(f"DELETE FROM {table}")
        self.clear_results()

    def add_recorded(self, rows: pa.Table) -> None:
        """Rows recorded by this run (columns of INDEX_SCHEMA; a later row is newer)."""
        if not rows.num_rows:
            return
        cols = [rows.column(c) if c in rows.column_names else pa.nulls(rows.num_rows, f.type)
                for c, f in zip(INDEX_SCHEMA.names, INDEX_SCHEMA)]
        batch = pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, INDEX_SCHEMA)], schema=INDEX_SCHEMA)
        batch = batch.append_column("seq", pa.array(np.arange(self._seq, self._seq + rows.num_rows)))
        self._seq += rows.num_rows
        _insert(self.con, "recorded", batch)

    # ---- the manifest ------------------------------------------------------------------------------------
    def unique_ids(self) -> int:
        return self.one("SELECT count(DISTINCT id) FROM manifest")

    def duplicates(self) -> dict:
        """{id: rows} of the ids found more than once in the manifest."""
        t = self.sql("SELECT id, count(*) AS n FROM manifest GROUP BY id HAVING n > 1").fetchall()
        return dict(sorted(t))

    def files_with_ids_in(self, table: str) -> set:
        """Numbers of the manifest files holding an id of `table` (todo: the files a pass must read)."""
        return {f for (f,) in self.sql(f"SELECT DISTINCT file FROM manifest SEMI JOIN {table} USING (id)").fetchall()}

    # ---- the results -------------------------------------------------------------------------------------
    def superseded(self, retry_errors: bool) -> dict:
        """{file path: [positions]} of the rows a repair removes: rows another row of the same id supersedes
        (ledger/rule.py), and with --retry-errors the error rows of manifest ids about to be retried (not of
        settled ids: the manifest alone settles those)."""
        retried = ""
        if retry_errors:
            retried = (f"UNION SELECT file, pos FROM results WHERE status = '{ERROR}' AND id IN "
                       f"(SELECT id FROM manifest) AND id NOT IN (SELECT id FROM settled)")
        rows = self.sql(f"""
            WITH repeated AS (SELECT id FROM results GROUP BY id HAVING count(*) > 1),
            ranked AS (SELECT file, pos, {RANK} AS rank FROM
                       (SELECT *, (file::BIGINT << 32) | pos AS place FROM results SEMI JOIN repeated USING (id)))
            SELECT file, pos FROM ranked WHERE rank > 1 {retried}""").fetchall()
        out: dict = {}
        for f, pos in rows:
            out.setdefault(self.files[f], []).append(pos)
        return out

    def count_results(self, statuses=None) -> int:
        where = f"WHERE status IN {_in(statuses)}" if statuses else ""
        return self.one(f"SELECT count(*) FROM results {where}")

    # ---- this run ------------------------------------------------------------------------------------------
    def settle(self, rows: pa.Table) -> pa.Table:
        """Record the ids of `rows` (the rows the manifest alone settles) as settled; returns those of them
        whose id has no row in the results yet (to be written once: no run can change them)."""
        _insert(self.con, "settled", rows.select(["id"]))
        have = {i for (i,) in self.sql("SELECT DISTINCT id FROM results SEMI JOIN settled USING (id)").fetchall()}
        return rows.filter(pa.array([i not in have for i in rows.column("id").to_pylist()], pa.bool_()))

    def plan(self, skipped: tuple) -> int:
        """Fill `todo` with the manifest ids this run processes: not done per the results (`skipped`
        statuses) and not settled by the manifest alone; returns how many."""
        self.run(f"""
            INSERT INTO todo SELECT DISTINCT id FROM manifest
            ANTI JOIN (SELECT id FROM results WHERE status IN {_in(skipped)} UNION ALL SELECT id FROM settled)
            USING (id)""")
        return self.one("SELECT count(*) FROM todo")

    def skipped_query(self, statuses) -> str:
        """The query of the ids a pass skips: done per the results (`statuses`), or settled by the manifest."""
        return f"SELECT id FROM results WHERE status IN {_in(statuses)} UNION SELECT id FROM settled"

    def count(self, query: str) -> int:
        return self.one(f"SELECT count(*) FROM ({query})")

    def ids(self, query: str, batch: int | None = None):
        """The ids a query returns, sorted, as Arrow arrays of at most `batch` ids (BATCH_IDS). Read through a
        connection of its own, so the index can be used between two batches."""
        with self.con.cursor() as con:
            reader = con.sql(f"SELECT id FROM ({query}) ORDER BY id").to_arrow_reader(batch or BATCH_IDS)
            for b in reader:
                yield b.column(0)

    def among(self, ids: pa.Array, table: str) -> np.ndarray:
        """One bool per id of `ids` (a few): whether `table` (an id column) holds it."""
        asked = pa.table({"id": ids.cast(pa.string()), "row": pa.array(np.arange(len(ids), dtype=np.int64))})
        self.con.register("asked", asked)
        try:
            rows = self.sql(f"SELECT row FROM asked SEMI JOIN {table} USING (id)").fetchnumpy()["row"]
        finally:
            self.con.unregister("asked")
        found = np.zeros(len(ids), bool)
        found[np.asarray(rows, np.int64)] = True
        return found

    def lost(self) -> pa.Array:
        """Ids to do that this run has not recorded (rows a failed worker lost)."""
        return self.sql("SELECT id FROM todo ANTI JOIN recorded USING (id) ORDER BY id").to_arrow_table() \
            .column("id").combine_chunks()

    def count_lost(self) -> int:
        return self.one("SELECT count(*) FROM todo ANTI JOIN recorded USING (id)")

    # ---- the counts ------------------------------------------------------------------------------------
    def counts(self, table: str) -> Counts:
        """Counts over `table`: `results` (one row per id after a repair), or `recorded` (each id's row by
        the supersede rule)."""
        rows = table if table == "results" else \
            f"(SELECT * FROM (SELECT *, {RANK} AS rank FROM (SELECT *, seq AS place FROM recorded)) WHERE rank = 1)"
        by_status = dict(self.sql(f"SELECT status, count(*) FROM {rows} GROUP BY ALL").fetchall())
        by_kind = dict(self.sql(f"SELECT coalesce(error_kind, 'unknown'), count(*) FROM {rows} "
                                f"WHERE status = '{ERROR}' GROUP BY ALL").fetchall())
        truncated = self.one(f"SELECT count(*) FROM {rows} WHERE prompt_truncated")
        examples = [i for (i,) in self.sql(f"SELECT id FROM {rows} WHERE status = '{UNCHANGED}' ORDER BY id "
                                           f"LIMIT {EXAMPLES}").fetchall()]
        return Counts(dict(sorted(by_status.items())), dict(sorted(by_kind.items())), truncated, examples)


def done_count(counts: Counts, statuses=DONE_STATUSES) -> int:
    return sum(counts.by_status.get(s, 0) for s in statuses)


@contextmanager
def local_index(memory_limit: str = MEMORY_LIMIT):
    """An Index in a new folder on the driver's disk (under `$RAYINPAINT_SPILL_DIR` when set, else the system's
    temporary folder), removed at the end."""
    base = os.environ.get("RAYINPAINT_SPILL_DIR") or None
    if base:
        os.makedirs(base, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="rayinpaint-index-", dir=base)
    index = Index(folder, memory_limit)
    try:
        yield index
    finally:
        index.close()
        shutil.rmtree(folder, ignore_errors=True)
