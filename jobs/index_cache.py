"""Small JSON caches under `{output}/_index/`, each keyed by the names of files that never change under their name
(results files: rewrites and merges write new names; run records: written once). A run reads a cache, reads only
the files it lacks, and writes it back; a missing, unreadable or older-version cache only means every file is read
again, as on a first run. Like the snapshot beside them, deleting these is always safe."""

from __future__ import annotations

import json
import logging

from rayinpaint.io.storage import join_uri, read_bytes, write_bytes

log = logging.getLogger("rayinpaint.job")

VERSION = 1


def cache_uri(output: str, name: str) -> str:
    return join_uri(output.rstrip("/"), "_index", name)


def load(output: str, name: str, storage) -> dict:
    """{file name: entry} as last saved; empty when absent, unreadable or of another version."""
    try:
        doc = json.loads(read_bytes(cache_uri(output, name), storage))
        return doc["files"] if doc.get("version") == VERSION and isinstance(doc.get("files"), dict) else {}
    except Exception:  # noqa: BLE001 - only a cache: without it every file is read
        return {}


def save(output: str, name: str, storage, entries: dict) -> None:
    """Write `entries` (only the files that exist now, so the cache does not outgrow them)."""
    try:
        doc = {"version": VERSION, "files": entries}
        write_bytes(cache_uri(output, name), json.dumps(doc, separators=(",", ":")).encode(), storage)
    except Exception as e:  # noqa: BLE001 - the next run reads the files again
        log.warning("could not save %s (%s); the next run reads the files it covers again", name, e)
