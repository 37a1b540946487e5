"""Shared pieces of the whole-job tests: tiny fast settings, what the demo dataset holds, the command line.

Results are read with the product's own `rayinpaint.ledger.files.read_results(output, storage)`, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# JobConfig settings for a fast run of the tiny model on CPU, without `weights` (tests that load their own
# checkpoint pass it next to these). FAST_TINY adds the random tiny model.
FAST = dict(steps=2, resolution=128, batch_size=4, progress_interval=1.0, max_error_rate=0.5, mask_dilate=4,
            feather=4)
FAST_TINY = dict(weights="random:tiny", **FAST)

# The deliberately bad rows `rayinpaint.bench.demo.make_dataset` adds, with the error_kind each must end as.
BAD = {"bad-truncated": "truncated", "bad-not-an-image": "not_an_image", "bad-missing-file": "not_found",
       "bad-mask-size": "mask_size_mismatch"}
DEMO_BAD = 5  # make_dataset adds five extra rows: four bad ones and one with an empty mask

FAULTHOOKS = str(Path(__file__).parent / "faulthooks")


def faulthooks_pythonpath() -> str:
    """PYTHONPATH for a job subprocess that loads tests/faulthooks (its sitecustomize injects the faults the
    RAYINPAINT_TEST_* / RAYINPAINT_FAULT_* variables ask for), ahead of this process's PYTHONPATH."""
    return os.pathsep.join([FAULTHOOKS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def cli_cmd(*args: str) -> list[str]:
    """The `rayinpaint` command line as an argument list: `python -m rayinpaint.jobs ARGS` with this interpreter."""
    return [sys.executable, "-m", "rayinpaint.jobs", *args]


def run_cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the command line to the end, stdout and stderr captured as text. `env` is added to this process's
    environment; `kw` goes to subprocess.run (e.g. timeout)."""
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)
