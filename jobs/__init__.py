"""Ray Data job, command line, demo and benchmark (the only place Ray is imported).

The Python API (README, "Python API"): `JobConfig`, `run_job(cfg)` and `inpaint_dataset(ds, cfg)`, imported on
first use so that `python -m rayinpaint.jobs` stays light.
"""

_API = {"JobConfig": "config", "build_config": "config", "run_job": "inpaint", "inpaint_dataset": "api",
        "read_results": "ledger"}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
