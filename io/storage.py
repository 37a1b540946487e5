"""Filesystems from URIs (fsspec; S3 through s3fs), retried reads, atomic writes, URI joins.

- ``StorageOptions`` holds the S3 settings (endpoint, region, profile, anonymous access,
  requester-pays) and the retry policy. It never holds credentials: those come from the standard
  AWS chain (env vars, profile files, instance roles) inside botocore. Anything extra for other
  filesystems goes in ``extra``; values under secret-looking keys are masked in ``repr``.
- ``read_bytes`` retries transient failures (see ``retry.py``) and turns the final failure into
  ``RowError`` with kind ``not_found`` / ``access_denied`` / ``io_error``.
- Every S3 request (including the ones made outside ``read_bytes`` / ``write_bytes``: listings, Parquet
  reads through pyarrow, the weights download) is retried inside botocore too, in its ``standard`` retry
  mode with ``client_max_attempts`` attempts (default 10, ``$AWS_MAX_ATTEMPTS``): 500/502/503/504,
  SlowDown/throttling, connection resets and timeouts, with capped exponential backoff (full jitter, at
  most 20 s a wait) and botocore's retry quota, which stops retrying when most requests fail (an outage,
  not a fault). botocore's own default (legacy mode, 5 attempts) gives up after 5 failures in a row, 1
  request in 3,125 when a fifth of requests fail, and for a request nothing else retries (a listing goes
  through s3fs's paginator, outside s3fs's retry loop) that failure reaches the job.
- ``write_bytes`` is atomic on local disks (temporary name in the same folder, then
  ``os.replace``) and a single put on object stores (an object appears whole or not at all), so
  an interrupted run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import RowError, SettingsError, redact_uri
from .retry import RetryPolicy, call_with_retries, classify

_SECRET_KEY = re.compile(r"secret|token|password|passwd|credential|(^|_)key$|^key", re.I)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_RETRY_MODES = frozenset({"standard", "adaptive", "legacy"})


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class StorageOptions:
    endpoint_url: str | None = None   # e.g. http://127.0.0.1:9000 for MinIO / moto
    region: str | None = None
    profile: str | None = None        # named AWS profile
    anon: bool = False                # unsigned requests (public buckets)
    requester_pays: bool = False
    max_attempts: int = 5             # total attempts per read/write, including the first
    backoff_base: float = 0.2         # seconds
    backoff_max: float = 10.0         # seconds
    client_max_attempts: int = 10     # botocore attempts per S3 request, including the first
    client_retry_mode: str = "standard"  # botocore retry mode: standard, adaptive or legacy
    extra: dict = field(default_factory=dict)  # passed through to the filesystem constructor

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise SettingsError(f"storage max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not isinstance(self.client_max_attempts, int) or self.client_max_attempts < 1:
            raise SettingsError(f"storage client_max_attempts must be an integer >= 1, got {self.client_max_attempts!r}")
        if self.client_retry_mode not in _RETRY_MODES:
            raise SettingsError(f"storage client_retry_mode must be one of {sorted(_RETRY_MODES)}, "
                                f"got {self.client_retry_mode!r}")
        if not (self.backoff_base >= 0 and self.backoff_max >= 0):
            raise SettingsError("storage backoff_base and backoff_max must be >= 0")
        if not isinstance(self.extra, dict):
            raise SettingsError(f"storage extra must be a dict, got {type(self.extra).__name__}")

    def __hash__(self):  # frozen but holds a dict; hash by repr so instances can key caches
        return hash(repr(self))

    def __repr__(self) -> str:
        masked = {k: ("***" if _SECRET_KEY.search(str(k)) else v) for k, v in self.extra.items()}
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "extra"]
        return f"StorageOptions({', '.join(parts)}, extra={masked!r})"

    __str__ = __repr__

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, self.backoff_base, self.backoff_max)

    @classmethod
    def from_dict(cls, d: dict | None) -> "StorageOptions":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingsError(f"unknown storage option(s) {unknown}; known: {sorted(known)}")
        for name in ("anon", "requester_pays"):
            if isinstance(d.get(name), str):
                d[name] = _truthy(d[name])
        for name in ("max_attempts", "client_max_attempts"):
            if isinstance(d.get(name), str):
                d[name] = int(d[name])
        for name in ("backoff_base", "backoff_max"):
            if isinstance(d.get(name), str):
                d[name] = float(d[name])
        return cls(**d)

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "StorageOptions":
        """Standard AWS variables: AWS_ENDPOINT_URL_S3 (else AWS_ENDPOINT_URL), AWS_REGION (else
        AWS_DEFAULT_REGION), AWS_PROFILE, AWS_MAX_ATTEMPTS and AWS_RETRY_MODE (botocore's own, kept
        because the explicit client config would otherwise hide them); plus AWS_NO_SIGN_REQUEST and
        AWS_REQUEST_PAYER=requester (the CLI's --no-sign-request / --request-payer as variables).
        Keys/secrets are left to botocore's own credential chain and are never copied here."""
        env = os.environ if env is None else env
        d: dict[str, Any] = {
            "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            "profile": env.get("AWS_PROFILE") or None,
            "anon": _truthy(env.get("AWS_NO_SIGN_REQUEST")),
            "requester_pays": (env.get("AWS_REQUEST_PAYER") or "").lower() == "requester",
        }
        if env.get("AWS_MAX_ATTEMPTS"):
            d["client_max_attempts"] = env["AWS_MAX_ATTEMPTS"]
        if env.get("AWS_RETRY_MODE"):
            d["client_retry_mode"] = env["AWS_RETRY_MODE"].strip().lower()
        d.update(overrides)
        return cls.from_dict(d)

    def fsspec_kwargs(self, protocol: str) -> dict:
        """Constructor kwargs for the filesystem of ``protocol`` (s3fs for s3/s3a).

        For S3 the botocore client config carries the retry policy (``client_max_attempts`` attempts in
        ``client_retry_mode``); ``config_kwargs`` given in ``extra`` are merged over it, key by key."""
        if protocol in ("s3", "s3a"):
            kw: dict[str, Any] = {"anon": self.anon, "requester_pays": self.requester_pays,
                                  "config_kwargs": {"retries": {"mode": self.client_retry_mode,
                                                                "total_max_attempts": self.client_max_attempts}}}
            client: dict[str, Any] = {}
            if self.endpoint_url:
                client["endpoint_url"] = self.endpoint_url
            if self.region:
                client["region_name"] = self.region
            if client:
                kw["client_kwargs"] = client
            if self.profile:
                kw["profile"] = self.profile
            extra = dict(self.extra)
            if "client_kwargs" in extra:  # merge rather than replace
                kw["client_kwargs"] = {**client, **extra.pop("client_kwargs")}
            if "config_kwargs" in extra:
                kw["config_kwargs"] = {**kw["config_kwargs"], **extra.pop("config_kwargs")}
            kw.update(extra)
            return kw
        return dict(self.extra)


def protocol_of(uri: str) -> str:
    m = _SCHEME.match(uri)
    return m.group(1).lower() if m else "file"


def filesystem(uri: str, opts: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI or local path. The filesystem pickles (Ray)."""
    opts = opts or StorageOptions()
    protocol = protocol_of(uri)
    fs, path = fsspec.core.url_to_fs(uri, **opts.fsspec_kwargs(protocol))
    return fs, path


def row_error_for(exc: BaseException, uri: str, action: str, attempts: int) -> RowError:
    """The RowError a storage failure becomes (kind by `classify`; URI and message redacted)."""
    verdict = classify(exc)
    where = redact_uri(uri)
    if verdict == "not_found":
        return RowError("not_found", f"{where}: not found ({action})")
    if verdict == "access_denied":
        return RowError("access_denied", f"{where}: access denied ({action})")
    detail = f"{type(exc).__name__}: {redact_uri(str(exc))[:200]}"
    if verdict == "transient":
        return RowError("io_error", f"{where}: {action} failed after {attempts} attempts ({detail})")
    return RowError("io_error", f"{where}: {action} failed ({detail})")


def _with_retries(fn: Callable[[], Any], uri: str, action: str, opts: StorageOptions,
                  sleep: Callable[[float], None] | None) -> Any:
    count = [0]

    def attempt():
        count[0] += 1
        return fn()

    kwargs = {} if sleep is None else {"sleep": sleep}
    try:
        return call_with_retries(attempt, opts.retry_policy, **kwargs)
    except RowError:
        raise
    except Exception as exc:  # noqa: BLE001 - every storage failure becomes a row error
        raise row_error_for(exc, uri, action, count[0]) from None


def read_bytes(uri: str, opts: StorageOptions | None = None, *,
               sleep: Callable[[float], None] | None = None) -> bytes:
    """Whole object as bytes; transient failures retried; failures become RowError."""
    opts = opts or StorageOptions()
    try:
        fs, path = filesystem(uri, opts)
    except Exception as exc:  # unknown protocol, bad URL
        raise RowError("io_error", f"{redact_uri(uri)}: cannot open filesystem ({type(exc).__name__}: {exc})") from None

    def fetch():
        if isinstance(fs, LocalFileSystem) and os.path.isdir(path):
            raise IsADirectoryError(path)
        return bytes(fs.cat_file(path))

    return _with_retries(fetch, uri, "read", opts, sleep)


def write_bytes(uri: str, data: bytes, opts: StorageOptions | None = None, *,
                sleep: Callable[[float], None] | None = None) -> None:
    """Write an object whole: atomic rename locally, one put on object stores."""
    opts = opts or StorageOptions()
    fs, path = filesystem(uri, opts)
    if isinstance(fs, LocalFileSystem):
        def put():
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            # Same folder so the rename stays on one filesystem (atomic); dot-prefixed so
            # listings that skip hidden files never see a partial object.
            tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
    else:
        def put():
            fs.pipe_file(path, bytes(data))
    _with_retries(put, uri, "write", opts, sleep)


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a URI or local path with '/' (no normalisation of '..')."""
    out = base.rstrip("/") if base not in ("/",) else base
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}" if not out.endswith("/") else out + p
    return out


def dirname_uri(uri: str) -> str:
    m = _SCHEME.match(uri)
    if m:
        rest = uri[m.end():]
        return m.group(0) + posixpath.dirname(rest.rstrip("/"))
    return os.path.dirname(os.path.abspath(uri))


def resolve_uri(ref: str, base_dir: str | None) -> str:
    """Resolve a manifest's reference against the manifest's folder.

    - A reference with a scheme (``s3://``, ``https://``, ``memory://``...) is absolute.
    - ``/x/y`` is an absolute local path when the manifest is local; when the manifest is on
      ``scheme://...`` it means ``scheme://x/y`` (bucket-rooted).
    - Anything else is relative to ``base_dir``; ``.`` and ``..`` are normalised unless that would
      climb above the bucket (then the reference is joined as written and will not be found).
    """
    if _SCHEME.match(ref) or base_dir is None:
        return ref
    m = _SCHEME.match(base_dir)
    if m is None:  # local manifest
        if os.path.isabs(ref):
            return ref
        return os.path.normpath(os.path.join(base_dir, ref))
    scheme, rest = m.group(0), base_dir[m.end():].rstrip("/")
    if ref.startswith("/"):
        return scheme + ref.lstrip("/")
    joined = f"{rest}/{ref}" if rest else ref
    norm = posixpath.normpath(joined)
    bucket = rest.split("/", 1)[0]
    if norm == bucket or norm.startswith(bucket + "/"):
        return scheme + norm
    return scheme + joined
