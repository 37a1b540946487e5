"""Storage: options, URIs, reads/writes on local, memory:// and S3 (moto), atomicity, retries."""

from __future__ import annotations

import errno
import os

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from rayinpaint.io import storage
from rayinpaint.io.errors import RowError, SettingsError, redact_uri
from rayinpaint.io.retry import RetryPolicy, backoff_delay, call_with_retries, classify
from rayinpaint.io.storage import (StorageOptions, filesystem, join_uri, read_bytes, resolve_uri,
                                   write_bytes)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"msg {code}"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


# ---------------------------------------------------------------- options

def test_options_from_env_and_kwargs():
    env = {"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3only:2",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "p1", "AWS_NO_SIGN_REQUEST": "true",
           "AWS_REQUEST_PAYER": "requester", "AWS_SECRET_ACCESS_KEY": "SUPERSECRET"}
    o = StorageOptions.from_env(env)
    assert (o.endpoint_url, o.region, o.profile, o.anon, o.requester_pays) == \
        ("http://s3only:2", "eu-west-1", "p1", True, True)
    kw = o.fsspec_kwargs("s3")
    assert kw["client_kwargs"] == {"endpoint_url": "http://s3only:2", "region_name": "eu-west-1"}
    assert kw["anon"] is True and kw["requester_pays"] is True and kw["profile"] == "p1"
    assert "SUPERSECRET" not in repr(o) and "SUPERSECRET" not in repr(kw)
    # AWS_REGION wins over AWS_DEFAULT_REGION; overrides win over env
    o2 = StorageOptions.from_env({"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}, anon=False)
    assert o2.region == "a" and o2.anon is False


def test_options_repr_masks_secrets_and_validates():
    o = StorageOptions(extra={"key": "AKIAXXXX", "secret": "s3cr3t", "token": "tok", "use_ssl": False})
    text = repr(o)
    assert "AKIAXXXX" not in text and "s3cr3t" not in text and "tok'" not in text
    assert "use_ssl" in text and "False" in text
    with pytest.raises(SettingsError, match="max_attempts"):
        StorageOptions(max_attempts=0)
    with pytest.raises(SettingsError, match="unknown storage option"):
        StorageOptions.from_dict({"endpoint": "x"})
    assert StorageOptions.from_dict({"anon": "yes", "max_attempts": "3"}) == StorageOptions(anon=True, max_attempts=3)
    assert hash(StorageOptions()) == hash(StorageOptions())


def test_redact_uri():
    assert redact_uri("https://user:pw@host/x.png?X-Amz-Signature=abc&X-Amz-Credential=AK") == \
        "https://***@host/x.png?***"
    assert redact_uri("s3://b/k.png") == "s3://b/k.png"


def test_join_and_resolve():
    assert join_uri("s3://b/out/", "images", "a.png") == "s3://b/out/images/a.png"
    assert join_uri("/tmp/o", "images/", "/x.png") == "/tmp/o/images/x.png"
    assert resolve_uri("img/a.png", "s3://b/m") == "s3://b/m/img/a.png"
    assert resolve_uri("../img/a.png", "s3://b/m/sub") == "s3://b/m/img/a.png"
    assert resolve_uri("https://h/a.png", "s3://b/m") == "https://h/a.png"
    assert resolve_uri("/other/a.png", "s3://b/m") == "s3://other/a.png"
    assert resolve_uri("a.png", "/data/m") == "/data/m/a.png"
    assert resolve_uri("/abs/a.png", "/data/m") == "/abs/a.png"
    # climbing above the bucket is not normalised into another bucket
    assert resolve_uri("../../evil/a.png", "s3://b/m") == "s3://b/m/../../evil/a.png"


# ---------------------------------------------------------------- read / write

def test_local_roundtrip_and_not_found(tmp_path):
    uri = str(tmp_path / "deep" / "x.bin")
    write_bytes(uri, b"hello")
    assert read_bytes(uri) == b"hello"
    assert os.listdir(tmp_path / "deep") == ["x.bin"]  # no temporaries left behind
    with pytest.raises(RowError) as ei:
        read_bytes(str(tmp_path / "nope.png"))
    assert ei.value.kind == "not_found" and "nope.png" in ei.value.message
    with pytest.raises(RowError) as ei:
        read_bytes(str(tmp_path))
    assert ei.value.kind == "io_error"


def test_local_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_bytes(str(target), b"old")

    def boom(src, dst):
        raise KeyboardInterrupt  # interrupted between writing the temporary and renaming it

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        write_bytes(str(target), b"new-and-longer")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


@pytest.mark.parametrize("code,says", [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "access denied")])
def test_a_local_disk_that_refuses_the_write_at_fsync_is_one_message_and_no_partial_file(tmp_path, monkeypatch,
                                                                                          code, says):
    """The errors a full or read-only output disk gives, where the write first meets them: the row error names the
    cause (the job's stop line quotes it: tests/reliability/test_faults.py runs the job into a full disk), the
    object is not written and no temporary is left."""
    def refuse(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(storage.os, "fsync", refuse)
    with pytest.raises(RowError) as e:
        write_bytes(str(tmp_path / "out.png"), b"data", sleep=lambda s: None)
    assert says in e.value.message and "out.png" in e.value.message
    assert os.listdir(tmp_path) == []


def test_memory_roundtrip(memfs_root):
    uri = join_uri(memfs_root, "a", "b.bin")
    write_bytes(uri, b"\x00\x01")
    assert read_bytes(uri) == b"\x00\x01"
    with pytest.raises(RowError) as ei:
        read_bytes(join_uri(memfs_root, "missing.bin"))
    assert ei.value.kind == "not_found"


def test_s3_roundtrip_not_found_and_no_credentials_in_errors(s3_bucket):
    bucket, opts = s3_bucket
    uri = f"s3://{bucket}/dir/obj.bin"
    write_bytes(uri, b"payload", opts)
    assert read_bytes(uri, opts) == b"payload"
    fs, path = filesystem(uri, opts)
    assert fs.cat_file(path) == b"payload" and path == f"{bucket}/dir/obj.bin"
    for missing in (f"s3://{bucket}/dir/none.bin", f"s3://no-such-bucket-{bucket}/x.bin"):
        with pytest.raises(RowError) as ei:
            read_bytes(missing, opts, sleep=lambda s: None)
        assert ei.value.kind == "not_found", ei.value
        assert "testing" not in str(ei.value)  # the dummy key/secret never appear


def test_s3_filesystem_pickles(s3_bucket):
    import pickle

    bucket, opts = s3_bucket
    write_bytes(f"s3://{bucket}/p.bin", b"x", opts)
    fs, path = filesystem(f"s3://{bucket}/p.bin", opts)
    fs2 = pickle.loads(pickle.dumps(fs))
    assert fs2.cat_file(path) == b"x"


# ---------------------------------------------------------------- retries

@pytest.mark.parametrize("exc, verdict", [
    (client_error("SlowDown", 503), "transient"),
    (client_error("Throttling"), "transient"),
    (client_error("InternalError", 500), "transient"),
    (client_error("503", 503), "transient"),
    (client_error("NoSuchKey", 404), "not_found"),
    (client_error("404", 404), "not_found"),
    (client_error("AccessDenied", 403), "access_denied"),
    (client_error("403", 403), "access_denied"),
    (client_error("InvalidArgument"), "permanent"),
    (FileNotFoundError("x"), "not_found"),
    (PermissionError("x"), "access_denied"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "transient"),
    (OSError(errno.ECONNRESET, "reset"), "transient"),
    (TimeoutError("t"), "transient"),
    (EndpointConnectionError(endpoint_url="http://x"), "transient"),
    (ReadTimeoutError(endpoint_url="http://x"), "transient"),
    (IsADirectoryError("d"), "permanent"),
    (ValueError("v"), "permanent"),
])
def test_classify(exc, verdict):
    assert classify(exc) == verdict


def test_classify_s3fs_translated_errors():
    from s3fs.errors import translate_boto_error

    assert classify(translate_boto_error(client_error("SlowDown", 503))) == "transient"
    assert classify(translate_boto_error(client_error("NoSuchKey", 404))) == "not_found"
    assert classify(translate_boto_error(client_error("AccessDenied", 403))) == "access_denied"
    assert classify(translate_boto_error(client_error("502", 502))) == "transient"  # via the cause


def test_backoff_is_full_jitter_and_bounded():
    import random

    p = RetryPolicy(max_attempts=10, base=0.5, max_delay=3.0)
    rng = random.Random(0)
    for attempt in range(8):
        caps = min(3.0, 0.5 * 2 ** attempt)
        samples = [backoff_delay(p, attempt, rng) for _ in range(200)]
        assert all(0 <= s <= caps for s in samples)
        assert max(samples) > 0.8 * caps  # spread over the whole range (full jitter)


class Flaky:
    """cat_file stand-in that fails `n` times with `exc`, then returns data."""

    def __init__(self, n, exc, data=b"ok"):
        self.n, self.exc, self.data, self.calls = n, exc, data, 0

    def __call__(self, path, *a, **k):
        self.calls += 1
        if self.calls <= self.n:
            raise self.exc
        return self.data


def test_read_retries_transient_then_succeeds(memfs_root, monkeypatch):
    uri = join_uri(memfs_root, "f.bin")
    fs, _ = filesystem(uri)
    flaky = Flaky(3, client_error("SlowDown", 503))
    monkeypatch.setattr(fs, "cat_file", flaky)
    sleeps = []
    opts = StorageOptions(max_attempts=5, backoff_base=0.1, backoff_max=1.0)
    assert read_bytes(uri, opts, sleep=sleeps.append) == b"ok"
    assert flaky.calls == 4 and len(sleeps) == 3
    assert all(0 <= s <= min(1.0, 0.1 * 2 ** i) for i, s in enumerate(sleeps))


def test_read_gives_up_after_max_attempts(memfs_root, monkeypatch):
    uri = join_uri(memfs_root, "f.bin")
    fs, _ = filesystem(uri)
    flaky = Flaky(100, ConnectionResetError(errno.ECONNRESET, "connection reset by peer"))
    monkeypatch.setattr(fs, "cat_file", flaky)
    with pytest.raises(RowError) as ei:
        read_bytes(uri, StorageOptions(max_attempts=4), sleep=lambda s: None)
    assert flaky.calls == 4
    assert ei.value.kind == "io_error" and "after 4 attempts" in ei.value.message


@pytest.mark.parametrize("exc, kind", [
    (client_error("NoSuchKey", 404), "not_found"),
    (client_error("AccessDenied", 403), "access_denied"),
    (PermissionError("denied"), "access_denied"),
    (client_error("InvalidArgument", 400), "io_error"),
])
def test_permanent_errors_are_not_retried(memfs_root, monkeypatch, exc, kind):
    uri = join_uri(memfs_root, "f.bin")
    fs, _ = filesystem(uri)
    flaky = Flaky(100, exc)
    monkeypatch.setattr(fs, "cat_file", flaky)
    with pytest.raises(RowError) as ei:
        read_bytes(uri, StorageOptions(max_attempts=5), sleep=lambda s: pytest.fail("slept"))
    assert flaky.calls == 1 and ei.value.kind == kind


def test_s3_read_retries_injected_throttling(s3_bucket, monkeypatch):
    bucket, opts = s3_bucket
    uri = f"s3://{bucket}/t.bin"
    write_bytes(uri, b"real", opts)
    fs, _ = filesystem(uri, opts)
    real = fs.cat_file
    calls = []

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) <= 2:
            raise OSError(errno.EBUSY, "SlowDown") from client_error("SlowDown", 503)
        return real(path, *a, **k)

    monkeypatch.setattr(fs, "cat_file", flaky)
    assert read_bytes(uri, opts, sleep=lambda s: None) == b"real"
    assert len(calls) == 3


def test_write_retries_transient(memfs_root, monkeypatch):
    uri = join_uri(memfs_root, "w.bin")
    fs, _ = filesystem(uri)
    real = fs.pipe_file
    calls = []

    def flaky(path, data, **k):
        calls.append(path)
        if len(calls) == 1:
            raise TimeoutError("write timed out")
        return real(path, data, **k)

    monkeypatch.setattr(fs, "pipe_file", flaky)
    write_bytes(uri, b"abc", sleep=lambda s: None)
    assert len(calls) == 2 and read_bytes(uri) == b"abc"


def test_call_with_retries_counts_and_on_retry():
    seen = []
    state = {"n": 0}

    def fn():
        state["n"] += 1
        if state["n"] < 3:
            raise client_error("503", 503)
        return "done"

    out = call_with_retries(fn, RetryPolicy(5, 0.01, 0.02), sleep=lambda s: None,
                            on_retry=lambda a, e, d: seen.append(a))
    assert out == "done" and seen == [1, 2]


def test_s3_client_retry_config_reaches_botocore():
    """Every S3 request is retried inside botocore too (standard mode, 10 attempts by default), which covers
    the requests made outside read_bytes/write_bytes (listings, Parquet reads, the weights download)."""
    kw = StorageOptions(endpoint_url="http://127.0.0.1:1").fsspec_kwargs("s3")
    assert kw["config_kwargs"] == {"retries": {"mode": "standard", "total_max_attempts": 10}}
    # botocore's own variables still count (the explicit config would otherwise hide them)
    o = StorageOptions.from_env({"AWS_MAX_ATTEMPTS": "4", "AWS_RETRY_MODE": "Adaptive"})
    assert (o.client_max_attempts, o.client_retry_mode) == (4, "adaptive")
    # extra config_kwargs are merged over the retry policy, key by key
    kw = StorageOptions(extra={"config_kwargs": {"read_timeout": 3}}).fsspec_kwargs("s3")
    assert kw["config_kwargs"] == {"retries": {"mode": "standard", "total_max_attempts": 10}, "read_timeout": 3}
    kw = StorageOptions(extra={"config_kwargs": {"retries": {"mode": "legacy"}}}).fsspec_kwargs("s3")
    assert kw["config_kwargs"]["retries"] == {"mode": "legacy"}
    assert "config_kwargs" not in StorageOptions().fsspec_kwargs("file")
    for bad in ({"client_max_attempts": 0}, {"client_retry_mode": "forever"}):
        with pytest.raises(SettingsError):
            StorageOptions(**bad)
    # the client s3fs builds really carries it
    fs, _ = filesystem("s3://bucket/key", StorageOptions(endpoint_url="http://127.0.0.1:1", region="us-east-1",
                                                          client_max_attempts=7))
    retries = fs.s3.meta.config.retries
    assert retries["mode"] == "standard" and retries["total_max_attempts"] == 7
