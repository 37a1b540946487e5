"""`rayinpaint bench --verify` rehearsed on CPU with the tiny model: every phase runs and the record says so; a
failed correctness check, one that did not run (on CUDA), a phase past its budget, and a bad $RAYINPAINT_SPEED
each make the exit code non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from rayinpaint.bench import verify
from rayinpaint.jobs.cli import build_parser

REHEARSAL = ["bench", "--verify", "--weights", "random:tiny", "--batch-size", "2", "--resolution", "64",
             "--steps", "2", "--iters", "1", "--warmup", "0", "--e2e", "4"]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # REHEARSAL_S on 2 shared cores (docs/performance.md); far more when busier
def test_the_verification_command_runs_end_to_end_on_cpu(tmp_path):
    pytest.importorskip("diffusers")
    path = tmp_path / "verify.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rayinpaint.jobs", *REHEARSAL, "--json", str(path)],
                          capture_output=True, text=True, timeout=1700, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(path.read_text())
    assert json.loads(proc.stdout) == r
    assert list(r["phases"]) == ["environment", "self_check", "gpu_tests", "ddim", "dpmpp_2m", "e2e"]
    assert r["failed"] == [] and r["not_run"] == [] and r["device"].startswith("cpu")
    assert all(p["seconds"] <= p["budget_s"] for p in r["phases"].values())
    env = r["phases"]["environment"]
    assert env["versions"]["torch"] and env["ceiling"]["tflops"] > 0
    check = r["phases"]["self_check"]
    (c,) = check["checks"]
    assert check["ok"] is True and check["fell_back"] == [] and c["compile"] and c["ok"] and c["check_s"] > 0
    assert c["fast_vs_eager"][0] <= c["tol"]  # an fp32 model: the default bound (no fp32 reference to take)
    tests = r["phases"]["gpu_tests"]
    assert tests["ok"] is None and tests["counts"]["skipped"] > 0  # no CUDA here: every GPU test skips,
    assert tests["check"] is False  # which on CPU is not a check that did not run
    assert tests["marks"] == "gpu and not slow and not compiles"
    for name, steps in (("ddim", 2), ("dpmpp_2m", 1)):
        p = r["phases"][name]
        assert p["ok"] and p["sampler"] == name and p["steps"] == steps and p["images_per_s"] > 0
        assert p["model"]["speed"]["fused_cfg"] is True and p["model"]["speed"]["compile"] is True  # one Inpainter
        assert p["model"]["self_check"] == check["checks"]  # checked once, in the self_check phase
        assert p["ratio_vs_diffusers"] == pytest.approx(p["images_per_s"] / p["against"]["images_per_s"])
        assert set(p["targets"]) == {"ratio_vs_diffusers", "fraction_of_ceiling"}
    e2e = r["phases"]["e2e"]
    assert e2e["ok"] is True and e2e["ok_rows"] == 4 and e2e["e2e_vs_model"] > 0 and e2e["fell_back"] == []
    (speed,) = e2e["speed_by_actor"].values()  # one CPU actor, its switches as RAYINPAINT_SPEED spells them
    assert "compile=0" in speed and "fused_cfg=1" in speed
    print(f"\nrehearsal: {time.perf_counter() - t0:.0f} s, phases "
          f"{ {k: round(v['seconds'], 1) for k, v in r['phases'].items()} }")


def _stub_phases(monkeypatch, check_ok=False, tests_ok=None):
    monkeypatch.setattr(verify, "build_inpainter", lambda *a: "the run's Inpainter")
    monkeypatch.setattr(verify, "check_phase", lambda *a: {"ok": check_ok, "checks": [{"ok": check_ok}]})
    monkeypatch.setattr(verify, "gpu_tests_phase", lambda *a: {"ok": tests_ok})

    def sampler_phase(args, inp, model, device, sampler, steps, ceiling):
        if sampler == "dpmpp_2m":
            raise RuntimeError("SpeedCheckError: the compiled step is off (simulated)")
        return {"images_per_s": 1.0, "ok": True}

    monkeypatch.setattr(verify, "sampler_phase", sampler_phase)
    monkeypatch.setattr(verify, "e2e_phase", lambda *a: {"ok": True})


def test_a_failed_check_is_named_and_exits_1(tmp_path, monkeypatch):
    """The phases' own work stubbed: a self-check that failed, a phase that raised; the others still run."""
    _stub_phases(monkeypatch)
    path = tmp_path / "v.json"
    args = build_parser().parse_args([*REHEARSAL, "--ceiling-size", "64", "--json", str(path)])
    assert verify.run_verify(args) == 1
    r = json.loads(path.read_text())
    assert r["failed"] == ["self_check", "dpmpp_2m"] and r["not_run"] == ["gpu_tests"]
    assert "simulated" in r["phases"]["dpmpp_2m"]["error"] and r["phases"]["e2e"]["ok"] is True


def test_a_check_that_did_not_run_is_named_apart_from_a_measurement(tmp_path):
    """GPU tests that did not run (ok: None) are `not_run`, which fails a run on CUDA (run_verify's exit code);
    a phase that only measures says so (check: False)."""
    rec = verify.Record(str(tmp_path / "r.json"), {})
    with rec.phase("gpu_tests") as out:
        out.update({"ok": None})
    with rec.phase("environment") as out:
        out.update({"ok": None, "check": False})
    assert rec.not_run == ["gpu_tests"] and rec.failed == []
    assert json.loads((tmp_path / "r.json").read_text())["not_run"] == ["gpu_tests"]


def test_a_phase_past_its_budget_is_stopped_and_failed(tmp_path, monkeypatch):
    monkeypatch.setitem(verify.BUDGETS, "ddim", 0.2)
    rec = verify.Record(str(tmp_path / "r.json"), {})
    with rec.phase("ddim") as out:
        for _ in range(50):
            time.sleep(0.1)
        out["ok"] = True
    assert rec.failed == ["ddim"] and "past its budget" in rec.data["phases"]["ddim"]["error"]
    assert rec.data["phases"]["ddim"]["seconds"] < 2


@pytest.mark.parametrize("cmd", [["run", "--manifest", "m.parquet", "--output", "out"], REHEARSAL])
def test_a_bad_speed_environment_variable_exits_2_with_one_line(cmd, capsys, tmp_path, monkeypatch):
    from rayinpaint.jobs.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYINPAINT_SPEED", "compile=maybe")
    assert main(cmd) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "$RAYINPAINT_SPEED" in err[0] and "compile" in err[0], err
    assert not (tmp_path / "out").exists() and not (tmp_path / "verify.json").exists()
