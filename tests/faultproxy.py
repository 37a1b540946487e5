"""A small fault-injecting HTTP reverse proxy for S3 tests (stdlib only, loopback only).

``FaultProxy(upstream)`` listens on 127.0.0.1 (a free port) and forwards every request, whatever its method, to
``upstream`` (the moto server): headers unchanged and in order (``Host`` included, so a SigV4 signature made for
the proxy's address is the one the server sees), request bodies framed by ``Content-Length`` or by
``Transfer-Encoding: chunked`` (de-chunked and forwarded with a ``Content-Length``; the payload itself, e.g. an
``aws-chunked`` body with its own framing and trailer, is passed on byte for byte), ``Expect: 100-continue``
answered by the proxy, and client keep-alive connections. Responses are relayed with their status, headers and
body byte for byte (bodies with a length are streamed; a chunked body is re-sent with a ``Content-Length``).
Each request gets a fresh upstream connection, so a fault on one request never affects another.

Random faults hit a request with probability ``rate`` (a ``random.Random(seed)``); the kind is dealt from a
shuffled deck holding each kind of ``mix`` (``{kind: integer weight}``) ``weight`` times, refilled when empty, so
every kind turns up in proportion even over a few dozen faults (with weights 1, each kind at least once in any
``2 * len(mix) - 1`` consecutive faults). Faults are decided *before* the request is forwarded, so a failed write
is never half-applied:

- ``internal_error``      -> ``500 InternalError`` with an S3 XML error body
- ``service_unavailable`` -> ``503 ServiceUnavailable``
- ``slow_down``           -> ``503 SlowDown`` ("Please reduce your request rate.")
- ``reset``               -> the connection is closed with ``SO_LINGER`` 0 (a TCP RST) after the request was
  read, without any response
- ``slow``                -> the request is held ``slow_delay`` seconds, then forwarded normally
- ``reset_after``         -> the request *is* forwarded and applied upstream, then the connection is reset
  instead of relaying the response (a write that succeeded but whose answer was lost). Not in the default mix.
- ``reset_mid_body``      -> the request is forwarded, the status line, headers and half of the body are relayed,
  then the connection is reset (a response cut off mid-transfer; without a body it is ``reset_after``). Not in
  the default mix.

Rules that are not random: ``deny(method, key_regex)`` answers ``403 AccessDenied`` to every matching request
(checked first; with ``after=(method, key_regex)`` only from the first forwarded request matching that trigger on),
and ``force(kind, times, method, key_regex)`` gives the next ``times`` matching requests the
fault ``kind`` (checked next; for one fault at one exact place; ``pending()`` lists those not used yet).
``configure(methods=..., key_regex=...)`` limits the random faults the same way. The key a rule sees is the URL
path without its leading "/", percent-decoded: with path-style addressing (what botocore uses for an IP endpoint)
that is ``bucket/key``, and ``bucket`` alone for bucket operations such as ListObjectsV2; the query string is not
part of it (``re.search`` semantics). ``method`` is one method, several joined with "|" (``"PUT|POST"``), or
``None`` / ``"*"`` for any.

Counts (thread-safe): ``requests`` (every request received), ``counts`` (faults injected by kind, including
``access_denied`` for deny rules), and bounded logs of ``(method, key, kind)``: ``faults`` (faulted requests)
and ``history`` (every request, kind None when it was forwarded untouched).

    with FaultProxy(moto_url, rate=0.2, seed=1) as proxy:
        s3 = boto3.client("s3", endpoint_url=proxy.url)
        ...
        assert proxy.counts["slow_down"] > 0
"""

from __future__ import annotations

import collections
import http.client
import http.server
import random
import re
import socket
import struct
import sys
import threading
import time
import uuid
from urllib.parse import unquote, urlsplit

RANDOM_KINDS = ("internal_error", "service_unavailable", "slow_down", "reset", "slow", "reset_after",
                "reset_mid_body")
DEFAULT_MIX = {"internal_error": 1, "service_unavailable": 1, "slow_down": 1, "reset": 1, "slow": 1}

# kind -> (HTTP status, reason phrase, S3 error code, message)
ERRORS = {
    "internal_error": (500, "Internal Server Error", "InternalError",
                       "We encountered an internal error. Please try again."),
    "service_unavailable": (503, "Service Unavailable", "ServiceUnavailable",
                            "Service is unable to handle request."),
    "slow_down": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "access_denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
}

# Headers that describe one connection, not the message (RFC 9110 7.6.1); never forwarded. Content-Length is
# recomputed from the body actually read; Expect is answered by the proxy itself.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "expect",
                        "content-length"})

_COPY_BLOCK = 1 << 16


def error_xml(code: str, message: str, resource: str, request_id: str) -> bytes:
    """An S3 error document as the service sends it."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{_xml_escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>").encode()


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Rule:
    def __init__(self, method: str | None, key_regex: str, after: _Rule | None = None):
        self.methods = None if method in (None, "*") else {m.strip().upper() for m in method.split("|")}
        self.pattern = re.compile(key_regex)
        self.after = after  # a deny rule with a trigger holds from the request after the trigger's first match
        self.active = after is None

    def matches(self, method: str, key: str) -> bool:
        return (self.methods is None or method.upper() in self.methods) and self.pattern.search(key) is not None


class AnyMethodHandler(http.server.BaseHTTPRequestHandler):
    """A request handler whose every method (GET, PUT, DELETE, ... whatever the client sends) goes to
    `handle_any`, with no access log. BaseHTTPRequestHandler dispatches to do_<METHOD>."""

    def log_message(self, format, *args):
        pass

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    def handle_any(self):
        raise NotImplementedError


class _Handler(AnyMethodHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue answered by parse_request
    server_version = "FaultProxy"
    timeout = 120  # an idle client connection is dropped after this long

    def setup(self):
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, False)

    def handle_any(self):
        self.server.proxy._handle(self)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client that gave up (read timeout, reset) while the proxy was still answering is expected in fault
        # tests; anything else is printed as usual.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultProxy:
    """See the module docstring. ``upstream`` is ``http://host:port``; ``url`` is the proxy's own endpoint."""

    def __init__(self, upstream: str, *, rate: float = 0.0, mix: dict | None = None, seed: int = 0,
                 slow_delay: float = 0.3, methods: str | None = None, key_regex: str | None = None,
                 upstream_timeout: float = 60.0, max_log: int = 10_000):
        u = urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream
        self._up = (u.hostname, u.port or 80)
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules: list[_Rule] = []
        self._forced: list[list] = []  # [rule, kind, remaining]
        self._conns: set = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.requests = 0
        self.counts: collections.Counter = collections.Counter()
        self.faults: collections.deque = collections.deque(maxlen=max_log)
        self.history: collections.deque = collections.deque(maxlen=max_log)
        self.rate = 0.0
        self.mix = dict(DEFAULT_MIX)
        self._deck: list[str] = []
        self.slow_delay = slow_delay
        self._scope: _Rule | None = None
        self.configure(rate=rate, mix=mix, methods=methods, key_regex=key_regex)

    # ---- settings ------------------------------------------------------------------------------------
    def configure(self, *, rate: float | None = None, mix: dict | None = None, slow_delay: float | None = None,
                  methods: str | None = None, key_regex: str | None = None, seed: int | None = None) -> None:
        """Change the random faults while running. ``methods`` / ``key_regex`` limit which requests may get a
        random fault (None: all); they are replaced on every call."""
        with self._lock:
            if rate is not None:
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"rate must be in [0, 1], got {rate}")
                self.rate = rate
            if mix is not None:
                unknown = set(mix) - set(RANDOM_KINDS)
                if (unknown or not any(w > 0 for w in mix.values())
                        or not all(isinstance(w, int) and w >= 0 for w in mix.values())):
                    raise ValueError(f"mix needs integer weights >= 0 (some > 0) for kinds among {RANDOM_KINDS}, "
                                     f"got {mix}")
                self.mix = {k: w for k, w in mix.items() if w > 0}
                self._deck = []
            if slow_delay is not None:
                self.slow_delay = slow_delay
            if seed is not None:
                self._rng.seed(seed)
            self._scope = None if methods is None and key_regex is None else _Rule(methods, key_regex or "")

    def deny(self, method: str | None, key_regex: str, *, after: tuple[str | None, str] | None = None) -> None:
        """Answer 403 AccessDenied to every request with a matching method and key (see the module docstring).

        With ``after=(method, key_regex)`` the rule starts holding only once a request matching that trigger
        has been forwarded: the trigger itself goes through, every matching request decided after it is denied
        (a policy change at an exact point of a run, whatever the timing)."""
        with self._lock:
            self._rules.append(_Rule(method, key_regex, None if after is None else _Rule(*after)))

    def force(self, kind: str, times: int = 1, method: str | None = None, key_regex: str = "") -> None:
        """Give the next ``times`` requests matching ``method`` / ``key_regex`` the fault ``kind``."""
        if kind not in RANDOM_KINDS and kind not in ERRORS:
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._forced.append([_Rule(method, key_regex), kind, int(times)])

    def pending(self) -> list[tuple[str, str | None, str, int]]:
        """Forced faults not used up yet: (kind, methods, key regex, times left)."""
        with self._lock:
            return [(kind, None if rule.methods is None else "|".join(sorted(rule.methods)), rule.pattern.pattern,
                     left) for rule, kind, left in self._forced if left > 0]

    def clear_rules(self) -> None:
        """Drop every deny rule and every forced fault not used yet."""
        with self._lock:
            self._rules.clear()
            self._forced.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.counts.clear()
            self.faults.clear()
            self.history.clear()

    def snapshot(self) -> tuple[int, dict]:
        """(requests, {kind: count}) read together under the lock."""
        with self._lock:
            return self.requests, dict(self.counts)

    # ---- lifecycle -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # wake handler threads blocked on idle keep-alive connections
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- request handling ----------------------------------------------------------------------------
    def _track(self, conn, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _decide(self, method: str, key: str) -> str | None:
        with self._lock:
            self.requests += 1
            roll = self._rng.random()  # drawn for every request: the sequence depends on the request count only
            kind = None
            forced = next((f for f in self._forced if f[2] > 0 and f[0].matches(method, key)), None)
            if any(r.active and r.matches(method, key) for r in self._rules):
                kind = "access_denied"
            elif forced is not None:
                forced[2] -= 1
                kind = forced[1]
            elif roll < self.rate and (self._scope is None or self._scope.matches(method, key)):
                if not self._deck:
                    self._deck = [k for k, w in self.mix.items() for _ in range(w)]
                    self._rng.shuffle(self._deck)
                kind = self._deck.pop()
            if kind is None:
                for r in self._rules:
                    if not r.active and r.after.matches(method, key):
                        r.active = True
            self.history.append((method, key, kind))
            if kind is not None:
                self.counts[kind] += 1
                self.faults.append((method, key, kind))
            return kind

    @staticmethod
    def _read_body(h: _Handler) -> bytes | None:
        """The request body (None when the request has no body framing)."""
        te = h.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            parts = []
            while True:
                line = h.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection inside a chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # HTTP trailer fields: dropped (S3 clients put theirs inside aws-chunked)
                    return b"".join(parts)
                parts.append(_read_exact(h.rfile, size))
                if h.rfile.readline(65537) not in (b"\r\n", b"\n"):
                    raise ConnectionError("bad chunk framing")
        length = h.headers.get("Content-Length")
        if length is None:
            return None
        return _read_exact(h.rfile, int(length))

    def _handle(self, h: _Handler) -> None:
        method = h.command
        try:
            body = self._read_body(h)
        except (ConnectionError, ValueError, OSError):
            h.close_connection = True
            return
        key = unquote(urlsplit(h.path).path).lstrip("/")
        kind = self._decide(method, key)
        if kind in ERRORS:
            self._send_error(h, kind, key)
            return
        if kind == "reset":
            self._reset(h)
            return
        if kind == "slow":
            time.sleep(self.slow_delay)
        conn = http.client.HTTPConnection(*self._up, timeout=self.upstream_timeout)
        try:
            try:
                resp = self._forward(conn, h, method, body)
            except (OSError, http.client.HTTPException):
                self._reset(h)  # upstream unreachable: the client sees a dropped connection
                return
            if kind == "reset_after":
                resp.read()  # the upstream has applied the request; its answer is lost on the way back
                self._reset(h)
                return
            self._relay(h, method, resp, cut=kind == "reset_mid_body")
        finally:
            conn.close()

    @staticmethod
    def _forward(conn: http.client.HTTPConnection, h: _Handler, method: str, body: bytes | None):
        conn.putrequest(method, h.path, skip_host=True, skip_accept_encoding=True)
        extra_hop = {t.strip().lower() for t in h.headers.get("Connection", "").split(",") if t.strip()}
        for name, value in h.headers.items():  # in order, duplicates kept, Host unchanged
            low = name.lower()
            if low in HOP_BY_HOP or low in extra_hop:
                continue
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body if body else None)
        return conn.getresponse()

    def _relay(self, h: _Handler, method: str, resp: http.client.HTTPResponse, cut: bool = False) -> None:
        no_body = method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        length = resp.getheader("Content-Length")
        chunked = "chunked" in (resp.getheader("Transfer-Encoding") or "").lower()
        data = None
        if not no_body and (length is None or chunked):
            data = resp.read()  # chunked or close-delimited upstream body: re-sent with a length
        size = len(data) if data is not None else (0 if no_body else int(length))
        if cut and size == 0:
            resp.read()
            self._reset(h)  # nothing to cut in half: the whole answer is lost
            return
        h.send_response_only(resp.status, resp.reason)
        extra_hop = {t.strip().lower() for t in (resp.getheader("Connection") or "").split(",") if t.strip()}
        for name, value in resp.getheaders():
            low = name.lower()
            if low in extra_hop or (low in HOP_BY_HOP and not (low == "content-length" and data is None)):
                continue
            h.send_header(name, value)
        if data is not None:
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if no_body:
            return
        if data is not None:
            if cut:
                h.wfile.write(data[: len(data) // 2])
                self._reset(h)
                return
            h.wfile.write(data)
            return
        remaining = int(length)
        stop_at = remaining // 2 if cut else 0
        while remaining > stop_at:
            block = resp.read(min(_COPY_BLOCK, remaining - stop_at))
            if not block:
                # The upstream died mid-body: make the client see it too, never a short body as if complete.
                raise ConnectionError("upstream closed the connection inside the response body")
            h.wfile.write(block)
            remaining -= len(block)
        if cut:
            self._reset(h)

    @staticmethod
    def _send_error(h: _Handler, kind: str, key: str) -> None:
        status, reason, code, message = ERRORS[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        body = error_xml(code, message, "/" + key, request_id)
        h.send_response_only(status, reason)
        h.send_header("Content-Type", "application/xml")
        h.send_header("x-amz-request-id", request_id)
        h.send_header("Content-Length", "0" if h.command == "HEAD" else str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    @staticmethod
    def _reset(h: _Handler) -> None:
        """Close the client connection with a TCP RST and no response."""
        h.close_connection = True
        try:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # socket.close() waits for the makefile() reader to be closed too; closing both closes the descriptor
        # now, and with SO_LINGER 0 that sends RST. The server's later shutdown()/close() are harmless no-ops.
        h.connection.close()
        h.rfile.close()


def _read_exact(f, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise ConnectionError(f"client closed the connection after {len(buf)} of {n} body bytes")
        buf += chunk
    return bytes(buf)
