"""Wrong fast paths for the self-check (model/selfcheck.py): real modules with one fault each, and the measurement
that chose the self-check's bound.

Each UNet fault is a copy of the UNet with one block's forward replaced, as a miscompiled kernel would change it:
    xattn_no_context_first   the first cross-attention reads zeros instead of the prompt context
    xattn_no_context_mid     the same in the middle block
    attn_out_halved          a self-attention's output halved (first transformer of the deepest attention level)
    resblock_no_temb_first   the first ResBlock (after the stem) drops the timestep embedding
    resblock_no_temb_mid     the same in the first ResBlock of the middle block
Each step fault is a GuidedStep whose static-buffer path (a captured graph's replay on CUDA) keeps reading a
buffer of the first batch it was loaded with, as a graph replaying a freed buffer would:
    stale_guidance, stale_timestep

    python -m rayinpaint.bench.faults --model sd2 --latent 32 --batch 1
    python -m rayinpaint.bench.faults --model sd2 --batch 1 --cost 256

print, per fault and per correct path, the error against fp32 relative to the plain eager step's own
(selfcheck.error_ratio) and the self-check's verdict; and the check's cost for a new shape (docs/performance.md,
"The fast path checks itself").
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import types

import torch

from rayinpaint.model.denoiser import GuidedStep
from rayinpaint.model.unet import UNet


def _transformers(unet: UNet) -> list:
    from rayinpaint.model.unet import BasicTransformerBlock

    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


def _mid_transformer(unet: UNet):
    from rayinpaint.model.unet import SpatialTransformer

    return next(m for m in unet.middle_block if isinstance(m, SpatialTransformer)).transformer_blocks[0]


def _no_context(attn) -> None:
    forward = type(attn).forward
    attn.forward = types.MethodType(lambda self, x, context: forward(self, x, torch.zeros_like(context)), attn)


def _halved(attn) -> None:
    forward = type(attn).forward
    attn.forward = types.MethodType(lambda self, x, context: 0.5 * forward(self, x, context), attn)


def _no_temb(block) -> None:
    def forward(self, x, emb, context):
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))
    block.forward = types.MethodType(forward, block)


def _deepest_attention(unet: UNet):
    blocks = _transformers(unet)
    dims = [b.attn1.to_q.in_features for b in blocks]
    return blocks[dims.index(max(dims))]


UNET_FAULTS = {
    "xattn_no_context_first": lambda u: _no_context(_transformers(u)[0].attn2),
    "xattn_no_context_mid": lambda u: _no_context(_mid_transformer(u).attn2),
    "attn_out_halved": lambda u: _halved(_deepest_attention(u).attn1),
    "resblock_no_temb_first": lambda u: _no_temb(u.input_blocks[1][0]),
    "resblock_no_temb_mid": lambda u: _no_temb(u.middle_block[0]),
}


def faulty_unet(unet: UNet, fault: str) -> UNet:
    """A copy of `unet` (same weights, same dtype) with `fault` injected into one block."""
    out = copy.deepcopy(unet)
    UNET_FAULTS[fault](out)
    return out


class StaleStep(GuidedStep):
    """A GuidedStep whose static-buffer path reads `buffer` ("guidance" or "t") as it was at the first load."""

    def __init__(self, *a, stale: str = "guidance", **kw):
        super().__init__(*a, **kw)
        self.stale, self._frozen = stale, None

    def load(self, *a) -> None:
        super().load(*a)
        if self.stale == "guidance" and self._frozen is None:
            self._frozen = self.guidance.clone()

    def __call__(self, x, divisor, t):
        if self.stale == "t":
            self._frozen = t.clone() if self._frozen is None else self._frozen
            t = self._frozen
        if self.stale != "guidance":
            return super().__call__(x, divisor, t)
        now = self.guidance.clone()
        self.guidance.copy_(self._frozen)
        try:
            return super().__call__(x, divisor, t).clone()
        finally:
            self.guidance.copy_(now)


STEP_FAULTS = {"stale_guidance": "guidance", "stale_timestep": "t"}


def measure(model: str, latent: int, batch: int, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
            compile_backend: str | None = None, only: str = "") -> dict:
    """Every fault, and the correct paths (the eager step again, channels_last, unfused CFG, and with
    `compile_backend` the compiled UNet), through model/selfcheck.check_fast_path at one shape."""
    from rayinpaint.model import load_model
    from rayinpaint.model.selfcheck import check_fast_path, step_function, synthetic_batches

    t0 = time.perf_counter()
    m = load_model(f"random:{model}:{seed}", dtype=torch.float32)
    unet = m.unet.to(dtype)
    ref = copy.deepcopy(unet).float()  # as the self-check's: fp32 arithmetic on the same (rounded) weights
    ctx = (m.config.text.context_length, m.config.unet.context_dim)
    batches = synthetic_batches(batch, (latent, latent), ctx, "cpu")
    out = {"model": model, "latent": latent, "batch": batch, "dtype": str(dtype), "build_s": time.perf_counter() - t0}

    def step(u, dt=dtype, cls=GuidedStep, **kw):
        return cls(u, batch, (latent, latent), ctx, dt, "cpu", **kw)

    fp32 = [step_function(step(ref, torch.float32))(b) for b in batches]
    eager = [step_function(step(unet))(b) for b in batches]
    paths = {"correct_eager": (lambda: step(unet), None),
             "correct_unfused_cfg": (lambda: step(unet, fused_cfg=False), None)}
    if compile_backend:
        paths["correct_compiled"] = (lambda: step(torch.compile(unet, backend=compile_backend, fullgraph=True,
                                                                dynamic=False)), None)
    for name in UNET_FAULTS:
        paths[name] = (lambda name=name: step(faulty_unet(unet, name)), None)
    for name, buf in STEP_FAULTS.items():
        paths[name] = (lambda buf=buf: step(unet, cls=StaleStep, stale=buf, graph=True), "replay")
    results = {}
    for name, (make, kind) in paths.items():
        if only and name not in only.split(","):
            continue
        t1 = time.perf_counter()
        s = make()
        direct = step_function(s, direct=True)
        replay = step_function(s) if kind == "replay" else None
        r = check_fast_path(eager, direct, replay, batches, fp32=fp32, dtype=dtype)
        results[name] = {"ok": r.ok, "turn_off": r.turn_off, "reason": r.reason,
                         "ratio": r.numbers.get("ratio"), "seconds": round(time.perf_counter() - t1, 1),
                         **{k: r.numbers.get(k) for k in ("fast_vs_fp32", "eager_vs_fp32", "replay_vs_direct", "fast_vs_fp32_max", "eager_vs_fp32_max")}}
        print(name, json.dumps(results[name], default=str), flush=True)
    out["paths"] = results
    return out


def check_cost(model: str, batch: int, resolution: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """What the self-check adds to a new shape: the check's own seconds (fp32 copy and steps, eager and fast steps;
    compile and capture not counted), and the warm-up at that shape with the check against without it. Compile on
    through the tracing `aot_eager` backend, so the fast path is the plain step's arithmetic."""
    from rayinpaint.model import Inpainter, load_model

    m = load_model(f"random:{model}", dtype=dtype)
    speed = dict(compile=True, compile_backend="aot_eager", channels_last=False)
    out = {"model": model, "batch": batch, "resolution": resolution, "dtype": str(dtype)}
    for check in (False, True):
        torch._dynamo.reset()
        inp = Inpainter(m, steps=2, speed=speed, self_check=check)
        out[f"warmup_s_{'with' if check else 'without'}_check"] = round(inp.warmup(batch, resolution)["seconds"], 2)
        if check:
            out["check_s"] = inp.checks[-1]["check_s"]
            out["ratio"] = inp.checks[-1].get("ratio")
            t0 = time.perf_counter()
            inp.warmup(batch, resolution)  # the same shape again: prepared, not checked
            out["warmup_s_again"] = round(time.perf_counter() - t0, 2)
            out["checks"] = len(inp.checks)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sd2", choices=("sd2", "tiny"))
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-backend", default=None, help="also check torch.compile's path (e.g. inductor)")
    p.add_argument("--only", default="", help="comma list of the paths to run (default: all)")
    p.add_argument("--cost", type=int, default=0, metavar="PX",
                   help="instead: the self-check's cost for a new shape of --batch rows at PX pixels")
    a = p.parse_args(argv)
    if a.cost:
        print(json.dumps(check_cost(a.model, a.batch, a.cost), default=str))
        return 0
    print(json.dumps(measure(a.model, a.latent, a.batch, seed=a.seed, compile_backend=a.compile_backend,
                             only=a.only),
                     indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
