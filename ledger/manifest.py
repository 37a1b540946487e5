"""The manifest's ids, as the driver knows them: never the rows, only their ids, read into the index's
`manifest` table (ledger/index.py) so that the driver's memory does not grow with the manifest.

The id column (only) of each file is read, files in parallel, a row group at a time; rows without an id get a
stable name (`missing_id_name`). Ids that appear more than once and rows without an id become error rows that
the manifest alone settles (`settled_rows`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayinpaint.io.errors import ManifestError, redact_uri
from rayinpaint.io.manifest import check_schema, list_manifest_files, manifest_storage_errors
from rayinpaint.io.results import ERROR, results_table
from rayinpaint.io.retry import classify
from rayinpaint.io.storage import filesystem, protocol_of

from .index import BATCH_IDS, Index

SCAN_THREADS = 8  # manifest files whose id column is read at once (within BATCH_IDS ids in memory at once)


@dataclass
class Scan:
    """files: (path, version) of every manifest file, in order (a file's number is its place here).
    groups: the files read, in groups that share one filesystem and one schema (read separately by a pass: a
    reader unifying the schemas of several files would cast one file's URI strings to another's inline bytes).
    missing: names of the rows without an id, in the files read."""
    files: list
    groups: list
    missing: list


def missing_id_name(path: str, row: int) -> str:
    """The id recorded for a manifest row whose id is null or empty: stable across reruns of the same file."""
    return f"<missing id> {redact_uri(path)}#{row}"


def list_files(uris, storage) -> list:
    """(path, version) of every manifest file (io.manifest.file_version), storage errors in one line."""
    with manifest_storage_errors(", ".join(uris), "finding the files"):
        return list_manifest_files(list(uris), storage, detail=True)


def read_ids(files: list, numbers: list, colmap, storage, index: Index) -> Scan:
    """Check the schema of the files numbered `numbers` (of `files`) and read their id column into `index`,
    files in parallel."""
    budget = _Budget(BATCH_IDS)

    def one(k):
        path = files[k][0]
        with manifest_storage_errors(path, "reading"), index.con.cursor() as con:
            return _read_ids(path, k, colmap, storage, budget, lambda ids: index.add_manifest_ids(ids, k, con))

    with ThreadPoolExecutor(SCAN_THREADS) as ex:
        read = list(ex.map(one, numbers))
    groups: dict = {}
    for k, (_, key) in zip(numbers, read):
        groups.setdefault(key, []).append(files[k][0])
    missing = [name for names, _ in read for name in names]
    if missing:
        index.add_manifest_ids(pa.array(missing, pa.string()), -1)
    return Scan(files, list(groups.values()), missing)


def _read_ids(path: str, k: int, colmap, storage, budget: "_Budget", add) -> tuple[list[str], tuple]:
    """Pass the file's non-empty ids to `add`, a row group at a time (within `budget`, shared by the files read
    at once); returns (names for its rows without an id, its group key)."""
    fs, p = filesystem(path, storage)
    missing, seen = [], 0
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
        for g in range(pf.num_row_groups):
            with budget.take(pf.metadata.row_group(g).num_rows):
                col = pf.read_row_group(g, columns=[colmap.user("id")]).column(0)
                col = pc.cast(col, pa.string()) if col.type != pa.string() else col
                absent = pc.or_(pc.is_null(col), pc.equal(pc.fill_null(col, ""), ""))
                if pc.any(absent).as_py():
                    missing += [missing_id_name(path, seen + r) for r in pc.indices_nonzero(absent).to_pylist()]
                    col = pc.drop_null(col.filter(pc.invert(absent)))
                add(col.combine_chunks())
                seen += len(absent)
    return missing, key


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


def settled_rows(duplicates: dict, missing: list) -> pa.Table:
    """Rows the manifest alone settles: each duplicated id and each row without an id is one error row,
    written once and never processed or retried (no run can change them)."""
    rows = [{"id": i, "status": ERROR, "error_kind": "duplicate_id",
             "error": f"id appears {n} times in the manifest; ids must be unique, so none of these rows "
                      f"was processed"} for i, n in sorted(duplicates.items())]
    rows += [{"id": name, "status": ERROR, "error_kind": "missing_id",
              "error": "the row's id is null or empty; every row needs a unique id, so it was not processed"}
             for name in missing]
    return results_table(rows)
