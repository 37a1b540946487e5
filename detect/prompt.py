"""`--mask-from prompt:<what>`: text-prompted segmentation with CLIPSeg (transformers'
`CLIPSegForImageSegmentation` and its processor), loaded from a local folder (detect/weights.py resolves
`--detector-weights` to one).

CLIPSeg sees the whole image squeezed to 352 x 352 (its processor's resize, ImageNet normalisation) and returns one
logit per pixel of that square; the logits are stretched back to the image's full size (bilinear) and compared with
the threshold there. Comparing logits with logit(threshold) is the same test as sigmoid(logit) >= threshold without
a full-size sigmoid. The model and the prompt's tokens are made once per actor; each call is one forward pass.
"""

from __future__ import annotations

import math

import numpy as np

from .spec import PROMPT_THRESHOLD


def _quiet_transformers() -> None:
    # loading reports and progress bars, once per actor, say nothing the job's log needs
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def logit(p: float) -> float:
    """The logit whose sigmoid is p; -inf at 0 (everything passes), +inf at 1 (nothing does)."""
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


class PromptDetector:
    """folder: a CLIPSeg save (config.json, weights, processor and tokenizer files).

    threads: torch's intra-op threads for this process (one actor per core, so 1 by default; None leaves torch's
    setting alone)."""

    def __init__(self, folder: str, prompt: str, threshold: float = PROMPT_THRESHOLD, threads: int | None = 1):
        import torch
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        _quiet_transformers()
        if threads is not None:
            torch.set_num_threads(threads)
        self.processor = CLIPSegProcessor.from_pretrained(folder, local_files_only=True)
        self.model = CLIPSegForImageSegmentation.from_pretrained(folder, local_files_only=True).eval()
        tokens = self.processor.tokenizer([prompt], padding=True, return_tensors="pt")
        self.text = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        self.prompt, self.threshold = prompt, threshold
        self.cut = logit(threshold)

    def logits(self, rgb: np.ndarray):
        """float32 torch tensor [h, w] at the model's resolution (352 x 352 for CLIPSeg's processor)."""
        import warnings

        import torch

        with warnings.catch_warnings():
            # a decoded image is often a read-only array; the processor only reads it, so torch's warning about
            # wrapping a non-writable array says nothing here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            pixels = self.processor.image_processor(images=[rgb], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model(pixel_values=pixels, **self.text).logits
        return out.reshape(-1, *out.shape[-2:])[0].float()  # [h, w] whether or not the batch axis was squeezed

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """bool [H, W]: True where the prompt's object is (the pixels to repaint)."""
        import torch

        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {rgb.dtype} {rgb.shape}")
        small = self.logits(rgb)
        full = torch.nn.functional.interpolate(small[None, None], size=rgb.shape[:2], mode="bilinear",
                                               align_corners=False)[0, 0]
        return (full >= self.cut).numpy()
