"""Upstream streams per endpoint: one interface (``codec.StreamPool``) for the exchange.

``acquire(key)`` returns a stream ready for a request without waiting, or None;
``connect(...)`` opens a new connection and returns its stream; ``release(stream, now)``
gives a stream back after a complete, reusable response.

HTTP/1.1 (this module's ``UpstreamPool``): a stream is a whole connection, held
exclusively by one request.  Idle keep-alive connections are kept per endpoint, last in
first out (the most recently used is the least likely to have been closed by the
backend), with a bounded idle count per endpoint, and a connection is only reused when
nothing at all arrived on it while idle (``UpstreamConnection.has_stale_input``: one
poll(2) per reuse).

HTTP/2 plugs in next to it with the same three calls: ``acquire`` opens a new stream
on a pooled connection that has room under the peer's SETTINGS_MAX_CONCURRENT_STREAMS,
``release`` is a no-op (the stream ended with its response), and the exchange picks
the pool by the backend's protocol (``appProtocol: kubernetes.io/h2c``, GRPCRoute).
The endpoint key, the resolver, the backend TLS contexts and the retain/sweep/close
life cycle are shared.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gatewayd.proxy.http.h1_client import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    EndpointKey,
    UpstreamConnection,
    endpoint_key,
)
from gatewayd.proxy.resolver import Resolver
from gatewayd.tls.backend import BackendContexts

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.routing.bindings import BackendTLS

MAX_IDLE_PER_ENDPOINT = 64


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
