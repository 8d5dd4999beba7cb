"""The seam between the request logic and the HTTP wire formats.

``exchange.py`` (routing, filters, redirects, retries, timeouts, mirrors, access log)
never sees a byte of HTTP framing.  It talks to one *server stream* downstream and to
one *client stream* per upstream try, through the interfaces below; a codec module
implements them for one protocol version:

=================  ====================================  ===============================
                   downstream (the client's request)     upstream (our request)
=================  ====================================  ===============================
HTTP/1.1           ``h1_server.py`` (httptools)          ``h1_client.py`` (httptools)
HTTP/2             ``h2_server.py`` (h2, sans-I/O)       ``h2_client.py`` (h2, sans-I/O)
=================  ====================================  ===============================

This is Envoy's ``envoy/http/codec.h`` split (``RequestDecoder`` / ``ResponseEncoder`` /
``StreamCallbacks``) and mitmproxy's ``HttpStream`` over ``Http1Server`` /
``Http2Server``, in the shape of uvicorn's httptools protocol: plain method calls, no
events queued, no task per request.

Direction of calls
------------------
Downstream::

    codec ──(head complete)──> ExchangeFactory(stream, head) -> StreamCallbacks
    codec ──on_start / on_data / on_end / on_reset / on_down_write_pause/resume──> exchange
    exchange ──send_head / send_data / send_end / flush / local_reply / reset
              / send_continue / read_disable / read_enable──> ServerStream (codec)

Upstream::

    exchange ──pool.acquire / pool.connect──> ClientStream (codec)
    exchange ──bind / send_head / send_data / send_end / reset / read_disable/enable──>
    codec ──on_response_head / on_response_data / on_response_end / on_stream_lost
          / on_flush / on_write_pause/resume / on_fatal──> ClientCallbacks (exchange)

Rules every codec keeps
-----------------------
- **Heads are plain objects** (``RequestHead``, ``ResponseHead``): header names are
  lower-case ``bytes``, values ``bytes``, in received order, repeated names kept.
  Pseudo-headers never appear in ``headers``: HTTP/2's ``:method``/``:path``/
  ``:authority``/``:scheme``/``:protocol``/``:status`` live in the head's attributes.
  A downstream HTTP/1.1 head keeps its ``host`` field in ``headers`` (matching reads
  it); an HTTP/2 server codec does not invent one (``authority`` has it).  An upstream
  head carries ``host`` in ``headers`` exactly as it is to be sent (its ``authority``
  is left None by the exchange: the HTTP/1.1 client writes the fields as they are, the
  HTTP/2 client takes the ``host`` field out and sends it as ``:authority``, RFC 9113
  8.3.1).
- **A client codec may reuse one ``ResponseHead`` object per connection**: the
  exchange reads it (and may replace its ``headers``) during ``on_response_head`` only.
- **Framing is the codec's.**  The exchange never adds ``content-length``,
  ``transfer-encoding`` or ``connection``; it says how much body there is
  (``body_length``; ``end_stream``) and the codec frames it: HTTP/1.1 passes a known
  length through and chunks anything else (close-delimited for HTTP/1.0 clients),
  HTTP/2 uses DATA frames.  Keep-alive is the server codec's decision alone.
- **Hop-by-hop is codec-aware** (``hop_by_hop_for``): connection-specific fields never
  cross into HTTP/2 (RFC 9113 8.2.2), ``te: trailers`` does reach an HTTP/2 upstream.
- **Local replies** are ``(status, headers, body)``: the exchange chooses them, the
  server codec renders them (status line or ``:status``, ``date``, ``server``,
  ``content-type: text/plain`` for a non-empty body, ``content-length``, connection
  management, no body for HEAD/1xx/204/304).
- **Trailers** are bounded like heads (the same byte and field-count limits) and are
  relayed with ``send_end(trailers)``; a codec that cannot carry them (an HTTP/1.1
  response re-framed with ``content-length``, an HTTP/1.0 client) drops them.
- **Flow control is per stream.**  ``read_disable(reason)`` / ``read_enable(reason)``
  stop and restart delivery of *this* stream's data; the reasons are a bit mask and the
  calls are idempotent.  HTTP/1.1 maps them to pausing the transport (one stream at a
  time); HTTP/2 withholds WINDOW_UPDATE for the stream only.  A stream whose outgoing
  buffer passes its high-water mark calls ``on_down_write_pause`` (server side) or
  ``on_write_pause`` (client side) on its callbacks, and the ``resume`` twin below the
  low-water mark, so the exchange read-disables the other
  side.
- **Nothing raises into the exchange** for an expected failure: a broken peer is
  ``on_reset`` / ``on_stream_lost``.  A callback that raises is a bug: the codec logs it
  and calls ``on_fatal`` (upstream) or answers 500 / resets (downstream).

Changes to this module stay additive where possible (the HTTP/2 codecs are built
against it in parallel); each change is described in its commit message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from gatewayd.proxy.forwarded import HOP_BY_HOP

if TYPE_CHECKING:
    from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot

Headers = list[tuple[bytes, bytes]]

# Protocol versions a head carries (``RequestHead.version``), as the access log and
# ``X-Forwarded-*`` logic read them.
HTTP_10: Final = "1.0"
HTTP_11: Final = "1.1"
HTTP_2: Final = "2"

# ``read_disable`` / ``read_enable`` reasons (a bit mask per stream).
RD_UPSTREAM: Final = 1  # the other side's write buffer is above its high-water mark
RD_HELD: Final = 2  # the exchange holds too many body bytes it cannot send yet


class RequestHead:
    """A request head as received (server codec) or as sent (client codec)."""

    __slots__ = (
        "authority",
        "body_length",
        "end_stream",
        "expect_continue",
        "forward_clean",
        "headers",
        "keep_alive",
        "method",
        "protocol",
        "scheme",
        "target",
        "transfer_codings",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        *,
        authority: bytes | None = None,
        scheme: bytes | None = None,
        version: str = HTTP_11,
        body_length: int | None = None,
        end_stream: bool = False,
        expect_continue: bool = False,
        protocol: bytes | None = None,
        keep_alive: bool = True,
        transfer_codings: bytes | None = None,
    ) -> None:
        # ``b"GET"``; CONNECT keeps its authority-form target.
        self.method = method
        # The request-target as received: origin-form (``/p?q``), absolute-form
        # (HTTP/1.1 only), ``*``, or HTTP/2's ``:path``.  Upstream: what is sent.
        self.target = target
        self.headers = headers
        # HTTP/1.1: the Host field value (None without one: HTTP/1.0); HTTP/2:
        # ``:authority`` (else its ``host`` field).  Upstream: what the client codec
        # sends as Host / ``:authority``.
        self.authority = authority
        # HTTP/2 ``:scheme``; None on HTTP/1.1 (the connection's TLS decides).
        self.scheme = scheme
        self.version = version  # HTTP_10, HTTP_11 or HTTP_2
        # Request body length when the framing states it (Content-Length, or 0 for no
        # body); None: streamed until ``on_end`` (chunked, HTTP/2 without
        # content-length).
        self.body_length = body_length
        # No body follows the head at all (``on_end`` comes right after ``on_start``).
        self.end_stream = end_stream
        # ``Expect: 100-continue`` was asked (and removed from ``headers``' meaning:
        # the exchange answers it with ``send_continue``, it is never forwarded).
        self.expect_continue = expect_continue
        # Upgrade token (HTTP/1.1 ``Upgrade``, e.g. b"websocket") or HTTP/2 extended
        # CONNECT ``:protocol`` (RFC 8441); None otherwise.
        self.protocol = protocol
        # HTTP/1.x facts (an HTTP/2 codec leaves the defaults): whether the client
        # wants the connection kept open after this exchange, and its Transfer-Encoding
        # value as received (ends in ``chunked``; an HTTP/1.1 client codec relays the
        # codings in front of its own chunking).
        self.keep_alive = keep_alive
        self.transfer_codings = transfer_codings
        # The server codec saw no field that ``forwarded.forward_fields`` drops, keeps a
        # copy of or replaces (``forwarded.FORWARD_WALKED``, ``x-envoy-*``): the
        # exchange forwards the fields without walking them (``forward_clean``).
        # False unless a codec checked (HTTP/1.1 does, as it reads each field).
        self.forward_clean = False

    # An upstream head's last fields already written as HTTP/1.1 field lines: None
    # here; a ``WireRequestHead`` holds them (the class attribute is the default every
    # other head reads, so ``head.wire`` costs no type test).
    wire: tuple[bytes, ...] | None = None


class WireRequestHead(RequestHead):
    """An upstream request head whose fields are ``lead`` (the fields the client sent,
    as they are) followed by fields given only as ``wire``: pieces that, joined, are
    those fields' HTTP/1.1 field lines (``name: value\r\n`` each, in order, without
    the empty line).  The exchange's clean lane builds them
    (``forwarded.forward_clean_wire``: the forwarding fields' lines are made once per
    client address) and the HTTP/1.1 client writes ``lead`` field by field and then
    ``wire`` as it is.  ``headers``, the whole list, is made from the two when read
    (nothing on the request path reads it: the lane only serves HTTP/1.1 backends, so
    the list a request would make for nobody is not made, ~0.15 us); setting it
    replaces both.  Nobody changes the fields of such a head otherwise (the lane is
    only taken when no filter or upgrade edits them)."""

    __slots__ = ("lead", "wire")

    lead: Headers

    @property
    def headers(self) -> Headers:
        out = list(self.lead)
        for line in b"".join(self.wire or ()).split(b"\r\n")[:-1]:
            name, _, value = line.partition(b": ")
            out.append((name, value))
        return out

    @headers.setter
    def headers(self, fields: Headers) -> None:
        self.lead = fields
        self.wire = ()


_new_head = RequestHead.__new__


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    body_length: int | None,
    end_stream: bool,
    transfer_codings: bytes | None,
) -> RequestHead:
    """``RequestHead(method, target, headers, body_length=..., end_stream=...,
    transfer_codings=...)`` with every other attribute at its default, for the request
    path: positional, and no ``__init__`` call (0.25 against 0.70 us with the keywords;
    a test holds the two to the same attributes)."""
    h = _new_head(RequestHead)
    h.method = method
    h.target = target
    h.headers = headers
    h.authority = None
    h.scheme = None
    h.version = HTTP_11
    h.body_length = body_length
    h.end_stream = end_stream
    h.expect_continue = False
    h.protocol = None
    h.keep_alive = True
    h.transfer_codings = transfer_codings
    h.forward_clean = False
    return h


class ResponseHead:
    """A final response head (interim 1xx responses never reach the exchange).

    ``raw``: HTTP/1.1 field lines (each ``name: value\r\n``) that come before
    ``headers`` on the wire, as the backend sent them minus its hop-by-hop lines: the
    pass-through lane (``ClientCallbacks.raw_response``, ``h1_client``).  Empty for
    every other head, whose fields are all in ``headers``."""

    __slots__ = ("body_length", "end_stream", "headers", "raw", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        *,
        body_length: int | None = None,
        end_stream: bool = False,
        raw: bytes = b"",
    ) -> None:
        self.status = status
        self.headers = headers
        # Content length stated by the framing (HTTP/1.1 Content-Length, HTTP/2
        # content-length); None: unknown (chunked, close-delimited, HTTP/2 without it).
        self.body_length = body_length
        # No body follows (HEAD, 204, 304, HTTP/2 END_STREAM on HEADERS).
        self.end_stream = end_stream
        self.raw = raw


# --------------------------------------------------------------------------- errors


class UpstreamProtocolError(Exception):
    """The backend sent bytes (or frames) that do not belong to a response we asked
    for.  Reported through ``on_stream_lost``; the exchange answers 502 (flag UPE)."""


class UpstreamHeadersTooLarge(UpstreamProtocolError):
    """A response head or trailer section is over the byte or field-count limit."""


# --------------------------------------------------------------------------- downstream


class DownstreamConnection(Protocol):
    """Facts of the client connection a server stream belongs to (shared by every
    stream of an HTTP/2 connection)."""

    # The ``Proxy`` (typed loosely here: codec.py imports nothing from the proxy).
    proxy: object
    loop: asyncio.AbstractEventLoop
    key: tuple[str, int]  # listening (address, port)
    label: str  # metrics label of the listener port
    peer_ip: str
    # Terminated TLS: the client's server name ("" without SNI); None: plain TCP.
    sni: str | None
    scheme: bytes  # b"http" | b"https": X-Forwarded-Proto, default redirect scheme
    client_cert: bytes | None  # XFCC value of a verified client certificate
    # Transparent (TPROXY) connections pick their ListenerPort per request.
    port_for: Callable[[Snapshot], ListenerPort | None] | None


class ServerStream(Protocol):
    """One request/response on a client connection, as the exchange drives it.

    Implemented by ``h1_server`` (the connection itself: one active stream at a time)
    and ``h2_server`` (one object per HTTP/2 stream)."""

    @property
    def conn(self) -> DownstreamConnection: ...

    @property
    def closing(self) -> bool:
        """The connection will not serve another request (keep-alive is over)."""
        ...

    def send_continue(self) -> None:
        """``100 Continue`` (only when the head had ``expect_continue``, once)."""

    def send_head(self, head: ResponseHead, request_method: bytes) -> None:
        """The final response head; the codec adds its framing fields.  The request
        method is given so that a HEAD response is framed without a body.  A head
        with ``raw`` field lines only goes to a codec that can write them (HTTP/1.1:
        the exchange asks for them only under an HTTP/1.1 client)."""

    def send_data(self, data: bytes) -> None:
        """Response body bytes (buffered until ``flush``)."""

    def send_end(self, trailers: Headers | None = None) -> None:
        """The response is complete (trailers: RFC 9110 6.5, relayed when the
        downstream framing can carry them)."""

    def drain_request(self) -> bool:
        """After a response that ended before the request did: True when the rest of
        the request body is to be read (and dropped) before ``done`` (HTTP/1.1
        keep-alive); False when ``done`` may come at once (HTTP/2: the stream ends,
        HTTP/1.1 closing the connection)."""
        ...

    def done(self, close: bool = False) -> None:
        """The exchange is over (response sent; request read or abandoned): the codec
        serves the next request, or closes (``close``: the connection must not be
        reused, e.g. a client that stopped sending its body)."""

    def hold(self, n: int) -> None:
        """The exchange holds ``n`` more request body bytes it cannot send yet; the
        codec read-disables when too much is held (HTTP/1.1: per connection, over the
        pipelined requests too; HTTP/2: the stream's window is not reopened)."""

    def release_held(self, n: int) -> None:
        """``n`` held bytes were sent upstream or dropped."""

    def flush(self) -> None:
        """Write what ``send_head`` / ``send_data`` buffered (once per upstream read)."""

    def local_reply(
        self, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, close: bool
    ) -> int:
        """Answer from the proxy: rendered and written by the codec (``date``,
        ``server``, ``content-length``, connection management; no body for HEAD, 1xx,
        204, 304).  ``close``: the connection must not be reused (HTTP/2: the stream
        ends, the connection stays).  Returns the body bytes sent."""
        ...

    def reset(self) -> None:
        """Abort the response under way (HTTP/1.1: abort the connection; HTTP/2:
        RST_STREAM)."""

    def read_disable(self, reason: int) -> None:
        """Stop delivering this stream's request body (idempotent per reason)."""

    def read_enable(self, reason: int) -> None:
        """Undo ``read_disable(reason)``; data flows when no reason is left."""

    def write_buffer_size(self) -> int:
        """Bytes queued towards the client for this stream (idle-timeout progress)."""
        ...

    def send_tunnel_head(self, head: ResponseHead) -> None:
        """The backend accepted a WebSocket upgrade (its 101): HTTP/1.1 writes
        ``101 Switching Protocols`` with ``head.headers`` as given (no framing fields,
        no keep-alive: the connection is the tunnel's); HTTP/2 answers the extended
        CONNECT with ``:status 200`` (RFC 8441 5) and keeps the stream open.  From
        then on ``send_data`` carries raw tunnel bytes and ``send_end`` closes the
        direction towards the client (FIN, END_STREAM); the client's bytes arrive with
        ``on_data`` and the end of its direction with ``on_tunnel_eof``."""


class StreamCallbacks(Protocol):
    """What a server codec calls on the exchange of one stream."""

    def on_start(self) -> None:
        """Serve the request: route it.  HTTP/1.1 calls it when the request is next in
        line (pipelining); HTTP/2 right after the head."""

    def on_data(self, data: bytes) -> None:
        """A piece of the request body (delivered before ``on_start`` too, for
        pipelined requests; the exchange holds it, bounded by ``RD_HELD``)."""

    def on_end(self, trailers: Headers | None) -> None:
        """The request is complete (with its trailer fields, if any)."""

    def on_reset(self) -> None:
        """The client went away or reset the stream before the response ended."""

    def on_error(self, status: int) -> None:
        """The request turned out malformed after its head (broken chunk framing, a
        trailer section over the limits): answer ``status`` and close, or reset when
        the response has started."""

    # Named apart from ``ClientCallbacks.on_write_pause`` (the backend is slow): one
    # exchange object is both, and the two mean opposite directions.
    def on_down_write_pause(self) -> None:
        """The client is slow: stop reading the upstream response."""

    def on_down_write_resume(self) -> None: ...

    def on_tunnel_eof(self) -> None:
        """After ``send_tunnel_head``: the client closed its direction of the tunnel
        (HTTP/1.1 FIN; HTTP/2 END_STREAM comes as ``on_end``)."""


# The server codec creates one exchange per request, when its head is complete.
ExchangeFactory = Callable[[ServerStream, RequestHead], StreamCallbacks]


# --------------------------------------------------------------------------- upstream


class ClientCallbacks(Protocol):
    """What a client codec reports to the exchange bound to its stream.

    Optional: a ``raw_response`` attribute (or property), read by a codec when a
    response starts.  True: the response head may arrive with its field lines as wire bytes in
    ``ResponseHead.raw`` (HTTP/1.1 backend to HTTP/1.1 client, nothing on the response
    side that reads or changes fields); a codec that cannot, and every head it does
    not pass through, still fills ``headers``.  Missing: False."""

    def on_response_head(self, stream: ClientStream, head: ResponseHead) -> None: ...

    def on_response_data(self, data: bytes) -> None: ...

    def on_upgrade(self, stream: ClientStream, head: ResponseHead) -> None:
        """The backend answered ``101 Switching Protocols`` (HTTP/1.1): from now on
        ``on_response_data`` carries raw tunnel bytes, ``send_data`` writes raw bytes,
        and the backend closing its side is ``on_response_end`` (never reusable).  A
        101 nobody asked for is the backend's protocol error: reset the stream."""

    def on_response_end(
        self, stream: ClientStream, trailers: Headers | None, reusable: bool
    ) -> None:
        """The response is complete; ``reusable``: the codec may carry another request
        on this connection (the exchange gives the stream back to the pool)."""

    def on_stream_lost(
        self, stream: ClientStream, exc: BaseException | None, got_bytes: bool
    ) -> None:
        """The stream failed before the response ended.  ``got_bytes``: something of
        an answer arrived (else the request may be retried on a new connection: a
        reused connection the backend had closed)."""

    def on_flush(self) -> None:
        """End of one read from the upstream: write what was relayed.  A codec may
        leave it out after ``on_response_end`` (the HTTP/1.1 client does): the
        callbacks write what they relayed when the response ends."""

    def on_write_pause(self) -> None:
        """The upstream is slow to read our request: stop reading the client."""

    def on_write_resume(self) -> None: ...

    def on_fatal(self) -> None:
        """A bug surfaced while handling the stream: give up on the request (must not
        raise)."""


class ClientStream(Protocol):
    """One request on an upstream connection: HTTP/1.1 owns the connection
    exclusively while bound; HTTP/2 multiplexes streams on it."""

    # True for an HTTP/2 stream: the exchange picks the hop-by-hop policy with it.
    http2: bool
    closed: bool

    def bind(self, callbacks: ClientCallbacks, head_request: bool) -> None:
        """Attach the exchange before sending; ``head_request``: the response to a
        HEAD request has no body whatever its framing says."""

    def send_head(
        self, head: RequestHead, body: Sequence[bytes] = (), end_stream: bool = False
    ) -> None:
        """The request head, the body received so far and, with ``end_stream``, its
        end, written together (one write)."""

    def send_data(self, data: bytes) -> None: ...

    def send_end(self, trailers: Headers | None = None) -> None: ...

    def reset(self) -> None:
        """Abandon the request (HTTP/1.1: abort the connection; HTTP/2: RST_STREAM)."""

    def close(self) -> None:
        """Let go of a stream whose response is complete but that is not given back to
        the pool (HTTP/1.1: close the connection gracefully; HTTP/2: nothing left to
        do once the stream has ended, else RST_STREAM with NO_ERROR)."""

    def read_disable(self, reason: int) -> None:
        """Stop reading this stream's response (idempotent per reason)."""

    def read_enable(self, reason: int) -> None: ...


class StreamPool(Protocol):
    """Upstream streams for endpoints (``pool.py``): HTTP/1.1 exclusive keep-alive
    connections; an HTTP/2 pool hands out streams of multiplexed connections."""

    def acquire(self, key: tuple[str, int, str]) -> ClientStream | None:
        """A ready stream to ``key`` without waiting (a pooled connection), or None."""
        ...

    async def connect(
        self,
        host: str,
        port: int,
        label: str,
        tls: object | None = None,
        *,
        resolve: bool = False,
    ) -> ClientStream:
        """A stream on a new connection; raises OSError or TimeoutError."""
        ...

    def release(self, stream: ClientStream, now: float) -> None:
        """Give a stream back after a complete, reusable response."""


# --------------------------------------------------------------------------- hop-by-hop

# RFC 9110 7.6.1: hop-by-hop fields, never forwarded to an HTTP/1.1 upstream (the fields
# named in ``Connection`` are dropped too: ``forwarded.strip_hop_by_hop``).
HOP_BY_HOP_H1: Final = HOP_BY_HOP
# RFC 9113 8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing
# connection-specific header fields ... The only exception to this is the TE header
# field, which MAY be present in an HTTP/2 request; when it is, it MUST NOT contain any
# value other than "trailers"."  ``te`` is therefore kept for the caller to rewrite
# with ``te_for_h2``; ``proxy-connection`` and ``keep-alive`` are in both sets.
HOP_BY_HOP_H2: Final = HOP_BY_HOP_H1 - {b"te"}


def te_for_h2(value: bytes) -> bytes | None:
    """The ``te`` value an HTTP/2 upstream may receive: ``trailers`` or nothing."""
    for token in value.split(b","):
        if token.split(b";", 1)[0].strip().lower() == b"trailers":
            return b"trailers"
    return None


def hop_by_hop_for(http2: bool) -> frozenset[bytes]:
    """Fields not forwarded to an upstream of this kind (plus those ``Connection``
    names)."""
    return HOP_BY_HOP_H2 if http2 else HOP_BY_HOP_H1
