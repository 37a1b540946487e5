"""Reusable model-test helpers: synthetic inputs for one guided UNet step, and its eps through a GuidedStep."""

from __future__ import annotations

from pathlib import Path

import torch

from rayinpaint.model.denoiser import GuidedStep, InpaintDenoiser
from rayinpaint.model.schedule import Schedule


def step_inputs(seed: int = 0, batch: int = 2, latent: int = 8, width: int = 32, device="cpu",
                guidance: float | None = None) -> list[torch.Tensor]:
    """[cond [B,5,h,w] (binary mask + latent), ctx_uncond, ctx_cond [B,77,width], guidance [B], x [B,4,h,w] at a
    high noise level], drawn on the CPU from `seed` and moved to `device`. Guidance: this value for every row,
    or (None) a spread from 1 to 7.5 across the rows."""
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, 5, latent, latent, generator=g)
    cond[:, 0] = (cond[:, 0] > 0).float()
    ctx_u, ctx_c = torch.randn(2, batch, 77, width, generator=g)
    scale = torch.linspace(1.0, 7.5, batch) if guidance is None else torch.full((batch,), float(guidance))
    x = torch.randn(batch, 4, latent, latent, generator=g) * 14.6
    return [t.to(device) for t in (cond, ctx_u, ctx_c, scale, x)]


def guided_eps(unet, inputs, dtype: torch.dtype = torch.float32, steps: int = 1, **step_kw) -> torch.Tensor:
    """Guided eps at the first `steps` sigmas of a 10-step DDIM grid through one GuidedStep (so a captured CUDA
    graph is replayed with new step inputs), on the inputs' device: [steps, B, 4, h, w] fp32."""
    cond, ctx_u, ctx_c, guidance, x = inputs
    B, _, h, w = cond.shape
    step = GuidedStep(unet, B, (h, w), tuple(ctx_c.shape[1:]), dtype, x.device, **step_kw)
    step.load(cond, ctx_u, ctx_c, guidance)
    sched = Schedule()
    sigmas = sched.sigmas_for("ddim", 10)
    den = InpaintDenoiser(step, sched, sigmas, pinned=x.device.type == "cuda")
    with torch.inference_mode():
        return torch.stack([den.eps(x, sigmas[i]).clone() for i in range(steps)])


class TouchWhenUnpickled:
    """A pickled object whose unpickling would create the file `marker`: what a malicious checkpoint does. A loader
    must refuse it and run nothing (the file never appears)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))
