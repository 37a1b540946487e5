"""The detectors' cost per row, part of `rayinpaint bench --cpu-stages` (its "detect" key; `--no-detect` leaves
it out): `--mask-from text` (rapidocr's bundled detection model, ONNX, 1 thread) and `--mask-from prompt:...`
(CLIPSeg at CIDAS/clipseg-rd64-refined's size: the default CLIPSegConfig with reduce_dim 64 and the refined
decoder, random weights, since the cost does not depend on their values; torch with 1 thread).

Per image size: ms per row (the detector's call on a decoded RGB image, median of `repeat`), the size the model
saw, and the CPU cores one GPU needs for detection alone at `images_per_s` (ms per row x images/s). The detector is
built once before the timing, as an actor builds it once; its build time is reported apart.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from .timing import median_ms

# images: {megapixels: RGB uint8 [H, W, 3]}, given by bench/cpu.py (its photo-like images, decoded)


def _time(detector, images: dict[int, np.ndarray], images_per_s: float, repeat: int, input_size) -> list[dict]:
    out = []
    for mp, rgb in images.items():
        ms, mask = median_ms(lambda: detector(rgb), repeat)  # noqa: B023 - called before rgb changes
        assert mask.shape == rgb.shape[:2]
        out.append({"megapixels": mp, "size": f"{rgb.shape[1]}x{rgb.shape[0]}", "detector_input": input_size(rgb),
                    "ms_per_row": ms, "cores_per_gpu": round(ms / 1000 * images_per_s, 2)})
    return out


def text_cost(images: dict[int, np.ndarray], images_per_s: float, repeat: int) -> dict:
    from rayinpaint.detect.text import TextDetector

    t0 = time.perf_counter()
    detector = TextDetector(threads=1)
    build_s = time.perf_counter() - t0

    def seen(rgb):
        h, w = detector.last_input_hw
        return f"{w}x{h}"

    return {"model": "rapidocr bundled PP-OCRv6_det_small.onnx", "max_side": detector.max_side,
            "build_s": round(build_s, 2), "sizes": _time(detector, images, images_per_s, repeat, seen)}


def clipseg_cost(images: dict[int, np.ndarray], images_per_s: float, repeat: int, full_size: bool = True) -> dict:
    """full_size False: a tiny CLIPSeg (for tests of the record's fields)."""
    import torch

    from rayinpaint.detect.prompt import PromptDetector

    from .clipseg_standin import save_clipseg

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        save_clipseg(folder, full_size=full_size)
        t0 = time.perf_counter()
        detector = PromptDetector(folder, "watermark", threads=1)
        build_s = time.perf_counter() - t0
        params = sum(p.numel() for p in detector.model.parameters())
        rows = _time(detector, images, images_per_s, repeat, lambda rgb: "352x352")
    return {"model": "CLIPSeg, CIDAS/clipseg-rd64-refined's shape, random weights" if full_size else
            "CLIPSeg, tiny random", "parameters": params, "build_s": round(build_s, 2), "sizes": rows}


def run_detect_cost(images: dict[int, np.ndarray], images_per_s: float, repeat: int, full_size: bool = True) -> dict:
    """Without the detect extra installed, each detector's entry says so instead of failing the whole bench."""
    import torch  # a dependency of the job itself, extra or not

    from rayinpaint.detect import DetectorMissing, require_extra

    out = {"note": "one row at a time on one core (ONNX and torch 1 thread); cores_per_gpu = detection s/row x "
                   "images/s, on top of the prepare and finish stages"}
    for name, source, cost in (("text", "text", text_cost), ("clipseg", "prompt:watermark", clipseg_cost)):
        try:
            require_extra(source)
        except DetectorMissing as e:
            out[name] = {"skipped": str(e)}
            continue
        previous = torch.get_num_threads()
        try:
            out[name] = cost(images, images_per_s, repeat, full_size) if name == "clipseg" else cost(
                images, images_per_s, repeat)
        finally:
            torch.set_num_threads(previous)
    return out
