"""The run's accounting: what came back from the pipeline (`RunTally`) and what the ledger says at the end
(`Outcome`), from which the summary, the report and the exit code are made."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayinpaint.ledger.files import INDEX_SCHEMA
from rayinpaint.ledger.index import Counts, Index
from rayinpaint.ledger.layout import ERROR, OK, UNCHANGED
from rayinpaint.ledger.overview import MASK_BINS, mask_bin_counts

from .preflight import OutputUnwritable
from .progress import Progress
from .stages import UNWRITTEN

_EXAMPLES_PER_KIND = 5


@dataclass
class RunTally:
    """Rows this run processed, from the small tables the finish tasks send back (stages.DRIVER_SCHEMA) or
    rows the driver recorded itself (results rows). Keeps progress; stops the job on an unwritten row."""

    preview_count: int
    progress: Progress | None = None
    received: int = 0                     # rows received, recorded or not
    regions: int = 0                      # regions inpainted (rows of status ok have one or more)
    processed: int = 0                    # rows recorded
    by_status: Counter = field(default_factory=Counter)
    rows_by_actor: Counter = field(default_factory=Counter)
    speed_by_actor: dict = field(default_factory=dict)  # actor -> the speed switches last in effect there
    examples: dict = field(default_factory=dict)   # error kind -> {"ids": [...], "message": first message}
    previews: list = field(default_factory=list)   # (id, status, jpeg)
    model_sha256: str | None = None
    # rows whose mask a detector made (--mask-from), by the share of the image it covers before dilation
    detected_area: np.ndarray = field(default_factory=lambda: np.zeros(len(MASK_BINS), np.int64))
    detect_s: list = field(default_factory=lambda: [0, 0.0])  # rows a detector ran on, and its seconds in all
    after_add: Callable[[], None] | None = None    # called after each batch is added (in-run compaction)
    # where the index columns of every row recorded go (ledger/index.py; None: not kept)
    recorded: Index | None = None

    def add(self, batch: pa.Table) -> None:
        status = batch.column("status").to_pylist()
        self.received += len(status)
        unwritten = [i for i, s in enumerate(status) if s == UNWRITTEN]
        if unwritten:  # processed but not recorded: the output cannot be written
            message = batch.column("error")[unwritten[0]].as_py()
            raise OutputUnwritable(f"stopped: {message}; {len(unwritten)} row(s) of the last batch were not "
                                   f"recorded and are redone when the same command is rerun")
        self.processed += len(status)
        self.by_status.update(status)
        names = batch.column_names
        regions = int(pc.sum(batch.column("region_count")).as_py() or 0) if "region_count" in names else 0
        self.regions += regions
        if self.progress is not None:
            self.progress.update(status, regions)
        if "actor" in names:
            self.rows_by_actor.update(a for a in batch.column("actor").to_pylist() if a)
            if "speed" in names:
                self.speed_by_actor.update((a, s) for a, s in zip(batch.column("actor").to_pylist(),
                                                                   batch.column("speed").to_pylist()) if a and s)
        if "model_sha256" in names and not self.model_sha256:
            shas = pc.drop_null(batch.column("model_sha256"))
            self.model_sha256 = shas[0].as_py() if len(shas) else None
        self._keep_examples(batch)
        if "mask_fraction" in names:
            self._keep_detected(batch)
        if "preview_jpeg" in names:
            self._keep_previews(batch)
        self._keep_recorded(batch)
        if self.after_add is not None:
            self.after_add()

    def _keep_detected(self, batch: pa.Table) -> None:
        self.detected_area += mask_bin_counts(pc.drop_null(batch.column("mask_fraction")).to_numpy(
            zero_copy_only=False))
        if "t_detect" in batch.column_names:
            times = pc.drop_null(batch.column("t_detect"))
            self.detect_s = [self.detect_s[0] + len(times), self.detect_s[1] + float(pc.sum(times).as_py() or 0)]

    def _keep_recorded(self, batch: pa.Table) -> None:
        if self.recorded is not None:
            self.recorded.add_recorded(batch.select([c for c in INDEX_SCHEMA.names if c in batch.column_names]))

    def _keep_examples(self, batch: pa.Table) -> None:
        errors = batch.filter(pc.equal(batch.column("status"), ERROR))
        for rid, kind, msg in zip(*(errors.column(c).to_pylist() for c in ("id", "error_kind", "error"))):
            ex = self.examples.setdefault(kind or "unknown", {"ids": [], "message": msg})
            if len(ex["ids"]) < _EXAMPLES_PER_KIND:
                ex["ids"].append(rid)

    def _keep_previews(self, batch: pa.Table) -> None:
        if len(self.previews) >= self.preview_count:
            return
        with_preview = batch.filter(pc.is_valid(batch.column("preview_jpeg")))
        for rid, status, jpeg in zip(*(with_preview.column(c).to_pylist() for c in ("id", "status", "preview_jpeg"))):
            if len(self.previews) < self.preview_count:
                self.previews.append((rid, status, jpeg))

    def this_run(self) -> dict:
        rows, seconds = self.detect_s
        detected = {"detected_area": {label: int(n) for (_, label), n in zip(MASK_BINS, self.detected_area)},
                    "detect_s_per_row": round(seconds / rows, 4) if rows else None} if self.detected_area.any() else {}
        return {"processed": self.processed, "regions": self.regions, "by_status": dict(self.by_status),
                "rows_by_actor": dict(self.rows_by_actor), "speed_by_actor": dict(self.speed_by_actor), **detected}


@dataclass(frozen=True)
class Outcome:
    """The output as a whole, from the bookkeeping (ledger/plan.py totals): counts, completeness and the verdict."""

    by_status: dict
    by_kind: dict
    unique_ids: int          # ids in the manifest (rows without an id count once each)
    accounted: int           # of those, ids with a row in the ledger
    duplicates: dict         # {id: count} of ids repeated in the manifest
    prompts_truncated: int
    max_error_rate: float
    max_unchanged_rate: float = 1.0
    unchanged_examples: tuple = ()   # a few ids whose row is `unchanged`

    @property
    def unchanged_rate(self) -> float:
        """Unchanged rows among the rows that were not errors: 1.0 means no row of the output was repainted."""
        done = self.by_status.get(OK, 0) + self.by_status.get(UNCHANGED, 0)
        return self.by_status.get(UNCHANGED, 0) / done if done else 0.0

    @property
    def within_unchanged_rate(self) -> bool:
        # Exclusive: with the default 1.0 an output in which no row was repainted is never a success.
        return self.unchanged_rate < self.max_unchanged_rate

    @property
    def within_rates(self) -> bool:
        return self.within_error_rate and self.within_unchanged_rate

    @property
    def complete(self) -> bool:
        return self.accounted == self.unique_ids

    @property
    def error_rate(self) -> float:
        return self.by_status.get(ERROR, 0) / max(1, sum(self.by_status.values()))

    @property
    def within_error_rate(self) -> bool:
        return self.error_rate <= self.max_error_rate

    @property
    def success(self) -> bool:
        return self.within_rates and self.complete


def outcome_of(plan, counts: Counts, accounted: int, max_error_rate: float,
               max_unchanged_rate: float = 1.0) -> Outcome:
    """The Outcome of a run whose bookkeeping is `plan` (ledger/plan.py), from its `totals`."""
    return Outcome(by_status=counts.by_status, by_kind=counts.by_kind, unique_ids=plan.unique, accounted=accounted,
                   duplicates=plan.duplicates, prompts_truncated=counts.prompts_truncated,
                   max_error_rate=max_error_rate, max_unchanged_rate=max_unchanged_rate,
                   unchanged_examples=tuple(counts.unchanged_examples))


def unchanged_warning(outcome: Outcome, cfg) -> str | None:
    """One sentence when more than half of the rows were left unchanged (their mask was empty), naming the
    likely causes and a few of those ids; None otherwise. `cfg`: the run's JobConfig."""
    if outcome.unchanged_rate <= 0.5:
        return None
    n = outcome.by_status.get(UNCHANGED, 0)
    done = n + outcome.by_status.get(OK, 0)
    if cfg.mask_from:
        detect = cfg.detect_settings()
        return (f"{n} of {done} row(s) ({outcome.unchanged_rate:.0%}) are `unchanged`: their mask was empty. With "
                f"--mask-from {cfg.mask_from} the detector found nothing in them at --detector-threshold "
                f"{detect.effective_threshold} (a lower threshold finds fainter marks), or their own mask was empty "
                f"(--mask-combine {cfg.mask_combine}). Example ids: {', '.join(map(str, outcome.unchanged_examples))}")
    return (f"{n} of {done} row(s) ({outcome.unchanged_rate:.0%}) are `unchanged`: their mask was empty after "
            f"the threshold. Likely causes: --mask-threshold {cfg.mask_threshold} is above the masks' values "
            f"(faint or dark-grey marks), --mask-invert is {'on' if cfg.mask_invert else 'off'} (black = repaint "
            f"needs it on), or the masks are empty (all black) or use another encoding; 0/1 masks are read as "
            f"1 = repaint. Example ids: {', '.join(map(str, outcome.unchanged_examples))}")
