"""The HTTP/1.1 client codec: one ``asyncio.Protocol`` per backend connection, which is
also the ``ClientStream`` (``codec.py``) of the one request it carries at a time.

An ``UpstreamConnection`` serves one request at a time for the exchange bound to it
(its ``ClientCallbacks``).  It writes the request (``send_head`` / ``send_data`` /
``send_end``: request line and fields, then the body passed through under a
Content-Length or re-chunked, with trailer fields after the last chunk).
``httptools.HttpResponseParser`` callbacks forward the response head and body chunks
to the exchange straight away: nothing is buffered here, and the exchange throttles us
with ``read_disable`` when the client is slow.  The one thing the parser holds is a
response head (or trailer section) being read; it is bounded by the same limits as
request heads (``ProxyOptions.max_header_bytes`` / ``max_headers``), checked while
reading, so a backend sending an endless head costs at most one read past the limit.

Idle connections go back to the pool (``pool.py``).  A connection is only reused when
nothing at all arrived on it since its last response ended: HTTP/1.1 pairs responses
with requests by order alone, so a stray byte would make every later response answer
the wrong request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import select
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, cast

import httptools

from gatewayd.proxy.http.codec import (
    ClientCallbacks,
    Headers,
    RequestHead,
    ResponseHead,
    UpstreamHeadersTooLarge,
    UpstreamProtocolError,
    WireRequestHead,
)

if TYPE_CHECKING:
    from gatewayd.proxy.http.pool import UpstreamPool
    from gatewayd.routing.snapshot.backends import BackendTLS

log = logging.getLogger("gatewayd.proxy.http.h1_client")

# Write-buffer water marks of every proxied transport: above HIGH the peer's reading is
# paused, below LOW it resumes.  Together with the kernel socket buffers this bounds
# what a slow peer can make us hold per connection.
WRITE_HIGH = 128 * 1024
WRITE_LOW = 32 * 1024

# Response head limits when the pool is built without options: Envoy's defaults for
# both directions (max_headers_count 100, max_response_headers_kb 60).
MAX_HEADER_BYTES = 60 * 1024
MAX_HEADERS = 100

# (host, port, TLS settings key or "" for cleartext): a connection is only reused for
# the same endpoint *and* the same BackendTLSPolicy / client certificate.
EndpointKey = tuple[str, int, str]

_LAST_CHUNK: Final = b"0\r\n\r\n"

# A read of a Content-Length body this big or bigger skips the parser (``_body_read``):
# the parser copies what it is fed (0.19 us for 16 KiB), about what replacing it
# after the response costs (0.24 us); smaller reads go through it.  Once one read
# skipped it, the rest of the body does too.
BODY_READ_MIN: Final = 16 * 1024

# The pass-through lane (``UpstreamConnection._raw_take``): field names at the start
# of a line of the lower-cased head that it must see: the hop-by-hop fields
# (forwarded.HOP_BY_HOP) and the request id the exchange sets.  llhttp allows no space
# before the colon and no bare CR or LF in a head, so such a field cannot hide from
# this pattern.  One pass: 0.36 us for nginx's head, against 1.3 us for eight ``in``
# tests (timeit).
_RAW_SPECIAL: Final = re.compile(
    rb"\n(?:connection|proxy-connection|keep-alive|te|transfer-encoding|upgrade|trailer"
    rb"|x-request-id):"
)
# What the lane takes of them: one Connection field (``keep-alive`` or ``close``).
_RAW_CONNECTION: Final = [b"\nconnection:"]
# Heads shorter than this (status line and fields, without the empty line) take the
# field-by-field parser: the lane's fixed cost (finding the head's end, one lower-cased
# copy, the search) is about what two or three fields cost that way (~85 bytes:
# level at three fields, 0.4 us dearer at one, 1.0 us cheaper at nine; timeit of bind
# and data_received with the exchange's strip_hop_by_hop_set).
RAW_HEAD_MIN: Final = 96
# The longest head a connection remembers for its next response (``raw_seen``): nginx's
# heads are 200-300 bytes; a longer one is still taken by the lane, just looked at again.
RAW_REMEMBER_MAX: Final = 1024

# Kept for callers of the old name: what the connection reports to.
UpstreamHandler = ClientCallbacks

__all__ = [
    "BODY_READ_MIN",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "WRITE_HIGH",
    "WRITE_LOW",
    "EndpointKey",
    "UpstreamConnection",
    "UpstreamHandler",
    "UpstreamHeadersTooLarge",
    "UpstreamProtocolError",
    "endpoint_key",
    "serialize_request",
]


def endpoint_key(host: str, port: int, tls: BackendTLS | None) -> EndpointKey:
    return (host, port, tls.key if tls is not None else "")


def serialize_request(
    head: RequestHead,
    extra: Sequence[tuple[bytes, bytes]] = (),
    wired: WireRequestHead | None = None,
) -> bytes:
    """Request line and fields of ``head`` (``head.headers`` as they are, or
    ``wired``'s ``lead`` fields and ``wire`` lines, then ``extra``), ending with the
    empty line."""
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    if wired is None:
        for n, v in head.headers:
            parts += (n, b": ", v, b"\r\n")
    else:
        for n, v in wired.lead:
            parts += (n, b": ", v, b"\r\n")
        parts += wired.wire or ()
    for n, v in extra:
        parts += (n, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _wired(head: RequestHead) -> WireRequestHead:
    """``head``, which has a ``wire``, as the ``WireRequestHead`` it is."""
    return cast(WireRequestHead, head)


def _head_bytes(head: RequestHead) -> bytes:
    """The request line and fields of a head sent without chunked framing:
    ``serialize_request`` without its framing and filtering arguments, for the common
    case.  A ``WireRequestHead`` is written as its ``lead`` fields, then its ``wire``
    (the forwarding lines made once: 0.41 against 0.79 us, forward_clean_wire)."""
    fields = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    wire = head.wire
    if wire is None:
        for n, v in head.headers:
            fields += (n, b": ", v, b"\r\n")
    else:
        if TYPE_CHECKING:  # only a WireRequestHead has a wire
            assert isinstance(head, WireRequestHead)
        for n, v in head.lead:
            fields += (n, b": ", v, b"\r\n")
        fields += wire
    fields.append(b"\r\n")
    return b"".join(fields)


def _trailer_block(trailers: Headers) -> bytes:
    """The last chunk with its trailer section (RFC 9112 7.1.2)."""
    parts = [b"0\r\n"]
    for n, v in trailers:
        parts += (n, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _input_poller(fd: int) -> select.poll:
    """A poll object watching ``fd`` for unread bytes, an EOF or an error.

    The event loop only reads a socket on its next iteration, so bytes a backend sent
    while its connection sat idle can still be in the kernel when a request picks the
    connection up: one poll(2) with a zero timeout tells.  (poll, not select:
    descriptors above FD_SETSIZE are common with thousands of connections.)  Made once
    per connection: a new object and its registration per request cost ~0.2 us more."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLPRI)
    return p


class _RawSink:
    """The protocol object of the pass-through parser (``UpstreamConnection.rparser``):
    the connection's callbacks, without ``on_status`` and ``on_header``.  httptools
    only calls what its protocol object has, so that parser reads a head without a
    call per field: 0.28 against 1.29 us for a head of ten fields."""

    __slots__ = ("on_body", "on_headers_complete", "on_message_begin", "on_message_complete")

    def __init__(self, conn: UpstreamConnection) -> None:
        self.on_message_begin = conn._raw_message_begin
        self.on_headers_complete = conn._raw_headers_complete
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete


class UpstreamConnection(asyncio.Protocol):
    """An HTTP/1.1 connection to a backend, and the ``ClientStream`` of its request."""

    # ``ClientStream.http2``: the exchange picks the HTTP/1.1 hop-by-hop policy.
    http2 = False

    __slots__ = (
        "_done_for",
        "_fparser",
        "_head_request",
        "_reusable",
        "_skip_complete",
        "body_left",
        "body_length",
        "chunked",
        "chunked_out",
        "closed",
        "done_in_feed",
        "fields_left",
        "got_bytes",
        "handler",
        "has_length",
        "head_done",
        "head_fed",
        "head_room",
        "headers",
        "idle_since",
        "key",
        "label",
        "max_bytes",
        "max_fields",
        "parser",
        "parser_dirty",
        "poller",
        "pool",
        "progress",
        "raw_head",
        "raw_low",
        "raw_next",
        "raw_seen",
        "raw_seen_length",
        "raw_seen_raw",
        "read_mask",
        "read_paused",
        "resp_head",
        "retired",
        "reuses",
        "rparser",
        "trailers",
        "transport",
        "tunnel",
    )

    def __init__(self, pool: UpstreamPool, key: EndpointKey, label: str) -> None:
        self.pool = pool
        self.key = key
        self.label = label
        self.retired = False  # its endpoint left the configuration: close when released
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.parser_dirty = False
        self.handler: ClientCallbacks | None = None
        self.closed = False
        self.reuses = 0
        self.idle_since = 0.0
        self.read_paused = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.has_length = False
        self.body_length: int | None = None
        # Content-Length bytes of the response still to come once its head is read
        # (0: none, or the parser frames the body: chunked, until EOF, no body).
        self.body_left = 0
        self.chunked = False
        self.chunked_out = False  # the request body is being chunked
        self.read_mask = 0
        self.trailers: Headers | None = None
        self.resp_head = ResponseHead(0, [])
        self.got_bytes = False
        self.done_in_feed = False
        # The response that ended in the chunk being parsed, reported once the whole
        # chunk is parsed (so bytes after it can still make the connection unusable).
        self._done_for: ClientCallbacks | None = None
        self._reusable = False
        self._head_request = False
        self._skip_complete = False
        self.poller: select.poll | None = None
        self.tunnel = False  # switched protocols (101): raw bytes, never pooled again
        # Response head accounting: bytes fed since the parser last produced a final
        # head or body bytes (what it may be holding: a head, interim responses, a
        # trailer section), and the header bytes and fields the current message may
        # still have (counted down from the pool's limits, copied here: two attribute
        # loads less per field).
        self.head_fed = 0
        self.progress = False
        self.max_bytes = pool.max_header_bytes
        self.max_fields = pool.max_headers
        self.head_room = self.max_bytes
        self.fields_left = self.max_fields
        # The pass-through lane (``_raw_take``): the parser without field callbacks
        # (made when first needed, and again after a body went past it); the
        # field-by-field parser while that one is in use; the response head it fills
        # (``raw`` set); the lower-cased field lines.
        self.rparser: httptools.HttpResponseParser | None = None
        self._fparser = self.parser
        self.raw_head = ResponseHead(0, [])
        self.raw_low = b""
        # The last head the lane took on this connection (status line and fields,
        # as llhttp accepted them), its field lines to write and its Content-Length:
        # a backend answers the same head again and again (the same fields, Date the
        # same within its second), and the same bytes get the same answer for the cost
        # of one comparison.  ``raw_next``: the head being read, kept once accepted.
        self.raw_seen = b""
        self.raw_seen_raw = b""
        self.raw_seen_length: int | None = None
        self.raw_next = b""

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.poller = _input_poller(sock.fileno())
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.pool.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        h = self.handler
        self.handler = None
        if h is None:
            return
        try:
            if (
                self.head_done
                and not self.has_length
                and not self.chunked
                and not self._head_request
            ):
                # RFC 9112 6.3 (7): "Otherwise, this is a response message without a
                # declared message body length, so the message body length is determined
                # by the number of octets received prior to the server closing the
                # connection."
                h.on_response_end(self, None, False)
                h.on_flush()
                return
            h.on_stream_lost(self, exc, self.got_bytes)
        except Exception:
            log.exception("upstream %s:%d: close handling failed", *self.key[:2])
            h.on_fatal()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost reports it

    def bind(self, handler: ClientCallbacks, head_request: bool) -> None:
        """Attach the request about to be written on this connection."""
        self.send_request(handler, head_request, None)

    def send_request(
        self, handler: ClientCallbacks, head_request: bool, head: RequestHead | None
    ) -> None:
        """``bind(handler, head_request)``, then, with ``head``, ``send_head(head, (),
        True)``: a request without a body (its head ends it) in one call for the
        exchange's plain lane (``Exchange._forward_plain``), a call less per request
        than ``_attach``'s bind and send_head.  Without a body nothing is chunked: the
        head is written as it is, in one write."""
        self.handler = handler
        if self.parser_dirty:
            # The previous response answered a HEAD request (or a body went past the
            # parser): the parser, which cannot be told about HEAD, may still expect
            # something else, so start from a clean one.
            self.parser = httptools.HttpResponseParser(self)
            self.parser_dirty = False
        self.headers = []
        self.head_done = False
        self.has_length = False
        self.body_length = None
        self.body_left = 0
        self.chunked = False
        self.chunked_out = False
        self.trailers = None
        self.got_bytes = False
        self._head_request = head_request
        self._skip_complete = False
        self.head_fed = 0
        if head is not None:
            self.transport.write(_head_bytes(head))

    def has_stale_input(self) -> bool:
        """Bytes (or an EOF) arrived that no request asked for and the loop has not
        delivered yet: the connection must not carry another request."""
        poller = self.poller
        return poller is not None and bool(poller.poll(0))

    # ------------------------------------------------------------------ ClientStream

    def send_head(
        self, head: RequestHead, body: Sequence[bytes] = (), end_stream: bool = False
    ) -> None:
        """Request line, fields, the body received so far and (``end_stream``) its end,
        in one write.  A body of unknown length (``head.body_length`` None) is chunked:
        ``transfer-encoding`` carries the codings the client applied
        (``head.transfer_codings``, ending in chunked) or just ``chunked``.  A
        ``WireRequestHead`` is written as its ``lead`` fields and its ``wire``."""
        wire = head.wire
        if head.body_length is None and not (end_stream and not body):
            self.chunked_out = True
            te = ((b"transfer-encoding", head.transfer_codings or b"chunked"),)
            parts = [serialize_request(head, te, _wired(head) if wire is not None else None)]
            for d in body:
                parts += (b"%x\r\n" % len(d), d, b"\r\n")
            if end_stream:
                parts.append(_LAST_CHUNK)
        else:
            data = _head_bytes(head)
            if not body:
                self.transport.write(data)
                return
            parts = [data]
            parts += body
        self.transport.writelines(parts)

    def send_data(self, data: bytes) -> None:
        if self.chunked_out:
            self.transport.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.transport.write(data)

    def send_end(self, trailers: Headers | None = None) -> None:
        """The end of the request body: the last chunk (with the trailer fields) when
        chunked; nothing to write under a Content-Length (trailers are dropped: RFC
        9110 6.5.1, a sender cannot carry them without chunked framing)."""
        if self.chunked_out:
            self.transport.write(_trailer_block(trailers) if trailers else _LAST_CHUNK)

    def reset(self) -> None:
        self.abort()

    # ``close``: graceful (FIN), for a connection that answered but cannot be reused.

    def read_disable(self, reason: int) -> None:
        if not self.read_mask:
            self.pause_reading()
        self.read_mask |= reason

    def read_enable(self, reason: int) -> None:
        if self.read_mask & reason:
            self.read_mask &= ~reason
            if not self.read_mask:
                self.resume_reading()

    # ------------------------------------------------------------------ raw writes

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        self.transport.writelines(parts)

    def close(self) -> None:
        self.handler = None
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        self.handler = None
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def pause_reading(self) -> None:
        if not self.read_paused and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.read_mask = 0
        if self.read_paused:
            self.read_paused = False
            if not self.closed:
                self.transport.resume_reading()

    # ------------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        h = self.handler
        if h is not None:
            try:
                h.on_write_pause()
            except Exception:
                log.exception("upstream flow control failed")
                h.on_fatal()

    def resume_writing(self) -> None:
        h = self.handler
        if h is not None:
            try:
                h.on_write_resume()
            except Exception:
                log.exception("upstream flow control failed")
                h.on_fatal()

    # ------------------------------------------------------------------ data

    def data_received(self, data: bytes) -> None:
        h = self.handler
        if h is None:
            # Bytes on an idle connection are not an answer to anything (RFC 9112 9.2:
            # HTTP/1.1 "relies on the order of response arrival to correspond exactly
            # to the order in which requests are made on the same connection"): close
            # it and take it out of the pool now, not when the close completes.
            self.abort()
            self.pool.drop_idle(self)
            return
        if self.body_left and (self.parser_dirty or len(data) >= BODY_READ_MIN):
            self._body_read(h, data)
            return
        parser = self.parser
        if not self.got_bytes:
            # The first read of a response: the parser is at a message boundary, the
            # one place where the two parsers may take turns.
            self.got_bytes = True
            if len(data) >= RAW_HEAD_MIN and self._raw_take(h, data):
                rp = self.rparser
                if rp is None:
                    rp = self.rparser = httptools.HttpResponseParser(_RawSink(self))
                if parser is not rp:
                    self._fparser = parser
                    parser = self.parser = rp
            elif parser is self.rparser:
                parser = self.parser = self._fparser
        self.done_in_feed = False
        self.progress = False
        try:
            parser.feed_data(data)
        except Exception as exc:
            if self.tunnel and isinstance(exc, httptools.HttpParserUpgrade):
                # The 101 ended the HTTP/1.1 part: what followed it in this read is
                # the tunnel's first bytes (the transport's protocol is _UpTunnel).
                tail = data[exc.args[0] :] if exc.args else b""
                if tail and self.handler is h:
                    self._tunnel.data_received(tail)
                elif self.handler is h:
                    h.on_flush()
                return
            cause = exc.__context__ if exc.__context__ is not None else exc
            if not isinstance(exc, httptools.HttpParserError) or (
                isinstance(exc, httptools.HttpParserCallbackError)
                and not isinstance(cause, UpstreamProtocolError)
            ):
                log.error("upstream %s:%d: callback failed", *self.key[:2], exc_info=cause)
            self._broken(h, cause if isinstance(cause, UpstreamProtocolError) else exc)
            return
        try:
            done = self._done_for
            if done is not None:
                # The response ended in this chunk and nothing followed it: only now is
                # it known that the connection is clean enough to be reused.
                self._done_for = None
                done.on_response_end(self, self.trailers, self._reusable and not self.closed)
                # No ``on_flush`` after the end: the callbacks wrote what they relayed
                # when the response ended (codec.py), two calls less per request.
                return
            elif not self.progress and self.handler is h and (self.chunked or not self.head_done):
                # Nothing came out of this read: it is part of a head or of a trailer
                # section, which the parser holds until a field line ends (an endless
                # line reaches no callback), or chunk framing.  Bound it here too.
                self.head_fed += len(data)
                if self.head_fed > self.pool.max_header_bytes:
                    self._broken(h, UpstreamHeadersTooLarge("response head too large"))
                    return
            h.on_flush()
        except Exception:
            log.exception("upstream %s:%d: relaying the response failed", *self.key[:2])
            self.abort()
            h.on_fatal()

    def _body_read(self, h: ClientCallbacks, data: bytes) -> None:
        """A read after the head of a response framed by Content-Length: body bytes,
        relayed as they are, without the parser.  Through the parser each read costs
        a feed and a copy of the bytes into a new object (0.75 us for 64 KiB, 0.19 us
        for 16 KiB, measured) and a callback; here nothing is copied.  The parser,
        which has not seen these bytes, is replaced before the next response
        (``parser_dirty``); what it says of keep-alive comes from the head, so it is
        still asked once the body is complete.  Bytes past the end of the body are
        not the answer to anything: the response stands, the connection closes (as
        when the parser finds them after the end, ``_broken``)."""
        self.parser_dirty = True
        if self.parser is self.rparser:
            self.rparser = None  # bind replaces the one in use, a full parser next
        left = self.body_left
        n = len(data)
        try:
            if n < left:
                self.body_left = left - n
                h.on_response_data(data)
                h.on_flush()
                return
            self.body_left = 0
            self.handler = None
            if n == left:
                h.on_response_data(data)
                h.on_response_end(self, None, self.parser.should_keep_alive() and not self.closed)
                return
            h.on_response_data(data[:left])
            self.abort()
            h.on_response_end(self, None, False)
            h.on_flush()
        except Exception:
            log.exception("upstream %s:%d: relaying the response failed", *self.key[:2])
            self.abort()
            h.on_fatal()

    def _broken(self, h: ClientCallbacks, exc: BaseException) -> None:
        """The backend broke the protocol while ``h`` was bound (or just after its
        response ended): the connection is closed, never reused.  A response that was
        complete still stands; otherwise ``h`` sees a lost connection (502, or a retry
        on a new connection when no head was received: what failed to parse may be
        stale bytes of a reused connection).  A head over the limits is an answer, so
        the request is not sent again."""
        done = self._done_for
        self._done_for = None
        self.abort()
        try:
            if done is not None:
                done.on_response_end(self, None, False)
            else:
                answered = self.head_done or isinstance(exc, UpstreamHeadersTooLarge)
                h.on_stream_lost(self, exc, answered)
            h.on_flush()
        except Exception:
            log.exception("upstream %s:%d: error handling failed", *self.key[:2])
            h.on_fatal()

    # httptools callbacks -------------------------------------------------------
    #
    # ``done_in_feed``: a response completed earlier in the chunk being parsed.  No
    # request follows it on this connection yet, so anything after that point in the
    # same chunk (a second response, a body after a HEAD response) is a protocol
    # violation, not the next answer.

    def on_message_begin(self) -> None:
        if self.handler is None or self.done_in_feed:
            raise UpstreamProtocolError("response without a request")
        # Fields are counted per message; ``head_fed`` is not reset here, so interim
        # responses (100, 103) count towards the final head's bytes and a backend
        # cannot keep a request waiting behind an endless stream of them.
        self.head_room = self.max_bytes
        self.fields_left = self.max_fields

    def on_status(self, reason: bytes) -> None:
        self.head_room -= len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The request side's limits, counted the same way (server.py on_header), also
        # for trailer fields, which the parser holds just like head fields.  Counted
        # down, one store and one test each: ~0.3 us less per head of nine fields than
        # counting up against the pool's attributes (bench_h1_inproc --nginx-head).
        self.fields_left -= 1
        self.head_room -= len(name) + len(value) + 4
        if self.head_room < 0 or self.fields_left < 0:
            raise UpstreamHeadersTooLarge("response header fields too large")
        name = name.lower()
        if self.head_done:
            # Trailer fields (RFC 9110 6.5), relayed with the end of the response.
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))
            return
        if name == b"content-length":
            self.has_length = True
            self.body_length = int(value)  # digits only: the parser checked
        elif name == b"transfer-encoding":
            self.chunked = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        h = self.handler
        if h is None:
            raise UpstreamProtocolError("response without a request")
        status = self.parser.get_status_code()
        if status < 200:
            # Interim responses (100 Continue, 103 Early Hints) are consumed here; the
            # proxy answers the client's Expect itself (see server.py).  101 is the
            # end of HTTP/1.1 on this connection (a WebSocket handshake, upgrade.py).
            if status == 101:
                self._switch(h)
                return
            self.headers = []
            self.has_length = False
            self.body_length = None
            self.chunked = False
            self._skip_complete = True
            return
        self.head_done = True
        self.fields_left = self.max_fields  # trailer fields get a fresh count
        self.head_room = self.max_bytes
        self.head_fed = 0
        self.progress = True
        # One ResponseHead per connection, refilled for each response: the exchange
        # reads it during this call only (an allocation less per request).
        rh = self.resp_head
        rh.status = status
        rh.headers = self.headers
        rh.body_length = length = self.body_length
        rh.end_stream = end = self._head_request or status == 204 or status == 304
        if length and not end:
            self.body_left = length  # on_body counts it down, or _body_read
        h.on_response_head(self, rh)
        if self._head_request and self.handler is h:
            # RFC 9110 9.3.2: the response to HEAD has no content, whatever its framing
            # headers say.  The parser cannot be told, so finish here and use a fresh
            # parser for the next response.
            self.parser_dirty = True
            self._finish(h)

    # The pass-through lane ---------------------------------------------------------

    def _raw_take(self, h: ClientCallbacks, data: bytes) -> bool:
        """Whether the response starting ``data`` goes through the pass-through lane:
        the handler takes raw heads (``raw_response``, asked here: only for a read
        long enough to be worth it), the request was not HEAD, the whole head is in
        this read and it is a plain final HTTP/1.1 response
        (status 2xx to 5xx; no hop-by-hop field but a lone ``Connection: keep-alive``
        or ``close``; no request id from the backend), within the head limits.  Then
        ``raw_head.raw`` holds its field lines as they came, that Connection line cut
        out, and ``raw_low`` them lower-cased, and the parser without field callbacks
        reads it (``_raw_headers_complete``; llhttp still checks the whole grammar and
        framing).  Anything else goes through the field-by-field parser, exactly as
        without the lane: a head over a limit is refused there with the same error.

        Bytes and lines are counted on the wire: at least what ``on_status`` and
        ``on_header`` count (they leave out the status line but its reason, and the
        whitespace around values), so a head within the limits here is within them
        there too."""
        if self._head_request or not getattr(h, "raw_response", False):
            return False
        end = data.find(b"\r\n\r\n")
        if end < RAW_HEAD_MIN or end + 4 > self.max_bytes:
            return False  # not all here (-1), short or too long
        head = data[:end]
        if head == self.raw_seen:
            self.raw_head.raw = self.raw_seen_raw
            self.raw_low = b""  # the length is the one seen
            return True
        if not data.startswith(b"HTTP/1.1 ") or data[9] < 50:
            return False  # not HTTP/1.1, or 1xx (interim responses, 101)
        nl = data.find(b"\n")  # the status line's end (llhttp wants CR LF there)
        # The field lines, from the status line's LF: every field name follows an LF.
        low = data[nl : end + 2].lower()
        # A field line is at least 4 bytes ("a:\r\n"): only a long head can have too
        # many of them.
        if end > 4 * self.max_fields and low.count(b"\n") - 1 > self.max_fields:
            return False
        special = _RAW_SPECIAL.findall(low)
        if not special:
            raw = data[nl + 1 : end + 2]
        elif special == _RAW_CONNECTION:
            c = low.find(b"\nconnection:")
            e = low.find(b"\r", c)
            option = low[c + 12 : e].strip(b" \t")
            if option != b"keep-alive" and option != b"close":
                return False  # options naming fields to remove
            # Cut out: low[i] is data[nl + i]; the line runs from after the LF at c
            # to the LF after e.
            raw = data[nl + 1 : nl + 1 + c] + data[nl + e + 2 : end + 2]
        else:
            return False
        if not raw:
            return False  # no field left: the list lane's head is as short
        self.raw_head.raw = raw
        self.raw_low = low
        self.raw_next = head
        return True

    def _raw_message_begin(self) -> None:
        """``on_message_begin`` of the pass-through parser: the same checks, without
        resetting the field counts, which only the field-by-field parser's callbacks
        use (and which its own ``on_message_begin`` resets for its next message).  The
        lane takes no chunked response, so this parser reads no trailer fields."""
        if self.handler is None or self.done_in_feed:
            raise UpstreamProtocolError("response without a request")

    def _raw_headers_complete(self) -> None:
        """``on_headers_complete`` of the pass-through parser: a final response whose
        head ``_raw_take`` checked; llhttp has validated its Content-Length."""
        h = self.handler
        if h is None:
            raise UpstreamProtocolError("response without a request")
        status = self.parser.get_status_code()
        self.head_done = True
        self.head_fed = 0
        self.progress = True
        low = self.raw_low
        if low:
            i = low.find(b"\ncontent-length:")
            length: int | None = None
            if i >= 0:
                # Digits and whitespace only: llhttp checked (and refused a second one).
                length = int(low[i + 16 : low.find(b"\r", i)])
            # llhttp accepted this head: the next one like it needs no look.  Only a
            # head of RAW_REMEMBER_MAX bytes or less is kept: the copy lives as long as
            # the pooled connection, and a backend's head may be up to the head limit.
            if len(self.raw_next) <= RAW_REMEMBER_MAX:
                self.raw_seen = self.raw_next
                self.raw_seen_raw = self.raw_head.raw
                self.raw_seen_length = length
        else:
            length = self.raw_seen_length
        if length is not None:
            self.has_length = True
            self.body_length = length
        rh = self.raw_head
        rh.status = status
        rh.body_length = length
        rh.end_stream = end = status == 204 or status == 304
        if length and not end:
            self.body_left = length  # on_body counts it down, or _body_read
        h.on_response_head(self, rh)

    def _switch(self, h: ClientCallbacks) -> None:
        """``101 Switching Protocols``: the transport's bytes are the tunnel's from
        here on (``_UpTunnel``); the handler decides whether it asked for it."""
        if not any(n == b"upgrade" for n, _ in self.headers):
            # RFC 9110 15.2.2: "The server MUST generate an Upgrade header field in the
            # response that indicates which protocol(s) will be in use".
            raise UpstreamProtocolError("101 without Upgrade")
        self.tunnel = True
        self.head_done = True
        self._skip_complete = True
        self.transport.set_protocol(_UpTunnel(self))
        rh = self.resp_head
        rh.status = 101
        rh.headers = self.headers
        rh.body_length = None
        rh.end_stream = False
        h.on_upgrade(self, rh)

    @property
    def _tunnel(self) -> _UpTunnel:
        return cast(_UpTunnel, self.transport.get_protocol())

    def half_close(self) -> None:
        """The client closed its direction of the tunnel: a FIN to the backend."""
        if self.closed:
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.close()

    def on_body(self, body: bytes) -> None:
        h = self.handler
        if h is None or self.done_in_feed:
            raise UpstreamProtocolError("unexpected response body")
        self.progress = True
        self.head_fed = 0
        if self.body_left:  # a Content-Length body (0 for the parser's other framings)
            self.body_left -= len(body)
        h.on_response_data(body)

    def on_message_complete(self) -> None:
        if self._skip_complete:
            self._skip_complete = False
            return
        if self.done_in_feed:
            return  # the phantom end of a HEAD response's body
        h = self.handler
        if h is None:
            raise UpstreamProtocolError("response without a request")
        # ``_finish(h)`` inlined: once per response, a call less (should_keep_alive
        # returns a bool already).
        self._reusable = self.parser.should_keep_alive()
        self.handler = None
        self.done_in_feed = True
        self._done_for = h

    def _finish(self, h: ClientCallbacks) -> None:
        # Reported by data_received once the rest of the chunk is parsed: a byte
        # after the end of the response makes the connection unusable, and the
        # handler must know that before it puts the connection back in the pool.
        # (``on_message_complete`` makes the same stores.)
        self._reusable = bool(self.parser.should_keep_alive())
        self.handler = None
        self.done_in_feed = True
        self._done_for = h


class _UpTunnel(asyncio.Protocol):
    """The backend transport's protocol after a 101: bytes go to the handler as they
    are; the backend's FIN or close ends the tunnel (never reusable)."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        h = self.conn.handler
        if h is None:
            return
        try:
            h.on_response_data(data)
            h.on_flush()
        except Exception:
            log.exception("upstream %s:%d: tunnel relay failed", *self.conn.key[:2])
            self.conn.abort()
            h.on_fatal()

    def eof_received(self) -> bool | None:
        self._end(None)
        return None  # the backend is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        conn.closed = True
        conn.pool.forget(conn)
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        conn = self.conn
        h = conn.handler
        if h is None:
            return
        conn.handler = None
        try:
            if exc is None:
                h.on_response_end(conn, None, False)
            else:
                h.on_stream_lost(conn, exc, True)
            h.on_flush()
        except Exception:
            log.exception("upstream %s:%d: tunnel close failed", *conn.key[:2])
            h.on_fatal()

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()
