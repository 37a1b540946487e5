"""Resolve a weights URI to a local file, downloading remote files once per node, and its sha256.

Local paths (and file://) are used in place. Anything else (s3://, hf://, memory://, ...) goes
through fsspec into a cache directory keyed by a hash of the URI:

    <cache>/<key>-<basename>           the complete file, only ever created by an atomic rename
    <cache>/<key>-<basename>.sha256    its hex sha256 (computed while downloading)
    <cache>/<key>-<basename>.lock      fcntl.flock target: one downloader per node, others wait

The download goes to a unique temp name in the same directory, is checked against the remote
size (and an expected sha256 when given), fsynced and renamed, so a reader never sees a
half-written file. Cache dir: argument `cache_dir`, else $RAYINPAINT_CACHE, else
~/.cache/rayinpaint/weights.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from .checkpoint import WeightsError

CHUNK = 8 << 20  # 8 MiB


@dataclass(frozen=True)
class LocalFile:
    path: str
    sha256: str


def cache_root(cache_dir: str | os.PathLike | None = None) -> str:
    root = cache_dir or os.environ.get("RAYINPAINT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rayinpaint", "weights")
    os.makedirs(root, exist_ok=True)
    return str(root)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Exclusive flock on `path` (created if needed); released on exit or process death."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def local_sha256(path: str, cache_dir: str | None = None) -> str:
    """sha256 of a local file, memoised in the cache keyed by (real path, size, mtime)."""
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
    memo_dir = os.path.join(cache_root(cache_dir), "local-sha256")
    os.makedirs(memo_dir, exist_ok=True)
    memo = os.path.join(memo_dir, f"{key}.sha256")
    try:
        with open(memo) as f:
            digest = f.read().strip()
        if len(digest) == 64:
            return digest
    except FileNotFoundError:
        pass
    digest = sha256_file(path)
    _write_atomic(memo, digest)
    return digest


def cached_name(uri: str) -> str:
    key = hashlib.sha256(uri.encode()).hexdigest()[:32]
    base = os.path.basename(uri.rstrip("/")) or "weights"
    return f"{key}-{base}"


def _download(fs, rpath: str, dest: str, remote_size: int | None, expected_sha256: str | None, uri: str) -> str:
    tmp = f"{dest}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    h = hashlib.sha256()
    n = 0
    try:
        with fs.open(rpath, "rb") as src, open(tmp, "wb") as out:
            for block in iter(lambda: src.read(CHUNK), b""):
                out.write(block)
                h.update(block)
                n += len(block)
            out.flush()
            os.fsync(out.fileno())
        if remote_size is not None and n != remote_size:
            raise WeightsError(f"{uri}: downloaded {n} bytes but the remote size is {remote_size}")
        digest = h.hexdigest()
        if expected_sha256 and digest != expected_sha256.lower():
            raise WeightsError(f"{uri}: sha256 mismatch: expected {expected_sha256}, got {digest}")
        _write_atomic(f"{dest}.sha256", digest)
        os.replace(tmp, dest)
        return digest
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def fetch(uri: str, cache_dir: str | None = None, sha256: str | None = None, storage_options: dict | None = None) -> LocalFile:
    """Local file for `uri` plus its sha256; remote files are downloaded once per cache dir.

    storage_options: fsspec filesystem kwargs (e.g. s3fs client_kwargs with an endpoint_url)."""
    if is_local(uri):
        path = local_path(uri)
        if not os.path.isfile(path):
            raise WeightsError(f"{uri}: no such weights file")
        digest = local_sha256(path, cache_dir)
        if sha256 and digest != sha256.lower():
            raise WeightsError(f"{uri}: sha256 mismatch: expected {sha256}, got {digest}")
        return LocalFile(path, digest)

    fs, rpath = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    try:
        remote_size = fs.size(rpath)
    except FileNotFoundError as e:
        raise WeightsError(f"{uri}: no such remote weights file") from e
    root = cache_root(cache_dir)
    dest = os.path.join(root, cached_name(uri))
    with file_lock(f"{dest}.lock"):
        # Leftover temp files from a crashed download are never used; clear them while we hold the lock.
        prefix = os.path.basename(dest) + ".tmp-"
        for name in os.listdir(root):
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(root, name))
        digest = None
        if os.path.exists(dest) and os.path.exists(f"{dest}.sha256"):
            if remote_size is None or os.path.getsize(dest) == remote_size:
                with open(f"{dest}.sha256") as f:
                    digest = f.read().strip()
        if digest is None:
            digest = _download(fs, rpath, dest, remote_size, sha256, uri)
    if sha256 and digest != sha256.lower():
        raise WeightsError(f"{uri}: sha256 mismatch: expected {sha256}, cached file has {digest}")
    return LocalFile(dest, digest)


def remote_isdir(uri: str, storage_options: dict | None = None) -> bool:
    if is_local(uri):
        return os.path.isdir(local_path(uri))
    fs, rpath = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    return fs.isdir(rpath)
