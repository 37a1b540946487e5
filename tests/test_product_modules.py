"""Every module of the product's folders (jobs/, io/, model/, ledger/, detect/, bench/) imports on its own, on CPU
and without starting Ray, and the command line's entry point runs. These tests are not `slow`, so the fast loop
(`python -m pytest -m "not slow"`) loads every module at least once, whatever the marks of the tests that exercise
it; the list is read from the folders, so a new module is covered the day it is added.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"jobs": "rayinpaint.jobs", "model": "rayinpaint.model", "io": "rayinpaint.io",
           "ledger": "rayinpaint.ledger", "bench": "rayinpaint.bench", "detect": "rayinpaint.detect"}
ENTRY_POINT = "rayinpaint.jobs.__main__"  # runs the command line when imported: run as `python -m`, below


def product_modules() -> list[str]:
    return [package if p.stem == "__init__" else f"{package}.{p.stem}"
            for folder, package in FOLDERS.items() for p in sorted((ROOT / folder).glob("*.py"))]


def test_every_product_module_imports():
    modules = [m for m in product_modules() if m != ENTRY_POINT]
    assert {m.split(".")[1] for m in modules} == {"jobs", "model", "io", "ledger", "bench", "detect"}
    assert len(modules) >= 70, modules  # the folders were found (75 besides the entry point when this was written)
    failed = {}
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - every failure is listed, not only the first
            failed[name] = f"{type(e).__name__}: {e}"
            continue
        # the module imported is the one in this folder, not one of the same name elsewhere on sys.path
        expected = "__init__.py" if name in FOLDERS.values() else name.rsplit(".", 1)[1] + ".py"
        assert Path(module.__file__).name == expected, (name, module.__file__)
    assert not failed, failed


def test_the_command_line_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "rayinpaint.jobs", "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: rayinpaint"), proc.stdout[:500]
