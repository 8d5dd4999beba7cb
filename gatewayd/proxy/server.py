"""The data plane of one process (``Proxy``): listeners, client connections, the
upstream pool, and the sweep that checks every deadline.

The HTTP machinery lives in ``gatewayd/proxy/http/``: ``codec.py`` (the seam),
``exchange.py`` (the protocol-neutral request logic), ``h1_server.py`` (the HTTP/1.1
client connection, ``HttpConnection``), ``h1_client.py`` and ``pool.py`` (upstream
HTTP/1.1 connections and their keep-alive pool).  This module wires them to ports.

- HTTPS ports are created once with the fixed base context of their ``PortTLS``
  (``gatewayd.tls.terminate``); a new snapshot only swaps the certificates the SNI
  callback picks from.  Such connections carry their server name (``sni``) for the 421
  check; on plain connections ``sni`` is None and costs one test per request.  A port
  that also has TLS listeners is a plain socket instead: ``TLSRouteConnection`` reads
  the ClientHello, and terminates for an HTTPS listener with the same ``PortTLS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from gatewayd.proxy.acceptor import Balance, SharedAcceptor
from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.balancer import DEFAULT_OUTLIER, EndpointHealth, OutlierOptions
from gatewayd.proxy.http.exchange import Exchange
from gatewayd.proxy.http.h1_server import D_IDLE, HttpConnection
from gatewayd.proxy.http.h2_limits import EDGE_H2_LIMITS, UPSTREAM_H2_LIMITS, H2Limits
from gatewayd.proxy.http.pool import (
    MAX_H2_CONNECTIONS_PER_ENDPOINT,
    MAX_IDLE_CEILING,
    MAX_IDLE_PER_ENDPOINT,
    UpstreamPool,
)
from gatewayd.proxy.http.retrybudget import RetryBudget
from gatewayd.proxy.http.session import SessionCodec
from gatewayd.proxy.listeners import BACKLOG, ListeningSockets, NotHanded
from gatewayd.proxy.pathnorm import EDGE_PATH_POLICY, PathPolicy
from gatewayd.proxy.proxyproto import DEFAULT_TIMEOUT as DEFAULT_PROXY_TIMEOUT
from gatewayd.proxy.proxyproto import Network
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.proxy.splice import Splice, close_idle
from gatewayd.proxy.tcproute import TCP_PROTOCOL, TCPRouteListener
from gatewayd.proxy.tlsroute import TLS_PROTOCOL, TLSRouteListener
from gatewayd.proxy.tracecontext import NOT_SAMPLED, SAMPLED
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.tls.terminate import PortTLS

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.proxy.spans import SpanExport

log = logging.getLogger("gatewayd.proxy.server")

ListenKey = tuple[str, int]

# At --max-connections with no idle connection to close, how long new clients are
# refused before the connections are scanned again (``Proxy.make_room``).
NO_IDLE_RESCAN: Final = 0.05

__all__ = ["HttpConnection", "Proxy", "ProxyOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyOptions:
    xff_trusted_hops: int = 0
    access_log: str | None = "text"  # "text" | "json" | None (off)
    max_connections: int = 10000  # per process: each worker counts its own
    idle_timeout: float = 60.0  # keep-alive idle
    tcp_idle_timeout: float = 3600.0  # L4 splices (TLSRoute, node-local pass-through)
    header_timeout: float = 30.0  # slowloris guard: request head must complete
    upstream_connect_timeout: float = 5.0
    max_header_bytes: int = 60 * 1024
    # HTTP listeners also serve cleartext HTTP/2 with prior knowledge (the connection
    # preface is detected on the first bytes), as Envoy's codec_type AUTO does.
    h2c: bool = True
    # Downstream HTTP/2 limits (h2_limits.H2Limits, Envoy's edge defaults: 100 streams,
    # 64 KiB stream window, 1 MiB connection window); --h2-max-concurrent-streams,
    # --h2-initial-stream-window, --h2-initial-connection-window.
    h2: H2Limits = EDGE_H2_LIMITS
    # Upstream HTTP/2 connections (h2_limits.UPSTREAM_H2_LIMITS: streams per connection
    # as the backend's SETTINGS allow, 64 KiB stream and 1 MiB connection windows, the
    # header limits of --max-header-bytes/--max-headers); --upstream-h2-* flags.
    upstream_h2: H2Limits = UPSTREAM_H2_LIMITS
    upstream_h2_max_connections: int = MAX_H2_CONNECTIONS_PER_ENDPOINT
    # Idle HTTP/1.1 connections per endpoint kept at least / at most (pool.py);
    # --upstream-idle-floor, --upstream-idle-ceiling.
    upstream_idle_floor: int = MAX_IDLE_PER_ENDPOINT
    upstream_idle_ceiling: int = MAX_IDLE_CEILING
    max_headers: int = 100
    # Envoy's edge defaults.  Route timeout (Envoy's route ``timeout``, 15 s): from the
    # end of the request to the end of the upstream response, for rules without
    # ``timeouts.request``; 504 (flag UT) or a reset once the response has started.
    # 0 disables.
    route_timeout: float = 15.0
    # Stream idle timeout (Envoy's ``stream_idle_timeout``, 5 min): an active exchange
    # with no progress either way for this long ends (408, flag SI, or a reset once the
    # response has started).  0 disables.
    stream_idle_timeout: float = 300.0
    # Edge header trust and path normalization (gatewayd run --preserve-request-id,
    # --xfcc, --no-path-normalization, --no-merge-slashes, --escaped-slashes,
    # --keep-fragment).
    preserve_request_id: bool = False
    path: PathPolicy = EDGE_PATH_POLICY
    xfcc_set: bool = True  # XFCC from a verified client certificate (False: never sent)
    # PROXY protocol (gatewayd run --proxy-protocol [PORT=]CIDRS): per listener port
    # (None: every port), the sources trusted to send a header; a port not named reads
    # none.  ``proxy_protocol_timeout``: how long a trusted source has to send it
    # (Envoy's listener_filters_timeout, 15 s).
    proxy_protocol: tuple[tuple[int | None, tuple[Network, ...]], ...] = ()
    proxy_protocol_timeout: float = DEFAULT_PROXY_TIMEOUT
    # Session persistence tokens are authenticated with keys derived from this secret
    # (proxy/http/session.py): ``gatewayd run --session-secret-file``, else 32 random
    # bytes drawn once by the supervisor (the options are handed to every worker, so
    # sessions survive reloads and cross workers, but not a restart).
    session_secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)
    # Endpoint balancing and passive health (--lb-policy, --outlier-*; balancer.py).
    outlier: OutlierOptions = DEFAULT_OUTLIER
    # Retry budget (retrybudget.py; --retry-budget-percent, --retry-budget-min-retries):
    # Envoy's defaults, 20 % of the active requests of a backend, at least 3.
    retry_budget_percent: float = 20.0
    retry_budget_min: int = 3
    # W3C Trace Context to the backends (traceparent/tracestate; --no-trace-context
    # forwards both as received) and OTLP/HTTP span export (--otlp-endpoint; None: off).
    trace_context: bool = True
    otlp_endpoint: str | None = None
    # The share of the traces gatewayd starts that are sampled (exported) when spans
    # are exported (--trace-sample-ratio); a caller's sampled flag is always followed.
    trace_sample: float = 1.0


def _is_https(lp: ListenerPort) -> bool:
    """Whether the port terminates HTTPS (it has a ``PortTLS``); ``lp.terminate`` holds
    the listeners whose certificates it serves."""
    return lp.protocol == "HTTPS"


def _native_tls(lp: ListenerPort) -> bool:
    """Whether the port's socket is created with the loop's TLS: HTTPS listeners only.
    A port that also has TLS listeners is a plain socket whose connections read the
    ClientHello first (``TLSRouteConnection``), then terminate HTTPS themselves."""
    return lp.protocol == "HTTPS" and lp.tls_table is None


def _deadline(conn: HttpConnection) -> float:
    return conn.deadline


# What a port is served by: what Proxy uses of either is ``close()``.
_Server = asyncio.AbstractServer | SharedAcceptor


class Proxy:
    """The data plane of one process: listeners, client connections, upstream pool."""

    def __init__(
        self,
        holder: SnapshotHolder,
        options: ProxyOptions,
        metrics: ProxyMetrics | None = None,
        sockets: ListeningSockets | None = None,
        *,
        balance: Balance | None = None,
    ) -> None:
        self.holder = holder
        # Listening sockets by port: bound here, or handed over by the supervisor of
        # several workers (``gatewayd/workers.py``).
        self.sockets = sockets if sockets is not None else ListeningSockets()
        # A worker's share of the connections of sockets shared with other workers.
        self.balance = balance
        self.options = options
        self.metrics = metrics
        self.access: AccessLogger | None = (
            AccessLogger(options.access_log, trace_ids=options.trace_context)
            if options.access_log
            else None
        )
        self.sessions = SessionCodec(options.session_secret)
        # One span per request over OTLP when asked for (proxy/spans.py; the SDK is
        # imported only then); the flags of the traces this proxy starts: sampled when
        # it records spans.  None: traceparent and tracestate pass as received.
        self.spans: SpanExport | None = None
        self.trace_flags: bytes | None = None
        if options.otlp_endpoint:
            from gatewayd.proxy.spans import SpanExport

            self.spans = SpanExport(options.otlp_endpoint)
        if options.trace_context:
            self.trace_flags = SAMPLED if self.spans is not None else NOT_SAMPLED
        self.pool = UpstreamPool(
            connect_timeout=options.upstream_connect_timeout,
            # Response heads get the request heads' limits, as Envoy's defaults do.
            max_header_bytes=options.max_header_bytes,
            max_headers=options.max_headers,
            metrics=metrics,
            h2_limits=options.upstream_h2,
            h2_max_connections=options.upstream_h2_max_connections,
            max_idle_per_endpoint=options.upstream_idle_floor,
            max_idle_ceiling=options.upstream_idle_ceiling,
        )
        # Endpoint choice and outlier detection, per process (balancer.py).
        self.health = EndpointHealth(options.outlier, metrics)
        # Per port: an asyncio server, or a SharedAcceptor on a socket the workers share.
        self.servers: dict[ListenKey, _Server] = {}
        # Connections of ports whose listeners are all protocol TLS (TLSRoute).
        self.tls_routes = TLSRouteListener(self)
        # Connections of TCP listeners (TCPRoute).
        self.tcp_routes = TCPRouteListener(self)
        # Every set of open L4 splices this process owns, for the idle sweep: the TLS
        # and TCP listeners' and, in node-local mode, the transparent listener's.
        self.splice_sets: list[set[Splice]] = [self.tls_routes.splices, self.tcp_routes.splices]
        # HTTPS ports: TLS termination state, updated in place on every snapshot.
        self.terminators: dict[ListenKey, PortTLS] = {}
        # Ports whose socket was created with the loop's TLS (``_native_tls``).
        self.native_tls: set[ListenKey] = set()
        self.conns: set[HttpConnection] = set()
        self.n_conns = 0
        # Overload (``make_room``): idle connections found by the last scan, the longest
        # idle last, and until when a scan that found none is not repeated.
        self._idle_reserve: list[HttpConnection] = []
        self.no_idle_until = 0.0
        self.tasks: set[asyncio.Task[None]] = set()
        self.retry_budget = RetryBudget(options.retry_budget_percent, options.retry_budget_min)
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None
        self._closed = False

    async def apply(self, snapshot: Snapshot) -> dict[tuple[str, int], str]:
        """Serve ``snapshot``: swap it in, bind new ports, close removed ones.

        Returns ``{(address, port): reason}`` for ports that could not be bound; the
        other ports serve regardless."""
        self.tls_routes.apply(snapshot)  # TLS listener contexts, before new connections
        self.holder.swap(snapshot)
        if snapshot.endpoints is not None:
            # Upstream connections to endpoints that left the configuration drain.
            self.pool.retain(snapshot.endpoints)
            self.health.retain(snapshot.endpoints)
        loop = asyncio.get_running_loop()
        self._start_sweeper(loop)
        failed: dict[tuple[str, int], str] = {}
        wanted = set(snapshot.ports)
        # A port whose socket turns from plain to the loop's TLS (HTTP to HTTPS, or an
        # HTTPS port gaining or losing TLS listeners) or back needs a new server; it
        # listens on the same socket (``ListeningSockets``), so nothing is bound again.
        flipped = [
            key
            for key in self.servers
            if key in wanted and (key in self.native_tls) != _native_tls(snapshot.ports[key])
        ]
        self._close_ports(flipped)
        for key in sorted(wanted & self.servers.keys()):
            # Kept sockets: certificates change in place; a plain socket whose port turns
            # HTTPS-and-TLS gets a PortTLS (or loses it) without being re-bound.
            if _is_https(snapshot.ports[key]):
                self._update_tls(key, snapshot.ports[key])
            else:
                self.terminators.pop(key, None)
        for key in sorted(wanted - self.servers.keys()):
            address, port = key
            label = host_port(address, port)
            lp = snapshot.ports[key]
            ssl_ctx: ssl.SSLContext | None = None
            if _is_https(lp):
                tls = self._update_tls(key, lp)
                if not tls.serving and lp.tls_table is None:
                    del self.terminators[key]
                    failed[key] = "TLS: no listener of this port has a usable certificate"
                    log.error("%s: %s", label, failed[key])
                    continue
                if _native_tls(lp):
                    ssl_ctx = tls.base
            try:
                sock = self.sockets.open(key)
                factory = self._factory(key, label, tls=ssl_ctx is not None)
                handshake_timeout = self.options.header_timeout if ssl_ctx else None
                try:
                    server: _Server
                    trust = self._proxy_trust(port)
                    if self.sockets.shared or trust is not None:
                        # Workers share the socket: each takes one per wake-up, and
                        # they balance on open connections (``proxy/acceptor.py``).
                        server = SharedAcceptor(
                            loop,
                            sock,
                            factory,
                            self.tasks,
                            ssl_context=ssl_ctx,
                            handshake_timeout=handshake_timeout,
                            balance=self.balance if self.sockets.shared else None,
                            load=self.load,
                            proxy_protocol=trust,
                            proxy_timeout=self.options.proxy_protocol_timeout,
                            on_refused=self._proxy_refused(label),
                        )
                    else:
                        server = await loop.create_server(
                            factory,
                            sock=sock,
                            backlog=BACKLOG,
                            ssl=ssl_ctx,
                            ssl_handshake_timeout=handshake_timeout,
                        )
                except BaseException:
                    sock.close()  # this server's descriptor; the port's socket stays
                    raise
            except OSError as exc:
                failed[key] = f"cannot bind {label}: {exc.strerror or exc}"
                if not isinstance(exc, NotHanded):  # the supervisor logged its own failure
                    log.error("%s", failed[key])
                self.terminators.pop(key, None)
                continue
            self.servers[key] = server
            if ssl_ctx is not None:
                self.native_tls.add(key)
        removed = [key for key in self.servers if key not in wanted]
        self._close_ports(removed)
        if self.sockets.binds:
            # A port no server uses any more (removed, or its TLS failed) is unbound.
            self.sockets.retain(self.servers)
        if removed or flipped:
            await asyncio.sleep(0)  # let the listening sockets close
        return failed

    def _proxy_trust(self, port: int) -> tuple[Network, ...] | None:
        """The sources trusted to send a PROXY header on ``port``; None: it reads none
        (a port named in ``--proxy-protocol`` wins over the all-ports entry)."""
        every: tuple[Network, ...] | None = None
        for which, networks in self.options.proxy_protocol:
            if which == port:
                return networks
            if which is None:
                every = networks
        return every

    def _proxy_refused(self, label: str) -> Callable[[str, str], None]:
        """Reports a connection refused for its PROXY header: a metric each, a log line
        at most once a second per port (a flood must not flood the log)."""
        state = {"next": 0.0, "quiet": 0}

        def refused(peer: str, reason: str) -> None:
            metrics = self.metrics
            if metrics is not None:
                kind = (
                    "untrusted"
                    if "untrusted" in reason
                    else "timeout"
                    if "in time" in reason
                    else "invalid"
                )
                metrics.proxy_protocol_refused(label, kind)
            now = time.monotonic()
            if now < state["next"]:
                state["quiet"] += 1
                return
            more = f" ({state['quiet']} more since the last line)" if state["quiet"] else ""
            state["next"], state["quiet"] = now + 1.0, 0
            log.warning("%s: connection from %s refused: %s%s", label, peer, reason, more)

        return refused

    def _update_tls(self, key: ListenKey, lp: ListenerPort) -> PortTLS:
        """TLS termination of an HTTPS port: create or update its ``PortTLS`` (the
        listening socket stays; the SNI callback reads the new certificates from the
        next handshake on).  A listener whose context cannot be built is logged and left
        out (the status computation checked every pair already); the others serve."""
        tls = self.terminators.get(key)
        if tls is None:
            metrics = self.metrics
            hook = metrics.tls_handshake_error if metrics is not None else None
            tls = self.terminators[key] = PortTLS(f"{key[0]}:{key[1]}", hook)
        for problem in tls.update(lp.terminate):
            log.error("TLS on %s:%d: %s", key[0], key[1], problem)
        return tls

    def _close_ports(self, keys: list[ListenKey]) -> None:
        for key in keys:
            self.servers.pop(key).close()
            self.terminators.pop(key, None)
            self.native_tls.discard(key)
            for c in list(self.conns):
                if c.key == key:
                    c.shutdown()
            self.tls_routes.shutdown_port(key)
            self.tcp_routes.shutdown_port(key)

    def _factory(self, key: ListenKey, label: str, *, tls: bool) -> Callable[[], asyncio.Protocol]:
        if not tls:

            def accept() -> asyncio.Protocol:
                # The port's protocol in the current snapshot decides, per accepted
                # connection (one dict lookup), so a port turning from HTTP to TLS keeps
                # its socket.
                lp = self.holder.current.ports.get(key)
                if lp is not None and lp.protocol == TCP_PROTOCOL:
                    return self.tcp_routes.connection(key, label)
                if lp is not None and (lp.protocol == TLS_PROTOCOL or lp.tls_table is not None):
                    # protocol TLS (TLSRoute), alone or next to HTTPS listeners: ClientHello,
                    # SNI, then passthrough, terminate, or HTTPS (``https_connection``).
                    return self.tls_routes.connection(key, label)
                return HttpConnection(self, key, label)

            return accept

        def terminated() -> HttpConnection:
            return self.https_connection(key, label)

        return terminated

    def https_connection(self, key: ListenKey, label: str) -> HttpConnection:
        """The protocol of a terminated HTTPS connection; its transport's ``ssl_object``
        is a ``TerminatedSSLObject`` of the port's ``PortTLS``."""
        conn = HttpConnection(self, key, label)
        conn.sni = ""
        conn.scheme = b"https"
        return conn

    def bound(self) -> set[tuple[str, int]]:
        return set(self.servers)

    def load(self) -> int:
        """Open client connections, counting those still in their TLS handshake (an
        accept task each): what workers balance on."""
        return self.n_conns + len(self.tasks)

    def buffered_bytes(self) -> int:
        """Bytes the proxy holds right now (write buffers and held bodies); for tests
        and debugging, not the hot path."""
        total = self.pool.buffered_bytes() + self.tls_routes.buffered_bytes()
        total += self.tcp_routes.buffered_bytes()
        for c in self.conns:
            total += c.held
            if not c.closed:
                total += c.transport.get_write_buffer_size()
        return total

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting, let in-flight requests and open TLS splices finish for up to
        ``drain_timeout`` seconds, close everything else."""
        self._closed = True
        if self.balance is not None:
            self.balance.stop()  # the other workers take every new connection now
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        self.sockets.close()
        self.terminators.clear()
        self.native_tls.clear()
        for c in list(self.conns):
            c.shutdown()
        self.tls_routes.stop_accepting()
        if (self.conns or self.tls_routes.busy() or self.tcp_routes.busy()) and drain_timeout > 0:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await self._drained.wait()
        for c in list(self.conns):
            c.abort()
        await self.tls_routes.close()
        await self.tcp_routes.close()
        self.pool.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self.access is not None:
            self.access.flush()
        if self.spans is not None:
            # The last batch is sent (or times out) in a thread, not on the loop.
            await asyncio.get_running_loop().run_in_executor(None, self.spans.shutdown)
            self.spans = None
        await asyncio.sleep(0)

    def connection_gone(self) -> None:
        if (
            self._drained is not None
            and not self.conns
            and not self.tls_routes.busy()
            and not self.tcp_routes.busy()
        ):
            self._drained.set()

    def make_room(self) -> bool:
        """At --max-connections: close the longest-idle keep-alive connection so that a
        new client is served, as Envoy's overload manager does by shrinking idle
        timeouts under pressure; False when no connection is idle (between requests,
        nothing in flight).

        Off the hot path: only a connection over the limit scans.  One scan keeps every
        idle connection it found, oldest last, for the next ones; a scan that finds
        none is not repeated for ``NO_IDLE_RESCAN`` seconds or until a connection turns
        idle, so a flood of new clients against busy connections does not cost one scan
        of every connection per client."""
        reserve = self._idle_reserve
        scanned = False
        while True:
            while reserve:
                c = reserve.pop()
                if c.deadline_kind == D_IDLE and not c.closed and c.active is None:
                    log.debug("at --max-connections: closing the longest-idle connection")
                    c.evict()
                    return True
            now = time.monotonic()
            if scanned or now < self.no_idle_until:
                return False
            scanned = True
            idle = [
                c
                for c in self.conns
                if c.deadline_kind == D_IDLE and not c.closed and c.active is None
            ]
            if not idle:
                self.no_idle_until = now + NO_IDLE_RESCAN
                return False
            # The idle deadline is "idle since" plus one constant: the earliest deadline
            # is the longest idle.
            idle.sort(key=_deadline, reverse=True)
            self._idle_reserve = reserve = idle

    # ------------------------------------------------------------------ deadlines

    def _start_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = loop.call_later(self._sweep_interval(), self._sweep, loop)

    def _sweep_interval(self) -> float:
        o = self.options
        timeouts = [o.idle_timeout, o.header_timeout]
        # The default route timeout and the stream idle timeout are checked here too
        # (a quarter of the shortest timeout: it fires at most 25% late).
        timeouts += [t for t in (o.route_timeout, o.stream_idle_timeout) if t > 0]
        return max(0.01, min(1.0, *(t / 4 for t in timeouts)))

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        now = loop.time()
        idle_timeout = self.options.stream_idle_timeout
        # What make_room found idle is stale by now, and would keep closed connections
        # alive.
        self._idle_reserve = []
        # Ejections that ran out end here too (not only on the next pick), so the
        # ejected-endpoints gauge falls for backends nobody sends to.
        self.health.expire(now)
        try:
            for c in list(self.conns):
                h2 = c.h2
                if h2 is not None:
                    # An HTTP/2 connection: its idle and stall timeouts, then each
                    # stream's exchange.
                    try:
                        h2.tick(now)
                        for s in list(h2.streams.values()):
                            cb = s.callbacks
                            if isinstance(cb, Exchange):
                                cb.check_deadlines(now, idle_timeout)
                    except Exception:
                        log.exception("HTTP/2 deadline handling failed")
                        c.abort()
                    continue
                d = c.deadline
                ex = c.active
                if d and now >= d:
                    try:
                        c.on_deadline()
                    except Exception:
                        log.exception("connection deadline handling failed")
                        c.abort()
                elif ex is not None:
                    try:
                        ex.check_deadlines(now, idle_timeout)
                    except Exception:
                        log.exception("request deadline handling failed")
                        c.abort()
                elif c.deadline_kind == D_IDLE:
                    # An idle keep-alive connection gives back its parser until the
                    # next request (10,000 idle connections: about 10 MB).
                    c.release_idle()
            self.pool.sweep(now, self.options.idle_timeout)
            for splices in self.splice_sets:
                if splices:
                    close_idle(splices, now, self.options.tcp_idle_timeout)
            if self.access is not None:
                self.access.flush_due()
        finally:
            self._start_sweeper(loop)
