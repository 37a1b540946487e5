"""Progress lines: rows done of total (counting rows done before this run), rows/s and images/s over a recent
window, and an ETA from that window, to the log (and so to the terminal); before the first rows, what the run is
doing (model actors starting, each actor's model loading and for how long, the first batch running).

A line is logged as soon as the first rows come back, then every `interval` seconds: on arrival of rows, and by
a ticker thread while none arrive (model loading, autoscaling, a slow batch), so the console never goes quiet.
Rows are counted when a finish task has written them (jobs/events.py: the ticker asks every interval/2), or when
the driver receives them, whichever is more: the driver receives a finish task's rows some time after they are
on storage, so counting those alone made the console trail the output by minutes.
Rates are over the last `window` seconds, from the first rows on, not since the start: the model's load time and
a resumed run's skipped rows would otherwise make the ETA wrong for the whole run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from rayinpaint.io.results import DONE_STATUSES

from .events import LOADED, LOADING, RUNNING

log = logging.getLogger("rayinpaint.progress")

IMAGE_STATUSES = DONE_STATUSES  # rows with an image written


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, total: int, interval: float = 10.0, label: str = "rows", clock=time.monotonic,
                 before: int = 0, window: float | None = None):
        """total: rows this run is to process; before: rows of the output done before this run."""
        self.total = total
        self.before = before
        self.interval = interval
        self.window = window if window is not None else max(60.0, 3 * interval)
        self.label = label
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.done = 0
        self.images = 0
        self.regions = 0
        self.by_status: dict[str, int] = {}
        self.stored: dict = {"rows": 0, "by_status": {}, "regions": 0, "actors": {}}  # events.RunEvents.snapshot
        self.points: deque = deque([(self.start, 0, 0, 0)])  # (time, done, images, regions), oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def update(self, statuses, regions: int = 0) -> None:
        """Rows received (their statuses) and the regions inpainted in them."""
        with self._lock:
            for s in statuses:
                self.done += 1
                self.images += s in IMAGE_STATUSES
                self.by_status[s] = self.by_status.get(s, 0) + 1
            self.regions += regions
            now, due = self._advance()
        if due:
            self._log(now)

    def observe(self, snapshot: dict | None) -> None:
        """What the workers reported (events.RunEvents.snapshot; None: no answer this time)."""
        if snapshot is None:
            return
        with self._lock:
            self.stored = snapshot
            now, due = self._advance()
        if due:
            self._log(now)

    def counts(self) -> tuple[int, int, int, dict]:
        """(rows, images, regions, rows by status) done this run: what is written or received, whichever is more."""
        stored = self.stored
        if stored["rows"] > self.done:
            by = stored["by_status"]
            return stored["rows"], sum(by.get(s, 0) for s in IMAGE_STATUSES), stored["regions"], by
        return self.done, self.images, max(self.regions, stored["regions"]), self.by_status

    def _advance(self) -> tuple[float, bool]:
        """Add a point when the counts grew (under the lock); (now, whether a line is due)."""
        now = self.clock()
        done, images, regions, _ = self.counts()
        last = self.points[-1]
        if done == last[1] and regions == last[3]:
            return now, False
        first = last[1] == 0
        if first:  # the window starts at the first rows: model loading is not part of the rate
            self.points.clear()
        self.points.append((now, done, images, regions))
        while len(self.points) > 2 and self.points[1][0] <= now - self.window:
            self.points.popleft()
        return now, first or now - self.last >= self.interval

    def _log(self, now: float) -> None:
        self.last = now
        log.info(self.line())

    def rates(self) -> tuple[float, float, float]:
        """(rows/s, images/s, regions/s) over the recent window (since the oldest kept point)."""
        with self._lock:
            t0, d0, i0, r0 = self.points[0]
            el = self.clock() - t0
            t1, d1, i1, r1 = self.points[-1]
            if el <= 0:
                return 0.0, 0.0, 0.0
            return (d1 - d0) / el, (i1 - i0) / el, (r1 - r0) / el

    def line(self) -> str:
        el = self.clock() - self.start
        rate, images, regions = self.rates()
        with self._lock:
            done, _, _, by_status = self.counts()
            doing = state_text(self.stored["actors"], done)
            points = len(self.points)
        total, shown = self.before + self.total, self.before + done
        pct = 100.0 * shown / total if total else 100.0
        left = self.total - done
        eta = _hms(left / rate) if rate > 0 and left >= 0 else ("0s" if left <= 0 else "?")
        st = ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
        before = f"; {self.before} done before this run" if self.before else ""
        if points < 2:  # one batch so far (or none): no interval to measure a rate over yet
            rates = "rates measured from the second batch on"
        else:
            rates = (f"{rate:.2f} rows/s, {images:.2f} images/s, {regions:.2f} regions/s over the last "
                     f"{_hms(min(el, self.window))}")
        return (f"{self.label} {shown}/{total} ({pct:.1f}%){before}; {rates}; elapsed {_hms(el)} ETA {eta}"
                + (f" [{st}]" if st else "") + (f" ({doing})" if doing else ""))

    # ---- ticker ----------------------------------------------------------------------------------------
    def start_ticker(self, poll=None) -> None:
        """Log a line every `interval` while no rows arrive (daemon thread; `close` stops it). `poll`: a function
        returning the workers' events (events.poller), asked every interval/2."""
        threading.Thread(target=self._tick, args=(poll,), daemon=True, name="rayinpaint-progress").start()

    def _tick(self, poll) -> None:
        while not self._stop.wait(self.interval / 2):
            if poll is not None:
                self.observe(poll())
            now = self.clock()
            if now - self.last >= self.interval and not self._stop.is_set():
                self._log(now)

    def close(self) -> None:
        self._stop.set()


_NAMED = 4  # actors named with their time in a state line; more are counted


def _actors(found: list[tuple[str, float]]) -> str:
    named = ", ".join(f"{name} {_hms(age)}" for name, age in sorted(found, key=lambda a: -a[1])[:_NAMED])
    return named + (f" and {len(found) - _NAMED} more" if len(found) > _NAMED else "")


def state_text(actors: dict, done: int) -> str:
    """What the run is doing, from the model actors' reported states ({actor: (state, seconds in it)}) and the
    rows done: before the first rows, the stage the run is in; after, only actors (re)loading their model."""
    by_state: dict[str, list] = {}
    for name, (state, age) in actors.items():
        by_state.setdefault(state, []).append((name, age))
    loading = by_state.get(LOADING, [])
    if done:
        return f"model loading on {len(loading)} actor(s): {_actors(loading)}" if loading else ""
    if by_state.get(RUNNING):
        first = max(age for _, age in by_state[RUNNING])
        return (f"running the first batch on {len(by_state[RUNNING])} actor(s), for {_hms(first)}"
                + (f"; model loading on {len(loading)} actor(s): {_actors(loading)}" if loading else ""))
    if loading:
        return f"model loading on {len(loading)} actor(s): {_actors(loading)}"
    if by_state.get(LOADED):
        return f"model loaded on {len(by_state[LOADED])} actor(s); waiting for the first prepared rows"
    return "starting the model actors"
