"""Rows per mask source in the output's overview (ledger/overview.py, the summary's `mask_sources`): done rows
(ok, unchanged) counted per source with their mask sizes over every results file; files written before the source
was recorded count for everything else and add no source; an overview cache from before is read again."""

from __future__ import annotations

from helpers_ledger import forget_in_overview_cache
from rayinpaint.io.results import results_table
from rayinpaint.io.storage import StorageOptions
from rayinpaint.ledger import overview
from rayinpaint.ledger.files import Ledger


def rows(start: int, items: list) -> list[dict]:
    """(status, mask_source, mask pixels of a 10x10 image) -> results rows."""
    return [{"id": f"r{start + i}", "status": status, "error_kind": "x" if status == "error" else None,
             "width": 10, "height": 10, "mask_pixels": px, "mask_source": source}
            for i, (status, source, px) in enumerate(items)]


def test_rows_per_mask_source_with_their_mask_sizes(tmp_path):
    ledger = Ledger(str(tmp_path / "out"), StorageOptions())
    ledger.write_rows(results_table(rows(0, [("ok", None, 30)])).drop_columns(["mask_source", "mask_uri"]))
    ledger.write_rows(results_table(rows(10, [("ok", "text", 10), ("ok", "text", 60), ("unchanged", "text", 0),
                                              ("ok", "manifest", 3), ("error", "text", None),
                                              ("ok", "prompt:logo", 100)])))
    got = overview.results_overview(ledger)
    assert {k: v["rows"] for k, v in got["mask_sources"].items()} == {"manifest": 1, "prompt:logo": 1, "text": 3}
    text = got["mask_sources"]["text"]["mask_area"]
    assert (text["0 (empty)"], text["5-20%"], text["over 50%"], sum(text.values())) == (1, 1, 1, 3)
    assert got["mask_sources"]["manifest"]["mask_area"]["1-5%"] == 1
    assert sum(got["mask_area"].values()) == 6  # the old file's row still counts for the mask sizes
    forget_in_overview_cache(tmp_path / "out", "sources")
    assert overview.results_overview(ledger)["mask_sources"] == got["mask_sources"]
