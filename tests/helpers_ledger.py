"""Shared pieces of the bookkeeping tests: the index of an output as the job reads it (ledger/index.py)."""

from __future__ import annotations

import pyarrow as pa

from rayinpaint.ledger.files import Ledger
from rayinpaint.ledger.index import local_index


def index_rows(ledger: Ledger) -> tuple[pa.Table, list]:
    """(every row of the results' index in file order: id, status, error_kind, prompt_truncated, file, pos; the
    files read, by number), read the way a run's start reads it."""
    with local_index() as index:
        index.add_results(ledger, ledger.listing())
        rows = index.sql("SELECT * FROM results ORDER BY file, pos").to_arrow_table()
        return rows, list(index.files)


def index_ids(ledger: Ledger) -> list:
    return index_rows(ledger)[0].column("id").to_pylist()


def begin(ledger: Ledger, manifest, colmap, storage, index, retry_errors: bool = False, write: bool = True):
    """A run's start as the job makes it: the manifest read (nothing written), then the plan (ledger/plan.py)."""
    from rayinpaint.ledger.plan import read_manifest, start

    reading = read_manifest(ledger, manifest, colmap, storage, index, retry_errors)
    return start(ledger, reading, storage, index, retry_errors=retry_errors, write=write)


def forget_in_overview_cache(output, key: str) -> None:
    """Drop `key` from every file entry of the output's overview cache, as a cache written before that key was
    counted would be (ledger/overview.py must read such entries again, not trust them)."""
    import json
    from pathlib import Path

    from rayinpaint.ledger import overview

    cache = Path(output) / "_index" / overview.OVERVIEW_CACHE
    doc = json.loads(cache.read_text())
    for entry in doc["files"].values():
        entry.pop(key, None)
    cache.write_text(json.dumps(doc))
