"""Settings shared by the row stages: `PrepareSettings` (prepare and finish read it) and `OutputSettings`.

The bounds below are the one definition of each: the command line's checks (jobs/config.py) use them too, so
an option value either passes both or is refused up front with the option's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from .errors import SettingsError
from .images import EXTENSIONS, MAX_PNG_LEVEL, PNG_LEVEL
from .naming import LAYOUTS
from .regions import DEFAULT_MAX_REGIONS, MAX_PARTS as MAX_REGIONS
from .schemes import DEFAULT_ALLOWED_SCHEMES, valid_scheme_list
from .storage import StorageOptions

AUTO = "auto"                     # JPEG sources: their blocks kept, the repainted ones replaced; others: PNG
TRANSPLANT = "jpeg-transplant"    # the format a row records when auto kept its JPEG source's blocks (io/outputs.py)
FORMATS = ("png", "jpeg", "webp", AUTO)
RESOLUTION_STEP = 64              # the VAE downsamples by 8 and the UNet by 8 more (docs/model.md §6.3)
MAX_RESOLUTION = 2048
MAX_GROW_PX = 512                 # largest --mask-dilate and --feather
MAX_MIN_CONTEXT_PX = 100_000
# --mask-combine: which rows get the detector's mask (--mask-from), io/prepare.py. "missing": rows without a mask of
# their own; "union": every row, joined with its own mask; "replace": every row, its own mask ignored.
MASK_COMBINE = ("missing", "union", "replace")
PIL_BOMB_LIMIT = (2 * Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else None  # PIL refuses beyond this


@dataclass(frozen=True)
class PrepareSettings:
    resolution: int = 512          # model side R, a multiple of RESOLUTION_STEP
    mask_threshold: float = 0.5    # fraction of full scale; value/255 >= t marks a pixel (io/masks.py)
    mask_invert: bool = False
    mask_dilate: int = 8           # px, Euclidean disc
    feather: int = 8               # px, outward from the dilated mask
    context: float = 0.25          # margin as a fraction of the mask box
    min_context: int = 32          # px, minimum margin
    max_regions: int = DEFAULT_MAX_REGIONS  # windows per row (io/regions.py)
    max_resolution: int = 0        # model side for regions larger than R (0: off, they are resized to R)
    max_pixels: int = 50_000_000   # refuse larger images before decoding
    resize_mask: bool = False      # resize a mask of another size instead of failing the row
    mask_from: str = ""            # the detector's mask source name ("text", "prompt:<text>"); "": manifest masks only
    mask_combine: str = "missing"  # one of MASK_COMBINE
    default_prompt: str = ""
    default_negative_prompt: str = ""
    job_seed: int = 0
    allowed_schemes: tuple = DEFAULT_ALLOWED_SCHEMES
    storage: StorageOptions = field(default_factory=StorageOptions)

    def validate(self) -> "PrepareSettings":
        def bad(msg):
            raise SettingsError(msg)

        r = self.resolution
        if not isinstance(r, int) or not RESOLUTION_STEP <= r <= MAX_RESOLUTION or r % RESOLUTION_STEP:
            bad(f"resolution must be a multiple of {RESOLUTION_STEP} between {RESOLUTION_STEP} and "
                f"{MAX_RESOLUTION}, got {r!r}")
        if not isinstance(self.max_regions, int) or not 1 <= self.max_regions <= MAX_REGIONS:
            bad(f"max_regions must be an integer in 1..{MAX_REGIONS}, got {self.max_regions!r}")
        m = self.max_resolution
        if m and (not isinstance(m, int) or not r <= m <= MAX_RESOLUTION or m % RESOLUTION_STEP):
            bad(f"max_resolution must be 0 (off) or a multiple of {RESOLUTION_STEP} between the resolution {r} "
                f"and {MAX_RESOLUTION}, got {m!r}")
        if not (0.0 < float(self.mask_threshold) <= 1.0):
            bad(f"mask_threshold must be in (0, 1], got {self.mask_threshold!r}")
        for name, hi in (("mask_dilate", MAX_GROW_PX), ("feather", MAX_GROW_PX), ("min_context", MAX_MIN_CONTEXT_PX)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                bad(f"{name} must be an integer in 0..{hi} pixels, got {v!r}")
        if not (0.0 <= float(self.context) <= 100.0):
            bad(f"context must be a fraction >= 0, got {self.context!r}")
        if not isinstance(self.max_pixels, int) or self.max_pixels <= 0:
            bad(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        if PIL_BOMB_LIMIT is not None and self.max_pixels > PIL_BOMB_LIMIT:
            bad(f"max_pixels {self.max_pixels} is above PIL's own decompression-bomb limit "
                f"({PIL_BOMB_LIMIT}); raise PIL.Image.MAX_IMAGE_PIXELS first")
        if not isinstance(self.job_seed, int) or not 0 <= self.job_seed < 2 ** 63:
            bad(f"job_seed must be an integer in [0, 2**63), got {self.job_seed!r}")
        for name in ("default_prompt", "default_negative_prompt"):
            if not isinstance(getattr(self, name), str):
                bad(f"{name} must be a string")
        if self.mask_combine not in MASK_COMBINE:
            bad(f"mask_combine must be one of {', '.join(MASK_COMBINE)}, got {self.mask_combine!r}")
        if not isinstance(self.mask_from, str):
            bad(f"mask_from must be a string, got {self.mask_from!r}")
        if not valid_scheme_list(self.allowed_schemes):
            bad(f"allowed_schemes must be a non-empty tuple of lower-case URI schemes, got {self.allowed_schemes!r}")
        self.storage.validate()
        return self


@dataclass(frozen=True)
class OutputSettings:
    root: str                     # output URI; images go to {root}/images/{stem}.{ext}
    format: str = "png"           # one of FORMATS ("jpg" is taken as "jpeg"; see `kind`)
    quality: int = 95             # JPEG / lossy WebP quality, 1..100
    lossless: bool = False        # WebP only
    storage: StorageOptions = field(default_factory=StorageOptions)
    png_level: int = PNG_LEVEL    # zlib level 0..9 of PNG output (pixels identical at every level)
    layout: str = "flat"          # images/{stem}.ext, or "hashed": images/ab/{stem}.ext (naming.image_path)

    def validate(self) -> None:
        if not self.root or not isinstance(self.root, str):
            raise SettingsError("output root must be a non-empty URI or path")
        fmt = self.format.lower()
        if fmt == "jpg":
            fmt = "jpeg"
        if fmt not in FORMATS:
            raise SettingsError(f"output format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not isinstance(self.quality, int) or not 1 <= self.quality <= 100:
            raise SettingsError(f"output quality must be an integer in 1..100, got {self.quality!r}")
        if not isinstance(self.png_level, int) or isinstance(self.png_level, bool) \
                or not 0 <= self.png_level <= MAX_PNG_LEVEL:
            raise SettingsError(f"PNG level must be an integer in 0..{MAX_PNG_LEVEL}, got {self.png_level!r}")
        if self.layout not in LAYOUTS:
            raise SettingsError(f"image layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.lossless and fmt != "webp":
            raise SettingsError(f"lossless applies to webp only, not {self.format!r}")

    def __post_init__(self):
        self.validate()

    @property
    def kind(self) -> str:
        """The format asked for, in lower case, "jpg" as "jpeg"."""
        fmt = self.format.lower()
        return "jpeg" if fmt == "jpg" else fmt

    @property
    def extension(self) -> str:
        """The images' extension; under auto it is each row's (io/outputs.py): jpg for a transplant, else png."""
        return EXTENSIONS["png" if self.kind == AUTO else self.kind]
