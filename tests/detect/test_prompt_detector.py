"""`--mask-from prompt:...`: CLIPSeg through detect/prompt.py, from a tiny random model saved to a folder, offline.
The masks of a random model mean nothing; what is checked is the plumbing: full-size bool masks, the threshold's
direction and ends, the prompt tokenised once, and the weights' digest following the weights."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from rayinpaint.bench.clipseg_standin import save_clipseg as save_tiny_clipseg  # noqa: E402

from rayinpaint.detect import DetectSettings, build_detector, detector_identity  # noqa: E402
from rayinpaint.detect.prompt import PromptDetector  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_clipseg(str(tmp_path_factory.mktemp("clipseg")))


def _image(h=300, w=400, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_mask_is_full_size_and_follows_the_threshold(tiny):
    image = _image()
    masks = {t: PromptDetector(tiny, "watermark", t)(image) for t in (0.0, 0.5, 1.0)}
    for m in masks.values():
        assert m.shape == (300, 400) and m.dtype == bool
    assert masks[0.0].all() and not masks[1.0].any()
    # the cut sits between the smallest and the largest probability the model gave: some pixels each side
    det = PromptDetector(tiny, "watermark", 0.5)
    p = 1 / (1 + np.exp(-det.logits(image).numpy()))
    mid = float(np.median(p))
    cut = PromptDetector(tiny, "watermark", mid)(image)
    assert 0.2 < cut.mean() < 0.8, (mid, cut.mean())
    lower = PromptDetector(tiny, "watermark", max(0.0, mid - 0.01))(image)
    assert (lower >= cut).all() and lower.sum() > cut.sum()


def test_the_prompt_is_tokenised_once_and_changes_the_answer(tiny):
    a, b = PromptDetector(tiny, "watermark", 0.5), PromptDetector(tiny, "a red car", 0.5)
    assert a.text["input_ids"].shape[0] == 1
    image = _image(seed=1)
    assert not np.allclose(a.logits(image).numpy(), b.logits(image).numpy())


def test_build_detector_for_a_prompt_from_a_folder(tiny):
    settings = DetectSettings("prompt:watermark", weights=tiny, threshold=0.0)
    detect = build_detector(settings)
    assert isinstance(detect, PromptDetector) and detect.prompt == "watermark"
    assert detect(_image(64, 48)).shape == (64, 48)


def test_the_identity_follows_the_weights(tmp_path, tiny):
    settings = DetectSettings("prompt:watermark", weights=tiny)
    first = detector_identity(settings, cache_dir=str(tmp_path / "cache"))
    assert first == {"kind": "prompt", "prompt": "watermark", "threshold": 0.5, "max_side": None,
                     "model_sha256": first["model_sha256"]} and len(first["model_sha256"]) == 64
    other = save_tiny_clipseg(str(tmp_path / "other"), seed=1)
    second = detector_identity(DetectSettings("prompt:watermark", weights=other), cache_dir=str(tmp_path / "cache"))
    assert second["model_sha256"] != first["model_sha256"]
    again = detector_identity(DetectSettings("prompt:watermark", weights=tiny, threshold=0.3),
                              cache_dir=str(tmp_path / "cache"))
    assert again["model_sha256"] == first["model_sha256"] and again["threshold"] == 0.3
