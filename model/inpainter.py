"""Inpainter: images + masks + prompts + seeds -> inpainted images, for one batch of rows.

Conditioning follows diffusers' StableDiffusionInpaintPipeline (sd2-inpainting.md §6.1, §6.2):
    image   uint8 -> [-1, 1];  mask binarised at 0.5 (uint8 >= 128, or bool True = repaint)
    masked  = image * (mask < 0.5)          repainted pixels become 0 (mid grey, §9.12)
    c_mask  = nearest-resize(mask) to H/8 x W/8
    c_lat   = VAE posterior SAMPLE of masked * 0.18215   (§9.13)
    start   = noise * init scale, or (strength < 1) the VAE sample of the full image noised to the
              first sigma of the truncated grid (diffusers get_timesteps / add_noise)
    sample with one of samplers.py over InpaintDenoiser (CFG, one UNet call per step)
    out     = round(clamp((decode(z / 0.18215) + 1) / 2, 0, 1) * 255)

Randomness, per row, from torch.Generator("cpu").manual_seed(seed), drawn on the CPU in fp32 and
then moved to the device, always in this order:
    1. posterior noise of the masked image      [1, 4, h, w]
    2. posterior noise of the full image        [1, 4, h, w]   (only when strength < 1)
    3. initial latent noise                     [1, 4, h, w]
    4. per-step noise, one [1, 4, h, w] per step (only euler_a, and ddim with eta > 0)
so a row's output does not depend on the batch it is in, its position, the worker or the device
(up to the kernels' own batch-size-dependent rounding; see tests/test_inpainter.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import samplers
from .denoiser import InpaintDenoiser
from .schedule import DEFAULT_SPACING, SPACINGS, Schedule, truncate_for_strength

SAMPLERS = samplers.SAMPLERS


class PromptCache:
    """LRU cache prompt -> text context [77, C] (device, model dtype). The empty prompt, the
    default negative, is pinned: computed once, never evicted."""

    def __init__(self, model, capacity: int = 1024):
        self.model = model
        self.capacity = capacity
        self._lru: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pinned: dict[str, torch.Tensor] = {}
        self.encoded = 0  # prompts run through the text encoder (for tests and stats)

    def __len__(self) -> int:
        return len(self._lru) + len(self._pinned)

    def _lookup(self, p: str) -> torch.Tensor | None:
        if p in self._pinned:
            return self._pinned[p]
        if p in self._lru:
            self._lru.move_to_end(p)
            return self._lru[p]
        return None

    def get(self, prompts: Sequence[str]) -> torch.Tensor:
        """[len(prompts), 77, C]; prompts not cached are encoded one per call.

        One per call, not together: kernels round differently for different batch shapes, and a prompt's
        embedding must not depend on which other prompts happened to be missing from the cache with it.
        The cost is nil next to sampling, since each prompt is encoded once per model.
        """
        missing = list(dict.fromkeys(p for p in prompts if self._lookup(p) is None))
        for p in missing:
            tokens = self.model.tokenize([p]).to(self.model.device)
            c = self.model.text_encoder(tokens).to(self.model.dtype)[0]
            self.encoded += 1
            if p == "":
                self._pinned[p] = c
            else:
                self._lru[p] = c
        out = torch.stack([self._lookup(p) for p in prompts])
        while len(self._lru) > self.capacity:
            self._lru.popitem(last=False)
        return out


class Inpainter:
    """Batch inpainting with SD2-inpainting; see the module docstring for the exact recipe.

    sampler: "ddim" | "euler" | "euler_a" | "dpmpp_2m"; karras: Karras sigmas (k-samplers);
    eta: DDIM's eta (0 deterministic); strength in (0, 1]; timestep_spacing: None for each
    sampler's diffusers default (DEFAULT_SPACING), or "leading" | "trailing" | "linspace".
    `self.unet` is the callable the denoiser uses: speed transforms (channels_last, compile)
    replace it via `optimize` without touching the model code.
    """

    def __init__(self, model, sampler: str = "ddim", steps: int = 50, guidance: float = 7.5, eta: float = 0.0,
                 karras: bool = False, strength: float = 1.0, *, timestep_spacing: str | None = None,
                 prompt_cache_size: int = 1024):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        if karras and sampler == "ddim":
            raise ValueError("karras sigmas are available for euler, euler_a and dpmpp_2m, not ddim")
        if eta < 0 or (eta > 0 and sampler != "ddim"):
            raise ValueError(f"eta must be >= 0 and is only used by ddim (got {eta} for {sampler})")
        if timestep_spacing is not None and timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS} or None, got {timestep_spacing!r}")
        self.model = model
        self.sampler = sampler
        self.steps = _check_steps(steps)
        self.guidance = guidance
        self.eta = float(eta)
        self.karras = bool(karras)
        self.strength = _check_strength(strength)
        self.spacing = timestep_spacing or DEFAULT_SPACING[sampler]
        self.schedule = Schedule()
        self.prompts = PromptCache(model, prompt_cache_size)
        self.unet: Callable = model.unet

    # ---- speed transforms, applied outside the model -------------------------------------------

    def optimize(self, channels_last: bool = False, compile: bool = False, **compile_kwargs) -> "Inpainter":
        """Switchable speed-ups: channels_last converts the UNet's conv weights' memory format (in
        place, numerically a no-op); compile wraps the UNet with torch.compile. Returns self."""
        if channels_last:
            self.model.unet.to(memory_format=torch.channels_last)
        self.unet = torch.compile(self.model.unet, **compile_kwargs) if compile else self.model.unet
        return self

    # ---- main entry ------------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(self, images, masks, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, *, steps: int | None = None,
                 guidance: float | Sequence[float] | None = None, strength: float | None = None) -> np.ndarray:
        """images uint8 [B,H,W,3] (numpy or torch), H and W multiples of 64; masks [B,H,W] uint8
        (>= 128 repaints) or bool; prompts: B strings; negative_prompts: B strings or None (empty);
        seeds: B ints (required); guidance: float or B floats. Returns uint8 [B,H,W,3] numpy."""
        m = self.model
        steps = _check_steps(self.steps if steps is None else steps)
        strength = _check_strength(self.strength if strength is None else strength)
        img, mask = _check_images_masks(images, masks)
        B, _, H, W = img.shape
        prompts = _check_strings(prompts, B, "prompts")
        negative = [""] * B if negative_prompts is None else _check_strings(negative_prompts, B, "negative_prompts")
        gens = _generators(seeds, B)
        g = _check_guidance(self.guidance if guidance is None else guidance, B)
        dev, dt = m.device, m.dtype
        h, w = H // 8, W // 8

        def draw() -> torch.Tensor:  # one [B, 4, h, w] fp32 draw, row i from generator i
            return torch.cat([torch.randn(1, 4, h, w, generator=gi, dtype=torch.float32) for gi in gens]).to(dev)

        # Conditioning (§6): [-1, 1] image, binary mask, masked image with repaint pixels at 0.
        img = img.to(dev) / 127.5 - 1.0  # [B, 3, H, W] fp32
        mask = mask.to(dev, torch.float32)  # [B, 1, H, W] in {0, 1}
        masked = img * (mask < 0.5)
        scale = m.scale_factor
        c_lat = _vae_sample(m, masked, draw()) * scale  # 1. [B, 4, h, w] fp32
        c_mask = F.interpolate(mask, size=(h, w))  # default "nearest", as LDM and diffusers (§6.1)
        cond = torch.cat([c_mask, c_lat], dim=1)

        sigmas = self.schedule.sigmas_for(self.sampler, steps, self.spacing, self.karras)
        if strength < 1.0:
            image_lat = _vae_sample(m, img, draw()) * scale  # 2.
            sigmas = truncate_for_strength(sigmas, strength)
            x = image_lat + draw() * sigmas[0]  # 3. add_noise in sigma form: x0 + sigma * eps
        else:
            x = draw() * self.schedule.init_noise_scale(self.sampler, sigmas, self.spacing)  # 3.

        ctx = self.prompts.get(prompts)
        unctx = self.prompts.get(negative)
        denoise = InpaintDenoiser(self.unet, self.schedule, cond, unctx, ctx, g, dt, dev)
        x = samplers.sample(self.sampler, denoise, x, sigmas, noise=lambda like: draw(), eta=self.eta)  # 4.
        z = samplers.to_vp(x, sigmas[-1])  # the latent diffusers decodes (differs only for DDIM)

        out = m.vae.decode((z / scale).to(dt)).float()  # [B, 3, H, W] about [-1, 1]
        out = ((out + 1) / 2).clamp(0, 1) * 255
        return out.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _vae_sample(m, img: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Posterior sample mean + std * noise (§3.2, §9.13), fp32 [B, 4, h, w]."""
    mean, logvar = m.vae.encode(img.to(m.dtype))
    return mean.float() + torch.exp(0.5 * logvar.float()) * noise


# ---- argument checks (clear ValueErrors before any work) -------------------------------------------


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return int(steps)


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)) \
            or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    return float(strength)


def _as_tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    raise ValueError(f"{what} must be a numpy array or torch tensor, got {type(a).__name__}")


def _check_images_masks(images, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """-> img uint8 [B, 3, H, W], mask bool [B, 1, H, W] (True = repaint), both CPU."""
    img = _as_tensor(images, "images")
    if img.dtype != torch.uint8 or img.ndim != 4 or img.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [B, H, W, 3], got {img.dtype} {tuple(img.shape)}")
    B, H, W, _ = img.shape
    if B == 0:
        raise ValueError("empty batch")
    if H % 64 or W % 64 or H == 0 or W == 0:
        raise ValueError(f"image height and width must be positive multiples of 64, got {H}x{W}")
    mask = _as_tensor(masks, "masks")
    if tuple(mask.shape) != (B, H, W):
        raise ValueError(f"masks must be [B, H, W] = {(B, H, W)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        rep = mask
    elif mask.dtype == torch.uint8:
        rep = mask >= 128  # /255 then binarise at 0.5 (§6.1): 127 -> 0.498 keeps, 128 -> 0.502 repaints
    else:
        raise ValueError(f"masks must be uint8 or bool, got {mask.dtype}")
    return img.permute(0, 3, 1, 2).float(), rep[:, None]


def _check_strings(xs, B: int, what: str) -> list[str]:
    if isinstance(xs, str) or not isinstance(xs, Sequence) or not all(isinstance(x, str) for x in xs):
        raise ValueError(f"{what} must be a list of {B} strings")
    if len(xs) != B:
        raise ValueError(f"{what} has {len(xs)} entries for a batch of {B}")
    return list(xs)


def _generators(seeds, B: int) -> list[torch.Generator]:
    if seeds is None:
        raise ValueError("seeds are required: one int per row")
    seeds = list(seeds.tolist() if isinstance(seeds, (np.ndarray, torch.Tensor)) else seeds)
    if len(seeds) != B:
        raise ValueError(f"seeds has {len(seeds)} entries for a batch of {B}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s < 2**64:
            raise ValueError(f"seeds must be ints in [0, 2**64), got {s!r}")
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def _check_guidance(guidance, B: int) -> torch.Tensor:
    if isinstance(guidance, (int, float, np.floating, np.integer)) and not isinstance(guidance, bool):
        return torch.full((B,), float(guidance))
    g = torch.as_tensor(np.asarray(guidance, dtype=np.float64), dtype=torch.float32)
    if g.shape != (B,):
        raise ValueError(f"guidance must be a float or {B} floats, got shape {tuple(g.shape)}")
    if not torch.isfinite(g).all():
        raise ValueError("guidance must be finite")
    return g
