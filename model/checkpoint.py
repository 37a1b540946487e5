"""The checkpoint itself: what a file must hold, reading it safely, and checking it strictly.

Reading never unpickles arbitrary objects (`.ckpt` goes through torch.load(weights_only=True)) and never
tolerates a missing, unexpected or mis-shaped tensor: the only entries skipped are the documented unused ones
(docs/model.md §7.2). Name conversion to and from diffusers / HF lives in model/convert.py.
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO

import torch
from torch import nn

from .config import SD2Config, TextConfig
from .text import TextEncoder
from .unet import UNet
from .vae import VAE


class WeightsError(ValueError):
    """A checkpoint that cannot be loaded strictly (missing/unexpected/mis-shaped/corrupt/unsafe)."""


PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.model.",
}
COMPONENTS = tuple(PREFIXES)

# Unprefixed DDPM schedule buffers in the single file (docs/model.md §7.2); the sampler recomputes them.
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
    """The documented unused single-file entries (docs/model.md §7.2): DDPM buffers, model_ema.*, the last
    text block (SD2 uses the penultimate one), text_projection and logit_scale."""
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


def component_shapes(parts: Mapping[str, nn.Module]) -> dict[str, dict[str, tuple[int, ...]]]:
    """Per component, the persistent state-dict names (without the LDM prefix) and their shapes."""
    return {c: {k: tuple(v.shape) for k, v in m.state_dict().items()} for c, m in parts.items()}


def expected_shapes(cfg: SD2Config) -> dict[str, dict[str, tuple[int, ...]]]:
    """What a checkpoint for `cfg` must hold, from the three modules built on meta (no memory, no values)."""
    with torch.device("meta"):
        return component_shapes({"unet": UNet(cfg.unet), "vae": VAE(cfg.vae), "text_encoder": TextEncoder(cfg.text)})


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


MAX_HEADER_BYTES = 100_000_000  # a real header is a few hundred kB; more means a corrupt or foreign file


def read_safetensors_header(f: BinaryIO) -> dict:
    """The header of a safetensors file open for binary reading at its start (a local or an fsspec file):
    name -> {"dtype", "shape", "data_offsets"}, plus an optional "__metadata__" (docs/model.md §7.1). Leaves `f`
    at the start of the data section."""
    first = f.read(8)
    if len(first) != 8:
        raise WeightsError(f"safetensors header: {len(first)} bytes where the 8-byte header length should be")
    (n,) = struct.unpack("<Q", first)
    if n > MAX_HEADER_BYTES:
        raise WeightsError(f"safetensors header: length {n} is not plausible (over {MAX_HEADER_BYTES} bytes)")
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise WeightsError(f"safetensors header: not readable JSON: {e}") from None
    if not isinstance(header, dict):
        raise WeightsError(f"safetensors header: expected a JSON object, got {type(header).__name__}")
    return header


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
            with open(path, "rb") as f:
                header = read_safetensors_header(f)
                start = f.tell()
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
        raise refused_to_unpickle(path, e) from e
    except Exception as e:  # zip/EOF/format errors from a truncated or foreign file
        raise WeightsError(f"{path}: cannot read checkpoint (truncated or corrupt?): {e}") from e
    sd = state_dict_of(obj, path)
    return TensorSource({k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__)


def refused_to_unpickle(name: str, e: Exception) -> WeightsError:
    """The one line for a checkpoint the weights_only unpickler refused (torch's message goes on to suggest
    weights_only=False; keep only what the file asked for)."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    what = f" (it asks for {found.group(1)})" if found else ""
    return WeightsError(f"{name}: refused to unpickle: the file needs objects other than tensors and "
                        f"containers{what}; only safetensors or torch.load(weights_only=True) checkpoints are "
                        f"loaded, never arbitrary code")


def state_dict_of(obj, name: str) -> dict:
    """The dict of tensors an unpickled checkpoint holds (optionally under 'state_dict'), or WeightsError."""
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise WeightsError(f"{name}: expected a dict of tensors (optionally under 'state_dict')")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{name}: non-tensor entries {describe(bad)}")
    return sd


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


def check_safetensors_header(header: Mapping, cfg: SD2Config, source: str) -> None:
    """Check a single file's parsed safetensors header (name -> {"shape": ...}) strictly, without its data.

    Lets a caller validate remote weights from the first bytes of the file before committing any work.
    """
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    split_single_file(TensorSource(shapes, _no_data), expected_shapes(cfg), cfg, source)


def _no_data(name: str) -> torch.Tensor:
    raise WeightsError(f"{name}: a header holds no tensor data")


# Each component's file in a diffusers folder, the preferred one first (docs/model.md §7.3).
DIFFUSERS_FILES = {
    "unet": ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.bin"),
    "vae": ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin"),
}


def diffusers_component_file(folder: str, component: str, exists: Callable[[str], bool] = os.path.exists) -> str:
    """`component`'s file in a diffusers folder, relative to it; `exists` tests a path (fsspec's when remote)."""
    for rel in DIFFUSERS_FILES[component]:
        if exists(os.path.join(folder, rel)):
            return rel
    raise WeightsError(f"{folder}: diffusers layout needs one of {list(DIFFUSERS_FILES[component])}")


__all__ = ["WeightsError", "PREFIXES", "COMPONENTS", "DDPM_BUFFERS", "DIFFUSERS_FILES", "MAX_HEADER_BYTES",
           "is_ignored", "describe", "check_names_and_shapes", "component_shapes", "expected_shapes", "TensorSource",
           "read_safetensors_header", "open_safetensors", "open_ckpt", "open_weights_file", "split_single_file",
           "check_safetensors_header", "diffusers_component_file"]
