"""The dry run's GPU-hours estimate, from a `rayinpaint bench --json FILE` record, and the expected time per batch
of a run without a GPU, from the CPU record in BENCHMARKS.md.

A record measures seconds per image at one setting (its sampler, steps and side). A row of this run costs, per
region, that time scaled by the model's FLOPs at the region's side and this run's UNet calls over the FLOPs at
the record's own (model/flops.py counts them on the meta device, about a second per side): UNet calls scale with
the steps, and the cost per side grows faster than the pixels (attention). Rows are costed from the dry run's
sample (its regions and their sides); the estimate names the record it used and what it was measured at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class BenchRecord:
    """What the estimate takes from a record: seconds per image per GPU at the record's settings."""
    path: str
    device: str
    date: str
    sampler: str
    steps: int
    side: int
    seconds_per_image: float
    what: str  # "the whole job" or "the model alone" (the job's loading and data stages add to the latter)

    def describe(self) -> str:
        return (f"bench record {self.path} ({self.device}, {self.date}: {self.sampler} {self.steps} steps at "
                f"{self.side} px, {1 / self.seconds_per_image:.2f} images/s per GPU, {self.what})")


def read_record(path: str, defaults) -> BenchRecord | None:
    """The record at `path`; settings it does not name are `defaults`' (bench's defaults are the run's).
    None when it holds no rate."""
    with open(path) as f:
        record = json.load(f)
    settings = record.get("settings") or {}
    e2e = record.get("e2e") or {}
    if record.get("e2e_images_per_s"):  # the whole job, over every GPU of the machine it ran on
        rate, what = record["e2e_images_per_s"] / max(1, e2e.get("gpus") or 1), "the whole job"
    elif record.get("images_per_s"):
        rate, what = record["images_per_s"], "the model alone; loading and data stages add to it"
    else:
        return None
    return BenchRecord(path=path, device=record.get("device", "an unrecorded device"),
                       date=record.get("date_utc", "undated"), sampler=settings.get("sampler", defaults.sampler),
                       steps=int(settings.get("steps", defaults.steps)),
                       side=int(settings.get("resolution", defaults.resolution)), seconds_per_image=1.0 / rate,
                       what=what)


@lru_cache(maxsize=None)
def _side_flops(config: str, side: int) -> tuple[int, int]:
    """(one UNet call on the CFG batch of one image, VAE encode + decode of one image) at `side` px."""
    from rayinpaint.model.flops import unet_flops, vae_flops

    unet, _ = unet_flops(config, 2, (side // 8, side // 8))
    encode, decode = vae_flops(config, 1, (side, side))
    return unet, encode + decode


def image_flops(config: str, side: int, sampler: str, steps: int) -> int:
    """FLOPs of inpainting one image (one region) at `side` px with `sampler` and `steps`."""
    from rayinpaint.model.flops import unet_calls

    unet, vae = _side_flops(config, side)
    return unet_calls(sampler, steps) * unet + vae


def seconds_per_row(record: BenchRecord, cfg, rows_sides: list[list[int]]) -> float:
    """Mean model seconds per GPU of the sampled rows, each row the sum over its regions (their sides)."""
    base = image_flops(cfg.model_config, record.side, record.sampler, record.steps)
    per_row = [sum(record.seconds_per_image * image_flops(cfg.model_config, side, cfg.sampler, cfg.steps) / base
                   for side in sides) for sides in rows_sides]
    return sum(per_row) / len(per_row)


def estimate_line(cfg, rows: int, rows_sides: list[list[int]]) -> str:
    """One line: GPU-hours for `rows` rows costed like the sample's rows (`rows_sides`: each repainted row's
    region sides; none: one region at --resolution), naming the record used."""
    if not cfg.bench_record:
        return "GPU-hours: pass --bench-record FILE (the JSON line `rayinpaint bench` prints) for an estimate"
    record = read_record(cfg.bench_record, type(cfg))
    if record is None:
        return f"GPU-hours: {cfg.bench_record} has no images_per_s"
    rows_sides = rows_sides or [[cfg.resolution]]
    per_row = seconds_per_row(record, cfg, rows_sides)
    regions = sum(map(len, rows_sides)) / len(rows_sides)
    sides = ", ".join(f"{s} px" for s in sorted({s for r in rows_sides for s in r}))
    return (f"GPU-hours: about {rows * per_row / 3600:.2f} for {rows} row(s) at {per_row:.2f} s per row per GPU "
            f"({regions:.2f} region(s) per row at {sides}, {cfg.sampler} {cfg.steps} steps); from "
            f"{record.describe()}, scaled by counted FLOPs to these steps and sides")


# The full model on CPU, measured: BENCHMARKS.md, "The full model on CPU" (rayinpaint bench --weights random:sd2
# --batch-size 1 --steps 2 --resolution 512 --iters 1 --warmup 0, 2 shared x86_64 cores). Rerun it to update.
CPU_S_PER_IMAGE = 135.0
CPU_RECORD = BenchRecord(path="BENCHMARKS.md, \"The full model on CPU\"", device="cpu: x86_64, 2 cores",
                         date="2026-12-07", sampler="dpmpp_2m", steps=2, side=512, seconds_per_image=CPU_S_PER_IMAGE,
                         what="the model alone")


def cpu_batch_line(cfg) -> str | None:
    """What a run whose model actors found no GPU should expect: the time per batch of --batch-size regions at
    --resolution with this sampler and steps, scaled from the CPU record, and what to pass for a quick try.
    None for the tiny model (seconds per batch: nothing to warn about)."""
    if cfg.weights.startswith("random:tiny") or cfg.model_config == "tiny":
        return None
    per_image = seconds_per_row(CPU_RECORD, cfg, [[cfg.resolution]])
    return (f"no GPU found: the model actors run on CPU, about {_duration(per_image * cfg.batch_size)} per batch of "
            f"{cfg.batch_size} at {cfg.resolution} px with {cfg.sampler} {cfg.steps} steps (scaled from "
            f"{CPU_RECORD.seconds_per_image:.0f} s per image at {CPU_RECORD.steps} steps measured on 2 x86_64 cores: "
            f"{CPU_RECORD.path}); the first progress counts come after the first batch; for a quick try pass "
            f"--limit 4 --batch-size 1 --resolution 256 --steps 10, or --weights random:tiny (a tiny random model: "
            f"noise inside the masks, seconds per batch)")


def _duration(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
