"""Faults on loopback: S3 behind a fault-injecting proxy (tests/faultproxy.py) in front of the moto server.

- the proxy itself: every fault kind really happens, as the client sees it on the wire, and a fault stops the
  request before it reaches the server; bodies round-trip byte for byte and SigV4 signatures still verify;
  deny rules are 403 AccessDenied;
- our storage layer through it: transient faults are retried, access denied is not, a response slower than the
  client's read timeout or cut off mid-body is retried, a write whose answer was lost is still written exactly
  once, and botocore's own retries (set by StorageOptions) carry the requests no other layer retries;
- the ledger: it sees shards other processes wrote, and never quarantines a good shard on a storage error;
- the manifest unreadable before any work (a store answering 503 to every try, or refusing with 403): one line,
  exit code 4 (rerun later) or 2 (fix the access), nothing written;
- the whole job with a fifth of its S3 requests failing (every kind): exit 0, every id exactly once, the same
  statuses as without faults, every output written.

Setup and verification talk to moto directly (no faults); only the code under test goes through the proxy.
For stress runs, FAULT_SEED and FAULT_RATE (default 0.2, the whole-job test) can be set in the environment.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import io
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from PIL import Image

from faultproxy import RANDOM_KINDS, AnyMethodHandler, FaultProxy
from helpers_io import write_tiny_checkpoint
from helpers_job import BAD, FAST, run_cli
from helpers_ledger import index_ids, index_rows
from rayinpaint.io.errors import RowError
from rayinpaint.io.storage import StorageOptions, read_bytes, write_bytes
from rayinpaint.ledger.files import read_results

pytestmark = pytest.mark.timeout(600)

ALL_KINDS = {k: 1 for k in RANDOM_KINDS}
# How each kind is named in the reliability table.
KIND_NAMES = {
    "internal_error": "S3 500 InternalError",
    "service_unavailable": "S3 503 ServiceUnavailable",
    "slow_down": "S3 503 SlowDown",
    "reset": "S3 connection reset before any response",
    "slow": "S3 slow response",
    "reset_after": "S3 request applied but its response lost (reset after forwarding)",
    "reset_mid_body": "S3 response cut off mid-body (reset after half the body)",
}


@pytest.fixture
def proxy(s3_server):
    """A FaultProxy in front of the session's moto server, no faults until a test configures some."""
    with FaultProxy(s3_server, seed=int(os.environ.get("FAULT_SEED", "20261125"))) as p:
        yield p


def via(opts: StorageOptions, proxy: FaultProxy, **changes) -> StorageOptions:
    """The same storage options, pointed at the proxy."""
    return dataclasses.replace(opts, endpoint_url=proxy.url, **changes)


def boto(endpoint: str, **config):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(**config))


def xml_code(body: bytes) -> str | None:
    return ET.fromstring(body).findtext("Code") if body else None


CREDS = ("testing", "testing", "testing")  # the s3_server fixture's dummy credentials


def sign(method: str, url: str, body: bytes = b"", headers=None, trailer: bool = False) -> dict:
    """SigV4 headers for a raw request, made by botocore's S3 signer (moto refuses anonymous GETs of private
    objects). ``trailer``: sign as botocore signs an aws-chunked upload with a trailing checksum."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if trailer:
        req.context["checksum"] = {"request_algorithm": {"in": "trailer", "algorithm": "crc32",
                                                         "name": "x-amz-checksum-crc32"}}
    S3SigV4Auth(Credentials(*CREDS), "s3", "us-east-1").add_auth(req)
    return dict(req.headers.items())


def sigv4_still_valid(method: str, path: str, headers: list[tuple[str, str]]) -> bool:
    """Recompute the SigV4 signature of a request as the server received it (method, path with query, headers)
    and compare it with the one in its Authorization header: what a verifying S3 endpoint would do."""
    import re

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    h = {k.lower(): v for k, v in headers}
    auth = h["authorization"]
    signed = re.search(r"SignedHeaders=([^,\s]+)", auth).group(1).split(";")
    signature = re.search(r"Signature=([0-9a-f]+)", auth).group(1)
    req = AWSRequest(method=method, url=f"http://{h['host']}{path}", headers={k: h[k] for k in signed})
    req.context["timestamp"] = h["x-amz-date"]
    signer = S3SigV4Auth(Credentials(*CREDS), "s3", "us-east-1")
    return signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req) == signature


def raw_request(url: str, method: str, path: str, body: bytes | None = None, headers=None, timeout=10.0):
    """One signed request on a fresh connection, no retries: ("reset", None, None) or (status, S3 error code,
    body)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=sign(method, url + path, body or b"", headers))
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (xml_code(data) if resp.status >= 400 else None), data
    except ConnectionResetError:
        return "reset", None, None
    finally:
        conn.close()


@pytest.fixture
def echo_server():
    """A stdlib HTTP server that records every request it gets (method, path, header pairs, body) and answers
    200 with an empty body: an upstream that shows exactly what the proxy forwarded."""
    import http.server
    import threading

    seen = []

    class Echo(AnyMethodHandler):
        protocol_version = "HTTP/1.1"

        def handle_any(self):
            n = int(self.headers.get("Content-Length") or 0)
            seen.append({"method": self.command, "path": self.path, "headers": list(self.headers.items()),
                         "body": self.rfile.read(n)})
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- the proxy itself

def test_every_fault_kind_happens_as_the_client_sees_it_and_before_forwarding(proxy, s3_bucket):
    """140 signed PUTs, one per key, at a 60% fault rate over all seven kinds. For each request the proxy's
    counters say which fault it chose; the client must have seen exactly that on the wire, and afterwards only
    the requests that were forwarded (no fault, slow, reset after forwarding) exist on the server."""
    bucket, opts = s3_bucket
    delay = 0.15
    proxy.configure(rate=0.6, mix=ALL_KINDS, slow_delay=delay)
    expected_client_view = {
        None: (200, None), "slow": (200, None), "internal_error": (500, "InternalError"),
        "service_unavailable": (503, "ServiceUnavailable"), "slow_down": (503, "SlowDown"),
        "reset": ("reset", None), "reset_after": ("reset", None),
        "reset_mid_body": ("reset", None),  # a PUT's answer has no body: the whole answer is lost
    }
    chosen = []
    n = 140
    for i in range(n):
        before = proxy.snapshot()[1]
        t0 = time.perf_counter()
        status, code, _ = raw_request(proxy.url, "PUT", f"/{bucket}/mix/{i:03d}", body=f"object {i}".encode())
        elapsed = time.perf_counter() - t0
        after = proxy.snapshot()[1]
        changed = [k for k in after if after[k] != before.get(k, 0)]
        assert len(changed) <= 1
        kind = changed[0] if changed else None
        assert (status, code) == expected_client_view[kind], (i, kind)
        if kind == "slow":
            assert elapsed >= delay
        chosen.append(kind)

    counts = collections.Counter(k for k in chosen if k is not None)
    assert set(counts) == set(RANDOM_KINDS) and all(counts[k] > 0 for k in RANDOM_KINDS), counts
    assert counts == collections.Counter(proxy.counts) and proxy.requests == n
    assert 0.45 < sum(counts.values()) / n < 0.75  # the configured 60%, within a generous binomial margin
    direct = boto(opts.endpoint_url)
    stored = {o["Key"] for o in direct.list_objects_v2(Bucket=bucket, Prefix="mix/").get("Contents", [])}
    forwarded = {f"mix/{i:03d}" for i, k in enumerate(chosen) if k in (None, "slow", "reset_after", "reset_mid_body")}
    assert stored == forwarded  # error and reset faults stopped the write before the server
    for key in sorted(forwarded)[:10]:
        assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == f"object {int(key[-3:])}".encode()


def test_response_cut_off_mid_body(proxy, s3_bucket, reliability):
    """reset_mid_body relays the status, the headers and half of a GET's body, then resets: a raw client sees
    a short body and a reset, never a complete-looking object; read_bytes retries and returns intact bytes."""
    bucket, opts = s3_bucket
    data = np.random.default_rng(3).bytes(2 * 2**20 + 11)
    write_bytes(f"s3://{bucket}/cut.bin", data, opts)
    proxy.force("reset_mid_body", times=1, method="GET", key_regex=r"/cut\.bin$")
    u = urlsplit(proxy.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", f"/{bucket}/cut.bin", headers=sign("GET", f"{proxy.url}/{bucket}/cut.bin"))
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(data)
    got = bytearray()
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        while True:
            block = resp.read(65536)
            if not block:
                raise http.client.IncompleteRead(bytes(got), len(data) - len(got))
            got += block
    conn.close()
    assert 0 < len(got) < len(data) and bytes(got) == data[:len(got)]

    proxy.force("reset_mid_body", times=1, method="GET", key_regex=r"/cut\.bin$")
    assert read_bytes(f"s3://{bucket}/cut.bin", via(opts, proxy)) == data
    assert proxy.counts["reset_mid_body"] == 2
    reliability.record("fault", "S3 response cut off mid-body (connection reset)", 1,
                       "the read was retried and returned the whole object, byte-identical")


def test_bodies_round_trip_byte_identical(proxy, s3_bucket):
    """GET/PUT/HEAD/ranged GET, multi-MB objects, an s3fs multipart upload and an aws-chunked upload framed as
    botocore frames it: what the server stores and what comes back through the proxy are byte-identical."""
    import s3fs
    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

    bucket, opts = s3_bucket
    rng = np.random.default_rng(7)
    via_proxy, direct = boto(proxy.url), boto(opts.endpoint_url)
    for size in (0, 1, 65_537, 3 * 2**20 + 7, 16 * 2**20 + 5):  # > 1 MB puts carry Expect: 100-continue
        data = rng.bytes(size)
        key = f"rt/{size}"
        via_proxy.put_object(Bucket=bucket, Key=key, Body=data)
        assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == data  # stored intact
        assert via_proxy.get_object(Bucket=bucket, Key=key)["Body"].read() == data  # and relayed intact
        assert via_proxy.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
    part = via_proxy.get_object(Bucket=bucket, Key=f"rt/{16 * 2**20 + 5}", Range="bytes=1000-2999")["Body"].read()
    assert part == direct.get_object(Bucket=bucket, Key=f"rt/{16 * 2**20 + 5}")["Body"].read()[1000:3000]

    # s3fs (aiobotocore over aiohttp, as the job uses it): a 12 MB multipart upload in 5 MB parts, read back.
    fs = s3fs.S3FileSystem(**via(opts, proxy).fsspec_kwargs("s3"))
    big = rng.bytes(12 * 2**20 + 3)
    with fs.open(f"{bucket}/rt/multipart", "wb", block_size=5 * 2**20) as f:
        f.write(big)
    assert direct.get_object(Bucket=bucket, Key="rt/multipart")["Body"].read() == big
    assert fs.cat_file(f"{bucket}/rt/multipart") == big

    # aws-chunked with an unsigned trailer checksum, sent with Transfer-Encoding: chunked (what botocore sends
    # for streaming uploads over TLS); the proxy de-chunks the HTTP framing and passes the payload on.
    data = rng.bytes(200_000)
    payload = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32",
                                chunk_size=64 * 1024).read()
    u = urlsplit(proxy.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    headers = sign("PUT", f"{proxy.url}/{bucket}/rt/aws-chunked", trailer=True,
                   headers={"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                            "X-Amz-Decoded-Content-Length": str(len(data)), "Transfer-Encoding": "chunked"})
    assert headers["X-Amz-Content-SHA256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    conn.request("PUT", f"/{bucket}/rt/aws-chunked", body=iter([payload[i:i + 10_000]
                                                               for i in range(0, len(payload), 10_000)]),
                 headers=headers, encode_chunked=True)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    # Keep-alive: the same client connection carries further requests.
    sock = conn.sock
    for _ in range(3):
        conn.request("GET", f"/{bucket}/rt/aws-chunked", headers=sign("GET", f"{proxy.url}/{bucket}/rt/aws-chunked"))
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == data
    assert conn.sock is sock
    conn.close()
    assert direct.get_object(Bucket=bucket, Key="rt/aws-chunked")["Body"].read() == data
    assert proxy.counts == {} and proxy.requests > 20  # no faults at rate 0, every request went through it


def test_forwarded_requests_keep_their_signature(echo_server):
    """What the server receives through the proxy: the same method, path and query, the same Host and other
    end-to-end headers, hop-by-hop headers dropped, a Content-Length that matches the body,
    the body itself unchanged (a chunked one de-chunked). So botocore's SigV4 signatures still verify; the same
    check fails for a request whose Host was rewritten, which is what a naive proxy would do."""
    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

    url, seen = echo_server
    with FaultProxy(url) as p:
        client = boto(p.url, retries={"total_max_attempts": 1})
        client.put_object(Bucket="bkt", Key="dir/a b+c%.bin", Body=b"x" * 1000, Metadata={"k": "v"})
        client.get_object(Bucket="bkt", Key="dir/a b+c%.bin", VersionId="v1", Range="bytes=0-9")
        data = b"y" * 70_000
        payload = AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum,
                                    checksum_name="x-amz-checksum-crc32", chunk_size=16 * 1024).read()
        headers = sign("PUT", f"{p.url}/bkt/chunked", trailer=True,
                       headers={"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                                "X-Amz-Decoded-Content-Length": str(len(data)), "Transfer-Encoding": "chunked",
                                "Connection": "keep-alive"})
        u = urlsplit(p.url)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conn.request("PUT", "/bkt/chunked", body=iter([payload[:5000], payload[5000:]]), headers=headers,
                     encode_chunked=True)
        assert conn.getresponse().status == 200
        conn.close()
        proxy_host = f"{u.hostname}:{u.port}"

    put, get, chunked = seen
    assert put["method"] == "PUT" and put["path"] == "/bkt/dir/a%20b%2Bc%25.bin" and put["body"] == b"x" * 1000
    assert get["method"] == "GET" and get["path"] == "/bkt/dir/a%20b%2Bc%25.bin?versionId=v1"
    assert chunked["body"] == payload  # the aws-chunked payload, byte for byte, without the HTTP chunk framing
    for req in (put, get, chunked):
        names = [k.lower() for k, _ in req["headers"]]
        h = {k.lower(): v for k, v in req["headers"]}
        assert h["host"] == proxy_host
        assert not {"transfer-encoding", "connection", "expect", "keep-alive"} & set(names)
        assert int(h.get("content-length", 0)) == len(req["body"])
        assert sigv4_still_valid(req["method"], req["path"], req["headers"]), req["headers"]
        rewritten = [(k, "127.0.0.1:1" if k.lower() == "host" else v) for k, v in req["headers"]]
        assert not sigv4_still_valid(req["method"], req["path"], rewritten)  # the check can fail
    sent = {k.lower(): v for k, v in headers.items() if k.lower() not in ("transfer-encoding", "connection")}
    assert {k: v for k, v in sent.items()} == {k.lower(): v for k, v in chunked["headers"]
                                               if k.lower() in sent}  # every other header unchanged


def test_deny_rules_are_access_denied_and_never_retried(proxy, s3_bucket, reliability):
    """deny() answers 403 AccessDenied with S3's XML (HEAD: no body); read_bytes / write_bytes turn it into
    RowError 'access_denied' after a single request; other keys and methods are untouched."""
    bucket, opts = s3_bucket
    write_bytes(f"s3://{bucket}/secret/a.png", b"secret", opts)
    write_bytes(f"s3://{bucket}/public/a.png", b"public", opts)
    proxy.deny(None, rf"^{bucket}/secret/")
    proxy.deny("PUT|POST", rf"^{bucket}/readonly/")
    popts = via(opts, proxy)
    no_sleep = {"sleep": lambda s: pytest.fail("an access-denied request was retried")}

    status, code, body = raw_request(proxy.url, "GET", f"/{bucket}/secret/a.png")
    assert (status, code) == (403, "AccessDenied") and b"<Resource>" in body
    status, _, body = raw_request(proxy.url, "HEAD", f"/{bucket}/secret/a.png")
    assert status == 403 and body == b""

    before = proxy.counts["access_denied"]
    with pytest.raises(RowError) as ei:
        read_bytes(f"s3://{bucket}/secret/a.png", popts, **no_sleep)
    assert ei.value.kind == "access_denied" and "access denied" in ei.value.message
    assert proxy.counts["access_denied"] - before == 1  # one request: neither botocore, s3fs nor we retried
    assert read_bytes(f"s3://{bucket}/public/a.png", popts, **no_sleep) == b"public"

    before = proxy.counts["access_denied"]
    with pytest.raises(RowError) as ei:
        write_bytes(f"s3://{bucket}/readonly/out.png", b"new", popts, **no_sleep)
    assert ei.value.kind == "access_denied"
    assert proxy.counts["access_denied"] - before == 1
    fs_direct = boto(opts.endpoint_url)
    assert "Contents" not in fs_direct.list_objects_v2(Bucket=bucket, Prefix="readonly/")
    write_bytes(f"s3://{bucket}/public/b.png", b"ok", popts, **no_sleep)  # other prefixes stay writable
    assert fs_direct.get_object(Bucket=bucket, Key="public/b.png")["Body"].read() == b"ok"

    # A rule with a trigger holds only from the request after the trigger's first forwarded match.
    proxy.deny("PUT", rf"^{bucket}/later/", after=("PUT", rf"^{bucket}/later/trigger$"))
    write_bytes(f"s3://{bucket}/later/before.png", b"1", popts, **no_sleep)
    write_bytes(f"s3://{bucket}/later/trigger", b"2", popts, **no_sleep)
    with pytest.raises(RowError) as ei:
        write_bytes(f"s3://{bucket}/later/after.png", b"3", popts, **no_sleep)
    assert ei.value.kind == "access_denied"
    listed = fs_direct.list_objects_v2(Bucket=bucket, Prefix="later/")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["later/before.png", "later/trigger"]
    reliability.record("fault", "S3 403 AccessDenied on read and on write (deny rule)", 2,
                       "row error access_denied after one request, never retried; other keys unaffected")


# ---------------------------------------------------------------- our storage layer through it

def test_reads_and_writes_survive_a_third_of_requests_failing(proxy, s3_bucket, reliability):
    """read_bytes / write_bytes with 30% of requests failing (every kind): every write lands intact, every
    read returns the right bytes."""
    bucket, opts = s3_bucket
    popts = via(opts, proxy)
    proxy.configure(rate=0.3, mix=ALL_KINDS, slow_delay=0.1)
    blobs = {f"s3://{bucket}/st/{i}.bin": hashlib.sha256(str(i).encode()).digest() * (1 + 300 * i)
             for i in range(12)}
    for uri, data in blobs.items():
        write_bytes(uri, data, popts)
    for uri, data in blobs.items():
        assert read_bytes(uri, popts) == data
    proxy.configure(rate=0.0)
    for uri, data in blobs.items():
        assert read_bytes(uri, opts) == data  # checked directly against the server
    n, counts = proxy.snapshot()
    assert sum(counts.values()) >= 5, counts
    reliability.record("fault", "S3 endpoint failing 30% of requests (every kind), storage layer", n,
                       f"{len(blobs)} writes and reads all succeeded with intact bytes after "
                       f"{sum(counts.values())} injected faults")


def test_lost_response_to_an_applied_write_is_exactly_once(proxy, s3_bucket, reliability):
    """The server applies a results-shard PUT but the answer is lost (reset after forwarding): the client
    retries the same PUT to the same key, and the ledger holds each id exactly once in one shard."""
    from rayinpaint.io.results import results_table
    from rayinpaint.ledger.files import Ledger

    bucket, opts = s3_bucket
    proxy.force("reset_after", times=1, method="PUT", key_regex=r"/out/results/part-")
    ledger = Ledger(f"s3://{bucket}/out", via(opts, proxy))
    rows = [{"id": f"r{i}", "status": "ok"} for i in range(3)]
    uri = ledger.write_rows(results_table(rows))
    key = uri.split(f"s3://{bucket}/", 1)[1]
    puts = [k for m, k, _ in proxy.history if m == "PUT" and k == f"{bucket}/{key}"]
    assert proxy.counts["reset_after"] == 1 and len(puts) == 2  # applied, answer lost, sent again
    idx, _ = index_rows(Ledger(f"s3://{bucket}/out", opts))  # read back directly
    assert sorted(idx.column("id").to_pylist()) == ["r0", "r1", "r2"]
    assert len(set(idx.column("file").to_pylist())) == 1
    reliability.record("fault", "S3 write applied but its response lost (reset after forwarding)", 1,
                       "the PUT was retried to the same key; the ledger holds each id exactly once")


def test_response_slower_than_the_read_timeout_is_retried(proxy, s3_bucket, reliability):
    """A GET held longer than the client's read timeout fails with a timeout and is retried; the read returns
    the right bytes."""
    bucket, opts = s3_bucket
    write_bytes(f"s3://{bucket}/slow.bin", b"patience", opts)
    popts = via(opts, proxy, extra={"config_kwargs": {"read_timeout": 0.5}})
    # The slow answer comes long after the timeout (0.5 s) plus the retry's backoff (botocore's jitter is up to
    # 1 s), so "retried, not waited for" is told apart by time even on a loaded machine (2.05 s was seen).
    proxy.configure(slow_delay=6.0)
    proxy.force("slow", times=1, method="GET", key_regex=r"/slow\.bin$")
    t0 = time.perf_counter()
    assert read_bytes(f"s3://{bucket}/slow.bin", popts) == b"patience"
    elapsed = time.perf_counter() - t0
    gets = [k for m, k, _ in proxy.history if m == "GET" and k.endswith("/slow.bin")]
    assert proxy.counts["slow"] == 1 and len(gets) == 2
    assert 0.5 <= elapsed < 5.0  # it timed out and retried rather than waiting for the slow answer
    reliability.record("fault", "S3 response slower than the client read timeout", 1,
                       "the read timed out after 0.5 s, was retried and returned the right bytes")


def test_client_retries_cover_requests_outside_our_retry_layer(proxy, s3_bucket, monkeypatch, reliability):
    """The ledger's listing goes through s3fs's paginator: neither read_bytes' retries nor s3fs's retry loop
    cover it, only botocore's. With StorageOptions' client policy (standard mode, 10 attempts) it rides out 7
    consecutive 503s; with 3 attempts the same faults fail it (so the setting is what carries it).
    botocore's backoff waits are set to zero here; the attempts are what is counted."""
    from botocore.retries.standard import ExponentialBackoff
    from rayinpaint.io.results import results_table
    from rayinpaint.io.retry import classify
    from rayinpaint.ledger.files import Ledger

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    bucket, opts = s3_bucket
    Ledger(f"s3://{bucket}/out", opts).write_rows(results_table([{"id": "a", "status": "ok"}]))

    def listings():
        return sum(1 for m, k, _ in proxy.history if m == "GET" and k == bucket)  # ListObjectsV2 is GET /bucket

    proxy.force("service_unavailable", times=7, method="GET", key_regex=rf"^{bucket}$")
    assert index_ids(Ledger(f"s3://{bucket}/out", via(opts, proxy))) == ["a"]
    assert proxy.counts["service_unavailable"] == 7 and listings() == 8

    proxy.reset_counts()
    proxy.force("service_unavailable", times=7, method="GET", key_regex=rf"^{bucket}$")
    with pytest.raises(OSError) as ei:
        index_ids(Ledger(f"s3://{bucket}/out", via(opts, proxy, client_max_attempts=3)))
    assert classify(ei.value) == "transient" and listings() == 3
    proxy.clear_rules()
    reliability.record("fault", "S3 listing failing 7 times in a row (503)", 7,
                       "botocore's retries (standard mode, 10 attempts, set by StorageOptions) carried it through")


def test_ledger_does_not_quarantine_a_shard_on_a_transient_read_error(proxy, s3_bucket, monkeypatch):
    """A results shard that cannot be *read right now* (the store keeps answering 500) is not a damaged
    shard: the ledger must fail or retry, never move a good shard to _quarantine (its rows would be redone)."""
    from botocore.retries.standard import ExponentialBackoff
    from rayinpaint.io.results import results_table
    from rayinpaint.ledger.files import Ledger

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    bucket, opts = s3_bucket
    shard = Ledger(f"s3://{bucket}/out", opts).write_rows(results_table([{"id": "a", "status": "ok"}]))
    proxy.force("internal_error", times=200, method="GET|HEAD", key_regex=r"/out/results/part-")
    from rayinpaint.io.errors import RowError

    with pytest.raises(RowError) as ei:  # a clear storage error, after the retries
        index_ids(Ledger(f"s3://{bucket}/out", via(opts, proxy)))
    assert ei.value.kind == "io_error" and "results file" in ei.value.message
    proxy.clear_rules()
    import s3fs

    fs = s3fs.S3FileSystem(**opts.fsspec_kwargs("s3"))
    assert fs.exists(shard.split("://", 1)[1]), "a good shard was moved to _quarantine on a transient error"


def test_ledger_sees_shards_written_by_other_processes(s3_bucket):
    """The ledger is written by Ray workers (other processes) and read by the driver, so a listing must
    never come from a cache: after another writer adds a shard, the same Ledger object sees it."""
    from rayinpaint.io.results import results_table
    from rayinpaint.ledger.files import Ledger

    bucket, opts = s3_bucket
    ledger = Ledger(f"s3://{bucket}/out", opts)
    ledger.write_rows(results_table([{"id": "a", "status": "ok"}]))
    assert index_ids(ledger) == ["a"]
    other = boto(opts.endpoint_url)  # another process's writer, as a Ray worker is
    buf = io.BytesIO()
    pq.write_table(results_table([{"id": "b", "status": "ok"}]), buf)
    other.put_object(Bucket=bucket, Key="out/results/part-29990101T000000-000000000-ffffffff.parquet",
                     Body=buf.getvalue())
    assert sorted(index_ids(ledger)) == ["a", "b"]


# ---------------------------------------------------------------- the whole job

JOB_FAULT_RATE = float(os.environ.get("FAULT_RATE", "0.2"))


@pytest.mark.slow  # a local Ray cluster
def test_job_completes_exactly_once_with_a_fifth_of_s3_requests_failing(ray_local, s3_bucket, proxy, tmp_path,
                                                                         reliability):
    """Manifest, images, masks, weights and output on S3 behind the proxy, which fails 20% of the job's
    requests with every kind of fault, plus one targeted fault at each stage (manifest, weights, image reads,
    image writes, results shards, listings). The job exits 0; the ledger holds every manifest id exactly once with
    the statuses a fault-free run gives (the deliberately bad rows fail for their own reason, not io_error);
    every written row's image exists and decodes at the input's size; nothing was quarantined."""
    import s3fs
    from rayinpaint.jobs.config import JobConfig
    from rayinpaint.bench.demo import make_dataset
    from rayinpaint.jobs.inpaint import run_job

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts.fsspec_kwargs("s3"))  # straight to moto: setup and checks see no faults
    local = tmp_path / "input"
    make_dataset(str(local), rows=8)
    fs.put(str(local), f"{bucket}/input", recursive=True)
    sha = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    fs.put(str(tmp_path / "tiny.safetensors"), f"{bucket}/weights/tiny.safetensors")
    cfg = JobConfig(manifest=(f"s3://{bucket}/input/manifest.parquet",), output=f"s3://{bucket}/run",
                    endpoint_url=proxy.url, weights=f"s3://{bucket}/weights/tiny.safetensors", model_config="tiny",
                    weights_cache=str(tmp_path / "cache"), **FAST)

    proxy.reset_counts()
    proxy.configure(rate=JOB_FAULT_RATE, mix=ALL_KINDS, slow_delay=0.2)
    # On top of the random faults, the first request of each stage of the job gets a fault for sure.
    targeted = [
        ("internal_error", "GET", rf"^{bucket}/input/manifest\.parquet$"),  # driver's scan, Ray Data's read
        ("reset_mid_body", "GET", rf"^{bucket}/weights/tiny\.safetensors$"),  # header check, actors' download
        ("service_unavailable", "GET", rf"^{bucket}/input/(images|masks)/"),  # prepare: image and mask reads
        ("slow_down", "PUT", rf"^{bucket}/run/images/"),  # finish: output images
        ("reset_after", "PUT", rf"^{bucket}/run/results/part-"),  # finish: results shards
        ("reset", "GET", rf"^{bucket}$"),  # listings (the ledger's)
    ]
    for kind, method, key in targeted:
        proxy.force(kind, 1, method, key)
    t0 = time.perf_counter()
    try:
        rc = run_job(cfg)
    finally:
        proxy.configure(rate=0.0)
    elapsed = time.perf_counter() - t0
    requests, counts = proxy.snapshot()
    assert rc == 0
    assert proxy.pending() == []  # every targeted fault was injected

    manifest = pq.read_table(str(local / "manifest.parquet")).to_pylist()
    res = read_results(f"s3://{bucket}/run", opts).to_pylist()
    ids = [r["id"] for r in res]
    assert len(ids) == len(set(ids))  # no duplicates
    assert sorted(ids) == sorted(r["id"] for r in manifest)  # every id
    rows = {r["id"]: r for r in res}
    for r in manifest:
        got = rows[r["id"]]
        if r["id"] in BAD:
            assert (got["status"], got["error_kind"]) == ("error", BAD[r["id"]]), got
        elif r["id"] == "empty-mask":
            assert got["status"] == "unchanged", got
        else:
            assert got["status"] == "ok", got
            assert got["model_sha256"] == sha
    written = [r for r in manifest if rows[r["id"]]["status"] in ("ok", "unchanged")]
    for r in written:
        out = Image.open(io.BytesIO(fs.cat(rows[r["id"]]["output_uri"])))
        assert out.size == Image.open(local / r["image"]).size
    assert len(fs.ls(f"{bucket}/run/images", detail=False)) == len(written)  # no stray outputs
    assert not fs.exists(f"{bucket}/run/_quarantine")  # no shard was mistaken for a damaged one
    summary = json.loads(fs.cat(f"{bucket}/run/_SUMMARY.json"))
    assert summary["success"] and summary["accounted"] == len(manifest) and fs.exists(f"{bucket}/run/_SUCCESS")

    missing = [k for k in RANDOM_KINDS if counts.get(k, 0) == 0]
    assert not missing, f"kinds never injected during the job: {missing} ({counts}, {requests} requests)"
    outcome = (f"job exit 0; all {len(manifest)} ids exactly once with the fault-free statuses; "
               f"every output written")
    for kind in RANDOM_KINDS:
        name = KIND_NAMES[kind] + (" (0.2 s)" if kind == "slow" else "")
        reliability.record("fault", f"{name}, during a whole job", counts[kind], outcome)
    reliability.record("fault", f"S3 endpoint failing {JOB_FAULT_RATE:.0%} of requests (every kind, plus one "
                                f"targeted fault per job stage), whole job",
                       requests, f"{outcome}; {sum(counts.values())} faults in {requests} requests, "
                                 f"{elapsed:.0f} s")


@pytest.mark.slow  # a local Ray cluster
def test_access_denied_object_and_output_denied_mid_run(ray_local, s3_bucket, proxy, tmp_path, reliability):
    """403 from the store, as a bucket policy gives it. An image that cannot be read is that row's
    `access_denied` error; an output prefix whose writes start being refused part way through stops the job
    (OutputUnwritable, exit 3 on the command line) with nothing recorded that was not written, and the rerun
    once writes are allowed again completes every id exactly once."""
    import s3fs
    from rayinpaint.jobs.config import JobConfig
    from rayinpaint.bench.demo import make_dataset
    from rayinpaint.jobs.inpaint import run_job
    from rayinpaint.jobs.preflight import OutputUnwritable

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts.fsspec_kwargs("s3"))
    local = tmp_path / "input"
    make_dataset(str(local), rows=12)
    fs.put(str(local), f"{bucket}/input", recursive=True)
    cfg = JobConfig(manifest=(f"s3://{bucket}/input/manifest.parquet",), output=f"s3://{bucket}/run",
                    endpoint_url=proxy.url, weights="random:tiny", **{**FAST, "batch_size": 2})
    manifest = pq.read_table(str(local / "manifest.parquet")).to_pylist()
    denied = next(r for r in manifest if r["id"] == "img-0001")
    proxy.deny(None, rf"^{bucket}/input/{re.escape(denied['image'])}$")

    # Output writes start being refused right after the first results shard is written (a policy change
    # mid-run). The proxy switches the rule on at that request, so the point does not depend on timing.
    proxy.deny("PUT|POST", rf"^{bucket}/run/", after=("PUT", rf"^{bucket}/run/results/part-[^/]*\.parquet$"))

    with pytest.raises(OutputUnwritable, match="access denied"):
        run_job(cfg)
    assert proxy.counts["access_denied"] >= 2, proxy.faults  # the image row, and at least one refused write
    recorded = read_results(f"s3://{bucket}/run", opts).to_pylist()
    assert 0 < len(recorded) < len(manifest)
    for r in recorded:  # nothing marked done that was not written
        if r["status"] in ("ok", "unchanged"):
            assert fs.exists(r["output_uri"]), r["id"]

    proxy.clear_rules()
    proxy.deny(None, rf"^{bucket}/input/{re.escape(denied['image'])}$")  # the object stays unreadable
    assert run_job(cfg) == 0
    res = read_results(f"s3://{bucket}/run", opts).to_pylist()
    ids = [r["id"] for r in res]
    assert len(ids) == len(set(ids)) == len(manifest)
    got = {r["id"]: r for r in res}
    assert (got["img-0001"]["status"], got["img-0001"]["error_kind"]) == ("error", "access_denied")
    assert "access denied" in got["img-0001"]["error"]
    reliability.record("bad input", "image object denied by the store (S3 403 AccessDenied)", 1,
                       "error (access_denied), the other rows unaffected")
    reliability.record("fault", "S3 output prefix starts refusing writes (403) mid-run", 1,
                       f"job stopped with one line (exit 3); {len(recorded)} rows recorded before, all written; "
                       "rerun once writable: every id once")


@pytest.mark.slow  # the command line in a subprocess
@pytest.mark.parametrize("case", ["file_503", "folder_listing_503", "file_403"])
def test_manifest_unreadable_is_one_line_and_nothing_is_started(s3_bucket, proxy, tmp_path, case, reliability):
    """The store keeps failing the manifest's requests (every try, past the client's retries) or refuses them:
    the command line prints one line naming the manifest and what failed, no traceback and no credentials,
    exits 4 for a transient failure (rerun later) or 2 for access denied (fix the access), and writes nothing."""
    import s3fs
    from rayinpaint.bench.demo import make_dataset

    bucket, opts = s3_bucket
    fs = s3fs.S3FileSystem(**opts.fsspec_kwargs("s3"))
    local = tmp_path / "input"
    make_dataset(str(local), rows=4)
    fs.put(str(local), f"{bucket}/input", recursive=True)
    if case == "folder_listing_503":
        manifest = f"s3://{bucket}/input/"
        proxy.force("service_unavailable", 10_000, "GET", rf"^{bucket}$")  # every ListObjectsV2
    elif case == "file_503":
        manifest = f"s3://{bucket}/input/manifest.parquet"
        proxy.force("service_unavailable", 10_000, "GET|HEAD", rf"^{bucket}/input/manifest\.parquet$")
    else:
        manifest = f"s3://{bucket}/input/manifest.parquet"
        proxy.deny("GET|HEAD", rf"^{bucket}/input/manifest\.parquet$")
    t0 = time.perf_counter()
    r = run_cli("run", "--manifest", manifest, "--output", f"s3://{bucket}/run", "--endpoint-url", proxy.url,
                "--weights", "random:tiny", timeout=300, env={"AWS_MAX_ATTEMPTS": "3", "AWS_RETRY_MODE": "standard"})
    elapsed = time.perf_counter() - t0
    want_rc, want = (2, "access denied") if case == "file_403" else (4, "kept failing after the storage client's retries")
    assert r.returncode == want_rc, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("rayinpaint: error: manifest s3://"), r.stderr[-3000:]
    assert want in last and bucket in last, last
    print(last)
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in r.stderr + r.stdout
    fs.invalidate_cache()
    assert fs.ls(f"{bucket}/run", detail=False) == [] if fs.exists(f"{bucket}/run") else True  # nothing written
    if want_rc == 4:
        faults = proxy.counts["service_unavailable"]
        assert faults >= 3, faults  # the client really retried before giving up
    what = {"file_503": "manifest file answering 503 to every request",
            "folder_listing_503": "manifest folder whose listing answers 503 to every request",
            "file_403": "manifest file denied by the store (403)"}[case]
    reliability.record("fault", what, 1, f"one line naming the manifest, exit {want_rc}, nothing written "
                                         f"({elapsed:.0f} s)")
