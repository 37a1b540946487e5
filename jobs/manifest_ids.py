"""The manifest's ids, as the driver knows them: never the rows, only their ids, spilled to local disk in parts
(jobs/spill.py) so that the driver's memory does not grow with the manifest.

The id column (only) of every file is read, files in parallel; rows without an id get a stable name
(`missing_id_name`), and ids that appear more than once are found part by part (an id's every occurrence is in
the same part). Both become error rows that the manifest alone settles (`settled_rows`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import ManifestError, redact_uri
from rayinpaint.io.manifest import check_schema, list_manifest_files
from rayinpaint.io.results import results_table
from rayinpaint.io.retry import classify
from rayinpaint.io.storage import filesystem, protocol_of

from .config import JobConfig
from .preflight import manifest_storage_errors
from .spill import PART_IDS, PartedTable, SpillFolder, parts_for

_SCAN_THREADS = 8  # manifest files whose id column is read at once (within PART_IDS ids in memory at once)
ID_SCHEMA = pa.schema([("id", pa.string())])


class ManifestScan(NamedTuple):
    """groups: manifest files in groups that share one filesystem and one schema (read separately: a reader
    unifying the schemas of several files would cast one file's URI strings to another's inline bytes).
    ids: every unique id, including the names of rows without an id (`missing_id_name`), in parts (each part
    in the order of first occurrence). unique: how many. duplicates: {id: count} of ids that appear more than
    once. missing: names of rows without an id."""
    groups: list
    ids: PartedTable
    unique: int
    duplicates: dict
    missing: list

    @property
    def parts(self) -> int:
        return self.ids.parts


def missing_id_name(path: str, row: int) -> str:
    """The id recorded for a manifest row whose id is null or empty: stable across reruns of the same file."""
    return f"<missing id> {redact_uri(path)}#{row}"


def scan_manifest(cfg: JobConfig, storage, spill: SpillFolder) -> ManifestScan:
    """List manifest files, check every schema, read the id column only (files in parallel), and split the
    ids into parts on local disk."""
    with manifest_storage_errors(", ".join(cfg.manifest), "finding the files"):
        files = list_manifest_files(list(cfg.manifest), storage)
    colmap = cfg.column_map()

    def one(path, raw):
        with manifest_storage_errors(path, "reading"):
            return _read_ids(path, colmap, storage, raw, budget)

    budget = _Budget(PART_IDS)
    with ThreadPoolExecutor(_SCAN_THREADS) as ex:
        read = list(ex.map(one, files, [spill.new_path("manifest") for _ in files]))
    groups: dict = {}
    for path, (_, _, key, _) in zip(files, read):
        groups.setdefault(key, []).append(path)
    missing = [name for _, names, _, _ in read for name in names]
    split = spill.table(ID_SCHEMA, parts_for(sum(n for _, _, _, n in read) + len(missing)))
    for raw, _, _, _ in read:  # in file order
        with pa.OSFile(raw) as f:
            for batch in pa.ipc.open_stream(f):
                split.add(pa.Table.from_batches([batch]))
        os.remove(raw)
    split.add(pa.table({"id": pa.array(missing, pa.string())}))
    ids, dups = _unique(split, spill)
    return ManifestScan(list(groups.values()), ids, ids.rows, dups, missing)


def _unique(split: PartedTable, spill: SpillFolder) -> tuple[PartedTable, dict]:
    """(each part's ids once, in the order of first occurrence; {id: count} of the repeated ones)."""
    ids = spill.table(ID_SCHEMA, split.parts)
    dups: dict = {}
    for k in range(split.parts):
        counts = pc.value_counts(split.ids(k))  # in the order of first occurrence
        many = pc.greater(counts.field("counts"), 1)
        if pc.any(many).as_py():
            dups.update(zip(pc.filter(counts.field("values"), many).to_pylist(),
                            pc.filter(counts.field("counts"), many).to_pylist()))
        ids.add(pa.table({"id": counts.field("values")}), part=k)
    split.drop()
    ids.close()
    return ids, dups


def _read_ids(path: str, colmap, storage, raw: str, budget: "_Budget") -> tuple[str, list[str], tuple, int]:
    """Write the file's non-empty ids to the local file `raw`, a row group at a time (within `budget`, shared by
    the files read at once); returns (raw, names for its rows without an id, its group key, the ids written)."""
    fs, p = filesystem(path, storage)
    missing, seen, written = [], 0, 0
    with fs.open(p, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            if classify(e) != "permanent":  # storage trouble after the client's retries, not a bad file
                raise
            raise ManifestError(f"{redact_uri(path)}: not a readable Parquet file ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from None
        try:
            check_schema(pf.schema_arrow, colmap)
        except ManifestError as e:
            raise ManifestError(f"{redact_uri(path)}: {e}") from None
        key = (protocol_of(path), pf.schema_arrow.to_string(show_schema_metadata=False))
        with pa.ipc.new_stream(raw, ID_SCHEMA) as out:
            for g in range(pf.num_row_groups):
                with budget.take(pf.metadata.row_group(g).num_rows):
                    col = pf.read_row_group(g, columns=[colmap.user("id")]).column(0)
                    col = pc.cast(col, pa.string()) if col.type != pa.string() else col
                    absent = pc.or_(pc.is_null(col), pc.equal(pc.fill_null(col, ""), ""))
                    if pc.any(absent).as_py():
                        missing += [missing_id_name(path, seen + r) for r in pc.indices_nonzero(absent).to_pylist()]
                        col = pc.drop_null(col.filter(pc.invert(absent)))
                    out.write_table(pa.table({"id": col}))
                    seen += len(absent)
                    written += len(col)
    return raw, missing, key, written


class _Budget:
    """Ids the scan's threads may hold at once: a row group larger than the whole budget waits for all of it."""

    def __init__(self, ids: int):
        self.whole = self.free = ids
        self._cv = threading.Condition()

    @contextmanager
    def take(self, ids: int):
        ids = min(ids, self.whole)
        with self._cv:
            self._cv.wait_for(lambda: self.free >= ids)
            self.free -= ids
        try:
            yield
        finally:
            with self._cv:
                self.free += ids
                self._cv.notify_all()


def settled_rows(scan: ManifestScan) -> pa.Table:
    """Rows the manifest alone settles: each duplicated id and each row without an id is one error row,
    written once and never processed or retried (no run can change them)."""
    rows = [{"id": i, "status": "error", "error_kind": "duplicate_id",
             "error": f"id appears {n} times in the manifest; ids must be unique, so none of these rows "
                      f"was processed"} for i, n in sorted(scan.duplicates.items())]
    rows += [{"id": name, "status": "error", "error_kind": "missing_id",
              "error": "the row's id is null or empty; every row needs a unique id, so it was not processed"}
             for name in scan.missing]
    return results_table(rows)
