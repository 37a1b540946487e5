"""Full-size SD2 model in half precision on a GPU (skipped without CUDA), and the speed switches there.

Speed switches (model/speed.py, end of this file): each against the plain path in fp32, the half-precision-only
attention kernels against fp32, the whole fast pipeline against the plain one, the sampler loop under CUDA's
sync debug mode, the timing of one guided step eager vs fast, and the inductor cache reused by a second process.

The full config with random weights ("random:sd2") at 512x512: bf16 and fp16 UNet and VAE
outputs against fp32 on the same weights, and the time of one guided UNet step at batch 16
(one UNet call on 32 rows), printed for the lead (pytest -s to see it).

Tolerances (relative error = ||half - fp32|| / ||fp32|| "norm-wise", and max|half - fp32| /
max|fp32| "max-wise"): random weights amplify rounding far more than trained ones. Calibrated
on CPU with the same random:sd2 weights (UNet at 8x8 and 16x16 latents, VAE at 64 and 128 px):
    UNet bf16 0.090-0.106 / 0.137-0.179   fp16 0.013-0.014 / 0.017-0.019
    VAE  bf16 0.013-0.016 / 0.010-0.015   fp16 0.0015-0.0024 / 0.0014-0.0021
i.e. ~50x the unit roundoff (bf16 2^-9, fp16 2^-12) for the 50-layer UNet, ~7x for the VAE. We
allow about twice the measured values, so the 512x512 run (longer attention sums) has room while
a layer running in the wrong dtype or overflowing (errors of order 1, or NaN) fails.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rayinpaint.model import Inpainter, Speed, load_model
from rayinpaint.model.denoiser import GuidedStep
from rayinpaint.model.flops import unet_flops
from rayinpaint.model.selfcheck import K, error_ratio, rms_err
from rayinpaint.model.selfcheck import rel_err as max_rel_err
from rayinpaint.model.speed import compile_module, set_memory_format

from helpers_model import guided_eps, step_inputs

pytestmark = pytest.mark.gpu

TOL = {  # (component, dtype): (norm-wise, max-wise) relative error
    ("unet", torch.bfloat16): (0.2, 0.3),
    ("unet", torch.float16): (0.03, 0.04),
    ("vae", torch.bfloat16): (0.04, 0.04),
    ("vae", torch.float16): (0.005, 0.005),
}


def rel_errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item(), ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def sd2():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    # A true fp32 reference: cuDNN convolutions default to TF32 (10 mantissa bits, fp16-like),
    # which would blur the fp16 comparison. Restored afterwards.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield load_model("random:sd2", device="cuda", dtype=torch.float32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def unet_inputs(batch: int, size: int = 512, seed: int = 0):
    g = torch.Generator("cuda").manual_seed(seed)
    h = size // 8
    x = torch.randn(batch, 9, h, h, device="cuda", generator=g)
    x[:, 4] = (x[:, 4] > 0).float()  # a binary mask channel, as in use
    t = torch.tensor([999, 500, 20, 1][:batch], device="cuda").repeat(max(1, batch // 4))[:batch]
    ctx = torch.randn(batch, 77, 1024, device="cuda", generator=g)
    return x, t, ctx


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_unet_half_vs_fp32(sd2, dtype):
    x, t, ctx = unet_inputs(4)
    with torch.inference_mode():
        ref = sd2.unet(x, t, ctx).float()
        half = copy.deepcopy(sd2.unet).to(dtype)
        out = half(x.to(dtype), t, ctx.to(dtype)).float()
    del half
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    norm_err, max_err = rel_errors(out, ref)
    print(f"\nUNet {dtype}: norm-wise {norm_err:.2e}, max-wise {max_err:.2e}")
    tol = TOL[("unet", dtype)]
    assert norm_err <= tol[0] and max_err <= tol[1], (norm_err, max_err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_vae_half_vs_fp32(sd2, dtype):
    g = torch.Generator("cuda").manual_seed(1)
    img = torch.rand(2, 3, 512, 512, device="cuda", generator=g) * 2 - 1
    z = torch.randn(2, 4, 64, 64, device="cuda", generator=g) / sd2.scale_factor * 0.8
    with torch.inference_mode():
        mean, logvar = sd2.vae.encode(img)
        dec = sd2.vae.decode(z)
        half = copy.deepcopy(sd2.vae).to(dtype)
        mean_h, logvar_h = half.encode(img.to(dtype))
        dec_h = half.decode(z.to(dtype))
    del half
    for name, a, b in [("encode mean", mean_h, mean), ("encode logvar", logvar_h, logvar), ("decode", dec_h, dec)]:
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), name
        norm_err, max_err = rel_errors(a.float(), b.float())
        print(f"\nVAE {name} {dtype}: norm-wise {norm_err:.2e}, max-wise {max_err:.2e}")
        tol = TOL[("vae", dtype)]
        assert norm_err <= tol[0] and max_err <= tol[1], (name, norm_err, max_err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_unet_step_timing_batch16_cfg(sd2, dtype):
    """One guided step for 16 images = one UNet call on 32 rows at 64x64 latents. Printed, not
    asserted (a number for the lead; the targets and the benchmark are in BENCHMARKS.md)."""
    unet = copy.deepcopy(sd2.unet).to(dtype)
    x, t, ctx = unet_inputs(32)
    x, ctx = x.to(dtype), ctx.to(dtype)
    with torch.inference_mode():
        for _ in range(3):  # warm-up (cuDNN autotune, allocator)
            unet(x, t, ctx)
        torch.cuda.synchronize()
        n = 10
        start = time.perf_counter()
        for _ in range(n):
            out = unet(x, t, ctx)
        torch.cuda.synchronize()
        dt = (time.perf_counter() - start) / n
    assert torch.isfinite(out).all()
    flops = unet_flops("sd2-inpainting", 32, (64, 64))[0]  # counted: about 0.8 TFLOP per row
    print(f"\nUNet step, batch 16 with CFG (32 rows), {dtype}, eager: {dt * 1000:.1f} ms, "
          f"{flops / dt / 1e12:.0f} TFLOP/s, {16 / dt:.1f} image-steps/s")
    del unet


def test_inpainter_runs_in_half_precision_on_gpu(sd2):
    """The whole Inpainter on the full model in bf16 at 512x512: finite output, the repainted area
    differs from the input, and the same seed gives the same image twice."""
    import numpy as np

    m = copy.deepcopy(sd2).to(torch.bfloat16)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    masks = np.zeros((2, 512, 512), np.uint8)
    masks[:, 128:384, 128:384] = 255
    inp = Inpainter(m, sampler="dpmpp_2m", steps=4)
    a = inp(imgs, masks, ["a red car", "a cat"], seeds=[1, 2])
    b = inp(imgs, masks, ["a red car", "a cat"], seeds=[1, 2])
    assert a.shape == imgs.shape and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    del m


# ---- speed switches (model/speed.py) on the GPU ------------------------------------------------------------------
# fp32 comparisons run with TF32 off (the `sd2` fixture), so a switch can only change rounding: cuDNN/cuBLAS pick
# other algorithms for NHWC, inductor fuses and re-associates reductions, the split CFG batch rounds per half.
# fp32 rounding through the 50-layer UNet with random weights is ~50x the unit roundoff (the bf16/fp16
# calibration above), ~3e-6, and the guided eps multiplies differences by up to 2g+1 = 16: ~5e-5. We allow 1e-3,
# 20x that; a real fault (a stale static buffer, a wrong CFG half, a missed step input) is of order 1.

FAST_OFF = dict(channels_last=False, compile=False, cuda_graph=False, pinned=False, cudnn_benchmark=False)


@pytest.fixture(scope="module")
def sd2_bf16(sd2):
    m = copy.deepcopy(sd2).to(torch.bfloat16)
    yield m
    del m


FP32_SWITCHES = {
    "channels_last": dict(channels_last=True),
    "compile": dict(compile=True),
    "cuda_graph": dict(graph=True),
    "split_cfg": dict(fused_cfg=False),
    "sdpa_efficient": dict(sdpa="efficient"),
    "sdpa_math": dict(sdpa="math"),
    "all_fast": dict(channels_last=True, compile=True, graph=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FP32_SWITCHES))
def test_switch_matches_plain_step_fp32(sd2, name):
    kw = dict(FP32_SWITCHES[name])
    compiled = kw.pop("compile", False)
    inputs = step_inputs(0, latent=32, width=1024, device="cuda", guidance=7.5)
    ref = guided_eps(sd2.unet, inputs, torch.float32, steps=3)
    set_memory_format(sd2.unet, kw.get("channels_last", False))
    try:
        unet = compile_module(sd2.unet, Speed(compile=True)) if compiled else sd2.unet
        got = guided_eps(unet, inputs, torch.float32, steps=3, **kw)
    finally:
        set_memory_format(sd2.unet, False)
        torch._dynamo.reset()
    assert torch.isfinite(got).all()
    norm_err, max_err = rel_errors(got, ref)
    print(f"\n{name} fp32 vs plain: norm-wise {norm_err:.1e}, max-wise {max_err:.1e}")
    assert max_err <= 1e-3, (norm_err, max_err)


@pytest.mark.parametrize("sdpa", ["flash", "efficient", "cudnn"])
def test_fused_attention_kernels_in_bf16_against_fp32(sd2, sd2_bf16, sdpa):
    """Flash and cuDNN attention exist only in half precision: the bf16 step (CUDA graph, channels_last) against
    the plain fp32 one: at most K times as far from it as the plain bf16 step (the self-check's rule,
    model/selfcheck.py), not a constant (guidance 1 so eps is the UNet's)."""
    inputs = step_inputs(0, latent=32, width=1024, device="cuda", guidance=1.0)
    ref = guided_eps(sd2.unet, inputs, torch.float32, steps=1)
    plain = guided_eps(sd2_bf16.unet, inputs, torch.bfloat16, steps=1, sdpa="math")
    set_memory_format(sd2_bf16.unet, True)
    try:
        got = guided_eps(sd2_bf16.unet, inputs, torch.bfloat16, steps=1, sdpa=sdpa, graph=True, channels_last=True)
    except RuntimeError as e:
        if "No available kernel" in str(e):
            pytest.skip(f"{sdpa} attention is not available on this GPU/build: {str(e).splitlines()[0]}")
        raise
    finally:
        set_memory_format(sd2_bf16.unet, False)
    ratio = error_ratio(rms_err(got, ref), rms_err(plain, ref))
    print(f"\nbf16 step with {sdpa} attention: {ratio:.2f}x the plain bf16 step's error against fp32 (bound {K}x; "
          f"plain bf16 vs fp32 {rms_err(plain, ref):.2e} rms)")
    assert ratio <= K, ratio


def _images(n: int = 2, size: int = 256):
    import numpy as np

    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    masks[:, size // 4: 3 * size // 4, size // 8: size // 2] = 255
    return imgs, masks


@pytest.mark.slow
def test_fast_inpainter_matches_plain_in_fp32(sd2):
    """Every switch on (compile, CUDA graph, channels_last, pinned, cuDNN autotune) against every switch off, the
    whole pipeline in fp32: images within 2 grey levels (the step-level 1e-3 bound through 3 DDIM steps and the
    VAE), and bitwise equal on a second run (the graph replays the same kernels)."""
    import numpy as np

    imgs, masks = _images()
    prompts, seeds = ["a red car", "a cat"], [1, 2]
    plain = Inpainter(sd2, sampler="ddim", steps=3, strength=0.8, speed=FAST_OFF)(imgs, masks, prompts, seeds=seeds)
    fast = Inpainter(sd2, sampler="ddim", steps=3, strength=0.8,
                     speed=dict(channels_last=True, compile=True, cuda_graph=True, pinned=True, cudnn_benchmark=True))
    try:
        a = fast(imgs, masks, prompts, seeds=seeds)
        b = fast(imgs, masks, prompts, seeds=seeds)
    finally:
        del fast  # its captured graph reads the channels_last weights: while it lives, their layout stays
        gc.collect()
        Inpainter(sd2, speed=FAST_OFF)  # back to the contiguous layout for the other tests
        torch._dynamo.reset()
    assert np.array_equal(a, b)
    diff = np.abs(a.astype(int) - plain.astype(int))
    print(f"\nfast vs plain fp32 images: max {diff.max()}, mean {diff.mean():.3f} grey levels")
    assert diff.max() <= 2


@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("euler", 0.0), ("euler_a", 0.0),
                                         ("dpmpp_2m", 0.0)])
def test_step_loop_never_waits_for_the_gpu(sd2_bf16, sampler, eta, graph):
    """CUDA's sync debug mode set to error around the sampler loop: no .item(), no pageable copy, no synchronize
    in any step (the per-step noise of euler_a / DDIM eta goes through pinned memory)."""
    imgs, masks = _images()
    inp = Inpainter(sd2_bf16, sampler=sampler, steps=3, eta=eta,
                    speed=dict(compile=False, cuda_graph=graph, pinned=True, channels_last=True))
    inp(imgs, masks, ["a", "b"], seeds=[1, 2])  # first call: graph capture, cuDNN autotune, prompt encoding
    inp.forbid_host_sync = True
    out = inp(imgs, masks, ["a", "b"], seeds=[1, 2])
    assert out.shape == imgs.shape


def test_host_sync_check_catches_pageable_copies(sd2_bf16):
    """The check above has teeth: without pinned memory, euler_a's per-step noise copy waits for the GPU."""
    imgs, masks = _images()
    inp = Inpainter(sd2_bf16, sampler="euler_a", steps=3, speed=dict(compile=False, cuda_graph=True, pinned=False))
    inp(imgs, masks, ["a", "b"], seeds=[1, 2])
    inp.forbid_host_sync = True
    with pytest.raises(RuntimeError, match="synchroniz"):
        inp(imgs, masks, ["a", "b"], seeds=[1, 2])


@pytest.mark.compiles  # left out of `bench --verify` without --full
@pytest.mark.parametrize("fast", [False, True], ids=["eager", "compile+graph+channels_last"])
def test_guided_step_timing_batch16(sd2_bf16, fast):
    """One guided step for 16 images (32 UNet rows at 64x64) in bf16, eager against every switch on. Printed for
    the lead (pytest -s); BENCHMARKS.md has the full benchmark."""
    inputs = step_inputs(0, batch=16, latent=64, width=1024, device="cuda", guidance=7.5)
    set_memory_format(sd2_bf16.unet, fast)
    try:
        unet = compile_module(sd2_bf16.unet, Speed(compile=True)) if fast else sd2_bf16.unet
        cond, ctx_u, ctx_c, g, x = inputs
        step = GuidedStep(unet, 16, (64, 64), (77, 1024), torch.bfloat16, "cuda", graph=fast, channels_last=fast)
        step.load(cond, ctx_u, ctx_c, g)
        div, t = torch.ones((), device="cuda"), torch.full((32,), 500, device="cuda")
        with torch.inference_mode():
            for _ in range(3):
                out = step(x, div, t)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                out = step(x, div, t)
            torch.cuda.synchronize()
        dt = (time.perf_counter() - start) / 10
    finally:
        set_memory_format(sd2_bf16.unet, False)
        torch._dynamo.reset()
    assert torch.isfinite(out).all()
    flops = unet_flops("sd2-inpainting", 32, (64, 64))[0]
    print(f"\nguided step, batch 16 (32 rows), bf16, {'fast' if fast else 'eager'}: {dt * 1000:.1f} ms, "
          f"{flops / dt / 1e12:.0f} TFLOP/s, compile+capture {step.timings}")


_CACHE_SCRIPT = """
import json
from rayinpaint.model import Inpainter, load_model
from rayinpaint.model.speed import compile_cache_counters
m = load_model("random:tiny", device="cuda", dtype="auto")
info = Inpainter(m, steps=2, speed=dict(compile=True, cuda_graph=False)).warmup(2, 64)
print(json.dumps({"compile_s": info["compile_s"], **compile_cache_counters()}))
"""


@pytest.mark.slow
def test_compiled_kernels_are_reused_by_the_next_process(tmp_path):
    """Two processes with one inductor cache folder (as two actors on a node): the second loads the compiled
    graph from the FX graph cache instead of compiling it."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=900, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\ncompile cache: first {runs[0]}, second {runs[1]}")
    assert runs[0]["fxgraph_cache_miss"] >= 1
    assert runs[1]["fxgraph_cache_hit"] >= 1 and runs[1]["fxgraph_cache_miss"] < runs[0]["fxgraph_cache_miss"]
    assert runs[1]["compile_s"] < runs[0]["compile_s"]


# ---- the fast path checks itself (model/selfcheck.py) ----------------------------------------------------------


def _fast_step(unet, dtype, compiled: bool):
    fn = compile_module(unet, Speed(compile=True)) if compiled else unet
    return GuidedStep(fn, 2, (32, 32), (77, 1024), dtype, "cuda", graph=True, channels_last=True)


@pytest.mark.compiles  # left out of `bench --verify` without --full
@pytest.mark.parametrize("compiled", [False, True], ids=["graph", "compile+graph"])
def test_graph_captured_on_batch_a_serves_batch_b_then_a_again_bitwise(sd2, sd2_bf16, compiled):
    """Capture on A; B against fp32 at most K times as far as the plain bf16 step (the self-check's rule);
    then A again, bitwise equal to the first A: nothing of B stays in the static buffers or the graph."""
    a, b = (step_inputs(seed, latent=32, width=1024, device="cuda", guidance=7.5) for seed in (0, 1))
    set_memory_format(sd2_bf16.unet, True)
    try:
        step = _fast_step(sd2_bf16.unet, torch.bfloat16, compiled)
        div, t = torch.tensor(2.0, device="cuda"), torch.full((4,), 500, device="cuda")
        with torch.inference_mode():
            outs = []
            for inputs in (a, b, a):
                cond, ctx_u, ctx_c, g, x = inputs
                step.load(cond, ctx_u, ctx_c, g)
                outs.append(step(x, div, t).clone())
            assert step._cuda_graph is not None
            plain = GuidedStep(sd2_bf16.unet, 2, (32, 32), (77, 1024), torch.bfloat16, "cuda", channels_last=True)
            plain.load(*b[:4])
            eager_b = plain(b[4], div, t).clone()
            fp32 = GuidedStep(sd2.unet, 2, (32, 32), (77, 1024), torch.float32, "cuda")
            fp32.load(*b[:4])
            ref_b = fp32(b[4], div, t).clone()
    finally:
        set_memory_format(sd2_bf16.unet, False)
        torch._dynamo.reset()
    ratio = error_ratio(rms_err(outs[1], ref_b), rms_err(eager_b, ref_b))
    print(f"\nreplay B: {ratio:.2f}x the plain bf16 step's error against fp32 (bound {K}x)")
    assert torch.equal(outs[0], outs[2])
    assert ratio <= K
    assert max_rel_err(outs[1], outs[0]) > 0.1  # B really is another batch


@pytest.mark.compiles  # left out of `bench --verify` without --full
def test_self_check_passes_on_the_real_fast_path_and_records_its_numbers(sd2_bf16):
    inp = Inpainter(sd2_bf16, sampler="ddim", steps=2, strict_speed=True)  # every switch on (CUDA defaults)
    try:
        inp.warmup(2, 256)
        report = inp.checks[-1]
    finally:
        del inp
        gc.collect()
        Inpainter(sd2_bf16, speed=FAST_OFF)
        torch._dynamo.reset()
    print(f"\nself-check at batch 2, 256 px: {report}")
    assert report["ok"] and report["compile"] and report["cuda_graph"]
    assert report["eager_vs_fp32"] is not None and max(report["replay_vs_direct"]) <= 1e-5
    assert report["ratio"] <= K and report["check_s"] > 0


def test_a_real_capture_failure_falls_back_to_the_eager_step(sd2_bf16):
    """A UNet that reads a value on the host (.item()) runs eagerly but cannot be captured: capture really
    fails, the Inpainter turns the graph off, and the images are the plain path's."""
    m = copy.deepcopy(sd2_bf16)
    forward = m.unet.forward

    def host_reading_forward(x, t, ctx):
        scale = 1.0 + 0.0 * x.float().abs().max().item()  # a host sync: illegal while capturing
        return forward(x, t, ctx) * scale

    m.unet.forward = host_reading_forward
    imgs, masks = _images()
    speed = dict(compile=False, cuda_graph=True, channels_last=False)
    inp = Inpainter(m, sampler="ddim", steps=3, speed=speed)
    out = inp(imgs, masks, ["a", "b"], seeds=[1, 2])
    assert inp.speed.cuda_graph is False
    ref = Inpainter(m, sampler="ddim", steps=3, speed={**speed, "cuda_graph": False})(imgs, masks, ["a", "b"],
                                                                                       seeds=[1, 2])
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    with pytest.raises(Exception):
        Inpainter(m, sampler="ddim", steps=3, speed=speed, strict_speed=True)(imgs, masks, ["a", "b"], seeds=[1, 2])
    del m


def test_layout_change_does_not_move_weights_under_a_live_graph(sd2_bf16):
    """A captured graph (channels_last), then another Inpainter asking for the contiguous layout: the weights
    stay put and the first Inpainter's next batch is bitwise what it was."""
    imgs, masks = _images()
    a = Inpainter(sd2_bf16, sampler="ddim", steps=2, speed=dict(compile=False, cuda_graph=True, channels_last=True))
    first = a(imgs, masks, ["a", "b"], seeds=[1, 2])
    ptr = sd2_bf16.unet.input_blocks[0][0].weight.data_ptr()
    b = Inpainter(sd2_bf16, speed=dict(channels_last=False))
    assert b.speed.channels_last and sd2_bf16.unet.input_blocks[0][0].weight.data_ptr() == ptr
    assert np.array_equal(a(imgs, masks, ["a", "b"], seeds=[1, 2]), first)
    del a, b
    gc.collect()
    Inpainter(sd2_bf16, speed=FAST_OFF)


@pytest.mark.compiles  # left out of `bench --verify` without --full
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_a"])
def test_step_loop_with_every_default_switch_never_waits_for_the_gpu(sd2_bf16, sampler):
    """The job's default on CUDA (compile, CUDA graph, channels_last, pinned) under CUDA's sync debug mode."""
    imgs, masks = _images()
    inp = Inpainter(sd2_bf16, sampler=sampler, steps=3)
    try:
        inp(imgs, masks, ["a", "b"], seeds=[1, 2])
        assert inp.speed.compile and inp.speed.cuda_graph  # the self-check kept them
        inp.forbid_host_sync = True
        assert inp(imgs, masks, ["a", "b"], seeds=[1, 2]).shape == imgs.shape
    finally:
        del inp
        gc.collect()
        Inpainter(sd2_bf16, speed=FAST_OFF)
        torch._dynamo.reset()
