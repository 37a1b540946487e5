"""The index snapshot: `{output}/_index/done.parquet`, the ledger's index columns (id, status, error_kind,
prompt_truncated) of every results file, written by the driver at the end of each run so that the next run
reads one file instead of the index columns of every results file.

It is a cache, never a source of truth: its footer records the name, size and rows of each results file it was
made from, in the ledger's order, and it is used only when the results listing is exactly those files with those
sizes (results files are written once under unique names and never changed in place, so a file of the same name
and size holds the same rows). Anything else (a file added, removed, merged, quarantined or resized, no
snapshot, an unreadable or inconsistent snapshot) and the index is read from the results files as before, so a
crash between writing results and writing the snapshot can never lose or duplicate a row. It lives outside
`results/`, so readers of `results/*.parquet` (DuckDB, pandas, pyarrow.dataset, the ledger's listing) never see
it. Rows are kept in the ledger's order (file by file; merged files are sorted by id), which is what lets the
index's (shard, position) of each row be rebuilt from the per-file row counts.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayinpaint.io.storage import join_uri, write_bytes

log = logging.getLogger("rayinpaint.ledger")

COLUMNS = ("id", "status", "error_kind", "prompt_truncated")
_KEY = b"rayinpaint.index_snapshot"
_VERSION = 1


def snapshot_uri(output: str) -> str:
    return join_uri(output.rstrip("/"), "_index", "done.parquet")


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def write_snapshot(uri: str, storage, parts: list, listing: list) -> int:
    """Write the snapshot of `listing` ((path, size) of each results file, in the ledger's order) from `parts`
    (the index columns of each of those files, in the same order); returns its size in bytes."""
    files = [[_name(p), int(size), t.num_rows] for (p, size), t in zip(listing, parts)]
    meta = json.dumps({"version": _VERSION, "files": files}).encode()
    schema = pa.schema([("id", pa.string()), ("status", pa.string()), ("error_kind", pa.string()),
                        ("prompt_truncated", pa.bool_())], metadata={_KEY: meta})
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, schema, compression="zstd") as w:
        for t in parts:
            if t.num_rows:
                w.write_table(t.select(list(COLUMNS)).cast(schema), row_group_size=1 << 20)
    data = buf.getvalue()
    write_bytes(uri, data, storage)
    return len(data)


def read_snapshot(fs, path: str, listing: list) -> tuple[list, list] | None:
    """(the snapshot's columns as lists of chunks {name: [chunks]}, rows per results file) when the snapshot
    at `path` was made from exactly `listing`; None otherwise (absent, stale, unreadable: logged)."""
    try:
        # One GET of the whole file (small: ~0.7 MB per 1M ids). On S3, opening it, or cat_file without a range
        # (which asks the size first), costs a HEAD and, when it is absent, a listing of its "folder" as well.
        with io.BytesIO(fs.cat_file(path, start=0)) as f:
            pf = pq.ParquetFile(f)
            meta = json.loads((pf.schema_arrow.metadata or {}).get(_KEY, b"null"))
            if not isinstance(meta, dict) or meta.get("version") != _VERSION:
                raise ValueError("not an index snapshot of this version")
            files = meta["files"]
            if [(n, int(s)) for n, s, _ in files] != [(_name(p), int(s)) for p, s in listing]:
                log.info("index snapshot is stale (the results files changed since it was written); reading "
                         "the results files")
                return None
            rows = [int(r) for _, _, r in files]
            if pf.metadata.num_rows != sum(rows):
                raise ValueError(f"{pf.metadata.num_rows} rows, its files list {sum(rows)}")
            cols = {c: [] for c in COLUMNS}
            for g in range(pf.num_row_groups):  # group by group: never two copies of the whole column
                t = pf.read_row_group(g, columns=list(COLUMNS))
                for c in COLUMNS:
                    cols[c].extend(t.column(c).chunks)
            return cols, rows
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a cache: any trouble means reading the results files instead
        log.warning("index snapshot %s ignored (%s: %s); reading the results files", path, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")
        return None


def save_snapshot(ledger, known=None) -> int | None:
    """Write the snapshot of the results files as listed now; returns its bytes (None: not written). The rows
    of a file listed in `known` (a LedgerIndex read earlier from the files or a snapshot, not extended with
    rows of this run) under the same name and size are taken from it; the other files' index columns are read.
    Nothing is written when `known` came from a snapshot of exactly these files (it is current). `known` must
    be an index as Ledger.index() returned it (its rows file by file, each file whole)."""
    listing = ledger.listing()
    if not listing:
        return None
    reuse, offsets, counts = {}, [], []
    if known is not None and known.sizes:
        same = list(zip(known.shards, known.sizes)) == [tuple(e) for e in listing]
        if same and known.source == "snapshot":
            return None
        counts = list(known.rows_per_shard().values())
        offsets = [0] + list(np.cumsum(counts))
        reuse = {(p, size): k for k, (p, size) in enumerate(zip(known.shards, known.sizes))}
    need = [p for p, s in listing if (p, s) not in reuse]
    read = dict(zip(need, ledger.read_many(need, columns_only=True)))
    parts = []
    for p, size in listing:
        if (p, size) in reuse:
            k = reuse[(p, size)]
            t = known.table.slice(offsets[k], counts[k])
            shard = t.column("shard")
            if t.num_rows and (shard[0].as_py() != k or shard[-1].as_py() != k):
                raise AssertionError("the index is not in file order")  # not made by Ledger.index
        else:
            t = read[p]
            if t is None:  # removed or quarantined since it was listed: a snapshot now would be stale
                return None
        parts.append(t)
    return write_snapshot(snapshot_uri(ledger.output), ledger.storage, parts, listing)
