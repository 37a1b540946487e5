"""What `--mask-from`, `--detector-weights` and `--detector-threshold` ask for, checked before any work starts.

No heavy import here (no onnxruntime, torch or transformers): the driver validates the options and builds the
settings fingerprint without loading a detector. `require_extra` only asks whether the optional packages can be
found, so a missing extra is reported in one line before the job starts rather than inside an actor.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

from rayinpaint.io.errors import SettingsError

TEXT = "text"
PROMPT = "prompt"
PROMPT_PREFIX = "prompt:"

# Text: the DB detector's mean probability inside a candidate box below which the box is dropped (rapidocr's
# Det.box_thresh). rapidocr uses 0.5; measured on the photo-like backgrounds of tests/detect/test_text_detector.py,
# 0.5 left false boxes of 0.51-0.58 over smooth gradients (with the shape guard of detect/text.py: 26% of one
# text-free image of ten) where 0.6 left none, and every caption the tests draw still scores above 0.6.
TEXT_THRESHOLD = 0.6
# Prompt: CLIPSeg's per-pixel sigmoid. The model was trained with a binary cross-entropy loss, so 0.5 is the point
# where "the prompt is here" becomes the likelier answer; a user who sees edges of a watermark left over lowers it.
PROMPT_THRESHOLD = 0.5
# The longest side the text detector sees (never enlarged to it). Measured on a 4000 x 3000 photo-like image with
# captions of 24-90 px (tests/detect/test_text_detector.py): at 1280 the model missed a 32 px and half of a 40 px
# line that 1536 finds; 2048 found everything but costs 2x 1536 (one core: ~440 ms at 1280, ~630 ms at 1536,
# ~1300 ms at 2048; bench/detectcost.py). A 12-MP image is never detected at full size.
MAX_SIDE = 1536
MIN_MAX_SIDE, MAX_MAX_SIDE = 256, 4096
INSTALL_HINT = 'pip install "ray-inpaint[detect]"'
# What each kind imports to run: a module that cannot be found means the extra is not installed.
NEEDS = {TEXT: ("rapidocr", "onnxruntime"), PROMPT: ("transformers", "torch")}


class DetectorMissing(SettingsError):
    """The detector asked for needs packages that are not installed; the message says what to install."""


def parse_source(value: str) -> tuple[str, str | None]:
    """`--mask-from` value -> (kind, prompt): ("text", None) or ("prompt", "<text>"); SettingsError otherwise."""
    if not isinstance(value, str):
        raise SettingsError(f"--mask-from: expected 'text' or 'prompt:<what to find>', got {value!r}")
    if value == TEXT:
        return TEXT, None
    if value.startswith(PROMPT_PREFIX):
        prompt = " ".join(value[len(PROMPT_PREFIX):].split())  # one line, single spaces: it goes in messages
        if prompt:
            return PROMPT, prompt
        raise SettingsError("--mask-from prompt: needs the text to find after 'prompt:', e.g. prompt:watermark")
    raise SettingsError(f"--mask-from: expected 'text' or 'prompt:<what to find>', got {value!r}")


@dataclass(frozen=True)
class DetectSettings:
    """source: the `--mask-from` value; weights: `--detector-weights` (None: the text detector's bundled model;
    required for prompt); threshold: `--detector-threshold` (None: the kind's default); max_side: the longest side
    the text detector sees (CLIPSeg always sees 352 x 352)."""

    source: str
    weights: str | None = None
    threshold: float | None = None
    max_side: int = MAX_SIDE
    # Where remote weights are cached (--weights-cache; None: the model weights' default) and the fsspec options of
    # their store (credentials, endpoint: never printed). Neither changes a mask, so neither is in the fingerprint.
    cache_dir: str | None = None
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return parse_source(self.source)[0]

    @property
    def prompt(self) -> str | None:
        return parse_source(self.source)[1]

    @property
    def effective_threshold(self) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        return TEXT_THRESHOLD if self.kind == TEXT else PROMPT_THRESHOLD

    def validate(self) -> DetectSettings:
        """Raise SettingsError (one line) on a bad value; return self."""
        kind, _ = parse_source(self.source)
        t = self.threshold
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                              or not 0.0 <= t <= 1.0):
            raise SettingsError(f"--detector-threshold: expected a number from 0 to 1, got {t!r}")
        if kind == PROMPT and not self.weights:
            raise SettingsError("--mask-from prompt: needs --detector-weights (a CLIPSeg folder, e.g. a save of "
                                "CIDAS/clipseg-rd64-refined, local or s3://, hf://)")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights.strip()):
            raise SettingsError(f"--detector-weights: expected a path or URI, got {self.weights!r}")
        m = self.max_side
        if isinstance(m, bool) or not isinstance(m, int) or not MIN_MAX_SIDE <= m <= MAX_MAX_SIDE:
            raise SettingsError(f"detector max side: expected an integer from {MIN_MAX_SIDE} to {MAX_MAX_SIDE}, "
                                f"got {m!r}")
        return self


def mask_source_name(settings: DetectSettings) -> str:
    """The mask source as the results record it: "text" or "prompt:<text>"."""
    kind, prompt = parse_source(settings.source)
    return TEXT if kind == TEXT else f"{PROMPT_PREFIX}{prompt}"


def require_extra(source: str) -> None:
    """Raise DetectorMissing when a package the detector of `source` needs is not installed.

    Looks the packages up without importing them: importing transformers takes seconds, and the driver only
    needs to know that the actors will find them."""
    kind, _ = parse_source(source)
    missing = [name for name in NEEDS[kind] if _absent(name)]
    if missing:
        what = "text detection" if kind == TEXT else "prompt segmentation"
        raise DetectorMissing(f"--mask-from {mask_source_name(DetectSettings(source))}: {what} needs "
                              f"{', '.join(missing)}, not installed; install it with: {INSTALL_HINT}")


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None  # None also where sys.modules[name] is None (blocked)
    except (ImportError, ValueError):
        return True
