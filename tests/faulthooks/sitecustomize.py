"""Fault injection for whole-job tests, loaded by every Python process of the job (driver and Ray workers)
through PYTHONPATH when RAYINPAINT_FAULT_OUTPUT is set; inert otherwise.

It simulates the output becoming unwritable part way through a run: the first RAYINPAINT_FAULT_BUDGET
files flushed to disk under RAYINPAINT_FAULT_OUTPUT succeed, every later one fails in `os.fsync` (where a
full disk reports itself for buffered writes) with errno RAYINPAINT_FAULT_ERRNO (ENOSPC or EACCES). The count
is shared by all processes through a locked state file (RAYINPAINT_FAULT_STATE).
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
