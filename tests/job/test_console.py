"""The console shows the job's lines and Ray's errors, not Ray's own chatter (which stays in Ray's log folder,
named in one line); --log-level works after the command too."""

from __future__ import annotations

import io
import logging
import re

import pytest

from helpers_job import run_cli
from rayinpaint.bench.demo import make_dataset
from rayinpaint.jobs.raylogs import _below_error_from_ray, quiet_ray_console

JOB_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) rayinpaint\.")


def test_ray_records_below_error_stay_off_the_console():
    import ray  # noqa: F401 - Ray configures its loggers on import
    import ray.data  # noqa: F401

    root = logging.getLogger()
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    try:
        quiet_ray_console()
        ray_handlers = [h for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")
                        for h in logging.getLogger(n).handlers
                        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        assert ray_handlers and all(h.level >= logging.ERROR for h in ray_handlers)
        # Records that reach the job's console handlers: Ray's below ERROR are dropped, the job's are kept.
        record = logging.makeLogRecord
        assert not handler.filter(record({"name": "ray.data.x", "levelno": logging.WARNING}))
        assert handler.filter(record({"name": "ray.data.x", "levelno": logging.ERROR}))
        assert handler.filter(record({"name": "rayinpaint.job", "levelno": logging.INFO}))
        assert handler.filter(record({"name": "raylike", "levelno": logging.INFO}))
    finally:
        root.removeHandler(handler)
        for h in root.handlers:  # leave the session's handlers (pytest's own) as they were
            h.removeFilter(_below_error_from_ray)


@pytest.mark.slow  # the job in a subprocess
def test_a_run_prints_the_jobs_lines_only(tmp_path):
    manifest = make_dataset(str(tmp_path / "in"), rows=2)
    r = run_cli("run", "--manifest", manifest, "--output", str(tmp_path / "o"), "--weights", "random:tiny",
                "--steps", "2", "--resolution", "128", "--batch-size", "4", "--max-error-rate", "0.6",
                "--log-level", "info", timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    foreign = [x for x in lines if not JOB_LINE.match(x) and not x.startswith("results: ")]
    # The core worker's C++ logger writes to stderr directly; nothing from Ray's Python loggers or the workers.
    assert all(re.match(r"^\[.* [EWF] \d+ \d+\] \w+\.cc:\d+", x) for x in foreign), foreign
    assert any("Ray's own logs" in x and "/logs" in x for x in lines)
    assert any("rayinpaint.progress: rows" in x for x in lines) and any("done: " in x for x in lines)
