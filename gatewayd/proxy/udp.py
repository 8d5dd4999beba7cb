"""UDP listeners (``protocol: UDP``) with a UDPRoute: per-client flows to one backend.

A client flow is the client's address:port on one listener.  Its first datagram picks a
backendRef by weight and an endpoint (round robin) and opens one connected upstream UDP
socket for the flow; every later datagram of the client goes out on that socket, and
every datagram the backend sends back on it goes to the client from the listener's
address.  Envoy's udp_proxy does the same (one upstream socket per downstream session).

- **Order**: datagrams of a flow are written in the order they were read.  Those read
  while its upstream socket is still being opened wait in the flow (at most
  ``MAX_PENDING``), then go first.
- **Idle timeout**: a flow with no datagram either way for ``idle_timeout`` seconds ends
  (Envoy's udp_proxy ``idle_timeout``, 60 s; ``gatewayd run --udp-idle-timeout``); its
  upstream socket is closed and its access-log line written.
- **Flow table bound**: at most ``max_flows`` flows per listener (``--udp-max-flows``,
  default 10,000, the ``--max-connections`` default).  When it is full the datagram of a
  *new* client is dropped (``gatewayd_udp_dropped_total{reason="table_full"}``); open
  flows keep going, and a new client gets a flow once one expires.
- **Datagram size**: datagrams over ``max_datagram`` bytes (``--udp-max-datagram``,
  default 1,500, Envoy's ``max_rx_datagram_size``) are dropped either way, never
  truncated (reason ``too_big``).
- **Write buffers**: a socket that cannot take a datagram now buffers it in the loop;
  past ``MAX_BUFFERED`` bytes further datagrams are dropped (``backpressure``), so a
  stalled peer costs bounded memory (UDP may lose datagrams anyway).
- **Invalid backends**: "Packet drops must respect weight; if an invalid backend is
  requested to have 80% of the packets, then 80% of the packets must be dropped
  instead." (UDPRouteRule.BackendRefs): a datagram whose pick is an invalid reference, or
  a backend without ready endpoint, is dropped and opens no flow.

The listener's route is read from the *current* snapshot when a flow opens; a reload
changes the route of new flows, open flows keep their backend.  UDP listeners are served
by the daemon's own process, also with ``--workers N``: a flow must stay in one process
for its datagrams to keep their order and their upstream socket.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.l4 import L4Table

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.routing.snapshot.compiled import ListenerPort
    from gatewayd.routing.snapshot.rules import CompiledBackend

log = logging.getLogger("gatewayd.proxy.udp")

ListenKey = tuple[str, int]
Addr = tuple[str, int]

# Datagrams of a flow held while its upstream socket opens (a few microseconds).
MAX_PENDING: Final = 64
# Bytes a socket's write buffer may hold before datagrams for it are dropped.
MAX_BUFFERED: Final = 1024 * 1024

# Drop reasons (``reason`` label of gatewayd_udp_dropped_total).
D_TOO_BIG: Final = "too_big"
D_TABLE_FULL: Final = "table_full"
D_NO_ROUTE: Final = "no_route"
D_INVALID_BACKEND: Final = "invalid_backend"
D_NO_ENDPOINT: Final = "no_healthy_upstream"
D_BACKPRESSURE: Final = "backpressure"
D_PENDING: Final = "pending_full"
D_CONNECT_FAIL: Final = "upstream_connect_failure"


@dataclass(frozen=True, slots=True, kw_only=True)
class UDPOptions:
    idle_timeout: float = 60.0  # Envoy's udp_proxy idle_timeout
    max_flows: int = 10000  # per listener
    max_datagram: int = 1500  # Envoy's max_rx_datagram_size
    access_log: str | None = "text"


def _buffered(transport: asyncio.DatagramTransport) -> int:
    """Bytes the loop holds for the socket (asyncio's and uvloop's UDP transports both
    have ``get_write_buffer_size``; the typing stub does not say so)."""
    size = getattr(transport, "get_write_buffer_size", None)
    return int(size()) if size is not None else 0


async def _bind(loop: asyncio.AbstractEventLoop, listener: UDPListener, key: ListenKey) -> None:
    """Bind ``key`` ourselves (a failed bind leaves no transport behind), without
    SO_REUSEPORT: a second process on the port fails here, as TCP ports do
    (proxy/listeners.py), instead of taking part of the flows."""
    address, port = key
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    await loop.create_datagram_endpoint(lambda: listener, sock=sock)


class _Upstream(asyncio.DatagramProtocol):
    """A flow's connected upstream socket: replies go back to the client."""

    __slots__ = ("flow",)

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.flow.reply(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the flow stays (UDP has no connection to
        # lose); the idle timeout ends it if nothing comes back.
        log.debug("upstream %s: %s", self.flow.upstream_host, exc)


class Flow:
    """One client's datagrams on one listener, to one upstream endpoint."""

    __slots__ = (
        "client",
        "closed",
        "cluster",
        "details",
        "last_active",
        "listener",
        "pending",
        "route",
        "rx_bytes",
        "rx_datagrams",
        "start",
        "start_wall",
        "tx_bytes",
        "tx_datagrams",
        "upstream",
        "upstream_host",
    )

    def __init__(self, listener: UDPListener, client: Addr, route: str, cluster: str) -> None:
        self.listener = listener
        self.client = client
        self.route = route
        self.cluster = cluster
        self.upstream_host = ""
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: deque[bytes] | None = deque()
        now = listener.loop.time()
        self.start = self.last_active = now
        self.start_wall = time.time()
        self.rx_bytes = self.tx_bytes = 0
        self.rx_datagrams = self.tx_datagrams = 0
        self.details = ""
        self.closed = False

    def forward(self, data: bytes) -> None:
        """A client datagram: to the upstream socket, or queued while it opens."""
        self.last_active = self.listener.loop.time()
        self.rx_bytes += len(data)
        self.rx_datagrams += 1
        pending = self.pending
        if pending is not None:
            if len(pending) >= MAX_PENDING:
                self.listener.dropped(D_PENDING)
                return
            pending.append(data)
            return
        up = self.upstream
        if up is None or up.is_closing():
            return
        if _buffered(up) > MAX_BUFFERED:
            self.listener.dropped(D_BACKPRESSURE)
            return
        up.sendto(data)
        self.listener.counted("rx")

    def opened(self, transport: asyncio.DatagramTransport) -> None:
        """The upstream socket is ready: the queued datagrams go first, in order."""
        self.upstream = transport
        pending, self.pending = self.pending, None
        if pending:
            for data in pending:
                transport.sendto(data)
                self.listener.counted("rx")

    def reply(self, data: bytes) -> None:
        listener = self.listener
        if len(data) > listener.options.max_datagram:
            listener.dropped(D_TOO_BIG)
            return
        self.last_active = listener.loop.time()
        t = listener.transport
        if t is None or t.is_closing():
            return
        if _buffered(t) > MAX_BUFFERED:
            listener.dropped(D_BACKPRESSURE)
            return
        self.tx_bytes += len(data)
        self.tx_datagrams += 1
        t.sendto(data, self.client)
        listener.counted("tx")

    def close(self, details: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.details = details
        self.pending = None
        if self.upstream is not None:
            self.upstream.close()
        self.listener.flow_ended(self)


class UDPListener(asyncio.DatagramProtocol):
    """One bound UDP listener port and its flow table."""

    def __init__(self, plane: UDPPlane, key: ListenKey) -> None:
        self.plane = plane
        self.key = key
        self.label = host_port(*key)
        self.options = plane.options
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Addr, Flow] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) > self.options.max_datagram:
            self.dropped(D_TOO_BIG)
            return
        client = cast(Addr, addr)[:2]  # IPv6 peers carry flowinfo and scope id too
        flow = self.flows.get(client)
        if flow is None:
            flow = self._open(client)
            if flow is None:
                return
        flow.forward(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("%s: %s", self.label, exc)

    def _open(self, client: Addr) -> Flow | None:
        if len(self.flows) >= self.options.max_flows:
            self.dropped(D_TABLE_FULL)
            return None
        # The snapshot is read once per flow, here.
        lp = self.plane.current.udp_ports.get(self.key)
        table = lp.table if lp is not None else None
        hit = table.hit if isinstance(table, L4Table) else None
        if hit is None:
            self.dropped(D_NO_ROUTE)
            return None
        rule = hit.rule
        backend = rule.pick_backend(random.random())
        if backend is None or backend.invalid_status is not None:
            self.dropped(D_INVALID_BACKEND)
            return None
        endpoint = backend.next_endpoint()
        if endpoint is None:
            self.dropped(D_NO_ENDPOINT)
            return None
        flow = Flow(self, client, rule.route_id, backend.name)
        flow.upstream_host = host_port(endpoint.address, endpoint.port)
        self.flows[client] = flow
        metrics = self.plane.metrics
        if metrics is not None:
            metrics.udp_flow(self.label, 1)
        task = self.loop.create_task(self._connect(flow, backend, endpoint.address, endpoint.port))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return flow

    async def _connect(self, flow: Flow, backend: CompiledBackend, address: str, port: int) -> None:
        try:
            transport, _ = await self.loop.create_datagram_endpoint(
                lambda: _Upstream(flow), remote_addr=(address, port)
            )
        except OSError as exc:
            log.debug("%s: upstream %s:%d: %s", self.label, address, port, exc)
            metrics = self.plane.metrics
            if metrics is not None:
                metrics.upstream_connect_fail(backend.name)
            self.dropped(D_CONNECT_FAIL)
            flow.close("upstream_connect_failure")
            return
        if flow.closed:
            transport.close()
            return
        flow.opened(transport)

    def dropped(self, reason: str) -> None:
        metrics = self.plane.metrics
        if metrics is not None:
            metrics.udp_dropped(self.label, reason)

    def counted(self, direction: str) -> None:
        metrics = self.plane.metrics
        if metrics is not None:
            metrics.udp_datagram(self.label, direction)

    def flow_ended(self, flow: Flow) -> None:
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
        metrics = self.plane.metrics
        if metrics is not None:
            metrics.udp_flow(self.label, -1)
        access = self.plane.access
        if access is not None:
            duration = self.loop.time() - flow.start
            access.log_l4(
                start_time=flow.start_wall,
                flags="",
                bytes_received=flow.rx_bytes,
                bytes_sent=flow.tx_bytes,
                duration_ms=int(duration * 1000.0),
                downstream=host_port(*flow.client),
                sni="",
                upstream_host=flow.upstream_host,
                upstream_cluster=flow.cluster,
                route=flow.route,
                details=flow.details,
            )

    def expire(self, now: float, idle_timeout: float) -> None:
        limit = now - idle_timeout
        for flow in [f for f in self.flows.values() if f.last_active <= limit]:
            flow.close("idle_timeout")

    def close(self, details: str) -> None:
        for flow in list(self.flows.values()):
            flow.close(details)
        for task in list(self.tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()


class UDPPlane:
    """Every UDP listener of the current snapshot, in this process."""

    def __init__(self, options: UDPOptions, metrics: ProxyMetrics | None = None) -> None:
        self.options = options
        self.metrics = metrics
        self.access: AccessLogger | None = (
            AccessLogger(options.access_log) if options.access_log else None
        )
        self.current: Snapshot = Snapshot(generation=0)
        self.listeners: dict[ListenKey, UDPListener] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    async def apply(self, snapshot: Snapshot) -> dict[ListenKey, str]:
        """Serve the snapshot's UDP listeners: bind new ports, close removed ones (their
        flows end).  Returns ``{(address, port): reason}`` for ports not bound."""
        self.current = snapshot
        loop = asyncio.get_running_loop()
        failed: dict[ListenKey, str] = {}
        wanted = snapshot.udp_ports
        removed = [k for k in self.listeners if k not in wanted]
        for key in removed:
            self.listeners.pop(key).close("listener_removed")
        if removed:
            await asyncio.sleep(0)  # the sockets close on the next loop iteration
        for key in sorted(set(wanted) - self.listeners.keys()):
            lp: ListenerPort = wanted[key]
            listener = UDPListener(self, key)
            try:
                await _bind(loop, listener, key)
            except OSError as exc:
                failed[key] = f"cannot bind UDP {host_port(*key)}: {exc.strerror or exc}"
                log.error("%s (listener %s)", failed[key], ", ".join(lp.listener_names))
                continue
            self.listeners[key] = listener
        if self.listeners and self._sweeper is None:
            self._sweeper = loop.call_later(self._interval(), self._sweep, loop)
        return failed

    def bound(self) -> set[ListenKey]:
        return set(self.listeners)

    def _interval(self) -> float:
        idle = self.options.idle_timeout
        return max(0.01, min(1.0, idle / 4)) if idle > 0 else 1.0

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = None
        try:
            idle = self.options.idle_timeout
            if idle > 0:
                now = loop.time()
                for listener in list(self.listeners.values()):
                    listener.expire(now, idle)
            if self.access is not None:
                self.access.flush_due()
        finally:
            if self.listeners:
                self._sweeper = loop.call_later(self._interval(), self._sweep, loop)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for listener in list(self.listeners.values()):
            listener.close("shutdown")
        tasks = [t for listener in self.listeners.values() for t in listener.tasks]
        self.listeners.clear()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.access is not None:
            self.access.flush()
