"""Samplers: plain functions over a denoiser D(x, sigma) -> x0 (k-diffusion style).

Conventions shared by every sampler here:
- x is in the sigma ("variance exploding") parameterization: x = x0 + sigma * eps, float32 [B, ...].
  The caller starts from x = noise * sigma_0 (or its own init, e.g. an img2img latent).
- sigmas is a descending float32 CPU tensor [n+1] from Schedule.sigmas_for: n model evaluations,
  the last entry is the final noise level (0, or sigma_min for DDIM). Each sampler returns x at
  that final level; `to_vp(x, sigmas[-1])` gives the latent to decode (identity when it is 0).
- noise(x) -> a standard normal tensor shaped like x. The caller draws it from per-row generators
  so a row's noise never depends on its batch.
- callback(i, x) is called after step i with the new x (tests compare against diffusers with it).

Each function reproduces one diffusers scheduler step for step (see tests/model/test_samplers.py). The
sigma values are used as float32 0-dim tensors, as diffusers does, so coefficients round the same.
"""

from __future__ import annotations

from typing import Callable

import torch

from .choices import SAMPLERS

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Noise = Callable[[torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor], None] | None


def to_vp(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """VE sample -> variance-preserving sample sqrt(acp) * x0 + sqrt(1-acp) * eps = x / sqrt(sigma^2+1)."""
    return x / (sigma**2 + 1) ** 0.5


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0):
    """Split a step sigma_from -> sigma_to into a deterministic part down to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2. eta = 1 is the DDPM
    posterior variance; this equals DDIM's sigma_t(eta) expressed in VE space (see sample_ddim)."""
    sigma_up = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = torch.minimum(sigma_up, sigma_to)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Callback = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.
    Matches EulerDiscreteScheduler (s_churn 0)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        d = (x - x0) / sigma
        x = x + d * (sigma_next - sigma)
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise,
                           eta: float = 1.0, callback: Callback = None) -> torch.Tensor:
    """Euler step down to sigma_down, then add noise * sigma_up. Matches
    EulerAncestralDiscreteScheduler (eta 1); draws noise at every step, as it does."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = (x - x0) / sigma
        x = x + d * (sigma_down - sigma)
        x = x + noise(x) * sigma_up
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None,
                eta: float = 0.0, callback: Callback = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) in the sigma parameterization. Matches DDIMScheduler.

    Diffusers steps x_vp from alpha a to alpha a' as
        x'_vp = sqrt(a') x0 + sqrt(1 - a' - std^2) eps + std z,   std^2 = eta^2 (1-a')/(1-a) (1 - a/a').
    Dividing by sqrt(a') (x = x_vp / sqrt(a), sigma^2 = (1-a)/a) turns this into
        x' = x0 + sqrt(sigma'^2 - sigma_up^2) eps + sigma_up z,   sigma_up = std / sqrt(a'),
    and sigma_up reduces to the ancestral formula eta * sigma' sqrt(1 - sigma'^2/sigma^2). So DDIM with
    eta 0 is an Euler step in sigma, and with eta > 0 an ancestral one; the difference from the
    k-samplers is only the grid (discrete timesteps, ending at sigma_min with set_alpha_to_one=False).
    The update is written as x + (sigma' - sigma) * eps, which never materialises x0's rounding
    error (x0 = x - sigma * eps cancels ~15x at sigma_max). Float32 rounding still differs from
    diffusers' alpha-space arithmetic at the ~1e-5 level over 50 steps, the size of diffusers'
    own float32 error (tests/model/test_samplers.py shows both, and a 1e-12 match in float64).
    noise(x) is required when eta > 0 and drawn at every step (also the last, as diffusers does)."""
    if eta > 0 and noise is None:
        raise ValueError("sample_ddim with eta > 0 needs a noise function")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        eps = (x - x0) / sigma
        if eta > 0:
            sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
            x = x + (sigma_down - sigma) * eps + sigma_up * noise(x)
        else:
            x = x + (sigma_next - sigma) * eps
        if callback is not None:
            callback(i, x)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                    callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), multistep second order in lambda = -log(sigma).
    Matches DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
    solver_type="midpoint", final_sigmas_type="zero"): first order on the first step and on the
    last one (to sigma = 0), second order in between. DPM-Solver++ is invariant to the VP/VE scale
    (x/alpha), so diffusers' VP update and this VE one are the same map."""
    x0_prev, h_prev = None, None
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        if sigma_next == 0:
            # The final step to sigma 0 is first order: x = x0 exactly.
            x = x0
        else:
            h = torch.log(sigma) - torch.log(sigma_next)  # lambda_next - lambda
            phi = torch.expm1(-h)  # exp(-h) - 1, negative
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = x0 + (0.5 / r) * (x0 - x0_prev)
            x = (sigma_next / sigma) * x - phi * d
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback(i, x)
    return x


def _ddim(denoise, x, sigmas, noise, eta, callback):
    return sample_ddim(denoise, x, sigmas, noise, eta=eta, callback=callback)


def _euler(denoise, x, sigmas, noise, eta, callback):
    return sample_euler(denoise, x, sigmas, callback=callback)


def _euler_a(denoise, x, sigmas, noise, eta, callback):
    if noise is None:
        raise ValueError("euler_a needs a noise function")
    return sample_euler_ancestral(denoise, x, sigmas, noise, callback=callback)


def _dpmpp_2m(denoise, x, sigmas, noise, eta, callback):
    return sample_dpmpp_2m(denoise, x, sigmas, callback=callback)


# One entry per name in model/choices.py SAMPLERS, in its order (checked below).
_BY_NAME = {"ddim": _ddim, "euler": _euler, "euler_a": _euler_a, "dpmpp_2m": _dpmpp_2m}
if tuple(_BY_NAME) != SAMPLERS:
    raise ImportError(f"samplers {tuple(_BY_NAME)} differ from SAMPLERS {SAMPLERS} in model/choices.py")


def sample(name: str, denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, noise: Noise | None = None,
           eta: float = 0.0, callback: Callback = None) -> torch.Tensor:
    """Run the sampler called `name` (one of SAMPLERS); eta is DDIM's, noise is needed by euler_a (and DDIM eta > 0)."""
    run = _BY_NAME.get(name)
    if run is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
    return run(denoise, x, sigmas, noise, eta, callback)
