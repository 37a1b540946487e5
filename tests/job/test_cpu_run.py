"""A run that finds no GPU says so at once, with the time a batch will take on CPU (scaled from the measured CPU
record in BENCHMARKS.md) and what to pass for a quick try."""

from __future__ import annotations

import logging
import re

from rayinpaint.jobs import pipeline
from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.estimate import CPU_RECORD


def pool_lines(monkeypatch, caplog, **settings) -> list[str]:
    """The lines `model_pool` logs on a machine with no GPU (Ray's resources and the placement check stubbed)."""
    monkeypatch.setattr(pipeline, "ray_gpus", lambda: 0.0)
    monkeypatch.setattr(pipeline, "check_pool", lambda *a: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="rayinpaint.job"):
        assert pipeline.model_pool(JobConfig(manifest=("m",), output="o", **settings)) == (1, 0.0, 1.0)
    return [r.getMessage() for r in caplog.records]


def test_no_gpu_says_the_time_per_batch_and_the_quick_try(monkeypatch, caplog):
    (line,) = pool_lines(monkeypatch, caplog, weights="random:sd2")
    assert caplog.records[0].levelno == logging.WARNING
    assert line.startswith("no GPU found: the model actors run on CPU, about ")
    assert "per batch of 16 at 512 px with dpmpp_2m 25 steps" in line
    assert 'BENCHMARKS.md, "The full model on CPU"' in line
    assert "--weights random:tiny" in line and "--limit 4 --batch-size 1 --resolution 256 --steps 10" in line
    batch = seconds(line)
    # 25 steps of a batch of 16 cost more than 16 images at the record's 2 steps, and less than 12.5 times that.
    measured = 16 * CPU_RECORD.seconds_per_image
    assert measured < batch < 12.5 * measured
    caplog.clear()
    (small,) = pool_lines(monkeypatch, caplog, weights="random:sd2", batch_size=1, resolution=256, steps=10)
    assert seconds(small) < CPU_RECORD.seconds_per_image  # the quick try: less than one measured 512-px image


def seconds(line: str) -> float:
    value, unit = re.search(r"about ([\d.]+) (s|min|h) per batch", line).groups()
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


def test_the_tiny_model_on_cpu_is_one_short_line(monkeypatch, caplog):
    (line,) = pool_lines(monkeypatch, caplog, weights="random:tiny")
    assert line == "no GPU found: running 1 model actor(s) on CPU (the tiny model: seconds per batch)"
    assert caplog.records[0].levelno == logging.INFO
