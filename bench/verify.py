"""`rayinpaint bench --verify`: on a GPU machine, one command that checks the fast path and measures it.

Phases, in order; the record (one JSON object, `--json`, default verify.json) is rewritten after each, so a run cut
short still leaves what it measured:
    environment   versions, device, the bf16 matmul ceiling (fp32 on CPU)
    self_check    the Inpainter's self-check (model/selfcheck.py) at --batch-size x --resolution, its numbers
    gpu_tests     tests/test_gpu_model.py -m "gpu and not slow" in a subprocess, its counts
    ddim          DDIM --steps, ours (strict speed: a fast path failing its check fails the phase) and diffusers
    dpmpp_2m      DPM-Solver++(2M) at --steps / 2, the same
    e2e           the Ray job on --e2e rows (default 160) against the model-only DDIM rate
Exit 1 when a correctness check fails (a self-check, a GPU test, a phase that raised, job rows not ok); speed
targets are recorded (`targets`), not enforced. On CPU the same command rehearses every phase with the tiny
model; the self-check then runs with compile on through the tracing `aot_eager` backend, so its logic runs too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from .throughput import (bench_model, device_name, speed_from_args, time_diffusers, time_e2e, versions)
from .timing import matmul_ceiling, release_memory

TARGETS = {"ratio_vs_diffusers": 2.0, "fraction_of_ceiling": 0.6, "e2e_vs_model": 0.9}
GPU_TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_gpu_model.py"


class Record:
    """The verification record, written to `path` after every phase; `failed` names the phases that failed."""

    def __init__(self, path: str, head: dict):
        self.path, self.data, self.failed = path, {**head, "phases": {}, "failed": []}, []

    @contextlib.contextmanager
    def phase(self, name: str):
        out: dict = {}
        t0 = time.perf_counter()
        try:
            yield out
        except Exception as e:  # noqa: BLE001 - recorded; the next phase still runs
            out.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:500] if str(e) else ''}")
        out["seconds"] = time.perf_counter() - t0
        if out.get("ok") is False:
            self.failed.append(name)
        self.data["phases"][name] = out
        self.data["failed"] = self.failed
        self.write()

    def write(self) -> None:
        with open(self.path, "w") as f:
            f.write(json.dumps(self.data, indent=2, default=str) + "\n")


def check_phase(args, model, speed, device) -> dict:
    """Warm up an Inpainter at the job's shape with the self-check on; every check it ran must pass."""
    from rayinpaint.model import Inpainter

    if device.type != "cuda" and args.compile is None:  # rehearsal: a fast path for the check to compare
        speed = dataclasses.replace(speed, compile=True, compile_backend="aot_eager")
    inp = Inpainter(model, sampler=args.sampler, steps=2, speed=speed)
    warm = inp.warmup(args.batch_size, args.resolution)
    checks, in_effect = inp.checks, inp.speed.as_dict()
    del inp
    release_memory()
    ok = all(c["ok"] for c in checks) if checks else None  # None: no fast path on, nothing to check
    return {"ok": ok, "checks": checks, "speed_in_effect": in_effect, "warmup_s": warm["seconds"]}


def gpu_tests_phase(timeout: float) -> dict:
    if not GPU_TESTS.exists():
        return {"ok": None, "note": f"{GPU_TESTS} not found (the tests come with a source checkout)"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-m", "gpu and not slow",
           str(GPU_TESTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=GPU_TESTS.parents[1],
                          check=False)
    lines = proc.stdout.strip().splitlines()
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                 lines[-1] if lines else "")}
    ran = counts.get("passed", 0) + counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    failures = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    return {"ok": proc.returncode in (0, 5) if ran else None, "returncode": proc.returncode, "counts": counts,
            "failures": failures[:20], "summary": lines[-1] if lines else proc.stderr[-500:]}


def sampler_phase(args, model, speed, device, sampler: str, steps: int, ceiling_tflops: float) -> dict:
    """Ours with strict speed (the record's `speed` is what ran) and diffusers, same process, same settings."""
    from rayinpaint.model.flops import inpaint_flops, unet_calls

    a = copy.copy(args)
    a.sampler, a.steps, a.strict_speed = sampler, steps, True
    ours = bench_model(a, model, speed)
    release_memory()
    flops = inpaint_flops(model.config, a.batch_size, a.resolution, unet_calls(a.sampler, a.steps))
    out = {"sampler": sampler, "steps": steps, "model": ours, "images_per_s": ours["images_per_s"],
           "flops_per_image": flops["per_image"]}
    out["achieved_tflops"] = flops["per_image"] * ours["images_per_s"] / 1e12
    out["fraction_of_ceiling"] = out["achieved_tflops"] / ceiling_tflops
    theirs = time_diffusers(a, model, device)
    model.to(device)  # time_diffusers moved our model off the device to measure diffusers' memory alone
    release_memory()
    out["against"] = theirs
    if "error" in theirs:
        out["ok"] = False
    else:
        out["ratio_vs_diffusers"] = ours["images_per_s"] / theirs["images_per_s"]
    out["targets"] = {k: out[k] >= v for k, v in TARGETS.items() if k in out}
    return out


def e2e_phase(args, rows: int, dtype, speed, model_rate: float | None) -> dict:
    a = copy.copy(args)
    a.sampler, a.strict_speed = "ddim", True
    res = time_e2e(a, rows, dtype, speed)
    res["ok"] = res["exit_code"] == 0 and res["ok_rows"] == rows
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
    speed = speed_from_args(args)
    rec = Record(args.json or "verify.json", {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_name(device),
        "dtype": str(dtype).replace("torch.", ""), "targets": TARGETS,
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "cmd", "log_level")}})
    ceiling = None
    with rec.phase("environment") as out:
        out.update(versions=versions(device), ceiling=matmul_ceiling(device, args.ceiling_size))
        ceiling = out["ceiling"]["tflops"]
    model = load_model(args.weights, device=device, dtype=dtype)
    with rec.phase("self_check") as out:
        out.update(check_phase(args, model, speed, device))
    with rec.phase("gpu_tests") as out:
        out.update(gpu_tests_phase(args.verify_tests_timeout))
    rates = {}
    for sampler, steps in (("ddim", args.steps), ("dpmpp_2m", max(1, args.steps // 2))):
        with rec.phase(sampler) as out:
            out.update(sampler_phase(args, model, speed, device, sampler, steps, ceiling or float("nan")))
            rates[sampler] = out["images_per_s"]
    del model
    release_memory()
    with rec.phase("e2e") as out:
        out.update(e2e_phase(args, args.e2e or 160, dtype, speed, rates.get("ddim")))
    print(json.dumps(rec.data, indent=2, default=str))
    return 1 if rec.failed else 0


__all__ = ["run_verify", "Record", "TARGETS"]
