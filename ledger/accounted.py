"""What earlier runs accounted for: `{output}/_index/accounted.json`, so that a daily run whose manifest folder
gained files reads only the new files' ids, not every id ever.

Written at the end of a run that left every manifest id with a row: the manifest files it read (path and
version: size and ETag or modification time, io.manifest.file_version), what they held (unique ids, duplicated
ids, rows without an id), the results files as listed then (name and size) and the counts over them
(ledger/index.py Counts). A later run trusts it only when nothing it describes changed: the same results files
(names and sizes), every file it lists still in the manifest with the same version, and no --retry-errors (which
must read every error row). Anything else, an unreadable file included, means every manifest file is read, as
on a first run. Like every cache under `_index/`, deleting it is always safe.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import caches
from .index import Counts

NAME = "accounted.json"


@dataclass
class Accounted:
    results: list       # [name, size] of each results file when written, in name order
    files: dict         # manifest file path -> version, every id of which had a row
    unique: int         # unique ids in those files (rows without an id count once each)
    duplicates: dict    # {id: rows} of the ids repeated in those files
    missing: list       # names of their rows without an id
    counts: Counts      # over the results files listed

    def to_json(self) -> dict:
        return {**self.__dict__, "counts": self.counts.to_json()}


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def load(output: str, storage) -> Accounted | None:
    doc = caches.load_doc(output, NAME, storage)
    try:
        fields = {k: v for k, v in (doc or {}).items() if k != "version"}
        return Accounted(**{**fields, "counts": Counts.from_json(fields["counts"])}) if doc else None
    except (KeyError, TypeError):
        return None


def save(output: str, storage, acc: Accounted) -> None:
    caches.save_doc(output, NAME, storage, acc.to_json())


def forget(output: str, storage) -> None:
    """Remove the record (a run that did not account for every id: the next run reads every file)."""
    caches.remove(output, NAME, storage)


def reusable(acc: Accounted | None, listing: list, files: list, retry_errors: bool) -> set:
    """Numbers of the manifest files of `files` ((path, version)) that `acc` accounted for and that need not be
    read again; empty when `acc` cannot be trusted (see the module docstring). `listing`: the results files now."""
    if acc is None or retry_errors:
        return set()
    if [[_name(p), int(s)] for p, s in listing] != [[n, int(s)] for n, s in acc.results]:
        return set()
    now = {p: v for p, v in files}
    if any(now.get(p) != v for p, v in acc.files.items()):  # a file changed or removed: its ids are not known
        return set()
    return {k for k, (p, _) in enumerate(files) if p in acc.files}
