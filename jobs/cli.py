"""`rayinpaint` command line: `run` (the job), `demo` (a synthetic offline run), `bench` (model throughput).

The only argv parser: every command turns its options into a JobConfig (jobs/config.py) and calls run_job.
`demo` and `bench` live in the benchmarks package (bench/), imported only when their command runs or its
options are built: the job itself never imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rayinpaint.io.errors import ManifestError, SettingsError
from rayinpaint.io.settings import FORMATS, MASK_COMBINE
from rayinpaint.model.choices import DTYPES, SAMPLERS

from .config import FIELDS, MODEL_CONFIGS, build_config, did_you_mean
from .logsafe import REDACT, console_logging, storage_secrets


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (not the usage block), with "did you mean" for option names and
    choices. Subcommand parsers are made of this class too (add_subparsers uses the parent's class)."""

    def error(self, message):
        self.exit(2, f"rayinpaint: error: {_with_suggestion(self, message)}\n")


def _with_suggestion(parser: argparse.ArgumentParser, message: str) -> str:
    import difflib
    import re

    options = [s for a in _all_actions(parser) for s in a.option_strings]
    unknown = re.match(r"unrecognized arguments: (.*)", message)
    if unknown:
        hints = []
        for word in unknown.group(1).split():
            name = word.split("=")[0]
            close = difflib.get_close_matches(name, options, n=1, cutoff=0.6) if word.startswith("-") else []
            hints.append(f"{word} (did you mean {close[0]}?)" if close else word)
        return f"unrecognized arguments: {' '.join(hints)}; see rayinpaint COMMAND --help"
    choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        choices = [c.strip(" '") for c in choice.group(3).split(",")]
        return f"{message}{did_you_mean(choice.group(2), choices)}"
    return message


def _all_actions(parser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from sub._actions


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rayinpaint",
        description="Stable Diffusion 2 inpainting over Parquet manifests of image/mask/prompt rows, on Ray.")
    _logging_options(p, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,demo,bench}")
    r = sub.add_parser("run", help="run the inpainting job over a manifest",
                       description="Inpaint every row of the manifest(s) and write results, images, "
                                   "_SUMMARY.json, _REPORT.html and (on success) _SUCCESS under --output. "
                                   "Rerunning on the same output skips rows already done.")
    _logging_options(r, argparse.SUPPRESS)
    add_run_arguments(r)
    d = sub.add_parser("demo", help="make a small synthetic dataset and run the whole job offline on it",
                       description="Writes a synthetic manifest with images, masks, prompts and a few bad rows "
                                   "under OUTPUT/input, then runs the job with the tiny random model "
                                   "(outputs are noise inside the masks) and prints where to look.")
    d.add_argument("--output", default="demo-output", help="demo folder (default: demo-output)")
    d.add_argument("--rows", type=int, default=24, help="good rows to generate (default: 24)")
    d.add_argument("--weights", default="random:tiny", help="model weights (default: random:tiny)")
    b = sub.add_parser("bench", help="measure model throughput (images/s) on this machine")
    from rayinpaint.bench.throughput import add_bench_arguments  # here, not at the top: the job never needs bench/

    add_bench_arguments(b)
    return p


def _logging_options(p, default) -> None:
    """--log-level and -v, accepted before and after the command (SUPPRESS: the command's copy sets the value
    only when given, so it never undoes the one given before the command)."""
    p.add_argument("--log-level", default=default, choices=["debug", "info", "warning", "error"],
                   help="the job's log verbosity (default: info)")
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="show Ray's own log lines and the workers' output on the console too (default: only the "
                        "job's lines and Ray's errors; Ray's logs are in its session folder, named at start)")


# ---- `run` options ----------------------------------------------------------------------------------

def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every option defaults to None here so that a config file can fill it; real defaults live in JobConfig."""
    for title, add in (("input and output", _io_options), ("model and sampling", _model_options),
                       ("masks and paste-back", _mask_options), ("output images", _image_options),
                       ("cluster and throughput", _cluster_options), ("storage", _storage_options),
                       ("outcome", _outcome_options)):
        add(_option_adder(p.add_argument_group(title)))


def _option_adder(group):
    """opt(*names, help, **kw): add an option to `group`, with JobConfig's default in its help."""
    defaults = {name: f.default for name, f in FIELDS.items() if f.default is not dataclasses.MISSING}

    def opt(*names, help, **kw):
        dest = names[0].lstrip("-").replace("-", "_")
        default = defaults.get(dest)
        if kw.get("action") == argparse.BooleanOptionalAction:
            help = f"{help} (default: {'on' if default else 'off'})"
        elif default not in (None, "", ()):
            help = f"{help} (default: {default})"
        group.add_argument(*names, dest=dest, default=None, help=help, **kw)

    return opt


def _io_options(opt) -> None:
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
    opt("--dry-run", action=argparse.BooleanOptionalAction,
        help="check everything without Ray, a model or recording anything: pre-flight, rows left to do, a sample "
             "of them fetched and decoded, the output's recorded settings, a GPU-hours estimate from --bench-record")
    opt("--dry-run-sample", type=int, metavar="N", help="rows fetched and decoded by --dry-run")
    opt("--bench-record", metavar="FILE", help="a `rayinpaint bench --json FILE` record, for --dry-run's estimate")
    opt("--reprocess", action=argparse.BooleanOptionalAction,
        help="the output holds rows made with other pixel settings (model, sampler, steps, prompts, masks...): "
             "redo them under these settings, replacing them (kept under _superseded/); without it such a rerun "
             "stops before any work")


def _model_options(opt) -> None:
    opt("--weights", metavar="URI",
        help="checkpoint: local path or URI of a .safetensors single file or a diffusers folder; "
             "'random:tiny' runs the whole job with a tiny random model (noise in the mask: demos, dry runs)")
    opt("--model-config", choices=MODEL_CONFIGS,
        help="architecture the weights file must match exactly (tiny: small test models)")
    opt("--weights-sha256", metavar="HEX", help="expected sha256 of the weights file (checked after download)")
    opt("--weights-cache", metavar="DIR",
        help="per-node cache for downloaded weights (default: $RAYINPAINT_CACHE or ~/.cache/rayinpaint/weights)")
    opt("--prompt", help="prompt for rows without one")
    opt("--negative-prompt", help="negative prompt for rows without one")
    opt("--sampler", metavar="{" + ",".join(SAMPLERS) + "}",
        help="sampler; diffusers scheduler class names work too (DPMSolverMultistepScheduler = dpmpp_2m, "
             "EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler)")
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
    opt("--strict-speed", action=argparse.BooleanOptionalAction,
        help="a compile or CUDA graph failure, or a fast step that fails its self-check against the plain one, "
             "fails the model actor instead of being turned off (CI, benchmarks)")
    opt("--deterministic", action=argparse.BooleanOptionalAction,
        help="fixed kernels: no cuDNN benchmarking or inductor autotuning, deterministic algorithms; with the same "
             "GPU model and software a row's pixels are then bitwise the same on every run (slower)")


def _mask_options(opt) -> None:
    opt("--mask-threshold", type=float, help="mask values >= threshold (fraction of full scale) are repainted")
    opt("--mask-invert", action=argparse.BooleanOptionalAction, help="invert masks (black = repaint)")
    opt("--mask-dilate", type=int, help="grow the mask by this many pixels before inpainting")
    opt("--feather", type=int, help="blend width in pixels outward from the dilated mask; pixels beyond are untouched")
    opt("--context", type=float, help="crop margin around the mask box, as a fraction of the box size")
    opt("--min-context", type=int, help="minimum crop margin in pixels")
    opt("--max-regions", type=int, help="most windows per row: the mask's parts are inpainted each in its own window "
                                        "at native resolution; beyond this many, the closest are joined (README: Regions)")
    opt("--max-resolution", type=int,
        help="run regions larger than --resolution at up to this side (multiple of 64; 0 = off: they are resized "
             "to --resolution); batched by size")
    opt("--max-pixels", type=int, help="images with more pixels are refused (decompression bombs)")
    opt("--resize-mask", action=argparse.BooleanOptionalAction,
        help="resize masks whose size differs from the image instead of failing the row")
    opt("--mask-from", metavar="DETECTOR",
        help="detect the masks: 'text' (captions, watermark text, signs: rapidocr's text detector) or "
             "'prompt:<what>' (CLIPSeg, e.g. prompt:watermark, with --detector-weights); the manifest then needs no "
             "mask column. Needs pip install \"ray-inpaint[detect]\" (README: Masks from detectors)")
    opt("--mask-combine", choices=MASK_COMBINE,
        help="with --mask-from: missing = detect the rows without a mask of their own; union = every row, joined "
             "with its own mask; replace = every row, its own mask ignored")
    opt("--detector-weights", metavar="URI",
        help="with --mask-from prompt:...: a CLIPSeg model folder (local, s3://, hf://; downloaded once per node like "
             "--weights); with --mask-from text: an ONNX text-detection model instead of the one rapidocr ships")
    opt("--detector-threshold", type=float,
        help="with --mask-from: text = the lowest score of a text box kept; prompt = the lowest CLIPSeg probability "
             "of a pixel kept (default: the detector's own, README: Masks from detectors)")


def _image_options(opt) -> None:
    opt("--format", choices=FORMATS,
        help="output image format (default png). auto: a JPEG source stays a JPEG whose blocks outside the repaint "
             "are the source's own (no generation loss, about the source's size); other sources are PNG")
    opt("--quality", type=int, help="JPEG/WebP quality 1-100")
    opt("--lossless", action=argparse.BooleanOptionalAction, help="lossless WebP")
    opt("--png-level", type=int, help="zlib level 0-9 of PNG output: pixels are the same at every level; 1 is "
                                      "several times faster than 6 for a few %% more bytes (BENCHMARKS.md)")
    opt("--image-layout", choices=("flat", "hashed"),
        help="flat: images/{id}.png; hashed: images/ab/{id}.png, 256 folders (for 100M images on a filesystem); "
             "output_uri records the path either way")


def _cluster_options(opt) -> None:
    opt("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started in-process)")
    opt("--batch-size", type=int, help="rows per model call")
    opt("--num-gpus-per-actor", type=float, help="GPUs per model actor (fractions share a GPU)")
    opt("--num-actors", type=int,
        help="model actors (default: every GPU in the cluster / GPUs per actor; 1 CPU actor when there is no GPU)")
    opt("--wait-for-actors", type=float, metavar="SECONDS",
        help="how long to wait for an autoscaler to add the nodes the model pool needs, and for the pool to "
             "start (then one line, exit 2; a pool that cannot fit the cluster and no autoscaler can grow it stops "
             "at once with exit 2)")
    opt("--max-crash-retries", type=int,
        help="times a row is retried alone after its worker died before it becomes an error row")


def _storage_options(opt) -> None:
    opt("--endpoint-url", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)")
    opt("--region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    opt("--profile", help="AWS profile (default: $AWS_PROFILE)")
    opt("--anon", action=argparse.BooleanOptionalAction, help="anonymous S3 access")
    opt("--requester-pays", action=argparse.BooleanOptionalAction, help="S3 requester-pays buckets")
    opt("--storage-option", action="append", metavar="KEY=VALUE",
        help="extra fsspec storage option, repeatable (e.g. --storage-option use_ssl=false)")


def _outcome_options(opt) -> None:
    opt("--max-error-rate", type=float,
        help="largest error fraction for which _SUCCESS is written and the exit code is 0")
    opt("--max-unchanged-rate", type=float,
        help="the fraction of non-error rows left `unchanged` (empty mask) must stay below this for _SUCCESS "
             "(exclusive: at the default 1.0 an output where no row was repainted fails; above 1 never fails)")
    opt("--preview-count", type=int, help="sample rows shown in _REPORT.html")
    opt("--progress-interval", type=float, help="seconds between progress lines")


def main(argv=None, model_actor: tuple | None = None) -> int:
    """`model_actor`: for `run`, another model actor than the product's (jobs/pipeline.py PassPlan.actor; the
    sleeping stand-in of `python -m rayinpaint.bench.standin`); None for the command line itself."""
    p = build_parser()
    args = p.parse_args(argv)
    console_logging(getattr(args, "log_level", "info"), bool(getattr(args, "verbose", False)))
    try:
        if args.cmd == "run":
            from .inpaint import run_job

            cfg = build_config(vars(args), args.config)
            REDACT.add(*storage_secrets(cfg.storage_option))
            return run_job(cfg, model_actor=model_actor)
        if args.cmd == "demo":
            from rayinpaint.bench.demo import run_demo  # inside main: the job never imports bench/

            return run_demo(args.output, rows=args.rows, weights=args.weights)
        if args.cmd == "bench":
            from rayinpaint.bench.throughput import run_bench
            from rayinpaint.bench.verify import run_verify

            return run_verify(args) if args.verify else run_bench(args)
    except (SettingsError, ManifestError) as e:
        print(f"rayinpaint: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .preflight import OutputUnwritable, StorageUnavailable

        code = 3 if isinstance(e, OutputUnwritable) else 4 if isinstance(e, StorageUnavailable) else None
        if code is None:
            raise
        print(f"rayinpaint: error: {e}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("rayinpaint: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
