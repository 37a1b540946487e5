"""_REPORT.html as a person reads it: the settings as a table of option and value (not raw JSON), and each error
kind once, in one table with its rows, example ids and reason."""

from __future__ import annotations

from html.parser import HTMLParser

from rayinpaint.jobs.config import JobConfig
from rayinpaint.jobs.report import build_summary, report_html
from rayinpaint.jobs.tally import Outcome, RunTally


class Tables(HTMLParser):
    """Every table of the page as a list of rows (lists of cell texts), and the text of <pre> blocks."""

    def __init__(self):
        super().__init__()
        self.tables, self.pre, self._cell, self._in_pre = [], [], None, False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "pre":
            self._in_pre = True
            self.pre.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag == "pre":
            self._in_pre = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._in_pre:
            self.pre[-1] += data


def page() -> tuple[str, Tables]:
    cfg = JobConfig(manifest=("s3://b/m/a.parquet", "s3://b/m/b.parquet"), output="s3://b/out", steps=25,
                    columns=("image=img_uri",))
    outcome = Outcome(by_status={"ok": 3, "error": 3}, by_kind={"not_found": 2, "decode_error": 1}, unique_ids=6,
                      accounted=6, duplicates={}, prompts_truncated=0, max_error_rate=0.05)
    tally = RunTally(preview_count=0, examples={
        "not_found": {"ids": ["a1", "a2"], "message": "s3://b/img/a1.png: not found"},
        "decode_error": {"ids": ["c3"], "message": "cannot identify image file"}})
    summary = build_summary(cfg, outcome, tally, elapsed=2.0, started=0.0, model_sha256="abc")
    text = report_html(summary, []).decode()
    parsed = Tables()
    parsed.feed(text)
    return text, parsed


def test_settings_are_a_table_of_options():
    text, parsed = page()
    assert not parsed.pre and '"steps": 25' not in text  # no raw JSON
    settings = next(t for t in parsed.tables if t[0] == ["option", "value"])
    values = dict(settings[1:])
    assert values["--steps"] == "25" and values["--sampler"] == "dpmpp_2m"
    assert values["--manifest"] == "s3://b/m/a.parquet, s3://b/m/b.parquet"
    assert values["--columns"] == "image=img_uri" and values["--limit"] == "-"


def test_each_error_kind_is_listed_once_in_one_table():
    text, parsed = page()
    error_tables = [t for t in parsed.tables if t[0][0] == "kind"]
    assert len(error_tables) == 1
    rows = {r[0]: r[1:] for r in error_tables[0][1:]}
    assert rows == {"not_found": ["2", "a1, a2", "s3://b/img/a1.png: not found"],
                    "decode_error": ["1", "c3", "cannot identify image file"]}
    assert text.count("s3://b/img/a1.png: not found") == 1 and text.count("cannot identify image file") == 1
