"""`--mask-from`, `--detector-threshold`, `--detector-weights`: parsing, validation, the missing-extra message, and
weights resolution (local file and folder, memory:// through the weights cache, a missing URI)."""

from __future__ import annotations

import sys

import fsspec
import pytest

from rayinpaint.detect import (DetectorMissing, DetectorWeightsError, DetectSettings, build_detector,
                               detector_identity, mask_source_name, parse_source, require_extra, resolve_weights)
from rayinpaint.io.errors import SettingsError


def test_mask_from_values():
    assert parse_source("text") == ("text", None)
    assert parse_source("prompt:watermark") == ("prompt", "watermark")
    assert parse_source("prompt:  red   logo ") == ("prompt", "red logo")
    for bad in ("", "Text", "prompt:", "prompt:   ", "ocr", "prompt", None):
        with pytest.raises(SettingsError) as e:
            parse_source(bad)
        assert "--mask-from" in str(e.value) and "\n" not in str(e.value)
    assert mask_source_name(DetectSettings("prompt: watermark ", weights="w")) == "prompt:watermark"


def test_settings_defaults_and_validation():
    text = DetectSettings("text").validate()
    assert (text.kind, text.effective_threshold, text.max_side) == ("text", 0.6, 1536)
    assert DetectSettings("prompt:logo", weights="/w").validate().effective_threshold == 0.5
    assert DetectSettings("text", threshold=0.3).effective_threshold == 0.3
    for bad in (DetectSettings("text", threshold=1.5), DetectSettings("text", threshold=float("nan")),
                DetectSettings("text", threshold=True), DetectSettings("prompt:logo"),
                DetectSettings("text", max_side=100), DetectSettings("text", weights=" ")):
        with pytest.raises(SettingsError) as e:
            bad.validate()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("source, blocked", [("text", "rapidocr"), ("text", "onnxruntime"),
                                             ("prompt:watermark", "transformers")])
def test_a_missing_extra_is_one_line_naming_what_to_install(monkeypatch, source, blocked):
    require_extra(source)  # all installed here
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(DetectorMissing) as e:
        require_extra(source)
    msg = str(e.value)
    assert isinstance(e.value, SettingsError) and "\n" not in msg
    assert blocked in msg and 'pip install "ray-inpaint[detect]"' in msg, msg


def test_text_weights_default_to_the_bundled_model(tmp_path):
    path, digest = resolve_weights(DetectSettings("text"), cache_dir=str(tmp_path))
    assert path.endswith("PP-OCRv6_det_small.onnx") and len(digest) == 64
    ident = detector_identity(DetectSettings("text"), cache_dir=str(tmp_path))
    assert ident == {"kind": "text", "prompt": None, "threshold": 0.6, "max_side": 1536, "model_sha256": digest}
    assert detector_identity(DetectSettings("text", max_side=1024), cache_dir=str(tmp_path))["max_side"] == 1024


def test_a_text_model_from_memory_is_fetched_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYINPAINT_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.pipe("/detect-test/det.onnx", b"not really onnx, only bytes to fetch")
    try:
        path, digest = resolve_weights(DetectSettings("text", weights="memory://detect-test/det.onnx"))
        assert path.startswith(str(tmp_path / "cache")) and open(path, "rb").read().startswith(b"not really")
        fs.pipe("/detect-test/det2.onnx", b"other bytes")
        other = resolve_weights(DetectSettings("text", weights="memory://detect-test/det2.onnx"))[1]
        assert other != digest
        with pytest.raises(DetectorWeightsError) as e:  # read, but not a model: one line at build time
            build_detector(DetectSettings("text", weights="memory://detect-test/det.onnx"))
        assert "\n" not in str(e.value) and "memory://detect-test/det.onnx: does not load" in str(e.value)
    finally:
        fs.rm("/detect-test", recursive=True)


def test_a_clipseg_folder_from_memory_is_fetched_and_loads(tmp_path):
    pytest.importorskip("transformers")
    from rayinpaint.bench.clipseg_standin import save_clipseg as save_tiny_clipseg

    local = save_tiny_clipseg(str(tmp_path / "tiny"))
    fs = fsspec.filesystem("memory")
    fs.put(local, "/detect-clipseg", recursive=True)
    try:
        settings = DetectSettings("prompt:watermark", weights="memory://detect-clipseg", threshold=0.0)
        folder, digest = resolve_weights(settings, cache_dir=str(tmp_path / "cache"))
        assert folder.startswith(str(tmp_path / "cache")) and digest == resolve_weights(
            DetectSettings("prompt:watermark", weights=local))[1]
        assert build_detector(settings, cache_dir=str(tmp_path / "cache"))(
            __import__("numpy").zeros((20, 30, 3), "uint8")).all()
    finally:
        fs.rm("/detect-clipseg", recursive=True)


@pytest.mark.parametrize("source, uri", [("text", "memory://detect-test/nothing.onnx"),
                                         ("text", "/no/such/file.onnx"),
                                         ("prompt:logo", "memory://detect-test/no-folder"),
                                         ("prompt:logo", "/no/such/folder")])
def test_missing_weights_are_one_line_naming_the_uri(tmp_path, source, uri):
    with pytest.raises(DetectorWeightsError) as e:
        detector_identity(DetectSettings(source, weights=uri), cache_dir=str(tmp_path))
    msg = str(e.value)
    assert isinstance(e.value, SettingsError) and "\n" not in msg and uri in msg, msg


def test_a_folder_that_is_not_clipseg_is_refused(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text("{}")
    with pytest.raises(DetectorWeightsError, match="not a CLIPSeg folder"):
        resolve_weights(DetectSettings("prompt:logo", weights=str(tmp_path / "w")))
