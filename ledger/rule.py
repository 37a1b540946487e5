"""The supersede rule, and the embedded SQL engine (DuckDB) that applies it and answers the bookkeeping's set
questions (ledger/index.py).

When an id has several rows (a crash between writing a merged file and removing its inputs, a retried error,
a row recorded twice by a retried task), one counts: a done row (`ok`, `unchanged`) beats an `error` row, then
the newest row wins (later file in name order, then later in its file). `RANK` is that rule in SQL; every place
that resolves duplicates uses it (the index at the start of a run, a merge, this run's rows).
"""

from __future__ import annotations

import os
import tempfile

import duckdb
import numpy as np
import pyarrow as pa

from .layout import DONE_STATUSES

_DONE = ", ".join(f"'{s}'" for s in DONE_STATUSES)
# Rank of each row among the rows of its id (1 = the one that counts); `place` orders rows, later is newer.
RANK = f"row_number() OVER (PARTITION BY id ORDER BY status IN ({_DONE}) DESC, place DESC)"


def connect(folder: str | None = None, memory_limit: str = "256MB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """An engine for the bookkeeping: a database file in `folder` (None: in memory), within `memory_limit`, larger
    tables spilled to `folder`. No extension is ever installed or loaded: the job runs offline."""
    config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
              "memory_limit": memory_limit, "threads": threads, "preserve_insertion_order": False}
    if folder is None:  # a merge's rows (at most about 1M): spilling, if ever, goes to the system's temp folder
        config["temp_directory"] = os.path.join(tempfile.gettempdir(), "rayinpaint-duckdb")
        return duckdb.connect(":memory:", config=config)
    config["temp_directory"] = f"{folder}/spill"
    return duckdb.connect(f"{folder}/books.duckdb", config=config)


def place_order(file, pos) -> np.ndarray:
    """One int64 per row ordering rows by (file number, position in the file): later is newer."""
    return (np.asarray(file, np.int64) << 32) | np.asarray(pos, np.int64)


def superseded(table: pa.Table, place: np.ndarray) -> np.ndarray:
    """Row numbers of `table` (columns id, status) that another row of the same id supersedes (see RANK);
    `place`: one int64 per row, larger is newer."""
    rows = pa.table({"id": table.column("id"), "status": table.column("status"),
                     "place": pa.array(np.asarray(place, np.int64)),
                     "row": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    with connect() as con:
        con.register("rows_", rows)
        lost = con.sql(f"SELECT row FROM (SELECT row, {RANK} AS rank FROM rows_) WHERE rank > 1 "
                       f"ORDER BY row").fetchnumpy()["row"]
    return np.asarray(lost, np.int64)
