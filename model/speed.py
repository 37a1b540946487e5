"""Speed switches for inference: each one on its own, measurable with `rayinpaint bench`, none changing results
beyond dtype tolerance (tests/model/test_parity.py on CPU, tests/test_gpu_model.py on CUDA).

| switch            | what it does                                                          | auto (None)      |
|-------------------|-----------------------------------------------------------------------|------------------|
| channels_last     | NHWC memory format for the UNet and VAE convs and the UNet input      | on for CUDA      |
| sdpa              | attention kernel of the UNet: auto, flash, efficient, cudnn, math     | auto (PyTorch's) |
| compile           | torch.compile of the UNet (fullgraph, fixed shapes), cache per node   | on for CUDA      |
| cuda_graph        | the guided UNet step replayed as one CUDA graph from static buffers   | on for CUDA only |
| fused_cfg         | both CFG halves in one UNet call on the doubled batch                 | on               |
| batch_vae         | one VAE call per batch (both encodes together when strength < 1)     | on               |
| pinned            | host->device copies from pinned memory, non-blocking                  | on for CUDA only |
| cudnn_benchmark   | cuDNN picks the fastest conv algorithm per shape                      | on for CUDA only |
| deterministic     | fixed kernels: no cuDNN benchmarking or inductor autotuning (both     | off              |
|                   | choose kernels by timing), deterministic cuDNN and torch algorithms   |                  |

Precedence: a value given explicitly > the environment variable RAYINPAINT_SPEED (e.g.
"compile=0,sdpa=flash", lets an operator or the benchmark flip a switch in every Ray actor without new options)
> the device's default above. `resolve(device)` turns every "auto" into a concrete value; CUDA-only switches
resolve to off elsewhere, so asking for them on CPU is safe and simply has no effect. The switches' names and
their "auto" rule live in model/choices.py (torch-free, for the option parser).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from .choices import (SDPA_CHOICES, SETTINGS, SPEED_ENV, SWITCH_AUTO, SWITCHES, check_combination, check_sdpa,
                      parse_switches)

ENV_VAR = SPEED_ENV


@dataclass(frozen=True)
class Speed:
    """Speed switches; None (or "auto") means: decided by the device in `resolve`."""

    channels_last: bool | None = None
    sdpa: str = "auto"
    compile: bool | None = None
    compile_mode: str | None = None  # torch.compile mode for inductor: "default", "max-autotune-no-cudagraphs", ...
    compile_backend: str | None = None  # "inductor" (tests use "aot_eager" on CPU: tracing without codegen)
    cuda_graph: bool | None = None
    fused_cfg: bool | None = None
    batch_vae: bool | None = None
    pinned: bool | None = None
    cudnn_benchmark: bool | None = None
    deterministic: bool | None = None

    def __post_init__(self) -> None:
        check_sdpa(self.sdpa)
        for name in SWITCHES:
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise ValueError(f"speed switch {name} must be true, false or None (auto), got {v!r}")
        check_combination(dataclasses.asdict(self))

    @classmethod
    def coerce(cls, speed: "Speed | Mapping | None") -> "Speed":
        if speed is None:
            return cls()
        if isinstance(speed, Speed):
            return speed
        unknown = set(speed) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown speed switch(es) {sorted(unknown)}")
        return cls(**dict(speed))

    def with_env(self, environ: Mapping[str, str] | None = None) -> "Speed":
        """Fill the switches left on auto from RAYINPAINT_SPEED ("name=value,..."; values 1/0/true/false/on/off)."""
        text = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
        if not text:
            return self
        given = parse_switches(text, f"${ENV_VAR}")
        keep = {k: v for k, v in given.items() if getattr(self, k) in (None, "auto")}
        return dataclasses.replace(self, **keep)

    def resolve(self, device: torch.device | str) -> "Speed":
        """Concrete values for `device`: CUDA gets everything on, other devices only the portable switches."""
        cuda = torch.device(device).type == "cuda"
        vals = {}
        for name, auto in SWITCH_AUTO.items():
            v = getattr(self, name)
            default = True if auto == "on" else False if auto == "off" else cuda
            vals[name] = (default if v is None else v) and (cuda or auto != "cuda_only")
        if vals["deterministic"]:
            vals["cudnn_benchmark"] = False
        vals["compile_mode"] = self.compile_mode or "default"
        vals["compile_backend"] = self.compile_backend or "inductor"
        return dataclasses.replace(self, **vals)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_fields() -> None:
    """Speed's fields are model/choices.py's names, so a switch added in one place only fails at import."""
    fields = [f.name for f in dataclasses.fields(Speed)]
    if [n for n in fields if n in SWITCH_AUTO] != list(SWITCHES) or set(fields) != set(SWITCHES) | set(SETTINGS):
        raise ImportError(f"Speed's fields {fields} differ from SWITCHES + SETTINGS in model/choices.py")


_check_fields()


def env_text(speed: Speed) -> str:
    """The RAYINPAINT_SPEED value that reproduces the explicit (non-auto) switches of `speed`."""
    items = []
    for k, v in speed.as_dict().items():
        if v is None or v == "auto":
            continue
        items.append(f"{k}={int(v) if isinstance(v, bool) else v}")
    return ",".join(items)


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on a GPU that supports it, else float16; float32 off CUDA."""
    if torch.device(device).type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def sdpa_context(choice: str) -> contextlib.AbstractContextManager:
    """Restrict scaled_dot_product_attention to one backend inside the block ("auto": PyTorch's own choice)."""
    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[choice]
    return sdpa_kernel(backend)


def set_memory_format(module: torch.nn.Module, channels_last: bool) -> None:
    """Convert the 4-D parameters (convs) to channels_last or back, in place; numerically a no-op. Anything that
    is not an nn.Module (a stand-in callable) is left alone."""
    if isinstance(module, torch.nn.Module):
        module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def vae_channels_last(channels_last: bool, device: torch.device | str) -> bool:
    """The VAE's layout: it runs eagerly, and half its layers are GroupNorms. PyTorch's CUDA GroupNorm works on
    contiguous tensors only, so in channels_last each one copies its input to contiguous and the next conv copies
    back; its CPU kernel takes channels_last as is (measured on CPU: fewer copies and faster in channels_last,
    docs/performance.md). So: channels_last with the UNet on CPU, contiguous on CUDA."""
    return channels_last and torch.device(device).type != "cuda"


def weights_channels_last(module) -> bool | None:
    """Whether the first 4-D parameter (a conv weight) is channels_last; None for a module without one."""
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            if p.dim() == 4:
                return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return None


def to_device(t: torch.Tensor, device: torch.device, pinned: bool) -> torch.Tensor:
    """Host tensor -> device. Pinned: staged in page-locked memory and copied without blocking the host (the
    caching host allocator keeps the staging block until the copy is done); else an ordinary copy."""
    if pinned and device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---- torch.compile ---------------------------------------------------------------------------------------


def compile_cache_dir() -> str:
    """Inductor's cache: $TORCHINDUCTOR_CACHE_DIR, else $RAYINPAINT_CACHE/inductor, else
    ~/.cache/rayinpaint/inductor. One folder per node, shared by every actor (process) on it."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.environ["TORCHINDUCTOR_CACHE_DIR"]
    base = os.environ.get("RAYINPAINT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rayinpaint")
    return os.path.join(base, "inductor")


def configure_compile_cache() -> str:
    """Point inductor (FX graph cache, autotuning results) and Triton's kernel cache at the per-node folder, so
    the second actor on a node, and every later run, loads compiled kernels instead of compiling again."""
    root = compile_cache_dir()
    os.makedirs(root, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = root
    os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(root, "triton"))
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return root


def apply_determinism(speed: Speed, device: torch.device | str) -> None:
    """Process-wide kernel choice for `speed` (a resolved Speed): cuDNN benchmarking, and with `deterministic`
    the deterministic cuDNN and torch algorithms and inductor without timing-based choices. cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG when its handle is made: set here, it holds if no matmul ran on the GPU before."""
    det = bool(speed.deterministic)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = bool(speed.cudnn_benchmark) and not det
        torch.backends.cudnn.deterministic = det
        if det:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(det, warn_only=True)  # warn_only: an op without one warns, not fails


def _inductor_determinism(deterministic: bool) -> None:
    """Inductor picks kernels (matmul templates, pointwise configs, fusions) by timing them unless told not to."""
    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    for key in ("deterministic",):
        if key in known:
            setattr(inductor_config, key, deterministic)
    if deterministic:
        for key in ("max_autotune", "max_autotune_pointwise", "max_autotune_gemm", "coordinate_descent_tuning",
                    "benchmark_fusion", "benchmark_epilogue_fusion"):
            if key in known:
                setattr(inductor_config, key, False)
        inductor_config.triton.autotune_pointwise = False


def compile_module(module: torch.nn.Module, speed: Speed):
    """torch.compile for fixed shapes (a new batch shape compiles once more), the whole forward as one graph."""
    backend = speed.compile_backend or "inductor"
    if backend != "inductor":
        return torch.compile(module, backend=backend, fullgraph=True, dynamic=False)
    configure_compile_cache()
    import torch._inductor.config as inductor_config

    _inductor_determinism(bool(speed.deterministic))
    inductor_config.conv_1x1_as_mm = True  # the UNet's 1x1 skip convs as matmuls (fusable epilogues)
    return torch.compile(module, backend="inductor", mode=speed.compile_mode or "default", fullgraph=True,
                         dynamic=False)


def compile_cache_counters() -> dict:
    """Inductor's FX-graph cache hits and misses so far in this process (shows reuse across processes)."""
    from torch._dynamo.utils import counters

    c = counters["inductor"]
    return {"fxgraph_cache_hit": int(c["fxgraph_cache_hit"]), "fxgraph_cache_miss": int(c["fxgraph_cache_miss"])}


# ---- host synchronisation ---------------------------------------------------------------------------------


@contextlib.contextmanager
def forbid_host_sync(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Inside the block, any CUDA call that makes the host wait for the GPU (item(), a pageable copy, an
    explicit synchronize) raises. No effect off CUDA."""
    if not enabled or device.type != "cuda":
        yield
        return
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(prev)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


__all__ = ["Speed", "SDPA_CHOICES", "ENV_VAR", "auto_dtype", "sdpa_context", "set_memory_format", "to_device",
           "compile_module", "configure_compile_cache", "compile_cache_dir", "compile_cache_counters",
           "forbid_host_sync", "synchronize", "parse_switches", "env_text", "apply_determinism",
           "weights_channels_last", "vae_channels_last"]
