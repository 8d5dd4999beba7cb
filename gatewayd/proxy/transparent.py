"""The transparent (TPROXY) listener: route each connection by its original destination.

nftables diverts connections for Gateway addresses and for Service ClusterIP:ports that
have routes to one local port; the accepted socket's local address is where the client
was going.  Per connection, once, at accept time:

1. ``(address, port)`` is a Gateway listener port of the snapshot: served by an
   ``HttpConnection`` exactly like one accepted on the Gateway's own socket (other
   protocols are spliced to that socket: TLS stays with the Gateway's listener).
2. ``(address, port)`` is a Service port with GAMMA routes and the client (by source IP,
   through Pod objects) has routes there (its namespace's consumer routes, else the
   producer routes): an ``HttpConnection`` serving those routes.
3. anything else: spliced at L4, unchanged, to the original destination: "When no
   xRoute resources are defined, all traffic should implicitly work" (GEP-1426), and
   the mesh must never break traffic it has nothing to say about.

Each request still reads the current snapshot once (``HttpConnection.port_for``), so a
reload changes the routes of the next request, never of one in flight.  The connection
counts the client's own address as its peer, so X-Forwarded-For carries the address the
transparent socket saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

from gatewayd.proxy.accesslog import sockaddr_text
from gatewayd.proxy.http.h1_server import HttpConnection
from gatewayd.proxy.splice import Splice
from gatewayd.routing.snapshot.addresses import canonical_ip, host_port

if TYPE_CHECKING:
    from gatewayd.proxy.server import Proxy
    from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot

log = logging.getLogger("gatewayd.proxy.transparent")

HTTP_PROTOCOLS: Final = frozenset({"HTTP"})

# What happened to accepted connections (``TransparentListener.counts`` keys).
GATEWAY: Final = "gateway"
MESH: Final = "mesh"
PASSTHROUGH: Final = "passthrough"
REFUSED: Final = "refused"


def _gateway_port(key: tuple[str, int]) -> Callable[[Snapshot], ListenerPort | None]:
    def port_for(snapshot: Snapshot) -> ListenerPort | None:
        return snapshot.ports.get(key)

    return port_for


def _mesh_port(key: tuple[str, int], source: str) -> Callable[[Snapshot], ListenerPort | None]:
    address, port = key

    def port_for(snapshot: Snapshot) -> ListenerPort | None:
        mesh = snapshot.mesh
        return mesh.lookup(address, port, source) if mesh is not None else None

    return port_for


class TransparentListener:
    """Owns what the transparent sockets accept: HTTP hand-overs and L4 splices."""

    def __init__(self, proxy: Proxy, *, own_port: int, mark: int | None) -> None:
        self.proxy = proxy
        self.own_port = own_port
        self.mark = mark
        self.splices: set[Splice] = set()
        proxy.splice_sets.append(self.splices)  # the proxy's sweep closes idle ones
        self.tasks: set[asyncio.Task[None]] = set()
        self.counts: dict[str, int] = {GATEWAY: 0, MESH: 0, PASSTHROUGH: 0, REFUSED: 0}

    def factory(self) -> _Acceptor:
        return _Acceptor(self)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, transport: asyncio.Transport) -> None:
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        if not sockname or not peername:
            transport.abort()
            return
        dst = canonical_ip(str(sockname[0])) or str(sockname[0])
        port = int(sockname[1])
        src = canonical_ip(str(peername[0])) or str(peername[0])
        if port == self.own_port:
            # Someone connected to the transparent port itself: forwarding "unchanged to
            # the original destination" would be a connection to ourselves, forever.
            self.counts[REFUSED] += 1
            transport.abort()
            return
        key = (dst, port)
        snapshot = self.proxy.holder.current
        lp = snapshot.ports.get(key)
        if lp is not None:
            if lp.protocol in HTTP_PROTOCOLS:
                self.counts[GATEWAY] += 1
                self._serve_http(transport, key, _gateway_port(key), host_port(dst, port))
            else:
                # HTTPS/TLS listeners: the Gateway's own socket terminates or passes TLS.
                self.counts[GATEWAY] += 1
                self._splice(transport, key)
            return
        mesh = snapshot.mesh
        if mesh is not None and mesh.lookup(dst, port, src) is not None:
            self.counts[MESH] += 1
            self._serve_http(transport, key, _mesh_port(key, src), f"mesh:{host_port(dst, port)}")
            return
        self.counts[PASSTHROUGH] += 1
        self._splice(transport, key)

    def _serve_http(
        self,
        transport: asyncio.Transport,
        key: tuple[str, int],
        port_for: Callable[[Snapshot], ListenerPort | None],
        label: str,
    ) -> None:
        conn = HttpConnection(self.proxy, key, label)
        conn.port_for = port_for
        # Nothing has been read yet (we are inside connection_made): the HTTP protocol
        # takes the transport over from here as if it had accepted it itself.
        transport.set_protocol(conn)
        conn.connection_made(transport)

    def _splice(self, transport: asyncio.Transport, key: tuple[str, int]) -> None:
        proxy = self.proxy
        access = proxy.access
        loop = asyncio.get_running_loop()
        start = loop.time()
        peer = sockaddr_text(transport.get_extra_info("peername")) if access is not None else ""
        # A splice counts against --max-connections like any downstream connection.
        if proxy.n_conns >= proxy.options.max_connections and not proxy.make_room():
            self.counts[REFUSED] += 1
            transport.abort()
            if access is not None:
                access.log_l4(
                    start_time=time.time(),
                    flags="UO",
                    bytes_received=0,
                    bytes_sent=0,
                    duration_ms=0,
                    downstream=peer,
                    sni="",
                    upstream_host=host_port(*key),
                    upstream_cluster="",
                    route="",
                    details="overload",
                )
            return
        proxy.n_conns += 1

        def done() -> None:
            proxy.n_conns -= 1
            if access is not None:
                # One line per connection when it ends, as Envoy's tcp_proxy: no route,
                # no SNI, no cluster; the upstream is the original destination.
                duration = loop.time() - start
                access.log_l4(
                    start_time=time.time() - duration,
                    flags=splice.flags,
                    bytes_received=splice.received,
                    bytes_sent=splice.sent,
                    duration_ms=int(duration * 1000.0),
                    downstream=peer,
                    sni="",
                    upstream_host=splice.upstream_host or host_port(*key),
                    upstream_cluster="",
                    route="",
                    details=splice.details,
                )

        splice = Splice(self.splices, transport, on_done=done)
        splice.hand_over(transport)
        address, port = key
        task = asyncio.get_running_loop().create_task(
            self._connect(splice, address, port), name=f"passthrough {host_port(address, port)}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, splice: Splice, address: str, port: int) -> None:
        await splice.connect(address, port, mark=self.mark)

    async def close(self) -> None:
        for splice in list(self.splices):
            splice.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def to_json(self) -> dict[str, object]:
        return {"connections": dict(self.counts), "splices": len(self.splices)}


class _Acceptor(asyncio.Protocol):
    """The protocol a transparent socket's accept creates; it hands the transport to the
    protocol that will really serve it, at once."""

    __slots__ = ("listener",)

    def __init__(self, listener: TransparentListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        try:
            self.listener.dispatch(cast(asyncio.Transport, transport))
        except Exception:
            log.exception("transparent connection dispatch failed")
            transport.abort()  # type: ignore[attr-defined]
