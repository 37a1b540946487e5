"""The Inpainter's argument checks: clear ValueErrors before any work, and the inputs as CPU tensors."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return int(steps)


def check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)) \
            or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    return float(strength)


def as_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(a).__name__}")


def check_images_masks(images, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """-> img uint8 [B, 3, H, W] (a permuted view), mask bool [B, 1, H, W] (True = repaint), both CPU."""
    img = as_tensor(images, "images")
    if img.dtype != torch.uint8 or img.ndim != 4 or img.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {img.dtype} {tuple(img.shape)}")
    B, H, W, _ = img.shape
    if B == 0:
        raise ValueError("empty batch")
    if H % 64 or W % 64 or H == 0 or W == 0:
        raise ValueError(f"image height and width must be positive multiples of 64, got {H}x{W}")
    mask = as_tensor(masks, "masks")
    if tuple(mask.shape) != (B, H, W):
        raise ValueError(f"masks must be [B, H, W] = {(B, H, W)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        rep = mask
    elif mask.dtype == torch.uint8:
        rep = mask >= 128  # x/255 binarised at 0.5 (docs/model.md §6.1): 127 -> 0.498 keeps, 128 -> 0.502 repaints
    else:
        raise ValueError(f"masks must be uint8 or bool, got {mask.dtype}")
    return img.permute(0, 3, 1, 2), rep[:, None]


def check_strings(xs, B: int, what: str) -> list[str]:
    if isinstance(xs, str) or not isinstance(xs, Sequence) or not all(isinstance(x, str) for x in xs):
        raise ValueError(f"{what} must be a list of {B} strings")
    if len(xs) != B:
        raise ValueError(f"{what} has {len(xs)} entries for a batch of {B}")
    return list(xs)


def generators(seeds, B: int) -> list[torch.Generator]:
    if seeds is None:
        raise ValueError("seeds are required: one int per row")
    seeds = list(seeds.tolist() if isinstance(seeds, (np.ndarray, torch.Tensor)) else seeds)
    if len(seeds) != B:
        raise ValueError(f"seeds has {len(seeds)} entries for a batch of {B}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**64:
            raise ValueError(f"seeds must be ints in [0, 2**64), got {s!r}")
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def check_guidance(guidance, B: int) -> torch.Tensor:
    if isinstance(guidance, (int, float, np.floating, np.integer)) and not isinstance(guidance, bool):
        return torch.full((B,), float(guidance))
    g = torch.as_tensor(np.asarray(guidance, dtype=np.float64), dtype=torch.float32)
    if g.shape != (B,):
        raise ValueError(f"guidance must be a float or {B} floats, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise ValueError("guidance must be finite")
    return g


__all__ = ["check_steps", "check_strength", "check_images_masks", "check_strings", "generators", "check_guidance"]
