"""`rayinpaint bench`: images/s of the bare model (and, optionally, of diffusers and of the whole Ray job).

Prints one JSON object with the device, versions, date and settings next to every number, so a result can be
rerun and compared. Random weights (`random:sd2`) have the real architecture and cost; speed does not depend
on the weight values.
"""

from __future__ import annotations

import json
import platform
import sys
import time


def add_bench_arguments(p) -> None:
    p.add_argument("--weights", default="random:sd2", help="weights (default: random:sd2, full size, random)")
    p.add_argument("--batch-size", type=int, default=16, help="images per call (default: 16)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default: 50)")
    p.add_argument("--sampler", default="ddim", help="sampler (default: ddim)")
    p.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default: 7.5)")
    p.add_argument("--resolution", type=int, default=512, help="pixels (default: 512)")
    p.add_argument("--dtype", default="auto", help="auto|float32|float16|bfloat16 (default: auto)")
    p.add_argument("--iters", type=int, default=2, help="timed batches (default: 2)")
    p.add_argument("--diffusers", action="store_true",
                   help="also time diffusers' StableDiffusionInpaintPipeline on the same weights (needs diffusers)")
    p.add_argument("--job-rows", type=int, default=0,
                   help="also run the whole Ray job on N synthetic rows and report its images/s (default: 0 = off)")
    p.add_argument("--json", default=None, help="also write the result to this file")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _inputs(b: int, r: int):
    import numpy as np

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, r, r, 3), dtype=np.uint8)
    masks = np.zeros((b, r, r), np.uint8)
    masks[:, r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 255
    return images, masks


def time_ours(args, device, dtype) -> dict:
    from rayinpaint.model import Inpainter, load_model

    t0 = time.perf_counter()
    m = load_model(args.weights, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    inp = Inpainter(m, sampler=args.sampler, steps=args.steps, guidance=args.guidance)
    images, masks = _inputs(args.batch_size, args.resolution)
    prompts = ["a photo"] * args.batch_size
    seeds = list(range(args.batch_size))
    inp(images, masks, prompts, None, seeds)  # warm-up
    _sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        inp(images, masks, prompts, None, seeds)
    _sync()
    dt = time.perf_counter() - t0
    return {"images_per_s": args.iters * args.batch_size / dt, "s_per_batch": dt / args.iters, "load_s": load_s}


def time_diffusers(args, device, dtype) -> dict:
    try:
        import diffusers  # noqa: F401 - optional, a test/benchmark reference only
    except ImportError:
        return {"error": "diffusers is not installed (pip install diffusers transformers)"}
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel

    from rayinpaint.model import load_model
    from rayinpaint.model import weights as W

    m = load_model(args.weights, device="cpu", dtype=torch.float32)
    cfg = m.config
    unet = UNet2DConditionModel(**W.diffusers_unet_config(cfg.unet, sample_size=args.resolution // 8))
    unet.load_state_dict(W.ldm_to_diffusers_unet(m.unet.state_dict(), cfg.unet), strict=True)
    vae = AutoencoderKL(**W.diffusers_vae_config(cfg.vae))
    vae.load_state_dict(W.ldm_to_diffusers_vae(m.vae.state_dict(), cfg.vae), strict=True)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=sched,
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        emb = m.text_encoder(m.tokenize(["a photo"] * args.batch_size)).to(device=device, dtype=dtype)
        neg = m.text_encoder(m.tokenize([""] * args.batch_size)).to(device=device, dtype=dtype)
    del m
    images, masks = _inputs(args.batch_size, args.resolution)
    img = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)  # diffusers takes [0, 1] tensors
    msk = torch.from_numpy(masks)[:, None].float().div(255)

    def call():
        pipe(prompt_embeds=emb, negative_prompt_embeds=neg, image=img, mask_image=msk, height=args.resolution,
             width=args.resolution, num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np")

    call()
    _sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        call()
    _sync()
    dt = time.perf_counter() - t0
    return {"images_per_s": args.iters * args.batch_size / dt, "s_per_batch": dt / args.iters,
            "diffusers": diffusers.__version__}


def time_job(args, device_dtype: str) -> dict:
    import os
    import tempfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from .config import JobConfig
    from .inpaint import run_job

    d = tempfile.mkdtemp(prefix="rayinpaint-bench-")
    r = args.resolution
    rng = np.random.default_rng(0)
    recs = []
    for i in range(args.job_rows):
        p = os.path.join(d, f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (r, r, 3), dtype=np.uint8)).save(p)
        recs.append({"id": str(i), "image": p, "boxes": [[r / 4, r / 4, 3 * r / 4, 3 * r / 4]]})
    pq.write_table(pa.Table.from_pylist(recs), os.path.join(d, "m.parquet"))
    cfg = JobConfig(manifest=(os.path.join(d, "m.parquet"),), output=os.path.join(d, "out"), weights=args.weights,
                    sampler=args.sampler, steps=args.steps, guidance=args.guidance, resolution=r,
                    batch_size=args.batch_size, dtype=device_dtype, karras=False, mask_dilate=0, feather=0,
                    context=0.0, min_context=0)
    t0 = time.perf_counter()
    rc = run_job(cfg)
    dt = time.perf_counter() - t0
    with open(os.path.join(d, "out", "_SUMMARY.json")) as f:
        s = json.load(f)
    return {"rows": args.job_rows, "exit_code": rc, "wall_s": dt, "images_per_s_wall": args.job_rows / dt,
            "counts": s["counts_by_status"]}


def run_bench(args) -> int:
    import torch

    from .predictor import pick_device_and_dtype

    device, dtype = pick_device_and_dtype(args.dtype)
    out = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype).replace("torch.", ""),
        "settings": {k: getattr(args, k) for k in ("weights", "batch_size", "steps", "sampler", "guidance",
                                                   "resolution", "iters")},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda},
    }
    out["rayinpaint"] = time_ours(args, device, dtype)
    if args.diffusers:
        out["diffusers"] = time_diffusers(args, device, dtype)
        if "images_per_s" in out["diffusers"]:
            out["speedup_vs_diffusers"] = out["rayinpaint"]["images_per_s"] / out["diffusers"]["images_per_s"]
    if args.job_rows:
        out["job"] = time_job(args, args.dtype)
        out["job_vs_bare"] = out["job"]["images_per_s_wall"] / out["rayinpaint"]["images_per_s"]
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if "error" not in out.get("diffusers", {}) else 1


if __name__ == "__main__":
    sys.exit(0)
