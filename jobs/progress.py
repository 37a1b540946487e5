"""Progress lines: rows done of total, rate and ETA, to the log (and so to the terminal) at a fixed interval."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("rayinpaint.progress")


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    def __init__(self, total: int, interval: float = 10.0, label: str = "rows", clock=time.monotonic):
        self.total = total
        self.interval = interval
        self.label = label
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.done = 0
        self.by_status: dict[str, int] = {}

    def update(self, statuses) -> None:
        for s in statuses:
            self.done += 1
            self.by_status[s] = self.by_status.get(s, 0) + 1
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            log.info(self.line())

    def rate(self) -> float:
        el = self.clock() - self.start
        return self.done / el if el > 0 else 0.0

    def line(self) -> str:
        el = self.clock() - self.start
        rate = self.rate()
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = _hms((self.total - self.done) / rate) if rate > 0 and self.total >= self.done else "?"
        st = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        return (f"{self.label} {self.done}/{self.total} ({pct:.1f}%) {rate:.2f} rows/s "
                f"elapsed {_hms(el)} ETA {eta}" + (f" [{st}]" if st else ""))
