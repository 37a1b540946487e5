"""Inpainter: images + masks + prompts + seeds -> inpainted images, for one batch of rows.

Conditioning follows diffusers' StableDiffusionInpaintPipeline (docs/model.md §6):
    image   uint8 -> [-1, 1];  mask binarised at 0.5 (uint8 >= 128, or bool True = repaint)
    masked  = image * (mask < 0.5)          repainted pixels become 0 (mid grey, docs/model.md §6.1)
    c_mask  = nearest-resize(mask) to H/8 x W/8
    c_lat   = VAE posterior SAMPLE of masked * 0.18215   (docs/model.md §6.2; one encoder call with the full
              image when strength < 1, batch_vae)
    start   = noise * init scale, or (strength < 1) the VAE sample of the full image noised to the
              first sigma of the truncated grid (diffusers get_timesteps / add_noise)
    sample with one of samplers.py over InpaintDenoiser (CFG, one UNet call per step; speed switches
              in model/speed.py: compile, CUDA graph, channels_last, SDPA backend, ...)
    out     = round(clamp((decode(z / 0.18215) + 1) / 2, 0, 1) * 255)

Randomness, per row, from torch.Generator("cpu").manual_seed(seed), drawn on the CPU in fp32 and
then moved to the device (through pinned memory on CUDA, without blocking), always in this order:
    1. posterior noise of the masked image      [1, 4, h, w]
    2. posterior noise of the full image        [1, 4, h, w]   (only when strength < 1)
    3. initial latent noise                     [1, 4, h, w]
    4. per-step noise, one [1, 4, h, w] per step (only euler_a, and ddim with eta > 0)
so a row's output does not depend on the batch it is in, its position, the worker or the device
(up to the kernels' own batch-size-dependent rounding; see tests/test_inpainter.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import samplers
from .choices import SAMPLERS
from .denoiser import GuidedStep, InpaintDenoiser
from .schedule import DEFAULT_SPACING, SPACINGS, Schedule, truncate_for_strength
from .speed import Speed, compile_module, forbid_host_sync, set_memory_format, to_device


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
    speed: a `Speed` or a dict of its switches (model/speed.py); unset switches come from
    $RAYINPAINT_SPEED, then the device's default (everything fast on CUDA, the portable ones on CPU).
    Speed switches set the model's conv memory format in place: the last Inpainter built on a model decides it.
    `self.unet` is the callable the denoiser uses (the compiled UNet when `compile` is on).
    """

    def __init__(self, model, sampler: str = "ddim", steps: int = 50, guidance: float = 7.5, eta: float = 0.0,
                 karras: bool = False, strength: float = 1.0, *, timestep_spacing: str | None = None,
                 prompt_cache_size: int = 1024, speed: Speed | Mapping | None = None):
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
        self.forbid_host_sync = False  # True: any host<->GPU synchronisation inside the step loop raises (CUDA)
        self._steps: OrderedDict[tuple, GuidedStep] = OrderedDict()  # per batch shape, static buffers + graph
        self.set_speed(speed)

    # ---- speed switches (model/speed.py) ----------------------------------------------------------

    def set_speed(self, speed: Speed | Mapping | None = None) -> "Inpainter":
        """Apply speed switches: given values > $RAYINPAINT_SPEED > the device's defaults. Returns self."""
        m = self.model
        self.speed = s = Speed.coerce(speed).with_env().resolve(m.device)
        set_memory_format(m.unet, s.channels_last)
        set_memory_format(m.vae, s.channels_last)
        if m.device.type == "cuda":
            torch.backends.cudnn.benchmark = s.cudnn_benchmark
        self.unet: Callable = compile_module(m.unet, s) if s.compile else m.unet
        self._steps.clear()  # buffers, graphs and compiled code of the old settings
        return self

    def optimize(self, channels_last: bool = False, compile: bool = False, **switches) -> "Inpainter":
        """The current switches with these replaced (see set_speed). Returns self."""
        return self.set_speed(dataclasses.replace(self.speed, channels_last=channels_last, compile=compile,
                                                  **switches))

    def warmup(self, batch: int, height: int, width: int | None = None) -> dict:
        """One call on a synthetic batch of this shape, so that compilation, autotuning and CUDA graph capture
        happen now and not in the first real batch. Returns seconds: total, and the UNet step's first and
        second call, graph capture, and compile_s = first - second when compiling."""
        width = width or height
        imgs = np.zeros((batch, height, width, 3), np.uint8)
        masks = np.full((batch, height, width), 255, np.uint8)
        steps = max(2, math.ceil(1.0 / self.strength) + 1)  # at least one step survives the strength cut
        t0 = time.perf_counter()
        self(imgs, masks, [""] * batch, seeds=list(range(batch)), steps=steps)
        out = {"seconds": time.perf_counter() - t0, **self._steps[(batch, height // 8, width // 8)].timings}
        if self.speed.compile and "first_call_s" in out:
            out["compile_s"] = max(0.0, out["first_call_s"] - out["second_call_s"])
        return out

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return to_device(t, self.model.device, self.speed.pinned)

    def _guided_step(self, batch: int, h: int, w: int) -> GuidedStep:
        """The step object for this shape (kept for the next batch; at most two shapes, e.g. after an OOM split)."""
        key = (batch, h, w)
        step = self._steps.pop(key, None)
        if step is None:
            m, s = self.model, self.speed
            step = GuidedStep(self.unet, batch, (h, w), (m.config.text.context_length, m.config.unet.context_dim),
                              m.dtype, m.device, fused_cfg=s.fused_cfg, channels_last=s.channels_last,
                              sdpa=s.sdpa, graph=s.cuda_graph, warm=s.compile or s.cuda_graph)
        self._steps[key] = step
        while len(self._steps) > 2:
            self._steps.popitem(last=False)
        return step

    def _encode(self, images: list[torch.Tensor], noises: list[torch.Tensor]) -> list[torch.Tensor]:
        """VAE posterior samples mean + std * noise (docs/model.md §3.3), fp32 [B, 4, h, w] per image batch: one
        encoder call for all of them (batch_vae), else one call per row."""
        vae, dt = self.model.vae, self.model.dtype
        x = torch.cat(images).to(dt)
        if self.speed.batch_vae:
            mean, logvar = vae.encode(x)
        else:
            parts = [vae.encode(row) for row in x.split(1)]
            mean, logvar = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        z = mean.float() + torch.exp(0.5 * logvar.float()) * torch.cat(noises)
        return list(z.split(images[0].shape[0]))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        if self.speed.batch_vae:
            return vae.decode(z)
        return torch.cat([vae.decode(row) for row in z.split(1)])

    def _sample(self, x: torch.Tensor, sigmas: torch.Tensor, cond: torch.Tensor, contexts: tuple, guidance,
                draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The sampler loop over this shape's GuidedStep. A failure (e.g. CUDA out of memory) drops the step, and
        with it its buffers and graph memory, so that a retry at a smaller batch has that memory back."""
        B, _, h, w = x.shape
        step = self._guided_step(B, h, w)
        try:
            step.load(cond, *contexts, guidance)
            denoise = InpaintDenoiser(step, self.schedule, sigmas, pinned=self.speed.pinned)
            with forbid_host_sync(self.model.device, self.forbid_host_sync):
                return samplers.sample(self.sampler, denoise, x, sigmas, noise=lambda like: draw(), eta=self.eta)
        except BaseException:
            self._steps.pop((B, h, w), None)
            raise

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
        dt = m.dtype
        h, w = H // 8, W // 8

        def draw() -> torch.Tensor:  # one [B, 4, h, w] fp32 draw, row i from generator i
            return self._to_device(torch.cat([torch.randn(1, 4, h, w, generator=gi, dtype=torch.float32)
                                              for gi in gens]))

        # Conditioning (docs/model.md §6.1): [-1, 1] image, binary mask, masked image with repaint pixels at 0.
        img = self._to_device(img).float() / 127.5 - 1.0  # [B, 3, H, W] fp32 (uint8 crosses to the device)
        mask = self._to_device(mask).float()  # [B, 1, H, W] in {0, 1}
        masked = img * (mask < 0.5)
        scale = m.scale_factor
        noise = [draw()] + ([draw()] if strength < 1.0 else [])  # 1. masked image, 2. full image (strength < 1)
        latents = self._encode([masked, img][:len(noise)], noise)
        c_lat = latents[0] * scale  # [B, 4, h, w] fp32
        c_mask = F.interpolate(mask, size=(h, w))  # default "nearest", as LDM and diffusers (docs/model.md §6.1)
        cond = torch.cat([c_mask, c_lat], dim=1)

        sigmas = self.schedule.sigmas_for(self.sampler, steps, self.spacing, self.karras)
        if strength < 1.0:
            sigmas = truncate_for_strength(sigmas, strength)
            x = latents[1] * scale + draw() * sigmas[0]  # 3. add_noise in sigma form: x0 + sigma * eps
        else:
            x = draw() * self.schedule.init_noise_scale(self.sampler, sigmas, self.spacing)  # 3.

        contexts = (self.prompts.get(negative), self.prompts.get(prompts))
        x = self._sample(x, sigmas, cond, contexts, self._to_device(g), draw)  # 4.
        z = samplers.to_vp(x, sigmas[-1])  # the latent diffusers decodes (differs only for DDIM)

        out = self._decode((z / scale).to(dt)).float()  # [B, 3, H, W] about [-1, 1]
        out = ((out + 1) / 2).clamp(0, 1) * 255
        return out.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
    """-> img uint8 [B, 3, H, W] (a permuted view), mask bool [B, 1, H, W] (True = repaint), both CPU."""
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
        rep = mask >= 128  # x/255 binarised at 0.5 (docs/model.md §6.1): 127 -> 0.498 keeps, 128 -> 0.502 repaints
    else:
        raise ValueError(f"masks must be uint8 or bool, got {mask.dtype}")
    return img.permute(0, 3, 1, 2), rep[:, None]


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
