"""The names the command line, the job and the model share: samplers, dtypes, speed switches.

Torch-free on purpose: the option parser imports this to check `--sampler`, `--dtype` and `--speed` without
loading torch or the model. Every other list of these names is derived from the ones here.
"""

from __future__ import annotations

SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")
DTYPES = ("auto", "float32", "float16", "bfloat16")  # "auto": bfloat16 or float16 on CUDA, float32 elsewhere
SDPA_CHOICES = ("auto", "flash", "efficient", "cudnn", "math")

# The on/off speed switches (the boolean fields of model/speed.py's Speed, in its order) and what "auto" becomes:
# "cuda": on for CUDA, off elsewhere; "cuda_only": the same, and off elsewhere even when asked for; "on": always;
# "off": only when asked for.
SWITCH_AUTO = {
    "channels_last": "cuda",
    "compile": "cuda",
    "cuda_graph": "cuda_only",
    "fused_cfg": "on",
    "batch_vae": "on",
    "pinned": "cuda_only",
    "cudnn_benchmark": "cuda_only",
    "deterministic": "off",  # fixed kernels: no cuDNN benchmarking, no inductor autotuning, deterministic algorithms
}
SWITCHES = tuple(SWITCH_AUTO)
# Speed's valued settings; `SWITCHES + SETTINGS` are all the names RAYINPAINT_SPEED and --speed accept.
SETTINGS = ("sdpa", "compile_mode", "compile_backend")
# torch.compile's modes. "reduce-overhead" and "max-autotune" make inductor capture CUDA graphs of its own, which
# would nest inside the step's captured graph (cuda_graph): refused together.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
INDUCTOR_GRAPH_MODES = ("reduce-overhead", "max-autotune")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # aot_eager, eager: tracing without code generation (tests)

SPEED_ENV = "RAYINPAINT_SPEED"  # "name=value,...": the switches a run leaves on auto, for every model actor

_FLAGS = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}


def check_sdpa(value: str) -> str:
    if value not in SDPA_CHOICES:
        raise ValueError(f"sdpa must be one of {SDPA_CHOICES}, got {value!r}")
    return value


def check_combination(values: dict, where: str = "speed") -> None:
    """Settings that cannot work, refused before any work: unknown compile modes or backends, and inductor's own
    CUDA graphs inside the captured step. `values`: switch names to values; None or absent means auto."""
    mode, backend = values.get("compile_mode"), values.get("compile_backend")
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"{where}: compile_mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if backend is not None and backend not in COMPILE_BACKENDS:
        raise ValueError(f"{where}: compile_backend must be one of {', '.join(COMPILE_BACKENDS)}, got {backend!r}")
    if mode in INDUCTOR_GRAPH_MODES and values.get("cuda_graph") is not False and values.get("compile") is not False:
        raise ValueError(f"{where}: compile_mode={mode} captures inductor's own CUDA graphs, which would nest inside "
                         f"the captured step; use compile_mode=max-autotune-no-cudagraphs, or cuda_graph=0")
    if values.get("deterministic"):
        if values.get("cudnn_benchmark"):
            raise ValueError(f"{where}: deterministic=1 fixes cuDNN's kernels; it cannot go with cudnn_benchmark=1")
        if mode and mode.startswith("max-autotune"):
            raise ValueError(f"{where}: deterministic=1 turns autotuning off; it cannot go with compile_mode={mode}")


def parse_switches(text: str, where: str) -> dict:
    """'compile=0,sdpa=flash' -> {"compile": False, "sdpa": "flash"}; a bad item is one ValueError naming `where`."""
    out: dict = {}
    names = set(SWITCHES) | set(SETTINGS)
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip().replace("-", "_"), value.strip()
        if not sep or key not in names:
            raise ValueError(f"{where}: bad speed switch {item!r}; expected name=value with a name in {sorted(names)}")
        if key in SWITCH_AUTO:
            flag = _FLAGS.get(value.lower())
            if flag is None:
                raise ValueError(f"{where}: {key} must be 1/0/true/false/on/off, got {value!r}")
            out[key] = flag
        else:
            out[key] = value
    if "sdpa" in out:
        check_sdpa(out["sdpa"])
    check_combination(out, where)
    return out


__all__ = ["SAMPLERS", "DTYPES", "SDPA_CHOICES", "SWITCHES", "SWITCH_AUTO", "SETTINGS", "COMPILE_MODES",
           "COMPILE_BACKENDS", "INDUCTOR_GRAPH_MODES", "SPEED_ENV", "check_sdpa", "check_combination", "parse_switches"]
