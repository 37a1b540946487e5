"""Name conversion between our checkpoint layout (LDM UNet and VAE, OpenCLIP text) and diffusers / HF.

Each component has ONE table of (LDM module prefix, diffusers module prefix) pairs built from the config
(docs/model.md §7.4-§7.6); the converters apply it by longest dotted prefix, in either direction, plus the few
reshapes the two layouts differ by. Converters work on component state dicts without the LDM prefix (the keys of
`model.unet.state_dict()` etc.); a name the table does not map is a WeightsError, never silently dropped.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from .checkpoint import WeightsError, describe
from .config import SD2Config, TextConfig, UNetConfig, VAEConfig

_UNET_RES = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)
_VAE_RES = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"), ("nin_shortcut", "conv_shortcut"))
_VAE_ATTN = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
# Diffusers 0.8-era VAE attention names, renamed on load by current diffusers (docs/model.md §7.5).
_VAE_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TEXT_BLOCK = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def _expand(ldm: str, diff: str, inner: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"{ldm}.{a}", f"{diff}.{b}") for a, b in inner]


def unet_name_table(cfg: UNetConfig) -> list[tuple[str, str]]:
    """(LDM, diffusers) module prefixes for the UNet (docs/model.md §7.4)."""
    levels, r = len(cfg.channel_mult), cfg.num_res_blocks
    table = [("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"), ("input_blocks.0.0", "conv_in")]
    for i in range(levels):
        for j in range(r):
            n = 1 + i * (r + 1) + j
            table += _expand(f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}", _UNET_RES)
            if i in cfg.attention_levels:
                table.append((f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}"))
        if i != levels - 1:
            table.append((f"input_blocks.{1 + i * (r + 1) + r}.0.op", f"down_blocks.{i}.downsamplers.0.conv"))
    table += _expand("middle_block.0", "mid_block.resnets.0", _UNET_RES)
    table.append(("middle_block.1", "mid_block.attentions.0"))
    table += _expand("middle_block.2", "mid_block.resnets.1", _UNET_RES)
    for i in range(levels):  # diffusers up block i runs level levels-1-i
        attn = (levels - 1 - i) in cfg.attention_levels
        for j in range(r + 1):
            n = i * (r + 1) + j
            table += _expand(f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}", _UNET_RES)
            if attn:
                table.append((f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}"))
        if i != levels - 1:  # the Upsample sits at .1 without attention, .2 with it (docs/model.md §8.10)
            table.append((f"output_blocks.{i * (r + 1) + r}.{2 if attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv"))
    table += [("out.0", "conv_norm_out"), ("out.2", "conv_out")]
    return table


def vae_name_table(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(LDM, diffusers) module prefixes for the VAE; decoder level indices are reversed (docs/model.md §7.5)."""
    levels, r = len(cfg.ch_mult), cfg.num_res_blocks
    table = [(n, n) for n in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv")]
    table += [("encoder.norm_out", "encoder.conv_norm_out"), ("decoder.norm_out", "decoder.conv_norm_out")]
    for i in range(levels):
        for j in range(r):
            table += _expand(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", _VAE_RES)
        if i != levels - 1:
            table.append((f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv"))
        for j in range(r + 1):
            table += _expand(f"decoder.up.{levels - 1 - i}.block.{j}", f"decoder.up_blocks.{i}.resnets.{j}", _VAE_RES)
        if i != levels - 1:
            table.append((f"decoder.up.{levels - 1 - i}.upsample.conv", f"decoder.up_blocks.{i}.upsamplers.0.conv"))
    for part in ("encoder", "decoder"):
        table += _expand(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", _VAE_RES)
        table += _expand(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", _VAE_RES)
        table += _expand(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", _VAE_ATTN)
    return table


def text_name_table(cfg: TextConfig) -> list[tuple[str, str]]:
    """(OpenCLIP, HF CLIPTextModel without `text_model.`) prefixes (docs/model.md §7.6); in_proj is split apart."""
    table = [
        ("token_embedding", "embeddings.token_embedding"),
        ("positional_embedding", "embeddings.position_embedding.weight"),
        ("ln_final", "final_layer_norm"),
    ]
    for n in range(cfg.built_layers):
        table += _expand(f"transformer.resblocks.{n}", f"encoder.layers.{n}", _TEXT_BLOCK)
    return table


def _rename(sd: Mapping[str, torch.Tensor], table: list[tuple[str, str]], what: str) -> dict[str, torch.Tensor]:
    """Apply a prefix table by longest dotted prefix; an unmapped name is an error."""
    lookup = dict(table)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in sd.items():
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            new = lookup.get(".".join(parts[:i]))
            if new is not None:
                out[".".join([new, *parts[i:]])] = value
                break
        else:
            unknown.append(name)
    if unknown:
        raise WeightsError(f"{what}: no mapping for tensors {describe(unknown)}")
    return out


def _inverse(table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(b, a) for a, b in table]


def _is_vae_attn_weight(ldm_name: str) -> bool:
    return ".mid.attn_1." in ldm_name and ldm_name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))


def ldm_to_diffusers_unet(sd: Mapping[str, torch.Tensor], config: UNetConfig | None = None) -> dict[str, torch.Tensor]:
    return _rename(sd, unet_name_table(config or UNetConfig()), "UNet LDM->diffusers")


def diffusers_to_ldm_unet(sd: Mapping[str, torch.Tensor], config: UNetConfig | None = None) -> dict[str, torch.Tensor]:
    return _rename(sd, _inverse(unet_name_table(config or UNetConfig())), "UNet diffusers->LDM")


def ldm_to_diffusers_vae(sd: Mapping[str, torch.Tensor], config: VAEConfig | None = None) -> dict[str, torch.Tensor]:
    """Mid-attention 1x1 conv weights [C, C, 1, 1] become Linear [C, C] (docs/model.md §7.5)."""
    sd = {k: (v[:, :, 0, 0] if _is_vae_attn_weight(k) else v) for k, v in sd.items()}
    return _rename(sd, vae_name_table(config or VAEConfig()), "VAE LDM->diffusers")


def diffusers_to_ldm_vae(sd: Mapping[str, torch.Tensor], config: VAEConfig | None = None) -> dict[str, torch.Tensor]:
    """Accepts both current (to_q/to_k/to_v/to_out.0) and legacy (query/key/value/proj_attn) names."""
    norm = {}
    for k, v in sd.items():
        head, sep, tail = k.partition(".mid_block.attentions.0.")
        if sep:
            leaf, _, param = tail.rpartition(".")
            k = f"{head}{sep}{_VAE_LEGACY.get(leaf, leaf)}.{param}"
        norm[k] = v
    out = _rename(norm, _inverse(vae_name_table(config or VAEConfig())), "VAE diffusers->LDM")
    return {k: (v.reshape(*v.shape, 1, 1) if _is_vae_attn_weight(k) and v.ndim == 2 else v) for k, v in out.items()}


def openclip_to_hf_text(sd: Mapping[str, torch.Tensor], config: TextConfig | None = None) -> dict[str, torch.Tensor]:
    """OpenCLIP text names -> HF CLIPTextModel names (transformers 5 style, no `text_model.`).

    The packed in_proj rows [q; k; v] are split into q_proj/k_proj/v_proj (docs/model.md §7.6)."""
    rest = {}
    out = {}
    for k, v in sd.items():
        head, sep, param = k.partition(".attn.in_proj_")
        if sep:
            layer = head.removeprefix("transformer.resblocks.")
            for part, chunk in zip(("q", "k", "v"), v.chunk(3, dim=0)):
                out[f"encoder.layers.{layer}.self_attn.{part}_proj.{param}"] = chunk
        else:
            rest[k] = v
    out.update(_rename(rest, text_name_table(config or TextConfig()), "text OpenCLIP->HF"))
    return out


def hf_to_openclip_text(sd: Mapping[str, torch.Tensor], config: TextConfig | None = None) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel names (with or without `text_model.`) -> OpenCLIP; `position_ids` ignored."""
    cfg = config or TextConfig()
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    sd.pop("embeddings.position_ids", None)
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    rest = {}
    for k, v in sd.items():
        head, sep, tail = k.partition(".self_attn.")
        part = tail.split("_proj.")[0] if sep else ""
        if part in ("q", "k", "v"):
            layer = head.removeprefix("encoder.layers.")
            qkv.setdefault((layer, tail.rpartition(".")[2]), {})[part] = v
        else:
            rest[k] = v
    out = _rename(rest, _inverse(text_name_table(cfg)), "text HF->OpenCLIP")
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"text HF->OpenCLIP: layer {layer} {param}: need q, k and v projections, found {sorted(parts)}")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def diffusers_to_ldm(component: str, sd: Mapping[str, torch.Tensor], cfg: SD2Config) -> dict[str, torch.Tensor]:
    """One component of a diffusers folder (diffusers / HF names) under our names."""
    if component == "unet":
        return diffusers_to_ldm_unet(sd, cfg.unet)
    if component == "vae":
        return diffusers_to_ldm_vae(sd, cfg.vae)
    return hf_to_openclip_text(sd, cfg.text)


__all__ = ["unet_name_table", "vae_name_table", "text_name_table", "ldm_to_diffusers_unet", "diffusers_to_ldm_unet",
           "ldm_to_diffusers_vae", "diffusers_to_ldm_vae", "openclip_to_hf_text", "hf_to_openclip_text",
           "diffusers_to_ldm"]
