"""WebSocket through HTTPRoutes: the exchange of an upgrade request (issue 12).

``UpgradeExchange`` is the ``Exchange`` the server codecs create for a WebSocket
handshake, so that plain requests pay nothing for it:

- HTTP/1.1 ``Upgrade: websocket`` with ``Connection: upgrade`` (``h1_server``), and
- HTTP/2 extended CONNECT with ``:protocol websocket`` (RFC 8441, ``h2_server``), routed
  like the GET with Upgrade it stands for ("the :method pseudo-header field is set to
  CONNECT" and "a :protocol pseudo-header field ... MUST be included", RFC 8441 4).

The handshake is routed as usual (matches see ``GET``; filters apply to it) and sent
to an HTTP/1.1 backend with ``connection: upgrade`` and ``upgrade: websocket`` (the
hop-by-hop fields kept for this case only); an extended CONNECT becomes that GET, with
a ``sec-websocket-key`` of our own when the client sent none (RFC 8441 5: "the
Sec-WebSocket-Key and Sec-WebSocket-Accept header fields are not used").

The backend's ``101`` (``on_upgrade``) opens the tunnel: the client gets ``101`` or
``:status 200`` (``ServerStream.send_tunnel_head``), then bytes flow both ways through
the codecs' ordinary flow control (a slow side read-disables the other: HTTP/1.1
pauses the transport, HTTP/2 withholds the stream's WINDOW_UPDATE), with the stream
idle timeout as the only timeout (the route and per-try timeouts end with the
handshake).  The client closing its direction half-closes the backend connection;
the backend closing ends the tunnel.  Any other answer is relayed as a normal
response (an HTTP/2 client would take a 2xx for an open tunnel: a 2xx that is not a
101 is a 502 there).  The upstream connection of a handshake never returns to the
pool.  The access log line and the request metrics are written once, when the tunnel
closes, with the bytes each way.

Only ``websocket`` is upgraded, as Envoy's default ``upgrade_configs``; the HTTP/1.1
codec serves other upgrade requests (``h2c`` included) as plain requests.
"""

from __future__ import annotations

import base64
import os
import time
from typing import TYPE_CHECKING, Final

from gatewayd.proxy.filters import apply_header_ops, cors_response_headers
from gatewayd.proxy.forwarded import strip_hop_by_hop
from gatewayd.proxy.http.codec import RD_UPSTREAM, ClientStream, Headers, RequestHead, ResponseHead
from gatewayd.proxy.http.exchange import (
    LR_UPSTREAM_PROTOCOL,
    Exchange,
    _header,
)
from gatewayd.proxy.localreply import ReplyKind

if TYPE_CHECKING:
    from gatewayd.proxy.http.codec import ServerStream

WEBSOCKET: Final = b"websocket"
_UPGRADE_FIELDS: Final = ((b"connection", b"upgrade"), (b"upgrade", WEBSOCKET))
# RFC 8441 4: a :protocol we do not tunnel.  Envoy answers an upgrade it is not
# configured for with 403 (upgrade_failed); 501 says what it is: not implemented here.
LR_UPGRADE_UNSUPPORTED = ReplyKind("", "upgrade_failed", 501, b"upgrade not supported")


def is_websocket(token: bytes) -> bool:
    """An Upgrade field value (or ``:protocol``) asking for WebSocket."""
    return token.strip().lower() == WEBSOCKET


def half_close(up: ClientStream) -> None:
    """Pass the client's end of the tunnel on: a FIN to the backend (a close where the
    transport has no half-close, as TLS)."""
    close = getattr(up, "half_close", None)  # the HTTP/1.1 client codec's
    if close is not None:
        close()
    else:
        up.close()


class UpgradeExchange(Exchange):
    """A WebSocket handshake, then its tunnel."""

    __slots__ = ("down_eof", "extended", "prepared", "tunnel")

    def __init__(self, stream: ServerStream, head: RequestHead) -> None:
        super().__init__(stream, head)
        self.tunnel = False  # the backend said 101: bytes flow both ways
        self.down_eof = False  # the client closed its direction
        self.prepared = False
        # RFC 8441: an extended CONNECT is routed and forwarded as the GET it stands for.
        self.extended = head.method == b"CONNECT"
        if self.extended:
            self.method = b"GET"

    # ------------------------------------------------------------------ handshake

    def on_start(self) -> None:
        protocol = self.head.protocol
        if protocol is None or not is_websocket(protocol):
            self.start = self.conn.loop.time()
            self.t0 = time.perf_counter()
            self._local(501, LR_UPGRADE_UNSUPPORTED)
            return
        super().on_start()

    def _prepare(self) -> RequestHead:
        """The handshake as the backend gets it (once, for every try)."""
        head = self.upstream_head
        assert head is not None and self.backend is not None
        if self.prepared:
            return head
        self.prepared = True
        head.body_length = 0
        head.end_stream = True
        head.transfer_codings = None
        if self.backend.http2:
            # An HTTP/2 backend would need RFC 8441 on the upstream side too: not done.
            # The HTTP/1.1 client gets a plain answer; an extended CONNECT gets none.
            return head
        fields = head.headers
        fields += _UPGRADE_FIELDS
        if self.extended:
            if _header(fields, b"sec-websocket-key") is None:
                key = base64.b64encode(os.urandom(16))
                fields.append((b"sec-websocket-key", key))
            if _header(fields, b"sec-websocket-version") is None:
                fields.append((b"sec-websocket-version", b"13"))
        return head

    def _attach(self, up: ClientStream, reused: bool) -> None:
        self.upstream = up
        self.reused = reused
        up.bind(self, False)
        conn = self.conn
        self.try_start = conn.loop.time()
        rule = self.rule
        assert rule is not None and self.backend is not None
        if rule.backend_request_timeout:
            self.timer_try = conn.loop.call_later(rule.backend_request_timeout, self._on_timeout)
        head = self._prepare()
        if self.extended and self.backend.http2:
            self._local(501, LR_UPGRADE_UNSUPPORTED)
            return
        # The handshake has no body; bytes the client sent early wait for the 101.
        self.sending = True
        up.send_head(head, (), True)
        if self.down_paused:
            up.read_disable(RD_UPSTREAM)

    def on_response_head(self, conn: ClientStream, head: ResponseHead) -> None:
        if (
            self.extended
            and 200 <= head.status < 300
            and conn is self.upstream
            and not self.finished
        ):
            # The backend ignored the upgrade; over HTTP/2 a 2xx means "tunnel open".
            self._local(502, LR_UPSTREAM_PROTOCOL)
            return
        super().on_response_head(conn, head)

    def on_response_end(self, conn: ClientStream, trailers: Headers | None, reusable: bool) -> None:
        if not self.tunnel:
            # A refused upgrade, relayed: the connection was asked to switch protocols
            # and is not reused.
            super().on_response_end(conn, trailers, False)
            return
        # The backend closed the tunnel: what it sent is flushed, then the client's
        # side closes (FIN, END_STREAM).
        if conn is not self.upstream or self.finished:
            conn.close()
            return
        self.upstream = None
        conn.close()
        self.stream.send_end(None)
        self.response_done = True
        self._finish()

    # ------------------------------------------------------------------ tunnel

    def on_upgrade(self, conn: ClientStream, head: ResponseHead) -> None:
        if conn is not self.upstream or self.finished:
            conn.reset()
            return
        if not self.prepared or self.backend is None or self.backend.http2:
            super().on_upgrade(conn, head)  # nobody asked that backend to switch
            return
        self.tunnel = True
        # The handshake is over: no route or per-try timeout for a long-lived tunnel,
        # only the stream idle timeout (check_deadlines).
        self._cancel_try_timer()
        if self.timer_total is not None:
            self.timer_total.cancel()
            self.timer_total = None
        self.deadline = 0.0
        self.route_wait = 0.0
        self.status = 101
        loop = self.conn.loop
        self.upstream_ms = (loop.time() - self.try_start) * 1000.0
        rule = self.rule
        backend = self.backend
        assert rule is not None
        out = strip_hop_by_hop(head.headers)
        if rule.response_headers is not None:
            apply_header_ops(out, rule.response_headers)
        if backend.response_headers is not None:
            apply_header_ops(out, backend.response_headers)
        if rule.cors is not None:
            origin = _header(self.headers, b"origin")
            if origin is not None:
                out += cors_response_headers(rule.cors, origin)
        if self.request_id is not None:
            out = [h for h in out if h[0] != b"x-request-id"]
            out.append((b"x-request-id", self.request_id))
        out += _UPGRADE_FIELDS
        head.headers = out
        stream = self.stream
        stream.send_tunnel_head(head)
        self.response_started = True
        metrics = self.conn.proxy.metrics
        if metrics is not None:
            metrics.upstream_request(backend.name, rule.route_id, 101, loop.time() - self.try_start)
            metrics.tunnel(backend.name, 1)
        pending = self.pending
        if pending:
            self.pending = ()
            stream.release_held(self.pending_size)
            self.pending_size = 0
            for data in pending:
                conn.send_data(data)
        if self.down_eof:
            half_close(conn)
        stream.flush()

    def _record(self) -> None:
        # Once, when the exchange ends: for a tunnel, when it closes.
        metrics = self.conn.proxy.metrics
        if self.tunnel and metrics is not None and self.backend is not None:
            metrics.tunnel(self.backend.name, -1)
        super()._record()

    def on_data(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        if self.finished or self.response_done:
            return
        up = self.upstream
        if self.tunnel and up is not None:
            up.send_data(data)
        else:
            # Before the 101: held (bounded by the codec's hold limit).  An empty
            # tuple until the first bytes (``Exchange.pending``).
            pending = self.pending
            if isinstance(pending, list):
                pending.append(data)
            else:
                self.pending = [data]
            self.pending_size += n
            self.stream.hold(n)

    def on_end(self, trailers: Headers | None) -> None:
        if self.extended:
            # HTTP/2 END_STREAM on the CONNECT stream: the client's direction is over.
            self.request_complete = True
            self.on_tunnel_eof()
            return
        super().on_end(trailers)

    def on_tunnel_eof(self) -> None:
        self.down_eof = True
        if self.finished:
            return
        up = self.upstream
        if self.tunnel and up is not None:
            half_close(up)
