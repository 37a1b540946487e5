"""The inpainting UNet as a denoiser D(x, sigma) -> x0, with classifier-free guidance.

This is the only place that knows the model's parameterization (epsilon, sd2-inpainting.md §5,
§9.1) and the 9-channel inpainting input (§6.1, §6.2, §9.11); the samplers see a plain denoiser.

Per step (B rows, latent h x w):
    x_vp = x / sqrt(sigma^2 + 1)                 only the 4 noisy channels are scaled (§6.2)
    in   = [x_vp, mask, masked-image latent]     [2B, 9, h, w], rows [uncond..., cond...]
    eps  = unet(in, t(sigma), [ctx_uncond; ctx_cond])   ONE UNet call on the doubled batch
    eps  = eps_u + g * (eps_c - eps_u)           g per row [B] (§5 CFG: only the context differs)
    x0   = x - sigma * eps
The conditioning channels and both contexts are fixed for a batch, so they are laid out once in
`__init__`; a step writes x_vp into the input buffer and calls the UNet.
"""

from __future__ import annotations

from typing import Callable

import torch

from .schedule import Schedule

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class InpaintDenoiser:
    """D(x[B,4,h,w] fp32, sigma 0-dim) -> x0[B,4,h,w] fp32.

    unet: callable (x[2B,9,h,w], t[2B] int64, context[2B,77,C]) -> eps[2B,4,h,w] (model dtype).
    cond: [B, 5, h, w] = [mask (1), masked-image latent * scale (4)].
    context_uncond, context_cond: [B, 77, C]. guidance: float or [B] tensor.
    dtype/device: the UNet's; x stays fp32 (sampler math), the UNet sees `dtype`.
    """

    def __init__(self, unet: UNetFn, schedule: Schedule, cond: torch.Tensor, context_uncond: torch.Tensor,
                 context_cond: torch.Tensor, guidance: float | torch.Tensor, dtype: torch.dtype,
                 device: torch.device | str):
        B, c, h, w = cond.shape
        if c != 5:
            raise ValueError(f"cond must have 5 channels (mask + 4 latent), got {c}")
        if context_uncond.shape != context_cond.shape or context_cond.shape[0] != B:
            raise ValueError(f"contexts {tuple(context_uncond.shape)} / {tuple(context_cond.shape)} "
                             f"do not match the batch of {B}")
        self.unet = unet
        self.schedule = schedule
        self.batch = B
        self.dtype = dtype
        self.device = torch.device(device)
        # The UNet input, [2B, 9, h, w]: channels 4..8 hold the conditioning in both halves (it is
        # the same for uncond and cond, §5), channels 0..3 are rewritten every step.
        self._input = torch.empty(2 * B, 9, h, w, dtype=dtype, device=self.device)
        cond = cond.to(self.device, dtype)
        self._input[:B, 4:] = cond
        self._input[B:, 4:] = cond
        self._context = torch.cat([context_uncond, context_cond]).to(self.device, dtype)  # [2B, 77, C]
        g = torch.as_tensor(guidance, dtype=torch.float32)
        if g.ndim == 0:
            g = g.expand(B)
        if g.shape != (B,):
            raise ValueError(f"guidance must be a float or have shape ({B},), got {tuple(g.shape)}")
        self._guidance = g.to(self.device).view(B, 1, 1, 1)
        self._t_cache: dict[int, torch.Tensor] = {}
        self.calls = 0  # UNet evaluations so far (each on the doubled batch)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """[2B] int64 timesteps for sigma: nearest integer of the log-sigma interpolation, the
        exact table index for the grids of schedule.py (k-diffusion's quantized CompVisDenoiser)."""
        t = self.schedule.timestep_for_sigma(float(sigma))
        if t not in self._t_cache:
            self._t_cache[t] = torch.full((2 * self.batch,), t, dtype=torch.int64, device=self.device)
        return self._t_cache[t]

    def eps(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Guided epsilon prediction, fp32 [B, 4, h, w]."""
        B = self.batch
        if x.shape[0] != B:
            raise ValueError(f"denoiser built for {B} rows, got x with {x.shape[0]}")
        x_vp = (x / (sigma**2 + 1) ** 0.5).to(self.dtype)
        self._input[:B, :4] = x_vp
        self._input[B:, :4] = x_vp
        out = self.unet(self._input, self.timestep(sigma), self._context).float()
        self.calls += 1
        eps_u, eps_c = out[:B], out[B:]
        return eps_u + self._guidance * (eps_c - eps_u)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma * self.eps(x, sigma)
