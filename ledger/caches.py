"""Small JSON caches under `{output}/_index/`, each keyed by the names of files that never change under their name
(results files: rewrites and merges write new names; run records: written once). A run reads a cache, reads only
the files it lacks, and writes it back; a missing, unreadable or older-version cache only means every file is read
again, as on a first run. Deleting these is always safe."""

from __future__ import annotations

import json
import logging

from rayinpaint.io.storage import filesystem, read_bytes, write_bytes

from .layout import Layout

log = logging.getLogger("rayinpaint.ledger")

VERSION = 1


def cache_uri(output: str, name: str) -> str:
    return Layout(output).index(name)


def load_doc(output: str, name: str, storage) -> dict | None:
    """The whole cache document as last saved (None when absent, unreadable or of another version)."""
    try:
        doc = json.loads(read_bytes(cache_uri(output, name), storage))
        return doc if doc.get("version") == VERSION else None
    except Exception:  # noqa: BLE001 - only a cache: without it every file is read
        return None


def save_doc(output: str, name: str, storage, doc: dict) -> None:
    try:
        write_bytes(cache_uri(output, name), json.dumps({**doc, "version": VERSION}, separators=(",", ":"),
                                                        default=str).encode(), storage)
    except Exception as e:  # noqa: BLE001 - the next run reads the files again
        log.warning("could not save %s (%s); the next run reads the files it covers again", name, e)


def remove(output: str, name: str, storage) -> None:
    fs, path = filesystem(cache_uri(output, name), storage)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def load(output: str, name: str, storage) -> dict:
    """{file name: entry} as last saved; empty when absent, unreadable or of another version."""
    doc = load_doc(output, name, storage)
    return doc["files"] if doc and isinstance(doc.get("files"), dict) else {}


def save(output: str, name: str, storage, entries: dict) -> None:
    """Write `entries` (only the files that exist now, so the cache does not outgrow them)."""
    save_doc(output, name, storage, {"files": entries})
