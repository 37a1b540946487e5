"""The output's layout: every path the job writes under `--output`, and the status vocabulary of its rows.

    results/part-*.parquet      the results rows, the one source of truth for what is done (ledger/files.py)
    images/                     the output images (io/finish.py names them)
    masks/                      the masks a detector made (--mask-from), named and laid out as the images
    _quarantine/                results files that could not be read, moved aside, never silently used
    _index/                     caches of the bookkeeping: deleting them is always safe (ledger/caches.py)
    _runs/                      one record per run (ledger/overview.py)
    _previews/                  the report's thumbnails
    _superseded/<fingerprint>/  results recorded under other settings, moved aside by --reprocess
    _SETTINGS.json              the pixel settings the results were made with (ledger/fingerprint.py)
    _SUMMARY.json, _REPORT.html, _SUCCESS

Readers take `results/*.parquet` as one table; nothing else is ever written under `results/`.
"""

from __future__ import annotations

from rayinpaint.io.results import DONE_STATUSES, ERROR, OK, UNCHANGED
from rayinpaint.io.storage import join_uri

__all__ = ["OK", "UNCHANGED", "ERROR", "DONE_STATUSES", "skipped_statuses", "Layout"]

RESULTS = "results"
IMAGES = "images"
QUARANTINE = "_quarantine"
INDEX = "_index"
RUNS = "_runs"
PREVIEWS = "_previews"
SUPERSEDED = "_superseded"
SETTINGS = "_SETTINGS.json"
SUMMARY = "_SUMMARY.json"
REPORT = "_REPORT.html"
SUCCESS = "_SUCCESS"


def skipped_statuses(retry_errors: bool) -> tuple:
    """Statuses whose ids a run does not process again: done ones, and errors unless --retry-errors."""
    return DONE_STATUSES if retry_errors else DONE_STATUSES + (ERROR,)


class Layout:
    """The URIs of one output (`root`: its --output)."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")

    def path(self, *parts: str) -> str:
        return join_uri(self.root, *parts)

    @property
    def results(self) -> str:
        return self.path(RESULTS)

    @property
    def quarantine(self) -> str:
        return self.path(QUARANTINE)

    def index(self, name: str) -> str:
        return self.path(INDEX, name)

    @property
    def runs(self) -> str:
        return self.path(RUNS)

    @property
    def previews(self) -> str:
        return self.path(PREVIEWS)

    def superseded(self, fingerprint: str) -> str:
        return self.path(SUPERSEDED, fingerprint)

    @property
    def settings(self) -> str:
        return self.path(SETTINGS)

    @property
    def summary(self) -> str:
        return self.path(SUMMARY)

    @property
    def report(self) -> str:
        return self.path(REPORT)

    @property
    def success(self) -> str:
        return self.path(SUCCESS)
