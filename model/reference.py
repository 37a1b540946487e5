"""diffusers counterparts of our model, the oracles that tests and `rayinpaint bench` compare against.

diffusers is a test and benchmark dependency only: nothing here imports it (or torch) until a function that
builds a diffusers object is called, and the config functions return plain keyword dicts.
"""

from __future__ import annotations

from .config import UNetConfig, VAEConfig


def diffusers_unet_config(cfg: UNetConfig, sample_size: int = 64) -> dict:
    """Keyword arguments for diffusers' UNet2DConditionModel with our structure (docs/model.md §7.3). Its
    "attention_head_dim" is really the number of heads (docs/model.md §8.8)."""
    chans = list(cfg.level_channels)
    levels = range(len(chans))
    return dict(
        sample_size=sample_size, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D"
                             for i in reversed(levels)),
        block_out_channels=tuple(chans), layers_per_block=cfg.num_res_blocks,
        attention_head_dim=[c // cfg.head_dim for c in chans], cross_attention_dim=cfg.context_dim,
        use_linear_projection=True, flip_sin_to_cos=True, freq_shift=0, norm_num_groups=cfg.norm_groups,
        norm_eps=1e-5, act_fn="silu", downsample_padding=1, mid_block_scale_factor=1, upcast_attention=False,
        transformer_layers_per_block=cfg.transformer_depth,
    )


def diffusers_vae_config(cfg: VAEConfig) -> dict:
    """Keyword arguments for diffusers' AutoencoderKL with our structure (docs/model.md §7.3)."""
    n = len(cfg.ch_mult)
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.level_channels),
        layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels, norm_num_groups=cfg.norm_groups,
        act_fn="silu", sample_size=512, scaling_factor=0.18215,  # SD2Config.scale_factor (docs/model.md §3.1)
    )


def diffusers_scheduler(sampler: str, spacing: str | None = None, karras: bool = False):
    """The diffusers scheduler our sampler reproduces: SD2-inpainting's scheduler config, with `spacing` (None:
    each class's own default timestep spacing) and Karras sigmas where the class has them (docs/model.md §5.3).
    The tests use it as the oracle for our samplers."""
    import diffusers

    kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
              steps_offset=1, prediction_type="epsilon")
    if spacing is not None:
        kw["timestep_spacing"] = spacing
    if sampler == "ddim":
        return diffusers.DDIMScheduler(**kw, set_alpha_to_one=False, clip_sample=False)
    if sampler == "euler":
        return diffusers.EulerDiscreteScheduler(**kw, use_karras_sigmas=karras)
    if sampler == "euler_a":
        if karras:
            raise ValueError("EulerAncestralDiscreteScheduler has no Karras option")
        return diffusers.EulerAncestralDiscreteScheduler(**kw)
    if sampler == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                                     use_karras_sigmas=karras)
    raise ValueError(f"no diffusers scheduler for sampler {sampler!r}")


def diffusers_pipeline(model, sampler: str, resolution: int, device, dtype):
    """StableDiffusionInpaintPipeline holding our model's UNet and VAE weights, moved across by our name mapping,
    with the scheduler of `sampler`. It has no text encoder: callers pass prompt embeddings from ours."""
    import diffusers
    import torch

    from .convert import ldm_to_diffusers_unet, ldm_to_diffusers_vae

    cfg = model.config

    def build(cls, kwargs, sd):
        with torch.device("meta"):
            net = cls(**kwargs)
        sd = {k: v.to(device=device, dtype=dtype).contiguous() for k, v in sd.items()}
        net.load_state_dict(sd, strict=True, assign=True)
        return net.eval()

    unet = build(diffusers.UNet2DConditionModel, diffusers_unet_config(cfg.unet, sample_size=resolution // 8),
                 ldm_to_diffusers_unet(model.unet.state_dict(), cfg.unet))
    vae = build(diffusers.AutoencoderKL, diffusers_vae_config(cfg.vae),
                ldm_to_diffusers_vae(model.vae.state_dict(), cfg.vae))
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=diffusers_scheduler(sampler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = ["diffusers_unet_config", "diffusers_vae_config", "diffusers_scheduler", "diffusers_pipeline"]
