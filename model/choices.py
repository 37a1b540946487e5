"""The names the command line, the job and the model share: samplers, dtypes, speed switches.

Torch-free on purpose: the option parser imports this to check `--sampler`, `--dtype` and `--speed` without
loading torch or the model. Every other list of these names is derived from the ones here.
"""

from __future__ import annotations

SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")
DTYPES = ("auto", "float32", "float16", "bfloat16")  # "auto": bfloat16 or float16 on CUDA, float32 elsewhere
SDPA_CHOICES = ("auto", "flash", "efficient", "cudnn", "math")

# The on/off speed switches (the boolean fields of model/speed.py's Speed, in its order) and what "auto" becomes:
# "cuda": on for CUDA, off elsewhere; "cuda_only": the same, and off elsewhere even when asked for; "on": always.
SWITCH_AUTO = {
    "channels_last": "cuda",
    "compile": "cuda",
    "cuda_graph": "cuda_only",
    "fused_cfg": "on",
    "batch_vae": "on",
    "pinned": "cuda_only",
    "cudnn_benchmark": "cuda_only",
}
SWITCHES = tuple(SWITCH_AUTO)
# Speed's valued settings; `SWITCHES + SETTINGS` are all the names RAYINPAINT_SPEED and --speed accept.
SETTINGS = ("sdpa", "compile_mode", "compile_backend")

_FLAGS = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}


def check_sdpa(value: str) -> str:
    if value not in SDPA_CHOICES:
        raise ValueError(f"sdpa must be one of {SDPA_CHOICES}, got {value!r}")
    return value


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
    return out


__all__ = ["SAMPLERS", "DTYPES", "SDPA_CHOICES", "SWITCHES", "SWITCH_AUTO", "SETTINGS", "check_sdpa",
           "parse_switches"]
