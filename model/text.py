"""OpenCLIP ViT-H/14 text tower as SD2 uses it (FrozenOpenCLIPEmbedder, docs/model.md §4).

Only the text tower is built, never the vision tower. The residual blocks are open_clip's own
public `open_clip.transformer.Transformer` (batch-first since open_clip 2.26, docs/model.md §8.3), so the
state-dict names are open_clip's: `token_embedding.weight`, `positional_embedding`,
`transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2,
mlp.c_fc, mlp.c_proj}`, `ln_final`. SD2 takes the penultimate block's output followed by ln_final
(docs/model.md §4.1), so block `layers-1`, `text_projection` and `logit_scale` are not built.
"""
from __future__ import annotations

import functools

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer
from torch import nn

from .config import TextConfig

SOT_TOKEN = 49406
EOT_TOKEN = 49407
PAD_TOKEN = 0  # "!" in the BPE vocabulary; SD2 pads with 0, not EOT (docs/model.md §4.2)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    # A SimpleTokenizer with the BPE vocabulary shipped inside the open_clip wheel: works offline.
    return open_clip.get_tokenizer("ViT-H-14")


def tokenize(prompts: list[str], context_length: int = 77) -> torch.Tensor:
    """SOT + BPE + EOT, zero-padded; longer prompts truncated to 77 with EOT forced last. int64 [B, 77]."""
    if isinstance(prompts, str):
        raise TypeError("tokenize expects a list of strings, not a single string")
    return _tokenizer()(list(prompts), context_length=context_length).to(torch.int64)


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the parameter and input dtypes, then cast back.

    open_clip's LayerNormFp32 upcasts only the input, so with half-precision parameters F.layer_norm
    sees mixed dtypes and fails; here weight and bias are upcast too. Same names and shapes as nn.LayerNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Additive mask: -inf strictly above the diagonal, 0 elsewhere (docs/model.md §4.1). [n, n] fp32."""
    return torch.full((n, n), float("-inf"), device=device).triu_(1)


class TextEncoder(nn.Module):
    """forward(tokens int64 [B, 77]) -> [B, 77, width]: all tokens, penultimate block + ln_final."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        # LayerNorm32 keeps fp16/bf16 inference safe; identical to open_clip's LayerNorm in fp32.
        self.transformer = Transformer(
            width=cfg.width,
            layers=cfg.built_layers,
            heads=cfg.heads,
            mlp_ratio=cfg.mlp_ratio,
            act_layer=nn.GELU,  # exact GELU: ViT-H-14 does not set quick_gelu
            norm_layer=LayerNorm32,
            batch_first=True,
        )
        self.ln_final = LayerNorm32(cfg.width)
        self.register_buffer("attn_mask", causal_mask(cfg.context_length), persistent=False)

    def reset_buffers(self, device: torch.device | str | None = None) -> None:
        """Recreate the causal mask, e.g. after building on the meta device."""
        device = device if device is not None else self.token_embedding.weight.device
        self.register_buffer("attn_mask", causal_mask(self.config.context_length, device), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.token_embedding.weight.device)
        x = self.token_embedding(tokens) + self.positional_embedding  # (B, L, D), batch-first
        x = self.transformer(x, attn_mask=self.attn_mask)
        return self.ln_final(x)


def prompt_token_count(prompt: str) -> int:
    """Tokens `tokenize` needs for this prompt, SOT and EOT included: above 77 the prompt is cut."""
    return len(_tokenizer().encode(prompt)) + 2
