"""`--mask-from text`: where an image has text, from rapidocr's bundled ONNX text detection model (DB, PP-OCRv6
small), detection only.

Only the detection half of OCR runs: one onnxruntime session on the detection model and rapidocr's DB
post-processing (probability map -> scored quadrilaterals). No angle classifier and no recogniser are built: the
job repaints text, it never reads it, and the recogniser alone is twice the detection model's size (21 MB of ONNX
against 10 MB) in every actor.

Cost is bounded by the input size the model sees, not by the image's: the longest side is brought down to
`max_side` (the DB map is computed at that size), and the quadrilaterals found are mapped back to the full image
and filled there. A 12-MP photo is detected at 1536 x 1152 by default, never at full size.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .spec import MAX_SIDE, TEXT_THRESHOLD

# rapidocr's defaults for the DB post-processing (its config.yaml, Det section), except box_thresh, which is
# --detector-threshold. `thresh` binarises the probability map; `unclip_ratio` grows each shrunk text kernel back to
# the whole line (DB predicts a shrunk region by design).
DB_PIXEL_THRESH = 0.3
DB_UNCLIP_RATIO = 1.6
DB_MAX_CANDIDATES = 1000
# Shape guard: DB boxes one text line each, so a line is long and thin, or small. On smooth gradients the model
# sometimes marks a whole flat region (up to the entire image, scored 0.77: tests/detect/test_text_detector.py's
# backgrounds); a box whose short side is over a tenth of the image's short side and whose sides are within 1.5x
# of each other is such a region, not a line, and is dropped. A one-word headline of letters that tall is lost too.
FAT_SHORT_SIDE = 0.10
FAT_ASPECT = 1.5
STRIDE = 32  # the network's input sides are multiples of 32
BUNDLED_MODEL = "PP-OCRv6_det_small.onnx"


def bundled_model_path() -> str:
    """The detection model that ships inside the rapidocr wheel (used when --detector-weights is not given)."""
    import rapidocr

    return os.path.join(os.path.dirname(rapidocr.__file__), "models", BUNDLED_MODEL)


def detection_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) the model sees: the longest side brought down to `max_side`, each side rounded to a multiple of 32.

    Never enlarged beyond that rounding: a small image's text is already at the size it was drawn, and enlarging
    costs time without adding detail."""
    scale = min(1.0, max_side / max(height, width))
    return (max(STRIDE, int(round(height * scale / STRIDE)) * STRIDE),
            max(STRIDE, int(round(width * scale / STRIDE)) * STRIDE))


def _is_region(quad: np.ndarray, image_short_side: int) -> bool:
    """A box too big and too square to be one line of text (the shape guard above)."""
    import cv2

    short, long = sorted(cv2.minAreaRect(quad.astype(np.float32))[1])
    return short > FAT_SHORT_SIDE * image_short_side and long < FAT_ASPECT * short


def _quiet_rapidocr() -> None:
    # rapidocr logs every model load at INFO on its own handler; one line per actor per image is noise in a job log
    logging.getLogger("RapidOCR").setLevel(logging.WARNING)


class TextDetector:
    """Built once per actor (loads the ONNX session: the expensive part); each call is one forward pass.

    threads: onnxruntime's intra-op threads. The job runs one detector actor per CPU core, so each session uses 1
    thread by default; more threads in each would oversubscribe the cores the actors already fill."""

    def __init__(self, model_path: str | None = None, threshold: float = TEXT_THRESHOLD, max_side: int = MAX_SIDE,
                 threads: int = 1):
        import onnxruntime as ort
        from rapidocr.ch_ppocr_det.utils import DBPostProcess

        _quiet_rapidocr()  # after the import: importing rapidocr sets its logger's level
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only
        # onnxruntime's CPU arena stays on (rapidocr turns it off): each image brings its own input shape and the
        # arena keeps the largest blocks it has seen, but the input is bounded by max_side, so what it keeps is
        # bounded too; turning it off cost 20% more time per 12-MP row (790-820 ms against 640-770 ms, one core)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.model_path = model_path or bundled_model_path()
        self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.post = DBPostProcess(thresh=DB_PIXEL_THRESH, box_thresh=threshold, max_candidates=DB_MAX_CANDIDATES,
                                  unclip_ratio=DB_UNCLIP_RATIO, use_dilation=True, score_mode="fast")
        self.threshold, self.max_side = threshold, max_side
        self.last_input_hw: tuple[int, int] | None = None  # what the model saw on the last call (tests, bench)

    def model_input(self, rgb: np.ndarray) -> np.ndarray:
        """float32 [1, 3, h, w]: BGR (the order the PaddleOCR models were trained on), scaled to [-1, 1]."""
        import cv2

        h, w = detection_size(rgb.shape[0], rgb.shape[1], self.max_side)
        # INTER_AREA averages the pixels a downscale drops (no aliasing of thin strokes); LINEAR for the small
        # stretch that rounding to 32 makes on an image at or below max_side
        shrink = h * w < rgb.shape[0] * rgb.shape[1]
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        x = small[:, :, ::-1].astype(np.float32) * np.float32(2 / 255) - np.float32(1)
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, list[float]]:
        """Quadrilaterals int32 [N, 4, 2] (x, y) in the full image's pixels, and their scores."""
        x = self.model_input(rgb)
        self.last_input_hw = (x.shape[2], x.shape[3])
        prob = self.session.run(None, {self.input_name: x})[0]
        # the post-processing scales the quadrilaterals from the map's size to the size it is given: the full image
        boxes, scores = self.post(prob, (rgb.shape[0], rgb.shape[1]))
        boxes = np.asarray(boxes, np.int32).reshape(-1, 4, 2)
        keep = [i for i, quad in enumerate(boxes) if not _is_region(quad, min(rgb.shape[:2]))]
        return boxes[keep], [scores[i] for i in keep]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """bool [H, W]: True where text was found (the pixels to repaint)."""
        import cv2

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
        quads, _ = self.boxes(rgb)
        mask = np.zeros(rgb.shape[:2], np.uint8)
        if len(quads):
            cv2.fillPoly(mask, list(quads), 1)
        return mask.view(bool)
