"""Stable Diffusion 2 inpainting in plain PyTorch.

    load_model(weights, device="cpu", dtype=torch.float32, config=None) -> SD2Inpaint   (dtype="auto": bf16/fp16 on CUDA)
    m.unet(x[B,9,h,w], t[B] int64, context[B,77,C_ctx]) -> eps[B,4,h,w]
    m.vae.encode(img[B,3,H,W] in [-1,1]) -> (mean, logvar)   (unscaled; logvar clamped to [-30, 20])
    m.vae.decode(z[B,4,h,w]) -> img[B,3,H,W]                  (unscaled z)
    m.tokenize(list[str]) -> int64[B,77];  m.text_encoder(tokens) -> [B,77,C_ctx]
    m.config, m.scale_factor, m.device, m.dtype, m.sha256, m.source
    Inpainter(m, ..., speed=Speed(...) or dict)   speed switches, model/speed.py; FLOPs counted in model/flops.py

The model facts the code relies on are in docs/model.md. Importing this package loads nothing: each public
name imports its module (and torch) on first use, so the option parser can use model/choices.py cheaply.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {  # public name -> the module that defines it
    "load_model": "sd2",
    "Inpainter": "inpainter",
    "Speed": "speed",
    "auto_dtype": "speed",
    "SD2Inpaint": "sd2",
    "SD2Config": "config",
    "UNetConfig": "config",
    "VAEConfig": "config",
    "TextConfig": "config",
    "PRESETS": "config",
    "get_config": "config",
    "WeightsError": "checkpoint",
    "ldm_to_diffusers_unet": "convert",
    "diffusers_to_ldm_unet": "convert",
    "ldm_to_diffusers_vae": "convert",
    "diffusers_to_ldm_vae": "convert",
    "openclip_to_hf_text": "convert",
    "hf_to_openclip_text": "convert",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    """Import the defining module on first use (PEP 562) and keep the value, so later lookups are plain."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors only; never run
    from .checkpoint import WeightsError
    from .config import PRESETS, SD2Config, TextConfig, UNetConfig, VAEConfig, get_config
    from .convert import (diffusers_to_ldm_unet, diffusers_to_ldm_vae, hf_to_openclip_text, ldm_to_diffusers_unet,
                          ldm_to_diffusers_vae, openclip_to_hf_text)
    from .inpainter import Inpainter
    from .sd2 import SD2Inpaint, load_model
    from .speed import Speed, auto_dtype
