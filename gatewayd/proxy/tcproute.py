"""TCP listeners (``protocol: TCP``) with a TCPRoute: every connection spliced at L4.

Per accepted connection (``TCPRouteConnection``), all in ``connection_made``:

1. **Route** -- the port's ``L4Table`` of the *current* snapshot (read once, here) gives
   the listener's one TCPRoute; none attached: the connection is closed (flag NR).
2. **Backend** -- a backendRef by weight, per connection: "Connection rejections must
   respect weight; if an invalid backend is requested to have 80% of connections, then
   80% of connections must be rejected instead." (TCPRouteRule.BackendRefs)  An invalid
   reference keeps its share and closes the connection (NC); a backend without a ready
   endpoint closes it too (UH).  Endpoints round robin.
3. **Splice** -- ``splice.Splice``: client bytes wait (reading paused) until the upstream
   is connected, then both directions flow unchanged, with water-mark backpressure,
   half-close passed through and the ``--tcp-idle-timeout`` sweep.  A failed connect
   closes the client (UF).

One access-log line per connection when it ends (``AccessLogger.log_l4``, Envoy's
tcp_proxy shape), and ``gatewayd_tcp_route_cx_total{listener,result}`` per outcome.
A reload changes the route of *new* connections; open splices keep going.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, cast

from gatewayd.proxy.accesslog import sockaddr_text
from gatewayd.proxy.proxyproto import upstream_header
from gatewayd.proxy.splice import Splice
from gatewayd.proxy.tlsroute import (
    FLAGS,
    R_CONNECT_FAIL,
    R_INVALID_BACKEND,
    R_NO_ENDPOINT,
    R_NO_ROUTE,
    R_OVERLOAD,
)
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.l4 import L4Table

if TYPE_CHECKING:
    from gatewayd.proxy.server import Proxy
    from gatewayd.routing.snapshot.rules import CompiledBackend

log = logging.getLogger("gatewayd.proxy.tcproute")

ListenKey = tuple[str, int]

TCP_PROTOCOL: Final = "TCP"

# What became of a connection (the ``result`` label of gatewayd_tcp_route_cx_total) and
# Envoy's %RESPONSE_FLAGS% of one closed before its splice: TLS listeners' results and
# flags (tlsroute.py), which name the same outcomes, plus ``spliced``.
R_SPLICED: Final = "spliced"


class TCPRouteListener:
    """Everything TCP listeners own in one process: splices and connect tasks."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.splices: set[Splice] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection(self, key: ListenKey, label: str) -> TCPRouteConnection:
        return TCPRouteConnection(self, key, label)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def shutdown_port(self, key: ListenKey) -> None:
        """The port is no longer served: close its splices (bytes already written are
        still delivered)."""
        for splice in list(self.splices):
            if splice.tag == key:
                splice.close()

    def busy(self) -> bool:
        return bool(self.splices)

    async def close(self) -> None:
        for splice in list(self.splices):
            splice.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def buffered_bytes(self) -> int:
        return sum(s.buffered_bytes() for s in self.splices)


class TCPRouteConnection(asyncio.Protocol):
    """One client connection on a TCP listener port, until it is handed to its splice."""

    __slots__ = (
        "backend",
        "client_address",
        "cluster",
        "counted",
        "key",
        "label",
        "owner",
        "peer",
        "route",
        "splice",
        "start",
        "upstream_counted",
        "upstream_host",
    )

    def __init__(self, owner: TCPRouteListener, key: ListenKey, label: str) -> None:
        self.owner = owner
        self.key = key
        self.label = label
        self.backend: CompiledBackend | None = None
        self.counted = False
        self.upstream_counted = False
        self.start = 0.0
        self.peer = ""
        # The client a trusted PROXY protocol header named (proxy/proxyproto.py).
        self.client_address: tuple[str, int] | None = None
        self.route = ""
        self.cluster = ""
        self.upstream_host = ""
        self.splice: Splice | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        t = cast(asyncio.Transport, transport)
        proxy = self.owner.proxy
        self.start = asyncio.get_running_loop().time()
        if proxy.access is not None or self.client_address is not None:
            self.peer = sockaddr_text(self.client_address or t.get_extra_info("peername"))
        if proxy.n_conns >= proxy.options.max_connections and not proxy.make_room():
            self._refuse(t, R_OVERLOAD, "at --max-connections")
            return
        # The snapshot is read once per connection, here.
        lp = proxy.holder.current.ports.get(self.key)
        table = lp.table if lp is not None else None
        hit = table.hit if isinstance(table, L4Table) else None
        if hit is None:
            self._refuse(t, R_NO_ROUTE, "no TCPRoute attached to the listener")
            return
        rule = hit.rule
        self.route = rule.route_id
        backend = rule.pick_backend(random.random())
        if backend is not None:
            self.cluster = backend.name
        if backend is None or backend.invalid_status is not None:
            self._refuse(t, R_INVALID_BACKEND, f"{rule.route_id}: no valid backendRef")
            return
        endpoint = backend.next_endpoint()
        if endpoint is None:
            self._refuse(t, R_NO_ENDPOINT, f"{backend.name}: no ready endpoint")
            return
        self.backend = backend
        self.upstream_host = host_port(endpoint.address, endpoint.port)
        proxy.n_conns += 1
        self.counted = True
        metrics = proxy.metrics
        if metrics is not None:
            metrics.downstream_cx(self.label, 1)
            metrics.tcp_route_cx(self.label, R_SPLICED)
        splice = self.splice = Splice(self.owner.splices, t, on_done=self._finish, tag=self.key)
        first = b""
        if backend.proxy_protocol:
            # The Service asked for a PROXY header: it goes before the client's bytes.
            first = upstream_header(
                backend.proxy_protocol,
                self.client_address or t.get_extra_info("peername"),
                t.get_extra_info("sockname"),
            )
        splice.hand_over(t, first)
        self.owner.spawn(
            self._connect(splice, endpoint.address, endpoint.port), f"tcp splice {self.label}"
        )

    async def _connect(self, splice: Splice, address: str, port: int) -> None:
        proxy = self.owner.proxy
        ok = await splice.connect(
            address, port, connect_timeout=proxy.options.upstream_connect_timeout
        )
        metrics = proxy.metrics
        backend = self.backend
        if metrics is None or backend is None:
            return
        if ok:
            if self.counted:
                metrics.upstream_cx(backend.name, 1)
                self.upstream_counted = True
        else:
            metrics.upstream_connect_fail(backend.name)
            metrics.tcp_route_cx(self.label, R_CONNECT_FAIL)

    def _refuse(self, transport: asyncio.Transport, result: str, why: str) -> None:
        """Close without contacting any backend (Envoy's tcp_proxy closes too)."""
        log.debug("%s: %s: closing", self.label, why)
        if result == R_OVERLOAD:
            transport.abort()
        else:
            transport.close()
        metrics = self.owner.proxy.metrics
        if metrics is not None:
            metrics.tcp_route_cx(self.label, result)
        self._log(FLAGS.get(result, ""), result, 0, 0)

    def _finish(self) -> None:
        """Once per spliced connection, when both sides are gone."""
        if not self.counted:
            return
        self.counted = False
        proxy = self.owner.proxy
        proxy.n_conns -= 1
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, -1)
            if self.upstream_counted and self.backend is not None:
                self.upstream_counted = False
                proxy.metrics.upstream_cx(self.backend.name, -1)
        splice = self.splice
        if splice is not None:
            self._log(splice.flags, splice.details, splice.received, splice.sent)
        proxy.connection_gone()

    def _log(self, flags: str, details: str, rx: int, tx: int) -> None:
        access = self.owner.proxy.access
        if access is None:
            return
        duration = asyncio.get_running_loop().time() - self.start
        access.log_l4(
            start_time=time.time() - duration,
            flags=flags,
            bytes_received=rx,
            bytes_sent=tx,
            duration_ms=int(duration * 1000.0),
            downstream=self.peer,
            sni="",
            upstream_host=self.upstream_host,
            upstream_cluster=self.cluster,
            route=self.route,
            details=details,
        )
