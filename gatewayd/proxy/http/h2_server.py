"""Downstream HTTP/2 (RFC 9113) over the `h2` package, used sans-I/O.

`H2ServerConnection` has the shape of an ``asyncio.Protocol`` (``connection_made``,
``data_received``, ``pause_writing`` ...) but never touches a socket: it writes to the
transport it is given and reads the time from the clock it is given, so tests drive it
with a transport double and an `h2` client connection as the peer.  Each request is
one `H2ServerStream`, the ``codec.ServerStream`` the exchange drives; the exchange
gets the codec's callbacks (``on_start`` / ``on_data`` / ``on_end`` / ``on_reset`` /
``on_down_write_pause`` / ``on_down_write_resume``).

Flow control per stream (issue 12): request body bytes are acknowledged
(``acknowledge_received_data``, which sends WINDOW_UPDATE) only when the exchange has
taken them.  A read-disabled stream keeps its bytes queued and its window shut; the
others go on.  The queue of a stream is bounded by its window (64 KiB), the sum by the
connection window (1 MiB): h2 acknowledges both windows together, as Envoy's
``nghttp2_session_consume`` does, so a connection holds at most 1 MiB of request body.
(A consequence: 16 streams stalled at a full 64 KiB window stall the connection.)

Response bytes wait in the stream while the peer's window is shut; past
``stream_write_high_water`` the stream calls ``on_down_write_pause`` so the exchange stops
reading its upstream.  A stream stalled on a zero window for ``stream_idle_timeout`` is
reset, a connection without streams for ``idle_timeout`` gets GOAWAY and is closed
(`tick`).

Defences are in ``h2_limits``: frame sizes, header blocks, floods, premature resets
(client RST_STREAM and resets we send because of client errors), outbound frames the
peer does not read.  A violation sends GOAWAY with its error code and closes.

Graceful drain (`drain`): one GOAWAY(NO_ERROR, last stream id) written by hand, because
h2 refuses to send anything on a connection after its own GOAWAY; the streams already
open finish, later ones are refused (REFUSED_STREAM, which clients retry), and the
connection closes when the last stream is done.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from gatewayd.proxy.forwarded import ENVOY_PREFIX, FORWARD_WALKED
from gatewayd.proxy.http.codec import (
    HTTP_2,
    DownstreamConnection,
    ExchangeFactory,
    Headers,
    RequestHead,
    ResponseHead,
    ServerStream,
    StreamCallbacks,
)
from gatewayd.proxy.http.h2_conn import BoundedH2Connection, CacheableRequest, h2_config
from gatewayd.proxy.http.h2_fields import (
    _OWS,
    CONNECTION_SPECIFIC,
    NEVER_INDEXED,
    content_length,
    join_cookies,
    to_h2_fields,
)
from gatewayd.proxy.http.h2_hpack import _UNIQUE_NAMES, UNIQUE_NAMES, plain_field
from gatewayd.proxy.http.h2_limits import (
    EDGE_H2_LIMITS,
    FrameScanner,
    H2Limits,
    ResetBudget,
    Violation,
)
from gatewayd.proxy.localreply import date_header

log = logging.getLogger("gatewayd.h2")

_INTERNAL_ERROR = 0x2
_REFUSED_STREAM = 0x7
_NO_ERROR = 0x0
_DATE = date_header  # b"date: ...\r\n"
_new_head = RequestHead.__new__


def clamp_encoder_table(conn: h2.connection.H2Connection, limits: H2Limits) -> None:
    """Keep our HPACK encoder's dynamic table within ``header_table_size`` whatever the
    peer's SETTINGS_HEADER_TABLE_SIZE: that setting is a maximum the encoder may stay
    under (RFC 7541 4.2), and a peer announcing 4 GiB would otherwise make us keep a
    table of that size of the fields we send."""
    if conn.encoder.header_table_size > limits.header_table_size:
        conn.encoder.header_table_size = limits.header_table_size


class Transport(Protocol):
    """What the codec needs of an asyncio transport (a test double has these)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...


def _date_value() -> bytes:
    return _DATE()[6:-2]


def _status_bytes(status: int) -> bytes:
    return b"%d" % status


# Response fields as they go out (issue 12): (name, value) as the exchange gives it ->
# (the HTTP/2 field, its HPACK bytes), or _DROPPED.  `to_h2_fields` then
# `StaticEncoder.encode` did the same per field with a lower-casing, four set look-ups
# and a strip, then a second look-up; most response fields repeat (the backend's
# ``server``, ``content-type``, ``etag`` ...).  Bounded: fields up to
# RESPONSE_FIELD_MAX_BYTES, at most RESPONSE_FIELD_ENTRIES (emptied when full); values
# new on every response (``x-request-id``, ``traceparent``) are not kept; the
# ``content-length`` the codec writes is kept by length (as many entries at most).
RESPONSE_FIELD_ENTRIES = 1024
RESPONSE_FIELD_MAX_BYTES = 256
_DROPPED: tuple[tuple[bytes, bytes], bytes] = ((b"", b""), b"")
_response_fields: dict[tuple[bytes, bytes], tuple[tuple[bytes, bytes], bytes]] = {}
_status_fields: dict[int, tuple[tuple[bytes, bytes], bytes]] = {}
_length_fields: dict[int, tuple[tuple[bytes, bytes], bytes]] = {}  # by body length


# Whole response heads (issue 12): (status, body length, the fields but a last one new
# on every response) -> (the HTTP/2 fields and their HPACK block before that last one
# and content-length; content-length's field and bytes, or None).  A backend answers
# the same head again and again (within the second of its ``date``), and the walk of
# `_response_fields_by_field` was 2.5 us of a small exchange's 31.  Bounded: heads of
# up to RESPONSE_HEAD_MAX_FIELDS fields and RESPONSE_HEAD_MAX_BYTES of HPACK, at most
# RESPONSE_HEAD_ENTRIES (emptied when full).
RESPONSE_HEAD_ENTRIES = 128
RESPONSE_HEAD_MAX_FIELDS = 32
RESPONSE_HEAD_MAX_BYTES = 4096
_response_heads: dict[
    tuple[object, ...], tuple[Headers, bytes, tuple[tuple[bytes, bytes], bytes] | None]
] = {}
# HPACK string lengths under 127, one byte each (RFC 7541 5.1, 7-bit prefix, no
# Huffman): `plain_field` of a request id or traceparent inlined in `response_fields`
# (its call and `_integer`'s, ~0.2 us a response, timeit).
_SHORT_LENGTHS: tuple[bytes, ...] = tuple(bytes((i,)) for i in range(127))


def response_fields(
    status: int, headers: Sequence[tuple[bytes, bytes]], body_length: int | None
) -> tuple[Headers, list[bytes]] | None:
    """The HTTP/2 fields of a response head (``:status``, then what `to_h2_fields`
    keeps, ``content-length`` from ``body_length`` when it has one) and their HPACK
    bytes; None for a head with fields that take `to_h2_fields`' own path
    (``connection`` naming others, credentials, cookies)."""
    n = len(headers)
    if not n or n > RESPONSE_HEAD_MAX_FIELDS:
        return _response_fields_by_field(status, headers, body_length)
    tail: tuple[bytes, bytes] | None = headers[-1]
    if type(tail) is tuple and tail[0] in UNIQUE_NAMES:  # x-request-id: not in the key
        key: tuple[object, ...] = (status, body_length, *headers[:-1])
    else:
        key = (status, body_length, *headers)
        tail = None
    try:
        hit = _response_heads.get(key)
    except TypeError:  # not tuples of bytes: `to_h2_fields` copes
        return _response_fields_by_field(status, headers, body_length)
    if hit is None:
        got = _response_fields_by_field(status, headers[:-1] if tail else headers, body_length)
        if got is None:
            return None
        fields, encoded = got
        cl = None
        if body_length is not None and status >= 200 and status not in (204, 304):
            cl = (fields.pop(), encoded.pop())
        hit = (fields, b"".join(encoded), cl)
        if len(hit[1]) <= RESPONSE_HEAD_MAX_BYTES:
            if len(_response_heads) >= RESPONSE_HEAD_ENTRIES:
                _response_heads.clear()
            _response_heads[key] = hit
    fields, block, cl = hit
    out = [*fields]
    encoded = [block]
    if tail is not None:
        name, value = tail
        value = value.strip(_OWS)
        out.append((name, value))
        n = len(value)
        encoded.append(
            _UNIQUE_NAMES[name] + _SHORT_LENGTHS[n] + value if n < 127 else plain_field(name, value)
        )
    if cl is not None:
        out.append(cl[0])
        encoded.append(cl[1])
    return out, encoded


def _response_fields_by_field(
    status: int, headers: Sequence[tuple[bytes, bytes]], body_length: int | None
) -> tuple[Headers, list[bytes]] | None:
    """`response_fields`, one field at a time."""
    hit = _status_fields.get(status)
    if hit is None:
        status_field = (b":status", _status_bytes(status))
        hit = _status_fields[status] = (status_field, plain_field(*status_field))
    hits = [hit]  # (field, its bytes): split in two at the end
    add = hits.append
    length = body_length is not None and status >= 200 and status not in (204, 304)
    cache = _response_fields
    for field in headers:
        try:
            hit = cache.get(field)
        except TypeError:  # not a tuple of bytes: `to_h2_fields` copes
            return None
        if hit is None:
            name, value = field
            if name in UNIQUE_NAMES:  # x-request-id, new on every response: not kept
                value = value.strip(_OWS)
                add(((name, value), plain_field(name, value)))
                continue
            lname = name.lower()
            if lname == b"connection" or lname in NEVER_INDEXED or lname == b"cookie":
                return None
            if lname in CONNECTION_SPECIFIC or lname == b"host" or lname == b"te":
                hit = _DROPPED  # te: responses carry none (RFC 9113 8.2.2)
            elif lname == b"content-length" and length:
                continue
            else:
                out = (lname, value.strip(_OWS))
                hit = (out, plain_field(lname, out[1]))
                if (
                    lname in UNIQUE_NAMES
                    or lname == b"content-length"
                    or len(lname) + len(value) > RESPONSE_FIELD_MAX_BYTES
                ):
                    add(hit)
                    continue
            if len(cache) >= RESPONSE_FIELD_ENTRIES:
                cache.clear()
            cache[field] = hit
        if hit is not _DROPPED:
            add(hit)
    if length and body_length is not None:
        hit = _length_fields.get(body_length)
        if hit is None:
            cl = (b"content-length", b"%d" % body_length)
            hit = (cl, plain_field(*cl))
            if len(_length_fields) >= RESPONSE_FIELD_ENTRIES:
                _length_fields.clear()
            _length_fields[body_length] = hit
        add(hit)
    return [h[0] for h in hits], [h[1] for h in hits]


class KnownRequest:
    """What `H2ServerConnection._request` made of a request header block, kept by the
    HTTP/2 connection for the next HEADERS frame with the same bytes
    (``BoundedH2Connection.remember_request``): a client repeats its header block, and
    decoding, validating and reading it again was about 4 us of each request's 35 (in
    ``loadtest/bench_h2_inproc.py``).  ``fields`` is copied for each request (the
    exchange edits its head's list)."""

    __slots__ = (
        "authority",
        "body_length",
        "clean",
        "fields",
        "method",
        "path",
        "protocol",
        "scheme",
    )

    def __init__(
        self,
        method: bytes,
        path: bytes,
        fields: Headers,
        authority: bytes | None,
        scheme: bytes | None,
        protocol: bytes | None,
        body_length: int | None,
        clean: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.fields = tuple(fields)
        self.authority = authority
        self.scheme = scheme
        self.protocol = protocol
        self.body_length = body_length  # content-length of a request not yet ended
        self.clean = clean  # ``RequestHead.forward_clean`` of its heads


class H2ServerStream:
    """One HTTP/2 request/response: the ``codec.ServerStream`` of an exchange."""

    __slots__ = (
        "_conn",
        "callbacks",
        "end_queued",
        "exch_held",
        "head_encoded",
        "head_pending",
        "held",
        "inq",
        "no_body",
        "opened_at",
        "out",
        "out_end",
        "out_paused",
        "read_off",
        "remote_ended",
        "request_method",
        "response_ended",
        "response_started",
        "stalled_since",
        "stream_id",
        "trailers_in",
        "trailers_out",
        "unacked",
    )

    def __init__(self, conn: H2ServerConnection, stream_id: int, method: bytes, now: float) -> None:
        self._conn = conn
        self.opened_at = now  # the clock as the read that opened it began
        self.stream_id = stream_id
        self.request_method = method
        self.callbacks: StreamCallbacks | None = None
        self.read_off = 0  # read_disable reasons (bit mask)
        self.inq: list[tuple[bytes, int]] = []  # request data held while read-disabled
        self.end_queued = False  # the request ended behind the queued data
        self.trailers_in: Headers | None = None
        self.remote_ended = False
        self.held = 0  # flow-controlled bytes in inq
        self.exch_held = 0  # body bytes the exchange holds (hold / release_held)
        self.unacked = 0  # delivered bytes whose window waits for release_held
        self.head_pending: Headers | None = None  # response head not yet given to h2
        self.head_encoded: list[bytes] | None = None  # its HPACK bytes, when known
        self.no_body = False
        self.out = bytearray()  # response body waiting for flush / the peer's window
        self.out_end = False  # send_end called
        self.trailers_out: Headers | None = None
        self.out_paused = False
        self.response_started = False
        self.response_ended = False  # END_STREAM given to h2
        self.stalled_since = -1.0

    # ----------------------------------------------------------- codec.ServerStream
    @property
    def conn(self) -> DownstreamConnection:
        return self._conn.conn

    @property
    def closing(self) -> bool:
        return self._conn.draining or self._conn.closed

    def send_continue(self) -> None:
        if self.response_started or self.response_ended:
            return
        self._conn.send_headers(self.stream_id, [(b":status", b"100")], end_stream=False)
        self._conn.flush_out()

    def send_head(self, head: ResponseHead, request_method: bytes) -> None:
        status = head.status
        fast = response_fields(status, head.headers, head.body_length)
        if fast is not None:
            self.head_pending, self.head_encoded = fast
            self.no_body = (
                request_method == b"HEAD" or status < 200 or status == 204 or status == 304
            )
            self.response_started = True
            return
        fields: Headers = [(b":status", _status_bytes(status))]
        fields += to_h2_fields(head.headers, request=False)
        no_body = request_method == b"HEAD" or status < 200 or status == 204 or status == 304
        if head.body_length is not None and status not in (204, 304) and status >= 200:
            fields = [f for f in fields if f[0] != b"content-length"]
            fields.append((b"content-length", b"%d" % head.body_length))
        self.head_pending = fields
        self.head_encoded = None
        self.no_body = no_body
        self.response_started = True

    def send_tunnel_head(self, head: ResponseHead) -> None:
        # RFC 8441 5: the extended CONNECT succeeded, ":status 200"; the WebSocket
        # handshake fields of HTTP/1.1 are not used ("Sec-WebSocket-Accept ... not
        # used"), and connection-specific ones never cross into HTTP/2.
        fields: Headers = [(b":status", b"200")]
        fields += [
            f for f in to_h2_fields(head.headers, request=False) if f[0] != b"sec-websocket-accept"
        ]
        self.head_pending = fields
        self.head_encoded = None
        self.no_body = False
        self.response_started = True

    def send_data(self, data: bytes) -> None:
        if not self.no_body and not self.response_ended:
            self.out += data

    def send_end(self, trailers: Headers | None = None) -> None:
        self.out_end = True
        if trailers:
            self.trailers_out = to_h2_fields(trailers, request=False)
        conn = self._conn  # ``flush`` inlined (a call less per response)
        conn.push(self)
        if conn.defer is None:
            conn.flush_out()
        elif not conn._flush_scheduled:
            conn._flush_scheduled = True
            conn.defer(conn._deferred_flush)

    def flush(self) -> None:
        conn = self._conn
        if not self.response_ended:  # else `push` has nothing to give h2
            conn.push(self)
        # ``flush_soon`` inlined: the exchange flushes after ``send_end`` too (its
        # ``_finish``), when the flush is mostly scheduled already.
        if conn.defer is None:
            conn.flush_out()
        elif not conn._flush_scheduled:
            conn._flush_scheduled = True
            conn.defer(conn._deferred_flush)

    def drain_request(self) -> bool:
        # HTTP/2: the stream ends on its own (RST_STREAM NO_ERROR for an unfinished
        # request body, RFC 9113 8.1); nothing to read and drop.
        return False

    def done(self, close: bool = False) -> None:
        self._conn.stream_done(self)

    def hold(self, n: int) -> None:
        self.exch_held += n

    def release_held(self, n: int) -> None:
        self.exch_held = max(0, self.exch_held - n)
        give = min(n, self.unacked)
        if give:
            self.unacked -= give
            if self.stream_id in self._conn.streams:
                self._conn.ack(self.stream_id, give)
                self._conn.flush_out()

    def local_reply(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, close: bool
    ) -> int:
        if self.response_started or self.response_ended:
            return 0
        no_body = self.request_method == b"HEAD" or status < 200 or status == 204 or status == 304
        fields: Headers = [
            (b":status", _status_bytes(status)),
            (b"date", _date_value()),
            (b"server", b"gatewayd"),
        ]
        if status >= 200 and status not in (204, 304):
            if body:
                fields.append((b"content-type", b"text/plain"))
            fields.append((b"content-length", b"%d" % len(body)))
        fields += to_h2_fields(headers, request=False)
        self.head_pending = fields
        self.head_encoded = None
        self.no_body = no_body
        self.response_started = True
        sent = 0
        if not no_body and body:
            self.out += body
            sent = len(body)
        self.send_end(None)
        return sent

    def reset(self) -> None:
        self._conn.reset_stream(self, _INTERNAL_ERROR)

    def read_disable(self, reason: int) -> None:
        self.read_off |= reason

    def read_enable(self, reason: int) -> None:
        if not self.read_off & reason:
            return
        self.read_off &= ~reason
        if not self.read_off and (self.inq or self.end_queued):
            self._conn.deliver_queued(self)
            self._conn.flush_out()

    def write_buffer_size(self) -> int:
        return len(self.out)


class H2ServerConnection:
    """One downstream HTTP/2 connection (asyncio.Protocol-shaped, sans-I/O)."""

    def __init__(
        self,
        conn: DownstreamConnection,
        factory: ExchangeFactory,
        *,
        clock: Callable[[], float],
        limits: H2Limits = EDGE_H2_LIMITS,
        on_lost: Callable[[BaseException | None], None] | None = None,
        tunnel_factory: ExchangeFactory | None = None,
        defer: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self.conn = conn
        # Response bytes of streams answered in one turn of the event loop go out in one
        # write (``defer``: the loop's ``call_soon``): the responses of a client's
        # streams mostly arrive together from their upstream connections, and one
        # send(2) per response was the largest single cost of a small HTTP/2 exchange
        # in profiles (h2load -m 4).  None: every flush writes at once (tests).
        self.defer = defer
        self._flush_scheduled = False
        # Extended CONNECT (RFC 8441, ``:protocol``) streams: their exchange
        # (``upgrade.UpgradeExchange``); None: ``factory`` serves them too.
        self.tunnel_factory = tunnel_factory
        # Told when the transport is gone (the HTTP/1.1 connection that handed this one
        # over keeps the proxy's connection count).
        self.on_lost = on_lost
        self.factory = factory
        self.clock = clock
        self.limits = limits
        self.h2 = BoundedH2Connection(config=h2_config(client_side=False))
        self.h2.fast_inbound = True  # h2_inbound: requests' HEADERS frames read by us
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_stream_window,
                h2.settings.SettingCodes.HEADER_TABLE_SIZE: limits.header_table_size,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_bytes,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                # RFC 8441 3: "a server MAY send this setting to signal that it
                # supports the extended CONNECT method"; h2 4.x then accepts
                # :protocol on CONNECT (and checks :scheme and :path are there).
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        self.h2.decoder.max_header_list_size = limits.max_header_list_bytes
        self.h2.decoder.max_allowed_table_size = limits.header_table_size
        self.inbound = FrameScanner(limits, inbound=True, preface=True, strip_goaway=True)
        self.outbound = FrameScanner(limits, inbound=False)
        self.inbound.sent = self.outbound
        self.resets = ResetBudget(limits)
        self.streams: dict[int, H2ServerStream] = {}
        self.transport: Transport | None = None
        self.counted_resets = 0  # outbound RST_STREAM frames already looked at
        self.draining = False
        self.goaway_last = -1  # last stream id of our graceful GOAWAY
        self.closed = False
        self.write_paused = False
        self.idle_since = clock()
        self.violation: str | None = None  # why we closed, for logs and tests

    def adopt(self, transport: Any, data: bytes) -> None:
        """Take over a transport whose first bytes another protocol already read: the
        HTTP/1.1 server seeing the h2c prior-knowledge preface (`is_h2_preface`), or a
        TLS connection whose ALPN chose ``h2``.  `data` is everything read so far."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if data:
            self.data_received(data)

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
            data = self.inbound.scan_inbound(data, now)
            events = self.h2.receive_data(data)
        except Violation as v:
            self.fail(v.error_code, v.reason)
            return
        except h2.exceptions.ProtocolError as e:
            # h2 has queued GOAWAY with the error code; send it and close.
            self.violation = f"protocol error: {e}"
            self._close_after_flush()
            return
        for event in events:
            if self.closed:
                return
            try:
                if type(event) is tuple:  # a request header block seen before
                    self._known_request(event[0], event[1], event[2], now)
                else:
                    self._event(event, now)
            except Exception:
                sid = event[0] if type(event) is tuple else getattr(event, "stream_id", 0)
                self._callback_failed(sid or 0)
        if self.closed:
            return
        self._count_provoked_resets(now)
        if self.inbound.goaways and not self.closed:
            self._client_goaway()
        self.flush_out()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._abort_streams()
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.outbound.writes_paused(True)
        for stream in list(self.streams.values()):
            if stream.callbacks is not None and not stream.out_paused:
                stream.out_paused = True
                stream.callbacks.on_down_write_pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.outbound.writes_paused(False)
        for stream in list(self.streams.values()):
            if (
                stream.callbacks is not None
                and stream.out_paused
                and len(stream.out) <= self.limits.stream_write_high_water // 2
            ):
                stream.out_paused = False
                stream.callbacks.on_down_write_resume()

    # ------------------------------------------------------------------ timers
    def tick(self, now: float) -> None:
        """Idle and zero-window stall timeouts (called by the proxy's periodic sweep)."""
        if self.closed:
            return
        limits = self.limits
        if not self.streams:
            if limits.idle_timeout and now - self.idle_since >= limits.idle_timeout:
                self.violation = "idle timeout"
                self.drain()
            return
        if not limits.stream_idle_timeout:
            return
        for stream in list(self.streams.values()):
            if stream.stalled_since >= 0 and (
                now - stream.stalled_since >= limits.stream_idle_timeout
            ):
                self.reset_stream(stream, _INTERNAL_ERROR, notify=True)
        self.flush_out()

    def drain(self) -> None:
        """Graceful close: GOAWAY(NO_ERROR, last stream id); close when streams end."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.goaway_last = self.h2.highest_inbound_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.goaway_last
        frame.error_code = _NO_ERROR
        self.flush_out()
        self._write(frame.serialize())
        if not self.streams:
            self._close_after_flush()

    def fail(self, error_code: int, reason: str) -> None:
        """A limit was broken: GOAWAY(error_code), abandon the streams, close."""
        if self.closed:
            return
        self.violation = reason
        log.info("HTTP/2 connection closed: %s", reason)
        if not self.outbound.paused:
            # h2 refuses a second GOAWAY when it already sent its own.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(
                    error_code=error_code, last_stream_id=self.h2.highest_inbound_stream_id
                )
            self._close_after_flush()
        else:
            # The peer does not read: nothing more will reach it.
            self.closed = True
            self._abort_streams()
            if self.transport is not None:
                self.transport.abort()

    # --------------------------------------------------------------- internals
    def _event(self, event: h2.events.Event, now: float) -> None:
        # The events of every request first: its HEADERS, its end.
        if isinstance(event, h2.events.RequestReceived):
            self._request(event, now)
        elif isinstance(event, h2.events.StreamEnded):
            self._remote_end(event.stream_id or 0, now)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            data = event.data or b""
            fcl = event.flow_controlled_length or 0
            if stream is None or stream.callbacks is None:
                # A stream we answered or reset already: give the window back.
                if fcl:
                    self._ack(event.stream_id or 0, fcl)
                return
            if stream.read_off or stream.inq:
                stream.inq.append((data, fcl))
                stream.held += fcl
            else:
                self._deliver(stream, stream.callbacks, data, fcl)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                trailers = list(event.headers or ())
                if len(trailers) > self.limits.max_headers:
                    self.reset_stream(stream, _INTERNAL_ERROR, notify=True, provoked=True)
                    return
                stream.trailers_in = trailers
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                premature = self._premature(stream, now)
                if stream.callbacks is not None:
                    stream.callbacks.on_reset()
                self._stream_gone(premature, now)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            if isinstance(event, h2.events.RemoteSettingsChanged):
                clamp_encoder_table(self.h2, self.limits)
            for stream in list(self.streams.values()):
                if stream.out or stream.head_pending is not None or stream.out_end:
                    self.push(stream)

    def _remote_end(self, sid: int, now: float) -> None:
        stream = self.streams.get(sid)
        if stream is not None and stream.callbacks is not None:
            stream.remote_ended = True
            if stream.read_off or stream.inq:
                stream.end_queued = True
            else:
                stream.callbacks.on_end(stream.trailers_in)
            self._maybe_done(stream, now)

    def _callback_failed(self, sid: int) -> None:
        """An exchange callback raised: a bug.  codec.py: "the codec logs it and ...
        answers 500 / resets (downstream)"; the other streams go on."""
        log.exception("HTTP/2 stream %d: exchange callback failed", sid)
        stream = self.streams.get(sid)
        if stream is None:
            return
        if not stream.response_started:
            stream.callbacks = None  # no more calls into the broken exchange
            stream.local_reply(500, (), b"internal error", close=True)
        else:
            self.reset_stream(stream, _INTERNAL_ERROR)
        self.flush_out()

    def _client_goaway(self) -> None:
        """The client's GOAWAY: it opens nothing more; with an error, everything ends
        now, else the open streams finish and the connection closes after them."""
        _last, code = self.inbound.goaways[-1]
        self.inbound.goaways.clear()
        if code:
            self.violation = f"client GOAWAY error {code}"
            self.closed = True
            self._abort_streams()
            if self.transport is not None:
                self.transport.close()
            return
        self.draining = True
        if not self.streams:
            self._close_after_flush()

    def _request(self, event: h2.events.RequestReceived, now: float) -> None:
        sid = event.stream_id or 0
        if self.draining and sid > self.goaway_last:
            self.h2.reset_stream(sid, _REFUSED_STREAM)
            return
        method = b""
        path = b""
        authority: bytes | None = None
        scheme: bytes | None = None
        protocol: bytes | None = None
        host: bytes | None = None
        cookies = 0
        clean = True  # ``RequestHead.forward_clean``
        fields: Headers = []
        add = fields.append
        # Names and values are bytes (``h2_config``: no header encoding); h2's
        # validation put the pseudo-headers first (RFC 9113 8.3) and refused upper-case
        # names.  The first ``host``, the number of ``cookie`` fields and whether a
        # field is one the forwarding walk handles are noted on the way (no second
        # walk).
        for field in event.headers or ():
            n = field[0]
            if n[:1] == b":":
                v = field[1]
                if n == b":method":
                    method = v
                elif n == b":path":
                    path = v
                elif n == b":authority":
                    authority = v
                elif n == b":scheme":
                    scheme = v
                elif n == b":protocol":
                    protocol = v
                continue
            if n == b"host":
                if host is None:
                    host = field[1]
            elif n == b"cookie":
                cookies += 1
            elif n in FORWARD_WALKED or n[:8] == ENVOY_PREFIX:
                clean = False
            add((n, field[1]))
        stream = H2ServerStream(self, sid, method, now)
        stream.remote_ended = bool(event.stream_ended)
        self.streams[sid] = stream
        if len(fields) > self.limits.max_headers:
            # RFC 6585 5: 431 Request Header Fields Too Large; the HPACK state is intact
            # (the list was decoded within its byte bound), so only this stream ends.
            stream.local_reply(431, (), b"request header fields too large", close=False)
            return
        if authority is None:
            authority = host
        elif host is None:
            # RFC 9113 8.3.1: "An intermediary that forwards a request over HTTP/1.1
            # MUST construct a Host header field if one is not present in a request by
            # copying the value of the :authority pseudo-header field."  Done here, so
            # the exchange (host matching, forwarding) sees what an HTTP/1.1 client
            # sends; the HTTP/2 client codec turns it back into :authority.
            fields.insert(0, (b"host", authority))
        if cookies > 1:
            fields = join_cookies(fields)
        ended = bool(event.stream_ended)
        length = content_length(fields)
        body_length = 0 if ended else length
        if type(event) is CacheableRequest:
            h2s = self.h2.streams.get(sid)
            if h2s is not None:
                known = KnownRequest(
                    method, path, fields, authority, scheme, protocol, length, clean
                )
                self.h2.remember_request(
                    event.block, event.gen, h2s._expected_content_length, known
                )
        head = RequestHead(
            method,
            path,
            fields,
            authority=authority,
            scheme=scheme,
            version=HTTP_2,
            body_length=body_length,
            end_stream=ended,
            protocol=protocol,
        )
        # No field the forwarding walk drops, keeps a copy of or replaces: exchange
        # forwards the fields without that walk (as for HTTP/1.1, h1_server).
        head.forward_clean = clean
        factory = self.factory
        if protocol is not None and self.tunnel_factory is not None:
            factory = self.tunnel_factory
        callbacks = factory(stream, head)
        stream.callbacks = callbacks
        if self.write_paused:
            stream.out_paused = True
            callbacks.on_down_write_pause()
        callbacks.on_start()

    def _known_request(self, sid: int, ended: bool, known: KnownRequest, now: float) -> None:
        """`_request` and, with ``ended``, the StreamEnded event after it, for a header
        block `_request` read before (`KnownRequest`)."""
        if self.draining and sid > self.goaway_last:
            self.h2.reset_stream(sid, _REFUSED_STREAM)
            return
        method = known.method
        stream = H2ServerStream(self, sid, method, now)
        stream.remote_ended = ended
        self.streams[sid] = stream
        protocol = known.protocol
        # ``RequestHead(method, path, fields, authority=..., scheme=..., version=HTTP_2,
        # body_length=..., end_stream=..., protocol=...)`` without the keyword call
        # (as ``codec.request_head``; a test holds the two to the same attributes),
        # with the ``forward_clean`` `_request` found.
        head = _new_head(RequestHead)
        head.method = method
        head.target = known.path
        head.headers = [*known.fields]
        head.authority = known.authority
        head.scheme = known.scheme
        head.version = HTTP_2
        head.body_length = 0 if ended else known.body_length
        head.end_stream = ended
        head.expect_continue = False
        head.protocol = protocol
        head.keep_alive = True
        head.transfer_codings = None
        head.forward_clean = known.clean
        factory = self.factory
        if protocol is not None and self.tunnel_factory is not None:
            factory = self.tunnel_factory
        callbacks = factory(stream, head)
        stream.callbacks = callbacks
        if self.write_paused:
            stream.out_paused = True
            callbacks.on_down_write_pause()
        callbacks.on_start()
        if ended and self.streams.get(sid) is stream and stream.callbacks is not None:
            # ``_remote_end`` inlined (a call and a look-up less): the request has
            # neither body nor trailers.
            callbacks = stream.callbacks
            if stream.read_off or stream.inq:
                stream.end_queued = True
            else:
                callbacks.on_end(None)
            if stream.response_ended:  # ``_maybe_done``'s first test
                self._maybe_done(stream, now)

    def deliver_queued(self, stream: H2ServerStream) -> None:
        callbacks = stream.callbacks
        if callbacks is None:
            return
        while stream.inq and not stream.read_off and stream.callbacks is not None:
            data, fcl = stream.inq.pop(0)
            stream.held -= fcl
            self._deliver(stream, callbacks, data, fcl)
        if not stream.inq and stream.end_queued and not stream.read_off:
            stream.end_queued = False
            callbacks.on_end(stream.trailers_in)
            self._maybe_done(stream, self.clock())

    def _deliver(
        self, stream: H2ServerStream, callbacks: StreamCallbacks, data: bytes, fcl: int
    ) -> None:
        """Hand body bytes to the exchange; their window reopens now, or when the
        exchange releases them if it holds them (``hold`` during ``on_data``)."""
        before = stream.exch_held
        if data:
            callbacks.on_data(data)
        defer = min(max(0, stream.exch_held - before), fcl)
        stream.unacked += defer
        if fcl - defer and stream.stream_id in self.streams:
            self._ack(stream.stream_id, fcl - defer)

    def stream_done(self, stream: H2ServerStream) -> None:
        """The exchange is over (``ServerStream.done``): no more calls into it.  A
        response it ended finishes on its own (it may wait for window); one it did
        not end is reset."""
        stream.callbacks = None
        if stream.stream_id not in self.streams:
            return
        # Body it never took or still holds: give the windows back.
        pending = stream.held + stream.unacked
        stream.inq.clear()
        stream.held = stream.unacked = 0
        stream.end_queued = False
        if pending:
            self._ack(stream.stream_id, pending)
        if not stream.out_end:
            self.reset_stream(stream, _INTERNAL_ERROR)
            return
        if stream.response_ended:
            self._maybe_done(stream, self.clock())
        self.flush_out()

    def ack(self, stream_id: int, n: int) -> None:
        self._ack(stream_id, n)

    def _ack(self, stream_id: int, n: int) -> None:
        # A connection h2 already closed has nothing to give back.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.acknowledge_received_data(n, stream_id)

    def send_headers(self, stream_id: int, fields: Headers, *, end_stream: bool) -> None:
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError as e:
            log.debug("HTTP/2 stream %d: headers not sent: %s", stream_id, e)

    def push(self, stream: H2ServerStream) -> None:
        """Give h2 what the stream has buffered, within the peer's windows."""
        if stream.response_ended or self.closed:
            return
        sid = stream.stream_id
        h2c = self.h2
        if not stream.response_started:
            if stream.out or stream.out_end:
                # Body or end before any head: a bug in the caller; h2 would send the
                # DATA frames anyway and the client would fail the whole connection.
                log.warning("HTTP/2 stream %d: response body before its head", sid)
                self.reset_stream(stream, _INTERNAL_ERROR, notify=True)
            return
        if (
            stream.head_pending is not None
            and stream.out_end
            and stream.remote_ended
            and h2c.send_response(
                sid,
                stream.head_pending,
                bytes(stream.out),
                stream.head_encoded,
                stream.trailers_out or None,
            )
        ):
            # The common case in one go (`BoundedH2Connection.send_response`): a whole
            # response to a whole request, within the windows and one DATA frame, its
            # trailers (gRPC) in a last HEADERS frame.
            stream.head_pending = stream.head_encoded = stream.trailers_out = None
            self._response_done(stream)
            return
        try:
            if stream.head_pending is not None:
                fields = stream.head_pending
                stream.head_pending = stream.head_encoded = None
                end = stream.out_end and not stream.out and not stream.trailers_out
                h2c.send_headers(sid, fields, end_stream=end)
                if end:
                    self._response_done(stream)
                    return
            sent = False
            while stream.out:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = bytes(stream.out[:window])
                del stream.out[:window]
                end = stream.out_end and not stream.out and not stream.trailers_out
                h2c.send_data(sid, chunk, end_stream=end)
                sent = True
                if end:
                    self._response_done(stream)
                    return
            if not stream.out and stream.out_end:
                if stream.trailers_out:
                    h2c.send_headers(sid, stream.trailers_out, end_stream=True)
                else:
                    h2c.end_stream(sid)
                self._response_done(stream)
                return
        except h2.exceptions.StreamClosedError:
            return  # the client reset it; StreamReset tells the exchange
        except h2.exceptions.ProtocolError as e:
            # The exchange asked for something HTTP/2 cannot carry (say, an end without
            # a head): a bug, not the client's doing.  End the stream, not the process.
            log.warning("HTTP/2 stream %d: response not sendable: %s", sid, e)
            self.reset_stream(stream, _INTERNAL_ERROR, notify=True)
            return
        # Zero-window stall tracking (the clock restarts whenever bytes move) and write
        # backpressure for this stream.
        if stream.out:
            if sent or stream.stalled_since < 0:
                stream.stalled_since = self.clock()
            if not stream.out_paused and len(stream.out) > self.limits.stream_write_high_water:
                stream.out_paused = True
                if stream.callbacks is not None:
                    stream.callbacks.on_down_write_pause()
        else:
            stream.stalled_since = -1.0
        if (
            stream.out_paused
            and not self.write_paused
            and len(stream.out) <= self.limits.stream_write_high_water // 2
        ):
            stream.out_paused = False
            if stream.callbacks is not None:
                stream.callbacks.on_down_write_resume()

    def _response_done(self, stream: H2ServerStream) -> None:
        stream.response_ended = True
        stream.stalled_since = -1.0
        stream.out = bytearray()
        self._maybe_done(stream, self.clock())

    def _maybe_done(self, stream: H2ServerStream, now: float) -> None:
        if not stream.response_ended or stream.stream_id not in self.streams:
            return
        if not stream.remote_ended:
            # RFC 9113 8.1: a server may answer before the request is complete, then
            # "request that the client abort transmission of a request without error
            # by sending a RST_STREAM with an error code of NO_ERROR".  h2 may have
            # read the request's END_STREAM already (same read, events not yet
            # delivered): the stream is closed there and needs no reset.
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream.stream_id, _NO_ERROR)
        elif stream.inq or stream.end_queued:
            return  # the exchange has not taken the whole request yet
        del self.streams[stream.stream_id]
        self._stream_gone(False, now)

    def reset_stream(
        self, stream: H2ServerStream, code: int, *, notify: bool = False, provoked: bool = False
    ) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        premature = self._premature(stream, self.clock())
        stream.response_ended = True
        stream.out = bytearray()
        with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed in h2
            self.h2.reset_stream(stream.stream_id, code)
        if notify and stream.callbacks is not None:
            stream.callbacks.on_reset()
        self._stream_gone(premature and provoked, self.clock())
        self.flush_out()

    def _premature(self, stream: H2ServerStream, now: float) -> bool:
        """Reset before its response ended and younger than Envoy's
        ``premature_reset_min_stream_lifetime_seconds`` (1 s): a long-lived stream the
        client cancels (a gRPC watch) is not an attack pattern."""
        return not stream.response_ended and (
            now - stream.opened_at < self.limits.premature_reset_min_lifetime
        )

    def _stream_gone(self, premature: bool, now: float) -> None:
        try:
            self.resets.stream_closed(premature, now)
        except Violation as v:
            self.fail(v.error_code, v.reason)
            return
        if not self.streams:
            self.idle_since = now
            if self.draining:
                self._close_after_flush()

    def _count_provoked_resets(self, now: float) -> None:
        """MadeYouReset (CVE-2025-8671): a live stream that h2 reset on its own because
        of the client's frames counts as a premature reset, like the client's own.

        (RST_STREAM echoes for frames on streams already closed close nothing and
        are not counted; they cost an outbound control frame, bounded on its own.)"""
        self.flush_out()
        if self.outbound.rst_streams == self.counted_resets:
            return
        self.counted_resets = self.outbound.rst_streams
        for stream in list(self.streams.values()):
            h2s = self.h2.streams.get(stream.stream_id)
            if h2s is None or h2s.closed:
                self.streams.pop(stream.stream_id, None)
                if stream.callbacks is not None and not stream.response_ended:
                    stream.callbacks.on_reset()
                self._stream_gone(self._premature(stream, now), now)

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
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            return
        try:
            self.outbound.scan_outbound(data)
            self.outbound.check_outbound()
        except Violation as v:
            self.fail(v.error_code, v.reason)
            return
        self.transport.write(data)

    def _close_after_flush(self) -> None:
        self.flush_out()
        self.closed = True
        self._abort_streams()
        if self.transport is not None:
            self.transport.close()

    def _abort_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            if stream.callbacks is not None and not stream.response_ended:
                stream.callbacks.on_reset()


def _conforms(stream: H2ServerStream) -> ServerStream:
    """mypy proves H2ServerStream is a codec.ServerStream (never called)."""
    return stream
