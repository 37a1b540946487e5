"""A stand-in model actor for tests and the keep-up benchmark: sleeps per model batch instead of running a model.

Selected by the environment of the process that builds the pipeline (the driver), so nothing in the job's
options or preflight changes:

    RAYINPAINT_STANDIN_SLEEP=0.05        # seconds per model call (of the fixed shape --batch-size)
    RAYINPAINT_STANDIN_LOG=/some/dir     # optional: one file per actor, a line "start end regions" per call

It is `InpaintPredictor` with the model call replaced: the same blocks in (PREPARED_SCHEMA), the same columns
out, the same split of a block's regions into fixed-shape batches; each region's "output" is its model input
echoed back, so finish pastes back real pixels and the untouched-pixel promise still holds.
"""

from __future__ import annotations

import os
import time

import numpy as np

from .predictor import InpaintPredictor, ModelSettings, _actor_name

SLEEP_ENV = "RAYINPAINT_STANDIN_SLEEP"
LOG_ENV = "RAYINPAINT_STANDIN_LOG"


def standin_args() -> tuple[float, str | None] | None:
    """(seconds per model call, log folder) when the environment asks for the stand-in, else None."""
    value = os.environ.get(SLEEP_ENV)
    if not value:
        return None
    return float(value), os.environ.get(LOG_ENV) or None


class SleepPredictor(InpaintPredictor):
    def __init__(self, settings: ModelSettings, seconds: float, log_dir: str | None = None):
        # No model: only what InpaintPredictor.__call__ and _run use.
        self.device, self.dtype = "cpu", "none"
        self.inpainter = None
        self.res = settings.resolution
        self.pad_to = max(1, settings.pad_to)
        self._pads = {}
        self.sha = "standin-sleep"
        self.actor = _actor_name()
        self._tokens = lambda prompt: 0
        self._context = 77
        self._oom = MemoryError
        self.seconds = float(seconds)
        self._log = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self._log = open(os.path.join(log_dir, f"actor-{os.getpid()}.txt"), "a", buffering=1)

    def speed_text(self) -> str:
        return ""  # InpaintPredictor's imports torch (via model/speed.py): seconds of start-up a stand-in need not pay

    def _padded(self, images, masks, prompts, negs, seeds, size) -> tuple[np.ndarray, np.ndarray]:
        """One model call of the fixed shape: sleep, then echo the inputs."""
        t0 = time.time()
        time.sleep(self.seconds)
        if self._log is not None:
            self._log.write(f"{t0:.6f} {time.time():.6f} {len(seeds)}\n")
        return np.ascontiguousarray(images), np.ones(len(seeds), bool)
