"""Upstream side of the HTTP/1.1 proxy: one ``asyncio.Protocol`` per backend connection
and a keep-alive pool per endpoint.

An ``UpstreamConnection`` serves one request at a time for the handler bound to it (the
downstream ``Exchange``).  ``httptools.HttpResponseParser`` callbacks forward the
response head and body chunks to the handler straight away: nothing is buffered here,
and the handler throttles us with ``pause_reading`` when the client is slow.  The one
thing the parser holds is a response head being read; it is bounded by the same limits
as request heads (``ProxyOptions.max_header_bytes`` / ``max_headers``), checked while
reading, so a backend sending an endless head costs at most one read past the limit.

Idle connections go back to ``UpstreamPool`` (LIFO per endpoint, so the most recently
used, least likely to have been closed by the backend, is reused first; bounded idle
count per endpoint).  A connection is only reused when nothing at all arrived on it
since its last response ended: HTTP/1.1 pairs responses with requests by order alone,
so a stray byte would make every later response answer the wrong request.
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from gatewayd.proxy.resolver import Resolver
from gatewayd.tls.backend import BackendContexts

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.routing.snapshot.backends import BackendTLS

log = logging.getLogger("gatewayd.proxy.upstream")

# Write-buffer water marks of every proxied transport: above HIGH the peer's reading is
# paused, below LOW it resumes.  Together with the kernel socket buffers this bounds
# what a slow peer can make us hold per connection.
WRITE_HIGH = 128 * 1024
WRITE_LOW = 32 * 1024

MAX_IDLE_PER_ENDPOINT = 64

# Response head limits when the pool is built without options: Envoy's defaults for
# both directions (max_headers_count 100, max_response_headers_kb 60).
MAX_HEADER_BYTES = 60 * 1024
MAX_HEADERS = 100

# (host, port, TLS settings key or "" for cleartext): a connection is only reused for
# the same endpoint *and* the same BackendTLSPolicy / client certificate.
EndpointKey = tuple[str, int, str]


def endpoint_key(host: str, port: int, tls: BackendTLS | None) -> EndpointKey:
    return (host, port, tls.key if tls is not None else "")


class UpstreamHandler(Protocol):
    """What an ``UpstreamConnection`` reports to the request bound to it."""

    def on_upstream_head(
        self, conn: UpstreamConnection, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None: ...

    def on_upstream_body(self, data: bytes) -> None: ...

    def on_upstream_complete(self, conn: UpstreamConnection, reusable: bool) -> None: ...

    def on_upstream_lost(
        self, conn: UpstreamConnection, exc: BaseException | None, got_bytes: bool
    ) -> None: ...

    def on_upstream_flush(self) -> None: ...

    def on_upstream_pause(self) -> None: ...

    def on_upstream_resume(self) -> None: ...

    def on_upstream_fatal(self) -> None:
        """A bug surfaced while handling this connection: give up on the request
        (must not raise)."""
        ...


class UpstreamProtocolError(Exception):
    """The backend sent bytes that do not belong to a response we asked for."""


class UpstreamHeadersTooLarge(UpstreamProtocolError):
    """The response head is over the pool's byte or field-count limit."""


def _has_input(fd: int) -> bool:
    """Whether the socket ``fd`` has unread bytes, an EOF or an error pending.

    One poll(2) with a zero timeout: the event loop only reads a socket on its next
    iteration, so bytes a backend sent while its connection sat idle can still be in
    the kernel when a request picks the connection up.  (poll, not select: descriptors
    above FD_SETSIZE are common with thousands of connections.)"""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLPRI)
    return bool(p.poll(0))


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_done_for",
        "_head_request",
        "_reusable",
        "_skip_complete",
        "chunked",
        "closed",
        "done_in_feed",
        "fd",
        "got_bytes",
        "handler",
        "has_length",
        "head_done",
        "head_fed",
        "head_size",
        "headers",
        "idle_since",
        "key",
        "label",
        "n_headers",
        "parser",
        "parser_dirty",
        "pool",
        "progress",
        "read_paused",
        "retired",
        "reuses",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, key: EndpointKey, label: str) -> None:
        self.pool = pool
        self.key = key
        self.label = label
        self.retired = False  # its endpoint left the configuration: close when released
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpResponseParser(self)
        self.parser_dirty = False
        self.handler: UpstreamHandler | None = None
        self.closed = False
        self.reuses = 0
        self.idle_since = 0.0
        self.read_paused = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.has_length = False
        self.chunked = False
        self.got_bytes = False
        self.done_in_feed = False
        # The response that ended in the chunk being parsed, reported once the whole
        # chunk is parsed (so bytes after it can still make the connection unusable).
        self._done_for: UpstreamHandler | None = None
        self._reusable = False
        self._head_request = False
        self._skip_complete = False
        self.fd = -1
        # Response head accounting: bytes fed since the parser last produced a final
        # head or body bytes (what it may be holding: a head, interim responses, a
        # trailer section), and the header bytes and fields of the current message.
        self.head_fed = 0
        self.progress = False
        self.head_size = 0
        self.n_headers = 0

    # ------------------------------------------------------------------ lifecycle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else -1
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
                h.on_upstream_complete(self, False)
                h.on_upstream_flush()
                return
            h.on_upstream_lost(self, exc, self.got_bytes)
        except Exception:
            log.exception("upstream %s:%d: close handling failed", *self.key[:2])
            h.on_upstream_fatal()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost reports it

    def bind(self, handler: UpstreamHandler, head_request: bool) -> None:
        """Attach the request about to be written on this connection."""
        self.handler = handler
        if self.parser_dirty:
            # The previous response answered a HEAD request: the parser (which cannot
            # be told about HEAD) may still expect a body, so start from a clean one.
            self.parser = httptools.HttpResponseParser(self)
            self.parser_dirty = False
        self.headers = []
        self.head_done = False
        self.has_length = False
        self.chunked = False
        self.got_bytes = False
        self._head_request = head_request
        self._skip_complete = False
        self.head_fed = 0
        self.head_size = 0
        self.n_headers = 0

    def has_stale_input(self) -> bool:
        """Bytes (or an EOF) arrived that no request asked for and the loop has not
        delivered yet: the connection must not carry another request."""
        return self.fd >= 0 and _has_input(self.fd)

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
        if self.read_paused:
            self.read_paused = False
            if not self.closed:
                self.transport.resume_reading()

    # ------------------------------------------------------------------ flow control

    def pause_writing(self) -> None:
        h = self.handler
        if h is not None:
            try:
                h.on_upstream_pause()
            except Exception:
                log.exception("upstream flow control failed")
                h.on_upstream_fatal()

    def resume_writing(self) -> None:
        h = self.handler
        if h is not None:
            try:
                h.on_upstream_resume()
            except Exception:
                log.exception("upstream flow control failed")
                h.on_upstream_fatal()

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
        self.got_bytes = True
        self.done_in_feed = False
        self.progress = False
        try:
            self.parser.feed_data(data)
        except Exception as exc:
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
                done.on_upstream_complete(self, self._reusable and not self.closed)
            elif not self.progress and self.handler is h and (self.chunked or not self.head_done):
                # Nothing came out of this read: it is part of a head or of a trailer
                # section, which the parser holds until a field line ends (an endless
                # line reaches no callback), or chunk framing.  Bound it here too.
                self.head_fed += len(data)
                if self.head_fed > self.pool.max_header_bytes:
                    self._broken(h, UpstreamHeadersTooLarge("response head too large"))
                    return
            h.on_upstream_flush()
        except Exception:
            log.exception("upstream %s:%d: relaying the response failed", *self.key[:2])
            self.abort()
            h.on_upstream_fatal()

    def _broken(self, h: UpstreamHandler, exc: BaseException) -> None:
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
                done.on_upstream_complete(self, False)
            else:
                answered = self.head_done or isinstance(exc, UpstreamHeadersTooLarge)
                h.on_upstream_lost(self, exc, answered)
            h.on_upstream_flush()
        except Exception:
            log.exception("upstream %s:%d: error handling failed", *self.key[:2])
            h.on_upstream_fatal()

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
        self.head_size = 0
        self.n_headers = 0

    def on_status(self, reason: bytes) -> None:
        self.head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The request side's limits, counted the same way (server.py on_header), also
        # for trailer fields, which the parser holds just like head fields.
        self.n_headers += 1
        self.head_size += len(name) + len(value) + 4
        pool = self.pool
        if self.n_headers > pool.max_headers or self.head_size > pool.max_header_bytes:
            raise UpstreamHeadersTooLarge("response header fields too large")
        if self.head_done:
            return  # trailer fields: not forwarded (we re-frame the body)
        name = name.lower()
        if name == b"content-length":
            self.has_length = True
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
            # proxy answers the client's Expect itself (see server.py).  101 never
            # happens: Upgrade is hop-by-hop and never forwarded.
            if status == 101:
                raise UpstreamProtocolError("unexpected 101 Switching Protocols")
            self.headers = []
            self.has_length = False
            self.chunked = False
            self._skip_complete = True
            return
        self.head_done = True
        self.n_headers = 0  # trailer fields get a fresh count
        self.head_size = 0
        self.head_fed = 0
        self.progress = True
        h.on_upstream_head(self, status, self.headers)
        if self._head_request and self.handler is h:
            # RFC 9110 9.3.2: the response to HEAD has no content, whatever its framing
            # headers say.  The parser cannot be told, so finish here and use a fresh
            # parser for the next response.
            self.parser_dirty = True
            self._finish(h)

    def on_body(self, body: bytes) -> None:
        h = self.handler
        if h is None or self.done_in_feed:
            raise UpstreamProtocolError("unexpected response body")
        self.progress = True
        self.head_fed = 0
        h.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self._skip_complete:
            self._skip_complete = False
            return
        if self.done_in_feed:
            return  # the phantom end of a HEAD response's body
        h = self.handler
        if h is None:
            raise UpstreamProtocolError("response without a request")
        self._finish(h)

    def _finish(self, h: UpstreamHandler) -> None:
        # Reported by data_received once the rest of the chunk is parsed: a byte
        # after the end of the response makes the connection unusable, and the
        # handler must know that before it puts the connection back in the pool.
        self._reusable = bool(self.parser.should_keep_alive())
        self.handler = None
        self.done_in_feed = True
        self._done_for = h


class UpstreamPool:
    """Idle keep-alive connections per endpoint, reused last-in first-out."""

    __slots__ = (
        "_closed",
        "connect_timeout",
        "conns",
        "contexts",
        "idle",
        "mark",
        "max_header_bytes",
        "max_headers",
        "max_idle",
        "metrics",
        "resolver",
    )

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
        metrics: ProxyMetrics | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        # Response head limits (bytes of names and values, field lines), per response.
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.resolver = resolver if resolver is not None else Resolver()
        self.max_idle = max_idle_per_endpoint
        self.metrics = metrics
        self.idle: dict[EndpointKey, list[UpstreamConnection]] = {}
        self.conns: set[UpstreamConnection] = set()
        self._closed = False
        # SO_MARK for every upstream socket (node-local TPROXY mode): the diversion
        # rules skip this mark, so the proxy's own connections are never diverted back.
        self.mark: int | None = None
        # Client SSLContexts of BackendTLSPolicy backends, built on first use.
        self.contexts = BackendContexts()

    def acquire(self, key: EndpointKey) -> UpstreamConnection | None:
        """An idle connection to ``key``, most recently used first, or None."""
        stack = self.idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.closed or conn.transport.is_closing():
                continue
            if conn.has_stale_input():
                # Something arrived while it was idle (a stray response, an EOF) that
                # the loop has not delivered yet: it would be read as the answer to
                # the request about to be written.  One poll(2) per reuse.
                conn.abort()
                continue
            conn.reuses += 1
            return conn
        return None

    async def connect(
        self,
        host: str,
        port: int,
        label: str,
        tls: BackendTLS | None = None,
        *,
        resolve: bool = False,
    ) -> UpstreamConnection:
        """A fresh connection (pool miss).  Raises OSError or TimeoutError.

        With ``tls`` the connection is TLS (SNI and verification from the policy); a
        failed handshake or verification raises ``ssl.SSLError``, an OSError.

        ``resolve``: ``host`` is a name (EndpointSlice addressType FQDN), resolved through
        the TTL cache; a name that does not resolve raises ``socket.gaierror``.  The pool
        key stays the name, so idle connections are reused whatever the name resolves to
        now.  The connect timeout bounds the lookup and the handshake too."""
        key = endpoint_key(host, port, tls)
        ssl_args: dict[str, object] = {}
        if tls is not None:
            ssl_args = {"ssl": self.contexts.get(tls), "server_hostname": tls.hostname}
        async with asyncio.timeout(self.connect_timeout):
            if not resolve:
                return await self._open(key, host, port, label, ssl_args)
            last: OSError | None = None
            for _family, sockaddr in await self.resolver.resolve(host, port):
                try:
                    return await self._open(key, sockaddr[0], port, label, ssl_args)
                except OSError as exc:  # next address, as create_connection does
                    last = exc
            assert last is not None  # resolve() never returns an empty list
            raise last

    async def _open(
        self,
        key: EndpointKey,
        address: str,
        port: int,
        label: str,
        ssl_args: dict[str, object],
    ) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        if self.mark is not None:
            from gatewayd.tproxy.sockets import connect_marked

            sock = await connect_marked(address, port, self.mark)
            _, proto = await loop.create_connection(
                lambda: UpstreamConnection(self, key, label), sock=sock, **ssl_args
            )
        else:
            _, proto = await loop.create_connection(
                lambda: UpstreamConnection(self, key, label), address, port, **ssl_args
            )
        return proto

    def release(self, conn: UpstreamConnection, now: float) -> None:
        """Return a connection whose response was read completely."""
        conn.handler = None
        if conn.closed:
            return
        conn.resume_reading()  # so we notice the backend closing it while idle
        stack = self.idle.get(conn.key)
        if stack is None:
            stack = self.idle[conn.key] = []
        if self._closed or conn.retired or len(stack) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        stack.append(conn)

    def opened(self, conn: UpstreamConnection) -> None:
        self.conns.add(conn)
        if self.metrics is not None:
            self.metrics.upstream_cx(conn.label, 1)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            if self.metrics is not None:
                self.metrics.upstream_cx(conn.label, -1)
        self.drop_idle(conn)

    def drop_idle(self, conn: UpstreamConnection) -> None:
        """Take ``conn`` out of its idle stack (if it is there)."""
        stack = self.idle.get(conn.key)
        if stack and conn in stack:
            stack.remove(conn)

    def retain(self, endpoints: frozenset[tuple[str, int]]) -> int:
        """A new configuration keeps only ``endpoints``: idle connections to any other
        close now, busy ones once their response is done (drain).  The number closed."""
        closed = 0
        for key in [k for k in self.idle if (k[0], k[1]) not in endpoints]:
            stack = self.idle.pop(key)
            closed += len(stack)
            while stack:
                stack.pop().close()
        for conn in self.conns:
            if (conn.key[0], conn.key[1]) not in endpoints:
                conn.retired = True
        return closed

    def sweep(self, now: float, max_idle_time: float) -> None:
        """Close connections idle for longer than ``max_idle_time``."""
        limit = now - max_idle_time
        for stack in self.idle.values():
            # Oldest at the bottom of the LIFO stack.
            while stack and stack[0].idle_since < limit:
                stack.pop(0).close()

    def idle_count(self, key: EndpointKey | None = None) -> int:
        if key is not None:
            return len(self.idle.get(key, ()))
        return sum(len(s) for s in self.idle.values())

    def buffered_bytes(self) -> int:
        return sum(
            c.transport.get_write_buffer_size()
            for c in self.conns
            if c.transport is not None and not c.closed
        )

    def close(self) -> None:
        self._closed = True
        self.resolver.close()
        for stack in self.idle.values():
            while stack:
                stack.pop().close()
        for conn in list(self.conns):
            conn.abort()
