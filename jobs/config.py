"""Job settings: one frozen `JobConfig` built from option values (jobs/cli.py), a config file and defaults.

Precedence: command line > config file (YAML or JSON, keys mirror the long option names, with `-` or `_`)
> defaults. Every value is validated here, before any work starts; a bad value raises `SettingsError` with
one line that names the option.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from rayinpaint.detect.spec import DetectSettings, mask_source_name
from rayinpaint.io.errors import SettingsError, redact_uri
from rayinpaint.io.images import MAX_PNG_LEVEL, PNG_LEVEL
from rayinpaint.io.naming import LAYOUTS
from rayinpaint.io.regions import DEFAULT_MAX_REGIONS, MAX_PARTS as MAX_REGIONS
from rayinpaint.io.schemes import DEFAULT_ALLOWED_SCHEMES, valid_scheme_list
from rayinpaint.io.settings import (FORMATS, MASK_COMBINE, MAX_GROW_PX, MAX_MIN_CONTEXT_PX, MAX_RESOLUTION,
                                    RESOLUTION_STEP, OutputSettings, PrepareSettings)
from rayinpaint.model.choices import DTYPES, SAMPLERS

# diffusers scheduler class names (what a diffusers user knows the samplers by) -> our sampler names.
SAMPLER_ALIASES = {"dpmsolvermultistepscheduler": "dpmpp_2m", "eulerdiscretescheduler": "euler",
                   "eulerancestraldiscretescheduler": "euler_a", "ddimscheduler": "ddim"}
DEFAULT_WEIGHTS = "hf://stabilityai/stable-diffusion-2-inpainting/512-inpainting-ema.safetensors"
MODEL_CONFIGS = ("sd2-inpainting", "tiny")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the job's lines, on the console and in scripts


@dataclass(frozen=True)
class JobConfig:
    manifest: tuple[str, ...]
    output: str
    weights: str = DEFAULT_WEIGHTS
    weights_sha256: str | None = None
    model_config: str = "sd2-inpainting"
    weights_cache: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "dpmpp_2m"
    karras: bool = True
    eta: float = 0.0
    steps: int = 25
    guidance: float = 7.5
    strength: float = 1.0
    seed: int = 0
    resolution: int = 512
    format: str = "png"
    quality: int = 95
    lossless: bool = False
    png_level: int = PNG_LEVEL
    image_layout: str = "flat"
    mask_threshold: float = 0.5
    mask_invert: bool = False
    mask_dilate: int = 8
    feather: int = 8
    context: float = 0.25
    min_context: int = 32
    max_regions: int = DEFAULT_MAX_REGIONS
    max_resolution: int = 0
    max_pixels: int = 50_000_000
    resize_mask: bool = False
    mask_from: str = ""
    mask_combine: str = "missing"
    detector_weights: str | None = None
    detector_threshold: float | None = None
    columns: str = ""
    allowed_schemes: str = ",".join(DEFAULT_ALLOWED_SCHEMES)
    batch_size: int = 16
    num_gpus_per_actor: float = 1.0
    num_actors: int | None = None
    dtype: str = "auto"
    speed: str = ""
    strict_speed: bool = False
    deterministic: bool = False
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    requester_pays: bool = False
    storage_option: tuple[str, ...] = ()
    limit: int | None = None
    max_error_rate: float = 0.05
    max_unchanged_rate: float = 1.0
    retry_errors: bool = False
    reprocess: bool = False
    address: str | None = None
    preview_count: int = 24
    max_crash_retries: int = 1
    progress_interval: float = 10.0
    wait_for_actors: float = 300.0
    verbose: bool = False
    dry_run: bool = False
    dry_run_sample: int = 8
    bench_record: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.manifest, (str, list)):  # JobConfig(manifest="x.parquet") in Python: one manifest
            object.__setattr__(self, "manifest", (self.manifest,) if isinstance(self.manifest, str)
                               else tuple(self.manifest))
        if isinstance(self.sampler, str):  # the one place aliases are resolved: command line, file and Python API
            object.__setattr__(self, "sampler", SAMPLER_ALIASES.get(self.sampler.lower(), self.sampler))

    # ---- derived pieces handed to io/ and model/ ------------------------------------------------
    def storage(self):
        from rayinpaint.io.storage import StorageOptions

        base = StorageOptions.from_env()
        kv = {}
        for item in self.storage_option:
            k, _, v = item.partition("=")
            kv[k.strip()] = _coerce(v.strip())
        over = {"endpoint_url": self.endpoint_url, "region": self.region, "profile": self.profile}
        over = {k: v for k, v in over.items() if v is not None}
        if self.anon:
            over["anon"] = True
        if self.requester_pays:
            over["requester_pays"] = True
        if kv:
            over["extra"] = {**(base.extra or {}), **kv}
        return dataclasses.replace(base, **over)

    def prepare_settings(self, storage) -> PrepareSettings:
        """The row stages' settings (prepare and finish); `storage`: this run's StorageOptions."""
        same = ("resolution", "mask_threshold", "mask_invert", "mask_dilate", "feather", "context", "min_context",
                "max_regions", "max_resolution", "max_pixels", "resize_mask", "mask_combine")
        return PrepareSettings(**{k: getattr(self, k) for k in same}, default_prompt=self.prompt,
                               mask_from=mask_source_name(DetectSettings(self.mask_from)) if self.mask_from else "",
                               default_negative_prompt=self.negative_prompt, job_seed=self.seed,
                               allowed_schemes=self.allowed_scheme_tuple(), storage=storage)

    def output_settings(self, storage) -> OutputSettings:
        return OutputSettings(root=self.output.rstrip("/"), format=self.format, quality=self.quality,
                              lossless=self.lossless, storage=storage, png_level=self.png_level,
                              layout=self.image_layout)

    def model_settings(self, storage):
        """What each model actor is built from; `storage`: this run's StorageOptions (for the weights)."""
        from rayinpaint.io.storage import protocol_of

        from .predictor import ModelSettings

        return ModelSettings(weights=self.weights, dtype=self.dtype, sampler=self.sampler, steps=self.steps,
                             guidance=self.guidance, strength=self.strength, eta=self.eta, karras=self.karras,
                             resolution=self.resolution, pad_to=self.batch_size, cache_dir=self.weights_cache,
                             weights_sha256=self.weights_sha256,
                             storage_options=storage.fsspec_kwargs(protocol_of(self.weights)),
                             model_config=self.model_config, speed=self.speed, strict_speed=self.strict_speed,
                             deterministic=self.deterministic)

    def detect_settings(self, storage=None):
        """The --mask-from detector's settings (detect/spec.py), None without --mask-from; `storage`: this run's
        StorageOptions (default: from the options), for --detector-weights on an object store."""
        if not self.mask_from:
            return None
        from rayinpaint.io.storage import protocol_of

        store = (storage or self.storage()).fsspec_kwargs(protocol_of(self.detector_weights or ""))
        return DetectSettings(source=self.mask_from, weights=self.detector_weights, threshold=self.detector_threshold,
                              cache_dir=self.weights_cache, storage_options=store)

    def allowed_scheme_tuple(self) -> tuple:
        return tuple(x.strip().lower() for x in self.allowed_schemes.split(",") if x.strip())

    def column_map(self):
        from rayinpaint.io.manifest import ColumnMap

        return ColumnMap.parse(self.columns or "", mask_required=not self.mask_from)

    def public_dict(self) -> dict:
        """Settings as recorded in the summary (no credentials: storage options are named, not valued)."""
        d = dataclasses.asdict(self)
        d["manifest"] = [redact_uri(m) for m in self.manifest]
        for k in ("output", "weights", "endpoint_url", "address", "weights_cache", "detector_weights"):
            d[k] = redact_uri(d[k])
        d["storage_option"] = [s.partition("=")[0] + "=<set>" for s in self.storage_option]
        d.pop("extra", None)
        return d


def _coerce(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


FIELDS = {f.name: f for f in dataclasses.fields(JobConfig)}


def load_config_file(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise SettingsError(f"--config: cannot read {path}: {e.strerror or e}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - parse errors of two libraries, reported as one line
        raise SettingsError(f"--config: {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"--config: {path} must hold a mapping of option names to values")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in FIELDS or key == "extra":
            hint = did_you_mean(key, [n for n in FIELDS if n != "extra"])
            raise SettingsError(f"--config: unknown option '{k}' in {path}{hint}")
        out[key] = v
    return out


def build_config(options: dict, config_file: str | None = None) -> JobConfig:
    """A validated JobConfig from option values (None = not given) over a config file's values over defaults."""
    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in options.items() if v is not None and k in FIELDS})
    for name in ("manifest", "storage_option"):
        if name in values:
            v = values[name]
            values[name] = tuple([v] if isinstance(v, str) else v)
    if "manifest" not in values or not values["manifest"]:
        raise SettingsError("--manifest is required (a Parquet file, folder, glob or URI)")
    if not values.get("output"):
        raise SettingsError("--output is required (a local folder or URI such as s3://bucket/run1)")
    try:
        cfg = JobConfig(**values)
    except TypeError as e:
        raise SettingsError(f"bad settings: {e}") from None
    validate(cfg)
    return cfg


def did_you_mean(value, choices) -> str:
    """' (did you mean X?)' for the closest choice, or ''."""
    import difflib

    close = difflib.get_close_matches(str(value).lower(), [str(c).lower() for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SettingsError(msg)


def validate(c: JobConfig) -> None:
    """Types and ranges of every option; one clear line per problem, naming the option."""
    _check_types(c)
    _check_model(c)
    _check_rows(c)
    _check_run(c)
    _check_strings(c)


def _check_types(c: JobConfig) -> None:
    for name, f in FIELDS.items():
        v = getattr(c, name)
        t = f.type if isinstance(f.type, str) else ""
        opt = f"--{name.replace('_', '-')}"
        if v is None:
            continue
        if t.startswith("int") and (isinstance(v, bool) or not isinstance(v, int)):
            raise SettingsError(f"{opt} must be an integer, got {v!r}")
        if t.startswith("float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SettingsError(f"{opt} must be a number, got {v!r}")
        if t == "bool" and not isinstance(v, bool):
            raise SettingsError(f"{opt} must be true or false, got {v!r}")
        if t == "str" and not isinstance(v, str):
            raise SettingsError(f"{opt} must be a string, got {v!r}")


def _check_model(c: JobConfig) -> None:
    _check(c.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)} (or a diffusers scheduler "
                                  f"class name such as DPMSolverMultistepScheduler), got {c.sampler!r}"
                                  f"{did_you_mean(c.sampler, SAMPLERS)}")
    _check(c.dtype in DTYPES,
           f"--dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}{did_you_mean(c.dtype, DTYPES)}")
    _check(c.model_config in MODEL_CONFIGS, f"--model-config must be one of {', '.join(MODEL_CONFIGS)}, got "
                                            f"{c.model_config!r}{did_you_mean(c.model_config, MODEL_CONFIGS)}")
    _check(1 <= c.steps <= 1000, f"--steps must be between 1 and 1000, got {c.steps}")
    _check(0.0 <= c.guidance <= 100.0, f"--guidance must be between 0 and 100, got {c.guidance}")
    _check(0.0 < c.strength <= 1.0, f"--strength must be in (0, 1], got {c.strength}")
    _check(c.eta >= 0.0, f"--eta must be >= 0, got {c.eta}")
    _check(c.eta == 0.0 or c.sampler == "ddim", f"--eta applies to --sampler ddim only, not {c.sampler}")
    _check(0 <= c.seed < 2**63, f"--seed must be in [0, 2**63), got {c.seed}")
    _check(RESOLUTION_STEP <= c.resolution <= MAX_RESOLUTION and c.resolution % RESOLUTION_STEP == 0,
           f"--resolution must be a multiple of {RESOLUTION_STEP} between {RESOLUTION_STEP} and {MAX_RESOLUTION}, "
           f"got {c.resolution}")
    _check_speed(c)


def _check_speed(c: JobConfig) -> None:
    """--speed, --deterministic and $RAYINPAINT_SPEED (which fills the switches --speed leaves unset in every model
    actor): a bad value or combination is refused here, before any work, rather than failing each actor."""
    from rayinpaint.model.choices import SPEED_ENV, check_combination, parse_switches

    env, fixed = os.environ.get(SPEED_ENV, "").strip(), {"deterministic": True} if c.deterministic else {}
    try:
        own = parse_switches(c.speed, "--speed")
        if c.deterministic:
            check_combination({**own, **fixed}, "--deterministic")
        if env:
            check_combination({**parse_switches(env, f"${SPEED_ENV}"), **own, **fixed}, f"${SPEED_ENV}")
    except ValueError as e:
        raise SettingsError(str(e)) from None


def _check_rows(c: JobConfig) -> None:
    """Masks, paste-back and output images: the bounds are io/settings.py's, so io never refuses later."""
    _check(0.0 < c.mask_threshold <= 1.0, f"--mask-threshold must be in (0, 1], got {c.mask_threshold}")
    _check(0 <= c.mask_dilate <= MAX_GROW_PX, f"--mask-dilate must be between 0 and {MAX_GROW_PX}, got {c.mask_dilate}")
    _check(0 <= c.feather <= MAX_GROW_PX, f"--feather must be between 0 and {MAX_GROW_PX}, got {c.feather}")
    _check(c.context >= 0.0, f"--context must be >= 0, got {c.context}")
    _check(0 <= c.min_context <= MAX_MIN_CONTEXT_PX,
           f"--min-context must be between 0 and {MAX_MIN_CONTEXT_PX}, got {c.min_context}")
    _check(c.max_pixels >= 1, f"--max-pixels must be >= 1, got {c.max_pixels}")
    _check(1 <= c.max_regions <= MAX_REGIONS, f"--max-regions must be between 1 and {MAX_REGIONS}, got {c.max_regions}")
    _check(c.max_resolution == 0 or (c.resolution <= c.max_resolution <= MAX_RESOLUTION
                                     and c.max_resolution % RESOLUTION_STEP == 0),
           f"--max-resolution must be 0 (off) or a multiple of {RESOLUTION_STEP} from --resolution ({c.resolution}) "
           f"to {MAX_RESOLUTION}, got {c.max_resolution}")
    _check(c.format in FORMATS,
           f"--format must be one of {', '.join(FORMATS)}, got {c.format!r}{did_you_mean(c.format, FORMATS)}")
    _check(1 <= c.quality <= 100, f"--quality must be between 1 and 100, got {c.quality}")
    _check(not c.lossless or c.format == "webp", f"--lossless applies to --format webp only, not {c.format}")
    _check(0 <= c.png_level <= MAX_PNG_LEVEL, f"--png-level must be between 0 and {MAX_PNG_LEVEL}, got {c.png_level}")
    _check(c.image_layout in LAYOUTS, f"--image-layout must be one of {', '.join(LAYOUTS)}, got {c.image_layout!r}")
    _check_detector(c)


def _check_detector(c: JobConfig) -> None:
    _check(c.mask_combine in MASK_COMBINE, f"--mask-combine must be one of {', '.join(MASK_COMBINE)}, got "
                                           f"{c.mask_combine!r}{did_you_mean(c.mask_combine, MASK_COMBINE)}")
    if c.mask_from:
        c.detect_settings().validate()  # SettingsError naming the option
    else:
        _check(c.mask_combine == "missing" and c.detector_weights is None and c.detector_threshold is None,
               "--mask-combine, --detector-weights and --detector-threshold apply with --mask-from only")


def _check_run(c: JobConfig) -> None:
    _check(all(isinstance(m, str) and m for m in c.manifest), "--manifest: every entry must be a non-empty URI")
    _check(1 <= c.batch_size <= 1024, f"--batch-size must be between 1 and 1024, got {c.batch_size}")
    _check(c.num_gpus_per_actor >= 0, f"--num-gpus-per-actor must be >= 0, got {c.num_gpus_per_actor}")
    _check(c.num_actors is None or c.num_actors >= 1, f"--num-actors must be >= 1, got {c.num_actors}")
    _check(c.limit is None or c.limit >= 1, f"--limit must be >= 1, got {c.limit}")
    _check(0.0 <= c.max_error_rate <= 1.0, f"--max-error-rate must be in [0, 1], got {c.max_error_rate}")
    _check(c.max_unchanged_rate > 0.0, f"--max-unchanged-rate must be > 0, got {c.max_unchanged_rate}")
    _check(c.preview_count >= 0, f"--preview-count must be >= 0, got {c.preview_count}")
    _check(c.max_crash_retries >= 0, f"--max-crash-retries must be >= 0, got {c.max_crash_retries}")
    _check(c.progress_interval > 0, f"--progress-interval must be > 0, got {c.progress_interval}")
    _check(c.dry_run_sample >= 1, f"--dry-run-sample must be >= 1, got {c.dry_run_sample}")
    _check(c.bench_record is None or os.path.isfile(c.bench_record),
           f"--bench-record {c.bench_record} is not a file (write one with `rayinpaint bench --json FILE`)")
    _check(c.wait_for_actors >= 1, f"--wait-for-actors must be >= 1 second, got {c.wait_for_actors}")
    if c.weights_cache:
        _check(not os.path.isfile(c.weights_cache), f"--weights-cache {c.weights_cache} is a file, not a folder")


def _check_strings(c: JobConfig) -> None:
    """Options that are small languages of their own: storage options, hashes, scheme lists, column maps."""
    for item in c.storage_option:
        _check("=" in item and item.partition("=")[0].strip(),
               f"--storage-option must look like KEY=VALUE, got {item!r}")
    if c.weights_sha256 is not None:
        h = c.weights_sha256.lower()
        _check(len(h) == 64 and all(ch in "0123456789abcdef" for ch in h),
               "--weights-sha256 must be 64 hex digits")
    if c.weights.startswith("random:"):
        _check(c.weights.split(":")[1] in ("tiny", "sd2"),
               f"--weights: unknown random model {c.weights!r} (use random:tiny or random:sd2)")
    _check(valid_scheme_list(c.allowed_scheme_tuple()),
           f"--allowed-schemes must be a comma-separated list of URI schemes, got {c.allowed_schemes!r}")
    try:
        c.column_map()
    except ValueError as e:
        raise SettingsError(f"--columns: {e}") from None
