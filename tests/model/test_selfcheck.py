"""The fast path's self-check (model/selfcheck.py) on CPU: wrong fast paths injected as step functions (a stale
replay, a NaN, a compiled step off by more than the tolerance) are each detected and name the switch to turn off;
the Inpainter turns it off and goes on (or raises with strict_speed), at warm-up and at any later shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayinpaint.model import Inpainter, load_model
from rayinpaint.model import inpainter as inpainter_module
from rayinpaint.model.denoiser import GuidedStep
from rayinpaint.model.inpainter import SpeedCheckError
from rayinpaint.model.selfcheck import (DEFAULT_TOL, FACTOR, MIN_TOL, REPLAY_TOL, check_fast_path, check_step,
                                        rel_err, step_function, synthetic_batches, tolerance)

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


def test_the_tolerance_is_calibrated_from_eager_against_fp32(tiny):
    """In bf16 the bound is FACTOR x (eager bf16 vs fp32) on the same batches, not a constant."""
    import copy

    half = copy.deepcopy(tiny.unet).to(torch.bfloat16)
    batches = synthetic_batches(2, (8, 8), (77, 32), "cpu")
    eager = step_function(make(half, torch.bfloat16))
    fp32 = step_function(make(tiny.unet))
    r = check_fast_path(eager, eager, None, batches, fp32=fp32, dtype=torch.bfloat16)
    calib = max(rel_err(eager(b), fp32(b)) for b in batches)
    assert r.ok and r.numbers["tol"] == pytest.approx(max(MIN_TOL, FACTOR * calib))
    assert 1e-3 < calib < 0.3  # bf16 rounding, measured: a real calibration, not the default
    assert tolerance(torch.bfloat16, None) == DEFAULT_TOL[torch.bfloat16]
    # and check_step builds the same from a real bf16 step and the plain UNet (its fp32 copy made inside)
    rep = check_step(make(half, torch.bfloat16), lambda unet, dt: make(unet, dt), half)
    assert rep.ok and rep.numbers["eager_vs_fp32"] is not None and rep.numbers["tol"] > MIN_TOL


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
