"""Stable Diffusion 2 inpainting in plain PyTorch.

    load_model(weights, device="cpu", dtype=torch.float32, config=None) -> SD2Inpaint   (dtype="auto": bf16/fp16 on CUDA)
    m.unet(x[B,9,h,w], t[B] int64, context[B,77,C_ctx]) -> eps[B,4,h,w]
    m.vae.encode(img[B,3,H,W] in [-1,1]) -> (mean, logvar)   (unscaled; logvar clamped to [-30, 20])
    m.vae.decode(z[B,4,h,w]) -> img[B,3,H,W]                  (unscaled z)
    m.tokenize(list[str]) -> int64[B,77];  m.text_encoder(tokens) -> [B,77,C_ctx]
    m.config, m.scale_factor, m.device, m.dtype, m.sha256, m.source
    Inpainter(m, ..., speed=Speed(...) or dict)   speed switches, model/speed.py; FLOPs counted in model/flops.py
"""
from .config import PRESETS, SD2Config, TextConfig, UNetConfig, VAEConfig, get_config
from .sd2 import SD2Inpaint, load_model
from .inpainter import Inpainter
from .speed import Speed, auto_dtype
from .weights import (
    WeightsError,
    diffusers_to_ldm_unet,
    diffusers_to_ldm_vae,
    hf_to_openclip_text,
    ldm_to_diffusers_unet,
    ldm_to_diffusers_vae,
    openclip_to_hf_text,
)

__all__ = [
    "load_model",
    "Inpainter",
    "Speed",
    "auto_dtype",
    "SD2Inpaint",
    "SD2Config",
    "UNetConfig",
    "VAEConfig",
    "TextConfig",
    "PRESETS",
    "get_config",
    "WeightsError",
    "ldm_to_diffusers_unet",
    "diffusers_to_ldm_unet",
    "ldm_to_diffusers_vae",
    "diffusers_to_ldm_vae",
    "openclip_to_hf_text",
    "hf_to_openclip_text",
]
