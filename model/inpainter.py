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
(up to the kernels' own batch-size-dependent rounding; see tests/model/test_inpainter.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import weakref
from collections import OrderedDict
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import samplers
from .arguments import check_guidance, check_images_masks, check_steps, check_strength, check_strings, generators
from .choices import SAMPLERS
from .denoiser import GuidedStep, InpaintDenoiser
from .selfcheck import CheckReport, check_step, synthetic_batches
from .schedule import DEFAULT_SPACING, SPACINGS, Schedule, truncate_for_strength
from .speed import (Speed, apply_determinism, compile_module, forbid_host_sync, set_memory_format, to_device,
                    vae_channels_last, weights_channels_last)

log = logging.getLogger("rayinpaint.model")

# model -> the Inpainters built on it (weakly), to see which hold captured graphs over its weights.
_GRAPH_HOLDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class SpeedCheckError(RuntimeError):
    """A fast path (compile, CUDA graph) failed or failed its self-check, and strict_speed forbids falling back."""


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
    Speed switches set the model's conv memory format in place: the last Inpainter built on a model decides it,
    unless another live one holds a captured CUDA graph over the weights (then the layout stays, see _layout).
    `self.unet` is the callable the denoiser uses (the compiled UNet when `compile` is on).
    strict_speed: a fast path that fails, or fails its self-check (selfcheck.py), raises SpeedCheckError instead
    of being turned off. self_check: False skips the check (the step is still prepared on synthetic inputs).
    """

    def __init__(self, model, sampler: str = "ddim", steps: int = 50, guidance: float = 7.5, eta: float = 0.0,
                 karras: bool = False, strength: float = 1.0, *, timestep_spacing: str | None = None,
                 prompt_cache_size: int = 1024, speed: Speed | Mapping | None = None, strict_speed: bool = False,
                 self_check: bool = True):
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
        self.steps = check_steps(steps)
        self.guidance = guidance
        self.eta = float(eta)
        self.karras = bool(karras)
        self.strength = check_strength(strength)
        self.spacing = timestep_spacing or DEFAULT_SPACING[sampler]
        self.schedule = Schedule()
        self.prompts = PromptCache(model, prompt_cache_size)
        self.forbid_host_sync = False  # True: any host<->GPU synchronisation inside the step loop raises (CUDA)
        self._steps: OrderedDict[tuple, GuidedStep] = OrderedDict()  # per batch shape, static buffers + graph
        self.strict_speed = strict_speed  # a failed fast path raises SpeedCheckError instead of being turned off
        self.self_check = self_check  # check each new shape's fast step against the plain one (selfcheck.py)
        self.checks: list[dict] = []  # the self-check's reports, one per check
        self._passed: set[tuple] = set()  # (shape, switches) whose fast step passed: not checked again
        self.set_speed(speed)

    # ---- speed switches (model/speed.py) ----------------------------------------------------------

    def set_speed(self, speed: Speed | Mapping | None = None) -> "Inpainter":
        """Apply speed switches: given values > $RAYINPAINT_SPEED > the device's defaults. Returns self."""
        m = self.model
        s = Speed.coerce(speed).with_env().resolve(m.device)
        self.speed = s = dataclasses.replace(s, channels_last=self._layout(s.channels_last))
        apply_determinism(s, m.device)
        self.unet: Callable = compile_module(m.unet, s) if s.compile else m.unet
        self._steps.clear()  # buffers, graphs and compiled code of the old settings
        return self

    def _layout(self, channels_last: bool) -> bool:
        """Lay the UNet's conv weights out as asked, unless another live Inpainter of this model holds a captured
        CUDA graph: that graph reads the weights at fixed addresses, and re-laying them out would move them
        (their data_ptr changes) under it. Then the current layout stays, and is what this Inpainter uses."""
        m = self.model
        holders = _GRAPH_HOLDERS.setdefault(m, weakref.WeakSet())
        holders.add(self)
        current = weights_channels_last(m.unet)
        if current is not None and current != channels_last and any(
                other is not self and other._holds_graph() for other in holders):
            log.warning("keeping the model's %s weight layout: another Inpainter's captured CUDA graph reads it",
                        "channels_last" if current else "contiguous")
            channels_last = current
        set_memory_format(m.unet, channels_last)
        set_memory_format(m.vae, vae_channels_last(channels_last, m.device))
        return channels_last

    def _holds_graph(self) -> bool:
        return any(step._cuda_graph is not None for step in self._steps.values())

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
        self.generate(imgs, masks, [""] * batch, seeds=list(range(batch)), steps=steps)
        out = {"seconds": time.perf_counter() - t0, **self._steps[(batch, height // 8, width // 8)].timings}
        if self.speed.compile and "first_call_s" in out:
            out["compile_s"] = max(0.0, out["first_call_s"] - out["second_call_s"])
        return out

    def set_sampler(self, sampler: str, steps: int) -> "Inpainter":
        """Another sampler and step count on the same prepared steps (no recompile, no new self-check)."""
        if sampler not in SAMPLERS or (self.karras and sampler == "ddim") or (self.eta > 0 and sampler != "ddim"):
            raise ValueError(f"sampler {sampler!r} cannot replace {self.sampler!r} here")
        self.sampler, self.steps, self.spacing = sampler, check_steps(steps), DEFAULT_SPACING[sampler]
        return self

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return to_device(t, self.model.device, self.speed.pinned)

    def _guided_step(self, batch: int, h: int, w: int) -> GuidedStep:
        """The step object for this shape (kept for the next batch; at most two shapes, e.g. after an OOM split)."""
        key = (batch, h, w)
        step = self._steps.pop(key, None)
        if step is None:
            step = self._checked_step(batch, h, w)
        self._steps[key] = step
        while len(self._steps) > 2:
            self._steps.popitem(last=False)
        return step

    def _make_step(self, unet, dtype: torch.dtype, batch: int, h: int, w: int, fast: bool) -> GuidedStep:
        m, s = self.model, self.speed
        return GuidedStep(unet, batch, (h, w), (m.config.text.context_length, m.config.unet.context_dim), dtype,
                          m.device, fused_cfg=s.fused_cfg, channels_last=s.channels_last, sdpa=s.sdpa,
                          graph=fast and s.cuda_graph, warm=fast and (s.compile or s.cuda_graph))

    def _checked_step(self, batch: int, h: int, w: int) -> GuidedStep:
        """A new shape's step, compiled and captured now (on synthetic inputs) and self-checked (selfcheck.py).
        A failure of either, at warm-up or at any later shape, turns the offending switch off and tries again;
        with strict_speed it raises SpeedCheckError instead. Out of memory is the caller's to handle."""
        while True:
            try:
                step = self._make_step(self.unet, self.model.dtype, batch, h, w, fast=True)
                report = self._self_check(step)
            except Exception as e:  # noqa: BLE001 - any compile or capture failure; the plain path is the fallback
                if isinstance(e, torch.cuda.OutOfMemoryError) or not self._fall_back(None, _one_line(e)):
                    raise
                continue
            if report is None or report.ok:
                return step
            if report.turn_off is None:  # the plain step itself: no switch can fix it (rows are guarded)
                log.warning("speed self-check at batch %d, latent %dx%d: %s %s", batch, h, w, report.reason,
                            report.numbers)
                if self.strict_speed:
                    raise SpeedCheckError(report.reason)
                return step
            self._fall_back(report.turn_off, report.reason, report.numbers)

    def _check_key(self, step: GuidedStep) -> tuple:
        s = self.speed
        return (step.batch, *step.input.shape[2:], s.compile, s.cuda_graph, s.compile_mode, s.compile_backend,
                s.channels_last, s.sdpa, s.fused_cfg, s.deterministic)

    def _self_check(self, step: GuidedStep) -> CheckReport | None:
        """Prepare the new step (compile, capture) on synthetic inputs; check it when a fast path is on, once per
        (shape, switches): a shape evicted from the two-shape cache and met again is prepared, not re-checked."""
        s = self.speed
        key = self._check_key(step)
        if not self.self_check or not (s.compile or s.cuda_graph) or key in self._passed:
            step.load(*synthetic_batches(step.batch, step.input.shape[2:], step.context.shape[1:], step.device)[0][:4])
            return None
        h, w = step.input.shape[2:]
        report = check_step(step, lambda unet, dt: self._make_step(unet, dt, step.batch, h, w, fast=False),
                            self.model.unet)
        self.checks.append({"shape": [step.batch, h, w], "compile": s.compile, "cuda_graph": s.cuda_graph,
                            **report.as_dict()})
        log.info("speed self-check at batch %d, latent %dx%d: %s, %.2f s (ratio to eager's error %s)", step.batch,
                 h, w, "ok" if report.ok else report.reason, report.numbers.get("check_s", 0.0),
                 report.numbers.get("ratio"))
        if report.ok:
            self._passed.add(key)
        return report

    def _fall_back(self, switch: str | None, reason: str, numbers: dict | None = None) -> bool:
        """Turn `switch` off (None: CUDA graph, else compile, whichever is on). False when none is on."""
        on = [n for n in ("cuda_graph", "compile") if getattr(self.speed, n)]
        switch = switch if switch in on else (on[0] if on else None)
        if switch is None:
            return False
        if self.strict_speed:
            raise SpeedCheckError(f"{reason}; strict speed: not turning {switch} off")
        log.warning("fast path failed (%s) %s; turning %s off and going on", reason, numbers or "", switch)
        self.set_speed(dataclasses.replace(self.speed, **{switch: False}))
        return True

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

    def __call__(self, images, masks, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, **kw) -> np.ndarray:
        """images uint8 [B,H,W,3] (numpy or torch), H and W multiples of 64; masks [B,H,W] uint8
        (>= 128 repaints) or bool; prompts: B strings; negative_prompts: B strings or None (empty);
        seeds: B ints (required); guidance: float or B floats. Returns uint8 [B,H,W,3] numpy."""
        return self.generate(images, masks, prompts, negative_prompts, seeds, **kw)[0]

    @torch.inference_mode()
    def generate(self, images, masks, prompts: Sequence[str], negative_prompts: Sequence[str] | None = None,
                 seeds: Sequence[int] | None = None, *, steps: int | None = None,
                 guidance: float | Sequence[float] | None = None,
                 strength: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As __call__, and per row whether its final latent and decoded image were finite (bool [B]): a
        non-finite value would otherwise be cast to some byte and pass for an image."""
        m = self.model
        steps = check_steps(self.steps if steps is None else steps)
        strength = check_strength(self.strength if strength is None else strength)
        img, mask = check_images_masks(images, masks)
        B, _, H, W = img.shape
        prompts = check_strings(prompts, B, "prompts")
        negative = [""] * B if negative_prompts is None else check_strings(negative_prompts, B, "negative_prompts")
        gens = generators(seeds, B)
        g = check_guidance(self.guidance if guidance is None else guidance, B)
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

        try:
            out = self._decode((z / scale).to(dt)).float()  # [B, 3, H, W] about [-1, 1]
        except torch.cuda.OutOfMemoryError:  # the caller retries smaller: give it this shape's step memory too
            self._steps.pop((B, h, w), None)
            raise
        finite = torch.isfinite(z).flatten(1).all(1) & torch.isfinite(out).flatten(1).all(1)
        out = ((out + 1) / 2).clamp(0, 1) * 255
        return out.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy(), finite.cpu().numpy()


def _one_line(e: BaseException) -> str:
    text = str(e).splitlines()[0][:300] if str(e) else ""
    return f"{type(e).__name__}: {text}"
