"""Text encoder and tokenizer against open_clip's own text tower and HF CLIPTextModel.

Oracles: open_clip's TextTransformer (forward_intermediates on the penultimate block with its
ln_final, and a hand loop over its public blocks), and transformers' CLIPTextModel with
layers-1 hidden layers loaded through our openclip_to_hf_text mapping (docs/model.md §4, §7.6).
"""
from __future__ import annotations

import csv
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import TextTransformer

from rayinpaint.model import PRESETS, TextConfig, hf_to_openclip_text, load_model, openclip_to_hf_text
from rayinpaint.model.checkpoint import WeightsError
from rayinpaint.model.sd2 import random_init_
from rayinpaint.model.text import TextEncoder

DATA = Path(__file__).resolve().parents[1] / "data"
PROMPTS = [
    "a photo of a cat sitting on a red sofa, highly detailed",
    "",
    "!",
    " ".join(f"word{i}" for i in range(120)),  # longer than 77 tokens: truncated, EOT forced
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def openclip_tower(cfg: TextConfig, seed: int = 0) -> TextTransformer:
    """open_clip's own text tower with all `layers` blocks, randomised including LayerNorms."""
    torch.manual_seed(seed)
    tower = TextTransformer(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.width,
        heads=cfg.heads,
        layers=cfg.layers,
        output_dim=cfg.width,
    ).eval()
    with torch.no_grad():
        for name, p in tower.named_parameters():
            if p.ndim == 1:  # LayerNorm scales/shifts and biases default to 1/0: make them non-trivial
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return tower


def ours_from_openclip(tower: TextTransformer, cfg: TextConfig) -> TextEncoder:
    sd = {
        k: v
        for k, v in tower.state_dict().items()
        if not k.startswith(f"transformer.resblocks.{cfg.layers - 1}.") and k not in ("text_projection", "logit_scale")
    }
    enc = TextEncoder(cfg).eval()
    enc.load_state_dict(sd, strict=True)
    return enc


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return load_model("random:tiny").tokenize(PROMPTS)


def test_tokens_match_open_clip_vit_h14(tokens):
    expected = open_clip.get_tokenizer("ViT-H-14")(PROMPTS)
    assert tokens.dtype == torch.int64 and tokens.shape == (len(PROMPTS), 77)
    assert torch.equal(tokens, expected)


def test_token_conventions(tokens):
    """SOT 49406, EOT 49407, zero padding, "!" is a real token (256), truncation forces EOT (docs/model.md §4.2)."""
    assert tokens[1, :3].tolist() == [49406, 49407, 0] and not tokens[1, 2:].any()
    assert tokens[2, :4].tolist() == [49406, 256, 49407, 0]
    assert tokens[3, 0] == 49406 and tokens[3, -1] == 49407 and (tokens[3] != 0).all()
    first = tokens[0].tolist()
    assert first[0] == 49406 and 49407 in first and first[first.index(49407) + 1:] == [0] * (76 - first.index(49407))


def test_text_encoder_matches_open_clip_penultimate(tokens):
    cfg = PRESETS["tiny"].text
    tower = openclip_tower(cfg)
    enc = ours_from_openclip(tower, cfg)
    with torch.inference_mode():
        ours = enc(tokens)
        # 1) open_clip's public forward_intermediates: penultimate block, normalised by its ln_final
        ref = tower.forward_intermediates(tokens, indices=[cfg.layers - 2], normalize_intermediates=True, intermediates_only=True, output_fmt="NLC")["text_intermediates"][0]
        # 2) its public modules by hand, batch-first, causal mask
        x = tower.token_embedding(tokens) + tower.positional_embedding
        for blk in tower.transformer.resblocks[: cfg.layers - 1]:
            x = blk(x, attn_mask=tower.attn_mask)
        by_hand = tower.ln_final(x)
    assert ours.shape == (len(PROMPTS), 77, cfg.width)
    assert rel_err(ours, ref) <= 1e-5
    assert rel_err(ours, by_hand) <= 1e-5
    # the full tower (last block included) is something else: we really stop at the penultimate
    with torch.inference_mode():
        last = tower.forward_intermediates(tokens, indices=[cfg.layers - 1], normalize_intermediates=True, intermediates_only=True, output_fmt="NLC")["text_intermediates"][0]
    assert rel_err(ours, last) > 1e-2


def test_causal_mask_earlier_tokens_ignore_later_ones():
    enc = random_init_(TextEncoder(PRESETS["tiny"].text), seed=4).eval()
    a = torch.tensor([[49406, 320, 1125, 49407] + [0] * 73])
    b = a.clone()
    b[0, 2] = 2368
    with torch.inference_mode():
        ya, yb = enc(a), enc(b)
    assert torch.equal(ya[0, :2], yb[0, :2])
    assert not torch.allclose(ya[0, 2:], yb[0, 2:])


def _hf_text_model(cfg: TextConfig):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=int(cfg.width * cfg.mlp_ratio),
        num_hidden_layers=cfg.layers - 1,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.context_length,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    return transformers.CLIPTextModel(hf_cfg).eval()


def test_text_encoder_matches_hf_clip_text_model(tokens):
    cfg = PRESETS["tiny"].text
    enc = random_init_(TextEncoder(cfg), seed=5, prefix="cond_stage_model.model.").eval()
    hf = _hf_text_model(cfg)
    hf.load_state_dict(openclip_to_hf_text(enc.state_dict(), cfg), strict=True)
    with torch.inference_mode():
        ours = enc(tokens)
        ref = hf(input_ids=tokens).last_hidden_state
    assert rel_err(ours, ref) <= 1e-5
    # and back: HF names (with the transformers-4 `text_model.` prefix and position_ids) -> ours
    hf_sd = {f"text_model.{k}": v for k, v in hf.state_dict().items()}
    hf_sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    back = hf_to_openclip_text(hf_sd, cfg)
    for k, v in enc.state_dict().items():
        assert torch.equal(back[k], v), k
    assert back.keys() == enc.state_dict().keys()


def test_hf_mapping_rejects_unknown_names():
    cfg = PRESETS["tiny"].text
    enc = random_init_(TextEncoder(cfg), seed=6)
    sd = openclip_to_hf_text(enc.state_dict(), cfg)
    sd["encoder.layers.0.surprise.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="surprise"):
        hf_to_openclip_text(sd, cfg)


def _tsv(name: str) -> dict[str, tuple[int, ...]]:
    with open(DATA / name) as f:
        return {row[0]: tuple(int(x) for x in row[1].strip("[]").split(",") if x.strip()) for row in csv.reader(f, delimiter="\t")}


def test_full_config_names_match_openclip_and_hf_key_lists():
    """Full ViT-H-14 text tower (meta): our names/shapes equal the checkpoint's minus the unused
    entries, and our HF mapping produces exactly HF CLIPTextModel's key list."""
    cfg = PRESETS["sd2-inpainting"].text
    with torch.device("meta"):
        enc = TextEncoder(cfg)
    ours = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    stored = _tsv("openclip_text_keys.tsv")
    prefix = "cond_stage_model.model."
    used = {
        k[len(prefix):]: s
        for k, s in stored.items()
        if not k.startswith(f"{prefix}transformer.resblocks.23.") and k not in (f"{prefix}text_projection", f"{prefix}logit_scale")
    }
    assert ours == used
    hf = {k: tuple(v.shape) for k, v in openclip_to_hf_text(enc.state_dict(), cfg).items()}
    assert hf == _tsv("hf_clip_text_keys.tsv")
