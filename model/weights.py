"""Checkpoint names, the LDM <-> diffusers / HF mapping tables, and strict checkpoint reading.

Reading never unpickles arbitrary objects (`.ckpt` goes through torch.load(weights_only=True))
and never tolerates a missing, unexpected or mis-shaped tensor: the only entries skipped are the
documented unused ones (sd2-inpainting.md §7.1 "Safe loader rule").

Each component has ONE mapping table of (LDM module prefix, diffusers module prefix) pairs built
from the config (sd2-inpainting.md §7.3-§7.5); the converters apply it by longest dotted prefix,
in either direction. Converters work on component state dicts without the LDM prefix (the keys
of `model.unet.state_dict()` etc.).
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping

import torch

from .config import SD2Config, TextConfig, UNetConfig, VAEConfig


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded strictly (missing/unexpected/mis-shaped/corrupt/unsafe)."""


PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.model.",
}

# Unprefixed DDPM schedule buffers stored in the single file (§7.1); the sampler recomputes them.
DDPM_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    }
)


def is_ignored(name: str, text: TextConfig) -> bool:
    """The documented unused single-file entries (§7.1): DDPM buffers, model_ema.*, the last text
    block (SD2 uses the penultimate one, §9.2), text_projection and logit_scale."""
    t = PREFIXES["text_encoder"]
    return (
        name in DDPM_BUFFERS
        or name.startswith("model_ema.")
        or name.startswith(f"{t}transformer.resblocks.{text.layers - 1}.")
        or name in (f"{t}text_projection", f"{t}logit_scale")
    )


def describe(names: Iterable[str], limit: int = 10) -> str:
    names = sorted(names)
    head = ", ".join(names[:limit])
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)}: {head}{more}"


def check_names_and_shapes(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raise WeightsError naming every missing, unexpected or mis-shaped tensor."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    bad = [f"{k} (file {list(found[k])}, model {list(expected[k])})" for k in expected.keys() & found.keys() if tuple(found[k]) != tuple(expected[k])]
    problems = []
    if missing:
        problems.append(f"missing tensors {describe(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {describe(unexpected)}")
    if bad:
        problems.append(f"wrong shapes {describe(bad)}")
    if problems:
        raise WeightsError(f"{source}: " + "; ".join(problems))


# --------------------------------------------------------------------------- mapping tables

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
# Diffusers 0.8-era VAE attention names, renamed on load by current diffusers (§7.4).
_VAE_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_TEXT_BLOCK = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))


def _expand(ldm: str, diff: str, inner: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(f"{ldm}.{a}", f"{diff}.{b}") for a, b in inner]


def unet_name_table(cfg: UNetConfig) -> list[tuple[str, str]]:
    """(LDM, diffusers) module prefixes for the UNet (§7.3)."""
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
        if i != levels - 1:  # the Upsample sits at .1 without attention, .2 with it (§9.10)
            table.append((f"output_blocks.{i * (r + 1) + r}.{2 if attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv"))
    table += [("out.0", "conv_norm_out"), ("out.2", "conv_out")]
    return table


def vae_name_table(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(LDM, diffusers) module prefixes for the VAE (§7.4); decoder level indices are reversed (§9.9)."""
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
    """(OpenCLIP, HF CLIPTextModel without `text_model.`) prefixes (§7.5); in_proj is split separately."""
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
    """Mid-attention 1x1 conv weights [C, C, 1, 1] become Linear [C, C] (§9.7)."""
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

    The packed in_proj rows [q; k; v] are split into q_proj/k_proj/v_proj (§7.5)."""
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


# --------------------------------------------------------------------------- reading files


class TensorSource:
    """Names and shapes of the available tensors, plus a getter that reads one tensor at a time."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], get: Callable[[str], torch.Tensor], close: Callable[[], None] = lambda: None):
        self.shapes = shapes
        self.get = get
        self.close = close


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _safetensors_header(path: str) -> tuple[int, dict]:
    """(offset of the data section, header dict) of a safetensors file: u64 LE length + JSON."""
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def open_safetensors(path: str, zero_copy: bool = True) -> TensorSource:
    """A safetensors file; header and size problems become a WeightsError naming the file.

    zero_copy=True: tensors come memory-mapped by safetensors (the CPU, same-dtype case: the
    weights are the file's pages, ~1x memory). zero_copy=False: each tensor is read with plain
    file reads into a fresh buffer, so converting dtype or moving to a GPU never leaves the whole
    mapped file resident on top of the result (peak ~ result + one tensor).
    """
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(path, framework="pt", device="cpu")  # validates header and file size
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        if not zero_copy:
            start, header = _safetensors_header(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e

    def get_mapped(name: str) -> torch.Tensor:
        try:
            return handle.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise WeightsError(f"{path}: cannot read tensor {name}: {e}") from e

    def get_read(name: str) -> torch.Tensor:
        entry = header[name]
        begin, end = entry["data_offsets"]
        buf = torch.empty(end - begin, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(start + begin)
            if f.readinto(memoryview(buf.numpy())) != end - begin:
                raise WeightsError(f"{path}: short read for tensor {name} (truncated file?)")
        return buf.view(_ST_DTYPES[entry["dtype"]]).reshape(entry["shape"])

    return TensorSource(shapes, get_mapped if zero_copy else get_read)


def open_ckpt(path: str) -> TensorSource:
    """A pickled checkpoint, only through the restricted weights_only unpickler (never arbitrary code)."""
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message goes on to suggest weights_only=False; keep only what the file asked for.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (it asks for {found.group(1)})" if found else ""
        raise WeightsError(f"{path}: refused to unpickle: the file needs objects other than tensors and "
                           f"containers{what}; only safetensors or torch.load(weights_only=True) checkpoints are "
                           f"loaded, never arbitrary code") from e
    except Exception as e:  # zip/EOF/format errors from a truncated or foreign file
        raise WeightsError(f"{path}: cannot read checkpoint (truncated or corrupt?): {e}") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise WeightsError(f"{path}: expected a dict of tensors (optionally under 'state_dict')")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{path}: non-tensor entries {describe(bad)}")
    return TensorSource({k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__)


def open_weights_file(path: str, zero_copy: bool = True) -> TensorSource:
    if path.endswith((".ckpt", ".pt", ".pth", ".bin")):
        return open_ckpt(path)
    return open_safetensors(path, zero_copy)


def split_single_file(src: TensorSource, expected: Mapping[str, Mapping[str, tuple[int, ...]]], cfg: SD2Config, source: str) -> dict[str, list[str]]:
    """Check a single-file checkpoint's names/shapes strictly; return the file names per component.

    `expected[component]` maps unprefixed names to shapes (from the model built on meta).
    """
    flat = {PREFIXES[c] + k: s for c, names in expected.items() for k, s in names.items()}
    found = {k: s for k, s in src.shapes.items() if not is_ignored(k, cfg.text)}
    check_names_and_shapes(flat, found, source)
    return {c: [PREFIXES[c] + k for k in names] for c, names in expected.items()}


def diffusers_unet_config(cfg: UNetConfig, sample_size: int = 64) -> dict:
    """Keyword arguments for diffusers' UNet2DConditionModel with our structure (§7.2); plain data, so the
    runtime never imports diffusers. Its "attention_head_dim" is really the number of heads (§9.8)."""
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
    """Keyword arguments for diffusers' AutoencoderKL with our structure (§7.2)."""
    n = len(cfg.ch_mult)
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.in_channels, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.level_channels),
        layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels, norm_num_groups=cfg.norm_groups,
        act_fn="silu", sample_size=512, scaling_factor=0.18215,  # SD2Config.scale_factor (§3.1)
    )


def check_safetensors_header(header: Mapping, cfg: SD2Config, source: str) -> None:
    """Check a single file's parsed safetensors header (name -> {"shape": ...}) strictly, without its data.

    Lets a caller validate remote weights from the first bytes of the file before committing any work.
    """
    from .sd2 import build_meta

    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    split_single_file(_Shapes(shapes), build_meta(cfg).expected_shapes(), cfg, source)


class _Shapes:
    def __init__(self, shapes):
        self.shapes = shapes


DIFFUSERS_FILES = {
    "unet": ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "vae": ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
}


def diffusers_component_file(folder: str, component: str, exists: Callable[[str], bool] = os.path.exists) -> str:
    for rel in DIFFUSERS_FILES[component]:
        if exists(os.path.join(folder, rel)):
            return rel
    raise WeightsError(f"{folder}: diffusers layout needs one of {list(DIFFUSERS_FILES[component])}")


def read_diffusers_component(path: str, component: str, cfg: SD2Config) -> dict[str, torch.Tensor]:
    """Read one diffusers/HF component file and convert it to our (LDM / OpenCLIP) names."""
    src = open_weights_file(path)
    sd = {k: src.get(k) for k in src.shapes}
    if component == "unet":
        return diffusers_to_ldm_unet(sd, cfg.unet)
    if component == "vae":
        return diffusers_to_ldm_vae(sd, cfg.vae)
    return hf_to_openclip_text(sd, cfg.text)
