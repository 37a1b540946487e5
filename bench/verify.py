"""`rayinpaint bench --verify`: on a GPU machine, one command that checks the fast path and measures it, in at
most 6 minutes on one H100 with random full-size weights (no download).

Phases, in order of value, each with its own time budget (BUDGETS, seconds on CUDA; x CPU_SCALE for the CPU
rehearsal); the record (one JSON object, `--json`, default verify.json) is rewritten after each, so a run cut
short still leaves what it measured:
    environment   versions, device, the bf16 matmul ceiling (fp32 on CPU)
    self_check    one Inpainter built at --batch-size x --resolution (the job's default shape) with strict speed:
                  compiled, captured and self-checked once; the later phases use the same one
    gpu_tests     tests/test_gpu_model.py -m "gpu and not slow and not compiles" in a subprocess (--full: -m gpu)
    ddim          DDIM at --steps (the command in docs/performance.md: 50), ours and diffusers in this process
    dpmpp_2m      DPM-Solver++(2M) at --steps / 2 (25), the same
    e2e           the Ray job on --e2e rows (default 160) against the model-only DDIM rate
Exit 1 when a correctness check failed, when one did not run (on CUDA: no self-check, no GPU test run) and when a
fast path fell back (strict speed makes that a failure of its phase); a phase over its budget is stopped and
failed. Speed targets are recorded (`targets`), not enforced. On CPU the same command rehearses every phase with
the tiny model; the self-check then runs with compile on through the tracing `aot_eager` backend.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from .throughput import (bench_model, device_name, speed_from_args, time_diffusers, time_e2e, versions)
from .timing import matmul_ceiling, release_memory

TARGETS = {"ratio_vs_diffusers": 2.0, "fraction_of_ceiling": 0.6, "e2e_vs_model": 0.9}
# Seconds per phase on one H100 (estimated from the parts' measured GPU costs; 360 in all), and the factor for
# the CPU rehearsal. --full lets the GPU tests run FULL_TESTS_S.
BUDGETS = {"environment": 10, "self_check": 120, "gpu_tests": 60, "ddim": 50, "dpmpp_2m": 30, "e2e": 90}
CPU_SCALE = 10
FULL_TESTS_S = 1800


class OverBudget(Exception):
    """A phase ran past its time budget."""
GPU_TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_gpu_model.py"


class Record:
    """The verification record, written to `path` after every phase; `failed` names the phases that failed,
    `not_run` the correctness checks that did not run."""

    def __init__(self, path: str, head: dict, scale: float = 1.0):
        self.path, self.scale, self.failed, self.not_run = path, scale, [], []
        self.data = {**head, "phases": {}, "failed": [], "not_run": []}

    @contextlib.contextmanager
    def phase(self, name: str, budget: float | None = None):
        out: dict = {}
        budget = (budget or BUDGETS.get(name, 60)) * self.scale
        out["budget_s"] = budget
        t0 = time.perf_counter()
        try:
            with _deadline(budget, name):
                yield out
        except Exception as e:  # noqa: BLE001 - recorded; the next phase still runs
            out.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}")
        out["seconds"] = time.perf_counter() - t0
        if out.get("ok") is False:
            self.failed.append(name)
        elif out.get("ok") is None and out.get("check", True):
            self.not_run.append(name)
        self.data["phases"][name] = out
        self.data["failed"], self.data["not_run"] = self.failed, self.not_run
        self.write()

    def write(self) -> None:
        with open(self.path, "w") as f:
            f.write(json.dumps(self.data, indent=2, default=str) + "\n")


@contextlib.contextmanager
def _deadline(seconds: float, name: str):
    """Raise OverBudget in this thread once `seconds` have passed (at its next Python instruction: a long kernel
    or a wait in C finishes first). A timer thread raises it, so no signal handler is taken from anyone."""
    import ctypes
    import threading

    target, done = threading.get_ident(), threading.Event()

    def stop():
        if not done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(OverBudget))

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
    try:
        yield
    except OverBudget:
        raise OverBudget(f"{name} ran past its budget of {seconds:.0f} s") from None
    finally:
        done.set()
        timer.cancel()


def build_inpainter(args, model, speed, device):
    """The one Inpainter of the run (strict speed: a fast path failing its check raises). On CPU, with compile left
    on auto, compile through the tracing `aot_eager` backend, so the self-check has a fast path to compare."""
    from rayinpaint.model import Inpainter

    if device.type != "cuda" and args.compile is None:
        speed = dataclasses.replace(speed, compile=True, compile_backend="aot_eager")
    return Inpainter(model, sampler="ddim", steps=2, guidance=args.guidance, speed=speed, strict_speed=True,
                     prompt_cache_size=args.prompt_cache_size)


def check_phase(args, inp) -> dict:
    """Warm up the Inpainter at the job's shape with the self-check on: a check must have run and passed, and
    every fast path asked for must still be on."""
    asked = {k: getattr(inp.speed, k) for k in ("compile", "cuda_graph")}
    warm = inp.warmup(args.batch_size, args.resolution)
    checks, in_effect = inp.checks, inp.speed.as_dict()
    fell_back = sorted(k for k, v in asked.items() if v and not in_effect[k])
    ok = (all(c["ok"] for c in checks) and not fell_back) if checks else None  # None: nothing checked
    return {"ok": ok, "checks": checks, "fell_back": fell_back, "speed_in_effect": in_effect,
            "warmup_s": warm["seconds"], "check_s": sum(c.get("check_s", 0.0) for c in checks)}


def gpu_tests_phase(timeout: float, full: bool, cuda: bool) -> dict:
    if not GPU_TESTS.exists():
        return {"ok": None, "note": f"{GPU_TESTS} not found (the tests come with a source checkout)"}
    marks = "gpu" if full else "gpu and not slow and not compiles"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m", marks, str(GPU_TESTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=GPU_TESTS.parents[1],
                          check=False)
    lines = proc.stdout.strip().splitlines()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                 lines[-1] if lines else "")}
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    out = {"ok": proc.returncode == 0 if ran else None, "returncode": proc.returncode, "counts": counts,
           "marks": marks, "failures": failures[:20], "summary": lines[-1] if lines else proc.stderr[-500:]}
    if not cuda:  # the rehearsal: there is no GPU to run them on, which is not a failure of the check
        out["check"] = False
    return out


def sampler_phase(args, inp, model, device, sampler: str, steps: int, ceiling_tflops: float) -> dict:
    """Ours on the run's Inpainter (strict speed; the record's `speed` is what ran) and diffusers, same process,
    same settings; our model stays on the device, so our captured graphs stay valid."""
    from rayinpaint.model.flops import inpaint_flops, unet_calls

    a = copy.copy(args)
    a.sampler, a.steps, a.strict_speed = sampler, steps, True
    ours = bench_model(a, model, inp.speed, inp=inp.set_sampler(sampler, steps))
    flops = inpaint_flops(model.config, a.batch_size, a.resolution, unet_calls(a.sampler, a.steps))
    out = {"sampler": sampler, "steps": steps, "model": ours, "images_per_s": ours["images_per_s"],
           "flops_per_image": flops["per_image"], "ok": True}
    out["achieved_tflops"] = flops["per_image"] * ours["images_per_s"] / 1e12
    out["fraction_of_ceiling"] = out["achieved_tflops"] / ceiling_tflops
    theirs = time_diffusers(a, model, device, keep_ours=True)
    gc.collect()
    out["against"] = theirs
    if "error" in theirs:
        out["ok"] = False
    else:
        out["ratio_vs_diffusers"] = ours["images_per_s"] / theirs["images_per_s"]
    out["targets"] = {k: out[k] >= v for k, v in TARGETS.items() if k in out}
    return out


def e2e_phase(args, rows: int, steps: int, dtype, speed, model_rate: float | None, cuda: bool) -> dict:
    a = copy.copy(args)
    a.sampler, a.steps, a.strict_speed = "ddim", steps, True
    res = time_e2e(a, rows, dtype, speed)
    wanted = [k for k in ("compile", "cuda_graph") if cuda and getattr(speed.resolve("cuda"), k)]
    actors = res.get("speed_by_actor") or {}
    fell_back = sorted(a for a, v in actors.items() if any(f"{k}=1" not in v.split(",") for k in wanted))
    res["fell_back"] = fell_back  # actors that turned off a fast path they were asked to use
    res["ok"] = res["exit_code"] == 0 and res["ok_rows"] == rows and not fell_back
    if model_rate:
        res["e2e_vs_model"] = res["images_per_s"] / (model_rate * max(1, res["gpus"]))
        res["targets"] = {"e2e_vs_model": res["e2e_vs_model"] >= TARGETS["e2e_vs_model"]}
    return res


def run_verify(args: argparse.Namespace) -> int:
    import torch

    from rayinpaint.jobs.predictor import pick_device_and_dtype
    from rayinpaint.model import load_model

    device, dtype = pick_device_and_dtype(args.dtype)
    device = torch.device(device)
    cuda = device.type == "cuda"
    speed = speed_from_args(args)
    rec = Record(args.json or "verify.json", {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""), "targets": TARGETS, "budgets_s": BUDGETS,
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "cmd", "log_level")}},
        scale=1.0 if cuda else CPU_SCALE)
    ceiling = None
    with rec.phase("environment") as out:
        out.update(versions=versions(device), ceiling=matmul_ceiling(device, args.ceiling_size), check=False)
        ceiling = out["ceiling"]["tflops"]
    model = load_model(args.weights, device=device, dtype=dtype)
    inp = None
    with rec.phase("self_check") as out:
        inp = build_inpainter(args, model, speed, device)
        out.update(check_phase(args, inp))
    with rec.phase("gpu_tests", FULL_TESTS_S if args.full else None) as out:
        out.update(gpu_tests_phase(out["budget_s"], args.full, cuda))
    rates = {}
    for sampler, steps in (("ddim", args.steps), ("dpmpp_2m", max(1, args.steps // 2))):
        with rec.phase(sampler) as out:
            if inp is None:
                raise RuntimeError("no Inpainter: the self-check phase failed to build one")
            out.update(sampler_phase(args, inp, model, device, sampler, steps, ceiling or float("nan")))
            rates[sampler] = out["images_per_s"]
    del model, inp
    release_memory()
    with rec.phase("e2e") as out:
        out.update(e2e_phase(args, args.e2e or 160, args.steps, dtype, speed, rates.get("ddim"), cuda))
    print(json.dumps(rec.data, indent=2, default=str))
    return 1 if rec.failed or (cuda and rec.not_run) else 0


__all__ = ["run_verify", "Record", "TARGETS", "BUDGETS"]
