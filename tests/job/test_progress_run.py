"""The progress line of a real run (local Ray, the sleeping stand-in model of bench/standin.py): it says the model
is loading, then that the first batch is running, then counts that keep up with the rows on storage."""

from __future__ import annotations

import logging
import re
import time

import pyarrow.parquet as pq
import pytest

from helpers_job import FAST_TINY
from rayinpaint.bench.demo import make_dataset
from rayinpaint.bench.standin import sleeping_actor
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.inpaint import run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


class StoredAtEachLine(logging.Handler):
    """At each progress line: (time, the line's row count, the rows in the results files at that moment)."""

    def __init__(self, results):
        super().__init__()
        self.results, self.seen = results, []

    def stored(self) -> int:
        n = 0
        for f in self.results.glob("*.parquet") if self.results.exists() else ():
            try:
                n += pq.read_metadata(f).num_rows
            except Exception:  # noqa: BLE001 - a file being written: counted at the next line
                pass
        return n

    def emit(self, record):
        found = re.match(r"rows (\d+)/", record.getMessage())
        self.seen.append((time.monotonic(), int(found.group(1)) if found else None, self.stored(),
                          record.getMessage()))


def test_progress_follows_loading_first_batch_and_storage(ray_local, tmp_path):
    manifest = make_dataset(str(tmp_path / "in"), rows=16)
    out = tmp_path / "out"
    interval = 1.0
    cfg = JobConfig(manifest=(manifest,), output=str(out), num_actors=1,
                    **{**FAST_TINY, "progress_interval": interval})
    handler = StoredAtEachLine(out / "results")
    logger = logging.getLogger("rayinpaint.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run_job(cfg, model_actor=sleeping_actor(1.5, load_seconds=4.0))
    finally:
        logger.removeHandler(handler)
    messages = [m for *_, m in handler.seen]
    loading = next(i for i, m in enumerate(messages) if "(model loading on 1 actor(s): " in m)
    running = next(i for i, m in enumerate(messages) if "(running the first batch on 1 actor(s)" in m)
    counted = next(i for i, (_, n, _, _) in enumerate(handler.seen) if n)
    assert loading < running < counted, messages
    assert not any("waiting for the first rows" in m for m in messages)
    # Each line's count is at least what was on storage one interval (plus the ticker's poll) before it.
    for t, n, _, m in handler.seen:
        earlier = [stored for t2, _, stored, _ in handler.seen if t2 <= t - 1.5 * interval]
        assert n is not None and n >= max(earlier, default=0), (m, earlier)
