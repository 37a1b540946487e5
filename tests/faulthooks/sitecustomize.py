"""Fault injection for whole-job tests, loaded by every Python process of the job (driver and Ray workers)
through PYTHONPATH; inert unless one of the variables below is set.

RAYINPAINT_TEST_CRASH_IDS (comma-separated ids): a model batch holding any of these ids kills its worker
process (exit 17, as a segfaulting kernel would), every time. Lets the tests prove that such a row ends as an
error row while every other row completes.

RAYINPAINT_FAULT_OUTPUT simulates the output becoming unwritable part way through a run: the first RAYINPAINT_FAULT_BUDGET
files flushed to disk under RAYINPAINT_FAULT_OUTPUT succeed, every later one fails in `os.fsync` (where a
full disk reports itself for buffered writes) with errno RAYINPAINT_FAULT_ERRNO (ENOSPC or EACCES). The count
is shared by all processes through a locked state file (RAYINPAINT_FAULT_STATE).

RAYINPAINT_TEST_KILL_IN_COMPACTION=k: the driver SIGKILLs itself during its first merge of results files,
when about to remove the k-th file the merged one replaces (k=1: merged file written, nothing removed yet).
"""

import errno
import os

_ROOT = os.environ.get("RAYINPAINT_FAULT_OUTPUT")

if _ROOT:
    import fcntl

    _BUDGET = int(os.environ.get("RAYINPAINT_FAULT_BUDGET", "0"))
    _STATE = os.environ["RAYINPAINT_FAULT_STATE"]
    _CODE = getattr(errno, os.environ.get("RAYINPAINT_FAULT_ERRNO", "ENOSPC"))
    _real_fsync = os.fsync

    def _fsync(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if path.startswith(_ROOT.rstrip("/") + "/"):
            with open(_STATE, "a+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.seek(0)
                used = len(f.read())
                f.write("w" if used < _BUDGET else "x")
            if used >= _BUDGET:
                raise OSError(_CODE, os.strerror(_CODE), path)
        return _real_fsync(fd)

    os.fsync = _fsync


_CRASH_IDS = {i for i in os.environ.get("RAYINPAINT_TEST_CRASH_IDS", "").split(",") if i}

if _CRASH_IDS:
    from rayinpaint.jobs.predictor import InpaintPredictor

    _real_call = InpaintPredictor.__call__

    def _crashing_call(self, batch):
        if _CRASH_IDS & set(batch.column("id").to_pylist()):
            os._exit(17)
        return _real_call(self, batch)

    InpaintPredictor.__call__ = _crashing_call


_KILL_IN_COMPACTION = int(os.environ.get("RAYINPAINT_TEST_KILL_IN_COMPACTION", "0") or 0)

if _KILL_IN_COMPACTION:
    # RAYINPAINT_TEST_KILL_IN_COMPACTION=k: the driver SIGKILLs itself in its first merge when about to remove
    # the k-th input of the merged file (k=1: the merged file is written, none of its inputs removed yet).
    import signal

    from rayinpaint.ledger import compaction

    _real_remove = compaction.remove_merged
    _removals = []

    def _remove_then_die(ledger, path):
        if len(_removals) + 1 == _KILL_IN_COMPACTION:
            os.kill(os.getpid(), signal.SIGKILL)
        _removals.append(path)
        _real_remove(ledger, path)

    compaction.remove_merged = _remove_then_die
