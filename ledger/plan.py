"""A run's bookkeeping from start to end, in the order the job does it:

1. `start`: read the manifest's ids and the results' index columns into the index (ledger/index.py), repair the
   results (superseded rows; with --retry-errors, the error rows about to be retried), write the rows the
   manifest alone settles, and work out the ids left to do. A daily run whose earlier manifest files were all
   accounted for and are unchanged (ledger/accounted.py) reads only the new files' ids, and of the results only
   the rows of those ids: its cost follows what is new, not what is old.
2. the pass (jobs/): every row it records is added to the index (`Index.add_recorded`).
3. `totals`: the output as a whole (counts, unique ids, ids with a row), and `remember` what was accounted for.

Exactly once: the results are read once per run; every id they hold after the repair has one row, the ids left
have none, and the rows this run records are for ids left, so the totals are the start's counts plus this run's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from . import accounted
from .compaction import compact
from .files import Ledger
from .index import Counts, Index, done_count
from .layout import skipped_statuses
from .manifest import Scan, list_files, read_ids, settled_rows

log = logging.getLogger("rayinpaint.ledger")


@dataclass
class Plan:
    """What a run does, as `start` found it."""
    index: Index
    scan: Scan
    todo: int                  # ids left to do (before --limit)
    done: int                  # ids not processed again (done, or errors unless --retry-errors)
    base: Counts               # the results' counts at the start (after the repair and the settled rows)
    unique: int                # unique ids in the manifest
    duplicates: dict           # {id: rows} of the ids repeated in the manifest
    missing: list              # names of the manifest's rows without an id
    skipped: tuple = ()        # statuses whose ids are not processed again (layout.skipped_statuses)
    old: set = field(default_factory=set)          # manifest files accounted for earlier, not read
    file_rows: dict = field(default_factory=dict)  # rows of each results file where known (compaction)

    def groups_to_read(self) -> list:
        """The manifest file groups a pass reads (Scan.groups), each without the files holding no id left."""
        wanted = {self.scan.files[k][0] for k in self.index.files_with_ids_in("todo") if k >= 0}
        groups = ([p for p in group if p in wanted] for group in self.scan.groups)
        return [g for g in groups if g]


@dataclass
class Reading:
    """The manifest as read before anything is written (`read_manifest`)."""
    scan: Scan
    old: set                   # manifest files accounted for earlier (not read)
    acc: object                # their record (accounted.Accounted), or None
    listing: list              # the results files when the record was checked
    colmap: object             # the manifest's column mapping (io.manifest.ColumnMap)


def read_manifest(ledger: Ledger, manifest, colmap, storage, index: Index, retry_errors: bool = False) -> Reading:
    """List the manifest files, check their schemas and read their ids into `index` (empty): only the new files'
    when an earlier run accounted for the others (ledger/accounted.py). Nothing is written: a bad manifest stops
    a run here."""
    files = list_files(manifest, storage)
    listing = ledger.listing()
    acc = accounted.load(ledger.output, storage)
    old = accounted.reusable(acc, listing, files, retry_errors)
    scan = read_ids(files, [k for k in range(len(files)) if k not in old], colmap, storage, index)
    return Reading(scan, old, acc, listing, colmap)


def start(ledger: Ledger, reading: Reading, storage, index: Index, retry_errors: bool = False,
          write: bool = True) -> Plan:
    """Step 1 of the module docstring, after `read_manifest` filled `index`. `write=False` (a dry run): nothing
    is repaired, written or merged."""
    listing, scan = ledger.listing(), reading.scan
    if reading.old and listing == reading.listing:
        daily = _daily(ledger, reading, index)
        if daily is not None:
            return _settle(ledger, *daily, retry_errors, write)
        log.info("new manifest files hold ids that already have rows; reading every manifest file")
    if reading.old:  # not a daily run after all: every file's ids are needed
        index.reset()
        scan = read_ids(scan.files, list(range(len(scan.files))), reading.colmap, storage, index)
    index.add_results(ledger, listing)
    repeated = index.duplicates()
    plan = Plan(index, scan, 0, 0, Counts(), index.unique_ids(), repeated, scan.missing)
    return _settle(ledger, plan, repeated, retry_errors, write)


def _daily(ledger: Ledger, reading: Reading, index: Index) -> tuple[Plan, dict] | None:
    """(the plan of a run whose files `reading.old` were accounted for: the new files' ids only, and the results
    of those ids; the ids repeated among the new files). None when some of them have rows already (a file given
    again, or ids repeated from the old files): only reading every file can tell those apart."""
    acc, scan = reading.acc, reading.scan
    if len(reading.old) < len(scan.files):  # the rows of the new ids, if any (reads the id columns, keeps none)
        index.add_results(ledger, reading.listing, only_manifest_ids=True)
        if index.count_results():
            return None
    log.info("%d manifest file(s) accounted for by earlier runs (not read again), %d new",
             len(reading.old), len(scan.files) - len(reading.old))
    repeated = index.duplicates()
    return Plan(index, scan, 0, 0, acc.counts, acc.unique + index.unique_ids(), {**acc.duplicates, **repeated},
                acc.missing + scan.missing, old=reading.old), repeated


def _settle(ledger: Ledger, plan: Plan, repeated: dict, retry_errors: bool, write: bool) -> Plan:
    """Repair, settle, plan (see the module docstring). `repeated`: the ids repeated among the files read."""
    index = plan.index
    # Those ids and the rows without an id of the files read (older files' were settled by earlier runs).
    fresh = index.settle(settled_rows(repeated, plan.scan.missing))
    if write and repair(ledger, index, retry_errors):
        index.clear_results()
        index.add_results(ledger, ledger.listing())
    statuses = plan.skipped = skipped_statuses(retry_errors)
    plan.todo = index.plan(statuses)
    if not plan.old:
        plan.base = index.counts("results")
    plan.done = done_count(plan.base, statuses)
    if write and fresh.num_rows:
        ledger.write_rows(fresh)
    index.add_recorded(fresh)
    plan.base = plan.base.plus(index.counts("recorded"))  # the settled rows, written once
    index.clear_recorded()
    if write:
        known = dict(zip(index.files, index.rows))
        plan.file_rows = compact(ledger, file_rows=known).file_rows
    log.info("%d row(s) already done; %d to process", plan.done, plan.todo)
    return plan


def repair(ledger: Ledger, index: Index, retry_errors: bool) -> bool:
    """Rewrite the results files holding superseded rows (and retried error rows) without them; True when any
    was."""
    drop = index.superseded(retry_errors)
    n = sum(ledger.drop_rows(path, rows) for path, rows in drop.items())
    if n:
        log.info("removed %d superseded row(s) from %d file(s)", n, len(drop))
    return bool(n)


def totals(plan: Plan) -> tuple[Counts, int]:
    """(counts over the whole output, manifest ids with a row) after this run's rows were added: every id left
    at the start that has no row now is still left."""
    return plan.base.plus(plan.index.counts("recorded")), plan.unique - plan.index.count_lost()


def remember(ledger: Ledger, plan: Plan, counts: Counts, with_a_row: int, storage) -> None:
    """Record what this run accounted for (ledger/accounted.py) when every manifest id has a row (`counts` and
    `with_a_row` as `totals` gave them); otherwise forget any earlier record, so the next run reads every file."""
    if with_a_row != plan.unique:
        accounted.forget(ledger.output, storage)
        return
    results = [[p.rstrip("/").rsplit("/", 1)[-1], int(s)] for p, s in ledger.listing()]
    acc = accounted.Accounted(results=results, files=dict(plan.scan.files), unique=plan.unique,
                              duplicates=plan.duplicates, missing=plan.missing, counts=counts)
    accounted.save(ledger.output, storage, acc)
