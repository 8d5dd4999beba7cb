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

HTTP/2 (``acquire_h2`` / ``connect_h2``): a stream of a multiplexed connection
(``h2_client.H2ClientConnection``). ``acquire_h2`` opens a new stream on a pooled
connection that has room under the backend's SETTINGS_MAX_CONCURRENT_STREAMS;
``connect_h2`` first waits for a connection being opened to the same endpoint (its
SETTINGS tell how many streams it takes), then opens another connection when every one
is full, as Envoy's HTTP/2 pool does, bounded by ``MAX_H2_CONNECTIONS_PER_ENDPOINT``
(--upstream-h2-max-connections; beyond it the request fails as an overflow: 503).
``release`` of an HTTP/2 stream is a no-op (the stream ended with its response). The
exchange picks the calls once per request by ``CompiledBackend.http2`` (``appProtocol:
kubernetes.io/h2c``, every GRPCRoute backend). The endpoint key, the resolver, the
backend TLS contexts (ALPN ``h2`` for HTTP/2) and the retain/sweep/close life cycle are
shared; the metrics are the same (``upstream_cx_active`` counts HTTP/2 connections too).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import h2.events

from gatewayd.proxy.http.h1_client import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    EndpointKey,
    UpstreamConnection,
    endpoint_key,
)
from gatewayd.proxy.http.h2_client import H2ClientConnection, H2ClientStream
from gatewayd.proxy.http.h2_limits import UPSTREAM_H2_LIMITS, H2Limits
from gatewayd.proxy.resolver import Resolver
from gatewayd.tls.backend import BackendContexts

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.routing.snapshot.backends import BackendTLS

# Idle HTTP/1.1 connections an endpoint keeps at least (the floor), and at most (the
# ceiling).  Between the two the limit follows demand: a released connection stays idle
# while the endpoint has fewer idle connections than busy ones, so N requests in
# flight keep about N connections open instead of closing all but 64 on each release
# and reopening them for the next request (measured: h2load -c 64 -m 10, 640 streams
# in flight, opened 21,734 upstream connections for 20,000 requests).  Connections
# left idle when demand falls close after the idle timeout (`sweep`).  The ceiling is
# Envoy's circuit-breaker ``max_connections`` default per cluster (1024).
MAX_IDLE_PER_ENDPOINT = 64
MAX_IDLE_CEILING = 1024
# HTTP/2 connections per endpoint (Envoy's circuit breaker max_connections default is
# 1024 per cluster); a request that finds them all full and this many open fails with
# 503 instead of opening more.
MAX_H2_CONNECTIONS_PER_ENDPOINT = 1024
# Rounds of "wait for a connection being opened, else open one" a request makes before
# giving up (each bounded by the connect timeout as a whole).
H2_CONNECT_ROUNDS = 4
# ALPN offered to HTTP/2 backends under a BackendTLSPolicy (RFC 9113 3.2).
H2_ALPN = ("h2",)


class PooledH2Connection(H2ClientConnection):
    """An upstream HTTP/2 connection owned by the pool: counted in the metrics, and
    ``ready`` once the backend's first SETTINGS arrived (so ``can_open`` knows its
    SETTINGS_MAX_CONCURRENT_STREAMS before streams are opened on it)."""

    def __init__(self, pool: UpstreamPool, key: EndpointKey, label: str, scheme: bytes) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(
            clock=loop.time, scheme=scheme, defer=loop.call_soon, limits=pool.h2_limits
        )
        self.pool = pool
        self.key = key
        self.label = label
        self.retired = False
        self.ready: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.pool.opened_h2(self)

    def _event(self, event: h2.events.Event) -> H2ClientStream | None:
        if isinstance(event, h2.events.RemoteSettingsChanged) and not self.ready.done():
            self.ready.set_result(None)
        return super()._event(event)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(
                exc if isinstance(exc, OSError) else ConnectionResetError("closed before SETTINGS")
            )
            self.ready.exception()  # retrieved: nobody may be waiting
        super().connection_lost(exc)
        self.pool.forget_h2(self)


class UpstreamPool:
    """Idle keep-alive connections per endpoint, reused last-in first-out."""

    __slots__ = (
        "_closed",
        "connect_timeout",
        "conns",
        "contexts",
        "h2_conns",
        "h2_limits",
        "h2_max_connections",
        "h2_opening",
        "idle",
        "mark",
        "max_header_bytes",
        "max_headers",
        "max_idle",
        "max_idle_ceiling",
        "metrics",
        "open_count",
        "resolver",
    )

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        max_idle_per_endpoint: int = MAX_IDLE_PER_ENDPOINT,
        max_idle_ceiling: int = MAX_IDLE_CEILING,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_headers: int = MAX_HEADERS,
        metrics: ProxyMetrics | None = None,
        resolver: Resolver | None = None,
        h2_limits: H2Limits = UPSTREAM_H2_LIMITS,
        h2_max_connections: int = MAX_H2_CONNECTIONS_PER_ENDPOINT,
    ) -> None:
        self.connect_timeout = connect_timeout
        # Response head limits (bytes of names and values, field lines), per response.
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.resolver = resolver if resolver is not None else Resolver()
        self.max_idle = max_idle_per_endpoint
        self.max_idle_ceiling = max(max_idle_ceiling, max_idle_per_endpoint)
        # Open HTTP/1.1 connections per endpoint (idle and busy): the idle limit's demand.
        self.open_count: dict[EndpointKey, int] = {}
        self.metrics = metrics
        self.idle: dict[EndpointKey, list[UpstreamConnection]] = {}
        self.conns: set[UpstreamConnection] = set()
        # HTTP/2: every open connection per endpoint (idle or busy: all are shared),
        # and the connects under way (waited for before opening another).
        self.h2_conns: dict[EndpointKey, list[PooledH2Connection]] = {}
        self.h2_opening: dict[EndpointKey, list[asyncio.Future[None]]] = {}
        # Limits of every HTTP/2 connection to a backend (--upstream-h2-* flags, header
        # limits as downstream's) and how many of them an endpoint may have.
        self.h2_limits = h2_limits
        self.h2_max_connections = h2_max_connections
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
            # ``conn.has_stale_input()`` inlined (a call less per reuse).
            poller = conn.poller
            if poller is not None and poller.poll(0):
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

    # ------------------------------------------------------------------ HTTP/2

    def acquire_h2(self, key: EndpointKey) -> H2ClientStream | None:
        """A new stream on a pooled HTTP/2 connection to ``key`` with room, or None."""
        for conn in self.h2_conns.get(key, ()):
            if not conn.retired and conn.ready.done() and conn.can_open():
                return conn.open_stream()
        return None

    async def connect_h2(
        self,
        host: str,
        port: int,
        label: str,
        tls: BackendTLS | None = None,
        *,
        resolve: bool = False,
    ) -> H2ClientStream:
        """A stream to the endpoint: on a connection being opened (waited for), else on
        a new connection.  Raises OSError or TimeoutError (the connect timeout bounds
        the wait, the lookup, the handshake and the backend's SETTINGS)."""
        key = endpoint_key(host, port, tls)
        async with asyncio.timeout(self.connect_timeout):
            # A connection becomes usable when its SETTINGS arrive; by the time this
            # task runs again, requests that found it in the pool may have taken its
            # streams (a backend allowing one stream): then try again, a few rounds.
            for _ in range(H2_CONNECT_ROUNDS):
                stream = await self._h2_round(key, host, port, label, tls, resolve)
                if stream is not None:
                    return stream
        raise ConnectionRefusedError(f"no HTTP/2 stream to {host}:{port} became free")

    async def _h2_round(
        self,
        key: EndpointKey,
        host: str,
        port: int,
        label: str,
        tls: BackendTLS | None,
        resolve: bool,
    ) -> H2ClientStream | None:
        for fut in list(self.h2_opening.get(key, ())):
            with contextlib.suppress(Exception):
                await asyncio.shield(fut)
            stream = self.acquire_h2(key)
            if stream is not None:
                return stream
        if len(self.h2_conns.get(key, ())) >= self.h2_max_connections:
            raise ConnectionRefusedError(
                f"{self.h2_max_connections} HTTP/2 connections to {host}:{port} are full"
            )
        opening = asyncio.get_running_loop().create_future()
        waiting = self.h2_opening.setdefault(key, [])
        waiting.append(opening)
        try:
            conn = await self._open_h2(key, host, port, label, tls, resolve)
            try:
                await conn.ready
            except BaseException:
                if conn.transport is not None:
                    conn.transport.abort()
                raise
        finally:
            waiting.remove(opening)
            if not waiting:
                self.h2_opening.pop(key, None)
            if not opening.done():
                opening.set_result(None)
        if conn.can_open():
            return conn.open_stream()
        return self.acquire_h2(key)

    async def _open_h2(
        self,
        key: EndpointKey,
        host: str,
        port: int,
        label: str,
        tls: BackendTLS | None,
        resolve: bool,
    ) -> PooledH2Connection:
        ssl_args: dict[str, object] = {}
        scheme = b"http"
        if tls is not None:
            ssl_args = {
                "ssl": self.contexts.get(tls, alpn=H2_ALPN),
                "server_hostname": tls.hostname,
            }
            scheme = b"https"
        loop = asyncio.get_running_loop()
        addresses = [host]
        if resolve:
            addresses = [sa[0] for _f, sa in await self.resolver.resolve(host, port)]
        last: OSError | None = None
        for address in addresses:
            try:
                if self.mark is not None:
                    from gatewayd.tproxy.sockets import connect_marked

                    sock = await connect_marked(address, port, self.mark)
                    transport, proto = await loop.create_connection(
                        lambda: PooledH2Connection(self, key, label, scheme), sock=sock, **ssl_args
                    )
                else:
                    transport, proto = await loop.create_connection(
                        lambda: PooledH2Connection(self, key, label, scheme),
                        address,
                        port,
                        **ssl_args,
                    )
            except OSError as exc:  # next address, as create_connection does
                last = exc
                continue
            if tls is not None:
                ssl_obj = transport.get_extra_info("ssl_object")
                if ssl_obj is None or ssl_obj.selected_alpn_protocol() != "h2":
                    # RFC 9113 3.2: HTTP/2 over TLS is negotiated with ALPN "h2"; a
                    # backend that did not select it does not speak HTTP/2 here.
                    transport.abort()
                    raise ConnectionRefusedError(f"backend {host}:{port} did not negotiate ALPN h2")
            return proto
        assert last is not None
        raise last

    def opened_h2(self, conn: PooledH2Connection) -> None:
        self.h2_conns.setdefault(conn.key, []).append(conn)
        if self.metrics is not None:
            self.metrics.upstream_cx(conn.label, 1)

    def forget_h2(self, conn: PooledH2Connection) -> None:
        conns = self.h2_conns.get(conn.key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.h2_conns[conn.key]
            if self.metrics is not None:
                self.metrics.upstream_cx(conn.label, -1)

    def h2_count(self, key: EndpointKey | None = None) -> int:
        if key is not None:
            return len(self.h2_conns.get(key, ()))
        return sum(len(c) for c in self.h2_conns.values())

    # ------------------------------------------------------------------ both

    def release(self, conn: UpstreamConnection | H2ClientStream, now: float) -> None:
        """Return a connection whose response was read completely (an HTTP/2 stream
        has nothing to give back: it ended with its response)."""
        if conn.http2:
            conn.close()  # a no-op once ended; a stream never started gives back its slot
            return
        if TYPE_CHECKING:  # for mypy only: an isinstance test per request costs ~0.05 us
            assert isinstance(conn, UpstreamConnection)
        conn.handler = None
        if conn.closed:
            return
        # So we notice the backend closing it while idle (``conn.resume_reading()``,
        # its usual no-op inlined: a call less per request).
        conn.read_mask = 0
        if conn.read_paused:
            conn.resume_reading()
        stack = self.idle.get(conn.key)
        if stack is None:
            stack = self.idle[conn.key] = []
        idle = len(stack)
        # Keep it while idle ones are fewer than the floor, or than the busy ones (this
        # one counted busy), within the ceiling: see MAX_IDLE_PER_ENDPOINT.
        if (
            self._closed
            or conn.retired
            or (
                idle >= self.max_idle
                and (
                    idle >= self.open_count.get(conn.key, 0) - idle or idle >= self.max_idle_ceiling
                )
            )
        ):
            conn.close()
            return
        conn.idle_since = now
        stack.append(conn)

    def opened(self, conn: UpstreamConnection) -> None:
        self.conns.add(conn)
        self.open_count[conn.key] = self.open_count.get(conn.key, 0) + 1
        if self.metrics is not None:
            self.metrics.upstream_cx(conn.label, 1)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            left = self.open_count.get(conn.key, 1) - 1
            if left > 0:
                self.open_count[conn.key] = left
            else:
                self.open_count.pop(conn.key, None)
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
        for key, h2conns in list(self.h2_conns.items()):
            if (key[0], key[1]) in endpoints:
                continue
            for h2conn in list(h2conns):
                h2conn.retired = True  # no new streams; closed once idle (sweep)
                if not h2conn.streams and not h2conn.reserved:
                    h2conn.close()
                    closed += 1
        return closed

    def sweep(self, now: float, max_idle_time: float) -> None:
        """Close connections idle for longer than ``max_idle_time``."""
        limit = now - max_idle_time
        for stack in self.idle.values():
            # Oldest at the bottom of the LIFO stack.
            while stack and stack[0].idle_since < limit:
                stack.pop(0).close()
        # HTTP/2: a connection without streams for the idle time closes with GOAWAY
        # (NO_ERROR); a retired one as soon as its last stream ended.
        for h2conns in list(self.h2_conns.values()):
            for conn in list(h2conns):
                if conn.streams or conn.reserved:
                    continue
                if conn.retired or conn.idle_since < limit:
                    conn.close()

    def idle_count(self, key: EndpointKey | None = None) -> int:
        if key is not None:
            return len(self.idle.get(key, ()))
        return sum(len(s) for s in self.idle.values())

    def buffered_bytes(self) -> int:
        h1 = sum(
            c.transport.get_write_buffer_size()
            for c in self.conns
            if c.transport is not None and not c.closed
        )
        return h1 + sum(
            c.transport.get_write_buffer_size()
            for conns in self.h2_conns.values()
            for c in conns
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
        for h2conns in list(self.h2_conns.values()):
            for h2conn in list(h2conns):
                h2conn.close()
