"""The protocol-neutral request logic: one ``Exchange`` per request, from its head to
its last byte, with no wire bytes (``codec.py`` is the seam).

Phases, in order: route once when the head is complete and the request is next in line
(``on_start``: listener, path normalization, 421 check, table lookup), then the rule's
filters (CORS preflight, redirect, direct response, header modifiers, rewrite), the
forwarding headers (hop-by-hop removed, X-Forwarded-*, request id), mirrors, the
backend pick and its tries (pooled stream or a new connection; retries with backoff; a
reused connection the backend had closed is tried once more on a new one), the
timeouts (per try, per request, Envoy's default route timeout and stream idle timeout,
checked by the proxy's sweep), the response (header modifiers, CORS, request id) and
the access log and metrics, exactly once.

What the exchange talks to: its ``ServerStream`` (the client side: ``h1_server`` or
``h2_server``) and, per try, a ``ClientStream`` (``h1_client`` or ``h2_client``) from
the pool.  Local replies are ``(status, headers, body)``; the server codec renders
them.  Flow control is per stream: a slow upstream read-disables this stream only
(``RD_UPSTREAM``), a slow client read-disables the upstream stream
(``on_down_write_pause``), held body bytes are accounted with ``hold`` /
``release_held``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import httptools

from gatewayd.proxy.filters import (
    apply_header_ops,
    cors_preflight,
    cors_response_headers,
    redirect_location,
    rewrite_path,
)
from gatewayd.proxy.forwarded import (
    HOP_BY_HOP,
    HOP_BY_HOP_AND_EXPECT,
    forward_clean,
    forward_clean_wire,
    forward_fields,
    strip_hop_by_hop,
    strip_hop_by_hop_set,
)
from gatewayd.proxy.grpc import (
    DEADLINE_EXCEEDED,
    grpc_status_for,
    is_grpc,
    parse_grpc_timeout,
    trailers_only,
)
from gatewayd.proxy.http.codec import (
    HTTP_2,
    HTTP_11,
    RD_UPSTREAM,
    ClientStream,
    Headers,
    RequestHead,
    ResponseHead,
    ServerStream,
    UpstreamProtocolError,
    WireRequestHead,
    request_head,
    te_for_h2,
)
from gatewayd.proxy.http.h1_client import endpoint_key
from gatewayd.proxy.http.h2_client import StreamRefused
from gatewayd.proxy.http.session import SessionUse
from gatewayd.proxy.http.session import lookup as session_lookup
from gatewayd.proxy.http.session import response_field as session_field
from gatewayd.proxy.localreply import (
    DNS_RESOLUTION_FAILURE,
    DOWNSTREAM_PROTOCOL_ERROR,
    NO_HEALTHY_UPSTREAM,
    RETRY_LIMIT_EXCEEDED,
    UPSTREAM_CONNECT_FAILURE,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
    ReplyKind,
)
from gatewayd.proxy.pathnorm import PathError, needs_normalizing, normalize_path, split_target
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.table import MEMO_MISS, HTTPRouteTable

if TYPE_CHECKING:
    from gatewayd.proxy.balancer import EndpointState
    from gatewayd.proxy.server import Proxy
    from gatewayd.routing.snapshot.backends import EndpointAddress
    from gatewayd.routing.snapshot.compiled import ListenerPort
    from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, HeaderOps

log = logging.getLogger("gatewayd.proxy.server")

# A request body is kept for replay (retry, reused-connection retry, mirrors) while it
# is at most this big.
MAX_REPLAY: Final = 64 * 1024
MIRROR_TIMEOUT: Final = 10.0
# Metrics records (metrics.ExchangeRecord) that wait before they are counted together.
METRICS_BATCH: Final = 256


# Local replies.  Flags and metric reasons follow localreply's table (Envoy's response
# flags); the status is chosen by the caller.
LR_NO_ROUTE = ReplyKind("NR", "no_route", 404, b"route not found")
LR_NO_HEALTHY = NO_HEALTHY_UPSTREAM
LR_CONNECT_FAIL = UPSTREAM_CONNECT_FAILURE
LR_DNS_FAIL = DNS_RESOLUTION_FAILURE
LR_RESET = UPSTREAM_RESET
LR_UPSTREAM_PROTOCOL = UPSTREAM_PROTOCOL_ERROR
LR_TIMEOUT = UPSTREAM_TIMEOUT
LR_RETRY_LIMIT = RETRY_LIMIT_EXCEEDED
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

ERRORS_BY_STATUS: Final = {
    400: LR_BAD,
    431: LR_HEAD_TOO_BIG,
    408: LR_HEAD_TIMEOUT,
    500: LR_INTERNAL,
}
_ERRORS_BY_STATUS = ERRORS_BY_STATUS


def _upstream_status_kind(status: int) -> ReplyKind:
    """A GRPCRoute backend's non-200 answer, as a local reply (no flag: the backend
    answered)."""
    return ReplyKind("", "", status, b"upstream answered HTTP %d" % status)


def _header(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


def _set_host(headers: Headers, host: bytes) -> None:
    """The first Host field of ``headers`` becomes ``host`` (one is added if none): an
    absolute-form target's authority, a URLRewrite hostname."""
    for i, (n, _) in enumerate(headers):
        if n == b"host":
            headers[i] = (b"host", host)
            return
    headers.append((b"host", host))


_perf = time.perf_counter  # module-level: one global lookup on the request path
_new_head = RequestHead.__new__


class HeaderView(Mapping[str, str]):
    """The request fields as the route table reads them (``str`` name -> value, repeated
    fields joined with ","), built on the first read: most tables match on host and
    path alone, and building the dict cost ~0.7 us per request of six fields
    (bench_h1_inproc)."""

    __slots__ = ("_map", "_raw")

    def __init__(self, headers: Headers) -> None:
        self._raw = headers
        self._map: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        m: dict[str, str] = {}
        for n, v in self._raw:
            k = n.decode("latin-1")
            s = v.decode("latin-1")
            if k in m:
                m[k] = m[k] + "," + s
            else:
                m[k] = s
        self._map = m
        return m

    def __getitem__(self, key: str) -> str:
        m = self._map
        return (m if m is not None else self._build())[key]

    def get(self, key: str, default: Any = None) -> Any:
        m = self._map
        return (m if m is not None else self._build()).get(key, default)

    def __contains__(self, key: object) -> bool:
        m = self._map
        return key in (m if m is not None else self._build())

    def __iter__(self) -> Iterator[str]:
        m = self._map
        return iter(m if m is not None else self._build())

    def __len__(self) -> int:
        m = self._map
        return len(m if m is not None else self._build())


# Host field values seen lately -> ``_host_only`` of them: a keep-alive client sends
# the same Host on every request, and the dict hit costs ~0.05 us against ~0.3 us.
# Bounded (the values are the client's): at most HOST_CACHE_SIZE values of at most
# HOST_CACHE_LEN bytes, emptied when full.
HOST_CACHE_SIZE: Final = 1024
HOST_CACHE_LEN: Final = 255
_host_cache: dict[bytes, str] = {}

# Origin-form request targets seen lately -> (path, query) as bytes and as ``str``, for
# targets whose path needs no normalizing and that carry no fragment: a client asks for
# the same few targets again and again, and the dict hit costs ~0.03 us against ~0.37
# us for the split, the normalization scan and the two decodes (timeit).  Bounded like
# the Host cache (the targets are the client's).
TARGET_CACHE_SIZE: Final = 1024
TARGET_CACHE_LEN: Final = 255
_target_cache: dict[bytes, tuple[bytes, bytes, str, str]] = {}

# The request fields as a table that matches on host and path alone is given them.
_NO_FIELDS: Final[Mapping[str, str]] = MappingProxyType({})

# Method tokens as ``str`` for the route table, without a decode per request.
_METHODS: Final = {
    m.encode("ascii"): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
}


def _host_key(host: bytes) -> str:
    """``_host_only`` through the bounded cache."""
    h = _host_cache.get(host)
    if h is None:
        h = _host_only(host)
        if len(host) <= HOST_CACHE_LEN:
            if len(_host_cache) >= HOST_CACHE_SIZE:
                _host_cache.clear()
            _host_cache[host] = h
    return h


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


# RequestHeaderModifier objects seen lately -> the HTTP/1.1 lines of the fields they
# append, or None when they also remove or set fields (which needs the field list):
# a rule's modifier is a frozen object of the snapshot, its lines made once.  Keyed by
# id() with the object kept in the entry (so an id is not reused while its entry
# exists); emptied when full (old snapshots' objects after many reloads).
ADDED_LINES_SIZE: Final = 4096
_added_lines: dict[int, tuple[HeaderOps, bytes | None]] = {}


def _add_only_lines(ops: HeaderOps) -> bytes | None:
    """The field lines ``ops`` appends when it only adds fields (None otherwise),
    through the bounded cache: the fields are the filter's own (``apply_header_ops``
    on no fields), so their bytes are those the general path sends."""
    known = _added_lines.get(id(ops))
    if known is not None and known[0] is ops:
        return known[1]
    lines: bytes | None = None
    if not ops.remove and not ops.set:
        fields: Headers = []
        apply_header_ops(fields, ops)
        lines = b"".join(b"%s: %s\r\n" % f for f in fields)
    if len(_added_lines) >= ADDED_LINES_SIZE:
        _added_lines.clear()
    _added_lines[id(ops)] = (ops, lines)
    return lines


class Exchange:
    """One request/response on a server stream, from its head to its last byte (the
    ``StreamCallbacks`` of that stream, and the ``ClientCallbacks`` of each upstream
    try)."""

    __slots__ = (
        "attempt",
        "backend",
        "budget_state",
        "bytes_received",
        "bytes_sent",
        "conn",
        "deadline",
        "down_paused",
        "ejected",
        "endpoint",
        "ep_state",
        "finished",
        "flags",
        "head",
        "headers",
        "host",
        "listener",
        "method",
        "mirror_head",
        "mirrors",
        "pending",
        "pending_size",
        "port",
        "progress",
        "raw_response",
        "replay",
        "replay_size",
        "req_trailers",
        "request_complete",
        "request_id",
        "response_done",
        "response_started",
        "retries_left",
        "retry_handle",
        "reuse_retried",
        "reused",
        "route_wait",
        "rule",
        "sending",
        "session",
        "start",
        "status",
        "still_since",
        "stream",
        "t0",
        "timer_total",
        "timer_try",
        "trace_parent",
        "traceparent",
        "try_start",
        "up_time",
        "upgrade",
        "upstream",
        "upstream_head",
        "upstream_ms",
    )

    def __init__(self, stream: ServerStream, head: RequestHead) -> None:
        self.stream = stream
        self.conn = stream.conn
        self.head = head
        # Read often: kept here (one attribute load instead of two).
        self.headers = head.headers
        self.method = head.method
        self.request_complete = head.end_stream
        self.req_trailers: Headers | None = None
        self.down_paused = False
        self.bytes_received = 0
        # The body received before it can be sent, and the body kept for a retry or a
        # mirror (None: too long to keep).  Most requests have none: an empty tuple
        # until the first body bytes (``on_data``), two list allocations less per
        # request (~0.05 us).
        self.pending: list[bytes] | tuple[bytes, ...] = ()
        self.pending_size = 0
        self.replay: list[bytes] | tuple[bytes, ...] | None = ()
        self.replay_size = 0
        self.start = 0.0
        # perf_counter at routing: request durations (metrics, spans, access log).  The
        # loop's clock (``start``, deadlines) moves in whole milliseconds under uvloop.
        self.t0 = 0.0
        self.port: ListenerPort | None = None
        self.rule: CompiledRule | None = None
        self.backend: CompiledBackend | None = None
        self.endpoint: EndpointAddress | None = None
        # Session persistence of the chosen backend (rules with ``sticky`` only).
        self.session: SessionUse | None = None
        # The endpoint's balancing state while a try is in flight there (its
        # ``active`` count includes this request), and whether a failure of this
        # request ejected it (access log flag OE).
        self.ep_state: EndpointState | None = None
        self.ejected = False
        self.host = ""
        self.upstream: ClientStream | None = None
        self.upstream_head: RequestHead | None = None
        self.sending = False
        self.reused = False
        self.reuse_retried = False
        self.attempt = 0
        self.retries_left = 0
        # Retry budget (retrybudget.py): 0 not counted, 1 active, 2 active and retrying.
        self.budget_state = 0
        self.retry_handle: asyncio.TimerHandle | None = None
        self.timer_try: asyncio.TimerHandle | None = None
        self.timer_total: asyncio.TimerHandle | None = None
        self.try_start = 0.0
        self.upstream_ms = -1.0
        self.mirrors: list[CompiledBackend] | None = None
        self.mirror_head: RequestHead | None = None
        self.request_id: bytes | None = None
        self.listener = ""  # the Gateway listener the route was found through
        self.traceparent: bytes | None = None  # sent upstream (W3C Trace Context)
        self.trace_parent = b""  # the incoming traceparent's parent id, if valid
        self.response_started = False
        self.response_done = False
        self.status = 0
        self.bytes_sent = 0
        self.flags = ""
        self.finished = False
        # The default route timeout is a deadline the connection sweep checks, not a
        # timer handle: under uvloop, call_later + cancel costs about 2.2 us against
        # 0.07 us for these stores (measured; ~4% of a 50 us request), and a sweep
        # interval of precision is plenty for 15 s.
        self.route_wait = 0.0  # armed at the end of the request (0: not applied)
        self.deadline = 0.0  # when it fires (0: not armed)
        # Upgrade or CONNECT: a long-lived stream, no route timeout.
        self.upgrade = head.protocol is not None or head.method == b"CONNECT"
        # Stream idle timeout, sampled by the sweep: what had moved at ``still_since``.
        self.progress: tuple[int, int, bool, int] | None = None
        self.still_since = 0.0
        # Seconds from the try's start to the end of the upstream response, counted in
        # the metrics with the request (``_record``); negative: none to count.
        self.up_time = -1.0
        # ``ClientCallbacks.raw_response``: the response head may come as raw field
        # lines (``ResponseHead.raw``); set at routing from the rule's ``raw`` flag (a
        # store here against a property call of six tests per response, ~0.1 us).
        self.raw_response = False

    # ------------------------------------------------------------------ request body

    def on_data(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        replay = self.replay
        if replay is not None:
            if self.replay_size + n <= MAX_REPLAY:
                if isinstance(replay, list):
                    replay.append(data)
                else:
                    self.replay = [data]  # the first body bytes
                self.replay_size += n
            else:
                self.replay = None
        if self.response_done or self.finished:
            return  # answered already: the rest of the body is read and dropped
        up = self.upstream
        if up is not None and self.sending:
            up.send_data(data)
        else:
            pending = self.pending
            if isinstance(pending, list):
                pending.append(data)
            else:
                self.pending = [data]
            self.pending_size += n
            self.stream.hold(n)

    def on_end(self, trailers: Headers | None) -> None:
        if self.request_complete:
            # A head without a body (``end_stream``: complete when it came, so no
            # trailers): routing already did what the end of a request asks for (the
            # route deadline armed, mirrors fired, the upstream request ended with its
            # head).  Only a response done before now still waits for it: the usual
            # GET skips the tests below.
            if self.response_done and not self.finished:
                self._finish()
            return
        self.request_complete = True
        self.req_trailers = trailers
        if self.finished:
            return
        if self.route_wait and not self.head.end_stream:
            # Envoy's route timeout is "the amount of time that Envoy will wait for the
            # upstream to respond with a complete response.  This timeout does not
            # start until the entire downstream request stream has been received": a
            # long upload is not cut.  (A request without a body was complete when it
            # was routed, which armed the deadline then.)
            self.deadline = self.conn.loop.time() + self.route_wait
        if self.mirrors:
            self._fire_mirrors()
        if not self.response_done:
            up = self.upstream
            # A request without a body (end_stream head) was ended with its head: a
            # second end would be a protocol error on an HTTP/2 stream.
            if up is not None and self.sending and not self.head.end_stream:
                up.send_end(trailers)
            return
        self._finish()

    # ------------------------------------------------------------------ routing

    def on_start(self) -> None:
        """Route the request (its head is complete and it is next in line)."""
        # The routing itself in this ``try`` (not a method of its own that this one
        # calls): a Python call less per request (~50 ns, timeit); a ``try`` costs
        # nothing until something raises (3.11).
        try:
            conn = self.conn
            proxy = conn.proxy
            self.start = conn.loop.time()
            self.t0 = _perf()
            if proxy.metrics is not None:
                proxy.metrics.rq_active += 1  # _record takes it back
            snapshot = proxy.holder.current
            port_for = conn.port_for
            lp = port_for(snapshot) if port_for is not None else snapshot.ports.get(conn.key)
            if lp is None:
                # The port left the configuration while this connection was open.
                self._local(404, LR_NO_ROUTE, close=True)
                return
            self.port = lp
            headers = self.headers
            head = self.head
            url = head.target
            path_policy = proxy.options.path
            path: str | None = None
            # Only origin-form targets are kept in the cache: a hit needs no form test.
            cached = _target_cache.get(url)
            if cached is not None:
                path_b, query_b, path, query = cached
                host_b = head.authority
            elif url[:1] == b"/":
                path_b, query_b = split_target(url, strip_fragment=path_policy.strip_fragment)
                host_b = head.authority
            elif url == b"*":
                path_b, query_b, host_b = b"*", b"", head.authority
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
                _set_host(headers, host_b)
                head.authority = host_b
            if path is not None:
                pass  # a target of the cache: already normal, its pieces decoded
            elif path_policy.active and needs_normalizing(path_b) is not None:
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
            elif url[:1] == b"/" and len(url) <= TARGET_CACHE_LEN and b"#" not in url:
                # Origin-form, nothing to normalize (or no normalizing) and no fragment: its
                # pieces are the same under every path policy, so the next request for it
                # takes them from the cache.  Without normalizing, the scan decides.
                path = path_b.decode("latin-1")
                query = query_b.decode("latin-1")
                if path_policy.active or needs_normalizing(path_b) is None:
                    if len(_target_cache) >= TARGET_CACHE_SIZE:
                        _target_cache.clear()
                    _target_cache[url] = (path_b, query_b, path, query)
            # ``_host_key``'s cache hit inlined (a call less).
            host = _host_cache.get(host_b) if host_b else ""
            if host is None:
                host = _host_key(host_b)
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
            if path is None:
                path = path_b.decode("latin-1")
                query = query_b.decode("latin-1")
            table = lp.table
            memo = table.memo if type(table) is HTTPRouteTable else None
            if memo is not None:
                # A table where host and path alone decide: its memo's hit inlined (a call,
                # the method's str and the field view less; ~0.45 us less than the walk for
                # make bench's route, timeit).
                hit = memo.get((host, path), MEMO_MISS)
                if hit is MEMO_MISS:  # the walk, which keeps its answer in the memo
                    method = _METHODS.get(self.method) or self.method.decode("latin-1")
                    hit = table.lookup(host, method, path, query, _NO_FIELDS)
            else:
                method = _METHODS.get(self.method) or self.method.decode("latin-1")
                hit = table.lookup(host, method, path, query, HeaderView(headers))
            if hit is None:
                self._local(404, LR_NO_ROUTE)
                return
            rule = hit.rule
            self.rule = rule
            self.listener = hit.listener_name
            if rule.raw and not self.upgrade and head.version != HTTP_2:
                # ``raw_response``: nothing on the response side reads or changes its
                # fields (the rule's ``raw``: a ``plain`` rule, which rules out CORS,
                # sessions, retries on status codes and GRPCRoute, and no
                # ResponseHeaderModifier on the rule or its backendRef) and the client
                # speaks HTTP/1.x, whose codec writes the lines as they are.
                self.raw_response = True
            if rule.plain and head.authority is not None:
                self._forward_plain(rule, path_b, query_b)
                return

            cors = rule.cors
            if cors is not None and self.method == b"OPTIONS":
                origin = _header(headers, b"origin")
                acrm = _header(headers, b"access-control-request-method")
                if origin is not None and acrm is not None:
                    acrh = _header(headers, b"access-control-request-headers") or b""
                    # Answered here whatever the origin: a denied one gets the 200
                    # without CORS fields (HTTPRouteCORS, "non-matching origin").
                    self._local(200, LR_CORS, extra=cors_preflight(cors, origin, acrm, acrh))
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
            # Keep-Alive, TE, Transfer-Encoding, Upgrade, ...) are not forwarded; the
            # forwarding headers are set in the same walk over the fields.
            fwd = self._forward_fields()
            if rule.request_headers is not None:
                apply_header_ops(fwd, rule.request_headers)
            rewrite = rule.rewrite
            if rewrite is not None:
                if rewrite.path is not None:
                    path_b = rewrite_path(rewrite.path, path, hit.prefix).encode("latin-1")
                if rewrite.hostname is not None:
                    _set_host(fwd, rewrite.hostname.encode("latin-1"))
            if head.authority is None and _header(fwd, b"host") is None:
                # HTTP/1.0 without Host: RFC 9112 3.2 "If the authority component is missing
                # or undefined for the target URI, then a client MUST send a Host header
                # field with an empty field value."
                fwd.append((b"host", b""))
            target = path_b + b"?" + query_b if query_b else path_b

            if rule.mirrors:
                rnd = random.random
                chosen = [
                    m.backend for m in rule.mirrors if m.fraction >= 1.0 or rnd() < m.fraction
                ]
                if chosen:
                    self.mirrors = chosen
                    # Mirrors get the request as the rule's filters left it (backendRef
                    # filters belong to the main backend).
                    self.mirror_head = RequestHead(self.method, target, list(fwd))

            backends = rule.backends
            if rule.sticky:
                # Session persistence: a valid token names the backend and endpoint; else
                # the normal pick, and the response carries a new token.
                backend: CompiledBackend | None = self._session_backend(rule)
            elif len(backends) == 1 and rule.total_weight > 0:
                # One backendRef (the common case): what pick_backend returns, without a
                # random draw and a call (~0.25 us).
                backend = backends[0]
            else:
                # Weighted, and a backendRef whose endpoints are all ejected (or that has
                # none) gives its share to the others (balancer.py).
                backend = proxy.health.choose_backend(rule, random.random(), self.start)
            if backend is None:
                self._local(500, LR_DIRECT)
                return
            self.backend = backend
            if backend.invalid_status is not None:
                self._local(backend.invalid_status, LR_INVALID)
                return
            if backend.request_filters:
                # backendRef-level RequestRedirect, URLRewrite, RequestMirror
                # (HTTPRouteBackendRequestRedirect, HTTPRouteBackendURLRewrite): one
                # attribute test for the requests of other backends.
                target = self._backend_filters(backend, fwd, target, path, query, host, hit.prefix)
                if not target:
                    return
            if backend.request_headers is not None:
                apply_header_ops(fwd, backend.request_headers)
            if backend.http2:
                # The hop-by-hop policy is the upstream codec's: RFC 9113 8.2.2 lets one
                # connection-specific field into HTTP/2, "TE ... MUST NOT contain any value
                # other than trailers" (gRPC servers require it).  Only requests to such
                # backends pay this scan.
                te = _header(headers, b"te")
                if te is not None and te_for_h2(te) is not None:
                    fwd.append((b"te", b"trailers"))
            # The client codec frames the body: a known length passes through, anything
            # else is re-chunked as it arrives (with the codings the client applied).
            self.upstream_head = request_head(
                self.method,
                target,
                fwd,
                head.body_length,
                head.end_stream,
                head.transfer_codings,
            )

            loop = conn.loop
            timeout = rule.request_timeout
            if rule.route_kind == "GRPCRoute":
                # grpc-timeout bounds the call from its start, like Envoy's
                # max_grpc_timeout: the smaller of it and the route timeout applies.
                gt = _header(headers, b"grpc-timeout")
                grpc_wait = parse_grpc_timeout(gt) if gt is not None else None
                if grpc_wait is not None:
                    limit = timeout if timeout else proxy.options.route_timeout
                    if not limit or grpc_wait < limit:
                        timeout = grpc_wait or 1e-9  # "0n" is already due
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
                proxy.retry_budget.enter(backend.name)
                self.budget_state = 1
            if self.request_complete and self.mirrors:
                self._fire_mirrors()
            self._try(False)
        except Exception:
            log.exception("request handling failed")
            self._local(500, LR_INTERNAL, close=True)

    def _forward_fields(self) -> Headers:
        """The request's fields as forwarded: hop-by-hop fields dropped, the forwarding
        fields (X-Forwarded-For, X-Envoy-External-Address, X-Forwarded-Proto,
        X-Request-Id, traceparent) set in the same walk; the ids kept for the log."""
        conn = self.conn
        proxy = conn.proxy
        options = proxy.options
        if self.head.forward_clean:
            # No field the walk would drop or replace (the codec checked each):
            # ``forward_fields``' result without its walk (~0.5 us less, timeit).
            fwd, self.request_id, self.traceparent = forward_clean(
                self.headers,
                conn.peer_ip,
                conn.scheme,
                conn.client_cert,
                proxy.trace_flags,
                options.trace_sample,
            )
            return fwd
        fwd, self.request_id, self.traceparent, self.trace_parent = forward_fields(
            self.headers,
            conn.peer_ip,
            conn.scheme,
            conn.client_cert,
            # ``Expect: 100-continue`` is answered here (send_continue), never forwarded.
            HOP_BY_HOP_AND_EXPECT if self.head.expect_continue else HOP_BY_HOP,
            options.xff_trusted_hops,
            options.preserve_request_id,
            proxy.trace_flags,
            options.trace_sample,
        )
        return fwd

    def _forward_plain(self, rule: CompiledRule, path_b: bytes, query_b: bytes) -> None:
        """The lean lane of ``on_start`` for a ``rule.plain`` rule (routing/snapshot/
        rules.py: one HTTP/1.1 backendRef, no filter but RequestHeaderModifier, no
        retry, mirror, session or timeouts) and a request with a Host: what the general
        path does for such a request, without the tests and calls of what the rule
        does not have.  The pooled try is ``_try`` inlined for a backend with one
        endpoint; anything else goes through ``_try``."""
        conn = self.conn
        proxy = conn.proxy
        head = self.head
        options = proxy.options
        ops = rule.request_headers
        # The lines of the fields the rule's RequestHeaderModifier appends (b"": no
        # modifier; None: it removes or sets fields, which needs the list).
        added: bytes | None = b""
        if ops is not None:
            known = _added_lines.get(id(ops))  # ``_add_only_lines``' hit inlined
            added = known[1] if known is not None and known[0] is ops else _add_only_lines(ops)
        if head.forward_clean and added is not None and not self.upgrade:
            # The clean lane: the client's fields are forwarded as they are and what
            # follows them (forwarding fields, ids, the rule's added fields) is final
            # here, so it is made as HTTP/1.1 lines at once and the client codec writes
            # both in one format (``WireRequestHead``): no list of the fields, no
            # header-ops call (make bench's route, which adds X-Bench: 1: 6% fewer
            # instructions per request, ~0.8 us, callgrind and perf_counter).
            # An upgrade adds its fields when it sends (``upgrade.py``): not here.
            self.request_id, self.traceparent, wire = forward_clean_wire(
                conn.peer_ip,
                conn.scheme,
                conn.client_cert,
                proxy.trace_flags,
                options.trace_sample,
                added,
            )
            up_head = self.upstream_head = _new_head(WireRequestHead)
            up_head.lead = self.headers
            up_head.wire = wire
        else:
            fwd = self._forward_fields()
            if ops is not None:
                apply_header_ops(fwd, ops)
            up_head = self.upstream_head = _new_head(RequestHead)
            up_head.headers = fwd
        backend = rule.backends[0]
        self.backend = backend
        # ``codec.request_head`` inlined (a call less).
        up_head.method = self.method
        up_head.target = path_b + b"?" + query_b if query_b else path_b
        up_head.authority = up_head.scheme = up_head.protocol = None
        up_head.version = HTTP_11
        up_head.body_length = head.body_length
        up_head.end_stream = head.end_stream
        up_head.expect_continue = up_head.forward_clean = False
        up_head.keep_alive = True
        up_head.transfer_codings = head.transfer_codings
        if not self.upgrade:
            # No ``timeouts``: Envoy's default route timeout (see ``on_start``).
            wait = options.route_timeout
            if wait:
                self.route_wait = wait
                if self.request_complete:
                    self.deadline = self.start + wait
        bal = backend.lb
        st = bal.single if bal is not None else None
        if st is None:
            self._try(False)  # the balancer picks (several endpoints, first request)
            return
        self.ep_state = st
        st.active += 1
        ep = st.endpoint
        self.endpoint = ep
        self.attempt = 1
        tls = backend.tls
        # ``endpoint_key`` inlined.
        up = proxy.pool.acquire((ep.address, ep.port, tls.key if tls is not None else ""))
        if up is not None:
            if head.end_stream and not self.down_paused:
                # ``_attach`` for a request without a body (its head ended it: no
                # trailers, nothing pending, no 100-continue to send; a queued request
                # whose body was read while it waited is not one) on the pooled
                # HTTP/1.1 connection of a plain rule (no per-try timeout), with bind
                # and send_head in one codec call: two calls less per request.  The
                # try starts in the routing callback: its loop time is ``start``.
                self.upstream = up
                self.reused = True
                self.try_start = self.start
                self.sending = True
                up.send_request(self, self.method == b"HEAD", up_head)
                return
            self._attach(up, True)
            return
        task = conn.loop.create_task(self._connect(ep, 1))
        proxy.tasks.add(task)
        task.add_done_callback(proxy.tasks.discard)

    def _session_backend(self, rule: CompiledRule) -> CompiledBackend | None:
        proxy = self.conn.proxy
        health = proxy.health
        start = self.start

        def available(ep: EndpointAddress) -> bool:
            # An ejected endpoint (outlier detection) moves the session.
            return health.is_available(ep.address, ep.port, start)

        now_ms = int(time.time() * 1000)
        use = session_lookup(proxy.sessions, rule.session_backends, self.headers, now_ms, available)
        if use is not None:
            self.session = use
            return use.backend
        backends = rule.backends
        backend = (
            backends[0]
            if len(backends) == 1 and rule.total_weight > 0
            else health.choose_backend(rule, random.random(), start)
        )
        if backend is not None and backend.session is not None:
            self.session = SessionUse(backend.session)
        return backend

    def _backend_filters(
        self,
        backend: CompiledBackend,
        fwd: list[tuple[bytes, bytes]],
        target: bytes,
        path: str,
        query: str,
        host: str,
        prefix: str | None,
    ) -> bytes:
        """The request target after the backendRef's URLRewrite (``fwd``'s Host
        rewritten in place), or b"" when its RequestRedirect answered the request; its
        RequestMirror copies join the rule's."""
        redirect = backend.redirect
        if redirect is not None:
            lp = self.port
            assert lp is not None
            location = redirect_location(
                redirect,
                scheme="http" if self.conn.sni is None else "https",
                host=host,
                port=lp.port,
                path=path,
                query=query,
                prefix=prefix,
            )
            self.mirrors = None  # the request is answered here, not forwarded
            self._local(
                redirect.status_code,
                LR_REDIRECT,
                extra=[(b"location", location.encode("latin-1"))],
            )
            return b""
        if backend.mirrors:
            rnd = random.random
            chosen = [m.backend for m in backend.mirrors if m.fraction >= 1.0 or rnd() < m.fraction]
            if chosen:
                self.mirrors = (self.mirrors or []) + chosen
                if self.mirror_head is None:
                    self.mirror_head = RequestHead(self.method, target, list(fwd))
        rewrite = backend.rewrite
        if rewrite is None:
            return target
        if rewrite.path is not None:
            path_b = rewrite_path(rewrite.path, path, prefix).encode("latin-1")
            target = path_b + b"?" + query.encode("latin-1") if query else path_b
        if rewrite.hostname is not None:
            _set_host(fwd, rewrite.hostname.encode("latin-1"))
        return target

    # ------------------------------------------------------------------ upstream tries

    def _try(self, fresh: bool) -> None:
        """Send the request to an endpoint: a pooled connection, else a new one."""
        self.retry_handle = None
        if self.finished:
            return
        backend = self.backend
        assert backend is not None
        proxy = self.conn.proxy
        if fresh:
            ep = self.endpoint
        else:
            prev = self.ep_state
            if prev is not None:
                prev.active -= 1  # the previous try's
            # One endpoint (the common case): taken without a call, since health
            # cannot change that choice (balancer.single_endpoint; ~0.25 us less per
            # request, bench_h1_inproc).  Else the balancer picks, and a retry goes
            # elsewhere when it can (the previous endpoint loses).  A session's pinned
            # endpoint is preferred while it is not ejected.
            bal = backend.lb
            st = bal.single if bal is not None else None
            if st is None:
                session = self.session
                pinned = session.pinned if session is not None else None
                st = proxy.health.pick(
                    backend,
                    self.start,
                    (pinned.address, pinned.port) if pinned is not None else None,
                    prev,
                )
            self.ep_state = st
            if st is None:
                self._local(503, LR_NO_HEALTHY)
                return
            st.active += 1
            ep = st.endpoint
        if ep is None:
            self._local(503, LR_NO_HEALTHY)
            return
        self.endpoint = ep
        self.attempt += 1
        if not fresh:
            key = endpoint_key(ep.address, ep.port, backend.tls)
            up = proxy.pool.acquire_h2(key) if backend.http2 else proxy.pool.acquire(key)
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
            up: ClientStream
            if backend.http2:
                up = await proxy.pool.connect_h2(
                    ep.address, ep.port, backend.name, backend.tls, resolve=backend.fqdn
                )
            else:
                up = await proxy.pool.connect(
                    ep.address, ep.port, backend.name, backend.tls, resolve=backend.fqdn
                )
        except (OSError, TimeoutError) as exc:
            if attempt != self.attempt or self.finished:
                return
            log.debug("connect to %s:%d failed: %s", ep.address, ep.port, exc)
            if proxy.metrics is not None:
                proxy.metrics.upstream_connect_fail(backend.name)
            if not isinstance(exc, socket.gaierror):
                # A name that does not resolve is not the endpoint's fault (Envoy does
                # not eject on DNS failures either).
                self._outlier_failure()
            session = self.session
            if session is not None and session.move():
                # The session's endpoint does not answer.  Data planes "SHOULD fall back
                # to available backends when the original backend is no longer serving,
                # reestablishing session persistence with a new backend" (GEP-1619):
                # nothing of the request was sent, so one more pick (another endpoint)
                # is safe; the response carries the new token.
                self._try(False)
                return
            if self._can_retry() and self._admit_retry():
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
                self.on_stream_lost(up, None, False)
                return
            self._attach(up, False)
        except Exception:
            log.exception("request handling failed")
            up.reset()
            if not self.finished:
                self._local(500, LR_INTERNAL, close=True)

    def _attach(self, up: ClientStream, reused: bool) -> None:
        self.upstream = up
        self.reused = reused
        up.bind(self, self.method == b"HEAD")
        conn = self.conn
        self.try_start = conn.loop.time()
        rule = self.rule
        assert rule is not None
        if rule.backend_request_timeout:
            self.timer_try = conn.loop.call_later(
                rule.backend_request_timeout, self._on_try_timeout
            )
        head = self.upstream_head
        assert head is not None
        body = self.pending
        if body:
            self.pending = ()
            self.stream.release_held(self.pending_size)
            self.pending_size = 0
        self.sending = True
        complete = self.request_complete
        trailers = self.req_trailers
        up.send_head(head, body, complete and not trailers)
        if complete and trailers:
            up.send_end(trailers)
        if self.down_paused:
            up.read_disable(RD_UPSTREAM)
        if self.head.expect_continue and not complete:
            self.stream.send_continue()

    def _outlier_failure(self) -> None:
        """The try at ``ep_state`` failed (connect failure, reset, 502/503/504)."""
        st = self.ep_state
        backend = self.backend
        if st is None or backend is None:
            return
        if self.conn.proxy.health.on_failure(st, backend, self.conn.loop.time()):
            self.ejected = True
            log.info(
                "outlier detection: %s ejected from %s until +%.0fs",
                host_port(st.address, st.port),
                backend.name,
                st.ejected_until - self.conn.loop.time(),
            )

    def _can_retry(self) -> bool:
        return self.retries_left > 0 and self.replay is not None and not self.response_started

    def _admit_retry(self) -> bool:
        """The retry budget's word on a retry ``_can_retry`` allows (retrybudget.py);
        counts the retry, or its refusal, in the metrics."""
        backend = self.backend
        assert backend is not None
        proxy = self.conn.proxy
        metrics = proxy.metrics
        if self.budget_state == 1:
            if not proxy.retry_budget.admit(backend.name):
                if metrics is not None:
                    metrics.upstream_retry(backend.name, "overflow")
                self.retries_left = 0
                return False
            self.budget_state = 2
        if metrics is not None:
            metrics.upstream_retry(backend.name, "retry")
        return True

    def _leave_budget(self) -> None:
        backend = self.backend
        if backend is not None:
            self.conn.proxy.retry_budget.leave(backend.name, self.budget_state == 2)
        self.budget_state = 0

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
            self.stream.release_held(self.pending_size)
        replay = self.replay
        assert replay is not None
        self.pending = list(replay)
        self.pending_size = self.replay_size
        self.stream.hold(self.replay_size)

    def _drop_upstream(self) -> None:
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.reset()
            self.stream.read_enable(RD_UPSTREAM)
        self.attempt += 1  # a connect in flight is now stale
        self._cancel_try_timer()

    def _cancel_try_timer(self) -> None:
        t = self.timer_try
        if t is not None:
            self.timer_try = None
            t.cancel()

    def _on_try_timeout(self) -> None:
        """``timeouts.backendRequest`` of one try: "the timeout for an individual
        request from the gateway to a backend", so a rule with ``retry`` tries again
        (Envoy's per_try_timeout); the last try's timeout is the 504."""
        self.timer_try = None
        if self.finished or self.response_done:
            return
        try:
            if self._can_retry() and self._admit_retry():
                self._drop_upstream()
                self._schedule_retry()
                return
        except Exception:
            log.exception("retry after a try timeout failed")
            self.stream.reset()
            return
        self._on_timeout()

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
                rule = self.rule
                if (
                    rule is not None
                    and rule.route_kind == "GRPCRoute"
                    and self.head.version == HTTP_2
                ):
                    # A gRPC response under way ends with trailers carrying the
                    # status, which the client reads as DEADLINE_EXCEEDED (a reset
                    # would read as CANCELLED or INTERNAL).
                    self.stream.send_end(_DEADLINE_TRAILERS)
                    self.response_done = True
                    self._finish()
                else:
                    self._abort_downstream()
            else:
                self._local(504, LR_TIMEOUT)
        except Exception:
            log.exception("timeout handling failed")
            self.stream.reset()

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
        mark = (
            self.bytes_received,
            self.bytes_sent,
            self.response_started,
            self.stream.write_buffer_size(),
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
                self._finish(close=True)
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
            self.stream.reset()

    # ------------------------------------------------------------------ upstream callbacks

    def on_response_head(self, conn: ClientStream, head: ResponseHead) -> None:
        if conn is not self.upstream or self.finished:
            return
        status = head.status
        st = self.ep_state
        if st is not None:
            if 502 <= status <= 504:
                self._outlier_failure()
            elif st.failures:
                st.failures = 0  # outlier detection counts failures in a row
        if head.raw:
            # The pass-through lane (``raw_response``: a plain rule, so no retry on
            # status codes and no GRPCRoute, the tests below skipped): the backend's
            # field lines, its hop-by-hop lines cut, are written as they came, then
            # our request id.
            self.status = status
            self.upstream_ms = (self.conn.loop.time() - self.try_start) * 1000.0
            rid = self.request_id
            head.headers = [(b"x-request-id", rid)] if rid is not None else []
            self.stream.send_head(head, self.method)
            self.response_started = True
            return
        rule = self.rule
        assert rule is not None
        retry = rule.retry
        if (
            retry is not None
            and status in retry.codes
            and self._can_retry()
            and self._admit_retry()
        ):
            self._drop_upstream()
            self._schedule_retry()
            return
        if status != 200 and rule.route_kind == "GRPCRoute":
            # A gRPC backend answers errors with HTTP 200 and grpc-status; any other
            # status (an HTTP/1.x server, a proxy in between) becomes the gRPC status of
            # the spec's HTTP-to-gRPC table, in a trailers-only reply.
            self.upstream_ms = (self.conn.loop.time() - self.try_start) * 1000.0
            self._drop_upstream()
            self._local(status, _upstream_status_kind(status))
            return
        self.status = status
        self.upstream_ms = (self.conn.loop.time() - self.try_start) * 1000.0
        rid = self.request_id
        backend = self.backend
        assert backend is not None
        if (
            rid is not None
            and rule.response_headers is None
            and backend.response_headers is None
            and rule.cors is None
        ):
            # No response filters: hop-by-hop removed and the request id set in one
            # walk over the fields (~0.3 us less per response, bench_h1_inproc).
            out = strip_hop_by_hop_set(head.headers, b"x-request-id", rid)
        else:
            out = strip_hop_by_hop(head.headers)
            if rule.response_headers is not None:
                apply_header_ops(out, rule.response_headers)
            if backend.response_headers is not None:
                apply_header_ops(out, backend.response_headers)
            if rule.cors is not None:
                origin = _header(self.headers, b"origin")
                if origin is not None:
                    out += cors_response_headers(rule.cors, origin)
            if rid is not None:
                for i, (n, _) in enumerate(out):
                    if n == b"x-request-id":
                        out[i] = (n, rid)
                        break
                else:
                    out.append((b"x-request-id", rid))
        session = self.session
        if session is not None:
            ep = self.endpoint
            assert ep is not None
            field = session_field(
                self.conn.proxy.sessions,
                session,
                ep,
                int(time.time() * 1000),
                secure=self.conn.scheme == b"https",
            )
            if field is not None:
                out.append(field)
        # The downstream codec frames the body (and answers HEAD, 204 and 304
        # without one).
        head.headers = out
        self.stream.send_head(head, self.method)
        self.response_started = True

    def on_response_data(self, data: bytes) -> None:
        if self.finished:
            return
        self.bytes_sent += len(data)
        self.stream.send_data(data)

    def on_upgrade(self, conn: ClientStream, head: ResponseHead) -> None:
        """A 101 to a request that asked for no upgrade (``upgrade.py`` serves those
        that did): the backend's protocol error, answered 502 (flag UPE)."""
        if conn is self.upstream and not self.finished:
            self.on_stream_lost(conn, UpstreamProtocolError("unexpected 101"), True)
        conn.reset()

    def on_tunnel_eof(self) -> None:
        pass  # only an UpgradeExchange has a tunnel

    def on_flush(self) -> None:
        self.stream.flush()

    def on_response_end(self, conn: ClientStream, trailers: Headers | None, reusable: bool) -> None:
        if conn is not self.upstream or self.finished:
            conn.close()
            return
        self.upstream = None
        if self.timer_try is not None:
            self._cancel_try_timer()
        stream = self.stream
        if (
            stream is self.conn
            and self.request_complete
            and self.timer_total is None
            and self.retry_handle is None
            and not self.pending_size
            and not self.pending
            and not self.budget_state
        ):
            # The lean end: an HTTP/1.1 stream (the only codec whose stream is its
            # connection), the request read whole (so no mirror waits for its end),
            # no timer, nothing held, no retry budget: ``_finish``'s work for such an
            # exchange, with ``send_end`` + ``flush`` + ``read_enable`` in one codec
            # call: send_end, _finish, flush, resume, _dispatch and a clock read
            # become end_response, with ~10 attribute tests less (callgrind: -1.5%
            # instructions per request, bench_h1_inproc --metrics --nginx-head).
            self.response_done = True
            self.finished = True
            # One loop clock read for the pool, the upstream duration and the
            # connection's idle deadline (``done``: a clock call less).
            # The stream is the connection: its loop and proxy read from it.
            h1: Any = stream  # h1_server.HttpConnection (not imported: it imports us)
            now = h1.loop.time()
            h1.end_response(trailers)
            proxy = h1.proxy
            if reusable:
                proxy.pool.release(conn, now)
            else:
                conn.close()
            # Counted with the request (``_record``): one metrics record per request.
            self.up_time = now - self.try_start
            st = self.ep_state
            if st is not None:
                self.ep_state = None
                st.active -= 1
            if proxy.access is not None or proxy.metrics is not None:
                self._record()
            h1.done(False, now)
            return
        now = self.conn.loop.time()
        if reusable and self.request_complete:
            self.conn.proxy.pool.release(conn, now)
        else:
            # The backend answered before reading the whole request body: the
            # connection is in an unknown state.
            conn.close()
        # Counted with the request (``_record``): one metrics record per request.
        self.up_time = now - self.try_start
        stream.send_end(trailers)
        self.response_done = True
        if self.request_complete or not stream.drain_request():
            self._finish()
        else:
            # Keep reading (and dropping) the rest of the request body, then go on.
            stream.flush()
            self._drop_pending()

    def on_stream_lost(
        self, conn: ClientStream, exc: BaseException | None, got_bytes: bool
    ) -> None:
        if conn is not self.upstream or self.finished:
            return
        self.upstream = None
        self._cancel_try_timer()
        self.stream.read_enable(RD_UPSTREAM)
        # An invalid response (or a head over the limits) is the backend's protocol
        # error, as Envoy's "upstream_reset_before_response_started{protocol_error}".
        broken = isinstance(exc, (UpstreamProtocolError, httptools.HttpParserError))
        if self.response_started:
            # Truncated response: the client has to see the failure.
            self._outlier_failure()
            self.flags = LR_UPSTREAM_PROTOCOL.flag if broken else "UC"
            self._abort_downstream()
            return
        rule = self.rule
        retry = rule.retry if rule is not None else None
        if (
            not got_bytes
            and (self.reused or isinstance(exc, StreamRefused))
            and not self.reuse_retried
            and self.replay is not None
            and retry is None
        ):
            # A pooled connection the backend had closed (the race every keep-alive
            # client has), or an HTTP/2 stream the backend never processed
            # (REFUSED_STREAM, above its GOAWAY's last stream id: RFC 9113 8.7 "the
            # request can be retried"): try once more on a new connection, as Envoy does.
            # A rule with ``retry`` counts every try against its ``attempts`` (the
            # Gateway API conformance scenario counts the tries the backend sees).
            self.reuse_retried = True
            self._replay_pending()
            self._try(True)
            return
        # A reset (or an invalid response) before the response: a failure of the
        # endpoint for outlier detection, retried or not.
        self._outlier_failure()
        if self._can_retry() and self._admit_retry():
            self._schedule_retry()
            return
        if broken:
            self._local(502, LR_UPSTREAM_PROTOCOL)
        elif retry is not None:
            # Retries ran out on a reset: Envoy's 503 (flag URX), which the conformance
            # scenario HTTPRouteRetryConnectionError expects ("500 or 503"); without a
            # retry policy the contract's 502 stands.
            self._local(503, LR_RETRY_LIMIT)
        else:
            self._local(502, LR_RESET)

    def on_fatal(self) -> None:
        try:
            self.flags = self.flags or "IE"
            if not self.finished:
                self.on_reset()
            self.stream.reset()
        except Exception:  # last resort: never raise into the event loop
            log.exception("aborting a failed request failed")

    def on_write_pause(self) -> None:
        """Upstream side: the backend is slow to read our request."""
        self.stream.read_disable(RD_UPSTREAM)

    def on_write_resume(self) -> None:
        self.stream.read_enable(RD_UPSTREAM)

    # ------------------------------------------------------------------ downstream flow

    def on_down_write_pause(self) -> None:
        """Downstream side: the client is slow to read the response."""
        self.down_paused = True
        up = self.upstream
        if up is not None:
            up.read_disable(RD_UPSTREAM)

    def on_down_write_resume(self) -> None:
        self.down_paused = False
        up = self.upstream
        if up is not None:
            up.read_enable(RD_UPSTREAM)

    def on_error(self, status: int) -> None:
        """The request body (or its trailers) broke the protocol."""
        self._local(status, _ERRORS_BY_STATUS.get(status, LR_BAD), close=True)

    # ------------------------------------------------------------------ ending

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
        rid = self.request_id
        headers = [(b"x-request-id", rid), *extra] if rid else extra
        if is_grpc(_header(self.headers, b"content-type")):
            # A gRPC client reads grpc-status, not the HTTP status: a trailers-only
            # reply (HTTP 200, grpc-status, grpc-message), as Envoy answers gRPC
            # requests locally.  Only local replies pay this header scan.
            code = DEADLINE_EXCEEDED if kind is LR_TIMEOUT else grpc_status_for(status)
            message = body.decode("latin-1") or kind.reason or f"HTTP status {status}"
            grpc_fields = trailers_only(code, message)
            headers = [(b"x-request-id", rid), *grpc_fields] if rid else grpc_fields
            status = 200
            body = b""
        self.status = status
        self.flags = flag
        self.response_started = True
        self.response_done = True
        stream = self.stream
        self.bytes_sent = stream.local_reply(status, headers, body, close=close)
        metrics = self.conn.proxy.metrics
        if metrics is not None and reason:
            metrics.local_reply(reason)
        if self.request_complete or not stream.drain_request():
            self._finish()
        else:
            stream.flush()
            self._drop_pending()

    def _drop_pending(self) -> None:
        if self.pending_size:
            self.stream.release_held(self.pending_size)
        self.pending = ()
        self.pending_size = 0

    def _abort_downstream(self) -> None:
        stream = self.stream
        stream.flush()
        self._finish(close=True)
        stream.reset()

    def _finish(self, close: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        stream = self.stream
        stream.flush()
        # Most requests arm no timer and hold no body: tested before any work (each
        # skipped step is a call or an allocation less per request).
        if (
            self.timer_total is not None
            or self.timer_try is not None
            or self.retry_handle is not None
        ):
            for t in (self.timer_total, self.timer_try, self.retry_handle):
                if t is not None:
                    t.cancel()
            self.timer_total = self.timer_try = self.retry_handle = None
        if self.upstream is not None:
            self.upstream.reset()
            self.upstream = None
        st = self.ep_state
        if st is not None:
            # The endpoint's in-flight count (least request) drops here, the one place
            # every exchange passes (on_reset for the others).
            self.ep_state = None
            st.active -= 1
        if self.pending or self.pending_size:
            self._drop_pending()
        if self.mirrors and not self.request_complete:
            self._fire_mirrors()
        if self.budget_state:
            self._leave_budget()
        stream.read_enable(RD_UPSTREAM)
        proxy = self.conn.proxy
        if proxy.access is not None or proxy.metrics is not None:
            self._record()
        stream.done(close)

    def on_reset(self) -> None:
        """The client went away before the response was complete."""
        if self.finished:
            return
        self.finished = True
        self.flags = "DC"
        for t in (self.timer_total, self.timer_try, self.retry_handle):
            if t is not None:
                t.cancel()
        if self.upstream is not None:
            self.upstream.reset()
            self.upstream = None
        st = self.ep_state
        if st is not None:
            self.ep_state = None
            st.active -= 1
        if self.budget_state:
            self._leave_budget()
        self.attempt += 1
        self._record()

    def _record(self) -> None:
        proxy = self.conn.proxy
        access = proxy.access
        metrics = proxy.metrics
        if access is None and metrics is None:
            return
        start = self.start
        duration = _perf() - self.t0 if start else 0.0
        rule = self.rule
        if metrics is not None:
            if start:
                metrics.rq_active -= 1
            # A record, counted later with others (metrics.py: ~1 us less per request
            # than the two slot updates made here).
            # Strings only, never the port: a waiting record must not keep a replaced
            # snapshot alive.  No listener (no route matched): the port's listeners.
            backend = self.backend
            port = self.port
            pending = metrics.pending
            pending.append(
                (
                    port.gateway_namespace if port is not None else "",
                    port.gateway_name if port is not None else "",
                    self.listener or (",".join(port.listener_names) if port is not None else ""),
                    rule.route_id if rule is not None else "",
                    self.status,
                    duration,
                    backend.name if backend is not None else None,
                    self.up_time,
                )
            )
            if len(pending) >= METRICS_BATCH:
                metrics.count_pending()
        tp = self.traceparent
        if tp is not None and proxy.spans is not None:
            proxy.spans.export(self, duration)
        if access is not None:
            # The record of AccessLogger.add, inlined (a call less: ~0.06 us): objects
            # that never change after the request (the head as received: forwarding
            # copies its fields) and plain values; the line is formatted from them
            # later, with others.
            records = access.pending
            records.append(
                (
                    time.time(),
                    duration,
                    self.head,
                    self.status,
                    self.flags,
                    self.ejected,
                    self.bytes_received,
                    self.bytes_sent,
                    self.upstream_ms,
                    self.conn.peer_ip,
                    self.request_id,
                    self.endpoint,
                    rule,
                    tp,
                )
            )
            if len(records) >= access.batch:
                access.format_pending()

    # ------------------------------------------------------------------ mirrors

    def _fire_mirrors(self) -> None:
        """Fire-and-forget copies through the pool (a pooled stream, else a new
        connection); never delays or fails the main request."""
        mirrors = self.mirrors
        self.mirrors = None
        head = self.mirror_head
        if not mirrors or head is None:
            return
        body = b""
        if self.request_complete and self.replay is not None:
            # The body as received when it was small enough to keep; else none (the
            # copy says so with content-length: 0).
            body = b"".join(self.replay)
        fields = [h for h in head.headers if h[0] not in _FRAMING]
        fields.append((b"content-length", b"%d" % len(body)))
        mhead = RequestHead(
            head.method,
            head.target,
            fields,
            authority=head.authority,
            body_length=len(body),
            end_stream=not body,
        )
        h2head: RequestHead | None = None
        conn = self.conn
        proxy = conn.proxy
        health = proxy.health
        now = conn.loop.time()
        for backend in mirrors:
            st = health.pick(backend, now)
            if st is None:
                continue
            ep = st.endpoint
            mh = mhead
            if backend.http2:
                if h2head is None:
                    # As for the main request: "te: trailers" reaches an HTTP/2
                    # backend when the client sent it (gRPC servers require it).
                    te = _header(self.headers, b"te")
                    h2fields = list(fields)
                    if te is not None and te_for_h2(te) is not None:
                        h2fields.append((b"te", b"trailers"))
                    h2head = RequestHead(
                        head.method,
                        head.target,
                        h2fields,
                        authority=head.authority,
                        body_length=len(body),
                        end_stream=not body,
                    )
                mh = h2head
            mirror = Mirror(proxy, conn.loop, mh, body)
            key = endpoint_key(ep.address, ep.port, backend.tls)
            up = proxy.pool.acquire_h2(key) if backend.http2 else proxy.pool.acquire(key)
            if up is not None:
                mirror.send(up)
                continue
            task = conn.loop.create_task(mirror.connect(ep, backend))
            proxy.tasks.add(task)
            task.add_done_callback(proxy.tasks.discard)


_FRAMING: Final = frozenset((b"content-length", b"transfer-encoding"))
_DEADLINE_TRAILERS: Final = trailers_only(DEADLINE_EXCEEDED, "upstream request timeout")[1:]


class Mirror:
    """One mirrored copy of a request (HTTPRoute RequestMirror): sent on a client
    stream of the pool, its response read and dropped, the stream given back when it
    can carry another request.  Bounded: the body is at most ``MAX_REPLAY`` bytes and
    the whole copy ``MIRROR_TIMEOUT`` seconds."""

    __slots__ = ("body", "head", "loop", "proxy", "stream", "timer")

    def __init__(
        self, proxy: Proxy, loop: asyncio.AbstractEventLoop, head: RequestHead, body: bytes
    ) -> None:
        self.proxy = proxy
        self.loop = loop
        self.head = head
        self.body = body
        self.stream: ClientStream | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def connect(self, ep: EndpointAddress, backend: CompiledBackend) -> None:
        pool = self.proxy.pool
        try:
            up: ClientStream
            if backend.http2:
                up = await pool.connect_h2(
                    ep.address, ep.port, backend.name, backend.tls, resolve=backend.fqdn
                )
            else:
                up = await pool.connect(
                    ep.address, ep.port, backend.name, backend.tls, resolve=backend.fqdn
                )
        except (OSError, TimeoutError) as exc:
            log.debug("mirror to %s:%d failed: %s", ep.address, ep.port, exc)
            return
        if up.closed:
            return
        self.send(up)

    def send(self, up: ClientStream) -> None:
        self.stream = up
        up.bind(self, self.head.method == b"HEAD")
        body = self.body
        up.send_head(self.head, (body,) if body else (), end_stream=True)
        self.timer = self.loop.call_later(MIRROR_TIMEOUT, self._timeout)

    def _timeout(self) -> None:
        self.timer = None
        up = self.stream
        if up is not None:
            self.stream = None
            up.reset()

    def _done(self) -> None:
        self.stream = None
        t = self.timer
        if t is not None:
            self.timer = None
            t.cancel()

    # ClientCallbacks: the answer is read (so the connection can be reused) and dropped.
    def on_response_head(self, stream: ClientStream, head: ResponseHead) -> None:
        pass

    def on_response_data(self, data: bytes) -> None:
        pass

    def on_upgrade(self, stream: ClientStream, head: ResponseHead) -> None:
        self.on_fatal()  # a copy never asks to switch protocols

    def on_response_end(
        self, stream: ClientStream, trailers: Headers | None, reusable: bool
    ) -> None:
        if stream is not self.stream:
            stream.close()
            return
        self._done()
        if reusable:
            self.proxy.pool.release(stream, self.loop.time())
        else:
            stream.close()

    def on_stream_lost(
        self, stream: ClientStream, exc: BaseException | None, got_bytes: bool
    ) -> None:
        log.debug("mirror request lost: %s", exc)
        self._done()

    def on_flush(self) -> None:
        pass

    def on_write_pause(self) -> None:
        pass  # the whole copy is already written (bounded by MAX_REPLAY)

    def on_write_resume(self) -> None:
        pass

    def on_fatal(self) -> None:
        up = self.stream
        self._done()
        if up is not None:
            up.reset()
