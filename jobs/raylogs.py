"""Keep Ray's own log lines off the console: the job's lines (progress, warnings, the outcome) are what an
operator reads, and Ray's (execution plans, resource and memory reports, worker output) drown them.

Ray writes its logs to its session folder anyway (`<session>/logs`, Ray Data's in `ray-data.log` there), so
quieting the console loses nothing: the folder is named in one line. Errors from Ray's Python loggers still
reach the console, and a failed worker surfaces as the job's own message. `-v` leaves Ray's console output as
Ray configures it.
"""

from __future__ import annotations

import logging

log = logging.getLogger("rayinpaint.job")


def _is_ray(name: str) -> bool:
    return name == "ray" or name.startswith("ray.")


def _below_error_from_ray(record: logging.LogRecord) -> bool:
    """Filter for the job's console handlers: False (drop) for a Ray record below ERROR, and for Ray Data's
    "internal code" notice and stack trace about a pool whose actors did not start in time (the job says that
    in one line of its own, jobs/placement.py; Ray's log file keeps the trace)."""
    if not _is_ray(record.name):
        return True
    return record.levelno >= logging.ERROR and not _actor_start_timeout(record)


def _actor_start_timeout(record: logging.LogRecord) -> bool:
    import sys

    exc = (record.exc_info or sys.exc_info())[1]  # Ray Data logs both records while handling the exception
    return exc is not None and "Timed out while starting actors" in str(exc)


def quiet_ray_console() -> None:
    """Ray's Python loggers print only errors to the console: their own console handlers are raised to ERROR
    (their file handlers keep everything) and the job's console handlers drop Ray's records below ERROR."""
    for name in [n for n in logging.root.manager.loggerDict if _is_ray(n)]:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
                if _below_error_from_ray not in handler.filters:
                    handler.addFilter(_below_error_from_ray)
    for handler in logging.getLogger().handlers:
        if _below_error_from_ray not in handler.filters:
            handler.addFilter(_below_error_from_ray)


def name_ray_logs() -> None:
    """One line: where Ray's logs of this run are."""
    try:
        import ray

        folder = ray._private.worker._global_node.get_logs_dir_path()
    except Exception:  # noqa: BLE001 - a Ray without this attribute: nothing to name
        return
    log.info("Ray's own logs (workers, Ray Data's execution plan and resource reports): %s", folder)
