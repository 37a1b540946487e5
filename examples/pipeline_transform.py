"""ray-inpaint inside a Ray Data pipeline of your own: `inpaint_dataset(ds, cfg)` turns manifest rows into
results rows (images are written under cfg.output/images/).

    python examples/pipeline_transform.py MANIFEST.parquet OUTPUT_FOLDER

Runs with the tiny random model (no download); pass your weights in JobConfig(weights=...) for real output.
"""

import sys

import ray
from rayinpaint.jobs import JobConfig, inpaint_dataset

manifest, output = sys.argv[1], sys.argv[2]
ray.init()
ds = ray.data.read_parquet(manifest)                      # or any dataset with id / image / mask columns
ds = ds.filter(lambda row: not row["id"].startswith("skip-"))   # your own steps before...
cfg = JobConfig(manifest=(), output=output, weights="random:tiny", steps=4, resolution=128, batch_size=4)
results = inpaint_dataset(ds, cfg, base_dir=manifest.rsplit("/", 1)[0])
# Lazy, like any Ray Dataset: materialize() runs the model once; without it, write_parquet() and count() below
# would each run every row again (same images, twice the work).
results = results.filter(lambda row: row["status"] == "ok").materialize()  # ...and after
results.write_parquet(f"{output}/my-results")
print(results.count(), "rows repainted")
