"""Our UNet and VAE against diffusers' UNet2DConditionModel / AutoencoderKL (the oracle).

Weights go from our randomly initialised model through our own ldm_to_diffusers_* mapping into
the diffusers model with load_state_dict(strict=True), so both the architecture and the mapping
table are checked. Tolerance: max|a - b| / max|b| <= 1e-4 in fp32 (sd2-inpainting.md §7.3-§7.4).
"""
from __future__ import annotations

import time

import pytest
import torch

from rayinpaint.model import PRESETS, ldm_to_diffusers_unet, ldm_to_diffusers_vae
from rayinpaint.model.config import UNetConfig, VAEConfig
from rayinpaint.model.weights import diffusers_unet_config, diffusers_vae_config
from rayinpaint.model.sd2 import random_init_
from rayinpaint.model.unet import UNet
from rayinpaint.model.vae import VAE

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def diffusers_unet(cfg: UNetConfig) -> "diffusers.UNet2DConditionModel":
    """UNet2DConditionModel with the same structure (sd2-inpainting.md §7.2), built on meta."""
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


def test_unet_matches_diffusers_sd2_full_config():
    """Full SD2-inpainting UNet (866M params) at an 8x8 latent."""
    _check_unet(PRESETS["sd2-inpainting"].unet, latent=8, batch=2)


def test_vae_matches_diffusers_sd2_full_config():
    """Full SD2 VAE at 64x64 px: encode and decode."""
    _check_vae(PRESETS["sd2-inpainting"].vae, size=64)


def test_full_unet_structure_counts():
    """Parameter counts of the full config equal the reference numbers (sd2-inpainting.md §8)."""
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
