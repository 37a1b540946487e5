"""The model actor: one per GPU (or one CPU actor), holding the model for its whole life.

Rows arrive prepared: one or more regions each (io/regions.py), each region's `model_image`/`model_mask` bytes
at its model side; rows whose status is not `ready` pass through untouched. The unit of model work is the region:
the regions of every ready row of a block run together, in batches of one side at a time, so regions of different
rows share a batch. Every model call has the same batch shape (`pad_to` regions; short batches are padded with
copies of their last region): kernels pick their reduction order by shape, so a fixed shape, with each region's
noise drawn from its own seed, is what makes a row's output bitwise independent of which rows and regions share
its batch (checked in tests/job/test_end_to_end.py and tests/job/test_regions_through_stages.py). A CUDA out-of-memory error splits the
batch in halves and retries; any other exception in a batch retries its regions one at a time, so one bad region
makes one error row (naming the region), not a failed job.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rayinpaint.io.errors import redact_uri
from rayinpaint.io.results import ERROR

from .events import LOADED, LOADING, RUNNING, report

log = logging.getLogger("rayinpaint.predictor")


@dataclass(frozen=True)
class ModelSettings:
    """Everything a model actor is built from (JobConfig.model_settings builds it once, on the driver)."""
    weights: str
    dtype: str = "auto"
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 7.5
    strength: float = 1.0
    eta: float = 0.0
    karras: bool = True
    resolution: int = 512
    pad_to: int = 1                       # the fixed batch shape (--batch-size)
    cache_dir: str | None = None
    weights_sha256: str | None = None
    storage_options: dict | None = None   # fsspec options for the weights' filesystem
    model_config: str = "sd2-inpainting"
    speed: str = ""
    strict_speed: bool = False            # a fast path that fails or fails its self-check fails the actor
    deterministic: bool = False           # fixed kernels (speed switch `deterministic`)
    events: object = None                 # jobs/events.py RunEvents actor told this actor's state (None: no one)


def pick_device_and_dtype(dtype: str):
    import torch

    from rayinpaint.model import auto_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dt = auto_dtype(device)
    else:
        dt = getattr(torch, dtype)
    return device, dt


class InpaintPredictor:
    def __init__(self, settings: ModelSettings):
        import torch

        from rayinpaint.model import Inpainter
        from rayinpaint.model.choices import parse_switches

        t0 = time.perf_counter()
        report_state(settings, LOADING)
        switches = parse_switches(settings.speed, "--speed") if settings.speed else {}
        if settings.deterministic:
            switches["deterministic"] = True
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS makes its handle
        self.device, self.dtype = pick_device_and_dtype(settings.dtype)
        if self.device == "cpu":
            # Leave the other CPU stages room; one intra-op pool per actor.
            torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        self.model = _load(settings, self.device, self.dtype)
        self.inpainter = Inpainter(self.model, sampler=settings.sampler, steps=settings.steps,
                                   guidance=settings.guidance, eta=settings.eta, strength=settings.strength,
                                   karras=settings.karras and settings.sampler != "ddim", speed=switches,
                                   strict_speed=settings.strict_speed)
        self.set_batching(settings, sha=self.model.sha256, tokens=_token_counter(),
                          context=self.model.config.text.context_length,
                          oom=torch.cuda.OutOfMemoryError if hasattr(torch.cuda, "OutOfMemoryError") else RuntimeError)
        if self.device == "cuda":
            self._warmup(switches)
        log.info("speed switches in effect: %s", self.speed_text())
        log.info("model %s loaded on %s/%s in %.1fs", settings.weights, self.device, self.dtype,
                 time.perf_counter() - t0)
        report_state(settings, LOADED)

    def set_batching(self, settings: ModelSettings, *, sha: str, tokens, context: int, oom: type) -> None:
        """Everything besides the model that __call__ and _run use: the fixed batch shape, the identity written
        into every row, the prompt-length check and the exception that means out of memory. One method, so that a
        model actor with another model call (a subclass overriding `_padded`) is set up the same way."""
        self.res = settings.resolution
        self.pad_to = max(1, settings.pad_to)   # regions per model call at side self.res
        self._pads: dict[int, int] = {}         # per larger side (--max-resolution), once out of memory there
        self.sha = sha
        self.actor = _actor_name()
        self._tokens = tokens                   # prompt -> token count
        self._context = context                 # longer prompts are cut (and counted)
        self._oom = oom
        self._events = settings.events          # told when the first batch starts
        self._first = True

    def _warmup(self, switches: dict) -> None:
        """Compile, autotune and capture the CUDA graph for the fixed batch shape now, before streaming starts.
        The Inpainter checks the fast step and turns off a switch that fails (model/selfcheck.py); anything else
        that fails here with compile or CUDA graphs on is retried once without them (slower, same results)
        rather than fail every batch, unless strict_speed."""
        try:
            info = self._warmup_fitting()
        except Exception as e:  # noqa: BLE001 - any compile/capture failure; the eager path is the fallback
            if isinstance(e, self._oom) or self.inpainter.strict_speed:
                raise
            log.warning("warm-up with %s failed (%s: %s); continuing without torch.compile and CUDA graphs",
                        self.inpainter.speed, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
            self.inpainter.set_speed({**switches, "compile": False, "cuda_graph": False})
            info = self._warmup_fitting()
        log.info("warm-up at batch %d, %dpx: %s", self.pad_to, self.res,
                 {k: round(v, 3) if isinstance(v, float) else v for k, v in info.items()})

    def _warmup_fitting(self) -> dict:
        """Warm up at the fixed batch shape; out of memory halves it (as a batch would) until it fits."""
        while True:
            try:
                return self.inpainter.warmup(self.pad_to, self.res)
            except self._oom:
                if self.pad_to == 1:
                    raise
            _release_memory()  # outside the except block: the failed call's frames are gone by now
            self.pad_to = (self.pad_to + 1) // 2
            log.warning("CUDA out of memory at warm-up; using batches of %d", self.pad_to)

    def _padded(self, images, masks, prompts, negs, seeds, size) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images, finite flags) of the rows, run as one batch of `size` rows."""
        n = len(seeds)
        if n >= size:
            return self.inpainter.generate(images, masks, prompts, negs, seeds)
        k = size - n
        out, finite = self.inpainter.generate(np.concatenate([images, np.repeat(images[-1:], k, 0)]),
                                              np.concatenate([masks, np.repeat(masks[-1:], k, 0)]),
                                              prompts + prompts[-1:] * k, negs + negs[-1:] * k,
                                              seeds + seeds[-1:] * k)
        return out[:n], finite[:n]

    def _pad(self, side: int) -> int:
        return self.pad_to if side == self.res else self._pads.get(side, self.pad_to)

    def _run(self, images, masks, prompts, negs, seeds, size=None):
        side = images.shape[1]
        size = self._pad(side) if size is None else size
        if len(seeds) > size:  # more rows than the fixed shape: run in chunks of it
            parts = [self._run(images[i:i + size], masks[i:i + size], prompts[i:i + size], negs[i:i + size],
                               seeds[i:i + size], size) for i in range(0, len(seeds), size)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        try:
            return self._padded(images, masks, prompts, negs, seeds, size)
        except self._oom:
            if size == 1:
                raise
        # Retry outside the except block: inside it, the exception's traceback keeps the failed call's frames, and
        # with them its activations and step buffers, alive through the retry.
        _release_memory()
        half = (size + 1) // 2
        log.warning("CUDA out of memory at batch %d; splitting into batches of %d", size, half)
        if size == self._pad(side):  # keep the smaller shape instead of failing again on every batch
            if side == self.res:
                self.pad_to = half
            else:
                self._pads[side] = half
        return self._run(images, masks, prompts, negs, seeds, half)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self._first:
            self._first = False
            report(self._events, "actor", self.actor, RUNNING)
        n = batch.num_rows
        status = batch.column("status").to_pylist()
        ready = [i for i in range(n) if status[i] == "ready"]
        results: list[list[bytes] | None] = [None] * n
        errors: dict[int, tuple[str, str]] = {}
        t_inpaint = [0.0] * n
        truncated: list[bool | None] = [None] * n
        if ready:
            regions = self._regions(batch, ready)
            for row, k, _, _, _, _, prompt, neg, _ in regions:
                if k == 0:  # one prompt per row
                    truncated[row] = max(self._tokens(prompt), self._tokens(neg)) > self._context
            outs, errs, times = self._run_regions(regions)
            for j, (row, k, count, window, *_rest) in enumerate(regions):
                t_inpaint[row] += times[j]
                results[row] = (results[row] or []) + [outs[j]]
                if errs[j] and row not in errors:
                    errors[row] = ("model_error", f"region {k + 1} of {count} (window {window}): {errs[j]}")
            for row in errors:
                results[row] = None
        batch = _with_errors(batch.drop_columns(["model_image", "model_mask"]), errors)
        batch = batch.append_column("result", pa.array(results, pa.list_(pa.binary())))
        batch = batch.append_column("t_inpaint", pa.array(t_inpaint, pa.float64()))
        batch = batch.append_column("prompt_truncated", pa.array(truncated, pa.bool_()))
        batch = batch.append_column("actor", pa.array([self.actor] * n, pa.string()))
        batch = batch.append_column("speed", pa.array([self.speed_text()] * n, pa.string()))
        return batch.append_column("model_sha256", pa.array([self.sha] * n, pa.string()))

    def speed_text(self) -> str:
        """The switches in effect now (after any fallback), as RAYINPAINT_SPEED would spell them."""
        from rayinpaint.model.speed import Speed, env_text

        speed = getattr(self.inpainter, "speed", None)
        return env_text(speed) if isinstance(speed, Speed) else ""

    @staticmethod
    def _regions(batch: pa.Table, ready: list[int]) -> list[tuple]:
        """(row index, region index, regions in the row, window, image, mask, prompt, negative prompt, seed) of
        every region of the ready rows, row by row in region order; images [r, r, 3] and masks [r, r] uint8."""
        cols = {name: batch.column(name) for name in ("model_image", "model_mask", "region_res", "region_seeds",
                                                       "windows", "prompt", "negative_prompt")}
        regions = []
        for i in ready:
            images, masks = cols["model_image"][i].as_py(), cols["model_mask"][i].as_py()
            sides, seeds = cols["region_res"][i].as_py(), cols["region_seeds"][i].as_py()
            windows = cols["windows"][i].as_py()
            prompt, neg = cols["prompt"][i].as_py() or "", cols["negative_prompt"][i].as_py() or ""
            for k, r in enumerate(sides):
                regions.append((i, k, len(sides), windows[k], np.frombuffer(images[k], np.uint8).reshape(r, r, 3),
                                np.frombuffer(masks[k], np.uint8).reshape(r, r), prompt, neg, int(seeds[k])))
        return regions

    def _run_regions(self, regions: list[tuple]) -> tuple[list, list, list]:
        """As _run_rows, per region: the regions of each model side run as one list (batches of one shape)."""
        outs, errs, times = [None] * len(regions), [None] * len(regions), [0.0] * len(regions)
        for side in sorted({r[4].shape[0] for r in regions}):
            idx = [j for j, r in enumerate(regions) if r[4].shape[0] == side]
            inputs = (np.stack([regions[j][4] for j in idx]), np.stack([regions[j][5] for j in idx]),
                      [regions[j][6] for j in idx], [regions[j][7] for j in idx], [regions[j][8] for j in idx])
            o, e, t = self._run_rows(inputs)
            for n, j in enumerate(idx):
                outs[j], errs[j], times[j] = o[n], e[n], t[n]
        return outs, errs, times

    def _run_rows(self, inputs: tuple) -> tuple[list, list, list]:
        """(output bytes or None, error message or None, seconds) per input (a region): the whole list in
        one call, or when that fails, one by one so that only the inputs that fail alone become errors. An
        output that is not finite (NaN or Inf) is an error, never an image."""
        n = len(inputs[4])
        t0 = time.perf_counter()
        try:
            out, finite = self._run(*inputs)
            dt = (time.perf_counter() - t0) / n
            return [self._row(o, f) for o, f in zip(out, finite)], [self._row_error(f) for f in finite], [dt] * n
        except Exception as e:  # noqa: BLE001 - isolate the bad row(s) below
            from rayinpaint.model.inpainter import SpeedCheckError

            if isinstance(e, SpeedCheckError):  # strict_speed: the actor fails, not its rows
                raise
            log.warning("model call on %d rows failed (%s); retrying rows one by one", n, e)
        outs, errs, times = [], [], []
        for j in range(n):
            t1 = time.perf_counter()
            try:
                o, f = self._run(*(x[j:j + 1] for x in inputs))
                outs.append(self._row(o[0], f[0]))
                errs.append(self._row_error(f[0]))
            except Exception as e1:  # noqa: BLE001
                outs.append(None)
                errs.append(redact_uri(f"the model failed: {type(e1).__name__}: {e1}"))
            times.append(time.perf_counter() - t1)
        return outs, errs, times

    @staticmethod
    def _row(image: np.ndarray, finite: bool) -> bytes | None:
        return np.ascontiguousarray(image).tobytes() if finite else None

    def _row_error(self, finite: bool) -> str | None:
        if finite:
            return None
        return (f"the model's output is not finite (NaN or Inf); speed switches in effect: "
                f"{self.speed_text() or 'defaults'}, dtype {self.dtype}")


def _load(settings: ModelSettings, device: str, dtype):
    from rayinpaint.model import load_model

    kwargs = {}
    if settings.cache_dir:
        kwargs["cache_dir"] = settings.cache_dir
    if settings.weights_sha256:
        kwargs["sha256"] = settings.weights_sha256
    if settings.storage_options:
        kwargs["storage_options"] = settings.storage_options
    if not settings.weights.startswith("random:"):
        kwargs["config"] = settings.model_config
    return load_model(settings.weights, device=device, dtype=dtype, **kwargs)


def _release_memory() -> None:
    """Free what a failed call left behind: unreachable cycles, then the CUDA allocator's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def report_state(settings: ModelSettings, state: str) -> None:
    """Tell the run's events actor (jobs/events.py) this actor's state: LOADING, LOADED."""
    report(settings.events, "actor", _actor_name(), state)


def _actor_name() -> str:
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    return f"{node[:12]}:{os.getpid()}"


def _token_counter():
    from functools import lru_cache

    from rayinpaint.model.text import prompt_token_count

    return lru_cache(maxsize=4096)(prompt_token_count)


def _with_errors(batch: pa.Table, errors: dict[int, tuple[str, str]]) -> pa.Table:
    """The batch with rows {index: (kind, message)} turned into error rows."""
    if not errors:
        return batch
    st = batch.column("status").to_pylist()
    kinds = batch.column("error_kind").to_pylist()
    msgs = batch.column("error").to_pylist()
    for i, (k, m) in errors.items():
        st[i], kinds[i], msgs[i] = ERROR, k, m
    batch = _replace(batch, "status", pa.array(st, pa.string()))
    batch = _replace(batch, "error_kind", pa.array(kinds, pa.string()))
    return _replace(batch, "error", pa.array(msgs, pa.string()))


def _replace(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, arr)
