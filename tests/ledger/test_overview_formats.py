"""Images written by format in the output's overview (ledger/overview.py, the summary's `output_bytes`): rows and
bytes per format over every results file; files written before the format was recorded (no `output_format`
column) still read, count for everything else, and add nothing to the formats; merging keeps the counts."""

from __future__ import annotations

from helpers_ledger import forget_in_overview_cache
from rayinpaint.io.results import RESULTS_SCHEMA, results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.ledger import overview
from rayinpaint.ledger.compaction import compact
from rayinpaint.ledger.files import Ledger


def rows(start: int, formats: list) -> list[dict]:
    return [{"id": f"r{start + i}", "status": "ok" if fmt else "error", "error_kind": None if fmt else "x",
             "width": 10, "height": 10, "mask_pixels": 5, "output_format": fmt, "output_bytes": size}
            for i, (fmt, size) in enumerate(formats)]


def test_bytes_by_format_over_new_and_old_results_files(tmp_path):
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    old = results_table(rows(0, [("png", 1), ("png", 1)])).drop_columns(["output_format", "output_bytes",
                                                                          "output_fallback"])
    assert "output_format" not in old.schema.names
    ledger.write_rows(old)
    ledger.write_rows(results_table(rows(10, [("jpeg-transplant", 300), ("jpeg-transplant", 500), ("png", 90),
                                              (None, None)])))
    got = overview.results_overview(ledger)
    assert got["output_bytes"] == {"jpeg-transplant": {"rows": 2, "bytes": 800, "bytes_per_row": 400},
                                   "png": {"rows": 1, "bytes": 90, "bytes_per_row": 90}}
    assert sum(got["mask_area"].values()) == 5  # the old file's rows still count for the rest
    # an overview cache written before formats were counted is read again, not trusted
    forget_in_overview_cache(tmp_path / "out", "formats")
    assert overview.results_overview(ledger)["output_bytes"] == got["output_bytes"]


def test_merged_files_keep_the_new_columns_and_null_them_for_old_rows(tmp_path):
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    ledger.write_rows(results_table(rows(0, [("png", 7)])).drop_columns(["output_format", "output_bytes",
                                                                         "output_fallback"]))
    ledger.write_rows(results_table(rows(10, [("jpeg-transplant", 9)])))
    compact(ledger)
    table = ledger.read_all()
    assert table.schema.names == RESULTS_SCHEMA.names
    assert dict(zip(table.column("id").to_pylist(), table.column("output_bytes").to_pylist())) == {"r0": None,
                                                                                                  "r10": 9}
