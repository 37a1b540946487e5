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

import pyarrow as pa
import pyarrow.parquet as pq

from rayinpaint.io.storage import join_uri, write_bytes

log = logging.getLogger("rayinpaint.ledger")

# The index columns of a results row: what the snapshot keeps, and what the driver keeps of each row it records.
SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()), ("error_kind", pa.string()),
                    ("prompt_truncated", pa.bool_())])
COLUMNS = tuple(SCHEMA.names)
_KEY = b"rayinpaint.index_snapshot"
_VERSION = 1


def snapshot_uri(output: str) -> str:
    return join_uri(output.rstrip("/"), "_index", "done.parquet")


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


_GROUP_ROWS = 1 << 20


class _Stale(Exception):
    """A results file was removed or quarantined while the snapshot was being made."""


def write_snapshot(uri: str, storage, parts, listing: list) -> int:
    """Write the snapshot of `listing` ((path, size) of each results file, in the ledger's order) from `parts`
    (an iterable of the index columns of each of those files, in the same order, consumed one at a time);
    returns its size in bytes. The file list goes into the footer, written last."""
    buf = io.BytesIO()
    files = []
    with pq.ParquetWriter(buf, SCHEMA, compression="zstd") as w:
        for (p, size), t in zip(listing, parts):
            files.append([_name(p), int(size), t.num_rows])
            if t.num_rows:
                w.write_table(t.select(list(COLUMNS)).cast(SCHEMA), row_group_size=_GROUP_ROWS)
        if len(files) != len(listing):
            raise ValueError(f"{len(files)} index tables for {len(listing)} files")
        w.add_key_value_metadata({_KEY: json.dumps({"version": _VERSION, "files": files}).encode()})
    data = buf.getvalue()
    write_bytes(uri, data, storage)
    return len(data)


def open_snapshot(fs, path: str, listing: list) -> tuple[pq.ParquetFile, list] | None:
    """(the snapshot at `path` opened, rows per results file) when it was made from exactly `listing`; None
    otherwise (absent, stale, unreadable: logged). Its rows are read a row group at a time by the caller."""
    try:
        # One GET of the whole file (small: ~0.7 MB per 1M ids). On S3, opening it, or cat_file without a range
        # (which asks the size first), costs a HEAD and, when it is absent, a listing of its "folder" as well.
        pf = pq.ParquetFile(io.BytesIO(fs.cat_file(path, start=0)))
        meta = json.loads((pf.metadata.metadata or {}).get(_KEY, b"null"))
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
        return pf, rows
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a cache: any trouble means reading the results files instead
        log.warning("index snapshot %s ignored (%s: %s); reading the results files", path, type(e).__name__,
                    str(e).splitlines()[0][:200] if str(e) else "")
        return None


def row_groups(pf: pq.ParquetFile):
    """The snapshot's rows, a row group (up to 1M rows) at a time."""
    for g in range(pf.num_row_groups):
        yield pf.read_row_group(g, columns=list(COLUMNS))


def save_snapshot(ledger, known=None) -> int | None:
    """Write the snapshot of the results files as listed now; returns its bytes (None: not written). The rows
    of a file listed in `known` (an index read earlier from the files or a snapshot, not extended with rows of
    this run: a ledger.LedgerIndex or an index_spill.SpilledIndex) under the same name and size are taken from
    it (`known.file_table(k)`); the other files' index columns are read, a few at a time. Nothing is written
    when `known` came from a snapshot of exactly these files (it is current)."""
    listing = ledger.listing()
    if not listing:
        return None
    reuse = {}
    if known is not None and known.sizes:
        if known.source == "snapshot" and list(zip(known.shards, known.sizes)) == [tuple(e) for e in listing]:
            return None
        reuse = {(p, size): k for k, (p, size) in enumerate(zip(known.shards, known.sizes))}

    def tables():
        fresh = ledger.iter_index([e for e in listing if tuple(e) not in reuse])  # read a few at a time
        for p, size in listing:
            if (p, size) in reuse:
                yield known.file_table(reuse[(p, size)])
                continue
            _, t = next(fresh)
            if t is None:  # removed or quarantined since it was listed: a snapshot now would be stale
                raise _Stale(p)
            yield t

    try:
        return write_snapshot(snapshot_uri(ledger.output), ledger.storage, tables(), listing)
    except _Stale:
        return None
