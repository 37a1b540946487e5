"""A stand-in model actor for tests and the keep-up benchmark: sleeps per model batch instead of running a model.

It is `InpaintPredictor` with the model call replaced: the same blocks in (PREPARED_SCHEMA), the same columns
out, the same split of a block's regions into fixed-shape batches; each region's "output" is its model input
echoed back, so finish pastes back real pixels and the untouched-pixel promise still holds.

The caller hands it to the job; nothing in the job's options or pre-flight changes:

    run_job(cfg, model_actor=sleeping_actor(0.05, log_dir))     # in this process

    python -m rayinpaint.bench.standin --sleep 0.05 [--load 5] [--log DIR] -- run --manifest ... --output ...
                                                                  # the `rayinpaint` command line, with the stand-in

--sleep: seconds per model call (of the fixed shape --batch-size); --load: seconds once per actor, where the model
would load; --log: one file per actor in DIR, a line "start end regions" per call.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from rayinpaint.jobs.events import LOADED, LOADING
from rayinpaint.jobs.predictor import InpaintPredictor, ModelSettings, report_state


def sleeping_actor(seconds: float, log_dir: str | None = None, load_seconds: float = 0.0) -> tuple:
    """The `model_actor` of run_job (jobs/pipeline.py PassPlan.actor) that sleeps `seconds` per model call, and
    `load_seconds` once where a model would load."""
    return SleepPredictor, (float(seconds), log_dir, float(load_seconds))


class SleepPredictor(InpaintPredictor):
    def __init__(self, settings: ModelSettings, seconds: float, log_dir: str | None = None,
                 load_seconds: float = 0.0):
        # No model and no torch (seconds of start-up a stand-in need not pay): only what __call__ and _run use.
        report_state(settings, LOADING)
        time.sleep(load_seconds)
        self.device, self.dtype, self.inpainter = "cpu", "none", None
        self.set_batching(settings, sha="standin-sleep", tokens=lambda prompt: 0, context=77, oom=MemoryError)
        self.seconds = float(seconds)
        self._log = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self._log = open(os.path.join(log_dir, f"actor-{os.getpid()}.txt"), "a", buffering=1)
        report_state(settings, LOADED)

    def speed_text(self) -> str:
        return ""  # InpaintPredictor's imports torch (via model/speed.py)

    def _padded(self, images, masks, prompts, negs, seeds, size) -> tuple[np.ndarray, np.ndarray]:
        """One model call of the fixed shape: sleep, then echo the inputs."""
        t0 = time.time()
        time.sleep(self.seconds)
        if self._log is not None:
            self._log.write(f"{t0:.6f} {time.time():.6f} {len(seeds)}\n")
        return np.ascontiguousarray(images), np.ones(len(seeds), bool)


def main(argv=None) -> int:
    """`rayinpaint ARGS` (jobs/cli.py) with the sleeping stand-in as the model actor."""
    p = argparse.ArgumentParser(prog="python -m rayinpaint.bench.standin",
                                description="Run the rayinpaint command line with stand-in model actors that "
                                            "sleep per model batch.",
                                usage="%(prog)s --sleep SECONDS [--log DIR] -- COMMAND [OPTIONS]")
    p.add_argument("--sleep", type=float, required=True, help="seconds per model call")
    p.add_argument("--load", type=float, default=0.0, help="seconds once per actor, where the model would load")
    p.add_argument("--log", default=None, metavar="DIR", help="one file per actor: a line 'start end regions' "
                                                              "per model call")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the rayinpaint command line, after --")
    args = p.parse_args(argv)
    rest = args.command[1:] if args.command[:1] == ["--"] else args.command
    from rayinpaint.jobs.cli import main as cli_main

    return cli_main(rest, model_actor=sleeping_actor(args.sleep, args.log, args.load))


if __name__ == "__main__":
    raise SystemExit(main())
