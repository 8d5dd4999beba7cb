"""The HTTP/1.1 server codec: one ``asyncio.Protocol`` per client connection.

Shape (after uvicorn's httptools protocol): ``HttpConnection`` owns one
``httptools.HttpRequestParser``; its callbacks fill one ``RequestHead`` per request,
and when the head is complete one slotted ``Exchange`` (``exchange.py``) takes the
request over.  The connection is the ``ServerStream`` of the exchange it is serving
(HTTP/1.1 serves one at a time): it frames the response (a Content-Length passes
through, anything else becomes ``chunked`` towards HTTP/1.1 clients or close-delimited
towards HTTP/1.0 clients; trailer fields follow the last chunk), renders local replies,
answers ``Expect: 100-continue`` when the exchange asks, and decides keep-alive.  Flow
control is pause/resume of reading this transport (``read_disable`` /
``read_enable``), driven by the other transport's write-buffer water marks, so a slow
peer on either side makes the proxy stop reading from the fast one instead of
buffering a body.

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
- Request trailer fields (chunked requests) count against the same byte and field
  limits as the head, and reach the upstream after its last chunk.
- Idle/head/lingering deadlines are checked by one periodic sweep per ``Proxy``
  instead of a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, cast

import httptools

from gatewayd.proxy.forwarded import ENVOY_PREFIX as _ENVOY_PREFIX
from gatewayd.proxy.forwarded import FORWARD_WALKED, client_cert_details
from gatewayd.proxy.http.codec import HTTP_11, Headers, RequestHead, ResponseHead
from gatewayd.proxy.http.exchange import ERRORS_BY_STATUS, LR_BAD, Exchange
from gatewayd.proxy.http.h1_client import WRITE_HIGH, WRITE_LOW
from gatewayd.proxy.http.h2_limits import is_h2_preface
from gatewayd.proxy.http.h2_server import H2ServerConnection
from gatewayd.proxy.http.upgrade import UpgradeExchange, is_websocket
from gatewayd.proxy.localreply import STATUS_LINES, local_reply, status_line

if TYPE_CHECKING:
    from gatewayd.proxy.server import Proxy
    from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot

log = logging.getLogger("gatewayd.proxy.server")

_new_head = RequestHead.__new__

ListenKey = tuple[str, int]
_ERRORS_BY_STATUS = ERRORS_BY_STATUS

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
# A response written as a head and one body piece of at most this many bytes goes out
# as one joined ``write`` (write(2)) instead of ``writelines`` (writev(2) of two
# buffers): about 0.15 us less per small response under uvloop (measured on a
# socketpair, 13-byte body), and copying this much costs less than that.  Bigger bodies
# keep ``writelines``, which copies nothing.
WRITE_JOIN_MAX: Final = 1024
# Response head serialization: b"name: value" per field, then the lines joined.
_FIELD_JOIN: Final = b": ".join
_CRLF_JOIN: Final = b"\r\n".join

# Reasons for pausing the reading of a client connection (bit mask).  The first two
# are the codec's read_disable reasons (codec.RD_UPSTREAM, codec.RD_HELD).
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

# What ``on_header`` does with a request field: nothing (K_PLAIN), read it (K_HOST,
# K_LENGTH), or read it and mark the head for the forwarding walk (K_CODINGS,
# K_EXPECT, K_WALKED: the names of ``forwarded.FORWARD_WALKED`` and ``x-envoy-*``).
K_PLAIN: Final = 0
K_HOST: Final = 1
K_LENGTH: Final = 2
K_CODINGS: Final = 3
K_EXPECT: Final = 4
K_WALKED: Final = 5
_FIELD_KIND: Final[dict[bytes, int]] = {
    **dict.fromkeys(FORWARD_WALKED, K_WALKED),
    b"host": K_HOST,
    b"content-length": K_LENGTH,
    b"transfer-encoding": K_CODINGS,
    b"expect": K_EXPECT,
}

# Field names as received -> (lower-case name, K_* kind): a client sends the same
# names in the same spelling on every request, and the dict hit replaces lower(), the
# kind lookup and the prefix test (~0.1 us less per field, bench_h1_inproc), and
# hands on one lower-case bytes object per name whose hash is computed once.
# Bounded (the names are the client's): NAME_CACHE_SIZE names of at most
# NAME_CACHE_LEN bytes, emptied when full.
NAME_CACHE_SIZE: Final = 1024
NAME_CACHE_LEN: Final = 64
_name_cache: dict[bytes, tuple[bytes, int]] = {}


def _name_info(name: bytes) -> tuple[bytes, int]:
    """``(name.lower(), its K_* kind)``, through the bounded cache."""
    info = _name_cache.get(name)
    if info is None:
        lower = name.lower()
        kind = _FIELD_KIND.get(lower)
        if kind is None:
            kind = K_WALKED if lower[:8] == _ENVOY_PREFIX else K_PLAIN
        info = (lower, kind)
        if len(name) <= NAME_CACHE_LEN:
            if len(_name_cache) >= NAME_CACHE_SIZE:
                _name_cache.clear()
            _name_cache[name] = info
    return info


class _Stopped(Exception):
    """Raised inside a parser callback when the connection stopped serving requests
    while the parser was still walking the same read: the rest is dropped."""


class _Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _upgrade_token(headers: Headers) -> bytes:
    """The Upgrade field value (b"" when the request upgrades without one)."""
    for n, v in headers:
        if n == b"upgrade":
            return v
    return b""


class _DownTunnel(asyncio.Protocol):
    """The client transport's protocol after a WebSocket handshake: bytes go to the
    exchange (held until the backend's 101, then relayed), the rest is the
    connection's.  Swapped in so that the HTTP/1.1 read path has no tunnel test."""

    __slots__ = ("conn", "ex")

    def __init__(self, conn: HttpConnection, ex: Exchange) -> None:
        self.conn = conn
        self.ex = ex

    def data_received(self, data: bytes) -> None:
        try:
            self.ex.on_data(data)
        except Exception:
            log.exception("tunnel relay failed")
            self.conn.abort()

    def eof_received(self) -> bool | None:
        ex = self.ex
        if ex.finished:
            return None
        try:
            ex.on_tunnel_eof()
        except Exception:
            log.exception("tunnel half-close failed")
            return None
        # Half-close: the backend still talks.  TLS has no half-close (the loop's TLS
        # transport closes itself whatever is returned).
        return True if self.conn.sni is None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and serves them in order.  It is the
    ``ServerStream`` of its active exchange (one at a time) and the
    ``DownstreamConnection`` of all of them."""

    __slots__ = (
        "active",
        "backlog",
        "client_address",
        "client_cert",
        "closed",
        "closing",
        "conn",
        "cur",
        "cur_head",
        "deadline",
        "deadline_kind",
        "dispatching",
        "fields_left",
        "h2",
        "head_fed",
        "head_left",
        "held",
        "key",
        "label",
        "lingering",
        "loop",
        "out",
        "parse_error",
        "parser",
        "peer_ip",
        "port_for",
        "proxy",
        "queue",
        "read_mask",
        "rejected",
        "resp_keep",
        "resp_mode",
        "scheme",
        "sent_100",
        "sni",
        "sniff",
        "stopped",
        "trailers",
        "transport",
        "tunnel",
        "upgrade_ex",
        "write_paused",
    )

    # ``codec.ExchangeFactory``: what serves each request (a class attribute, so that a
    # codec test can plug in a recorder; as cheap as a global lookup).
    new_exchange: Callable[[HttpConnection, RequestHead], Exchange] = Exchange
    # The exchange of a WebSocket handshake (``upgrade.py``).
    new_upgrade: Callable[[HttpConnection, RequestHead], Exchange] = UpgradeExchange

    def __init__(self, proxy: Proxy, key: ListenKey, label: str) -> None:
        self.proxy = proxy
        # ``ServerStream.conn``: one stream at a time, so the stream is the connection
        # (an attribute, not a property: read once per request, a call less).  The
        # only codec where they are one object: ``Exchange.on_response_end`` tells
        # HTTP/1.1 by it (``end_response``, ``done(close, now)``).
        self.conn = self
        self.key = key
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        # None while idle between requests: ``release_idle`` drops it (about 1 KB with
        # its callbacks) and ``_parse`` makes a new one for the next request.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.peer_ip = ""
        # The client a trusted PROXY protocol header named (proxy/proxyproto.py), in
        # place of the socket's peer; None: the peer is the client.
        self.client_address: tuple[str, int] | None = None
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
        # The head being parsed, then its exchange (from the end of the head to the end
        # of the request).
        self.cur_head: RequestHead | None = None
        self.cur: Exchange | None = None
        self.trailers: Headers | None = None
        # The exchange being served, and the state of its response.
        self.active: Exchange | None = None
        self.out: list[bytes] = []
        self.resp_mode = F_LENGTH
        self.resp_keep = False
        self.sent_100 = False
        # A list, not a deque: at most MAX_QUEUED (16) pipelined requests, and an empty
        # deque costs 760 bytes per connection where an empty list costs 56.
        self.queue: list[Exchange] = []
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
        # What the trailer fields of a chunked request may still take (bytes, fields):
        # what its head left of the limits (``on_headers_complete``).
        self.head_left = 0
        self.fields_left = 0
        # Bytes read while the head being parsed was incomplete (``_parse``).
        self.head_fed = 0
        # Cleartext HTTP/2 with prior knowledge (RFC 9113 3.3): the first bytes of a
        # plain connection are checked against the preface (None: not sniffing).
        self.sniff: bytes | None = None
        self.h2: H2ServerConnection | None = None  # the codec this connection became
        # A WebSocket handshake on this connection (the last request HTTP/1.1 can
        # parse on it), and the transport's protocol once its bytes are tunnel bytes.
        self.upgrade_ex: Exchange | None = None
        self.tunnel: _DownTunnel | None = None

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
        peer = self.client_address or transport.get_extra_info("peername")
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
        if self.sni is None and proxy.options.h2c:
            self.sniff = b""
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, 1)
        if self.sni is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            alpn = getattr(ssl_object, "selected_alpn_protocol", None)
            if alpn is not None and alpn() == "h2":
                # RFC 9113 3.2: after ALPN "h2" the client sends the preface at once.
                self._to_h2(b"")

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
                ex.on_reset()
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
        if ex is not None:
            ex.on_down_write_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        ex = self.active
        if ex is not None:
            ex.on_down_write_resume()

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

    # ``ServerStream.read_disable`` / ``read_enable``: one stream at a time, so the
    # reasons map straight onto the transport's (no extra call per chunk).
    read_disable = pause
    read_enable = resume

    def hold(self, n: int) -> None:
        self.held += n
        if self.held > MAX_HELD:
            self.pause(R_HELD)

    def release_held(self, n: int) -> None:
        self.held -= n
        if self.held <= MAX_HELD // 2:
            self.resume(R_HELD)

    def release_idle(self) -> None:
        """Between requests (the deadline sweep calls it): free what an idle keep-alive
        connection does not need, the parser above all.  Only where the parser is at
        the start of a message: no head or body being read, nothing queued, held back
        or in flight, so the next request parses the same with a new parser."""
        if (
            self.parser is not None
            and self.deadline_kind == D_IDLE
            and self.active is None
            and self.cur is None
            and self.cur_head is None
            and not self.queue
            and not self.backlog
            and not (self.closing or self.stopped or self.closed)
            and self.h2 is None
            and self.tunnel is None
        ):
            self.parser = None
            self.trailers = None

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
        if self.sniff is not None:
            data = self._sniff(data)
            if not data:
                return
        if self.stopped:
            return  # lingering close / after a protocol error: drop
        if self.backlog:
            self.backlog += data
            return
        parser = self.parser
        if parser is None or len(data) > FEED_SLICE:
            self._feed(data)
            return
        # ``_parse`` inlined (``_feed``'s common case: a read of one slice, with a
        # parser): two Python calls less per read (~0.1 us, bench_h1_inproc).
        try:
            parser.feed_data(data)
        except Exception as exc:
            self._parse_failed(exc, data)
            return
        if self.cur_head is not None:
            self._head_pending(data)

    def _sniff(self, data: bytes) -> bytes:
        """The first bytes of a plain connection: HTTP/2's preface hands the connection
        to the HTTP/2 codec (returns b""), anything else is HTTP/1.1 (returns the bytes
        to parse).  At most 24 bytes wait here."""
        buf = self.sniff + data if self.sniff else data
        verdict = is_h2_preface(buf)
        if verdict is None:
            self.sniff = buf
            return b""
        self.sniff = None
        if not verdict:
            return buf
        self._to_h2(buf)
        return b""

    def _to_h2(self, buf: bytes) -> None:
        """The HTTP/2 codec takes the transport; this object stays the connection the
        proxy counts (connection_lost comes back through on_lost) and the facts its
        exchanges read (DownstreamConnection)."""
        self.deadline = 0.0
        self.deadline_kind = D_NONE
        h2 = H2ServerConnection(
            self,
            type(self).new_exchange,  # type: ignore[arg-type]
            clock=self.loop.time,
            limits=self.proxy.options.h2,
            defer=self.loop.call_soon,
            on_lost=self.connection_lost,
            tunnel_factory=type(self).new_upgrade,  # type: ignore[arg-type]
        )
        self.h2 = h2
        h2.adopt(self.transport, buf)

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
                elif self.tunnel is not None:
                    # Read along with a WebSocket handshake: the tunnel's first bytes.
                    self.tunnel.data_received(bytes(view[pos:]))
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
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except Exception as exc:
            self._parse_failed(exc, data)
            return
        if self.cur_head is not None:
            self._head_pending(data)

    def _parse_failed(self, exc: Exception, data: bytes | memoryview) -> None:
        """What parsing ``data`` raised (called in the ``except`` clause)."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            # The request asked to switch protocols (or was CONNECT): nothing after it
            # is HTTP/1.1 we could parse.  A WebSocket handshake goes to its exchange
            # (upgrade.py), with every later byte; any other upgrade is served as a
            # plain request (Upgrade is hop-by-hop) and the connection closed after it.
            self.stopped = True
            self.closing = True
            ex = self.upgrade_ex
            if ex is not None and not ex.finished and not self.closed:
                tunnel = self.tunnel = _DownTunnel(self, ex)
                self.transport.set_protocol(tunnel)
                tail = data[exc.args[0] :] if exc.args else b""
                if tail:
                    tunnel.data_received(bytes(tail))
            elif self.active is None and not self.queue:
                self._close_after_flush()
        elif isinstance(exc, httptools.HttpParserError):
            cause = exc.__context__
            if isinstance(cause, _Stopped):
                return
            head = self.cur_head
            if head is not None and self._over_limits(head):
                # The fields read so far are over a limit: what ``on_header`` used to
                # answer at once, before any later field or byte could fail.
                self._protocol_error(431)
            elif isinstance(cause, _Reject):
                self._protocol_error(cause.status)
            elif isinstance(exc, httptools.HttpParserCallbackError):
                log.error("request callback failed", exc_info=cause or exc)
                self._protocol_error(500)
            else:
                self._protocol_error(400)
        else:
            log.exception("request parsing failed")
            self.abort()

    def _head_pending(self, data: bytes | memoryview) -> None:
        """The read ``data`` ended inside a request head."""
        if self.deadline_kind == D_IDLE:
            # A request began in this read and its head is not complete: from now on it
            # must complete in time (``on_message_begin``).
            self.deadline = self.loop.time() + self.proxy.options.header_timeout
            self.deadline_kind = D_HEAD
        # A head arriving in pieces is held by the parser: bound it here too, and its
        # target and fields so far (``on_headers_complete`` counts complete heads).
        self.head_fed += len(data)
        head = self.cur_head
        assert head is not None
        if self.head_fed > self.proxy.options.max_header_bytes or self._over_limits(head):
            self._protocol_error(431)

    def _bytes_left(self, head: RequestHead) -> int:
        """What ``max_header_bytes`` leaves once ``head`` (so far) is charged to it: its
        target, and each field's name, value and 4 (": " and CRLF)."""
        fields = head.headers
        left = self.proxy.options.max_header_bytes - len(head.target) - 4 * len(fields)
        for n, v in fields:
            left -= len(n) + len(v)
        return left

    def _over_limits(self, head: RequestHead) -> bool:
        """Whether ``head`` (so far) has more fields, or more bytes, than the limits
        allow.  A head is charged as a whole (``on_url``, ``on_header``); trailer
        fields one by one, from what it left (``_trailer``)."""
        return len(head.headers) > self.proxy.options.max_headers or self._bytes_left(head) < 0

    def on_message_begin(self) -> None:
        if self.stopped:
            # A response that closes the connection went out while this read was being
            # parsed (a local reply with ``connection: close``, answered within the
            # callbacks of the request before): RFC 9112 9.6, no later request on
            # this connection is served, and nothing is written after the close began
            # (which failed the write and reset the connection under the reply).
            raise _Stopped
        # ``codec.request_head`` inlined (a call less per request), except that
        # ``forward_clean`` starts True (``on_header`` clears it) and that ``method``,
        # ``version`` and ``keep_alive`` are left to ``on_headers_complete``, which
        # sets them (nothing reads a head before it is complete).
        h = self.cur_head = _new_head(RequestHead)
        h.target = b""
        h.headers = []
        h.authority = h.scheme = h.body_length = h.protocol = h.transfer_codings = None
        h.end_stream = h.expect_continue = False
        h.forward_clean = True
        # ``trailers`` is None here: ``on_message_complete`` took the last request's.
        self.head_fed = 0
        # The head deadline (D_IDLE -> D_HEAD) is set by ``_parse`` once the read ends
        # with this head incomplete: a head that completes within its read never needs
        # it (the sweep cannot run in between), and that is the usual request.

    def on_url(self, url: bytes) -> None:
        # Charged to the head's budget with its fields (``on_header``).
        self.cur_head.target += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        # The target and the fields of a head and its trailer fields share one budget
        # (the limits bound a request's fields, wherever they are).  A head is charged
        # as a whole once it is complete (``on_headers_complete``), or at the end of
        # the read or the parse error that leaves it incomplete (``_parse``): the same
        # 431 for the same heads, with nothing else answered in between, and no
        # arithmetic per field here (~60 ns less per field, timeit; 0.5 us for a
        # browser's request of 12 fields).
        info = _name_cache.get(name)  # ``_name_info``'s hit inlined (a call less)
        name, kind = info if info is not None else _name_info(name)
        head = self.cur_head
        if head is None:
            self._trailer(name, value)
            return
        head.headers.append((name, value))
        if not kind:
            return
        if kind == K_HOST:
            # RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code
            # to any HTTP/1.1 request message that lacks a Host header field and to any
            # request message that contains more than one Host header field line".
            if head.authority is not None:
                raise _Reject(400, "more than one Host")
            head.authority = value
        elif kind == K_LENGTH:
            head.body_length = int(value)  # digits only: the parser checked
        else:
            # A field the forwarding walk handles (``RequestHead.forward_clean``).
            head.forward_clean = False
            if kind == K_CODINGS:
                head.transfer_codings = value
            elif kind == K_EXPECT:
                head.expect_continue = value.lower() == b"100-continue"

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field of a chunked request (RFC 9110 6.5), relayed with its end and
        charged to what the head left of the budget."""
        left = self.head_left = self.head_left - len(name) - len(value) - 4
        fields = self.fields_left = self.fields_left - 1
        if left < 0 or fields < 0:
            raise _Reject(431, "request header fields too large")
        if self.trailers is None:
            self.trailers = []
        self.trailers.append((name, value))

    def on_headers_complete(self) -> None:
        head = self.cur_head
        assert head is not None
        opts = self.proxy.options
        n = len(head.headers)
        # The head's budget (see ``on_header``).  Its bytes need counting only where
        # the head could be over: its target and fields (name, value and 2 bytes at
        # least each on the wire, where they count 4) lie within this read (at most
        # FEED_SLICE bytes) and the reads before it that ``head_fed`` counted.
        if n > opts.max_headers or (
            self.head_fed + FEED_SLICE + 2 * n > opts.max_header_bytes
            and self._bytes_left(head) < 0
        ):
            raise _Reject(431, "request header fields too large")
        self.cur_head = None
        p = self.parser
        assert p is not None  # feed_data is calling us
        keep = p.should_keep_alive()  # a bool already
        if keep and head.forward_clean:
            # No Connection or Proxy-Connection field (``forward_clean``): llhttp keeps
            # a request alive without one for HTTP/1.1 only (0.9, 1.0 and 2.0 are not,
            # and it accepts no other version), so the version is known without
            # get_http_version, which formats a new str per call (0.28 us, timeit).
            version = head.version = HTTP_11
        else:
            version = head.version = p.get_http_version()
        method = head.method = p.get_method()
        head.keep_alive = keep and not self.closing
        if head.transfer_codings is not None:
            head.body_length = None  # chunked: streamed until the last chunk
            # Trailer fields may follow: they take what the head left.
            self.head_left = self._bytes_left(head)
            self.fields_left = opts.max_headers - n
        elif head.body_length is None:
            head.body_length = 0
            head.end_stream = True
        elif head.body_length == 0:
            head.end_stream = True
        factory = self.new_exchange
        # Only WebSocket is upgraded (Envoy's default upgrade_configs); any other token
        # (h2c included) is served as a plain request.
        # llhttp's upgrade needs an Upgrade field (hop-by-hop: no ``forward_clean``)
        # or CONNECT (never upgraded here): a clean head skips the call.
        if (
            not head.forward_clean
            and p.should_upgrade()
            and method != b"CONNECT"
            and head.end_stream
            and is_websocket(_upgrade_token(head.headers))
        ):
            head.protocol = b"websocket"
            factory = self.new_upgrade
        if head.authority is None and version != "1.0":
            raise _Reject(400, "missing Host")
        ex = factory(self, head)
        if head.protocol is not None:
            self.upgrade_ex = ex
        self.cur = ex
        # ``head_fed`` is left as it is: only a head being parsed counts it, and the
        # next one starts it again (``on_message_begin``).
        self.deadline_kind = D_NONE
        self.deadline = 0.0
        if self.active is None and not self.queue:
            # ``_start`` inlined: the common case (no pipelining), a call less.
            self.active = ex
            self.resp_mode = F_LENGTH
            self.resp_keep = False
            self.sent_100 = False
            if self.write_paused:
                ex.on_down_write_pause()
            ex.on_start()
        else:
            self.queue.append(ex)
            if len(self.queue) >= MAX_QUEUED:
                self.pause(R_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        assert ex is not None
        ex.on_data(body)

    def on_message_complete(self) -> None:
        ex = self.cur
        self.cur = None
        # Taken whatever the exchange (``on_message_begin`` counts on it).
        trailers = self.trailers
        if trailers is not None:
            self.trailers = None
        if ex is not None:
            ex.on_end(trailers)

    # ------------------------------------------------------------------ ServerStream

    def _start(self, ex: Exchange) -> None:
        """``ex`` becomes the active exchange: fresh response state, then route it."""
        self.active = ex
        self.resp_mode = F_LENGTH
        self.resp_keep = False
        self.sent_100 = False
        if self.write_paused:
            ex.on_down_write_pause()
        ex.on_start()

    def _keep_after_response(self) -> bool:
        ex = self.active
        if ex is None or not ex.head.keep_alive or self.closing:
            return False
        # The client asked to wait for 100 Continue and we never sent it: it may or
        # may not send the body now, so the connection cannot be reused.
        return not (ex.head.expect_continue and not self.sent_100 and self.cur is ex)

    def send_continue(self) -> None:
        if not self.sent_100 and not self.closed:
            self.sent_100 = True
            self.transport.write(CONTINUE_100)

    def send_head(self, head: ResponseHead, request_method: bytes) -> None:
        ex = self.active
        assert ex is not None
        req = ex.head
        version = req.version
        status = head.status
        out = head.headers
        # ``_keep_after_response`` inlined (once per response, a call less).
        keep = (
            req.keep_alive
            and not self.closing
            and not (req.expect_continue and not self.sent_100 and self.cur is ex)
        )
        # RFC 9110 9.3.2 / 15.3.5 / 15.4.5: no content in responses to HEAD, in 204
        # and in 304 whatever the framing fields say.
        if (
            head.body_length is not None
            or request_method == b"HEAD"
            or status == 204
            or status == 304
        ):
            self.resp_mode = F_LENGTH
        elif version == "1.1":
            out.append((b"transfer-encoding", b"chunked"))
            self.resp_mode = F_CHUNKED
        else:
            # RFC 9112 7: chunked is not understood by HTTP/1.0 recipients: the body
            # ends with the connection.
            self.resp_mode = F_EOF
            keep = False
        if not keep:
            out.append((b"connection", b"close"))
        elif version != "1.1":
            out.append((b"connection", b"keep-alive"))
        self.resp_keep = keep
        # ``status_line``'s lookup inlined (a call less; ValueError outside 100-599
        # as before).
        try:
            line = STATUS_LINES[status]
        except KeyError:
            line = status_line(status)
        # Field lines joined by C loops (map over bytes.join), no Python loop: ~0.2 us
        # less per response of nine fields.  ``head.raw``: the backend's own field
        # lines, passed through (empty but for that lane), go first.  One field (the
        # pass-through lane's request id) is joined with the rest at once: 0.15
        # against 0.35 us (timeit).  Without fields (a 204 or 304 with none, no
        # request id) the head is the status line and the empty line.
        if len(out) == 1:
            n, v = out[0]
            self.out.append(b"".join((line, head.raw, n, b": ", v, b"\r\n\r\n")))
        elif out:
            self.out.append(
                b"".join((line, head.raw, _CRLF_JOIN(map(_FIELD_JOIN, out)), b"\r\n\r\n"))
            )
        else:
            self.out.append(b"".join((line, head.raw, b"\r\n")))

    def send_tunnel_head(self, head: ResponseHead) -> None:
        """``101 Switching Protocols`` with the fields as given (upgrade.py adds
        ``connection: upgrade`` and ``upgrade: websocket``); the body that follows is
        the tunnel's raw bytes and the connection ends with it."""
        self.resp_mode = F_LENGTH
        self.resp_keep = False
        parts = [status_line(101)]
        for n, v in head.headers:
            parts += (n, b": ", v, b"\r\n")
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))

    def send_data(self, data: bytes) -> None:
        if self.resp_mode == F_CHUNKED:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def send_end(self, trailers: Headers | None = None) -> None:
        mode = self.resp_mode
        if mode == F_CHUNKED:
            if trailers:
                # RFC 9112 7.1.2: the trailer section follows the last chunk.
                parts = [b"0\r\n"]
                for n, v in trailers:
                    parts += (n, b": ", v, b"\r\n")
                parts.append(b"\r\n")
                self.out.append(b"".join(parts))
            else:
                self.out.append(b"0\r\n\r\n")
        elif mode == F_EOF:
            self.resp_keep = False

    def flush(self) -> None:
        out = self.out
        if out:
            self.out = []
            if not self.closed:
                if len(out) == 2 and len(out[1]) <= WRITE_JOIN_MAX:
                    self.transport.write(out[0] + out[1])  # see WRITE_JOIN_MAX
                else:
                    self.transport.writelines(out)

    def end_response(self, trailers: Headers | None) -> None:
        """``send_end(trailers)``, ``flush()`` and ``read_enable(RD_UPSTREAM)`` in one
        call, for the exchange's lean end (``Exchange.on_response_end``): three calls
        less per request.  ``send_end`` only when the framing has an end to write
        (chunked, close-delimited): a Content-Length response has none."""
        if self.resp_mode != F_LENGTH:
            self.send_end(trailers)
        out = self.out
        if out:
            self.out = []
            if not self.closed:
                # ``flush`` inlined (a call less per request), WRITE_JOIN_MAX included.
                if len(out) == 2 and len(out[1]) <= WRITE_JOIN_MAX:
                    self.transport.write(out[0] + out[1])
                else:
                    self.transport.writelines(out)
        if self.read_mask & R_UPSTREAM:
            self.resume(R_UPSTREAM)

    def drain_request(self) -> bool:
        return self.resp_keep

    def local_reply(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, close: bool
    ) -> int:
        ex = self.active
        head_request = ex is not None and ex.method == b"HEAD"
        keep = self._keep_after_response() and not close
        self.resp_keep = keep
        self.out.append(
            local_reply(status, body, keep_alive=keep, extra_headers=headers, head=head_request)
        )
        return 0 if head_request else len(body)

    def reset(self) -> None:
        self.abort()

    def done(self, close: bool = False, now: float = 0.0) -> None:
        """``ServerStream.done``; ``now``: the loop's time if the caller has it (the
        exchange's lean end does), for the idle deadline without another clock call."""
        # ``exchange_done`` inlined: once per request, a call less.
        if self.active is None:
            return
        self.active = None
        if self.closed:
            return
        if close or not self.resp_keep:
            self.queue.clear()
            self._close_after_flush()
            return
        if (
            self.queue
            or self.dispatching
            or self.parse_error
            or self.closing
            or self.cur_head is not None
        ):
            self._dispatch()
            return
        # ``_dispatch``'s common case inlined (nothing queued, keep-alive, no head
        # begun): the connection is idle until its next request, a call less.
        proxy = self.proxy
        self.deadline = (now or self.loop.time()) + proxy.options.idle_timeout
        self.deadline_kind = D_IDLE
        if proxy.no_idle_until:
            # At the connection limit, a scan found no idle connection: here is one,
            # the next new client may have it.
            proxy.no_idle_until = 0.0

    def write_buffer_size(self) -> int:
        return 0 if self.closed else self.transport.get_write_buffer_size()

    # ------------------------------------------------------------------ sequencing

    def _dispatch(self) -> None:
        if self.dispatching:
            return
        self.dispatching = True
        try:
            while self.active is None and self.queue and not self.closed:
                ex = self.queue.pop(0)
                if len(self.queue) < MAX_QUEUED:
                    self.resume(R_QUEUE)
                if self.closing:
                    ex.head.keep_alive = False
                self._start(ex)
            if self.active is None and not self.closed:
                if self.parse_error:
                    self._send_error(self.parse_error)
                elif self.closing:
                    self._close_after_flush()
                elif self.cur_head is None:
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
        if self.lingering or self.closed:
            # The connection is already closing after its last response: the bytes
            # that failed to parse are dropped like any others read now.
            self.stopped = True
            return
        self.stopped = True
        cur = self.cur
        self.cur = None
        self.cur_head = None
        if cur is not None and cur in self.queue:
            self.queue.remove(cur)
        if cur is not None and cur is self.active:
            # The body of the request being served is broken.
            cur.on_error(status)
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
            proxy.metrics.request(proxy.holder.current.ports.get(self.key), "", "", status, 0.0)
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
        if self.h2 is not None:
            self.h2.drain()  # GOAWAY; closes when the open streams are done
            return
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
            if self.cur_head is not None:
                # RFC 9110 15.5.9: 408 "the server did not receive a complete request
                # message within the time that it was prepared to wait".
                self.stopped = True
                self.cur_head = None
                self._send_error(408)
            else:
                self.closed = True
                self.transport.close()
        elif kind == D_IDLE and self.active is None and not self.queue:
            self.closed = True
            self.transport.close()
