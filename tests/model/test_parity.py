"""Our UNet and VAE against diffusers' UNet2DConditionModel / AutoencoderKL (the oracle).

Weights go from our randomly initialised model through our own ldm_to_diffusers_* mapping into
the diffusers model with load_state_dict(strict=True), so both the architecture and the mapping
table are checked. Tolerance: max|a - b| / max|b| <= 1e-4 in fp32 (docs/model.md §7.4-§7.5).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from rayinpaint.model import (PRESETS, Inpainter, Speed, ldm_to_diffusers_unet, ldm_to_diffusers_vae, load_model,
                              samplers)
from rayinpaint.model.config import UNetConfig, VAEConfig
from rayinpaint.model.denoiser import GuidedStep, InpaintDenoiser
from rayinpaint.model.schedule import Schedule
from rayinpaint.model.reference import diffusers_unet_config, diffusers_vae_config
from rayinpaint.model.sd2 import build_meta, random_init_
from rayinpaint.model.speed import compile_module, set_memory_format
from rayinpaint.model.unet import UNet
from rayinpaint.model.vae import VAE

from helpers_model import guided_eps, step_inputs

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def diffusers_unet(cfg: UNetConfig) -> "diffusers.UNet2DConditionModel":
    """UNet2DConditionModel with the same structure (docs/model.md §7.3), built on meta."""
    with torch.device("meta"):
        return diffusers.UNet2DConditionModel(**diffusers_unet_config(cfg, sample_size=8))


def diffusers_vae(cfg: VAEConfig) -> "diffusers.AutoencoderKL":
    with torch.device("meta"):
        return diffusers.AutoencoderKL(**{**diffusers_vae_config(cfg), "sample_size": 64})


def _pair_unet(cfg: UNetConfig):
    ours = random_init_(UNet(cfg), seed=1, prefix="model.diffusion_model.").eval()
    ours.reset_buffers("cpu")
    theirs = diffusers_unet(cfg)
    # assign=True shares our tensors (no second copy of the 3.5 GB full UNet); strict=True checks names.
    theirs.load_state_dict(ldm_to_diffusers_unet(ours.state_dict(), cfg), strict=True, assign=True)
    return ours, theirs.eval()


def _pair_vae(cfg: VAEConfig):
    ours = random_init_(VAE(cfg), seed=2, prefix="first_stage_model.").eval()
    theirs = diffusers_vae(cfg)
    theirs.load_state_dict(ldm_to_diffusers_vae(ours.state_dict(), cfg), strict=True, assign=True)
    return ours, theirs.eval()


def _check_unet(cfg: UNetConfig, latent: int, batch: int) -> None:
    ours, theirs = _pair_unet(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, latent, latent, generator=g)
    ctx = torch.randn(batch, 77, cfg.context_dim, generator=g)
    t = torch.tensor([999, 17, 500][:batch])
    with torch.inference_mode():
        a = ours(x, t, ctx)
        b = theirs(x, t, encoder_hidden_states=ctx).sample
    assert a.shape == (batch, cfg.out_channels, latent, latent)
    assert b.abs().max() > 1e-3  # a meaningful, non-degenerate output
    assert rel_err(a, b) <= TOL, rel_err(a, b)
    # each sample depends only on its own inputs (no cross-batch leakage)
    with torch.inference_mode():
        single = ours(x[1:2], t[1:2], ctx[1:2])
    assert rel_err(single, a[1:2]) <= TOL


def _check_vae(cfg: VAEConfig, size: int) -> None:
    ours, theirs = _pair_vae(cfg)
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    z = torch.randn(2, cfg.z_channels, size // 8, size // 8, generator=g)
    with torch.inference_mode():
        mean, logvar = ours.encode(img)
        dist = theirs.encode(img).latent_dist
        dec_a = ours.decode(z)
        dec_b = theirs.decode(z).sample
    assert mean.shape == logvar.shape == (2, cfg.z_channels, size // 8, size // 8)
    assert rel_err(mean, dist.mean) <= TOL
    assert rel_err(logvar, dist.logvar) <= TOL
    assert dec_a.shape == (2, 3, size, size)
    assert rel_err(dec_a, dec_b) <= TOL


def test_unet_matches_diffusers_tiny():
    _check_unet(PRESETS["tiny"].unet, latent=8, batch=3)


def test_vae_matches_diffusers_tiny():
    _check_vae(PRESETS["tiny"].vae, size=64)


def test_vae_logvar_is_clamped():
    cfg = PRESETS["tiny"].vae
    vae = random_init_(VAE(cfg), seed=3).eval()
    with torch.no_grad():
        vae.quant_conv.bias[cfg.z_channels:] = torch.tensor([100.0, -100.0, 0.0, 0.0])
        _, logvar = vae.encode(torch.zeros(1, 3, 64, 64))
    assert logvar[:, 0].max() == 20.0 and logvar[:, 1].min() == -30.0


@pytest.mark.slow  # the full-size SD2 UNet on CPU
def test_unet_matches_diffusers_sd2_full_config():
    """Full SD2-inpainting UNet (866M params) at an 8x8 latent."""
    _check_unet(PRESETS["sd2-inpainting"].unet, latent=8, batch=2)


@pytest.mark.slow  # the full-size SD2 VAE on CPU
def test_vae_matches_diffusers_sd2_full_config():
    """Full SD2 VAE at 64x64 px: encode and decode."""
    _check_vae(PRESETS["sd2-inpainting"].vae, size=64)


def test_full_unet_structure_counts():
    """Parameter counts of the full config equal the reference numbers (docs/model.md §1.1)."""
    with torch.device("meta"):
        unet = UNet(PRESETS["sd2-inpainting"].unet)
        vae = VAE(PRESETS["sd2-inpainting"].vae)
    assert sum(p.numel() for p in unet.parameters()) == 865_925_124
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_tiny_inpaint_step_is_fast_on_cpu():
    """One whole step (VAE encode + UNet + VAE decode) at 64x64 px stays in the tens of ms."""
    from rayinpaint.model import load_model

    m = load_model("random:tiny")
    n_small = sum(p.numel() for n, p in m.named_parameters() if "token_embedding" not in n)
    assert n_small < 5_000_000
    img = torch.rand(1, 3, 64, 64) * 2 - 1
    ctx = m.text_encoder(m.tokenize(["a"]))
    # CPU time of one thread, best of 5: robust to other processes sharing the CI machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = float("inf")
    try:
        with torch.inference_mode():
            for _ in range(5):
                t0 = time.process_time()
                mean, _ = m.vae.encode(img)
                x = torch.cat([torch.randn_like(mean), torch.ones_like(mean[:, :1]), mean], dim=1)
                m.unet(x, torch.tensor([500]), ctx)
                m.vae.decode(mean)
                best = min(best, time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)
    assert best < 0.25, best


def test_channels_last_gives_the_same_result():
    from rayinpaint.model import load_model

    m = load_model("random:tiny:1")
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 9, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    t = torch.tensor([10, 900])
    with torch.inference_mode():
        a, ma = m.unet(x, t, ctx), m.vae.encode(img)[0]
        m.to(memory_format=torch.channels_last)
        cl = torch.channels_last
        b, mb = m.unet(x.to(memory_format=cl), t, ctx), m.vae.encode(img.to(memory_format=cl))[0]
    assert rel_err(b, a) <= 1e-5 and rel_err(mb, ma) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_gpu_matches_fp32(dtype):
    """Full SD2 UNet + VAE in fp16/bf16 on the GPU against the same weights in fp32 there."""
    from rayinpaint.model import load_model

    ref = load_model("random:sd2", device="cuda", dtype=torch.float32)
    half = load_model("random:sd2", device="cuda", dtype=dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 9, 64, 64, device="cuda", generator=g)
    img = torch.rand(2, 3, 256, 256, device="cuda", generator=g) * 2 - 1
    tokens = ref.tokenize(["a red car parked on a street", ""])
    with torch.inference_mode():
        ctx = ref.text_encoder(tokens)
        a = ref.unet(x, torch.tensor([999, 20], device="cuda"), ctx)
        b = half.unet(x.to(dtype), torch.tensor([999, 20], device="cuda"), half.text_encoder(tokens)).float()
        ma = ref.vae.encode(img)[0]
        mb = half.vae.encode(img.to(dtype))[0].float()
        da = ref.vae.decode(ma)
        db = half.vae.decode(ma.to(dtype)).float()
    assert torch.isfinite(b).all() and torch.isfinite(db).all()
    assert rel_err(b, a) < 0.05 and rel_err(mb, ma) < 0.05 and rel_err(db, da) < 0.05


# ---- speed switches (model/speed.py) on CPU: each one against the path without it ----------------------------
# Tolerances: fp32 on the tiny model. A switch that only changes memory layout, kernel choice or how the batch is
# split changes rounding only (measured <= 2e-6 relative here); 1e-5 fails any real change of the computation.
# Whole-image comparisons allow 1 grey level (rounding of values that sit on a .5 boundary).

OFF = dict(channels_last=False, compile=False, cuda_graph=False, pinned=False, cudnn_benchmark=False)


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny:3")


def test_guided_step_is_classifier_free_guidance_of_two_unet_calls(tiny):
    """The reference, written out here: eps_u + g (eps_c - eps_u) from separate UNet calls on
    [x / sqrt(sigma^2 + 1), mask, masked latent] with the negative and the positive context."""
    cond, ctx_u, ctx_c, g, x = inputs = step_inputs(8)
    sched = Schedule()
    sigma = sched.sigmas_for("ddim", 10)[0]
    t = torch.full((2,), sched.timestep_for_sigma(float(sigma)))
    inp = torch.cat([x / (sigma**2 + 1) ** 0.5, cond], dim=1)
    with torch.inference_mode():
        eps_u, eps_c = tiny.unet(inp, t, ctx_u), tiny.unet(inp, t, ctx_c)
    ref = eps_u + g.view(-1, 1, 1, 1) * (eps_c - eps_u)
    for kw in ({}, {"graph": True}, {"fused_cfg": False}):
        assert rel_err(guided_eps(tiny.unet, inputs, **kw)[0], ref) <= 1e-5, kw


def test_split_cfg_halves_match_one_doubled_call(tiny):
    inputs = step_inputs(0)
    one = guided_eps(tiny.unet, inputs, fused_cfg=True)[0]
    two = guided_eps(tiny.unet, inputs, fused_cfg=False)[0]
    assert one.abs().max() > 1e-2
    assert rel_err(two, one) <= 1e-5


def aten_ops(fn) -> tuple[object, set[str]]:
    """fn()'s result and the names of the aten operators it ran, composite ones (scaled_dot_product_attention)
    with the operators they are made of: the kernel that attention picked shows among them."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.name())
            with self:  # a composite operator runs as the operators it is made of, recorded too
                out = func.decompose(*args, **(kwargs or {}))
            return func(*args, **(kwargs or {})) if out is NotImplemented else out

    with Recorder() as rec:
        out = fn()
    return out, rec.names


def test_sdpa_math_backend_matches_default_and_is_used(tiny):
    inputs = step_inputs(1)
    default, fused = aten_ops(lambda: guided_eps(tiny.unet, inputs, sdpa="auto")[0])
    math_, plain = aten_ops(lambda: guided_eps(tiny.unet, inputs, sdpa="math")[0])
    kernels = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
               "_scaled_dot_product_cudnn_attention")
    assert any(k in op for op in fused for k in kernels), sorted(fused)  # a fused kernel by default
    assert not any(k in op for op in plain for k in kernels), sorted(plain)  # none under "math":
    assert "aten::_scaled_dot_product_attention_math" in plain, sorted(plain)  # its matmuls and softmax
    assert rel_err(math_, default) <= 1e-5


def test_channels_last_step_matches_and_converts_the_layout():
    m = load_model("random:tiny:3")
    inputs = step_inputs(2)
    ref = guided_eps(m.unet, inputs)[0]
    set_memory_format(m.unet, True)
    assert m.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    step = GuidedStep(m.unet, 2, (8, 8), (77, 32), torch.float32, "cpu", channels_last=True)
    assert step.input.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(guided_eps(m.unet, inputs, channels_last=True)[0], ref) <= 1e-5


def test_compiled_unet_is_one_graph_and_matches_eager(tiny):
    """torch.compile with fullgraph=True (a graph break would raise). On CPU the aot_eager backend traces exactly
    what inductor would receive, in seconds; inductor's generated kernels are checked on the GPU."""
    inputs = step_inputs(3)
    ref = guided_eps(tiny.unet, inputs)[0]
    try:
        compiled = compile_module(tiny.unet, Speed(compile=True, compile_backend="aot_eager"))
        got = guided_eps(compiled, inputs)[0]
        got2 = guided_eps(compiled, step_inputs(4))[0]  # same shapes: no recompilation, new values
    finally:
        torch._dynamo.reset()
    assert rel_err(got, ref) <= 1e-5
    assert rel_err(got2, guided_eps(tiny.unet, step_inputs(4))[0]) <= 1e-5


def test_static_buffers_serve_batch_after_batch_bitwise(tiny):
    """The CUDA-graph path (static buffers; on CPU without capture) reused across batches and steps gives exactly
    the eager result: nothing of an earlier batch or step leaks into the next."""
    sched = Schedule()
    sigmas = sched.sigmas_for("dpmpp_2m", 4)
    static = GuidedStep(tiny.unet, 2, (8, 8), (77, 32), torch.float32, "cpu", graph=True)
    for seed in (5, 6, 7):
        cond, ctx_u, ctx_c, g, x = step_inputs(seed)
        static.load(cond, ctx_u, ctx_c, g)
        plain = GuidedStep(tiny.unet, 2, (8, 8), (77, 32), torch.float32, "cpu")
        plain.load(cond, ctx_u, ctx_c, g)
        with torch.inference_mode():
            a = samplers.sample("dpmpp_2m", InpaintDenoiser(static, sched, sigmas), x, sigmas)
            b = samplers.sample("dpmpp_2m", InpaintDenoiser(plain, sched, sigmas), x, sigmas)
        assert torch.equal(a, b), seed


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("euler", 0.0), ("euler_a", 0.0),
                                         ("dpmpp_2m", 0.0)])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "static"])
def test_step_loop_never_reads_a_device_value(sampler, eta, graph):
    """The whole sampler loop with the model and every tensor on the meta device: any host read of a device
    value (.item(), float(), a tensor in an `if`), i.e. a host synchronisation on CUDA, raises there. The sigma
    grid stays on the host, as in use."""
    cfg = PRESETS["tiny"]
    model = build_meta(cfg)
    model.reset_buffers("meta")
    cond, ctx_u, ctx_c, g, x = step_inputs(0, device="meta")
    step = GuidedStep(model.unet, 2, (8, 8), (77, 32), torch.float32, "meta", graph=graph)
    step.load(cond, ctx_u, ctx_c, g)
    sched = Schedule()
    sigmas = sched.sigmas_for(sampler, 4)
    den = InpaintDenoiser(step, sched, sigmas)
    with torch.inference_mode():
        out = samplers.sample(sampler, den, x, sigmas, noise=torch.empty_like, eta=eta)
    assert out.device.type == "meta" and out.shape == x.shape and den.calls == 4
    # The check has teeth: a denoiser that looks at a value fails the same way.
    with pytest.raises(RuntimeError, match="meta"):
        samplers.sample(sampler, lambda x, s: x * float(x.abs().max()), x, sigmas, noise=torch.empty_like, eta=eta)


IMGS = torch.randint(0, 256, (2, 64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
MASKS = torch.zeros(2, 64, 64, dtype=torch.uint8)
MASKS[:, 16:48, 8:40] = 255


def run_inpainter(model, strength=0.75, **speed):
    inp = Inpainter(model, sampler="ddim", steps=4, strength=strength, speed={**OFF, **speed})
    return inp(IMGS, MASKS, ["a red door", "grass"], seeds=[3, 4]).astype(int), inp


@pytest.mark.parametrize("switch", [dict(channels_last=True), dict(fused_cfg=False), dict(sdpa="math")],
                         ids=["channels_last", "split_cfg", "sdpa_math"])
def test_inpainter_with_switch_matches_reference(switch):
    m = load_model("random:tiny:2")
    ref, _ = run_inpainter(m)
    out, inp = run_inpainter(m, **switch)
    assert all(getattr(inp.speed, k) == v for k, v in switch.items())
    assert np.abs(out - ref).max() <= 1


def test_unbatched_vae_matches_and_calls_per_row(monkeypatch):
    m = load_model("random:tiny:2")
    ref, _ = run_inpainter(m)
    calls = {"encode": [], "decode": []}
    for name in calls:
        orig = getattr(m.vae, name)
        monkeypatch.setattr(m.vae, name, lambda x, _o=orig, _n=name: calls[_n].append(x.shape[0]) or _o(x))
    out, _ = run_inpainter(m, batch_vae=False)
    assert calls == {"encode": [1, 1, 1, 1], "decode": [1, 1]}  # masked + full image (strength < 1), per row
    calls["encode"].clear()
    calls["decode"].clear()
    run_inpainter(m, batch_vae=True)
    assert calls == {"encode": [4], "decode": [2]}  # both encodes of the batch in one call
    assert np.abs(out - ref).max() <= 1


def test_prompt_cache_off_reencodes_and_matches():
    m = load_model("random:tiny:2")
    ref, inp = run_inpainter(m)
    inp(IMGS, MASKS, ["a red door", "grass"], seeds=[3, 4])
    assert inp.prompts.encoded == 3  # "", and the two prompts, once
    nocache = Inpainter(m, sampler="ddim", steps=4, strength=0.75, prompt_cache_size=0, speed=OFF)
    a = nocache(IMGS, MASKS, ["a red door", "grass"], seeds=[3, 4]).astype(int)
    nocache(IMGS, MASKS, ["a red door", "grass"], seeds=[3, 4])
    assert nocache.prompts.encoded == 1 + 2 + 2  # "" stays pinned; the others each time
    assert np.array_equal(a, ref)


def test_speed_defaults_by_device():
    cpu, cuda = Speed().resolve("cpu"), Speed().resolve("cuda")
    assert all(getattr(cuda, k) for k in ("channels_last", "compile", "cuda_graph", "pinned", "cudnn_benchmark",
                                          "fused_cfg", "batch_vae"))
    assert not any(getattr(cpu, k) for k in ("channels_last", "compile", "cuda_graph", "pinned", "cudnn_benchmark"))
    assert cpu.fused_cfg and cpu.batch_vae and cpu.sdpa == cuda.sdpa == "auto"
    # Asking for a CUDA-only switch on CPU is safe: it resolves off. Portable ones are honoured.
    asked = Speed(cuda_graph=True, pinned=True, channels_last=True, compile=True).resolve("cpu")
    assert (asked.cuda_graph, asked.pinned, asked.channels_last, asked.compile) == (False, False, True, True)
    with pytest.raises(ValueError, match="sdpa"):
        Speed(sdpa="fast")
    with pytest.raises(ValueError, match="unknown speed switch"):
        Speed.coerce({"graphs": True})
    assert load_model("random:tiny", dtype="auto").dtype == torch.float32


def test_warmup_reports_compile_time_and_prepares_the_shape(tiny):
    inp = Inpainter(tiny, sampler="ddim", steps=3, speed={**OFF, "compile": True, "compile_backend": "aot_eager"})
    try:
        info = inp.warmup(2, 64)
        assert info["compile_s"] >= 0 and info["first_call_s"] > info["second_call_s"]
        assert list(inp._steps) == [(2, 8, 8)]
        out = inp(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    finally:
        torch._dynamo.reset()
    ref = Inpainter(tiny, sampler="ddim", steps=3, speed=OFF)(IMGS, MASKS, ["a", "b"], seeds=[1, 2])
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
