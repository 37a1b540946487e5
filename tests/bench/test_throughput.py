"""`rayinpaint bench` and the FLOP count behind its TFLOP/s.

The bench record is checked for its fields and for internal consistency (each derived number recomputed here
from the raw ones it reports). FLOPs are checked against hand formulas for single layers of the tiny config,
against real-tensor counting, and the full SD2 count against the issue's independent estimate (~84 TFLOP per
512x512 image at 50 steps with CFG).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayinpaint.bench.throughput import SWITCHES, ablation_variants, speed_from_args
from rayinpaint.bench.timing import steady_rate
from rayinpaint.jobs.cli import build_parser
from rayinpaint.jobs.config import JobConfig
from rayinpaint.model import PRESETS, load_model
from rayinpaint.model.flops import count_flops, inpaint_flops, unet_flops, vae_flops
from rayinpaint.model.speed import Speed, env_text, parse_switches

SMOKE = ["bench", "--weights", "random:tiny", "--sampler", "ddim", "--batch-size", "2", "--steps", "2",
         "--resolution", "64", "--iters", "2", "--against", "diffusers", "--e2e", "4"]


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel)


# ---- the whole command on CPU --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    """The documented CPU command, run as its own process (it starts and stops a local Ray)."""
    pytest.importorskip("diffusers")
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "rayinpaint.jobs", *SMOKE, "--json", str(path)],
                          capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(path.read_text())
    assert json.loads(proc.stdout) == record  # the same record on stdout and in --json
    return record, wall


@pytest.mark.slow
def test_bench_cpu_record_has_every_field(smoke_record):
    r, wall = smoke_record
    assert wall < 120, wall  # about 40 s on 2 busy cores, most of it Ray starting
    time.strptime(r["date_utc"], "%Y-%m-%dT%H:%M:%SZ")
    assert r["device"].startswith("cpu") and r["dtype"] == "float32"
    assert r["versions"]["torch"] == torch.__version__ and r["versions"]["diffusers"]
    s = r["settings"]
    assert (s["weights"], s["batch_size"], s["steps"], s["resolution"], s["sampler"], s["guidance"]) == \
        ("random:tiny", 2, 2, 64, "ddim", 7.5)
    for key in ("images_per_s", "ratio_vs_diffusers", "flops_per_image", "achieved_tflops", "ceiling_tflops",
                "fraction_of_ceiling", "peak_memory_bytes", "compile_s", "e2e_images_per_s", "e2e_vs_model"):
        assert isinstance(r[key], (int, float)) and r[key] >= 0, key
    assert r["images_per_s"] > 0 and r["peak_memory_bytes"] > 0
    # On CPU every CUDA-only switch resolves off, the portable ones on.
    sp = r["model"]["speed"]
    assert not (sp["cuda_graph"] or sp["pinned"] or sp["compile"] or sp["channels_last"])
    assert sp["fused_cfg"] and sp["batch_vae"]
    assert r["e2e"]["exit_code"] == 0 and r["e2e"]["ok_rows"] == 4
    assert sum(r["e2e"]["counts"].values()) == 4 + 5  # make_dataset adds 5 deliberately bad rows


@pytest.mark.slow
def test_bench_cpu_numbers_are_consistent(smoke_record):
    r, _ = smoke_record
    m, f, c = r["model"], r["flops"], r["ceiling"]
    assert close(m["s_per_batch_median"], statistics.median(m["s_per_batch"]))
    assert len(m["s_per_batch"]) == 2
    assert close(r["images_per_s"], 2 / m["s_per_batch_median"])
    assert f["unet_calls"] == 2 and f["vae_encodes"] == 1
    assert f["per_batch"] == f["unet_calls"] * f["unet_call"] + f["vae_encode"] + f["vae_decode"]
    assert close(r["flops_per_image"], f["per_batch"] / 2)
    assert close(r["achieved_tflops"], r["flops_per_image"] * r["images_per_s"] / 1e12)
    assert close(c["tflops"], 2 * c["n"] ** 3 / c["s_per_matmul"] / 1e12)
    assert close(r["fraction_of_ceiling"], r["achieved_tflops"] / r["ceiling_tflops"])
    a = r["against"]
    assert a["name"] == "diffusers" and a["dtype"] == "float32"
    assert close(a["images_per_s"], 2 / a["s_per_batch_median"])
    assert close(r["ratio_vs_diffusers"], r["images_per_s"] / a["images_per_s"])
    e = r["e2e"]
    assert close(e["images_per_s_wall"], e["ok_rows"] / e["wall_s"])
    assert e["images_per_s"] == (e["images_per_s_steady"] if e["images_per_s_steady"] is not None
                                 else e["images_per_s_wall"])
    assert e["gpus"] == 0  # one CPU actor: the job's rate compares with the model's directly
    assert close(r["e2e_vs_model"], r["e2e_images_per_s"] / r["images_per_s"])


# ---- arguments ------------------------------------------------------------------------------------------------


def test_bench_arguments_switches_and_old_aliases():
    p = build_parser()
    a = p.parse_args(["bench"])
    assert (a.against, a.e2e, a.compile, a.cuda_graph, a.sdpa) == (None, 0, None, None, "auto")
    a = p.parse_args(["bench", "--diffusers", "--job-rows", "8"])  # deprecated spellings still work
    assert (a.against, a.e2e) == ("diffusers", 8)
    a = p.parse_args(["bench", "--no-compile", "--cuda-graph", "--no-fused-cfg", "--sdpa", "math"])
    sp = speed_from_args(a)
    assert (sp.compile, sp.cuda_graph, sp.fused_cfg, sp.sdpa, sp.channels_last) == (False, True, False, "math", None)
    bench_help = p._subparsers._group_actions[0].choices["bench"].format_help()
    assert "--against" in bench_help and "--e2e" in bench_help
    assert "--job-rows" not in bench_help and "--diffusers " not in bench_help
    # The bench's own list of on/off switches (kept free of torch for the command line) is Speed's.
    flags = {f.name for f in dataclasses.fields(Speed) if f.type == "bool | None"}
    assert set(SWITCHES) == flags and len(SWITCHES) == len(flags)


def test_explicit_switches_travel_to_the_actors_through_the_environment():
    """The e2e run hands the bench's explicit switches to the job's actors as $RAYINPAINT_SPEED."""
    sp = Speed(compile=False, sdpa="flash", batch_vae=False)
    text = env_text(sp)
    assert Speed(**parse_switches(text, "test")) == sp
    # explicit > environment > device default
    got = Speed(compile=True).with_env({"RAYINPAINT_SPEED": text}).resolve("cuda")
    assert (got.compile, got.sdpa, got.batch_vae, got.cuda_graph) == (True, "flash", False, True)
    with pytest.raises(ValueError, match="RAYINPAINT_SPEED"):
        Speed().with_env({"RAYINPAINT_SPEED": "compile=maybe"})
    with pytest.raises(ValueError, match="RAYINPAINT_SPEED"):
        Speed().with_env({"RAYINPAINT_SPEED": "warp=1"})


def test_ablation_flips_one_switch_at_a_time():
    base = Speed().resolve("cuda")
    names = ["compile", "cuda_graph", "sdpa", "prompt_cache", "batch_vae"]
    rows = ablation_variants(base, names, prompt_cache_size=1024)
    assert [r[0] for r in rows] == names
    for name, value, speed, cache in rows:
        changed = {k for k, v in speed.as_dict().items() if v != base.as_dict()[k]}
        if name == "prompt_cache":
            assert (changed, value, cache) == (set(), 0, 0)
        else:
            assert changed == {name} and getattr(speed, name) == value and cache == 1024
    assert {r[0]: r[1] for r in rows}["sdpa"] == "math"
    # deterministic cannot go with cuDNN benchmarking: flipping it on turns that off too (else Speed refuses it)
    (_, value, speed, _), = ablation_variants(base, ["deterministic"], prompt_cache_size=1024)
    assert value is True and speed.deterministic and speed.cudnn_benchmark is False


def test_steady_rate_from_results_shards(tmp_path):
    """ok rows written after the first shard, over the time from the first shard to the last."""
    for i, (mtime, ok, err) in enumerate([(100.0, 4, 1), (102.0, 4, 0), (106.0, 8, 2)]):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"status": ["ok"] * ok + ["error"] * err}), path)
        os.utime(path, (mtime, mtime))
    assert steady_rate(str(tmp_path)) == pytest.approx((4 + 8) / 6.0)
    one = tmp_path / "one"
    one.mkdir()
    pq.write_table(pa.table({"status": ["ok"]}), one / "p.parquet")
    assert steady_rate(str(one)) is None  # one shard: no interval to measure


# ---- FLOPs -----------------------------------------------------------------------------------------------------


def test_counted_flops_of_single_layers_match_hand_formulas():
    """2 FLOPs per multiply-add, worked out from the tiny config by hand."""
    u = PRESETS["tiny"].unet
    rows, h, w = 2, 8, 8
    _, by = unet_flops("tiny", rows, (h, w))
    # Stem conv 3x3, in_channels -> model_channels, at full latent resolution.
    assert by["UNet.input_blocks.0.0"] == 2 * rows * h * w * u.model_channels * u.in_channels * 9
    # Self-attention at level 0: q, k, v, out projections C x C over N tokens, then QK^T and AV (N x N x C each).
    C, N, L, Cc = u.model_channels, h * w, 77, u.context_dim
    attn = "UNet.input_blocks.1.1.transformer_blocks.0"
    assert by[attn + ".attn1.to_q"] == 2 * rows * N * C * C
    assert by[attn + ".attn1"] == 4 * (2 * rows * N * C * C) + 2 * (2 * rows * N * N * C)
    # Cross-attention: k, v project the 77 context tokens from the text width; scores are N x 77.
    assert by[attn + ".attn2"] == 2 * (2 * rows * N * C * C) + 2 * (2 * rows * L * Cc * C) + 2 * (2 * rows * N * L * C)
    # GEGLU feed-forward: C -> 8C, then 4C -> C.
    assert by[attn + ".ff"] == 2 * rows * N * C * 8 * C + 2 * rows * N * 4 * C * C


def test_counted_vae_attention_matches_hand_formula():
    """The VAE's single-head mid attention: four 1x1 convs C -> C and QK^T, AV over N = (H/8)^2 positions."""
    v = PRESETS["tiny"].vae
    model = load_model("random:tiny")
    B, H = 2, 64
    C, N = v.level_channels[-1], (H // 8) ** 2
    z = torch.zeros(B, v.z_channels, H // 8, H // 8)
    _, by = count_flops(model.vae.decode, z)
    assert by["Decoder.mid.attn_1"] == 4 * (2 * B * N * C * C) + 2 * (2 * B * N * N * C)
    # The decoder's last conv: 3x3, ch -> 3 RGB channels at full resolution.
    assert by["Decoder.conv_out"] == 2 * B * H * H * 3 * v.ch * 9


def test_meta_count_equals_count_on_real_tensors():
    """Counting on the meta device (what the bench does) gives the count of a real CPU forward."""
    model = load_model("random:tiny")
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(4, 9, 8, 8, generator=g), torch.randn(4, 77, 32, generator=g)
    real, _ = count_flops(model.unet, x, torch.tensor([1, 500, 999, 20]), ctx)
    assert unet_flops("tiny", 4, (8, 8))[0] == real
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    enc = count_flops(model.vae.encode, img)[0]
    dec = count_flops(model.vae.decode, torch.randn(2, 4, 8, 8, generator=g))[0]
    assert vae_flops("tiny", 2, (64, 64)) == (enc, dec)


def test_full_sd2_count_matches_the_independent_estimate():
    """The issue's figure: one 512x512 image at 50 DDIM steps with CFG is about 84 TFLOP (and 0.8 TFLOP per UNet
    row at 64x64 latents, tests/test_gpu_model.py)."""
    f = inpaint_flops("sd2-inpainting", batch=16, resolution=512, unet_calls=50)
    assert 82e12 <= f["per_image"] <= 86e12, f["per_image"]
    assert 0.78e12 <= f["unet_call"] / 32 <= 0.82e12
    # Linear in the batch: the per-image figure does not depend on it.
    assert inpaint_flops("sd2-inpainting", batch=1, resolution=512, unet_calls=50)["per_image"] == f["per_image"]


# ---- GPU -------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.slow
def test_bench_on_gpu_uses_every_switch_and_never_syncs_in_the_step_loop(tmp_path):
    path = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "rayinpaint.jobs", "bench", "--weights", "random:tiny",
                           "--batch-size", "2", "--steps", "3", "--resolution", "64", "--iters", "2",
                           "--json", str(path)], capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(path.read_text())
    sp = r["model"]["speed"]
    assert all(sp[k] for k in ("channels_last", "compile", "cuda_graph", "fused_cfg", "batch_vae", "pinned"))
    assert r["dtype"] in ("bfloat16", "float16") and r["ceiling"]["dtype"] == "bfloat16"
    assert r["model"]["step_loop_sync_free"] is True, r["model"]["step_loop_sync_error"]
    assert r["compile_s"] > 0 and r["model"]["graph_capture_s"] > 0
    assert r["model"]["peak_memory_kind"] == "cuda_max_reserved"
    assert r["peak_memory_bytes"] >= r["model"]["peak_allocated_bytes"] > 0


# ---- settings that cannot work, refused before any work ------------------------------------------------------


def test_compile_settings_that_cannot_work_are_refused_in_the_option_parsing():
    with pytest.raises(ValueError, match="nest inside the captured step"):
        parse_switches("compile_mode=reduce-overhead", "--speed")  # cuda_graph on by default on CUDA
    with pytest.raises(ValueError, match="nest inside"):
        Speed(compile_mode="max-autotune")
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        parse_switches("compile_mode=max_autotune", "--speed")  # misspelt: it used to fail inside the actor
    with pytest.raises(ValueError, match="compile_backend must be one of"):
        parse_switches("compile_backend=inductr", "--speed")
    assert parse_switches("compile_mode=max-autotune,cuda_graph=0", "--speed")["compile_mode"] == "max-autotune"
    assert Speed(compile_mode="max-autotune-no-cudagraphs").resolve("cuda").cuda_graph


@pytest.mark.parametrize("argv", [
    ["run", "--manifest", "m.parquet", "--output", "out", "--speed", "compile_mode=reduce-overhead"],
    ["run", "--manifest", "m.parquet", "--output", "out", "--speed", "compile_mode=fastest"],
    ["bench", "--weights", "random:tiny", "--compile-mode", "max-autotune"],
], ids=["run-nested-graphs", "run-misspelt", "bench-nested-graphs"])
def test_the_command_line_exits_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    from rayinpaint.jobs.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compile_mode" in err[0], err
    assert not (tmp_path / "out").exists()


def test_bench_defaults_are_the_runs():
    """A record made with no workload options describes a default `rayinpaint run` (dry-run estimates use it)."""
    import argparse

    from rayinpaint.bench.throughput import add_bench_arguments

    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    a = p.parse_args([])
    assert (a.sampler, a.steps, a.resolution, a.batch_size, a.guidance) == ("dpmpp_2m", 25, 512, 16, 7.5)
    run = JobConfig(manifest=("m",), output="o")
    assert (a.sampler, a.steps, a.resolution, a.batch_size, a.guidance) == \
        (run.sampler, run.steps, run.resolution, run.batch_size, run.guidance)
