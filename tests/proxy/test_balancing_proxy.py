"""Balancing and outlier detection inside the proxy, over real loopback sockets: the
request path keeps the in-flight counts exact whatever happens to a request, and
feeds each outcome to outlier detection."""

from __future__ import annotations

import asyncio
import io

from loop_kit import LOCAL, free_port, run
from loop_kit import opened as _opened
from prometheus_client import CollectorRegistry

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.metrics import ProxyMetrics, render
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, RouteHit


class Routes:
    """Path prefix -> hit."""

    def __init__(self, routes: dict[str, RouteHit]) -> None:
        self.routes = routes

    def lookup(
        self, host: str, method: str, path: str, query: str, headers: object
    ) -> RouteHit | None:
        for prefix, hit in self.routes.items():
            if path.startswith(prefix):
                return hit
        return None

    def to_json(self) -> object:
        return sorted(self.routes)


def hit(*ports: int, name: str = "be", **kw: object) -> RouteHit:
    be = CompiledBackend(
        name=name, endpoints=tuple(EndpointAddress(address=LOCAL, port=p) for p in ports)
    )
    r = CompiledRule(
        route_kind="HTTPRoute",
        route_namespace="default",
        route_name="r",
        rule_index=0,
        backends=(be,),
        cumulative_weights=(1,),
        total_weight=1,
        **kw,  # type: ignore[arg-type]
    )
    return RouteHit(rule=r, prefix=None, listener_name="http")


async def backend(answer: bytes | None, *, delay: float = 0.0) -> int:
    """A backend answering every request with ``answer`` (None: reset the connection)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _opened.append(writer.transport.abort)
        try:
            for _ in range(1000):
                if not await reader.readuntil(b"\r\n\r\n"):
                    return
                if delay:
                    await asyncio.sleep(delay)
                if answer is None:
                    writer.transport.abort()
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_server(serve, LOCAL, 0)
    _opened.append(server.close)
    return int(server.sockets[0].getsockname()[1])


def answer(status: int) -> bytes:
    return b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n\r\nok" % status


async def get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection(LOCAL, port)
    _opened.append(writer.transport.abort)
    writer.write(f"GET {path} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
    line = await reader.readline()
    writer.transport.abort()
    return int(line.split()[1])


def test_in_flight_counts_return_to_zero_and_failures_eject() -> None:
    async def main() -> None:
        ok = await backend(answer(200))
        busy = await backend(answer(503))
        reset = await backend(None)
        slow = await backend(answer(200), delay=5.0)
        dead = free_port()
        routes = Routes(
            {
                "/ok": hit(ok),
                "/busy": hit(busy, ok),
                "/reset": hit(reset, ok),
                "/dead": hit(dead, ok),
                "/slow": hit(slow, backend_request_timeout=0.05),
                "/gone": hit(slow),
            }
        )
        port = free_port()
        registry = CollectorRegistry()
        metrics = ProxyMetrics(registry)
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None), metrics)
        log = io.StringIO()
        proxy.access = AccessLogger("text", log)
        _opened.append(proxy.close)
        lp = ListenerPort(
            address=LOCAL,
            port=port,
            protocol="HTTP",
            gateway_namespace="default",
            gateway_name="gw",
            listener_names=("http",),
            table=routes,  # type: ignore[arg-type]
        )
        endpoints = frozenset((LOCAL, p) for p in (ok, busy, reset, slow, dead))
        assert (
            await proxy.apply(
                Snapshot(generation=1, ports={(LOCAL, port): lp}, endpoints=endpoints)
            )
            == {}
        )
        health = proxy.health
        statuses: dict[str, list[int]] = {}
        for path in ("/ok", "/busy", "/reset", "/dead"):
            statuses[path] = [await get(port, path) for _ in range(30)]
        assert statuses["/ok"] == [200] * 30
        assert [await get(port, "/slow") for _ in range(3)] == [504] * 3
        # A client that goes away while its request is in flight.
        _, writer = await asyncio.open_connection(LOCAL, port)
        writer.write(b"GET /gone HTTP/1.1\r\nhost: a\r\n\r\n")
        await writer.drain()
        for _ in range(200):  # bounded: until the request reached the endpoint
            st = health.states.get((LOCAL, slow))
            if st is not None and st.active:
                break
            await asyncio.sleep(0.01)
        writer.transport.abort()
        for _ in range(200):
            if not health.states[(LOCAL, slow)].active:
                break
            await asyncio.sleep(0.01)
        assert {k: s.active for k, s in health.states.items()} == dict.fromkeys(health.states, 0)
        # Each failing endpoint was ejected after five failures; the healthy one it
        # shares its backend with took every request after that.
        for path, bad in (("/busy", busy), ("/reset", reset), ("/dead", dead)):
            seq = statuses[path]
            assert health.states[(LOCAL, bad)].ejected_until > 0, path
            failures = [i for i, s in enumerate(seq) if s != 200]
            assert len(failures) == 5, (path, seq)
            assert seq[failures[-1] + 1 :] == [200] * (29 - failures[-1]), (path, seq)
        assert not health.states[(LOCAL, ok)].ejected_until
        assert not health.states[(LOCAL, slow)].ejected_until  # timeouts do not count
        text = render(registry)[0].decode()
        assert 'gatewayd_outlier_ejections_total{backend="be"} 3.0' in text
        assert 'gatewayd_outlier_ejected{backend="be"} 3.0' in text
        flags = [line.split('" ', 1)[1].split()[1] for line in log.getvalue().splitlines()]
        # The backend's own 503 has no flag of its own: "OE" alone.
        assert sorted(f for f in flags if "OE" in f) == ["OE", "UC,OE", "UF,OE"], flags

    run(main())
