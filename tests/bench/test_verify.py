"""`rayinpaint bench --verify` rehearsed on CPU with the tiny model: every phase runs and the record says so; a
failed correctness check makes the exit code 1 and is named in the record."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rayinpaint.bench import verify
from rayinpaint.jobs.cli import build_parser

REHEARSAL = ["bench", "--verify", "--weights", "random:tiny", "--batch-size", "2", "--resolution", "64",
             "--steps", "2", "--iters", "1", "--warmup", "0", "--e2e", "4"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # about 2 minutes on 2 idle cores (1.6 CPU-minutes measured); far more when shared
def test_the_verification_command_runs_end_to_end_on_cpu(tmp_path):
    pytest.importorskip("diffusers")
    path = tmp_path / "verify.json"
    proc = subprocess.run([sys.executable, "-m", "rayinpaint.jobs", *REHEARSAL, "--json", str(path)],
                          capture_output=True, text=True, timeout=1700, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(path.read_text())
    assert json.loads(proc.stdout) == r
    assert list(r["phases"]) == ["environment", "self_check", "gpu_tests", "ddim", "dpmpp_2m", "e2e"]
    assert r["failed"] == [] and r["device"].startswith("cpu")
    env = r["phases"]["environment"]
    assert env["versions"]["torch"] and env["ceiling"]["tflops"] > 0
    check = r["phases"]["self_check"]
    assert check["ok"] is True and check["checks"][0]["compile"] and check["checks"][0]["ok"]
    assert check["checks"][0]["fast_vs_eager"][0] <= check["checks"][0]["tol"]
    tests = r["phases"]["gpu_tests"]
    assert tests["ok"] is None and tests["counts"]["skipped"] > 0  # no CUDA here: every GPU test skips
    for name, steps in (("ddim", 2), ("dpmpp_2m", 1)):
        p = r["phases"][name]
        assert p["sampler"] == name and p["steps"] == steps and p["images_per_s"] > 0
        assert p["model"]["speed"]["fused_cfg"] is True  # the switches in effect, in the record
        assert p["ratio_vs_diffusers"] == pytest.approx(p["images_per_s"] / p["against"]["images_per_s"])
        assert set(p["targets"]) == {"ratio_vs_diffusers", "fraction_of_ceiling"}
    e2e = r["phases"]["e2e"]
    assert e2e["ok"] is True and e2e["ok_rows"] == 4 and e2e["e2e_vs_model"] > 0
    (speed,) = e2e["speed_by_actor"].values()  # one CPU actor, its switches as RAYINPAINT_SPEED spells them
    assert "compile=0" in speed and "fused_cfg=1" in speed


def test_a_failed_check_is_named_and_exits_1(tmp_path, monkeypatch):
    """The phases' own work stubbed: a self-check that failed, a phase that raised; the others still run."""
    monkeypatch.setattr(verify, "check_phase", lambda *a: {"ok": False, "checks": [{"ok": False}]})
    monkeypatch.setattr(verify, "gpu_tests_phase", lambda *a: {"ok": None})

    def sampler_phase(args, model, speed, device, sampler, steps, ceiling):
        if sampler == "dpmpp_2m":
            raise RuntimeError("SpeedCheckError: the compiled step is off (simulated)")
        return {"images_per_s": 1.0}

    monkeypatch.setattr(verify, "sampler_phase", sampler_phase)
    monkeypatch.setattr(verify, "e2e_phase", lambda *a: {"ok": True})
    path = tmp_path / "v.json"
    args = build_parser().parse_args([*REHEARSAL, "--ceiling-size", "64", "--json", str(path)])
    assert verify.run_verify(args) == 1
    r = json.loads(path.read_text())
    assert r["failed"] == ["self_check", "dpmpp_2m"]
    assert "simulated" in r["phases"]["dpmpp_2m"]["error"] and r["phases"]["e2e"]["ok"] is True
