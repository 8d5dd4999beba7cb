"""UDP listeners in-process (proxy/udp.py): the plane, a UDP backend and clients share
one uvloop event loop over real loopback sockets.

What the end-to-end tests (tests/e2e/test_e2e_udproute.py) cannot pin down quickly:
every datagram accounted for (forwarded or dropped with a reason), oversized replies,
invalid backends, no route, and the flow table after a listener is removed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from loop_kit import LOCAL, opened, run
from prometheus_client import CollectorRegistry

from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.udp import MAX_PENDING, UDPOptions, UDPPlane
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.l4 import L4Table
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, RouteHit


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])


class Backend(asyncio.DatagramProtocol):
    """Records datagrams in arrival order; answers ``reply(data)`` when set."""

    def __init__(self, reply_size: int = 0) -> None:
        self.got: list[bytes] = []
        self.reply_size = reply_size
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.append(data)
        assert self.transport is not None
        self.transport.sendto(b"r" * self.reply_size if self.reply_size else data, addr)


async def backend(reply_size: int = 0) -> tuple[Backend, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Backend(reply_size), local_addr=(LOCAL, 0)
    )
    opened.append(transport.close)
    return proto, int(transport.get_extra_info("sockname")[1])


def snapshot(
    port: int, backends: list[CompiledBackend] | None, weights: tuple[int, ...] = ()
) -> Snapshot:
    hit = None
    if backends is not None:
        cumulative = tuple(weights) or tuple(range(1, len(backends) + 1))
        rule = CompiledRule(
            route_kind="UDPRoute",
            route_namespace="default",
            route_name="u",
            rule_index=0,
            backends=tuple(backends),
            cumulative_weights=cumulative,
            total_weight=cumulative[-1] if cumulative else 0,
        )
        hit = RouteHit(rule=rule, listener_name="udp")
    lp = ListenerPort(
        address=LOCAL,
        port=port,
        protocol="UDP",
        gateway_namespace="default",
        gateway_name="gw",
        listener_names=("udp",),
        table=L4Table(listener_name="udp", hit=hit),
    )
    return Snapshot(generation=1, udp_ports={(LOCAL, port): lp})


def good(port: int) -> CompiledBackend:
    return CompiledBackend(
        name="default/b:53", endpoints=(EndpointAddress(address=LOCAL, port=port),)
    )


async def plane(snap: Snapshot, **options: object) -> tuple[UDPPlane, ProxyMetrics]:
    metrics = ProxyMetrics(registry=CollectorRegistry())
    p = UDPPlane(UDPOptions(access_log=None, **options), metrics)  # type: ignore[arg-type]
    assert await p.apply(snap) == {}
    opened.append(p.close)
    return p, metrics


def client(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    sock.connect((LOCAL, port))
    sock.setblocking(False)
    opened.append(sock.close)
    return sock


async def settle(check: Callable[[], bool]) -> None:
    """A bounded number of loop iterations until ``check()`` (sockets must be read)."""
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached within 3 s")


def test_every_datagram_is_forwarded_in_order_or_counted_as_dropped() -> None:
    async def main() -> None:
        b, bport = await backend()
        port = free_udp_port()
        _, metrics = await plane(snapshot(port, [good(bport)]))
        sock = client(port)
        sent = [f"{i:03d}".encode() for i in range(100)]
        for data in sent:  # all before the loop runs: the flow's socket is not open yet
            sock.send(data)
        label = f"{LOCAL}:{port}"

        def accounted() -> bool:
            rx = metrics._udp_dgrams.get((label, "rx"), 0)
            dropped = metrics._udp_drops.get((label, "pending_full"), 0)
            return rx + dropped == len(sent) and len(b.got) == rx

        await settle(accounted)
        # What was forwarded is a prefix-ordered subsequence: never reordered.
        assert b.got == sorted(b.got)
        assert len(b.got) >= MAX_PENDING or len(b.got) == len(sent)

    run(main())


def test_oversized_replies_are_dropped_not_truncated() -> None:
    async def main() -> None:
        b, bport = await backend(reply_size=2000)
        port = free_udp_port()
        _, metrics = await plane(snapshot(port, [good(bport)]), max_datagram=1500)
        sock = client(port)
        sock.send(b"q")
        label = f"{LOCAL}:{port}"
        await settle(lambda: metrics._udp_drops.get((label, "too_big"), 0) == 1)
        assert b.got == [b"q"]
        await asyncio.sleep(0.05)
        try:
            sock.recv(4096)
            raise AssertionError("an oversized reply reached the client")
        except BlockingIOError:
            pass

    run(main())


def test_invalid_backend_and_no_route_drop_and_open_no_flow() -> None:
    async def main() -> None:
        port = free_udp_port()
        invalid = CompiledBackend(name="default/missing:53", invalid_status=500)
        p, metrics = await plane(snapshot(port, [invalid]))
        client(port).send(b"x")
        label = f"{LOCAL}:{port}"
        await settle(lambda: metrics._udp_drops.get((label, "invalid_backend"), 0) == 1)
        assert p.listeners[(LOCAL, port)].flows == {}
        port2 = free_udp_port()
        p2, metrics2 = await plane(snapshot(port2, None))
        client(port2).send(b"x")
        label2 = f"{LOCAL}:{port2}"
        await settle(lambda: metrics2._udp_drops.get((label2, "no_route"), 0) == 1)
        assert p2.listeners[(LOCAL, port2)].flows == {}

    run(main())


def test_removed_listener_ends_its_flows_and_frees_the_port() -> None:
    async def main() -> None:
        b, bport = await backend()
        port = free_udp_port()
        p, metrics = await plane(snapshot(port, [good(bport)]))
        sock = client(port)
        sock.send(b"a")
        label = f"{LOCAL}:{port}"
        await settle(lambda: len(b.got) == 1)
        assert metrics._udp_flows[label] == 1
        assert await p.apply(Snapshot(generation=2)) == {}
        assert metrics._udp_flows[label] == 0
        assert p.bound() == set()
        # The port is free again.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind((LOCAL, port))

    run(main())


def test_a_busy_port_is_reported_not_raised() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind((LOCAL, 0))
            port = int(taken.getsockname()[1])
            p = UDPPlane(UDPOptions(access_log=None))
            opened.append(p.close)
            failed = await p.apply(snapshot(port, None))
            assert list(failed) == [(LOCAL, port)]
            assert "cannot bind UDP" in failed[(LOCAL, port)]

    run(main())
