"""FLOPs of inpainting, counted (not estimated) with torch.utils.flop_counter.FlopCounterMode.

The counter adds up the matmul, convolution and attention FLOPs of the aten calls a forward actually makes
(2 per multiply-add; norms and pointwise ops are not counted, as is usual for model FLOPs). Counting runs the
real modules on the meta device: the same calls with the same shapes, no memory and no arithmetic, so the full
SD2 model is counted in about a second on any machine (tests/bench/test_throughput.py checks meta against real tensors,
and single layers against hand formulas).

Per batch of B images with strength 1: n UNet calls on the 2B-row CFG batch + one VAE encode of B images (the
masked image; strength < 1 adds B more) + one VAE decode of B latents. The text encoder is left out: prompts
come from the prompt cache, so in steady state it does not run.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

from .config import SD2Config, get_config

COUNTER = "torch.utils.flop_counter.FlopCounterMode on the meta device"


def _missing_formulas() -> dict:
    """Attention kernels the installed torch's counter has no formula for, given the one it uses for the CUDA
    kernels (torch 2.14 has none for the CPU flash kernel a real CPU forward calls: its attention went uncounted,
    while the meta device, which decomposes attention into matmuls, counted it)."""
    aten = torch.ops.aten
    cpu_flash = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_flash is None or cpu_flash in flop_registry:
        return {}
    return {cpu_flash: _sdpa_flops}


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The counter's own attention formula (QK^T and AV), on the shapes the counter passes in."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_flops(fn: Callable, *args, **kwargs) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per module path such as "UNet.input_blocks.0.0") of one call fn(*args, **kwargs)."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_missing_formulas()) as counter:
        fn(*args, **kwargs)
    by_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), by_module


def _meta_model(config: SD2Config):
    from .sd2 import build_meta

    model = build_meta(config)
    model.reset_buffers("meta")
    return model


def unet_flops(config: SD2Config | str, rows: int, latent: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """One UNet call on `rows` rows (2B for a CFG step of B images) at latent h x w."""
    cfg = get_config(config)
    unet = _meta_model(cfg).unet
    h, w = latent
    with torch.device("meta"):
        x = torch.empty(rows, cfg.unet.in_channels, h, w)
        t = torch.zeros(rows, dtype=torch.int64)
        ctx = torch.empty(rows, cfg.text.context_length, cfg.unet.context_dim)
    return count_flops(unet, x, t, ctx)


def vae_flops(config: SD2Config | str, images: int, size: tuple[int, int]) -> tuple[int, int]:
    """(encode FLOPs, decode FLOPs) for `images` images of H x W pixels."""
    cfg = get_config(config)
    vae = _meta_model(cfg).vae
    H, W = size
    with torch.device("meta"):
        img = torch.empty(images, cfg.vae.in_channels, H, W)
        z = torch.empty(images, cfg.vae.z_channels, H // 8, W // 8)
    return count_flops(vae.encode, img)[0], count_flops(vae.decode, z)[0]


def unet_calls(sampler: str, steps: int) -> int:
    """UNet calls (each on the CFG batch) of one batch: one per step of the sampler's sigma grid."""
    from .schedule import DEFAULT_SPACING, Schedule

    return len(Schedule().sigmas_for(sampler, steps, DEFAULT_SPACING[sampler])) - 1


def inpaint_flops(config: SD2Config | str, batch: int, resolution: int, unet_calls: int,
                  strength: float = 1.0) -> dict:
    """FLOPs of one Inpainter call on `batch` images of resolution x resolution with `unet_calls` steps."""
    r = resolution
    unet_call, _ = unet_flops(config, 2 * batch, (r // 8, r // 8))
    encode, decode = vae_flops(config, batch, (r, r))
    encodes = 2 if strength < 1.0 else 1
    per_batch = unet_calls * unet_call + encodes * encode + decode
    return {"per_image": per_batch / batch, "per_batch": per_batch, "unet_call": unet_call,
            "unet_calls": unet_calls, "vae_encode": encode, "vae_encodes": encodes, "vae_decode": decode,
            "batch": batch, "counter": COUNTER}


__all__ = ["count_flops", "unet_flops", "vae_flops", "unet_calls", "inpaint_flops", "COUNTER"]
