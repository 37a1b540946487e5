"""SD2Inpaint (UNet + VAE + text encoder) and `load_model`, the package's entry point.

The model is always built on the meta device first, then its tensors are assigned one by one
(read from a memory-mapped file, or drawn at random) already in the target dtype, so loading
needs about the model's size in memory, not twice it.
"""
from __future__ import annotations

import hashlib
import os

import torch
from torch import nn

from .checkpoint import (
    COMPONENTS,
    PREFIXES,
    WeightsError,
    check_names_and_shapes,
    component_shapes,
    diffusers_component_file,
    open_weights_file,
    split_single_file,
)
from .config import PRESETS, SD2Config, get_config
from .convert import diffusers_to_ldm
from .fetch import fetch, is_local, local_path, remote_isdir
from .speed import auto_dtype
from .text import TextEncoder, tokenize
from .unet import UNet
from .vae import VAE


class SD2Inpaint(nn.Module):
    """Holds `unet`, `vae` and `text_encoder`; see model/__init__.py for the call contract."""

    def __init__(self, config: SD2Config, source: str = "", sha256: str = ""):
        super().__init__()
        self.config = config
        self.scale_factor = config.scale_factor
        self.source = source
        self.sha256 = sha256
        self.unet = UNet(config.unet)
        self.vae = VAE(config.vae)
        self.text_encoder = TextEncoder(config.text)

    @property
    def device(self) -> torch.device:
        return self.unet.time_embed[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.time_embed[0].weight.dtype

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """int64 [B, 77] open_clip ViT-H-14 tokens (SOT 49406, EOT 49407, pad 0), on CPU."""
        return tokenize(prompts, self.config.text.context_length)

    def expected_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Per component, the persistent state-dict names (without the LDM prefix) and shapes."""
        return component_shapes({c: getattr(self, c) for c in COMPONENTS})

    def reset_buffers(self, device: torch.device | str) -> None:
        self.unet.reset_buffers(device)
        self.text_encoder.reset_buffers(device)


def single_file_state_dict(model: SD2Inpaint) -> dict[str, torch.Tensor]:
    """The model's tensors under the single-file (LDM) names: the layout `load_model` reads back
    (docs/model.md §7.1)."""
    return {PREFIXES[c] + k: v.contiguous() for c in COMPONENTS for k, v in getattr(model, c).state_dict().items()}


def build_meta(config: SD2Config, source: str = "", sha256: str = "") -> SD2Inpaint:
    with torch.device("meta"):
        return SD2Inpaint(config, source, sha256)


def _finish(model: SD2Inpaint, device: torch.device | str) -> SD2Inpaint:
    model.reset_buffers(device)
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- random weights


def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Deterministic, non-trivial fp32 values for one parameter, independent of the others.

    Weights ~ N(0, 1/fan_in) keep activations O(1) through the deep stacks; 1-D `weight`s (norm
    scales) ~ 1 + 0.1 N; biases ~ 0.05 N; embeddings small. Nothing is zero, including the out
    convs that training zero-initialises, so parity tests exercise every tensor.
    """
    g = torch.Generator().manual_seed(_seed_for(seed, name))
    t = torch.randn(shape, generator=g, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if "embedding" in name:
        return t.mul_(0.02)
    if len(shape) >= 2:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return t.mul_(fan_in ** -0.5)
    if leaf == "weight":
        return t.mul_(0.1).add_(1.0)
    return t.mul_(0.05)


def random_state_dict(module: nn.Module, seed: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", prefix: str = "") -> dict[str, torch.Tensor]:
    """Random values for every persistent state-dict entry of `module` (which may be on meta).

    `prefix` is mixed into each tensor's seed (use the LDM prefix so components differ)."""
    return {
        k: random_tensor(prefix + k, tuple(v.shape), seed).to(device=device, dtype=dtype)
        for k, v in module.state_dict().items()
    }


def random_init_(module: nn.Module, seed: int = 0, prefix: str = "") -> nn.Module:
    """Fill a (real or meta) module in place with `random_state_dict` values, keeping its dtype/device."""
    ref = next(module.parameters())
    device = "cpu" if ref.device.type == "meta" else ref.device
    module.load_state_dict(random_state_dict(module, seed, ref.dtype, device, prefix), strict=True, assign=True)
    return module


def _parse_random(spec: str) -> tuple[str, int]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[1] not in ("tiny", "sd2"):
        raise ValueError(f"bad random weights spec {spec!r}; use random:tiny, random:sd2 or random:<name>:<seed>")
    try:
        seed = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise ValueError(f"bad seed in {spec!r}") from None
    return parts[1], seed


# --------------------------------------------------------------------------- load_model


def load_model(
    weights: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    config: SD2Config | str | None = None,
    *,
    cache_dir: str | None = None,
    sha256: str | None = None,
    storage_options: dict | None = None,
) -> SD2Inpaint:
    """Build SD2Inpaint from a checkpoint URI, a diffusers folder, or `random:{tiny,sd2}[:seed]`.

    weights: local path or fsspec URI of a single-file .safetensors (LDM names) or .ckpt, or a
    diffusers-layout folder. Remote files are cached once per node (see fetch.py). `config`
    defaults to the SD2 preset (the tiny preset for random:tiny). `sha256`: expected file hash.
    `storage_options`: fsspec filesystem kwargs for remote URIs (s3fs endpoint, region, ...).
    dtype: a torch dtype, or "auto" (bfloat16 on a GPU that supports it, else float16; float32 off CUDA).
    """
    weights = os.fspath(weights)
    device = torch.device(device)
    if dtype == "auto":
        dtype = auto_dtype(device)
    if weights.startswith("random:"):
        name, seed = _parse_random(weights)
        cfg = get_config(config if config is not None else PRESETS["tiny" if name == "tiny" else "sd2-inpainting"])
        model = build_meta(cfg, weights, f"random:{name}:{seed}")
        for c in COMPONENTS:
            part = getattr(model, c)
            part.load_state_dict(random_state_dict(part, seed, dtype, device, PREFIXES[c]), strict=True, assign=True)
        return _finish(model, device)

    cfg = get_config(config)
    if remote_isdir(weights, storage_options):
        return _load_diffusers_folder(weights, cfg, device, dtype, cache_dir, storage_options)

    local = fetch(weights, cache_dir=cache_dir, sha256=sha256, storage_options=storage_options)
    model = build_meta(cfg, weights, local.sha256)
    # Zero-copy memory map only when the file's tensors can be used as they are (CPU, same
    # dtype); otherwise read tensor by tensor so the mapped file never sits in memory as well.
    src = open_weights_file(local.path, zero_copy=device.type == "cpu" and dtype == torch.float32)
    names = split_single_file(src, model.expected_shapes(), cfg, weights)
    for c in COMPONENTS:
        prefix = PREFIXES[c]
        sd = {k[len(prefix):]: src.get(k).to(device=device).to(dtype=dtype) for k in names[c]}
        getattr(model, c).load_state_dict(sd, strict=True, assign=True)
        del sd
    return _finish(model, device)


def _load_diffusers_folder(
    folder: str, cfg: SD2Config, device: torch.device, dtype: torch.dtype, cache_dir: str | None, storage_options: dict | None
) -> SD2Inpaint:
    """unet/, vae/, text_encoder/ safetensors (or .bin) files with diffusers / HF names (docs/model.md §7.3)."""
    model = build_meta(cfg, folder)
    expected = model.expected_shapes()
    digests = []
    if is_local(folder):
        base = local_path(folder)
        rels = {c: diffusers_component_file(base, c) for c in COMPONENTS}
    else:
        import fsspec

        fs, root = fsspec.core.url_to_fs(folder, **(storage_options or {}))
        rels = {c: diffusers_component_file(root, c, fs.exists) for c in COMPONENTS}
    for c in COMPONENTS:
        uri = folder.rstrip("/") + "/" + rels[c]
        local = fetch(uri, cache_dir=cache_dir, storage_options=storage_options)
        digests.append(f"{rels[c]}:{local.sha256}")
        src = open_weights_file(local.path)
        sd = diffusers_to_ldm(c, {k: src.get(k) for k in src.shapes}, cfg)
        check_names_and_shapes(expected[c], {k: tuple(v.shape) for k, v in sd.items()}, uri)
        sd = {k: v.to(device=device).to(dtype=dtype) for k, v in sd.items()}
        getattr(model, c).load_state_dict(sd, strict=True, assign=True)
        del sd
    # One stable identity for the folder: hash of the component files' hashes.
    model.sha256 = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return _finish(model, device)


__all__ = ["SD2Inpaint", "load_model", "single_file_state_dict", "build_meta", "random_init_", "random_state_dict", "random_tensor", "WeightsError", "COMPONENTS"]
