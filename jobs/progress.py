"""Progress lines: rows done of total (counting rows done before this run), rows/s and images/s over a recent
window, and an ETA from that window, to the log (and so to the terminal).

A line is logged as soon as the first rows come back, then every `interval` seconds: on arrival of rows, and by
a ticker thread while none arrive (model loading, autoscaling, a slow batch), so the console never goes quiet.
Rates are over the last `window` seconds, from the first rows on, not since the start: the model's load time and
a resumed run's skipped rows would otherwise make the ETA wrong for the whole run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from rayinpaint.io.results import DONE_STATUSES

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
        self.points: deque = deque([(self.start, 0, 0, 0)])  # (time, done, images, regions), oldest first
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def update(self, statuses, regions: int = 0) -> None:
        """Rows received (their statuses) and the regions inpainted in them."""
        with self._lock:
            first = self.done == 0
            for s in statuses:
                self.done += 1
                self.images += s in IMAGE_STATUSES
                self.by_status[s] = self.by_status.get(s, 0) + 1
            self.regions += regions
            now = self.clock()
            if first:  # the window starts at the first rows: model loading is not part of the rate
                self.points.clear()
            self.points.append((now, self.done, self.images, self.regions))
            while len(self.points) > 2 and self.points[1][0] <= now - self.window:
                self.points.popleft()
            due = first or now - self.last >= self.interval
        if due:
            self._log(now)

    def _log(self, now: float) -> None:
        self.last = now
        log.info(self.line())

    def rates(self) -> tuple[float, float, float]:
        """(rows/s, images/s, regions/s) over the recent window (since the oldest kept point)."""
        with self._lock:
            t0, d0, i0, r0 = self.points[0]
            el = self.clock() - t0
            if el <= 0:
                return 0.0, 0.0, 0.0
            return (self.done - d0) / el, (self.images - i0) / el, (self.regions - r0) / el

    def line(self) -> str:
        el = self.clock() - self.start
        rate, images, regions = self.rates()
        total, done = self.before + self.total, self.before + self.done
        pct = 100.0 * done / total if total else 100.0
        left = self.total - self.done
        eta = _hms(left / rate) if rate > 0 and left >= 0 else ("0s" if left <= 0 else "?")
        st = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        before = f"; {self.before} done before this run" if self.before else ""
        waiting = "" if self.done else " (waiting for the first rows: model loading)"
        if len(self.points) < 2:  # one batch so far (or none): no interval to measure a rate over yet
            rates = "rates measured from the second batch on"
        else:
            rates = (f"{rate:.2f} rows/s, {images:.2f} images/s, {regions:.2f} regions/s over the last "
                     f"{_hms(min(el, self.window))}")
        return (f"{self.label} {done}/{total} ({pct:.1f}%){before}; {rates}; elapsed {_hms(el)} ETA {eta}"
                + (f" [{st}]" if st else "") + waiting)

    # ---- ticker ----------------------------------------------------------------------------------------
    def start_ticker(self) -> None:
        """Log a line every `interval` while no rows arrive (daemon thread; `close` stops it)."""
        threading.Thread(target=self._tick, daemon=True, name="rayinpaint-progress").start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval / 2):
            now = self.clock()
            if now - self.last >= self.interval:
                self._log(now)

    def close(self) -> None:
        self._stop.set()
