"""Upstream HTTP/2 (h2c, or TLS with ALPN ``h2``) over the `h2` package, sans-I/O.

`H2ClientConnection` is asyncio.Protocol-shaped like the server codec: it writes to the
transport it is given and never opens a socket.  Each request is one `H2ClientStream`,
the ``codec.ClientStream`` an exchange binds to; many streams share the connection, up
to the backend's SETTINGS_MAX_CONCURRENT_STREAMS (`can_open`).  The pool (a later piece
of issue 12) asks `can_open()` and calls `open_stream()`.

What the exchange hears (``codec.ClientCallbacks``): the response head (interim 1xx
dropped), body, trailers and end; ``on_stream_lost`` when the stream fails.  Lost with
``got_bytes=False`` means the backend never processed the request: a stream refused
(REFUSED_STREAM) or above the last stream id of the backend's GOAWAY (RFC 9113 6.8:
"streams ... with identifiers higher than the included last stream identifier ... were
not or will not be processed"), so the exchange may retry it on another connection.

Limits as for HTTP/1.1 upstreams: a response head (or trailers) over 60 KiB decoded or
100 fields is an ``UpstreamHeadersTooLarge`` loss (the exchange answers 502).  Frame
sizes, header blocks and control-frame floods from the backend are bounded by the same
``h2_limits`` scanner as downstream; a violation closes the connection and loses its
streams.  Response data is acknowledged (WINDOW_UPDATE) only when the exchange takes
it: a read-disabled stream holds at most its 64 KiB window.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import h2.config
import h2.events
import h2.exceptions
import h2.settings

from gatewayd.proxy.http.codec import (
    ClientCallbacks,
    ClientStream,
    Headers,
    RequestHead,
    ResponseHead,
    UpstreamHeadersTooLarge,
    UpstreamProtocolError,
)
from gatewayd.proxy.http.h2_client_conn import (
    ClientH2Connection,
    RequestScanner,
    ResponseScanner,
)
from gatewayd.proxy.http.h2_conn import h2_config
from gatewayd.proxy.http.h2_fields import content_length, to_h2_fields
from gatewayd.proxy.http.h2_limits import (
    CANCEL,
    NO_ERROR,
    REFUSED_STREAM,
    UPSTREAM_H2_LIMITS,
    H2Limits,
    Violation,
)
from gatewayd.proxy.http.h2_server import Transport, clamp_encoder_table

log = logging.getLogger("gatewayd.h2")


class StreamRefused(UpstreamProtocolError):
    """The backend did not process the request (REFUSED_STREAM, or a stream above the
    last id of its GOAWAY): safe to retry on another connection."""


class H2ClientStream:
    """One request on an upstream HTTP/2 connection (``codec.ClientStream``)."""

    http2 = True

    __slots__ = (
        "_conn",
        "callbacks",
        "closed",
        "end_queued",
        "got_bytes",
        "head_request",
        "held",
        "inq",
        "local_ended",
        "out",
        "out_end",
        "out_paused",
        "read_off",
        "stream_id",
        "trailers_in",
        "trailers_out",
    )

    def __init__(self, conn: H2ClientConnection) -> None:
        self._conn = conn
        self.stream_id = 0  # given at send_head
        self.callbacks: ClientCallbacks | None = None
        self.head_request = False
        self.closed = False
        self.got_bytes = False
        self.read_off = 0
        self.inq: list[tuple[bytes, int]] = []
        self.held = 0
        self.end_queued = False
        self.trailers_in: Headers | None = None
        self.out = bytearray()
        self.out_end = False
        self.trailers_out: Headers | None = None
        self.out_paused = False
        self.local_ended = False

    # ------------------------------------------------------------ codec.ClientStream
    def bind(self, callbacks: ClientCallbacks, head_request: bool) -> None:
        self.callbacks = callbacks
        self.head_request = head_request

    def send_head(
        self, head: RequestHead, body: Sequence[bytes] = (), end_stream: bool = False
    ) -> None:
        conn = self._conn
        authority = head.authority
        if authority is None:
            for n, v in head.headers:
                if n.lower() == b"host":
                    authority = v
                    break
        fields: Headers = [(b":method", head.method)]
        if head.method == b"CONNECT" and head.protocol is None:
            # RFC 9113 8.5: CONNECT has :authority only.
            fields.append((b":authority", authority or head.target))
        else:
            fields.append((b":scheme", head.scheme or conn.scheme))
            if authority is not None:
                fields.append((b":authority", authority))
            fields.append((b":path", head.target or b"/"))
            if head.protocol is not None:
                fields.append((b":protocol", head.protocol))  # RFC 8441
        fields += to_h2_fields(head.headers, request=True)
        for chunk in body:
            self.out += chunk
        if end_stream:
            self.out_end = True
        conn.start(self, fields)

    def send_data(self, data: bytes) -> None:
        if self.closed or self.out_end:
            return
        self.out += data
        self._conn.push(self)
        self._conn.flush_soon()

    def send_end(self, trailers: Headers | None = None) -> None:
        if self.closed or self.out_end:
            return
        self.out_end = True
        if trailers:
            self.trailers_out = to_h2_fields(trailers, request=False)
        self._conn.push(self)
        self._conn.flush_soon()

    def reset(self) -> None:
        self._conn.reset_stream(self, CANCEL)

    def close(self) -> None:
        # An ended stream has nothing left; one still open is ended without error.
        self._conn.reset_stream(self, NO_ERROR)

    def read_disable(self, reason: int) -> None:
        self.read_off |= reason

    def read_enable(self, reason: int) -> None:
        if not self.read_off & reason:
            return
        self.read_off &= ~reason
        if not self.read_off and (self.inq or self.end_queued):
            self._conn.deliver_queued(self)
            self._conn.flush_out()


class H2ClientConnection:
    """One upstream HTTP/2 connection carrying many streams."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        scheme: bytes = b"http",
        limits: H2Limits = UPSTREAM_H2_LIMITS,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.clock = clock
        # A request's HEADERS, DATA and end (and the requests of other streams started
        # in the same turn of the event loop) leave in one write (``defer``: the loop's
        # ``call_soon``); a unary gRPC call made three.  None: every flush writes now.
        self.defer = defer
        self._flush_scheduled = False
        self.scheme = scheme
        self.limits = limits
        self.h2 = ClientH2Connection(config=h2_config(client_side=True))
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_stream_window,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: limits.header_table_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            },
        )
        self.h2.decoder.max_header_list_size = limits.max_header_list_bytes
        self.h2.decoder.max_allowed_table_size = limits.header_table_size
        self.inbound = ResponseScanner(limits, inbound=True, strip_goaway=True)
        self.outbound = RequestScanner(limits, inbound=False, preface=True)  # our preface
        self.inbound.sent = self.outbound
        self.streams: dict[int, H2ClientStream] = {}
        self.reserved = 0  # streams handed out by open_stream, head not sent yet
        self.transport: Transport | None = None
        self.closed = False
        self.goaway_last = -1  # the backend's GOAWAY last stream id; -1: none
        self.write_paused = False
        self.idle_since = clock()
        self.ping_sent = -1.0  # when our unanswered PING left; -1: none outstanding
        self.error: str | None = None

    # ---------------------------------------------------------------- the pool's side
    def can_open(self) -> bool:
        """Another stream fits: open, no GOAWAY from the backend, and under its
        SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 5.1.2) and our own cap
        (``limits.max_concurrent_streams``, --upstream-h2-max-concurrent-streams)."""
        if self.closed or self.goaway_last >= 0 or self.transport is None:
            return False
        in_use = len(self.streams) + self.reserved
        return in_use < min(
            self.h2.remote_settings.max_concurrent_streams, self.limits.max_concurrent_streams
        )

    def open_stream(self) -> H2ClientStream:
        """A new stream to bind an exchange to (its id is taken at ``send_head``); it
        counts against the backend's limit from now on, until it ends or is reset."""
        self.reserved += 1
        return H2ClientStream(self)

    @property
    def active_streams(self) -> int:
        return len(self.streams)

    # ------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.h2.open(self.limits.connection_window)
        self.flush_out()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        now = self.clock()
        try:
            data = self.inbound.scan(data, now)
            events = self.h2.receive_data(data)
        except Violation as v:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(error_code=v.error_code)
            self._fail(UpstreamProtocolError(v.reason))
            return
        except h2.exceptions.ProtocolError as e:
            self._fail(UpstreamProtocolError(f"HTTP/2 protocol error from the backend: {e}"))
            return
        touched: list[H2ClientStream] = []
        for event in events:
            try:
                stream = self._event(event)
            except Exception:
                self._callback_failed(getattr(event, "stream_id", 0) or 0)
                continue
            if stream is not None and stream not in touched:
                touched.append(stream)
        if self.inbound.goaways:
            self._goaway()
        self.flush_out()
        for stream in touched:
            if stream.callbacks is not None and stream.got_bytes:
                stream.callbacks.on_flush()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._lose_all(exc or ConnectionResetError("upstream HTTP/2 connection closed"))

    def pause_writing(self) -> None:
        self.write_paused = True
        self.outbound.writes_paused(True)
        for stream in list(self.streams.values()):
            if stream.callbacks is not None and not stream.out_paused:
                stream.out_paused = True
                stream.callbacks.on_write_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.outbound.writes_paused(False)
        for stream in list(self.streams.values()):
            if stream.callbacks is not None and stream.out_paused:
                stream.out_paused = False
                stream.callbacks.on_write_resume()

    def ping(self) -> None:
        """Liveness probe (Envoy's ``connection_keepalive``): a PING the backend must
        answer before `tick` is called past ``now + timeout``.  One at a time."""
        if self.closed or self.ping_sent >= 0:
            return
        self.ping_sent = self.clock()
        self.h2.ping(b"gatewayd")
        self.flush_out()

    def tick(self, now: float, ping_timeout: float) -> None:
        """Close a connection whose backend left a PING unanswered for `ping_timeout`:
        its streams are lost (a backend that stopped reading or a half-open TCP)."""
        if self.ping_sent >= 0 and now - self.ping_sent >= ping_timeout and not self.closed:
            self._fail(UpstreamProtocolError("upstream HTTP/2 PING not answered"))

    def close(self) -> None:
        """Graceful: GOAWAY(NO_ERROR) and close (the pool retires an idle connection)."""
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(error_code=NO_ERROR)
        self.flush_out()
        self.closed = True
        self._lose_all(ConnectionResetError("upstream HTTP/2 connection closed by us"))
        if self.transport is not None:
            self.transport.close()

    # --------------------------------------------------------------- internals
    def start(self, stream: H2ClientStream, fields: Headers) -> None:
        if stream.stream_id or stream.closed:
            return  # a second send_head, or a stream already abandoned
        self.reserved -= 1
        if not self.can_open():
            stream.closed = True
            if stream.callbacks is not None:
                stream.callbacks.on_stream_lost(
                    stream, StreamRefused("no stream available on this connection"), False
                )
            return
        sid = self.h2.get_next_available_stream_id()
        stream.stream_id = sid
        self.streams[sid] = stream
        end = stream.out_end and not stream.out and not stream.trailers_out
        try:
            self.h2.send_headers(sid, fields, end_stream=end)
        except h2.exceptions.ProtocolError as e:
            self.streams.pop(sid, None)
            stream.closed = True
            if stream.callbacks is not None:
                stream.callbacks.on_stream_lost(stream, UpstreamProtocolError(str(e)), False)
            return
        if end:
            stream.local_ended = True
        else:
            self.push(stream)
        self.flush_soon()

    def push(self, stream: H2ClientStream) -> None:
        if stream.closed or stream.local_ended or not stream.stream_id:
            return
        sid = stream.stream_id
        h2c = self.h2
        try:
            while stream.out:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = bytes(stream.out[:window])
                del stream.out[:window]
                end = stream.out_end and not stream.out and not stream.trailers_out
                h2c.send_data(sid, chunk, end_stream=end)
                if end:
                    stream.local_ended = True
                    return
            if not stream.out and stream.out_end:
                if stream.trailers_out:
                    h2c.send_headers(sid, stream.trailers_out, end_stream=True)
                else:
                    h2c.end_stream(sid)
                stream.local_ended = True
                return
        except h2.exceptions.StreamClosedError:
            return  # the backend reset it or already answered; its event follows
        except h2.exceptions.ProtocolError as e:
            log.warning("upstream HTTP/2 stream %d: request not sendable: %s", sid, e)
            self._lose(stream, UpstreamProtocolError(str(e)), reset=True)
            return
        high = self.limits.stream_write_high_water
        if not stream.out_paused and len(stream.out) > high:
            stream.out_paused = True
            if stream.callbacks is not None:
                stream.callbacks.on_write_pause()
        elif stream.out_paused and not self.write_paused and len(stream.out) <= high // 2:
            stream.out_paused = False
            if stream.callbacks is not None:
                stream.callbacks.on_write_resume()

    def _event(self, event: h2.events.Event) -> H2ClientStream | None:
        sid = getattr(event, "stream_id", 0) or 0
        stream = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.DataReceived):
            fcl = event.flow_controlled_length or 0
            if stream is None or stream.callbacks is None:
                self._ack(sid, fcl)
                return None
            data = event.data or b""
            if stream.head_request:
                data = b""
            if stream.read_off or stream.inq:
                stream.inq.append((data, fcl))
                stream.held += fcl
            else:
                if data:
                    stream.callbacks.on_response_data(data)
                self._ack(sid, fcl)
            return stream
        if isinstance(event, h2.events.ResponseReceived):
            if stream is None or stream.callbacks is None:
                return None
            status = 0
            fields: Headers = []
            for name, value in event.headers or ():
                n = bytes(name)
                if n == b":status":
                    status = int(value)
                elif n[:1] != b":":
                    fields.append((n, bytes(value)))
            if len(fields) > self.limits.max_headers:
                self._lose(
                    stream,
                    UpstreamHeadersTooLarge(
                        f"response head of {len(fields)} fields over {self.limits.max_headers}"
                    ),
                    reset=True,
                )
                return None
            stream.got_bytes = True
            ended = bool(event.stream_ended) or stream.head_request
            head = ResponseHead(
                status,
                fields,
                body_length=0 if event.stream_ended else content_length(fields),
                end_stream=ended,
            )
            stream.callbacks.on_response_head(stream, head)
            return stream
        if isinstance(event, h2.events.TrailersReceived):
            if stream is None:
                return None
            trailers = [(bytes(n), bytes(v)) for n, v in event.headers or ()]
            if len(trailers) > self.limits.max_headers:
                self._lose(
                    stream,
                    UpstreamHeadersTooLarge(f"{len(trailers)} trailer fields"),
                    reset=True,
                )
                return None
            stream.trailers_in = trailers
            return stream
        if isinstance(event, h2.events.StreamEnded):
            if stream is None or stream.callbacks is None:
                return None
            if stream.read_off or stream.inq:
                stream.end_queued = True
            else:
                self._finish(stream)
            return stream
        if isinstance(event, h2.events.StreamReset):
            if stream is None:
                return None
            if event.error_code == REFUSED_STREAM and not stream.got_bytes:
                exc: UpstreamProtocolError = StreamRefused("the backend refused the stream")
            else:
                exc = UpstreamProtocolError(f"stream reset by the backend ({event.error_code})")
            self._lose(stream, exc, reset=False)
            return None
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                clamp_encoder_table(self.h2, self.limits)
            for s in list(self.streams.values()):
                if s.out or (s.out_end and not s.local_ended):
                    self.push(s)
        if isinstance(event, h2.events.PingAckReceived):
            self.ping_sent = -1.0
        # InformationalResponseReceived (1xx), SettingsAcknowledged, PriorityUpdated:
        # nothing for the exchange.
        return None

    def _callback_failed(self, sid: int) -> None:
        """An exchange callback raised: a bug.  codec.py: "the codec logs it and calls
        on_fatal"; the stream is reset, the other streams go on."""
        log.exception("upstream HTTP/2 stream %d: exchange callback failed", sid)
        stream = self.streams.get(sid)
        if stream is None:
            return
        self.reset_stream(stream, CANCEL)
        callbacks = stream.callbacks
        stream.callbacks = None
        if callbacks is not None:
            with contextlib.suppress(Exception):  # on_fatal "must not raise"
                callbacks.on_fatal()

    def deliver_queued(self, stream: H2ClientStream) -> None:
        callbacks = stream.callbacks
        if callbacks is None:
            return
        while stream.inq and not stream.read_off:
            data, fcl = stream.inq.pop(0)
            stream.held -= fcl
            if data:
                callbacks.on_response_data(data)
            self._ack(stream.stream_id, fcl)
        if not stream.inq and stream.end_queued and not stream.read_off:
            stream.end_queued = False
            self._finish(stream)

    def _finish(self, stream: H2ClientStream) -> None:
        self.streams.pop(stream.stream_id, None)
        stream.closed = True
        if not stream.local_ended:
            # The response ended before our request did: the backend needs no more.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.stream_id, NO_ERROR)
        self.h2.forget(stream.stream_id)
        if not self.streams:
            self.idle_since = self.clock()
        reusable = not self.closed and self.goaway_last < 0
        if stream.callbacks is not None:
            stream.callbacks.on_response_end(stream, stream.trailers_in, reusable)
        self._retire_if_done()

    def _retire_if_done(self) -> None:
        """After the backend's GOAWAY, close once the streams it kept have ended."""
        if self.goaway_last >= 0 and not self.streams and not self.closed:
            self.close()

    def _ack(self, sid: int, n: int) -> None:
        if n and sid:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(n, sid)

    def reset_stream(self, stream: H2ClientStream, code: int) -> None:
        if stream.closed:
            return
        stream.closed = True
        if not stream.stream_id:
            self.reserved -= 1  # abandoned before its head: nothing was sent
            return
        if self.streams.pop(stream.stream_id, None) is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.stream_id, code)
            self.h2.forget(stream.stream_id)
            self.flush_out()
        if not self.streams:
            self.idle_since = self.clock()

    def _lose(self, stream: H2ClientStream, exc: BaseException, *, reset: bool) -> None:
        if stream.closed:
            return
        if reset:
            self.reset_stream(stream, CANCEL)
        stream.closed = True
        self.streams.pop(stream.stream_id, None)
        self.h2.forget(stream.stream_id)
        if not self.streams:
            self.idle_since = self.clock()
        if stream.callbacks is not None:
            stream.callbacks.on_stream_lost(stream, exc, stream.got_bytes)
        self._retire_if_done()

    def _goaway(self) -> None:
        last, code = self.inbound.goaways[-1]
        self.inbound.goaways.clear()
        self.goaway_last = last if self.goaway_last < 0 else min(last, self.goaway_last)
        log.debug("upstream HTTP/2 GOAWAY last=%d error=%d", last, code)
        for stream in list(self.streams.values()):
            if stream.stream_id > self.goaway_last:
                stream.got_bytes = False  # never processed: retryable (RFC 9113 6.8)
                self._lose(stream, StreamRefused("above the backend's GOAWAY"), reset=False)
        self._retire_if_done()

    def _fail(self, exc: BaseException) -> None:
        self.error = str(exc)
        self.flush_out()
        self.closed = True
        self._lose_all(exc)
        if self.transport is not None:
            self.transport.close()

    def _lose_all(self, exc: BaseException) -> None:
        for stream in list(self.streams.values()):
            self._lose(stream, exc, reset=False)
        self.streams.clear()

    def flush_soon(self) -> None:
        """`flush_out` now, or once at the end of this turn of the loop (``defer``)."""
        if self.defer is None:
            self.flush_out()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.defer(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        self.flush_out()

    def flush_out(self) -> None:
        data = self.h2.data_to_send()
        if not data or self.transport is None or self.closed:
            return
        try:
            self.outbound.scan(data, 0.0)
            self.outbound.check_outbound()
        except Violation as v:
            self.error = v.reason
            self.closed = True
            self._lose_all(UpstreamProtocolError(v.reason))
            self.transport.abort()
            return
        self.transport.write(data)


def _conforms(stream: H2ClientStream) -> ClientStream:
    """mypy proves H2ClientStream is a codec.ClientStream (never called)."""
    return stream
