"""Masks from the image itself: text detection (`--mask-from text`) and text-prompted segmentation
(`--mask-from prompt:<what>`).

    settings = DetectSettings("text").validate()      # or DetectSettings("prompt:watermark", weights="s3://...")
    require_extra(settings.source)                    # DetectorMissing: one line naming the extra to install
    detector_identity(settings)                       # for the settings fingerprint; DetectorWeightsError
    detect = build_detector(settings)                 # once per actor (loads the model)
    mask = detect(rgb)                                # bool [H, W], True = repaint

Importing this package loads neither onnxruntime nor torch: the detectors import them when built.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rayinpaint.io.errors import redact_uri

from .spec import (PROMPT_THRESHOLD, TEXT_THRESHOLD, DetectorMissing, DetectSettings, mask_source_name,
                   parse_source, require_extra)
from .weights import DetectorWeightsError, detector_identity, resolve_weights


def build_detector(settings: DetectSettings, cache_dir: str | None = None, storage_options: dict | None = None,
                   threads: int = 1) -> Callable[[np.ndarray], np.ndarray]:
    """The detector `settings` ask for, loaded: a callable from an RGB uint8 image [H, W, 3] to a bool mask
    [H, W]. threads: the model's intra-op threads (the job runs one detector per core)."""
    settings.validate()
    require_extra(settings.source)
    path, _ = resolve_weights(settings, cache_dir, storage_options)
    try:
        if settings.kind == "text":
            from .text import TextDetector

            return TextDetector(path, settings.effective_threshold, settings.max_side, threads)
        from .prompt import PromptDetector

        return PromptDetector(path, settings.prompt, settings.effective_threshold, threads)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - files that were read but do not load: one line naming the URI
        where = redact_uri(settings.weights) if settings.weights else "(the bundled text detection model)"
        raise DetectorWeightsError(f"--detector-weights {where}: does not load as a "
                                   f"{'text detection ONNX model' if settings.kind == 'text' else 'CLIPSeg folder'}"
                                   f" ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


__all__ = ["DetectSettings", "DetectorMissing", "DetectorWeightsError", "PROMPT_THRESHOLD", "TEXT_THRESHOLD",
           "build_detector", "detector_identity", "mask_source_name", "parse_source", "require_extra",
           "resolve_weights"]
