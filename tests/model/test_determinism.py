"""`--deterministic`: fixed kernels (no cuDNN benchmarking, no inductor autotuning, deterministic algorithms),
refused with the settings that contradict it, carried from the command line to the actor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayinpaint.jobs.config import build_config
from rayinpaint.model import Inpainter, Speed, load_model
from rayinpaint.model.choices import parse_switches
from rayinpaint.model.speed import _inductor_determinism, apply_determinism


def test_deterministic_is_off_unless_asked_and_turns_cudnn_benchmarking_off():
    assert Speed().resolve("cuda").deterministic is False and Speed().resolve("cuda").cudnn_benchmark
    det = Speed(deterministic=True).resolve("cuda")
    assert det.deterministic and det.cudnn_benchmark is False
    assert Speed(deterministic=True).resolve("cpu").deterministic  # honoured on CPU too (deterministic algorithms)


def test_contradicting_settings_are_refused():
    with pytest.raises(ValueError, match="cudnn_benchmark"):
        parse_switches("deterministic=1,cudnn_benchmark=1", "--speed")
    with pytest.raises(ValueError, match="autotuning"):
        parse_switches("deterministic=1,compile_mode=max-autotune-no-cudagraphs", "--speed")
    from rayinpaint.io.errors import SettingsError

    with pytest.raises(SettingsError, match="--deterministic"):
        build_config({"manifest": ["m.parquet"], "output": "out", "deterministic": True,
                      "speed": "compile_mode=max-autotune-no-cudagraphs"})


def test_the_option_reaches_the_model_settings():
    from rayinpaint.io.storage import StorageOptions

    cfg = build_config({"manifest": ["m.parquet"], "output": "out", "deterministic": True, "strict_speed": True})
    ms = cfg.model_settings(StorageOptions())
    assert ms.deterministic and ms.strict_speed


def test_process_wide_settings_follow_the_switch():
    import torch._inductor.config as inductor_config

    saved = inductor_config.get_config_copy()
    try:
        apply_determinism(Speed(deterministic=True).resolve("cpu"), "cpu")
        assert torch.are_deterministic_algorithms_enabled()
        apply_determinism(Speed().resolve("cpu"), "cpu")
        assert not torch.are_deterministic_algorithms_enabled()
        inductor_config.max_autotune = True
        _inductor_determinism(True)
        assert inductor_config.deterministic and not inductor_config.max_autotune
        assert not inductor_config.coordinate_descent_tuning and not inductor_config.triton.autotune_pointwise
    finally:
        inductor_config.load_config(saved)
        torch.use_deterministic_algorithms(False)


def test_a_deterministic_inpainter_gives_the_same_bits_as_the_default_on_cpu():
    """On CPU nothing picks kernels by timing: the switch changes no pixel, and reruns are bitwise equal."""
    m = load_model("random:tiny")
    imgs = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    masks = np.full((2, 64, 64), 255, np.uint8)
    try:
        det = Inpainter(m, sampler="ddim", steps=2, speed=dict(deterministic=True))
        a = det(imgs, masks, ["a", "b"], seeds=[1, 2])
        b = det(imgs, masks, ["a", "b"], seeds=[1, 2])
    finally:
        torch.use_deterministic_algorithms(False)
    ref = Inpainter(m, sampler="ddim", steps=2)(imgs, masks, ["a", "b"], seeds=[1, 2])
    assert np.array_equal(a, b) and np.array_equal(a, ref)
