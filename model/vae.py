"""SD2 first-stage autoencoder (LDM `AutoencoderKL`, docs/model.md §3).

Module names mirror the checkpoint under `first_stage_model.`: `encoder.down.i.block.j`,
`encoder.down.i.downsample.conv`, `decoder.up.i.block.j`, `decoder.up.i.upsample.conv`,
`{encoder,decoder}.mid.{block_1,attn_1,block_2}`, `quant_conv`, `post_quant_conv`.
Every GroupNorm here has eps 1e-6, unlike most of the UNet's (docs/model.md §8.5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .unet import GroupNorm32


def _norm(cfg: VAEConfig, channels: int) -> GroupNorm32:
    return GroupNorm32(cfg.norm_groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm1-SiLU-conv1-norm2-SiLU-conv2 plus shortcut; no time embedding (docs/model.md §3.2)."""

    def __init__(self, cin: int, cout: int, cfg: VAEConfig):
        super().__init__()
        self.norm1 = _norm(cfg, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cfg, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention; q/k/v/proj_out are 1x1 convs [C, C, 1, 1] (docs/model.md §3.2)."""

    def __init__(self, channels: int, cfg: VAEConfig):
        super().__init__()
        self.norm = _norm(cfg, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, HW, C)
            return t.flatten(2).transpose(1, 2).unsqueeze(1)

        o = F.scaled_dot_product_attention(heads(self.q(n)), heads(self.k(n)), heads(self.v(n)))  # (B, 1, HW, C)
        o = o.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    """Pad right and bottom by 1, then conv 3x3 stride 2 padding 0 (asymmetric, docs/model.md §8.6)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then conv 3x3 padding 1 (docs/model.md §3.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownLevel(nn.Module):
    """Encoder level: `block` (ResnetBlocks) then `downsample` (Identity, without keys, at the last level)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return self.downsample(x)


class UpLevel(nn.Module):
    """Decoder level: `block` (ResnetBlocks) then `upsample` (Identity, without keys, at level 0)."""

    def __init__(self, blocks: list[nn.Module], upsample: nn.Module):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return self.upsample(x)


class Mid(nn.Module):
    def __init__(self, channels: int, cfg: VAEConfig):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, cfg)
        self.attn_1 = AttnBlock(channels, cfg)
        self.block_2 = ResnetBlock(channels, channels, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """conv_in, down levels (num_res_blocks each, Downsample except last), mid, norm_out, conv_out -> 2z."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = cfg.level_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        ch = cfg.ch
        for level, cout in enumerate(chans):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(ch, cout, cfg))
                ch = cout
            down = Downsample(ch) if level != len(chans) - 1 else nn.Identity()
            self.down.append(DownLevel(blocks, down))
        self.mid = Mid(ch, cfg)
        self.norm_out = _norm(cfg, ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in, mid, up levels run from the deepest (`up.{L-1}`) to `up.0` (docs/model.md §3.2), norm_out, conv_out."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = cfg.level_channels
        ch = chans[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = Mid(ch, cfg)
        levels: list[UpLevel] = [None] * len(chans)  # type: ignore[list-item]
        for level in reversed(range(len(chans))):
            cout = chans[level]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, cout, cfg))
                ch = cout
            levels[level] = UpLevel(blocks, Upsample(ch) if level != 0 else nn.Identity())
        self.up = nn.ModuleList(levels)  # index = resolution level, as in the checkpoint
        self._run_order = list(reversed(range(len(chans))))
        self.norm_out = _norm(cfg, ch)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in self._run_order:
            h = self.up[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
    """encode(img[B,3,H,W] in [-1,1]) -> (mean, logvar) [B,z,H/8,W/8], unscaled, logvar in [-30, 20].
    decode(z[B,z,h,w], unscaled) -> img[B,3,8h,8w] in about [-1, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.z_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = img.to(self.quant_conv.weight.dtype)
        moments = self.quant_conv(self.encoder(img))
        mean, logvar = moments.chunk(2, dim=1)  # channels 0..z-1 mean, z..2z-1 logvar (docs/model.md §3.3)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(z))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (used by tests and smoke checks)."""
        return self.decode(self.encode(img)[0])
