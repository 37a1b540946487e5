"""`rayinpaint bench`: images/s of the bare model, against diffusers and against the whole Ray job.

Prints one JSON object: date, device, versions and every setting next to each number, so a result can be
rerun and compared (BENCHMARKS.md has the commands and the results table). What it measures:
- model: the Inpainter (our UNet/VAE/samplers) on synthetic inputs; warm-up first (compilation, autotuning
  and CUDA graph capture are timed and reported apart), then `--iters` batches each timed between CUDA
  synchronisations; the median batch gives images/s. Peak GPU memory over the timed batches.
- FLOPs per image, counted by torch's FlopCounterMode over the real modules (model/flops.py), and the
  achieved TFLOP/s against a bf16 matmul ceiling timed in the same process (fp32 on CPU).
- --against diffusers: StableDiffusionInpaintPipeline in this process with the same weights (moved across by
  our key mapping) and settings, fp16 + SDPA on CUDA (fp32 on CPU).
- --e2e N: the real Ray job (`run_job`) over N synthetic rows, local Parquet in and out, on this machine's
  GPUs, with the same switches (passed to the actors through $RAYINPAINT_SPEED).
- --ablate: the model timed again with one switch flipped at a time.
Random weights (`random:sd2`) have the real architecture and cost; speed does not depend on weight values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from rayinpaint.jobs.config import JobConfig
from rayinpaint.model.choices import COMPILE_MODES, DTYPES, SAMPLERS, SDPA_CHOICES, SWITCHES

from .timing import matmul_ceiling, release_memory, steady_rate, time_calls

ABLATABLE = SWITCHES + ("sdpa", "prompt_cache")


def add_bench_arguments(p) -> None:
    g = p.add_argument_group("workload")
    g.add_argument("--weights", default="random:sd2", help="weights (default: random:sd2, full size, random)")
    # The workload's defaults are `rayinpaint run`'s, so a record made with no options describes a default run.
    run = JobConfig  # a dataclass: its class attributes are the fields' defaults
    g.add_argument("--batch-size", type=int, default=run.batch_size, help=f"images per call (default: {run.batch_size})")
    g.add_argument("--steps", type=int, default=run.steps, help=f"sampling steps (default: {run.steps})")
    g.add_argument("--sampler", default=run.sampler, choices=SAMPLERS, help=f"sampler (default: {run.sampler})")
    g.add_argument("--guidance", type=float, default=run.guidance, help=f"guidance scale (default: {run.guidance})")
    g.add_argument("--resolution", type=int, default=run.resolution, help=f"pixels (default: {run.resolution})")
    g.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="model dtype; auto = bfloat16 on a GPU that has it, else float16; float32 on CPU")
    g.add_argument("--warmup", type=int, default=1, help="untimed batches after the warm-up call (default: 1)")
    g.add_argument("--iters", type=int, default=3, help="timed batches; the median is reported (default: 3)")

    s = p.add_argument_group("speed switches (default: auto = on for CUDA, see model/speed.py)")
    for name in SWITCHES:
        s.add_argument("--" + name.replace("_", "-"), dest=name, action=argparse.BooleanOptionalAction,
                       default=None, help=f"{name} on/off")
    s.add_argument("--sdpa", default="auto", choices=SDPA_CHOICES,
                   help="attention backend of the UNet (default: auto, PyTorch's choice)")
    s.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                   help="torch.compile mode (default: default; reduce-overhead and max-autotune need --no-cuda-graph)")
    s.add_argument("--prompt-cache-size", type=int, default=1024, help="prompt embeddings kept (0 = no cache)")
    s.add_argument("--strict-speed", action="store_true",
                   help="a fast path that fails or fails its self-check fails the run instead of being turned off")

    c = p.add_argument_group("comparisons")
    c.add_argument("--against", choices=("diffusers",), default=None,
                   help="also time diffusers' StableDiffusionInpaintPipeline on the same weights and settings")
    c.add_argument("--diffusers-compile", action="store_true", help="with --against diffusers: torch.compile its UNet")
    c.add_argument("--e2e", type=int, default=0, metavar="N",
                   help="also run the whole Ray job on N synthetic rows and compare its images/s (default: 0 = off)")
    c.add_argument("--ablate", default="", metavar="LIST",
                   help=f"comma list of switches to flip one at a time, or 'all': {', '.join(ABLATABLE)}")
    c.add_argument("--ceiling-size", type=int, default=None,
                   help="matrix size of the matmul ceiling (default: 8192 on CUDA, 1024 on CPU)")
    c.add_argument("--json", default=None, help="also write the result to this file")
    c.add_argument("--verify", action="store_true",
                   help="the GPU verification run, one JSON written as it goes (bench/verify.py): versions and matmul "
                        "ceiling, the self-check at this shape, the GPU tests that need no compile, DDIM --steps "
                        "and DPM++(2M) --steps/2 against diffusers, the Ray job on --e2e rows (default 160); exit 1 "
                        "if a correctness check fails or does not run, or a fast path falls back")
    c.add_argument("--full", action="store_true",
                   help="with --verify: also the GPU tests that compile or are slow (longer than the 6-minute run)")
    from .cpu import add_cpu_bench_arguments

    add_cpu_bench_arguments(p)
    # Older spellings, kept working: --diffusers == --against diffusers, --job-rows N == --e2e N.
    c.add_argument("--diffusers", dest="against", action="store_const", const="diffusers", help=argparse.SUPPRESS)
    c.add_argument("--job-rows", dest="e2e", type=int, help=argparse.SUPPRESS)


# ---- synthetic inputs ------------------------------------------------------------------------------------


def _inputs(b: int, r: int):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, r, r, 3), dtype=np.uint8)
    masks = np.zeros((b, r, r), np.uint8)
    masks[:, r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 255
    return images, masks


# ---- our model -------------------------------------------------------------------------------------------


def speed_from_args(args):
    """The bench's Speed; a combination that cannot work is a SettingsError (exit 2, one line)."""
    from rayinpaint.io.errors import SettingsError
    from rayinpaint.model.speed import Speed

    try:
        speed = Speed(sdpa=args.sdpa, compile_mode=args.compile_mode, **{k: getattr(args, k) for k in SWITCHES})
        speed.with_env()  # $RAYINPAINT_SPEED fills the rest in every Inpainter: a bad value is refused here
        return speed
    except ValueError as e:
        raise SettingsError(str(e)) from None


def check_no_host_sync(inp, call) -> dict:
    """One more batch with CUDA's sync debug mode set to error around the sampler loop."""
    if inp.model.device.type != "cuda":
        return {"step_loop_sync_free": None, "step_loop_sync_error": "checked on CUDA only"}
    inp.forbid_host_sync = True
    try:
        call()
        return {"step_loop_sync_free": True, "step_loop_sync_error": None}
    except RuntimeError as e:
        return {"step_loop_sync_free": False, "step_loop_sync_error": str(e).splitlines()[0][:300]}
    finally:
        inp.forbid_host_sync = False


def bench_model(args, model, speed, prompt_cache_size: int | None = None, check_sync: bool = True,
                inp=None) -> dict:
    """Warm up (timed) and time the Inpainter with these switches on synthetic inputs; `inp`: an Inpainter
    already built and warmed up at this shape (its compiled and captured steps are used as they are)."""
    from rayinpaint.model import Inpainter
    from rayinpaint.model.speed import compile_cache_counters, compile_cache_dir

    B, r = args.batch_size, args.resolution
    size = args.prompt_cache_size if prompt_cache_size is None else prompt_cache_size
    if inp is None:
        inp = Inpainter(model, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                        prompt_cache_size=size, speed=speed, strict_speed=getattr(args, "strict_speed", False))
    warm = inp.warmup(B, r)
    images, masks = _inputs(B, r)
    prompts, seeds = ["a photo of a room"] * B, list(range(B))

    def call():
        inp(images, masks, prompts, None, seeds)

    res = time_calls(call, model.device, args.warmup, args.iters)
    res["images_per_s"] = B / res["s_per_batch_median"]
    res.update(warmup_call_s=warm["seconds"], compile_s=warm.get("compile_s", 0.0),
               graph_capture_s=warm.get("capture_s"), speed=inp.speed.as_dict(), prompt_cache_size=size,
               self_check=inp.checks)  # speed: the switches in effect after the self-check
    if inp.speed.compile:
        res["compile_cache"] = {"dir": compile_cache_dir(), **compile_cache_counters()}
    if check_sync:
        res.update(check_no_host_sync(inp, call))
    return res


def ablation_variants(base, names: list[str], prompt_cache_size: int) -> list[tuple[str, object, object, int]]:
    """(switch, value, Speed, prompt cache size) for each switch flipped from the resolved default `base`."""
    import dataclasses

    out = []
    for name in names:
        if name == "prompt_cache":
            size = 0 if prompt_cache_size else 1024
            out.append((name, size, base, size))
        elif name == "sdpa":
            value = "math" if base.sdpa != "math" else "auto"
            out.append((name, value, dataclasses.replace(base, sdpa=value), prompt_cache_size))
        else:
            value = not getattr(base, name)
            extra = {"cudnn_benchmark": False} if name == "deterministic" and value else {}  # it fixes cuDNN's choice
            out.append((name, value, dataclasses.replace(base, **{name: value}, **extra), prompt_cache_size))
    return out


def run_ablation(args, model, base, base_rate: float) -> list[dict]:
    names = list(ABLATABLE) if args.ablate.strip() == "all" else [n.strip() for n in args.ablate.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ABLATABLE))
    if unknown:
        raise SystemExit(f"rayinpaint bench: --ablate: unknown switch(es) {unknown}; choose from {ABLATABLE}")
    rows = []
    for name, value, speed, size in ablation_variants(base, names, args.prompt_cache_size):
        r = bench_model(args, model, speed, prompt_cache_size=size, check_sync=False)
        release_memory()
        # The value in effect: a CUDA-only switch asked for elsewhere stays off (and the run is a repeat).
        value = size if name == "prompt_cache" else r["speed"][name]
        default = args.prompt_cache_size if name == "prompt_cache" else getattr(base, name)
        rows.append({"switch": name, "value": value, "changed": value != default, "images_per_s": r["images_per_s"],
                     "vs_default": r["images_per_s"] / base_rate, "compile_s": r["compile_s"],
                     "peak_memory_bytes": r["peak_memory_bytes"]})
    return rows


# ---- diffusers -------------------------------------------------------------------------------------------


def time_diffusers(args, model, device, keep_ours: bool = False) -> dict:
    """diffusers' pipeline on our model's weights, timed like ours. Moves our model to the CPU once the pipeline
    holds its own copy (the caller is done with it), so the peak memory reported is diffusers' own; `keep_ours`
    leaves it where it is (a captured graph of ours reads its weights at their addresses)."""
    try:
        import diffusers
    except ImportError:
        return {"name": "diffusers", "error": "diffusers is not installed (pip install diffusers transformers)"}
    import torch

    from rayinpaint.model.reference import diffusers_pipeline

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = diffusers_pipeline(model, args.sampler, args.resolution, device, dtype)
    if args.diffusers_compile:
        pipe.unet = torch.compile(pipe.unet, mode=args.compile_mode or "default")
    B, r = args.batch_size, args.resolution
    with torch.inference_mode():
        emb = model.text_encoder(model.tokenize(["a photo of a room"] * B)).to(device=device, dtype=dtype)
        neg = model.text_encoder(model.tokenize([""] * B)).to(device=device, dtype=dtype)
    if not keep_ours:
        model.to("cpu")
        release_memory()
    images, masks = _inputs(B, r)
    img = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # diffusers takes [0, 1] tensors
    msk = torch.from_numpy(masks)[:, None].float().div(255)

    def call():
        pipe(prompt_embeds=emb, negative_prompt_embeds=neg, image=img, mask_image=msk, height=r, width=r,
             num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np")

    t0 = time.perf_counter()
    call()  # warm-up (and compilation with --diffusers-compile)
    warm = time.perf_counter() - t0
    res = time_calls(call, device, args.warmup, args.iters)
    res.update(name="diffusers", version=diffusers.__version__, images_per_s=B / res["s_per_batch_median"],
               dtype=str(dtype).replace("torch.", ""), attention="sdpa (AttnProcessor2_0)",
               compiled=bool(args.diffusers_compile), warmup_call_s=warm)
    return res


# ---- the whole Ray job -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _environ(values: dict):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def time_e2e(args, rows: int, dtype, speed) -> dict:
    """run_job over `rows` synthetic rows (rayinpaint.bench.demo.make_dataset; its 5 deliberately bad rows
    become error rows, max-error-rate is 1 so they do not fail the run), local Parquet in and out."""
    from rayinpaint.jobs.config import JobConfig
    from rayinpaint.jobs.inpaint import run_job
    from rayinpaint.model.speed import ENV_VAR, env_text

    from .demo import make_dataset

    d = tempfile.mkdtemp(prefix="rayinpaint-bench-")
    try:
        out_dir = os.path.join(d, "out")
        cfg = JobConfig(manifest=(make_dataset(os.path.join(d, "input"), rows=rows),), output=out_dir,
                        weights=args.weights, sampler=args.sampler, karras=False, steps=args.steps,
                        guidance=args.guidance, resolution=args.resolution, batch_size=args.batch_size,
                        dtype=str(dtype).replace("torch.", ""), max_error_rate=1.0, preview_count=0,
                        strict_speed=bool(getattr(args, "strict_speed", False)))
        env = {ENV_VAR: env_text(speed)} if env_text(speed) else {}
        t0 = time.perf_counter()
        with _environ(env):
            rc = run_job(cfg)
        wall = time.perf_counter() - t0
        with open(os.path.join(out_dir, "_SUMMARY.json")) as f:
            summary = json.load(f)
        counts = summary["counts_by_status"]
        steady = steady_rate(os.path.join(out_dir, "results"))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    import torch

    ok = counts.get("ok", 0)
    rate_wall = ok / wall
    regions = summary.get("this_run", {}).get("regions", 0)
    return {"rows": rows, "ok_rows": ok, "counts": counts, "exit_code": rc, "gpus": torch.cuda.device_count(),
            "wall_s": wall, "rows_per_s_wall": rows / wall, "regions": regions, "regions_per_s_wall": regions / wall,
            "images_per_s_wall": rate_wall, "images_per_s_steady": steady,
            "images_per_s": steady if steady is not None else rate_wall,
            "basis": "steady (between first and last results shard)" if steady is not None else "wall",
            "speed_env": env.get(ENV_VAR, ""),
            "speed_by_actor": summary.get("this_run", {}).get("speed_by_actor")}  # in effect, after any fallback


# ---- the record ------------------------------------------------------------------------------------------


def versions(device) -> dict:
    import torch

    from rayinpaint.jobs.report import package_versions

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            **package_versions(("ray-inpaint", "ray", "diffusers", "triton"))}


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def run_bench(args) -> int:
    if args.cpu_stages:  # the CPU stages alone: no model, no torch
        from .cpu import run_cpu_bench_cli

        return run_cpu_bench_cli(args)
    if args.regions:  # detail and splitting cost of regions (bench/regions.py)
        from .regions import run_region_bench_cli

        return run_region_bench_cli(args)
    import torch

    from rayinpaint.jobs.predictor import pick_device_and_dtype
    from rayinpaint.model import load_model
    from rayinpaint.model.flops import inpaint_flops, unet_calls

    device, dtype = pick_device_and_dtype(args.dtype)
    device = torch.device(device)
    speed = speed_from_args(args)
    out = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_name(device),
           "versions": versions(device), "dtype": str(dtype).replace("torch.", ""),
           "settings": {k: v for k, v in vars(args).items() if k not in ("func", "cmd", "log_level")}}
    out["ceiling"] = matmul_ceiling(device, args.ceiling_size)
    t0 = time.perf_counter()
    model = load_model(args.weights, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    out["model"] = {"load_s": load_s, **bench_model(args, model, speed)}
    release_memory()  # the Inpainter above is gone: its graphs and compiled code go too
    out["flops"] = inpaint_flops(model.config, args.batch_size, args.resolution,
                                 unet_calls(args.sampler, args.steps))
    summarize_model(out)
    if args.ablate:
        base = speed.with_env().resolve(device)
        out["ablation"] = run_ablation(args, model, base, out["images_per_s"])
    if args.against:
        out["against"] = time_diffusers(args, model, device)
        release_memory()
        if "images_per_s" in out["against"]:
            out["ratio_vs_diffusers"] = out["images_per_s"] / out["against"]["images_per_s"]
    del model
    release_memory()
    if args.e2e:
        # stdout holds the JSON record alone; Ray's driver prints its own warnings there (seen under load: "8 PYTHON
        # worker processes have been started..."), so the whole job's phase prints to stderr
        with contextlib.redirect_stdout(sys.stderr):
            out["e2e"] = time_e2e(args, args.e2e, dtype, speed)
        out["e2e_images_per_s"] = out["e2e"]["images_per_s"]
        # per model actor: the job runs one actor per GPU (one on CPU), the model-only rate is one GPU's
        out["e2e_vs_model"] = out["e2e_images_per_s"] / (out["images_per_s"] * max(1, out["e2e"]["gpus"]))
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    failed = "error" in out.get("against", {}) or out.get("e2e", {}).get("exit_code", 0) != 0
    return 1 if failed else 0


def summarize_model(out: dict) -> None:
    """The headline numbers at the top level of the record."""
    m, f = out["model"], out["flops"]
    out["images_per_s"] = m["images_per_s"]
    out["flops_per_image"] = f["per_image"]
    out["achieved_tflops"] = f["per_image"] * m["images_per_s"] / 1e12
    out["ceiling_tflops"] = out["ceiling"]["tflops"]
    out["fraction_of_ceiling"] = out["achieved_tflops"] / out["ceiling_tflops"]
    out["peak_memory_bytes"] = m["peak_memory_bytes"]
    out["compile_s"] = m["compile_s"]


if __name__ == "__main__":
    sys.exit(0)
