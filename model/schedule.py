"""The SD2 noise schedule, timestep <-> sigma conversions and inference-step selection.

Samplers work in the sigma ("variance exploding") parameterization: x = x0 + sigma * eps, with
sigma_t = sqrt((1 - acp_t) / acp_t). The UNet was trained on the variance-preserving
x_vp = sqrt(acp_t) * x0 + sqrt(1 - acp_t) * eps = x / sqrt(sigma_t^2 + 1) (docs/model.md §5.1).

Which sigmas a sampler visits is decided here, so that each of our samplers walks exactly the
grid of its diffusers counterpart (DDIMScheduler, EulerDiscreteScheduler,
EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler), configured as SD2-inpainting's
scheduler config: beta 0.00085 -> 0.012 "scaled_linear", 1000 steps, steps_offset 1,
set_alpha_to_one False, and each class's own default timestep_spacing (DEFAULT_SPACING).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .choices import SAMPLERS

SPACINGS = ("leading", "trailing", "linspace")

# Each diffusers scheduler class's default timestep_spacing: "leading" for DDIM, "linspace" for the others. The
# SD2-inpainting scheduler config (written by diffusers 0.8) has no timestep_spacing key, so each class falls
# back to its own default (docs/model.md §5.3).
DEFAULT_SPACING = {name: "leading" if name == "ddim" else "linspace" for name in SAMPLERS}


@dataclass(frozen=True)
class ScheduleConfig:
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps_offset: int = 1
    # "float32": alphas_cumprod computed exactly as diffusers does (torch float32 linspace,
    # square, cumprod). "float64": as LDM computes it (float64, then stored as float32).
    # They differ by up to ~5e-7 in acp, i.e. ~5e-5 relative in sigma_max, which moves a
    # 50-step trajectory by ~1e-3; float32 is the default so that we track diffusers to 1e-5.
    precision: str = "float32"


SD2 = ScheduleConfig()


class Schedule:
    """Discrete DDPM schedule and the sigma grids the samplers walk.

    Tensors: alphas_cumprod [T] float32, sigmas [T] float32 (index = timestep, increasing),
    log_sigmas [T] float64 (for interpolation).
    """

    def __init__(self, config: ScheduleConfig = SD2):
        if config.precision not in ("float32", "float64"):
            raise ValueError(f"precision must be 'float32' or 'float64', got {config.precision!r}")
        self.config = config
        n = config.num_train_timesteps
        dt = torch.float32 if config.precision == "float32" else torch.float64
        # "scaled_linear" in diffusers == "linear" in LDM: linear in sqrt(beta) (docs/model.md §5.1).
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=dt) ** 2
        acp = torch.cumprod(1.0 - betas, dim=0).to(torch.float32)
        self.alphas_cumprod = acp  # [T]
        # Computed in float32 from float32 acp, as every diffusers scheduler does.
        self.sigmas = ((1 - acp) / acp) ** 0.5  # [T] float32
        self.log_sigmas = np.log(self.sigmas.numpy().astype(np.float64))  # [T] float64

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    # ---- conversions -------------------------------------------------------------------------

    def sigma_to_t(self, sigma) -> np.ndarray:
        """Continuous timestep for sigma(s), by linear interpolation in log-sigma (k-diffusion,
        diffusers `_sigma_to_t`). Clamped to [0, T-1]. Returns float64 array shaped like sigma."""
        s = np.asarray(sigma, dtype=np.float64)
        log_s = np.log(np.maximum(s, 1e-10)).reshape(-1)
        ls = self.log_sigmas
        # index of the last train log-sigma <= log_s, kept so that low+1 is valid
        low = np.clip(np.searchsorted(ls, log_s, side="right") - 1, 0, len(ls) - 2)
        w = np.clip((log_s - ls[low]) / (ls[low + 1] - ls[low]), 0.0, 1.0)
        return (low + w).reshape(s.shape)

    def t_to_sigma(self, t, interpolation: str = "log") -> np.ndarray:
        """Sigma at continuous timestep(s) t. "log" interpolates log-sigma (k-diffusion's
        DiscreteSchedule.t_to_sigma); "linear" interpolates sigma itself, which is what diffusers'
        Euler and DPM schedulers do in set_timesteps (np.interp over sigmas). Integer t gives the
        table value either way. Returns float64."""
        t = np.asarray(t, dtype=np.float64)
        grid = np.arange(self.num_train_timesteps, dtype=np.float64)
        if interpolation == "log":
            return np.exp(np.interp(t, grid, self.log_sigmas))
        if interpolation == "linear":
            return np.interp(t, grid, self.sigmas.numpy().astype(np.float64))
        raise ValueError(f"interpolation must be 'log' or 'linear', got {interpolation!r}")

    def timestep_for_sigma(self, sigma: float) -> int:
        """The discrete timestep the UNet is called with at noise level sigma: the nearest integer to
        sigma_to_t (k-diffusion's quantize=True). Exact for sigmas taken from the table."""
        return int(np.rint(self.sigma_to_t(float(sigma))))

    # ---- inference timesteps -----------------------------------------------------------------

    def timesteps(self, steps: int, spacing: str, sampler: str = "ddim") -> np.ndarray:
        """Descending inference timesteps as the diffusers scheduler for `sampler` selects them.

        leading  (steps_offset 1): ratio = T // n, t = k * ratio + 1 (k = n-1 .. 0): 981, 961, .., 1
        trailing: t = round(T - k * T / n) - 1: 999, 979, .., 19
        linspace: DDIM rounds linspace(0, T-1, n); Euler keeps the float values (fractional t);
        DPM-Solver takes linspace(0, T-1, n+1), rounds and drops the 0 (and "leading" uses
        T // (n+1)). Returns float64 [n] (integers except Euler linspace)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if spacing not in SPACINGS:
            raise ValueError(f"timestep spacing must be one of {SPACINGS}, got {spacing!r}")
        T, off = self.num_train_timesteps, self.config.steps_offset
        dpm = sampler == "dpmpp_2m"
        if spacing == "leading":
            ratio = T // (steps + 1) if dpm else T // steps
            k = np.arange(0, steps + 1 if dpm else steps)
            t = (k * ratio).round()[::-1]
            t = (t[:-1] if dpm else t) + off
        elif spacing == "trailing":
            t = np.round(np.arange(T, 0, -T / steps)) - 1
        elif dpm:
            t = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
        elif sampler in ("euler", "euler_a"):
            t = np.linspace(0, T - 1, steps, dtype=np.float32)[::-1]
        else:
            t = np.linspace(0, T - 1, steps).round()[::-1]
        return np.ascontiguousarray(t, dtype=np.float64)

    def sigmas_for(self, sampler: str, steps: int, spacing: str | None = None,
                   karras: bool = False) -> torch.Tensor:
        """The sigma grid [n+1] (float32, CPU, descending) that `sampler` walks, its last entry the
        final noise level: 0 for the k-samplers, sigma(t=0) for DDIM, whose set_alpha_to_one=False
        ends at alpha = acp[0] (docs/model.md §5.3), not at the clean sample."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        spacing = spacing or DEFAULT_SPACING[sampler]
        t = self.timesteps(steps, spacing, sampler)
        if sampler == "ddim":
            if karras:
                raise ValueError("karras sigmas are not defined for DDIM (it walks discrete timesteps)")
            # DDIM steps t -> t - T // n; with leading spacing that is the next selected timestep,
            # and below 0 it is the final alpha acp[0]. (For linspace/trailing grids that T // n does
            # not divide, diffusers' prev_timestep is not the next selected one; we walk the grid.)
            s = self.sigmas.numpy()[t.astype(np.int64)].astype(np.float64)
            return torch.from_numpy(np.append(s, self.sigma_min).astype(np.float32))
        s = self.t_to_sigma(t, interpolation="linear")
        if karras:
            if sampler == "dpmpp_2m":
                # DPMSolverMultistep takes the range from the whole training table.
                lo, hi = float(self.sigmas[0]), float(self.sigmas[-1])
            else:
                # Euler takes it from the spacing's own first and last sigma.
                lo, hi = float(s[-1]), float(s[0])
            s = karras_sigmas(steps, lo, hi)
        return torch.from_numpy(np.append(s, 0.0).astype(np.float32))

    def init_noise_scale(self, sampler: str, sigmas: torch.Tensor, spacing: str | None = None) -> float:
        """Std of the pure-noise start x = noise * scale, as the diffusers scheduler's
        init_noise_sigma puts it in sigma space. sqrt(sigma_0^2 + 1) is the marginal std at sigma_0
        for unit-variance data; DDIM and DPM-Solver (init 1.0 on the VP sample) and the Euler
        schedulers with "leading" spacing use it, while Euler with "linspace"/"trailing" uses sigma_0."""
        spacing = spacing or DEFAULT_SPACING[sampler]
        s0 = sigmas[0]
        if sampler in ("euler", "euler_a") and spacing in ("linspace", "trailing"):
            return float(s0)
        return float((s0**2 + 1) ** 0.5)

    def unet_timesteps(self, sigmas: torch.Tensor) -> list[int]:
        """Integer UNet timesteps for each sigma of a grid except the last (the final level is never
        evaluated)."""
        return [self.timestep_for_sigma(float(s)) for s in sigmas[:-1]]


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: n sigmas from sigma_max to sigma_min, uniform in sigma^(1/rho).
    float64 [n] (callers append the final 0)."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def truncate_for_strength(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """Img2img-style truncation (diffusers `get_timesteps`): keep the last int(n * strength) steps
    of an n-step grid, i.e. start denoising at a lower noise level. strength 1 keeps everything.
    sigmas [n+1] -> [m+1]."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    n = len(sigmas) - 1
    m = min(int(n * strength), n)
    if m < 1:
        raise ValueError(f"strength {strength} with {n} steps leaves no step to run")
    return sigmas[n - m:]
