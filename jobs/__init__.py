"""Ray Data job and command line (Ray is imported here and by the benchmarks in bench/, nowhere else).

The Python API (README, "Python API"): `JobConfig`, `run_job(cfg)` and `inpaint_dataset(ds, cfg)`, imported on
first use so that `python -m rayinpaint.jobs` stays light.
"""

_API = {"JobConfig": ".config", "build_config": ".config", "run_job": ".inpaint", "inpaint_dataset": ".api",
        "read_results": "rayinpaint.ledger.files"}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
