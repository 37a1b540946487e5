"""`--mask-from text`: rapidocr's bundled detection model, through detect/text.py, finds text drawn on photo-like
backgrounds (sizes, angles, colours, a half-transparent watermark) and leaves text-free images alone; a 12-MP image
is detected at the bounded side and its boxes land at full resolution.

Known weakness, measured here: the model (PP-OCRv6 small) also takes flat-colour rectangles for text panels and, on
smooth gradients, whole flat regions for text; detect/text.py's shape guard and the 0.6 box threshold remove the
region-sized boxes (text-free images below: none marked), not the line-shaped ones over rectangles.

Coverage: the share of the drawn text's pixels (drawn again onto a blank layer) inside the detected mask grown by
8 px; the job grows masks before repainting, so a box that stops a few pixels short of a stroke still repaints it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from rayinpaint.bench.cpu import photo_like
from rayinpaint.io.masks import dilate

pytest.importorskip("rapidocr")
pytest.importorskip("onnxruntime")

from rayinpaint.detect.text import TextDetector, detection_size  # noqa: E402

WHITE, BLACK, YELLOW, RED = (255, 255, 255, 255), (0, 0, 0, 255), (255, 220, 0, 255), (200, 30, 30, 255)
WATERMARK = (255, 255, 255, 160)  # white at 63% opacity
# (text, font px, angle in degrees, colour, centre as fractions of width and height), three lines per image
IMAGES = {
    "level-small-mid-large": [("caption: sunset over the bay", 20, 0, WHITE, (0.3, 0.85)),
                              ("Summer Sale 2026", 32, 0, BLACK, (0.5, 0.5)), ("SALE", 96, 0, YELLOW, (0.7, 0.2))],
    "tilted-15": [("Summer Sale 2026", 20, 15, YELLOW, (0.3, 0.3)), ("© Studio Nord", 40, -15, RED, (0.65, 0.7)),
                  ("photo by A. Lee", 28, -15, WHITE, (0.7, 0.2))],
    "tilted-30-and-vertical": [("Summer Sale 2026", 32, 30, WHITE, (0.35, 0.6)),
                               ("www.example.com", 24, 90, BLACK, (0.85, 0.5)),
                               ("limited offer", 64, 30, RED, (0.5, 0.25))],
    "watermark": [("© stockphoto", 64, 0, WATERMARK, (0.5, 0.5)), ("© stockphoto", 40, 30, WATERMARK, (0.25, 0.25)),
                  ("sample", 48, 0, WATERMARK, (0.75, 0.8))],
}
SIZE = (1152, 864)  # 1 MP: detected at its own size (rounded to multiples of 32)


@pytest.fixture(scope="module")
def detector():
    return TextDetector()


def _photo(width: int, height: int, seed: int) -> Image.Image:
    return Image.open(io.BytesIO(photo_like(width, height, seed))).convert("RGBA")


def _text_layer(size: tuple[int, int], text: str, px: int, angle: float, colour, centre) -> Image.Image:
    font = ImageFont.load_default(size=px)
    left, top, right, bottom = font.getbbox(text)
    tile = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((2 - left, 2 - top), text, font=font, fill=colour)
    tile = tile.rotate(angle, expand=True, resample=Image.BICUBIC)
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(tile, (int(centre[0] * size[0]) - tile.width // 2, int(centre[1] * size[1]) - tile.height // 2))
    return layer


def draw_lines(size: tuple[int, int], seed: int, lines) -> tuple[np.ndarray, list[np.ndarray]]:
    """RGB image with `lines` drawn on a photo-like background, and each line's own pixels (alpha > 64)."""
    image, truths = _photo(*size, seed), []
    for text, px, angle, colour, centre in lines:
        layer = _text_layer(size, text, px, angle, colour, centre)
        image = Image.alpha_composite(image, layer)
        truths.append(np.asarray(layer)[:, :, 3] > 64)
    return np.asarray(image.convert("RGB")), truths


def coverage(mask: np.ndarray, truth: np.ndarray) -> float:
    return float((dilate(mask, 8) & truth).sum() / truth.sum())


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGES)
def test_drawn_text_is_covered(detector, name):
    lines = IMAGES[name]
    image, truths = draw_lines(SIZE, seed=list(IMAGES).index(name), lines=lines)
    mask = detector(image)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    got = {f"{t} {px}px {angle}deg": round(coverage(mask, truth), 3)
           for (t, px, angle, _, _), truth in zip(lines, truths)}
    outside = float((mask & ~dilate(np.logical_or.reduce(truths), 24)).mean())
    print(name, got, f"marked beyond 24 px of the text: {outside:.4f}")
    assert min(got.values()) >= 0.9, got
    # measured 0.0003-0.017: what is marked beyond the text is the background's flat rectangles, which the model
    # takes for text panels (a box 74 x 199 px over one of them in "tilted-30-and-vertical")
    assert outside <= 0.02, outside


@pytest.mark.slow
@pytest.mark.parametrize("seed", [100, 101, 103, 104, 108])
def test_text_free_images_stay_unmarked(detector, seed):
    """The seeds include the backgrounds on which the model marked whole flat regions before the shape guard and
    the 0.6 box threshold (103: the entire image)."""
    image, _ = draw_lines(SIZE, seed, [])
    share = float(detector(image).mean())
    print(seed, f"marked {share:.4f}")
    assert share <= 0.01, share


def test_detection_size_is_bounded_and_never_enlarges():
    assert detection_size(3000, 4000, 1280) == (960, 1280)
    assert detection_size(864, 1152, 1280) == (864, 1152)
    assert detection_size(100, 70, 1280) == (96, 64)  # rounding to the network's stride only
    assert detection_size(8000, 500, 1280) == (1280, 64)
    assert detection_size(10, 10, 1280) == (32, 32)


# Captions on a 12-MP image, sized as a share of it: 24 px is 0.8% of the height. At the default side (1536) all are
# found; at 1280 the 32 px line and half of the 40 px one were missed (detect/spec.py's MAX_SIDE).
LINES_12MP = [("caption: the harbour at dawn", 24, 0, WHITE, (0.3, 0.1)),
              ("caption: the harbour at dawn", 32, 0, BLACK, (0.7, 0.3)),
              ("photo: A. Lee 2026", 40, 0, WHITE, (0.3, 0.5)), ("photo: A. Lee 2026", 60, 0, YELLOW, (0.7, 0.7))]


@pytest.mark.slow
def test_a_12_mp_image_is_detected_at_the_bounded_side_and_mapped_back(detector):
    """Captions on a 4000 x 3000 image: the model sees 1536 x 1152, the mask is full size and covers each caption
    where it was drawn (a box left at the detection scale would sit in the top-left 40%), and each caption's box
    fits it at full resolution."""
    image, truths = draw_lines((4000, 3000), seed=11, lines=LINES_12MP)
    mask = detector(image)
    assert detector.last_input_hw == (1152, 1536)
    assert mask.shape == (3000, 4000)
    got = {px: round(coverage(mask, truth), 3) for (_, px, *_), truth in zip(LINES_12MP, truths)}
    elsewhere = float((mask & ~dilate(np.logical_or.reduce(truths), 48)).mean())
    print(f"12 MP captions: coverage by px {got}, marked elsewhere {elsewhere:.4f}")
    assert min(got.values()) >= 0.9 and elsewhere <= 0.01, (got, elsewhere)
    quads, _ = detector.boxes(image)
    for truth in truths:  # the box over each caption: its bounds within 48 px of the drawn text's
        ty, tx = np.nonzero(truth)
        fits = [q for q in quads if abs(q[:, 0].min() - tx.min()) < 48 and abs(q[:, 0].max() - tx.max()) < 48
                and abs(q[:, 1].min() - ty.min()) < 48 and abs(q[:, 1].max() - ty.max()) < 48]
        assert len(fits) == 1, (quads, (tx.min(), ty.min(), tx.max(), ty.max()))


def test_input_must_be_rgb_uint8(detector):
    with pytest.raises(ValueError, match="RGB uint8"):
        detector(np.zeros((10, 10), np.uint8))
