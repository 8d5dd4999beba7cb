"""Downstream side of the HTTP/1.1 proxy: listeners, connections, requests.

Shape (after uvicorn's httptools protocol): one ``asyncio.Protocol`` per client
connection (``HttpConnection``) owns one ``httptools.HttpRequestParser``; the parser's
callbacks fill one slotted ``Exchange`` per request, and everything after that is driven
by callbacks too.  The only coroutine a request can need is the upstream connect on a
pool miss.  Flow control is pause/resume of reading on one transport, driven by the
other transport's write-buffer water marks, so a slow peer on either side makes the
proxy stop reading from the fast one instead of buffering a body.

Choices worth knowing:

- ``Expect: 100-continue`` is answered by the proxy itself (as Envoy does by default):
  the expectation is removed from the forwarded request and ``100 Continue`` is sent
  once the route is resolved and the request head has been written to a connected
  upstream.  A final local reply (404, 503, ...) is therefore sent without ever asking
  the client for the body (RFC 9110 10.1.1: "A server that responds with a final status
  code before reading the entire request content SHOULD indicate whether it intends to
  close the connection").  Interim responses from the backend are dropped.
- Pipelined requests are parsed ahead (their bodies held, bounded, before reading is
  paused) but each is only routed once the previous response is complete.
- Responses are re-framed: ``Content-Length`` passes through, anything else becomes
  ``chunked`` towards HTTP/1.1 clients or close-delimited towards HTTP/1.0 clients.
- Idle/head/lingering deadlines are checked by one periodic sweep per ``Proxy``
  instead of a timer per request.
- HTTPS ports are created once with the fixed base context of their ``PortTLS``
  (``gatewayd.tls.terminate``); a new snapshot only swaps the certificates the SNI
  callback picks from.  Such connections carry their server name (``sni``) for the 421
  check; on plain connections ``sni`` is None and costs one test per request.  A port
  that also has TLS listeners is a plain socket instead: ``TLSRouteConnection`` reads
  the ClientHello, and terminates for an HTTPS listener with the same ``PortTLS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

import httptools

from gatewayd.proxy.acceptor import Balance, SharedAcceptor
from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.filters import (
    apply_header_ops,
    cors_preflight,
    cors_response_headers,
    redirect_location,
    rewrite_path,
)
from gatewayd.proxy.forwarded import (
    add_forwarding_headers,
    client_cert_details,
    strip_hop_by_hop,
)
from gatewayd.proxy.listeners import BACKLOG, ListeningSockets, NotHanded
from gatewayd.proxy.localreply import (
    DNS_RESOLUTION_FAILURE,
    DOWNSTREAM_PROTOCOL_ERROR,
    NO_HEALTHY_UPSTREAM,
    UPSTREAM_CONNECT_FAILURE,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    ReplyKind,
    local_reply,
    status_line,
)
from gatewayd.proxy.pathnorm import (
    EDGE_PATH_POLICY,
    PathError,
    PathPolicy,
    needs_normalizing,
    normalize_path,
    split_target,
)
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.proxy.splice import Splice, close_idle
from gatewayd.proxy.tlsroute import TLS_PROTOCOL, TLSRouteListener
from gatewayd.proxy.upstream import (
    WRITE_HIGH,
    WRITE_LOW,
    UpstreamConnection,
    UpstreamPool,
    UpstreamProtocolError,
    endpoint_key,
)
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule
from gatewayd.routing.snapshot.table import HTTPRouteTable
from gatewayd.tls.terminate import PortTLS

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.routing.snapshot.backends import EndpointAddress

log = logging.getLogger("gatewayd.proxy.server")

Headers = list[tuple[bytes, bytes]]
ListenKey = tuple[str, int]

# A request body is kept for replay (retry, reused-connection retry, mirrors) while it
# is at most this big.
MAX_REPLAY: Final = 64 * 1024
# Body bytes held for requests that cannot be sent yet (upstream connecting, pipelined
# behind another request) before the client connection stops being read.
MAX_HELD: Final = 256 * 1024
# Pipelined requests parsed ahead before reading pauses.
MAX_QUEUED: Final = 16
# Reads bigger than this are parsed in slices of this size, so that parsing ahead stops
# within one slice of reading being paused (a 256 KiB read of tiny pipelined requests
# would otherwise become thousands of queued requests at once).
FEED_SLICE: Final = 16 * 1024
# Lingering close: after the last response, how long unread client bytes are drained
# (so closing does not reset the connection under a response the client has not read).
LINGER: Final = 2.0
MIRROR_TIMEOUT: Final = 10.0
# At --max-connections with no idle connection to close, how long new clients are
# refused before the connections are scanned again (``Proxy.make_room``).
NO_IDLE_RESCAN: Final = 0.05

# Reasons for pausing the reading of a client connection (bit mask).
R_UPSTREAM: Final = 1  # the upstream's write buffer is above its high-water mark
R_HELD: Final = 2  # too many body bytes held
R_QUEUE: Final = 4  # too many pipelined requests

# Connection deadline kinds.
D_NONE: Final = 0
D_HEAD: Final = 1  # a request head must complete (408 if partial, silent if nothing)
D_IDLE: Final = 2  # keep-alive idle between requests (silent close)
D_LINGER: Final = 3  # lingering close

# Response body framing towards the client.
F_LENGTH: Final = 0  # Content-Length (or no body): bytes pass through
F_CHUNKED: Final = 1
F_EOF: Final = 2  # close-delimited (HTTP/1.0 client, unknown length)

CONTINUE_100: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_BODY_STATUS: Final = frozenset({204, 304})


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


# Local replies.  Flags and metric reasons follow localreply's table (Envoy's response
# flags); the status is chosen by the caller.
LR_NO_ROUTE = ReplyKind("NR", "no_route", 404, b"route not found")
LR_NO_HEALTHY = NO_HEALTHY_UPSTREAM
LR_CONNECT_FAIL = UPSTREAM_CONNECT_FAILURE
LR_DNS_FAIL = DNS_RESOLUTION_FAILURE
LR_RESET = UPSTREAM_RESET
LR_UPSTREAM_PROTOCOL = UPSTREAM_PROTOCOL_ERROR
LR_TIMEOUT = UPSTREAM_TIMEOUT
LR_DIRECT = ReplyKind("NC", "invalid_backend", 500, b"no backend for this route")
LR_INVALID = ReplyKind("NC", "invalid_backend", 500, b"invalid backend reference")
LR_REDIRECT = ReplyKind("", "redirect", 302, b"")
LR_CORS = ReplyKind("", "cors_preflight", 200, b"")
LR_BAD = DOWNSTREAM_PROTOCOL_ERROR
LR_HEAD_TOO_BIG = ReplyKind(
    "DPE", "downstream_protocol_error", 431, b"request header fields too large"
)
LR_HEAD_TIMEOUT = ReplyKind("DPE", "header_timeout", 408, b"request header timeout")
# Envoy's flag SI (StreamIdleTimeout) and its local reply body.
LR_STREAM_IDLE = ReplyKind("SI", "stream_idle_timeout", 408, b"stream timeout")
LR_INTERNAL = ReplyKind("", "internal_error", 500, b"internal error")
LR_MISDIRECTED = ReplyKind("", "misdirected_request", 421, b"misdirected request")
# Envoy's response code detail and stat for both: "path_normalization_failed".
LR_BAD_PATH = ReplyKind("DPE", "path_normalization_failed", 400, b"invalid path")
LR_PATH_REDIRECT = ReplyKind("", "path_redirect", 307, b"")

_ERRORS_BY_STATUS = {400: LR_BAD, 431: LR_HEAD_TOO_BIG, 408: LR_HEAD_TIMEOUT, 500: LR_INTERNAL}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyOptions:
    xff_trusted_hops: int = 0
    access_log: str | None = "text"  # "text" | "json" | None (off)
    max_connections: int = 10000  # per process: each worker counts its own
    idle_timeout: float = 60.0  # keep-alive idle
    tcp_idle_timeout: float = 3600.0  # L4 splices (TLSRoute, node-local pass-through)
    header_timeout: float = 30.0  # slowloris guard: request head must complete
    upstream_connect_timeout: float = 5.0
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    # Envoy's edge defaults.  Route timeout (Envoy's route ``timeout``, 15 s): from the
    # end of the request to the end of the upstream response, for rules without
    # ``timeouts.request``; 504 (flag UT) or a reset once the response has started.
    # 0 disables.
    route_timeout: float = 15.0
    # Stream idle timeout (Envoy's ``stream_idle_timeout``, 5 min): an active exchange
    # with no progress either way for this long ends (408, flag SI, or a reset once the
    # response has started).  0 disables.
    stream_idle_timeout: float = 300.0
    # Edge header trust and path normalization (gatewayd run --preserve-request-id,
    # --xfcc, --no-path-normalization, --no-merge-slashes, --escaped-slashes,
    # --keep-fragment).
    preserve_request_id: bool = False
    path: PathPolicy = EDGE_PATH_POLICY
    xfcc_set: bool = True  # XFCC from a verified client certificate (False: never sent)


def _header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _host_only(host: bytes) -> str:
    """Host header value -> lower-case host without port (IPv6 literals keep brackets)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        host = host[: end + 1] if end > 0 else host
    else:
        colon = host.rfind(b":")
        if colon >= 0:
            host = host[:colon]
    return host.decode("latin-1").lower()


# --------------------------------------------------------------------------- Exchange


class Exchange:
    """One request/response on a client connection, from its head to its last byte."""

    __slots__ = (
        "attempt",
        "backend",
        "body_expected",
        "bytes_received",
        "bytes_sent",
        "chunked",
        "conn",
        "content_length",
        "deadline",
        "endpoint",
        "expect",
        "finished",
        "flags",
        "head_done",
        "headers",
        "host",
        "host_header",
        "keep_alive",
        "method",
        "mirror_head",
        "mirrors",
        "out",
        "pending",
        "pending_size",
        "port",
        "progress",
        "reason",
        "replay",
        "replay_size",
        "request_complete",
        "request_id",
        "resp_keep",
        "resp_mode",
        "response_done",
        "response_started",
        "retries_left",
        "retry_handle",
        "reuse_retried",
        "reused",
        "route_wait",
        "rule",
        "sending",
        "sent_100",
        "start",
        "status",
        "still_since",
        "te",
        "timer_total",
        "timer_try",
        "try_start",
        "upgrade",
        "upstream",
        "upstream_head",
        "upstream_ms",
        "url",
        "version",
    )

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn
        self.url = b""
        self.headers: Headers = []
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.head_done = False
        self.content_length: int | None = None
        self.te: bytes | None = None
        self.chunked = False
        self.host_header: bytes | None = None
        self.expect = False
        self.body_expected = False
        self.request_complete = False
        self.bytes_received = 0
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.start = 0.0
        self.port: ListenerPort | None = None
        self.rule: CompiledRule | None = None
        self.backend: CompiledBackend | None = None
        self.endpoint: EndpointAddress | None = None
        self.host = ""
        self.upstream: UpstreamConnection | None = None
        self.upstream_head = b""
        self.sending = False
        self.sent_100 = False
        self.reused = False
        self.reuse_retried = False
        self.attempt = 0
        self.retries_left = 0
        self.retry_handle: asyncio.TimerHandle | None = None
        self.timer_try: asyncio.TimerHandle | None = None
        self.timer_total: asyncio.TimerHandle | None = None
        self.try_start = 0.0
        self.upstream_ms = -1.0
        self.mirrors: list[CompiledBackend] | None = None
        self.mirror_head = b""
        self.request_id: bytes | None = None
        self.out: list[bytes] = []
        self.response_started = False
        self.response_done = False
        self.resp_mode = F_LENGTH
        self.resp_keep = False
        self.status = 0
        self.bytes_sent = 0
        self.flags = ""
        self.reason = ""
        self.finished = False
        # The default route timeout is a deadline the connection sweep checks, not a
        # timer handle: under uvloop, call_later + cancel costs about 2.2 us against
        # 0.07 us for these stores (measured; ~4% of a 50 us request), and a sweep
        # interval of precision is plenty for 15 s.
        self.route_wait = 0.0  # armed at the end of the request (0: not applied)
        self.deadline = 0.0  # when it fires (0: not armed)
        self.upgrade = False  # Upgrade or CONNECT: a long-lived stream, no route timeout
        # Stream idle timeout, sampled by the sweep: what had moved at ``still_since``.
        self.progress: tuple[int, int, bool, int] | None = None
        self.still_since = 0.0

    # ------------------------------------------------------------------ request body

    def on_body(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        replay = self.replay
        if replay is not None:
            if self.replay_size + n <= MAX_REPLAY:
                replay.append(data)
                self.replay_size += n
            else:
                self.replay = None
        if self.response_done or self.finished:
            return  # answered already: the rest of the body is read and dropped
        up = self.upstream
        if up is not None and self.sending:
            if self.chunked:
                up.writelines([b"%x\r\n" % n, data, b"\r\n"])
            else:
                up.write(data)
        else:
            self.pending.append(data)
            self.pending_size += n
            self.conn.hold(n)

    def on_request_end(self) -> None:
        self.request_complete = True
        if self.finished:
            return
        if self.route_wait:
            # Envoy's route timeout is "the amount of time that Envoy will wait for the
            # upstream to respond with a complete response.  This timeout does not
            # start until the entire downstream request stream has been received": a
            # long upload is not cut.
            self.deadline = self.conn.loop.time() + self.route_wait
        if self.mirrors:
            self._fire_mirrors()
        if not self.response_done:
            up = self.upstream
            if up is not None and self.sending and self.chunked:
                up.write(b"0\r\n\r\n")
            return
        self._finish()

    # ------------------------------------------------------------------ routing

    def begin(self) -> None:
        """Route the request (its head is complete and it is next in line)."""
        try:
            self._route()
        except Exception:
            log.exception("request handling failed")
            self._local(500, LR_INTERNAL, close=True)

    def _route(self) -> None:
        conn = self.conn
        proxy = conn.proxy
        self.start = conn.loop.time()
        snapshot = proxy.holder.current
        port_for = conn.port_for
        lp = port_for(snapshot) if port_for is not None else snapshot.ports.get(conn.key)
        if lp is None:
            # The port left the configuration while this connection was open.
            self._local(404, LR_NO_ROUTE, close=True)
            return
        self.port = lp
        headers = self.headers
        url = self.url
        path_policy = proxy.options.path
        if url[:1] == b"/":
            path_b, query_b = split_target(url, strip_fragment=path_policy.strip_fragment)
            host_b = self.host_header
        elif url == b"*":
            path_b, query_b, host_b = b"*", b"", self.host_header
        else:
            # RFC 9112 3.2.2: "When an origin server receives a request with an
            # absolute-form of request-target, the origin server MUST ignore the
            # received Host header field (if any) and instead use the host information
            # of the request-target."
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                self._local(400, LR_BAD, close=True)
                return
            path_b = parsed.path or b"/"
            query_b = parsed.query or b""
            host_b = parsed.host or b""
            if parsed.port:
                host_b += b":%d" % parsed.port
            for i, (n, _) in enumerate(headers):
                if n == b"host":
                    headers[i] = (b"host", host_b)
                    break
            else:
                headers.append((b"host", host_b))
            self.host_header = host_b
        if path_policy.active and needs_normalizing(path_b) is not None:
            # Match and forward the path the backend will act on (pathnorm.py); a path
            # without "%", "//", "/." or "\\" costs one scan here (~0.15 us).
            try:
                norm_b, redirect = normalize_path(path_b, path_policy)
            except PathError:
                self._local(400, LR_BAD_PATH)
                return
            if redirect:
                # Envoy's UNESCAPE_AND_REDIRECT: 307 (method and body kept) to the
                # unescaped, normalized path with the query as received.  "gRPC requests
                # will be rejected" (Envoy): gRPC clients do not follow redirects.
                ctype = _header(headers, b"content-type")
                if ctype is not None and ctype.startswith(b"application/grpc"):
                    self._local(400, LR_BAD_PATH)
                    return
                location = norm_b + b"?" + query_b if query_b else norm_b
                self._local(307, LR_PATH_REDIRECT, extra=[(b"location", location)])
                return
            path_b = norm_b
        host = _host_only(host_b) if host_b else ""
        self.host = host
        sni = conn.sni
        if sni is not None:
            # A terminated TLS connection: the Host must select the listener its SNI
            # selected (GatewayHTTPSListenerDetectMisdirectedRequests), else 421.  Plain
            # connections have ``sni`` None and pay only this test.
            # On a port shared with TLS listeners, a Host one of them selects (more
            # specific than any HTTPS listener's hostname) is misdirected too.
            table = lp.table
            tls_table = lp.tls_table
            if (isinstance(table, HTTPRouteTable) and table.misdirected(sni, host)) or (
                tls_table is not None and tls_table.selects_tls(host)
            ):
                self._local(421, LR_MISDIRECTED)
                return
        method = self.method.decode("latin-1")
        path = path_b.decode("latin-1")
        query = query_b.decode("latin-1")
        hmap: dict[str, str] = {}
        for n, v in headers:
            k = n.decode("latin-1")
            s = v.decode("latin-1")
            if k in hmap:
                hmap[k] = hmap[k] + "," + s
            else:
                hmap[k] = s
        hit = lp.table.lookup(host, method, path, query, hmap)
        if hit is None:
            self._local(404, LR_NO_ROUTE)
            return
        rule = hit.rule
        self.rule = rule

        cors = rule.cors
        if cors is not None and self.method == b"OPTIONS":
            origin = _header(headers, b"origin")
            acrm = _header(headers, b"access-control-request-method")
            if origin is not None and acrm is not None:
                acrh = _header(headers, b"access-control-request-headers") or b""
                pre = cors_preflight(cors, origin, acrm, acrh)
                if pre is not None:
                    self._local(200, LR_CORS, extra=pre)
                    return

        redirect = rule.redirect
        if redirect is not None:
            location = redirect_location(
                redirect,
                scheme="http" if conn.sni is None else "https",
                host=host,
                port=lp.port,
                path=path,
                query=query,
                prefix=hit.prefix,
            )
            self._local(
                redirect.status_code,
                LR_REDIRECT,
                extra=[(b"location", location.encode("latin-1"))],
            )
            return
        if rule.direct_status is not None:
            self._local(rule.direct_status, LR_DIRECT)
            return

        # RFC 9110 7.6.1: hop-by-hop fields (Connection and the fields it names,
        # Keep-Alive, TE, Transfer-Encoding, Upgrade, ...) are not forwarded.
        fwd = strip_hop_by_hop(headers)
        if self.expect:
            fwd = [h for h in fwd if h[0] != b"expect"]
        options = proxy.options
        self.request_id = add_forwarding_headers(
            fwd,
            peer_ip=conn.peer_ip,
            scheme=conn.scheme,
            trusted_hops=options.xff_trusted_hops,
            preserve_request_id=options.preserve_request_id,
            client_cert=conn.client_cert,
        )
        if rule.request_headers is not None:
            apply_header_ops(fwd, rule.request_headers)
        rewrite = rule.rewrite
        if rewrite is not None:
            if rewrite.path is not None:
                path_b = rewrite_path(rewrite.path, path, hit.prefix).encode("latin-1")
            if rewrite.hostname is not None:
                new_host = rewrite.hostname.encode("latin-1")
                for i, (n, _) in enumerate(fwd):
                    if n == b"host":
                        fwd[i] = (b"host", new_host)
                        break
                else:
                    fwd.append((b"host", new_host))
        if self.host_header is None and _header(fwd, b"host") is None:
            # HTTP/1.0 without Host: RFC 9112 3.2 "If the authority component is missing
            # or undefined for the target URI, then a client MUST send a Host header
            # field with an empty field value."
            fwd.append((b"host", b""))
        target = path_b + b"?" + query_b if query_b else path_b

        if rule.mirrors:
            rnd = random.random
            chosen = [m.backend for m in rule.mirrors if m.fraction >= 1.0 or rnd() < m.fraction]
            if chosen:
                self.mirrors = chosen
                # Mirrors get the request as the rule's filters left it (backendRef
                # filters belong to the main backend).
                self.mirror_head = self._serialize(target, fwd)

        backend = rule.pick_backend(random.random())
        if backend is None:
            self._local(500, LR_DIRECT)
            return
        self.backend = backend
        if backend.invalid_status is not None:
            self._local(backend.invalid_status, LR_INVALID)
            return
        if backend.request_headers is not None:
            apply_header_ops(fwd, backend.request_headers)
        if self.chunked:
            # Re-chunked as it arrives; the received coding list still ends in chunked.
            fwd.append((b"transfer-encoding", self.te or b"chunked"))
        self.upstream_head = self._serialize(target, fwd)

        loop = conn.loop
        timeout = rule.request_timeout
        if timeout:
            self.timer_total = loop.call_later(timeout, self._on_timeout)
        elif timeout is None and not self.upgrade:
            # No ``timeouts.request`` ("0s" disables it: 0.0, not None): Envoy's
            # default route timeout (--route-timeout), never shorter than the rule's
            # own ``timeouts.backendRequest``.  Upgrade (WebSocket) and CONNECT
            # requests open streams that are long-lived by design, which a timeout on
            # the complete response would cut: they only have the stream idle timeout.
            wait = proxy.options.route_timeout
            if wait:
                per_try = rule.backend_request_timeout
                if per_try is not None and per_try > wait:
                    wait = per_try
                self.route_wait = wait
                if self.request_complete:
                    self.deadline = self.start + wait
        if rule.retry is not None:
            self.retries_left = rule.retry.attempts
        if self.request_complete and self.mirrors:
            self._fire_mirrors()
        self._try(False)

    def _serialize(self, target: bytes, headers: Headers) -> bytes:
        parts = [self.method, b" ", target, b" HTTP/1.1\r\n"]
        for n, v in headers:
            parts += (n, b": ", v, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    # ------------------------------------------------------------------ upstream tries

    def _try(self, fresh: bool) -> None:
        """Send the request to an endpoint: a pooled connection, else a new one."""
        self.retry_handle = None
        if self.finished:
            return
        backend = self.backend
        assert backend is not None
        ep = self.endpoint if fresh else backend.next_endpoint()
        if ep is None:
            self._local(503, LR_NO_HEALTHY)
            return
        self.endpoint = ep
        self.attempt += 1
        proxy = self.conn.proxy
        if not fresh:
            up = proxy.pool.acquire(endpoint_key(ep.address, ep.port, backend.tls))
            if up is not None:
                self._attach(up, True)
                return
        task = self.conn.loop.create_task(self._connect(ep, self.attempt))
        proxy.tasks.add(task)
        task.add_done_callback(proxy.tasks.discard)

    async def _connect(self, ep: EndpointAddress, attempt: int) -> None:
        proxy = self.conn.proxy
        backend = self.backend
        assert backend is not None
        try:
            up = await proxy.pool.connect(
                ep.address, ep.port, backend.name, backend.tls, resolve=backend.fqdn
            )
        except (OSError, TimeoutError) as exc:
            if attempt != self.attempt or self.finished:
                return
            log.debug("connect to %s:%d failed: %s", ep.address, ep.port, exc)
            if proxy.metrics is not None:
                proxy.metrics.upstream_connect_fail(backend.name)
            if self._can_retry():
                self._schedule_retry()
            elif isinstance(exc, socket.gaierror):  # an FQDN endpoint's name did not resolve
                self._local(503, LR_DNS_FAIL)
            else:
                self._local(503, LR_CONNECT_FAIL)
            return
        except Exception:
            log.exception("upstream connect failed")
            if attempt == self.attempt and not self.finished:
                self._local(500, LR_INTERNAL, close=True)
            return
        try:
            if attempt != self.attempt or self.finished:
                proxy.pool.release(up, self.conn.loop.time())
                return
            if up.closed:
                # Closed before the request could be written, e.g. by a TLS 1.3 backend
                # refusing our client certificate right after the handshake: the same
                # as a reset before the response.
                self.upstream = up
                self.on_upstream_lost(up, None, False)
                return
            self._attach(up, False)
        except Exception:
            log.exception("request handling failed")
            up.abort()
            if not self.finished:
                self._local(500, LR_INTERNAL, close=True)

    def _attach(self, up: UpstreamConnection, reused: bool) -> None:
        self.upstream = up
        self.reused = reused
        up.bind(self, self.method == b"HEAD")
        conn = self.conn
        self.try_start = conn.loop.time()
        rule = self.rule
        assert rule is not None
        if rule.backend_request_timeout:
            self.timer_try = conn.loop.call_later(rule.backend_request_timeout, self._on_timeout)
        parts = [self.upstream_head]
        if self.pending:
            if self.chunked:
                for d in self.pending:
                    parts += (b"%x\r\n" % len(d), d, b"\r\n")
            else:
                parts += self.pending
            self.pending = []
            conn.release_held(self.pending_size)
            self.pending_size = 0
        if self.chunked and self.request_complete:
            parts.append(b"0\r\n\r\n")
        self.sending = True
        up.writelines(parts)
        if conn.write_paused:
            up.pause_reading()
        if self.expect and not self.sent_100 and not self.request_complete:
            self.sent_100 = True
            conn.transport.write(CONTINUE_100)

    def _can_retry(self) -> bool:
        return self.retries_left > 0 and self.replay is not None and not self.response_started

    def _schedule_retry(self) -> None:
        rule = self.rule
        assert rule is not None and rule.retry is not None
        retry = rule.retry
        self.retries_left -= 1
        n = retry.attempts - self.retries_left  # 1 for the first retry
        self._replay_pending()
        self.retry_handle = self.conn.loop.call_later(
            retry.backoff * (2 ** (n - 1)), self._retry_now
        )

    def _retry_now(self) -> None:
        try:
            self._try(False)
        except Exception:
            log.exception("retrying the request failed")
            self._local(500, LR_INTERNAL, close=True)

    def _replay_pending(self) -> None:
        """Everything received so far goes out again on the next connection."""
        self.sending = False
        if self.pending_size:
            self.conn.release_held(self.pending_size)
        replay = self.replay
        assert replay is not None
        self.pending = list(replay)
        self.pending_size = self.replay_size
        self.conn.hold(self.replay_size)

    def _drop_upstream(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
            self.conn.resume(R_UPSTREAM)
        self.attempt += 1  # a connect in flight is now stale
        self._cancel_try_timer()

    def _cancel_try_timer(self) -> None:
        t = self.timer_try
        if t is not None:
            self.timer_try = None
            t.cancel()

    def _on_timeout(self) -> None:
        if self.finished or self.response_done:
            return
        try:
            self._drop_upstream()
            if self.retry_handle is not None:
                self.retry_handle.cancel()
                self.retry_handle = None
            if self.response_started:
                self.flags = "UT"
                self._abort_downstream()
            else:
                self._local(504, LR_TIMEOUT)
        except Exception:
            log.exception("timeout handling failed")
            self.conn.abort()

    def check_deadlines(self, now: float, idle_timeout: float) -> None:
        """Called by the connection sweep for the active exchange: the default route
        timeout, then the stream idle timeout (Envoy's ``stream_idle_timeout``, "the
        amount of time that the connection manager will allow a stream to exist with no
        upstream or downstream activity")."""
        d = self.deadline
        if d and now >= d and not self.response_done:
            self.deadline = 0.0
            self._on_timeout()
            return
        if not idle_timeout:
            return
        # Bytes in from the client, bytes in from the upstream, and the client draining
        # its write buffer: any change is progress.  Sampled here, so the hot path
        # pays nothing.
        conn = self.conn
        mark = (
            self.bytes_received,
            self.bytes_sent,
            self.response_started,
            0 if conn.closed else conn.transport.get_write_buffer_size(),
        )
        if mark != self.progress:
            self.progress = mark
            self.still_since = now
        elif now - self.still_since >= idle_timeout:
            self.on_stream_idle()

    def on_stream_idle(self) -> None:
        if self.finished:
            return
        try:
            metrics = self.conn.proxy.metrics
            if self.response_done:
                # Answered, but the client stopped sending the rest of its body: the
                # connection cannot be reused, close it.
                self.resp_keep = False
                self._finish()
            elif self.response_started:
                # As Envoy: a response already under way can only be cut (a reset).
                self._drop_upstream()
                if self.retry_handle is not None:
                    self.retry_handle.cancel()
                    self.retry_handle = None
                self.flags = LR_STREAM_IDLE.flag
                if metrics is not None:
                    metrics.local_reply(LR_STREAM_IDLE.reason)
                self._abort_downstream()
            else:
                # As Envoy: no response yet, 408.  RFC 9110 15.5.9: "the server did not
                # receive a complete request message within the time that it was
                # prepared to wait" (or, here, the backend did not answer it).
                self._local(408, LR_STREAM_IDLE, close=True)
        except Exception:
            log.exception("stream idle timeout handling failed")
            self.conn.abort()

    # ------------------------------------------------------------------ upstream callbacks

    def on_upstream_head(
        self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        if conn is not self.upstream or self.finished:
            return
        rule = self.rule
        assert rule is not None
        retry = rule.retry
        if retry is not None and status in retry.codes and self._can_retry():
            self._drop_upstream()
            self._schedule_retry()
            return
        self.status = status
        self.upstream_ms = (self.conn.loop.time() - self.try_start) * 1000.0
        backend = self.backend
        assert backend is not None
        out = strip_hop_by_hop(headers)
        if rule.response_headers is not None:
            apply_header_ops(out, rule.response_headers)
        if backend.response_headers is not None:
            apply_header_ops(out, backend.response_headers)
        if rule.cors is not None:
            origin = _header(self.headers, b"origin")
            if origin is not None:
                out += cors_response_headers(rule.cors, origin)
        rid = self.request_id
        if rid is not None:
            for i, (n, _) in enumerate(out):
                if n == b"x-request-id":
                    out[i] = (n, rid)
                    break
            else:
                out.append((b"x-request-id", rid))
        # RFC 9110 9.3.2 / 15.3.5 / 15.4.5: no content in responses to HEAD, in 204
        # and in 304 whatever the framing fields say.
        keep = self._keep_after_response()
        if conn.has_length or self.method == b"HEAD" or status in NO_BODY_STATUS:
            self.resp_mode = F_LENGTH
        elif self.version == "1.1":
            out.append((b"transfer-encoding", b"chunked"))
            self.resp_mode = F_CHUNKED
        else:
            # RFC 9112 7: chunked is not understood by HTTP/1.0 recipients: the body
            # ends with the connection.
            self.resp_mode = F_EOF
            keep = False
        if not keep:
            out.append((b"connection", b"close"))
        elif self.version != "1.1":
            out.append((b"connection", b"keep-alive"))
        self.resp_keep = keep
        parts = [status_line(status)]
        for n, v in out:
            parts += (n, b": ", v, b"\r\n")
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        self.response_started = True

    def on_upstream_body(self, data: bytes) -> None:
        if self.finished:
            return
        self.bytes_sent += len(data)
        if self.resp_mode == F_CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def on_upstream_flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            conn = self.conn
            if not conn.closed:
                conn.transport.writelines(out)

    def on_upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None:
        if conn is not self.upstream or self.finished:
            conn.close()
            return
        self.upstream = None
        self._cancel_try_timer()
        proxy = self.conn.proxy
        loop = self.conn.loop
        if reusable and self.request_complete:
            proxy.pool.release(conn, loop.time())
        else:
            # The backend answered before reading the whole request body: the
            # connection is in an unknown state.
            conn.close()
        if proxy.metrics is not None and self.backend is not None:
            rule = self.rule
            proxy.metrics.upstream_request(
                self.backend.name,
                rule.route_id if rule is not None else "",
                self.status,
                loop.time() - self.try_start,
            )
        if self.resp_mode == F_CHUNKED:
            self.out.append(b"0\r\n\r\n")
        elif self.resp_mode == F_EOF:
            self.resp_keep = False
        self.response_done = True
        if self.request_complete or not self.resp_keep:
            self._finish()
        else:
            # Keep reading (and dropping) the rest of the request body, then go on.
            self._drop_pending()

    def on_upstream_lost(
        self, conn: UpstreamConnection, exc: BaseException | None, got_bytes: bool
    ) -> None:
        if conn is not self.upstream or self.finished:
            return
        self.upstream = None
        self._cancel_try_timer()
        self.conn.resume(R_UPSTREAM)
        # An invalid response (or a head over the limits) is the backend's protocol
        # error, as Envoy's "upstream_reset_before_response_started{protocol_error}".
        broken = isinstance(exc, (UpstreamProtocolError, httptools.HttpParserError))
        if self.response_started:
            # Truncated response: the client has to see the failure.
            self.flags = LR_UPSTREAM_PROTOCOL.flag if broken else "UC"
            self._abort_downstream()
            return
        if not got_bytes and self.reused and not self.reuse_retried and self.replay is not None:
            # A pooled connection the backend had closed (the race every keep-alive
            # client has): try once more on a new connection, as Envoy does.
            self.reuse_retried = True
            self._replay_pending()
            self._try(True)
            return
        if self._can_retry():
            self._schedule_retry()
            return
        self._local(502, LR_UPSTREAM_PROTOCOL if broken else LR_RESET)

    def on_upstream_fatal(self) -> None:
        try:
            self.flags = self.flags or "IE"
            if not self.finished:
                self.on_downstream_lost()
            self.conn.abort()
        except Exception:  # last resort: never raise into the event loop
            log.exception("aborting a failed request failed")

    def on_upstream_pause(self) -> None:
        self.conn.pause(R_UPSTREAM)

    def on_upstream_resume(self) -> None:
        self.conn.resume(R_UPSTREAM)

    # ------------------------------------------------------------------ ending

    def _keep_after_response(self) -> bool:
        conn = self.conn
        if not self.keep_alive or conn.closing:
            return False
        # The client asked to wait for 100 Continue and we never sent it: it may or
        # may not send the body now, so the connection cannot be reused.
        return not (self.expect and not self.sent_100 and not self.request_complete)

    def _local(
        self,
        status: int,
        kind: ReplyKind,
        *,
        extra: list[tuple[bytes, bytes]] | tuple[()] = (),
        close: bool = False,
    ) -> None:
        """Answer from the proxy itself."""
        if self.finished:
            return
        body, flag, reason = kind.body, kind.flag, kind.reason
        self._drop_upstream()
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        if self.response_started:
            self.flags = flag
            self._abort_downstream()
            return
        keep = self._keep_after_response() and not close
        data = local_reply(
            status,
            body,
            keep_alive=keep,
            request_id=self.request_id,
            extra_headers=extra,
            head=self.method == b"HEAD",
        )
        self.status = status
        self.flags = flag
        self.reason = reason
        self.resp_keep = keep
        self.response_started = True
        self.response_done = True
        self.bytes_sent = 0 if self.method == b"HEAD" else len(body)
        self.out.append(data)
        metrics = self.conn.proxy.metrics
        if metrics is not None and reason:
            metrics.local_reply(reason)
        if self.request_complete or not keep:
            self._finish()
        else:
            self.on_upstream_flush()
            self._drop_pending()

    def _drop_pending(self) -> None:
        if self.pending_size:
            self.conn.release_held(self.pending_size)
        self.pending = []
        self.pending_size = 0

    def _abort_downstream(self) -> None:
        self.on_upstream_flush()
        self.resp_keep = False
        self._finish()
        self.conn.abort()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.on_upstream_flush()
        for t in (self.timer_total, self.timer_try, self.retry_handle):
            if t is not None:
                t.cancel()
        self.timer_total = self.timer_try = self.retry_handle = None
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self._drop_pending()
        if self.mirrors and not self.request_complete:
            self._fire_mirrors()
        conn = self.conn
        conn.resume(R_UPSTREAM)
        self._record()
        conn.exchange_done(self, self.resp_keep)

    def on_downstream_lost(self) -> None:
        """The client went away before the response was complete."""
        if self.finished:
            return
        self.finished = True
        self.flags = "DC"
        for t in (self.timer_total, self.timer_try, self.retry_handle):
            if t is not None:
                t.cancel()
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self.attempt += 1
        self._record()

    def _record(self) -> None:
        proxy = self.conn.proxy
        access = proxy.access
        metrics = proxy.metrics
        if access is None and metrics is None:
            return
        duration = self.conn.loop.time() - self.start if self.start else 0.0
        if metrics is not None:
            metrics.downstream_request(self.conn.label, self.status, duration)
        if access is not None:
            ep = self.endpoint
            rule = self.rule
            headers = self.headers
            xff = _header(headers, b"x-forwarded-for")
            ua = _header(headers, b"user-agent")
            access.log(
                start_time=time.time() - duration,
                method=self.method.decode("latin-1"),
                path=self.url.decode("latin-1"),
                protocol="HTTP/1.1" if self.version == "1.1" else "HTTP/1.0",
                status=self.status,
                flags=self.flags,
                bytes_received=self.bytes_received,
                bytes_sent=self.bytes_sent,
                duration_ms=int(duration * 1000.0),
                upstream_ms=int(self.upstream_ms) if self.upstream_ms >= 0 else None,
                xff=xff.decode("latin-1") if xff is not None else "",
                user_agent=ua.decode("latin-1") if ua is not None else "",
                request_id=self.request_id.decode("latin-1") if self.request_id else "",
                authority=self.host_header.decode("latin-1") if self.host_header else "",
                upstream_host=host_port(ep.address, ep.port) if ep is not None else "",
                route=rule.route_id if rule is not None else "",
            )

    # ------------------------------------------------------------------ mirrors

    def _fire_mirrors(self) -> None:
        """Fire-and-forget copies; never delays or fails the main request."""
        mirrors = self.mirrors
        self.mirrors = None
        proxy = self.conn.proxy
        head = self.mirror_head
        if not mirrors or not head:
            return
        body = b""
        if self.request_complete and self.replay is not None:
            body = b"".join(self.replay)
        data = _mirror_request(head, body)
        loop = self.conn.loop
        for backend in mirrors:
            ep = backend.next_endpoint()
            if ep is None:
                continue
            ctx: ssl.SSLContext | None = None
            if backend.tls is not None:
                try:
                    ctx = proxy.pool.contexts.get(backend.tls)
                except OSError:
                    continue  # logged once by the context cache
            task = loop.create_task(
                _send_mirror(ep.address, ep.port, data, ctx, backend.tls.hostname if ctx else None)
            )
            proxy.tasks.add(task)
            task.add_done_callback(proxy.tasks.discard)


def _mirror_request(head: bytes, body: bytes) -> bytes:
    """Rewrite the framing of a serialized head for a complete (possibly empty) body."""
    lines = head[:-4].split(b"\r\n")
    keep = [
        line
        for line in lines[1:]
        if not line.lower().startswith((b"content-length:", b"transfer-encoding:"))
    ]
    return b"\r\n".join(
        [lines[0], *keep, b"content-length: %d" % len(body), b"connection: close", b"", body]
    )


async def _send_mirror(
    host: str,
    port: int,
    data: bytes,
    ctx: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=server_hostname
            )
            writer.write(data)
            await writer.drain()
            await reader.read(1)  # the start of an answer, ignored
    except (OSError, TimeoutError) as exc:
        log.debug("mirror to %s:%d failed: %s", host, port, exc)
    finally:
        if writer is not None:
            writer.close()


# --------------------------------------------------------------------------- connection


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and serves them in order."""

    __slots__ = (
        "active",
        "backlog",
        "client_cert",
        "closed",
        "closing",
        "cur",
        "deadline",
        "deadline_kind",
        "dispatching",
        "head_fed",
        "head_size",
        "held",
        "key",
        "label",
        "lingering",
        "loop",
        "n_headers",
        "parse_error",
        "parser",
        "peer_ip",
        "port_for",
        "proxy",
        "queue",
        "read_mask",
        "rejected",
        "scheme",
        "sni",
        "stopped",
        "transport",
        "write_paused",
    )

    def __init__(self, proxy: Proxy, key: ListenKey, label: str) -> None:
        self.proxy = proxy
        self.key = key
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.peer_ip = ""
        # Transparent (TPROXY) connections pick their ListenerPort from each request's
        # snapshot by original destination and client (proxy/transparent.py).
        self.port_for: Callable[[Snapshot], ListenerPort | None] | None = None
        # Terminated TLS: the client's server name ("" without SNI), set when the
        # connection is made; None on plain connections.
        self.sni: str | None = None
        self.scheme = b"http"  # X-Forwarded-Proto and the default redirect scheme
        # X-Forwarded-Client-Cert value of a verified client certificate (terminated
        # TLS only), built once per connection; None: the header is removed.
        self.client_cert: bytes | None = None
        self.cur: Exchange | None = None
        self.active: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.held = 0
        self.backlog = b""
        self.read_mask = 0
        self.write_paused = False
        self.closing = False
        self.closed = False
        self.lingering = False
        self.stopped = False
        self.rejected = False
        self.dispatching = False
        self.parse_error = 0
        self.deadline = 0.0
        self.deadline_kind = D_NONE
        self.head_size = 0
        self.head_fed = 0
        self.n_headers = 0

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        proxy = self.proxy
        if proxy.n_conns >= proxy.options.max_connections and not proxy.make_room():
            # Over the limit with no idle connection to close: accepted and reset.
            self.rejected = True
            self.closed = True
            transport.abort()
            return
        proxy.n_conns += 1
        proxy.conns.add(self)
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        if self.sni is not None:
            # What the SNI callback chose (gatewayd.tls.terminate) for the 421 check.
            ssl_object = transport.get_extra_info("ssl_object")
            self.sni = getattr(ssl_object, "server_name", "")
            # A peer certificate exists only where the listener asked for one and
            # OpenSSL verified it against the listener's CA (frontend validation).
            getpeercert = getattr(ssl_object, "getpeercert", None)
            if getpeercert is not None and proxy.options.xfcc_set:
                der = getpeercert(binary_form=True)
                if der:
                    self.client_cert = client_cert_details(der)
        self.deadline = self.loop.time() + proxy.options.header_timeout
        self.deadline_kind = D_HEAD
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.rejected:
            return
        self.closed = True
        proxy = self.proxy
        proxy.n_conns -= 1
        proxy.conns.discard(self)
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, -1)
        ex = self.active
        self.active = None
        if ex is not None:
            try:
                ex.on_downstream_lost()
            except Exception:
                log.exception("cleanup after client disconnect failed")
        self.queue.clear()
        proxy.connection_gone()

    def eof_received(self) -> bool | None:
        # The client closed its side.  Like nginx and Envoy, a request still in flight
        # is abandoned (the upstream request is reset and logged with flag DC): a
        # half-closed HTTP/1.1 client is indistinguishable from one that went away.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.resume_reading()

    def pause(self, reason: int) -> None:
        if not self.read_mask and not self.closed:
            self.transport.pause_reading()
        self.read_mask |= reason

    def resume(self, reason: int) -> None:
        if self.read_mask & reason:
            self.read_mask &= ~reason
            if not self.read_mask and not self.closed:
                self.transport.resume_reading()
                if self.backlog:
                    # Not from here: this may run inside a parser callback, and the
                    # parser is not re-entrant.
                    self.loop.call_soon(self._feed_backlog)

    def hold(self, n: int) -> None:
        self.held += n
        if self.held > MAX_HELD:
            self.pause(R_HELD)

    def release_held(self, n: int) -> None:
        self.held -= n
        if self.held <= MAX_HELD // 2:
            self.resume(R_HELD)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def evict(self) -> None:
        """Close this idle keep-alive connection to make room for a new client.  Its
        slot is given back now rather than in ``connection_lost`` (which comes later),
        so the new connection is counted in its place."""
        proxy = self.proxy
        self.closed = True
        self.rejected = True  # no longer counted: connection_lost leaves the count alone
        proxy.n_conns -= 1
        proxy.conns.discard(self)
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, -1)
        # Between requests with nothing buffered: a plain close (FIN) is clean, as the
        # keep-alive idle timeout's is (RFC 9112 9.5: "A client, server, or proxy MAY
        # close the transport connection at any time").
        self.transport.close()

    # ------------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return  # lingering close / after a protocol error: drop
        if self.backlog:
            self.backlog += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data``; big reads are parsed in slices so that parsing stops as soon
        as reading is paused (pipelined requests piling up, upstream not keeping up):
        the rest waits in ``backlog`` until reading resumes."""
        n = len(data)
        if n <= FEED_SLICE:
            self._parse(data)
            return
        view = memoryview(data)
        pos = 0
        while pos < n:
            if self.read_mask or self.stopped or self.closed:
                if not self.stopped:
                    self.backlog = bytes(view[pos:])
                return
            end = pos + FEED_SLICE
            self._parse(view[pos:end])
            pos = end

    def _feed_backlog(self) -> None:
        data = self.backlog
        self.backlog = b""
        if data and not self.stopped and not self.closed:
            self._feed(data)

    def _parse(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asked to switch protocols (or was CONNECT); Upgrade is not
            # forwarded, so the request is served as plain HTTP and the connection
            # closed after it (what follows it is not HTTP/1.1 we could parse).
            self.stopped = True
            self.closing = True
            if self.active is None and not self.queue:
                self._close_after_flush()
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._protocol_error(cause.status)
            elif isinstance(exc, httptools.HttpParserCallbackError):
                log.error("request callback failed", exc_info=cause or exc)
                self._protocol_error(500)
            else:
                self._protocol_error(400)
        except Exception:
            log.exception("request parsing failed")
            self.abort()
        else:
            cur = self.cur
            if cur is not None and not cur.head_done:
                # A head arriving in pieces is held by the parser: bound it here too.
                self.head_fed += len(data)
                if self.head_fed > self.proxy.options.max_header_bytes:
                    self._protocol_error(431)

    def on_message_begin(self) -> None:
        self.cur = Exchange(self)
        self.head_size = 0
        self.head_fed = 0
        self.n_headers = 0
        if self.deadline_kind == D_IDLE:
            self.deadline = self.loop.time() + self.proxy.options.header_timeout
            self.deadline_kind = D_HEAD

    def on_url(self, url: bytes) -> None:
        ex = self.cur
        assert ex is not None
        ex.url += url
        self.head_size += len(url)
        if self.head_size > self.proxy.options.max_header_bytes:
            raise _Reject(431, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.cur
        assert ex is not None
        if ex.head_done:
            return  # chunked trailer fields are not forwarded
        self.n_headers += 1
        self.head_size += len(name) + len(value) + 4
        opts = self.proxy.options
        if self.n_headers > opts.max_headers or self.head_size > opts.max_header_bytes:
            raise _Reject(431, "request header fields too large")
        name = name.lower()
        ex.headers.append((name, value))
        if name == b"content-length":
            ex.content_length = int(value)  # digits only: the parser checked
        elif name == b"transfer-encoding":
            ex.te = value
        elif name == b"host":
            # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code
            # to any HTTP/1.1 request message that lacks a Host header field and to any
            # request message that contains more than one Host header field line".
            if ex.host_header is not None:
                raise _Reject(400, "more than one Host")
            ex.host_header = value
        elif name == b"expect":
            ex.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        p = self.parser
        ex.head_done = True
        ex.version = p.get_http_version()
        ex.method = p.get_method()
        ex.keep_alive = bool(p.should_keep_alive()) and not self.closing
        ex.chunked = ex.te is not None
        ex.body_expected = ex.chunked or (ex.content_length or 0) > 0
        ex.request_complete = not ex.body_expected
        ex.upgrade = bool(p.should_upgrade())
        if ex.host_header is None and ex.version != "1.0":
            raise _Reject(400, "missing Host")
        self.head_fed = 0
        self.deadline_kind = D_NONE
        self.deadline = 0.0
        if self.active is None and not self.queue:
            self.active = ex
            ex.begin()
        else:
            self.queue.append(ex)
            if len(self.queue) >= MAX_QUEUED:
                self.pause(R_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        assert ex is not None
        ex.on_body(body)

    def on_message_complete(self) -> None:
        ex = self.cur
        self.cur = None
        if ex is not None:
            ex.on_request_end()

    # ------------------------------------------------------------------ sequencing

    def exchange_done(self, ex: Exchange, keep: bool) -> None:
        if self.active is ex:
            self.active = None
        if self.closed:
            return
        if not keep:
            self.queue.clear()
            self._close_after_flush()
            return
        self._dispatch()

    def _dispatch(self) -> None:
        if self.dispatching:
            return
        self.dispatching = True
        try:
            while self.active is None and self.queue and not self.closed:
                ex = self.queue.popleft()
                if len(self.queue) < MAX_QUEUED:
                    self.resume(R_QUEUE)
                self.active = ex
                if self.closing:
                    ex.keep_alive = False
                ex.begin()
            if self.active is None and not self.closed:
                if self.parse_error:
                    self._send_error(self.parse_error)
                elif self.closing:
                    self._close_after_flush()
                elif self.cur is None:
                    proxy = self.proxy
                    self.deadline = self.loop.time() + proxy.options.idle_timeout
                    self.deadline_kind = D_IDLE
                    if proxy.no_idle_until:
                        # At the connection limit, a scan found no idle connection:
                        # here is one, the next new client may have it.
                        proxy.no_idle_until = 0.0
                else:
                    self.deadline = self.loop.time() + self.proxy.options.header_timeout
                    self.deadline_kind = D_HEAD
        finally:
            self.dispatching = False

    def _protocol_error(self, status: int) -> None:
        """Stop parsing; answer ``status`` once the requests before it are answered."""
        self.stopped = True
        cur = self.cur
        self.cur = None
        if cur is not None and cur in self.queue:
            self.queue.remove(cur)
        if cur is not None and cur is self.active:
            # The body of the request being served is broken.
            kind = _ERRORS_BY_STATUS.get(status, LR_BAD)
            cur._local(status, kind, close=True)
            return
        if self.active is None and not self.queue:
            self._send_error(status)
        else:
            self.parse_error = status

    def _send_error(self, status: int) -> None:
        kind = _ERRORS_BY_STATUS.get(status, LR_BAD)
        self.transport.write(local_reply(status, kind.body, keep_alive=False))
        proxy = self.proxy
        if proxy.metrics is not None:
            proxy.metrics.local_reply(kind.reason)
            proxy.metrics.downstream_request(self.label, status, 0.0)
        if proxy.access is not None:
            # The request could not be parsed: log what there is (Envoy does the same
            # with flag DPE).
            proxy.access.log(
                start_time=time.time(),
                method="",
                path="",
                protocol="HTTP/1.1",
                status=status,
                flags=kind.flag,
                bytes_received=0,
                bytes_sent=len(kind.body),
                duration_ms=0,
                upstream_ms=None,
                xff="",
                user_agent="",
                request_id="",
                authority="",
                upstream_host="",
                route="",
            )
        self._close_after_flush()

    def _close_after_flush(self) -> None:
        """Send what is buffered, then close without resetting the client's read.

        Lingering close (RFC 9112 9.6): half-close our side once the buffer is
        flushed, drain whatever the client still sends, close on its FIN or after
        LINGER seconds."""
        if self.lingering or self.closed:
            return
        self.lingering = True
        self.stopped = True
        self.queue.clear()
        self.read_mask = 0
        transport = self.transport
        transport.resume_reading()
        self.deadline = self.loop.time() + LINGER
        self.deadline_kind = D_LINGER
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def shutdown(self) -> None:
        """Stop serving: close now if idle, else after the response in progress."""
        self.closing = True
        if self.closed or self.lingering:
            return
        if self.active is None and not self.queue:
            self.closed = True
            self.transport.close()

    def on_deadline(self) -> None:
        kind = self.deadline_kind
        self.deadline = 0.0
        self.deadline_kind = D_NONE
        if self.closed:
            return
        if kind == D_LINGER:
            self.abort()
        elif kind == D_HEAD and self.active is None:
            cur = self.cur
            if cur is not None and not cur.head_done:
                # RFC 9110 15.5.9: 408 "the server did not receive a complete request
                # message within the time that it was prepared to wait".
                self.stopped = True
                self.cur = None
                self._send_error(408)
            else:
                self.closed = True
                self.transport.close()
        elif kind == D_IDLE and self.active is None and not self.queue:
            self.closed = True
            self.transport.close()


# --------------------------------------------------------------------------- Proxy


def _is_https(lp: ListenerPort) -> bool:
    """Whether the port terminates HTTPS (it has a ``PortTLS``); ``lp.terminate`` holds
    the listeners whose certificates it serves."""
    return lp.protocol == "HTTPS"


def _native_tls(lp: ListenerPort) -> bool:
    """Whether the port's socket is created with the loop's TLS: HTTPS listeners only.
    A port that also has TLS listeners is a plain socket whose connections read the
    ClientHello first (``TLSRouteConnection``), then terminate HTTPS themselves."""
    return lp.protocol == "HTTPS" and lp.tls_table is None


def _deadline(conn: HttpConnection) -> float:
    return conn.deadline


# What a port is served by: what Proxy uses of either is ``close()``.
_Server = asyncio.AbstractServer | SharedAcceptor


class Proxy:
    """The data plane of one process: listeners, client connections, upstream pool."""

    def __init__(
        self,
        holder: SnapshotHolder,
        options: ProxyOptions,
        metrics: ProxyMetrics | None = None,
        sockets: ListeningSockets | None = None,
        *,
        balance: Balance | None = None,
    ) -> None:
        self.holder = holder
        # Listening sockets by port: bound here, or handed over by the supervisor of
        # several workers (``gatewayd/workers.py``).
        self.sockets = sockets if sockets is not None else ListeningSockets()
        # A worker's share of the connections of sockets shared with other workers.
        self.balance = balance
        self.options = options
        self.metrics = metrics
        self.access: AccessLogger | None = (
            AccessLogger(options.access_log) if options.access_log else None
        )
        self.pool = UpstreamPool(
            connect_timeout=options.upstream_connect_timeout,
            # Response heads get the request heads' limits, as Envoy's defaults do.
            max_header_bytes=options.max_header_bytes,
            max_headers=options.max_headers,
            metrics=metrics,
        )
        # Per port: an asyncio server, or a SharedAcceptor on a socket the workers share.
        self.servers: dict[ListenKey, _Server] = {}
        # Connections of ports whose listeners are all protocol TLS (TLSRoute).
        self.tls_routes = TLSRouteListener(self)
        # Every set of open L4 splices this process owns, for the idle sweep: the TLS
        # listeners' and, in node-local mode, the transparent listener's.
        self.splice_sets: list[set[Splice]] = [self.tls_routes.splices]
        # HTTPS ports: TLS termination state, updated in place on every snapshot.
        self.terminators: dict[ListenKey, PortTLS] = {}
        # Ports whose socket was created with the loop's TLS (``_native_tls``).
        self.native_tls: set[ListenKey] = set()
        self.conns: set[HttpConnection] = set()
        self.n_conns = 0
        # Overload (``make_room``): idle connections found by the last scan, the longest
        # idle last, and until when a scan that found none is not repeated.
        self._idle_reserve: list[HttpConnection] = []
        self.no_idle_until = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None
        self._closed = False

    async def apply(self, snapshot: Snapshot) -> dict[tuple[str, int], str]:
        """Serve ``snapshot``: swap it in, bind new ports, close removed ones.

        Returns ``{(address, port): reason}`` for ports that could not be bound; the
        other ports serve regardless."""
        self.tls_routes.apply(snapshot)  # TLS listener contexts, before new connections
        self.holder.swap(snapshot)
        if snapshot.endpoints is not None:
            # Upstream connections to endpoints that left the configuration drain.
            self.pool.retain(snapshot.endpoints)
        loop = asyncio.get_running_loop()
        self._start_sweeper(loop)
        failed: dict[tuple[str, int], str] = {}
        wanted = set(snapshot.ports)
        # A port whose socket turns from plain to the loop's TLS (HTTP to HTTPS, or an
        # HTTPS port gaining or losing TLS listeners) or back needs a new server; it
        # listens on the same socket (``ListeningSockets``), so nothing is bound again.
        flipped = [
            key
            for key in self.servers
            if key in wanted and (key in self.native_tls) != _native_tls(snapshot.ports[key])
        ]
        self._close_ports(flipped)
        for key in sorted(wanted & self.servers.keys()):
            # Kept sockets: certificates change in place; a plain socket whose port turns
            # HTTPS-and-TLS gets a PortTLS (or loses it) without being re-bound.
            if _is_https(snapshot.ports[key]):
                self._update_tls(key, snapshot.ports[key])
            else:
                self.terminators.pop(key, None)
        for key in sorted(wanted - self.servers.keys()):
            address, port = key
            label = host_port(address, port)
            lp = snapshot.ports[key]
            ssl_ctx: ssl.SSLContext | None = None
            if _is_https(lp):
                tls = self._update_tls(key, lp)
                if not tls.serving and lp.tls_table is None:
                    del self.terminators[key]
                    failed[key] = "TLS: no listener of this port has a usable certificate"
                    log.error("%s: %s", label, failed[key])
                    continue
                if _native_tls(lp):
                    ssl_ctx = tls.base
            try:
                sock = self.sockets.open(key)
                factory = self._factory(key, label, tls=ssl_ctx is not None)
                handshake_timeout = self.options.header_timeout if ssl_ctx else None
                try:
                    server: _Server
                    if self.sockets.shared:
                        # Workers share the socket: each takes one per wake-up, and
                        # they balance on open connections (``proxy/acceptor.py``).
                        server = SharedAcceptor(
                            loop,
                            sock,
                            factory,
                            self.tasks,
                            ssl_context=ssl_ctx,
                            handshake_timeout=handshake_timeout,
                            balance=self.balance,
                            load=self.load,
                        )
                    else:
                        server = await loop.create_server(
                            factory,
                            sock=sock,
                            backlog=BACKLOG,
                            ssl=ssl_ctx,
                            ssl_handshake_timeout=handshake_timeout,
                        )
                except BaseException:
                    sock.close()  # this server's descriptor; the port's socket stays
                    raise
            except OSError as exc:
                failed[key] = f"cannot bind {label}: {exc.strerror or exc}"
                if not isinstance(exc, NotHanded):  # the supervisor logged its own failure
                    log.error("%s", failed[key])
                self.terminators.pop(key, None)
                continue
            self.servers[key] = server
            if ssl_ctx is not None:
                self.native_tls.add(key)
        removed = [key for key in self.servers if key not in wanted]
        self._close_ports(removed)
        if self.sockets.binds:
            # A port no server uses any more (removed, or its TLS failed) is unbound.
            self.sockets.retain(self.servers)
        if removed or flipped:
            await asyncio.sleep(0)  # let the listening sockets close
        return failed

    def _update_tls(self, key: ListenKey, lp: ListenerPort) -> PortTLS:
        """TLS termination of an HTTPS port: create or update its ``PortTLS`` (the
        listening socket stays; the SNI callback reads the new certificates from the
        next handshake on).  A listener whose context cannot be built is logged and left
        out (the status computation checked every pair already); the others serve."""
        tls = self.terminators.get(key)
        if tls is None:
            metrics = self.metrics
            hook = metrics.tls_handshake_error if metrics is not None else None
            tls = self.terminators[key] = PortTLS(f"{key[0]}:{key[1]}", hook)
        for problem in tls.update(lp.terminate):
            log.error("TLS on %s:%d: %s", key[0], key[1], problem)
        return tls

    def _close_ports(self, keys: list[ListenKey]) -> None:
        for key in keys:
            self.servers.pop(key).close()
            self.terminators.pop(key, None)
            self.native_tls.discard(key)
            for c in list(self.conns):
                if c.key == key:
                    c.shutdown()
            self.tls_routes.shutdown_port(key)

    def _factory(self, key: ListenKey, label: str, *, tls: bool) -> Callable[[], asyncio.Protocol]:
        if not tls:

            def accept() -> asyncio.Protocol:
                # The port's protocol in the current snapshot decides, per accepted
                # connection (one dict lookup), so a port turning from HTTP to TLS keeps
                # its socket.
                lp = self.holder.current.ports.get(key)
                if lp is not None and (lp.protocol == TLS_PROTOCOL or lp.tls_table is not None):
                    # protocol TLS (TLSRoute), alone or next to HTTPS listeners: ClientHello,
                    # SNI, then passthrough, terminate, or HTTPS (``https_connection``).
                    return self.tls_routes.connection(key, label)
                return HttpConnection(self, key, label)

            return accept

        def terminated() -> HttpConnection:
            return self.https_connection(key, label)

        return terminated

    def https_connection(self, key: ListenKey, label: str) -> HttpConnection:
        """The protocol of a terminated HTTPS connection; its transport's ``ssl_object``
        is a ``TerminatedSSLObject`` of the port's ``PortTLS``."""
        conn = HttpConnection(self, key, label)
        conn.sni = ""
        conn.scheme = b"https"
        return conn

    def bound(self) -> set[tuple[str, int]]:
        return set(self.servers)

    def load(self) -> int:
        """Open client connections, counting those still in their TLS handshake (an
        accept task each): what workers balance on."""
        return self.n_conns + len(self.tasks)

    def buffered_bytes(self) -> int:
        """Bytes the proxy holds right now (write buffers and held bodies); for tests
        and debugging, not the hot path."""
        total = self.pool.buffered_bytes() + self.tls_routes.buffered_bytes()
        for c in self.conns:
            total += c.held
            if not c.closed:
                total += c.transport.get_write_buffer_size()
        return total

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting, let in-flight requests and open TLS splices finish for up to
        ``drain_timeout`` seconds, close everything else."""
        self._closed = True
        if self.balance is not None:
            self.balance.stop()  # the other workers take every new connection now
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        self.sockets.close()
        self.terminators.clear()
        self.native_tls.clear()
        for c in list(self.conns):
            c.shutdown()
        self.tls_routes.stop_accepting()
        if (self.conns or self.tls_routes.busy()) and drain_timeout > 0:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await self._drained.wait()
        for c in list(self.conns):
            c.abort()
        await self.tls_routes.close()
        self.pool.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.access is not None:
            self.access.flush()
        await asyncio.sleep(0)

    def connection_gone(self) -> None:
        if self._drained is not None and not self.conns and not self.tls_routes.busy():
            self._drained.set()

    def make_room(self) -> bool:
        """At --max-connections: close the longest-idle keep-alive connection so that a
        new client is served, as Envoy's overload manager does by shrinking idle
        timeouts under pressure; False when no connection is idle (between requests,
        nothing in flight).

        Off the hot path: only a connection over the limit scans.  One scan keeps every
        idle connection it found, oldest last, for the next ones; a scan that finds
        none is not repeated for ``NO_IDLE_RESCAN`` seconds or until a connection turns
        idle, so a flood of new clients against busy connections does not cost one scan
        of every connection per client."""
        reserve = self._idle_reserve
        scanned = False
        while True:
            while reserve:
                c = reserve.pop()
                if c.deadline_kind == D_IDLE and not c.closed and c.active is None:
                    log.debug("at --max-connections: closing the longest-idle connection")
                    c.evict()
                    return True
            now = time.monotonic()
            if scanned or now < self.no_idle_until:
                return False
            scanned = True
            idle = [
                c
                for c in self.conns
                if c.deadline_kind == D_IDLE and not c.closed and c.active is None
            ]
            if not idle:
                self.no_idle_until = now + NO_IDLE_RESCAN
                return False
            # The idle deadline is "idle since" plus one constant: the earliest deadline
            # is the longest idle.
            idle.sort(key=_deadline, reverse=True)
            self._idle_reserve = reserve = idle

    # ------------------------------------------------------------------ deadlines

    def _start_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep, loop)

    def _sweep_interval(self) -> float:
        o = self.options
        timeouts = [o.idle_timeout, o.header_timeout]
        # The default route timeout and the stream idle timeout are checked here too
        # (a quarter of the shortest timeout: it fires at most 25% late).
        timeouts += [t for t in (o.route_timeout, o.stream_idle_timeout) if t > 0]
        return max(0.01, min(1.0, *(t / 4 for t in timeouts)))

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        idle_timeout = self.options.stream_idle_timeout
        # What make_room found idle is stale by now, and would keep closed connections
        # alive.
        self._idle_reserve = []
        try:
            for c in list(self.conns):
                d = c.deadline
                ex = c.active
                if d and now >= d:
                    try:
                        c.on_deadline()
                    except Exception:
                        log.exception("connection deadline handling failed")
                        c.abort()
                elif ex is not None:
                    try:
                        ex.check_deadlines(now, idle_timeout)
                    except Exception:
                        log.exception("request deadline handling failed")
                        c.abort()
            self.pool.sweep(now, self.options.idle_timeout)
            for splices in self.splice_sets:
                if splices:
                    close_idle(splices, now, self.options.tcp_idle_timeout)
            if self.access is not None:
                self.access.flush_due()
        finally:
            self._start_sweeper(loop)
