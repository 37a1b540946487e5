"""SD2 inpainting UNet (LDM `openaimodel.UNetModel`), written for SDPA and strict loading.

Module names mirror the checkpoint keys under `model.diffusion_model.` (docs/model.md §2.2):
`input_blocks.N.M`, `middle_block.M`, `output_blocks.N.M` fall out of nn.ModuleList plus
`TimestepSequential`, so loading is prefix stripping plus strict=True. Read from the leaves up:
norm, attention, transformer, ResBlock, resampling, then the UNet.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import UNetConfig


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (LDM GroupNorm32, docs/model.md §2.4; the VAE's too).

    `.float()` is a no-op for fp32 tensors, so the fp32 path pays nothing.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float()
        b = self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm in float32, cast back: keeps fp16/bf16 inference numerically safe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float()
        b = self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head attention, to_q/to_k/to_v without bias, to_out.0 with bias (docs/model.md §2.6).

    Heads split head-major ((h d) -> h, d); scale d^-1/2 is SDPA's default.
    """

    def __init__(self, dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.heads = dim // head_dim
        self.head_dim = head_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape  # (B, N, C); context (B, M, Cctx)
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        k = self.to_k(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)  # (B, h, M, d)
        v = self.to_v(context).view(b, -1, self.heads, self.head_dim).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.to_out(o.transpose(1, 2).reshape(b, n, c))


class GEGLU(nn.Module):
    """`ff.net.0`: Linear(C -> 8C) split into value (first half) and gate; value * GELU(gate)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)  # exact erf GELU


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # Keys: ff.net.0.proj, ff.net.2 (net.1 is Dropout).
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention, GEGLU feed-forward; LayerNorm eps 1e-5 (docs/model.md §2.6)."""

    def __init__(self, dim: int, context_dim: int, head_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, dim, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = Attention(dim, context_dim, head_dim)
        self.norm1 = LayerNorm32(dim)
        self.norm2 = LayerNorm32(dim)
        self.norm3 = LayerNorm32(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = self.attn1(h, h) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Linear-projection SpatialTransformer (use_linear_in_transformer=True, docs/model.md §2.6).

    GroupNorm eps is 1e-6 here, unlike the ResBlocks' 1e-5 (docs/model.md §8.5).
    """

    def __init__(self, channels: int, cfg: UNetConfig):
        super().__init__()
        self.norm = GroupNorm32(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(channels, cfg.context_dim, cfg.head_dim) for _ in range(cfg.transformer_depth)
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, C, H, W) -> (B, HW, C); a view when x is channels_last.
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, context)
        t = self.proj_out(t)
        return t.reshape(b, h, w, c).permute(0, 3, 1, 2) + x


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, add the projected time embedding, GroupNorm-SiLU-conv, skip (docs/model.md §2.4)."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(cfg.norm_groups, cin, eps=1e-5), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cfg.time_embed_dim, cout))
        self.out_layers = nn.Sequential(
            GroupNorm32(cfg.norm_groups, cout, eps=1e-5), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None]  # added, not scale-shift (docs/model.md §2.4)
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Conv 3x3, stride 2, symmetric padding 1 (UNet; the VAE pads asymmetrically, docs/model.md §8.6). Key `.op`."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest x2 then conv 3x3 (docs/model.md §2.5). Key `.conv`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class StemConv(nn.Conv2d):
    """`input_blocks.0.0`: the 9 -> C stem conv with the block signature (x, emb, context)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class TimestepSequential(nn.ModuleList):
    """Runs its layers in order; every layer takes (x, emb, context), so no per-call type checks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb, context)
        return x


def timestep_frequencies(dim: int) -> torch.Tensor:
    """f_i = exp(-ln(10000) * i / half), i < half, fp32 (docs/model.md §2.3)."""
    half = dim // 2
    return torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)


class UNet(nn.Module):
    """forward(x[B, in, h, w], t[B] int64, context[B, 77, Cctx]) -> eps[B, out, h, w].

    h and w must be divisible by 2**(levels-1) (8 for SD2; pixels by 64): like LDM there is no
    size matching in the skip concatenation (docs/model.md §6.3).
    """

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        chans = cfg.level_channels
        last = len(chans) - 1
        self.register_buffer("freqs", timestep_frequencies(mc), persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))

        # Encoder: stem, then per level num_res_blocks x [ResBlock (+ SpatialTransformer)] and a
        # Downsample except at the last level. Each entry's output is pushed on the skip stack.
        self.input_blocks = nn.ModuleList([TimestepSequential([StemConv(cfg.in_channels, mc, 3, padding=1)])])
        skip_chans = [mc]
        ch = mc
        for level, cout in enumerate(chans):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, cout, cfg)]
                ch = cout
                if level in cfg.attention_levels:
                    layers.append(SpatialTransformer(ch, cfg))
                self.input_blocks.append(TimestepSequential(layers))
                skip_chans.append(ch)
            if level != last:
                self.input_blocks.append(TimestepSequential([Downsample(ch)]))
                skip_chans.append(ch)

        self.middle_block = TimestepSequential([ResBlock(ch, ch, cfg), SpatialTransformer(ch, cfg), ResBlock(ch, ch, cfg)])

        # Decoder: per level (deepest first) num_res_blocks + 1 ResBlocks over cat([h, skip]),
        # each with attention at attention levels; the level's last block ends with an Upsample
        # (sub-index .1 without attention, .2 with it, docs/model.md §8.10) except at level 0.
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(chans))):
            cout = chans[level]
            for j in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), cout, cfg)]
                ch = cout
                if level in cfg.attention_levels:
                    layers.append(SpatialTransformer(ch, cfg))
                if level != 0 and j == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepSequential(layers))

        self.out = nn.Sequential(GroupNorm32(cfg.norm_groups, ch, eps=1e-5), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recreate derived (non-persistent) buffers, e.g. after building on the meta device."""
        device = device if device is not None else self.time_embed[0].weight.device
        self.register_buffer("freqs", timestep_frequencies(self.config.model_channels).to(device), persistent=False)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        args = t.float()[:, None] * self.freqs.float()[None]  # (B, half), fp32
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # cos first (docs/model.md §2.3)
        w = self.time_embed[0].weight
        return self.time_embed(emb.to(w.dtype))  # (B, 4C)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        emb = self.time_embedding(t)
        context = context.to(emb.dtype)
        h = x.to(emb.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # [h, skip] order (docs/model.md §8.11)
        return self.out(h)
