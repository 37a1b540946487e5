"""Progress lines: counted from rows done before this run, rates and ETA over a recent window, a first line as
soon as rows arrive, and lines from the ticker while none do; what the run is doing and the rows on storage, from
the workers' events (jobs/events.py)."""

from __future__ import annotations

import logging
import time

from rayinpaint.jobs.events import LOADED, LOADING, RUNNING, RunEvents
from rayinpaint.jobs.progress import Progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_counts_rows_done_before_and_rates_over_a_recent_window(caplog):
    clock = Clock()
    p = Progress(total=22, interval=10.0, clock=clock, before=8, window=60.0)
    assert "rows 8/30 (26.7%); 8 done before this run" in p.line() and "(starting the model actors)" in p.line()
    clock.t += 120.0  # two minutes of model loading: must not drag the rate down for the rest of the run
    with caplog.at_level(logging.INFO, logger="rayinpaint.progress"):
        p.update(["ok"] * 4)                      # the first rows: a line at once
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith("rows 12/30 (40.0%)")
    for _ in range(6):                            # then 2 rows every 10 s (one of them unchanged: no new pixels)
        clock.t += 10.0                           # the ok row in 3 regions
        p.update(["ok", "unchanged"], regions=3)
    rows_s, images_s, regions_s = p.rates()
    assert abs(rows_s - 0.2) < 1e-9 and abs(images_s - 0.2) < 1e-9  # 12 rows in the last 60 s
    assert abs(regions_s - 0.3) < 1e-9                                 # 18 regions in the last 60 s
    line = p.line()
    assert "rows 24/30 (80.0%)" in line and "0.20 rows/s" in line and "ETA 30s" in line  # 6 rows left at 0.2/s
    assert "0.30 regions/s" in line
    assert line.endswith("[ok 10, unchanged 6]")


def test_an_error_row_counts_as_a_row_but_not_as_an_image():
    clock = Clock()
    p = Progress(total=6, interval=10.0, clock=clock)
    clock.t += 30.0
    p.update(["ok", "ok"])
    assert p.rates() == (0.0, 0.0, 0.0) and "ETA ?" in p.line()  # one point: no rate yet (loading is not counted)
    assert "rates measured from the second batch on" in p.line() and "0.00 rows/s" not in p.line()
    clock.t += 10.0
    p.update(["ok", "error"])
    assert p.rates()[:2] == (0.2, 0.1) and "ETA 10s" in p.line()


def test_ticker_logs_while_no_rows_arrive(caplog):
    p = Progress(total=5, interval=0.1)
    with caplog.at_level(logging.INFO, logger="rayinpaint.progress"):
        p.start_ticker()
        time.sleep(0.5)
        p.close()
        time.sleep(0.15)
        n = len(caplog.records)
        time.sleep(0.3)
    assert n >= 2 and len(caplog.records) == n  # lines while waiting; none after close
    assert "rows 0/5" in caplog.records[0].getMessage()


def test_the_state_follows_the_workers_events():
    """Starting, each actor's model loading with its time, loaded, the first batch running, then counts: the
    rows the finish tasks wrote, ahead of the rows the driver has received."""
    clock = Clock()
    events = RunEvents(clock=clock)
    p = Progress(total=40, interval=10.0, clock=clock)

    def line() -> str:
        p.observe(events.snapshot())
        return p.line()

    assert line().endswith("ETA ? (starting the model actors)")
    events.actor("a", LOADING)
    clock.t += 20.0
    events.actor("b", LOADING)
    clock.t += 60.0
    assert line().endswith("(model loading on 2 actor(s): a 1m20s, b 1m00s)")
    events.actor("a", LOADED)
    events.actor("b", LOADED)
    assert line().endswith("(model loaded on 2 actor(s); waiting for the first prepared rows)")
    events.actor("a", RUNNING)
    clock.t += 125.0
    text = line()
    assert text.startswith("rows 0/40") and text.endswith("(running the first batch on 1 actor(s), for 2m05s)")
    assert "model loading" not in text and "waiting for the first rows" not in text

    events.written({"ok": 14, "error": 2}, 20)  # on storage; the driver has received none of it yet
    text = line()
    assert text.startswith("rows 16/40 (40.0%)") and "[error 2, ok 14]" in text and not text.endswith(")")
    p.update(["ok"] * 8)                        # the driver receives the first 8 later: the count does not fall
    assert p.line().startswith("rows 16/40")
    clock.t += 10.0
    events.written({"ok": 8}, 8)
    assert line().startswith("rows 24/40") and abs(p.rates()[0] - 0.8) < 1e-9  # 8 rows in 10 s
    events.actor("c", LOADING)                  # a restarted worker loads its model again
    clock.t += 5.0
    assert line().endswith("[error 2, ok 22] (model loading on 1 actor(s): c 5s)")
    p.update(["ok"] * 20)                       # the driver may also be ahead (rows it recorded itself)
    assert p.line().startswith("rows 28/40")


def test_the_ticker_shows_what_is_on_storage_within_an_interval(caplog):
    events = RunEvents()
    p = Progress(total=10, interval=0.2)
    with caplog.at_level(logging.INFO, logger="rayinpaint.progress"):
        p.start_ticker(events.snapshot)
        events.actor("a", RUNNING)
        time.sleep(0.5)
        events.written({"ok": 6}, 6)
        time.sleep(0.35)
        p.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("running the first batch on 1 actor(s)" in m for m in messages), messages
    assert messages[-1].startswith("rows 6/10"), messages
