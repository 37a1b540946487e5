"""diffusers oracles shared by the sampler and inpainter tests (diffusers is a test-only dependency)."""

from __future__ import annotations

import diffusers

# The SD2-inpainting scheduler configuration (sd2-inpainting.md §5): "scaled_linear" is LDM's linear-in-sqrt(beta).
SD2_SCHED = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, prediction_type="epsilon")


def make_scheduler(name: str, spacing: str | None = None, karras: bool = False):
    """The diffusers scheduler that each of our samplers must reproduce."""
    kw = dict(SD2_SCHED)
    if spacing is not None:
        kw["timestep_spacing"] = spacing
    if name == "ddim":
        return diffusers.DDIMScheduler(**kw, set_alpha_to_one=False, clip_sample=False)
    if name == "euler":
        return diffusers.EulerDiscreteScheduler(**kw, use_karras_sigmas=karras)
    if name == "euler_a":
        assert not karras, "EulerAncestralDiscreteScheduler has no Karras option"
        return diffusers.EulerAncestralDiscreteScheduler(**kw)
    if name == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                                     use_karras_sigmas=karras)
    raise AssertionError(name)
