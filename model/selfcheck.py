"""Run-time self-check of the fast step path: is the captured CUDA graph, the compiled UNet, right on this machine?

A fast path that is wrong without raising (a graph replaying stale buffers, a miscompiled kernel, an overflow in
one fused op) would write every image of a job. So each new (batch shape, switches) is checked once per
Inpainter, before its first real batch, on two synthetic batches A and B that differ in every input a step reads
(mask, masked latent, contexts, guidance, x, noise level, timestep), comparing one guided step computed four ways:

    fp32     the plain eager step in float32, on an fp32 copy of the UNet (same, already rounded weights); run
             first, and the copy freed, before the fast step is compiled or captured (never both in memory)
    replay   the captured graph's replay (CUDA graph on)
    direct   the same (compiled) step called directly, outside the graph
    eager    the plain eager step, uncompiled, same dtype

Rules, in this order; the first one broken names the switch to turn off:
    every output finite                                   else: graph if only the replay is not, else compile
    replay == direct (REPLAY_TOL, a tight bound)          else: cuda_graph
    replay(A) != replay(B) as much as eager(A) != eager(B)  else: cuda_graph (a replay of stale inputs)
    rms(direct - fp32) <= K x rms(eager - fp32)           else: compile
The last rule judges the fast step by its error against fp32 in units of the eager step's own (`ratio`): a correct
fast path rounds differently but no worse (measured: 0.75-1.0x), a single wrong layer adds an error of its own
(bench/faults.py; docs/performance.md has the measurements that chose K). Without an fp32 reference (memory, or
the model already is fp32) the direct step must be within DEFAULT_TOL of eager, max-wise. The step functions are
plain callables (batch -> eps), so the rules are tested on CPU with injected wrong paths.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Step = Callable[[tuple], torch.Tensor]

REPLAY_TOL = 1e-5  # replay vs direct run the same kernels on the same buffers: they agree to the last bits
K = 1.5  # the fast step may be at most K times as far from fp32 as the eager step (measured, docs/performance.md)
ERR_FLOOR = 1e-4  # eager's error below this (rms relative) counts as this: a ratio over rounding noise of nothing
# Max-wise relative error allowed without an fp32 step: twice the half-precision UNet errors calibrated in
# tests/test_gpu_model.py, and for fp32 (TF32 convolutions on CUDA by default) about 50x TF32's unit roundoff.
DEFAULT_TOL = {torch.bfloat16: 0.3, torch.float16: 0.04, torch.float32: 0.03}
STALE_FRACTION = 0.5  # fast(A) vs fast(B) must differ at least half as much as eager(A) vs eager(B)


@dataclass
class CheckReport:
    ok: bool
    turn_off: str | None = None  # "cuda_graph" | "compile" | None (nothing a switch can fix, or ok)
    reason: str = ""
    numbers: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "turn_off": self.turn_off, "reason": self.reason, **self.numbers}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|, in float64 (inf when either is not finite)."""
    a, b = a.double(), b.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def error_ratio(fast_err: float, eager_err: float) -> float:
    """The fast step's error against fp32 in units of the eager step's own."""
    return fast_err / max(eager_err, ERR_FLOOR)


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def rms_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (root mean square), in float64 (inf when either is not finite)."""
    a, b = a.double(), b.double()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _outputs(fn, batches) -> list | None:
    if fn is None or isinstance(fn, (list, tuple)):
        return fn
    return [fn(b) for b in batches]


def check_fast_path(eager, direct: Step, replay: Step | None, batches: Sequence[tuple],
                    fp32=None, dtype: torch.dtype = torch.float32) -> CheckReport:
    """Apply the module docstring's rules to the step functions on two batches. Each function returns its own
    tensor (not a buffer a later call overwrites). `eager` and `fp32` may also be their outputs on `batches`,
    computed before (so that the fp32 UNet copy is freed before the fast step runs)."""
    a, b = batches
    outs, nums = {}, {}
    try:  # the reference only: when the fp32 step cannot run (memory), the dtype's default bound is used
        outs["fp32"] = _outputs(fp32, batches) if dtype != torch.float32 else None
    except Exception as e:  # noqa: BLE001 - an optional reference; its failure says nothing of the fast path
        outs["fp32"], nums["fp32_error"] = None, f"{type(e).__name__}: {str(e)[:200]}"
    if outs["fp32"] is not None and not all(_finite(t) for t in outs["fp32"]):  # no reference to measure by
        outs["fp32"], nums["fp32_error"] = None, "the fp32 step is not finite"
    for name, fn in (("replay", replay), ("direct", direct)):
        outs[name] = [fn(a), fn(b)] if fn is not None else [None, None]
    outs["eager"] = _outputs(eager, batches)
    if not all(_finite(t) for t in outs["eager"]):
        return CheckReport(False, None, "the plain eager step is not finite", nums)
    if not all(_finite(t) for t in outs["direct"]):
        return CheckReport(False, "compile", "the compiled step is not finite", nums)
    if not all(_finite(t) for t in outs["replay"]):
        return CheckReport(False, "cuda_graph", "the graph replay is not finite", nums)
    if replay is not None:
        nums["replay_vs_direct"] = [rel_err(r, d) for r, d in zip(outs["replay"], outs["direct"])]
        if max(nums["replay_vs_direct"]) > REPLAY_TOL:
            return CheckReport(False, "cuda_graph", f"the graph replay differs from the direct call "
                                                    f"(> {REPLAY_TOL:g})", nums)
    nums["a_vs_b_eager"] = rel_err(outs["eager"][1], outs["eager"][0])
    fast = outs["replay"] if replay is not None else outs["direct"]
    nums["a_vs_b_fast"] = rel_err(fast[1], fast[0])
    if nums["a_vs_b_fast"] < STALE_FRACTION * nums["a_vs_b_eager"]:
        return CheckReport(False, "cuda_graph" if replay is not None else "compile",
                           "batch B gave batch A's output (stale inputs)", nums)
    nums["fast_vs_eager"] = [rel_err(d, e) for d, e in zip(outs["direct"], outs["eager"])]
    if outs["fp32"] is None:
        nums["tol"] = DEFAULT_TOL[dtype]
        if max(nums["fast_vs_eager"]) > nums["tol"]:
            return CheckReport(False, "compile", f"the compiled step is off the eager one by more than "
                                                 f"{nums['tol']:.3g}", nums)
        return CheckReport(True, None, "", nums)
    nums["eager_vs_fp32"] = [rms_err(e, f) for e, f in zip(outs["eager"], outs["fp32"])]
    nums["fast_vs_fp32"] = [rms_err(d, f) for d, f in zip(outs["direct"], outs["fp32"])]
    nums["eager_vs_fp32_max"] = [rel_err(e, f) for e, f in zip(outs["eager"], outs["fp32"])]
    nums["fast_vs_fp32_max"] = [rel_err(d, f) for d, f in zip(outs["direct"], outs["fp32"])]
    nums["ratio"] = max(error_ratio(d, e) for d, e in zip(nums["fast_vs_fp32"], nums["eager_vs_fp32"]))
    nums["k"] = K
    if nums["ratio"] > K:
        return CheckReport(False, "compile", f"the compiled step is {nums['ratio']:.3g}x as far from fp32 as the "
                                             f"eager step (> {K:g}x)", nums)
    return CheckReport(True, None, "", nums)


# ---- the checks on a real GuidedStep ------------------------------------------------------------------------


def synthetic_batches(batch: int, latent: tuple[int, int], context: tuple[int, int], device) -> list[tuple]:
    """Two batches (cond, ctx_uncond, ctx_cond, guidance, x, divisor, t) for one step shape, drawn on the CPU from
    fixed seeds, that differ in every input a step reads: mask and masked-image latent, both contexts, guidance,
    x, noise level and timestep. A's guidance goes from 7.5 down to 4 across its rows; B's is 1 (the conditional
    eps alone: guidance multiplies the rounding noise of the two halves' difference, about 10x at 7.5, and would
    hide a fault that moves both halves alike, such as a lost timestep embedding)."""
    out = []
    for seed, sigma, t, guidance in ((0, 3.0, 500, (7.5, 4.0)), (1, 1.0, 250, (1.0, 1.0))):
        g = torch.Generator().manual_seed(seed)
        h, w = latent
        cond = torch.randn(batch, 5, h, w, generator=g)
        cond[:, 0] = (cond[:, 0] > 0).float()
        ctx_u, ctx_c = torch.randn(2, batch, *context, generator=g)
        x = torch.randn(batch, 4, h, w, generator=g) * sigma
        divisor = torch.tensor((sigma**2 + 1) ** 0.5)
        ts = torch.full((2 * batch,), t, dtype=torch.int64)
        rows = torch.linspace(*guidance, batch) if batch > 1 else torch.tensor(guidance[:1])
        out.append(tuple(v.to(device) for v in (cond, ctx_u, ctx_c, rows, x, divisor, ts)))
    return out


def step_function(step, direct: bool = False) -> Step:
    """batch -> a copy of the step's eps: through `step(...)` (the graph's replay when captured), or `direct`ly
    through its eager code path (the compiled UNet outside the graph)."""
    def run(b: tuple) -> torch.Tensor:
        step.load(*b[:4])
        x, divisor, t = b[4:]
        with torch.inference_mode():
            return (step._eps(x, divisor, t) if direct else step(x, divisor, t)).clone()
    return run


def fp32_unet(unet):
    """An fp32 copy of the UNet for the reference, or None where memory does not allow it."""
    if not isinstance(unet, torch.nn.Module) or next(unet.parameters()).dtype == torch.float32:
        return None
    try:
        return copy.deepcopy(unet).float()
    except torch.cuda.OutOfMemoryError:
        return None


def fp32_outputs(make_step: Callable[..., object], plain_unet, batches: Sequence[tuple]) -> tuple[list | None, str]:
    """The fp32 step's outputs on `batches`, from an fp32 copy of the UNet made, used and freed here (so it never
    shares memory with the fast step); (None, why) when it cannot be made or run."""
    ref = fp32_unet(plain_unet)
    if ref is None:
        return None, "no fp32 copy (memory, or the model is fp32)"
    try:
        fn = step_function(make_step(ref, torch.float32))
        return [fn(b).cpu() for b in batches], ""
    except torch.cuda.OutOfMemoryError as e:
        return None, f"OutOfMemoryError: {str(e)[:200]}"
    finally:
        del ref
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_step(fast, make_step: Callable[..., object], plain_unet, fp32: bool = True) -> CheckReport:
    """Check the GuidedStep `fast` (its first load captures or compiles) against steps `make_step(unet, dtype)`
    builds from the plain UNet: eager in the same dtype and, where memory allows, fp32. The fp32 reference runs
    first and its UNet copy is freed before the fast step is prepared; its outputs wait on the host."""
    t0 = time.perf_counter()
    batches = synthetic_batches(fast.batch, tuple(fast.input.shape[2:]), tuple(fast.context.shape[1:]), fast.device)
    refs, why = fp32_outputs(make_step, plain_unet, batches) if fp32 else (None, "not asked")
    refs = [r.to(fast.device) for r in refs] if refs is not None else None
    eager = step_function(make_step(plain_unet, fast.dtype))
    t1 = time.perf_counter()
    fast.load(*batches[0][:4])  # a new step compiles, or warms up and captures its graph, on its first load
    t2 = time.perf_counter()
    replay = step_function(fast) if fast.graph else None
    report = check_fast_path(eager, step_function(fast, direct=True), replay, batches, refs, fast.dtype)
    if refs is None and fast.dtype != torch.float32:
        report.numbers["fp32_error"] = why
    report.numbers["check_s"] = round((t1 - t0) + (time.perf_counter() - t2), 3)  # compile/capture not counted
    return report


__all__ = ["CheckReport", "check_fast_path", "check_step", "rel_err", "rms_err", "error_ratio", "synthetic_batches",
           "fp32_outputs", "REPLAY_TOL", "DEFAULT_TOL", "K", "ERR_FLOOR"]
