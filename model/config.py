"""Architecture configs for SD2 inpainting: small frozen dataclasses plus named presets.

Only the fields that differ between the real checkpoint and the tiny test model are here; every
other structural fact (block order, norms, padding, GEGLU, ...) is fixed in the module code and
follows docs/model.md §2-§4.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UNetConfig:
    """LDM `UNetModel` as configured by v2-inpainting-inference.yaml (docs/model.md §2.1)."""

    in_channels: int = 9  # 4 noisy latent + 1 mask + 4 masked-image latent
    out_channels: int = 4  # epsilon
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Levels (0 = full latent resolution) whose blocks carry a SpatialTransformer. LDM spells this
    # attention_resolutions=[4, 2, 1] (downsample factors), i.e. levels 0, 1, 2. The middle block
    # always has one.
    attention_levels: tuple[int, ...] = (0, 1, 2)
    head_dim: int = 64  # num_head_channels; heads = C / head_dim (5, 10, 20) (docs/model.md §2.1)
    context_dim: int = 1024  # text width fed to cross-attention
    transformer_depth: int = 1
    norm_groups: int = 32

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels  # 1280 for SD2 (docs/model.md §2.3)

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)


@dataclass(frozen=True)
class VAEConfig:
    """LDM `AutoencoderKL` first stage (docs/model.md §3.1). Downsampling factor 2**(levels-1)."""

    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4  # == embed_dim; the encoder emits 2*z (mean, logvar)
    norm_groups: int = 32

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)


@dataclass(frozen=True)
class TextConfig:
    """OpenCLIP ViT-H-14 text tower (docs/model.md §4.1).

    `layers` counts the blocks stored in the checkpoint (24); SD2 runs the penultimate output, so
    only blocks 0..layers-2 are built and the last one is ignored when loading.
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_ratio: float = 4.0

    @property
    def built_layers(self) -> int:
        return self.layers - 1


@dataclass(frozen=True)
class SD2Config:
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    scale_factor: float = 0.18215  # latent scaling (docs/model.md §3.1)

    def __post_init__(self) -> None:
        if self.text.width != self.unet.context_dim:
            raise ValueError(f"text width {self.text.width} != unet context_dim {self.unet.context_dim}")
        if self.unet.in_channels != 2 * self.vae.z_channels + 1:
            raise ValueError("inpainting UNet needs in_channels = 2 * z_channels + 1")
        if len(self.vae.ch_mult) != 4:
            raise ValueError("the VAE must downsample by 8 (4 levels): latents are H/8 x W/8")
        u = self.unet
        for c in u.level_channels:
            if c % u.head_dim or c % u.norm_groups:
                raise ValueError(f"UNet width {c} not divisible by head_dim/norm_groups")
        for c in self.vae.level_channels:
            if c % self.vae.norm_groups:
                raise ValueError(f"VAE width {c} not divisible by norm_groups")


PRESETS: dict[str, SD2Config] = {
    "sd2-inpainting": SD2Config(),
    # Same structure (9-channel stem, attention + cross-attention levels and a plain last level,
    # mid block, 4-level VAE with mid attention, causal text blocks with the real vocabulary and
    # 77 tokens), a few hundred thousand parameters besides the token embedding.
    "tiny": SD2Config(
        unet=UNetConfig(
            model_channels=32,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_levels=(0, 1),
            head_dim=8,
            context_dim=32,
            norm_groups=8,
        ),
        vae=VAEConfig(ch=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, norm_groups=8),
        text=TextConfig(width=32, heads=4, layers=3),
    ),
}


def get_config(name_or_config: str | SD2Config | None) -> SD2Config:
    if name_or_config is None:
        return PRESETS["sd2-inpainting"]
    if isinstance(name_or_config, SD2Config):
        return name_or_config
    try:
        return PRESETS[name_or_config]
    except KeyError:
        raise ValueError(f"unknown model config {name_or_config!r}; presets: {sorted(PRESETS)}") from None


__all__ = ["UNetConfig", "VAEConfig", "TextConfig", "SD2Config", "PRESETS", "get_config"]
