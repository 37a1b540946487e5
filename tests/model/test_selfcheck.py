"""The fast path's self-check (model/selfcheck.py) on CPU: wrong fast paths (a stale replay, a NaN, a compiled step
off by more than the tolerance, and single-layer faults injected as real wrong modules of a bf16 UNet: see
bench/faults.py) are each detected and name the switch to turn off, while correct paths (unfused CFG, inductor's
compiled UNet) pass; the Inpainter turns the switch off and goes on (or raises with strict_speed), at warm-up and at
any later shape, checks each (shape, switches) once, and runs the fp32 reference before the fast step exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayinpaint.model import Inpainter, load_model
from rayinpaint.model import inpainter as inpainter_module
from rayinpaint.model.config import UNetConfig
from rayinpaint.model.denoiser import GuidedStep
from rayinpaint.model.inpainter import SpeedCheckError
from rayinpaint.bench.faults import STEP_FAULTS, UNET_FAULTS, StaleStep, faulty_unet
from rayinpaint.model.unet import UNet
from rayinpaint.model.selfcheck import (DEFAULT_TOL, K, REPLAY_TOL, check_fast_path, check_step, rms_err,
                                        step_function, synthetic_batches)

OFF = dict(channels_last=False, compile=False, cuda_graph=False, pinned=False, cudnn_benchmark=False)


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny:5")


def make(unet, dtype=torch.float32, graph=False):
    return GuidedStep(unet, 2, (8, 8), (77, 32), dtype, "cpu", graph=graph)


@pytest.fixture(scope="module")
def paths(tiny):
    """(eager, direct, replay, batches): the real tiny step three ways (replay = the static-buffer path)."""
    batches = synthetic_batches(2, (8, 8), (77, 32), "cpu")
    static = make(tiny.unet, graph=True)
    return step_function(make(tiny.unet)), step_function(static, direct=True), step_function(static), batches


def test_a_correct_fast_path_passes(paths):
    eager, direct, replay, batches = paths
    r = check_fast_path(eager, direct, replay, batches)
    assert r.ok and r.turn_off is None, r
    assert max(r.numbers["replay_vs_direct"]) <= REPLAY_TOL and max(r.numbers["fast_vs_eager"]) <= 1e-6
    assert r.numbers["a_vs_b_eager"] > 0.1  # the two batches really differ


def test_a_stale_replay_is_caught_and_names_the_graph(paths):
    eager, direct, replay, batches = paths
    first = replay(batches[0])
    r = check_fast_path(eager, direct, lambda b: first.clone(), batches)  # always replays batch A's inputs
    assert not r.ok and r.turn_off == "cuda_graph" and "differs" in r.reason
    # Also when the direct call is stale in the same way (a graph of a step that never reads its inputs): the
    # replay equals the direct call, and B's output equals A's.
    r = check_fast_path(eager, lambda b: first.clone(), lambda b: first.clone(), batches)
    assert not r.ok and r.turn_off == "cuda_graph" and "stale" in r.reason, r


@pytest.mark.parametrize("where,switch", [("direct", "compile"), ("replay", "cuda_graph"), ("eager", None)])
def test_a_nan_is_caught(paths, where, switch):
    eager, direct, replay, batches = paths
    fns = {"eager": eager, "direct": direct, "replay": replay}

    def nan_on_b(b, fn=fns[where]):
        out = fn(b).clone()  # a normal tensor (the step's is an inference tensor)
        if b is batches[1]:
            out[0, 0, 0, 0] = float("nan")
        return out

    fns[where] = nan_on_b
    if where == "direct":  # a NaN in the compiled code shows in the replay of its graph too
        fns["replay"] = nan_on_b
    r = check_fast_path(fns["eager"], fns["direct"], fns["replay"], batches)
    assert not r.ok and r.turn_off == switch and "not finite" in r.reason, r


@pytest.mark.parametrize("factor,ok", [(2.0, False), (0.5, True)])
def test_a_compiled_step_off_by_the_tolerance(paths, factor, ok):
    """A compiled step off the eager one by twice the tolerance fails (compile); by half of it, passes."""
    eager, _, _, batches = paths
    tol = DEFAULT_TOL[torch.float32]

    def off(b):
        out = eager(b)
        return out + factor * tol * out.abs().max()

    r = check_fast_path(eager, off, off, batches)
    assert r.ok is ok, r
    assert max(r.numbers["fast_vs_eager"]) == pytest.approx(factor * tol, rel=1e-3)
    if not ok:
        assert r.turn_off == "compile" and "off the eager" in r.reason


# One resolution level of the tiny UNet's blocks (stem, ResBlock + transformer, middle block, two decoder blocks):
# every block a fault goes into, and inductor compiles it in about half the tiny UNet's time.
MICRO = UNetConfig(model_channels=32, channel_mult=(1,), num_res_blocks=1, attention_levels=(0,), head_dim=8,
                   context_dim=32, norm_groups=8)


@pytest.fixture(scope="module")
def bf16():
    """(bf16 UNet, eager bf16 outputs, fp32 outputs of its fp32 copy, batches), as check_step computes them."""
    import copy

    torch.manual_seed(0)
    half = UNet(MICRO).eval().to(torch.bfloat16)
    batches = synthetic_batches(2, (8, 8), (77, 32), "cpu")
    eager = [step_function(make(half, torch.bfloat16))(b) for b in batches]
    fp32 = [step_function(make(copy.deepcopy(half).float()))(b) for b in batches]
    return half, eager, fp32, batches


def test_the_bound_is_k_times_eager_bf16_against_fp32(bf16):
    """In bf16 the compiled step is judged by its error against fp32 in units of the eager step's own: a correct
    path with other rounding (unfused CFG: two UNet calls) passes near 1x."""
    half, eager, fp32, batches = bf16
    r = check_fast_path(eager, step_function(make(half, torch.bfloat16)), None, batches, fp32=fp32,
                        dtype=torch.bfloat16)
    assert r.ok and r.numbers["ratio"] == pytest.approx(1.0) and r.numbers["k"] == K
    assert all(1e-3 < e < 0.2 for e in r.numbers["eager_vs_fp32"])  # bf16 rounding, measured: a real reference
    unfused = GuidedStep(half, 2, (8, 8), (77, 32), torch.bfloat16, "cpu", fused_cfg=False)
    r = check_fast_path(eager, step_function(unfused), None, batches, fp32=fp32, dtype=torch.bfloat16)
    assert r.ok and r.numbers["ratio"] < 1.2, r
    assert rms_err(batches[0][3], batches[1][3]) > 0.5 and not torch.equal(batches[0][6], batches[1][6])


@pytest.mark.parametrize("fault", list(UNET_FAULTS))
def test_a_single_layer_fault_in_the_compiled_unet_is_caught(bf16, fault):
    """One block of a real UNet copy computing the wrong thing (bench/faults.py), as the compiled step."""
    half, eager, fp32, batches = bf16
    wrong = step_function(make(faulty_unet(half, fault), torch.bfloat16))
    r = check_fast_path(eager, wrong, None, batches, fp32=fp32, dtype=torch.bfloat16)
    print(f"\n{fault}: {r.numbers['ratio']:.2f}x eager's error against fp32")
    assert not r.ok and r.turn_off == "compile" and r.numbers["ratio"] > K and "as far from fp32" in r.reason


@pytest.mark.parametrize("fault", list(STEP_FAULTS))
def test_a_replay_reading_a_stale_guidance_or_timestep_buffer_is_caught(bf16, fault):
    half, eager, fp32, batches = bf16
    step = StaleStep(half, 2, (8, 8), (77, 32), torch.bfloat16, "cpu", graph=True, stale=STEP_FAULTS[fault])
    r = check_fast_path(eager, step_function(step, direct=True), step_function(step), batches, fp32=fp32,
                        dtype=torch.bfloat16)
    assert not r.ok and r.turn_off == "cuda_graph" and "differs from the direct call" in r.reason, r


@pytest.mark.slow
def test_a_correct_compiled_path_passes_with_inductor(bf16):
    """torch.compile's inductor on CPU, bf16: other kernels, other rounding, and no fault."""
    torch._dynamo.reset()
    half, eager, fp32, batches = bf16
    compiled = torch.compile(half, backend="inductor", fullgraph=True, dynamic=False)
    try:
        r = check_fast_path(eager, step_function(make(compiled, torch.bfloat16)), None, batches, fp32=fp32,
                            dtype=torch.bfloat16)
    finally:
        torch._dynamo.reset()
    print(f"\ninductor: {r.numbers['ratio']:.2f}x eager's error against fp32")
    assert r.ok, r


def test_check_step_frees_the_fp32_copy_before_the_fast_step_is_prepared(bf16, monkeypatch):
    """The fp32 UNet copy exists only while its two steps run: gone when the fast step compiles or captures."""
    import gc
    import weakref

    from rayinpaint.model import selfcheck

    half, refs, made = bf16[0], [], selfcheck.fp32_unet

    def fp32_unet(unet):
        copy = made(unet)
        refs.append(weakref.ref(copy))
        return copy

    class Fast(GuidedStep):
        def load(self, *a):
            gc.collect()
            self.fp32_alive = [ref() is not None for ref in refs]
            super().load(*a)

    monkeypatch.setattr(selfcheck, "fp32_unet", fp32_unet)
    fast = Fast(half, 2, (8, 8), (77, 32), torch.bfloat16, "cpu", graph=True)
    rep = check_step(fast, lambda unet, dt: make(unet, dt), half)
    assert rep.ok and fast.fp32_alive == [False], rep
    assert rep.numbers["ratio"] == pytest.approx(1.0) and rep.numbers["check_s"] > 0


# ---- the Inpainter falls back (or, strict, refuses) ---------------------------------------------------------

IMGS = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
MASKS = np.zeros((2, 64, 64), np.uint8)
MASKS[:, 16:48, 8:40] = 255


def wrong_compile(kind: str, fail_rows: int | None = None):
    """A compile_module stand-in: the UNet `kind` wrong ("offset": off by 1.0, "nan", "raise") on every call, or
    only on calls of `fail_rows` rows (a shape first met after an OOM split)."""
    def compile_module(unet, speed):
        def wrong(x, t, ctx):
            out = unet(x, t, ctx)
            if fail_rows is not None and x.shape[0] != fail_rows:
                return out
            if kind == "raise":
                raise RuntimeError("inductor: compilation failed (simulated)")
            return out + 1.0 if kind == "offset" else out * float("nan")
        return wrong
    return compile_module


@pytest.mark.parametrize("kind", ["offset", "nan", "raise"])
def test_the_inpainter_turns_a_wrong_compile_off_and_matches_the_plain_path(tiny, monkeypatch, kind):
    ref = Inpainter(tiny, sampler="ddim", steps=2, speed=OFF)(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    monkeypatch.setattr(inpainter_module, "compile_module", wrong_compile(kind))
    inp = Inpainter(tiny, sampler="ddim", steps=2, speed={**OFF, "compile": True})
    out = inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert inp.speed.compile is False
    assert np.array_equal(out, ref)
    if kind != "raise":  # a raising compile never produced numbers to check
        assert [c["turn_off"] for c in inp.checks] == ["compile"] and not inp.checks[0]["ok"]
    strict = Inpainter(tiny, sampler="ddim", steps=2, speed={**OFF, "compile": True}, strict_speed=True)
    with pytest.raises(SpeedCheckError):
        strict(IMGS, MASKS, ["a", "b"], seeds=[1, 2])


def test_a_failure_at_a_later_shape_falls_back_too(tiny, monkeypatch):
    """Compiled code that fails only at batch 1 (2 UNet rows), a shape first met after warm-up at batch 2."""
    monkeypatch.setattr(inpainter_module, "compile_module", wrong_compile("raise", fail_rows=2))
    inp = Inpainter(tiny, sampler="ddim", steps=2, speed={**OFF, "compile": True})
    inp.warmup(2, 64)
    assert inp.speed.compile and inp.checks[-1]["ok"]
    one = inp(IMGS[:1], MASKS[:1], ["a"], seeds=[1])
    assert inp.speed.compile is False
    ref = Inpainter(tiny, sampler="ddim", steps=2, speed=OFF)(IMGS[:1], MASKS[:1], ["a"], seeds=[1])
    assert np.array_equal(one, ref)


def test_an_fp32_step_that_cannot_run_leaves_the_default_bound(paths):
    """The fp32 step only calibrates: out of memory (or any failure) there is not a fault of the fast path."""
    eager, direct, replay, batches = paths

    def no_memory(b):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    r = check_fast_path(eager, direct, replay, batches, fp32=no_memory, dtype=torch.bfloat16)
    assert r.ok and r.numbers["tol"] == DEFAULT_TOL[torch.bfloat16] and "OutOfMemory" in r.numbers["fp32_error"]


def plain_compile(unet, speed):
    """A compile_module stand-in that is right: the plain UNet (so the self-check runs, and passes)."""
    return lambda x, t, ctx: unet(x, t, ctx)


def test_each_shape_is_checked_once_even_after_leaving_the_two_shape_cache(tiny, monkeypatch):
    monkeypatch.setattr(inpainter_module, "compile_module", plain_compile)
    inp = Inpainter(tiny, sampler="ddim", steps=2, speed={**OFF, "compile": True})
    for n in (2, 1, 2, 1):  # batch 1 and 2 at 64 px, then 128 px, which evicts one of them
        inp(IMGS[:n], MASKS[:n], ["a"] * n, seeds=list(range(n)))
    big = np.zeros((1, 128, 128, 3), np.uint8), np.full((1, 128, 128), 255, np.uint8)
    inp(*big, ["a"], seeds=[1])
    inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert len(inp._steps) == 2 and [c["shape"] for c in inp.checks] == [[2, 8, 8], [1, 8, 8], [1, 16, 16]]
    assert all(c["ok"] and c["check_s"] > 0 for c in inp.checks)
    inp.optimize(compile=True, sdpa="math")  # other switches: checked again
    inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert len(inp.checks) == 4


def test_a_stale_graph_replay_turns_the_graph_off_and_matches_the_plain_path(tiny, monkeypatch):
    """The CUDA graph's own fallback: the step path with static buffers (the graph's, on CPU) replays batch A's
    guidance; the check names the graph, the Inpainter turns it off and its images are the plain path's."""
    import dataclasses

    def step_class(*a, graph=False, **kw):
        return StaleStep(*a, graph=graph, stale="guidance", **kw) if graph else GuidedStep(*a, **kw)

    ref = Inpainter(tiny, sampler="ddim", steps=2, speed=OFF)(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    monkeypatch.setattr(inpainter_module, "GuidedStep", step_class)
    inp = Inpainter(tiny, sampler="ddim", steps=2, speed=OFF)
    inp.speed = dataclasses.replace(inp.speed, cuda_graph=True)  # as on CUDA
    out = inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert [c["turn_off"] for c in inp.checks] == ["cuda_graph"] and inp.speed.cuda_graph is False
    assert np.array_equal(out, ref)


def test_an_out_of_memory_decode_drops_its_shapes_step(tiny, monkeypatch):
    """The VAE decode runs out of memory: the shape's step (buffers, graph) goes, so that the smaller retry has
    its memory; met again, the shape is prepared anew but not checked again."""
    monkeypatch.setattr(inpainter_module, "compile_module", plain_compile)
    inp = Inpainter(tiny, sampler="ddim", steps=2, speed={**OFF, "compile": True})
    decode = tiny.vae.decode
    monkeypatch.setattr(tiny.vae, "decode", lambda z: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("oom")))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert (2, 8, 8) not in inp._steps and len(inp.checks) == 1
    monkeypatch.setattr(tiny.vae, "decode", decode)
    inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert (2, 8, 8) in inp._steps and len(inp.checks) == 1
