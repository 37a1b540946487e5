"""`rayinpaint` command line: `run` (the job), `demo` (a synthetic offline run), `bench` (model throughput)."""

from __future__ import annotations

import argparse
import logging
import sys

from rayinpaint.io.errors import ManifestError, SettingsError


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    from .config import add_run_arguments

    p = argparse.ArgumentParser(
        prog="rayinpaint",
        description="Stable Diffusion 2 inpainting over Parquet manifests of image/mask/prompt rows, on Ray.")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default: info)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{run,demo,bench}")
    r = sub.add_parser("run", help="run the inpainting job over a manifest",
                       description="Inpaint every row of the manifest(s) and write results, images, "
                                   "_SUMMARY.json, _REPORT.html and (on success) _SUCCESS under --output. "
                                   "Rerunning on the same output skips rows already done.")
    add_run_arguments(r)
    d = sub.add_parser("demo", help="make a small synthetic dataset and run the whole job offline on it",
                       description="Writes a synthetic manifest with images, masks, prompts and a few bad rows "
                                   "under OUTPUT/input, then runs the job with the tiny random model "
                                   "(outputs are noise inside the masks) and prints where to look.")
    d.add_argument("--output", default="demo-output", help="demo folder (default: demo-output)")
    d.add_argument("--rows", type=int, default=24, help="good rows to generate (default: 24)")
    d.add_argument("--weights", default="random:tiny", help="model weights (default: random:tiny)")
    b = sub.add_parser("bench", help="measure model throughput (images/s) on this machine")
    from .bench import add_bench_arguments

    add_bench_arguments(b)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        if args.cmd == "run":
            from .config import build_config
            from .inpaint import run_job

            return run_job(build_config(args))
        if args.cmd == "demo":
            from .demo import run_demo

            return run_demo(args.output, rows=args.rows, weights=args.weights)
        if args.cmd == "bench":
            from .bench import run_bench

            return run_bench(args)
    except (SettingsError, ManifestError) as e:
        print(f"rayinpaint: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .inpaint import OutputUnwritable, StorageUnavailable

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
