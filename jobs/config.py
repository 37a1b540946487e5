"""Job settings: one frozen `JobConfig` built from the command line, a config file and defaults.

Precedence: command line > config file (YAML or JSON, keys mirror the long option names, with `-` or `_`)
> defaults. Every value is validated here, before any work starts; a bad value raises `SettingsError` with
one line that names the option.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from rayinpaint.io.errors import SettingsError
from rayinpaint.io.schemes import DEFAULT_ALLOWED_SCHEMES, valid_scheme_list

DEFAULT_WEIGHTS = "hf://stabilityai/stable-diffusion-2-inpainting/512-inpainting-ema.safetensors"
SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")
FORMATS = ("png", "jpeg", "webp")
DTYPES = ("auto", "float32", "float16", "bfloat16")


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
    mask_threshold: float = 0.5
    mask_invert: bool = False
    mask_dilate: int = 8
    feather: int = 8
    context: float = 0.25
    min_context: int = 32
    max_pixels: int = 50_000_000
    resize_mask: bool = False
    columns: str = ""
    allowed_schemes: str = ",".join(DEFAULT_ALLOWED_SCHEMES)
    batch_size: int = 16
    num_gpus_per_actor: float = 1.0
    num_actors: int | None = None
    dtype: str = "auto"
    speed: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anon: bool = False
    requester_pays: bool = False
    storage_option: tuple[str, ...] = ()
    limit: int | None = None
    max_error_rate: float = 0.05
    retry_errors: bool = False
    address: str | None = None
    preview_count: int = 24
    max_crash_retries: int = 1
    progress_interval: float = 10.0
    extra: dict = field(default_factory=dict)

    # ---- derived pieces handed to io/ and model/ ------------------------------------------------
    def storage(self):
        from rayinpaint.io.storage import StorageOptions

        base = StorageOptions.from_env()
        kv = {}
        for item in self.storage_option:
            k, _, v = item.partition("=")
            kv[k.strip()] = _coerce(v.strip())
        over = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "profile": self.profile,
        }
        over = {k: v for k, v in over.items() if v is not None}
        if self.anon:
            over["anon"] = True
        if self.requester_pays:
            over["requester_pays"] = True
        if kv:
            over["extra"] = {**(base.extra or {}), **kv}
        return dataclasses.replace(base, **over)

    def prepare_settings(self):
        from rayinpaint.io.prepare import PrepareSettings

        return PrepareSettings(
            resolution=self.resolution,
            mask_threshold=self.mask_threshold,
            mask_invert=self.mask_invert,
            mask_dilate=self.mask_dilate,
            feather=self.feather,
            context=self.context,
            min_context=self.min_context,
            max_pixels=self.max_pixels,
            resize_mask=self.resize_mask,
            default_prompt=self.prompt,
            default_negative_prompt=self.negative_prompt,
            job_seed=self.seed,
            allowed_schemes=self.allowed_scheme_tuple(),
            storage=self.storage(),
        )

    def output_settings(self):
        from rayinpaint.io.results import OutputSettings

        return OutputSettings(
            root=self.output.rstrip("/"),
            format=self.format,
            quality=self.quality,
            lossless=self.lossless,
            storage=self.storage(),
        )

    def allowed_scheme_tuple(self) -> tuple:
        return tuple(x.strip().lower() for x in self.allowed_schemes.split(",") if x.strip())

    def column_map(self):
        from rayinpaint.io.manifest import ColumnMap

        return ColumnMap.parse(self.columns or "")

    def public_dict(self) -> dict:
        """Settings as recorded in the summary (no credentials: storage options are named, not valued)."""
        from rayinpaint.io.errors import redact_uri

        d = dataclasses.asdict(self)
        d["manifest"] = [redact_uri(m) for m in self.manifest]
        for k in ("output", "weights", "endpoint_url", "address", "weights_cache"):
            d[k] = redact_uri(d[k])
        d["storage_option"] = [s.partition("=")[0] + "=<set>" for s in self.storage_option]
        d.pop("extra", None)
        return d


def _coerce(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


# ---- argparse -------------------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(JobConfig)}


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every option defaults to None here so that a config file can fill it; real defaults live in JobConfig."""
    D = {name: f.default for name, f in _FIELDS.items() if f.default is not dataclasses.MISSING}

    def opt(*names, help, **kw):
        dest = names[0].lstrip("-").replace("-", "_")
        default = D.get(dest)
        if "action" in kw and kw["action"] == argparse.BooleanOptionalAction:
            help = f"{help} (default: {'on' if default else 'off'})"
        elif default not in (None, "", ()):
            help = f"{help} (default: {default})"
        g.add_argument(*names, dest=dest, default=None, help=help, **kw)  # g: the current group below

    g = p.add_argument_group("input and output")
    opt("--manifest", nargs="+", metavar="URI",
        help="Parquet manifest(s): a file, a folder, a glob or several; local path or fsspec URI (s3://...). Required")
    opt("--output", metavar="URI", help="output root: results/, images/, _SUMMARY.json, _REPORT.html go here. Required")
    opt("--config", metavar="FILE", help="YAML or JSON file whose keys mirror these options; the command line wins")
    opt("--columns", metavar="MAP",
        help="map manifest columns onto id,image,mask,boxes,mask_rle,prompt,negative_prompt,seed, "
             "e.g. 'image=img_uri,mask=mask_uri' (default: the canonical names)")
    opt("--allowed-schemes", metavar="LIST",
        help="comma-separated URI schemes the manifest's image and mask URIs may use; rows with any other "
             "scheme (http, ftp, chained '::' URLs...) become 'uri_not_allowed' errors without a request")
    opt("--limit", type=int, metavar="N", help="process at most N not-yet-done rows, then stop (dry runs)")
    opt("--retry-errors", action=argparse.BooleanOptionalAction,
        help="reprocess rows whose earlier result is an error (rows already ok are always skipped)")

    g = p.add_argument_group("model and sampling")
    opt("--weights", metavar="URI",
        help="checkpoint: local path or URI of a .safetensors single file or a diffusers folder; "
             "'random:tiny' runs the whole job with a tiny random model (noise in the mask: demos, dry runs)")
    opt("--model-config", choices=("sd2-inpainting", "tiny"),
        help="architecture the weights file must match exactly (tiny: small test models)")
    opt("--weights-sha256", metavar="HEX", help="expected sha256 of the weights file (checked after download)")
    opt("--weights-cache", metavar="DIR",
        help="per-node cache for downloaded weights (default: $RAYINPAINT_CACHE or ~/.cache/rayinpaint/weights)")
    opt("--prompt", help="prompt for rows without one")
    opt("--negative-prompt", help="negative prompt for rows without one")
    opt("--sampler", choices=SAMPLERS, help="sampler")
    opt("--karras", action=argparse.BooleanOptionalAction,
        help="Karras sigma spacing for euler, euler_a and dpmpp_2m (ignored by ddim)")
    opt("--eta", type=float, help="DDIM eta (0 = deterministic DDIM)")
    opt("--steps", type=int, help="sampling steps")
    opt("--guidance", type=float, help="classifier-free guidance scale (1 = no guidance)")
    opt("--strength", type=float, help="0 < strength <= 1; below 1 starts from the noised input image")
    opt("--seed", type=int, help="job seed; a row without a seed uses a hash of (job seed, id)")
    opt("--resolution", type=int, help="model resolution in pixels, a multiple of 64")
    opt("--dtype", choices=DTYPES, help="model dtype; auto = bfloat16 on GPU (float16 where bfloat16 is "
                                        "unsupported), float32 on CPU")
    opt("--speed", metavar="SWITCHES",
        help="speed switches, e.g. 'compile=0,cuda_graph=0,sdpa=flash' (channels_last, sdpa, compile, cuda_graph, "
             "fused_cfg, batch_vae, pinned, cudnn_benchmark; default: all on for CUDA; see BENCHMARKS.md)")

    g = p.add_argument_group("masks and paste-back")
    opt("--mask-threshold", type=float, help="mask values >= threshold (fraction of full scale) are repainted")
    opt("--mask-invert", action=argparse.BooleanOptionalAction, help="invert masks (black = repaint)")
    opt("--mask-dilate", type=int, help="grow the mask by this many pixels before inpainting")
    opt("--feather", type=int, help="blend width in pixels outward from the dilated mask; pixels beyond are untouched")
    opt("--context", type=float, help="crop margin around the mask box, as a fraction of the box size")
    opt("--min-context", type=int, help="minimum crop margin in pixels")
    opt("--max-pixels", type=int, help="images with more pixels are refused (decompression bombs)")
    opt("--resize-mask", action=argparse.BooleanOptionalAction,
        help="resize masks whose size differs from the image instead of failing the row")

    g = p.add_argument_group("output images")
    opt("--format", choices=FORMATS, help="output image format")
    opt("--quality", type=int, help="JPEG/WebP quality 1-100")
    opt("--lossless", action=argparse.BooleanOptionalAction, help="lossless WebP")

    g = p.add_argument_group("cluster and throughput")
    opt("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started in-process)")
    opt("--batch-size", type=int, help="rows per model call")
    opt("--num-gpus-per-actor", type=float, help="GPUs per model actor (fractions share a GPU)")
    opt("--num-actors", type=int,
        help="model actors (default: every GPU in the cluster / GPUs per actor; 1 CPU actor when there is no GPU)")
    opt("--max-crash-retries", type=int,
        help="times a row is retried alone after its worker died before it becomes an error row")

    g = p.add_argument_group("storage")
    opt("--endpoint-url", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")
    opt("--region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    opt("--profile", help="AWS profile (default: $AWS_PROFILE)")
    opt("--anon", action=argparse.BooleanOptionalAction, help="anonymous S3 access")
    opt("--requester-pays", action=argparse.BooleanOptionalAction, help="S3 requester-pays buckets")
    opt("--storage-option", action="append", metavar="KEY=VALUE",
        help="extra fsspec storage option, repeatable (e.g. --storage-option use_ssl=false)")

    g = p.add_argument_group("outcome")
    opt("--max-error-rate", type=float,
        help="largest error fraction for which _SUCCESS is written and the exit code is 0")
    opt("--preview-count", type=int, help="sample rows shown in _REPORT.html")
    opt("--progress-interval", type=float, help="seconds between progress lines")


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
        if key not in _FIELDS or key == "extra":
            raise SettingsError(f"--config: unknown option '{k}' in {path}")
        out[key] = v
    return out


def build_config(ns: argparse.Namespace) -> JobConfig:
    values: dict[str, Any] = {}
    cfg_path = getattr(ns, "config", None)
    if cfg_path:
        values.update(load_config_file(cfg_path))
    for name in _FIELDS:
        v = getattr(ns, name, None)
        if v is not None:
            values[name] = v
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


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise SettingsError(msg)


def validate(c: JobConfig) -> None:
    """Types and ranges of every option; one clear line per problem."""
    for name, f in _FIELDS.items():
        v = getattr(c, name)
        t = f.type if isinstance(f.type, str) else ""
        if v is None:
            continue
        if t.startswith("int") and (isinstance(v, bool) or not isinstance(v, int)):
            raise SettingsError(f"--{name.replace('_', '-')} must be an integer, got {v!r}")
        if t.startswith("float") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise SettingsError(f"--{name.replace('_', '-')} must be a number, got {v!r}")
        if t == "bool" and not isinstance(v, bool):
            raise SettingsError(f"--{name.replace('_', '-')} must be true or false, got {v!r}")
        if t == "str" and not isinstance(v, str):
            raise SettingsError(f"--{name.replace('_', '-')} must be a string, got {v!r}")
    _check(all(isinstance(m, str) and m for m in c.manifest), "--manifest: every entry must be a non-empty URI")
    _check(c.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}, got {c.sampler!r}")
    _check(c.format in FORMATS, f"--format must be one of {', '.join(FORMATS)}, got {c.format!r}")
    _check(c.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {c.dtype!r}")
    _check(1 <= c.steps <= 1000, f"--steps must be between 1 and 1000, got {c.steps}")
    _check(0.0 <= c.guidance <= 100.0, f"--guidance must be between 0 and 100, got {c.guidance}")
    _check(0.0 < c.strength <= 1.0, f"--strength must be in (0, 1], got {c.strength}")
    _check(c.eta >= 0.0, f"--eta must be >= 0, got {c.eta}")
    _check(c.eta == 0.0 or c.sampler == "ddim", f"--eta applies to --sampler ddim only, not {c.sampler}")
    _check(0 <= c.seed < 2**63, f"--seed must be in [0, 2**63), got {c.seed}")
    _check(c.resolution >= 64 and c.resolution % 64 == 0 and c.resolution <= 2048,
           f"--resolution must be a multiple of 64 between 64 and 2048, got {c.resolution}")
    _check(1 <= c.quality <= 100, f"--quality must be between 1 and 100, got {c.quality}")
    _check(0.0 < c.mask_threshold <= 1.0, f"--mask-threshold must be in (0, 1], got {c.mask_threshold}")
    _check(c.mask_dilate >= 0, f"--mask-dilate must be >= 0, got {c.mask_dilate}")
    _check(c.feather >= 0, f"--feather must be >= 0, got {c.feather}")
    _check(c.context >= 0.0, f"--context must be >= 0, got {c.context}")
    _check(c.min_context >= 0, f"--min-context must be >= 0, got {c.min_context}")
    _check(c.max_pixels >= 1, f"--max-pixels must be >= 1, got {c.max_pixels}")
    _check(1 <= c.batch_size <= 1024, f"--batch-size must be between 1 and 1024, got {c.batch_size}")
    _check(c.num_gpus_per_actor >= 0, f"--num-gpus-per-actor must be >= 0, got {c.num_gpus_per_actor}")
    _check(c.num_actors is None or c.num_actors >= 1, f"--num-actors must be >= 1, got {c.num_actors}")
    _check(c.limit is None or c.limit >= 1, f"--limit must be >= 1, got {c.limit}")
    _check(0.0 <= c.max_error_rate <= 1.0, f"--max-error-rate must be in [0, 1], got {c.max_error_rate}")
    _check(c.preview_count >= 0, f"--preview-count must be >= 0, got {c.preview_count}")
    _check(c.max_crash_retries >= 0, f"--max-crash-retries must be >= 0, got {c.max_crash_retries}")
    _check(c.progress_interval > 0, f"--progress-interval must be > 0, got {c.progress_interval}")
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
    if c.speed:
        from rayinpaint.model.speed import parse_switches

        try:
            parse_switches(c.speed, "--speed")
        except ValueError as e:
            raise SettingsError(str(e)) from None
    schemes = c.allowed_scheme_tuple()
    _check(valid_scheme_list(schemes),
           f"--allowed-schemes must be a comma-separated list of URI schemes, got {c.allowed_schemes!r}")
    try:
        c.column_map()
    except ValueError as e:
        raise SettingsError(f"--columns: {e}") from None
    if c.weights_cache:
        _check(not os.path.isfile(c.weights_cache), f"--weights-cache {c.weights_cache} is a file, not a folder")
