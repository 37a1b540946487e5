"""Run-time self-check of the fast step path: is the captured CUDA graph, the compiled UNet, right on this machine?

A fast path that is wrong without raising (a graph replaying stale buffers, a miscompiled kernel, an overflow in
one fused op) would write every image of a job. So each new batch shape is checked once, before its first real
batch, on two synthetic batches A and B, comparing one guided step computed four ways:

    replay   the captured graph's replay (CUDA graph on)
    direct   the same (compiled) step called directly, outside the graph
    eager    the plain eager step, uncompiled, same dtype
    fp32     the plain eager step in float32 (optional: it needs an fp32 copy of the UNet)

Rules, in this order; the first one broken names the switch to turn off:
    every output finite                                   else: graph if only the replay is not, else compile
    replay == direct (REPLAY_TOL, a tight bound)          else: cuda_graph
    replay(A) != replay(B) as much as eager(A) != eager(B)  else: cuda_graph (a replay of stale inputs)
    direct within `tol` of eager                          else: compile
`tol` is calibrated: FACTOR x the difference between eager and fp32 (the rounding this dtype makes anyway), not
below MIN_TOL; without an fp32 step (memory, or the model already is fp32) it is DEFAULT_TOL for the dtype. The
step functions are plain callables (batch -> eps), so the rules are tested on CPU with injected wrong paths.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Step = Callable[[tuple], torch.Tensor]

REPLAY_TOL = 1e-5  # replay vs direct run the same kernels on the same buffers: they agree to the last bits
FACTOR = 2.0  # a fast path re-associates sums like any other kernel choice: its error is of eager's own order
MIN_TOL = 1e-3
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


def tolerance(dtype: torch.dtype, eager_vs_fp32: float | None) -> float:
    if eager_vs_fp32 is None or dtype == torch.float32:
        return DEFAULT_TOL[dtype]
    return max(MIN_TOL, FACTOR * eager_vs_fp32)


def _finite(t: torch.Tensor | None) -> bool:
    return t is None or bool(torch.isfinite(t).all())


def check_fast_path(eager: Step, direct: Step, replay: Step | None, batches: Sequence[tuple],
                    fp32: Step | None = None, dtype: torch.dtype = torch.float32) -> CheckReport:
    """Apply the module docstring's rules to the step functions on two batches. Each function returns its own
    tensor (not a buffer a later call overwrites)."""
    a, b = batches
    outs, nums = {}, {}
    for name, fn in (("replay", replay), ("direct", direct), ("eager", eager)):
        outs[name] = [fn(a), fn(b)] if fn is not None else [None, None]
    try:  # the calibration only: when the fp32 step cannot run (memory), the dtype's default bound is used
        outs["fp32"] = [fp32(a), fp32(b)] if fp32 is not None else None
    except Exception as e:  # noqa: BLE001 - an optional reference; its failure says nothing of the fast path
        outs["fp32"], nums["fp32_error"] = None, f"{type(e).__name__}: {str(e)[:200]}"
    calib = [rel_err(e, f) for e, f in zip(outs["eager"], outs["fp32"])] if outs["fp32"] else None
    nums.update(tol=tolerance(dtype, max(calib) if calib else None), eager_vs_fp32=calib)
    tol = nums["tol"]
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
    if max(nums["fast_vs_eager"]) > tol:
        return CheckReport(False, "compile", f"the compiled step is off the eager one by more than {tol:.3g}", nums)
    return CheckReport(True, None, "", nums)


# ---- the checks on a real GuidedStep ------------------------------------------------------------------------


def synthetic_batches(batch: int, latent: tuple[int, int], context: tuple[int, int], device) -> list[tuple]:
    """Two different batches (cond, ctx_uncond, ctx_cond, guidance, x, divisor, t) for one step shape, drawn on
    the CPU from fixed seeds: a binary mask, unit-scale latents and contexts, x at a mid noise level."""
    out = []
    for seed, sigma, t in ((0, 3.0, 500), (1, 1.0, 250)):
        g = torch.Generator().manual_seed(seed)
        h, w = latent
        cond = torch.randn(batch, 5, h, w, generator=g)
        cond[:, 0] = (cond[:, 0] > 0).float()
        ctx_u, ctx_c = torch.randn(2, batch, *context, generator=g)
        guidance = torch.full((batch,), 7.5)
        x = torch.randn(batch, 4, h, w, generator=g) * sigma
        divisor = torch.tensor((sigma**2 + 1) ** 0.5)
        ts = torch.full((2 * batch,), t, dtype=torch.int64)
        out.append(tuple(v.to(device) for v in (cond, ctx_u, ctx_c, guidance, x, divisor, ts)))
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
    """An fp32 copy of the UNet for the calibration, or None where memory does not allow it."""
    if not isinstance(unet, torch.nn.Module) or next(unet.parameters()).dtype == torch.float32:
        return None
    try:
        return copy.deepcopy(unet).float()
    except torch.cuda.OutOfMemoryError:
        return None


def check_step(fast, make_step: Callable[..., object], plain_unet, fp32: bool = True) -> CheckReport:
    """Check the GuidedStep `fast` (its first load captures or compiles) against steps `make_step(unet, dtype)`
    builds from the plain UNet: eager in the same dtype and, where memory allows, fp32."""
    batches = synthetic_batches(fast.batch, tuple(fast.input.shape[2:]), tuple(fast.context.shape[1:]), fast.device)
    fast.load(*batches[0][:4])  # a new step compiles, or warms up and captures its graph, on its first load
    replay = step_function(fast) if fast.graph else None
    eager = step_function(make_step(plain_unet, fast.dtype))
    ref = fp32_unet(plain_unet) if fp32 else None
    ref_fn = step_function(make_step(ref, torch.float32)) if ref is not None else None
    try:
        return check_fast_path(eager, step_function(fast, direct=True), replay, batches, ref_fn, fast.dtype)
    finally:
        del ref, ref_fn


__all__ = ["CheckReport", "check_fast_path", "check_step", "rel_err", "tolerance", "synthetic_batches",
           "REPLAY_TOL", "DEFAULT_TOL", "FACTOR", "MIN_TOL"]
