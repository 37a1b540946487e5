"""Retry with exponential backoff and full jitter, and the exception classification behind it.

``classify(exc)`` sorts a storage exception into one of:

- ``"transient"``: throttling (SlowDown, Throttling, 429, 503), server errors (500, 502, 504,
  InternalError), timeouts, connection resets/refusals. Worth another attempt.
- ``"not_found"``: FileNotFoundError, NoSuchKey, NoSuchBucket, 404. Never retried.
- ``"access_denied"``: PermissionError, AccessDenied, 403, bad/expired credentials. Never retried.
- ``"permanent"``: anything else (bad request, is-a-directory...). Never retried.

The exception may be raw botocore (``ClientError`` with ``response["Error"]["Code"]``), s3fs's
translation of it (``OSError`` with an errno, the ClientError kept as ``__cause__``), an aiohttp
or botocore connection error, or a plain OS error from a local filesystem. The cause chain is
walked so a translated error is classified by its original code where that is more precise.

Note the S3 client underneath has its own retries (botocore's retry handler, configured by
``StorageOptions.client_max_attempts`` / ``client_retry_mode``, and s3fs's SlowDown / connection-error
loop); this layer sits on top of them, so the total is bounded by the product of the bounds. Requests
made outside ``read_bytes`` / ``write_bytes`` (listings, Parquet reads, the weights download) have only
the client's retries.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "TooManyRequests", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "InternalFailure", "ServiceUnavailable",
    "ServiceUnavailableException", "BandwidthLimitExceeded", "EC2ThrottledException",
    "PriorRequestNotComplete", "429", "500", "502", "503", "504",
})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404", "NoSuchVersion"})
DENIED_CODES = frozenset({
    "AccessDenied", "Forbidden", "403", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AccountProblem", "ExpiredToken", "InvalidToken",
    "RequestTimeTooSkewed", "UnauthorizedAccess",
})
TRANSIENT_ERRNOS = frozenset({
    errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EAGAIN, errno.EBUSY, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN,
    getattr(errno, "EREMOTEIO", errno.EIO),
})
# Exception class names (matched by name so that botocore / aiohttp stay optional imports).
TRANSIENT_CLASS_NAMES = frozenset({
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "ResponseStreamingError", "IncompleteReadError", "IncompleteRead", "ProxyConnectionError",
    "ServerDisconnectedError", "ClientConnectionError", "ClientConnectorError", "ClientOSError",
    "ClientPayloadError", "ServerTimeoutError", "FSTimeoutError", "ResponseParserError",
    "HTTPClientError",
})


def _client_error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error") or {}
        code = err.get("Code")
        if code is None:
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            code = str(status) if status else None
        return str(code) if code is not None else None
    return None


def _classify_one(exc: BaseException) -> str | None:
    code = _client_error_code(exc)
    if code is not None:
        if code in TRANSIENT_CODES:
            return "transient"
        if code in NOT_FOUND_CODES:
            return "not_found"
        if code in DENIED_CODES:
            return "access_denied"
        return "permanent"
    if isinstance(exc, FileNotFoundError):
        return "not_found"
    if isinstance(exc, PermissionError):
        return "access_denied"
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError, ConnectionError)):
        return "transient"
    if any(cls.__name__ in TRANSIENT_CLASS_NAMES for cls in type(exc).__mro__):
        return "transient"
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return "transient"
    return None


def classify(exc: BaseException) -> str:
    """Return "transient", "not_found", "access_denied" or "permanent" for a storage exception."""
    seen = set()
    chain = []
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    # The original (innermost) error carries the most precise code; s3fs's translation of an
    # unknown code is a bare OSError(EIO), which would otherwise read as permanent.
    for e in reversed(chain):
        verdict = _classify_one(e)
        if verdict is not None:
            return verdict
    return "permanent"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5     # total attempts, including the first
    base: float = 0.2         # seconds; attempt k (0-based) waits U(0, min(max, base * 2**k))
    max_delay: float = 10.0


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_delay, base * 2**attempt)]."""
    cap = min(policy.max_delay, policy.base * (2 ** attempt))
    return (rng or random).uniform(0.0, cap)


def call_with_retries(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, a non-transient error occurs, or attempts run out.

    The last exception is re-raised unchanged; callers classify it again to build a message.
    ``sleep`` and ``rng`` are injectable so tests can count attempts without waiting.
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised if not transient
            attempt += 1
            if classify(exc) != "transient" or attempt >= policy.max_attempts:
                raise
            delay = backoff_delay(policy, attempt - 1, rng)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
