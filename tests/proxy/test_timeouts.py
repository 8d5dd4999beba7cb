"""Default request timeouts (Envoy's route timeout and stream idle timeout) and the
overload rule (idle keep-alive connections make room at --max-connections), in process
over real loopback sockets."""

from __future__ import annotations

import asyncio
import io
import json

from loop_kit import opened as _opened
from loop_kit import run
from prometheus_client import CollectorRegistry
from test_server import (
    Client,
    Proxy,
    ProxyOptions,
    Req,
    Table,
    backend,
    free_port,
    hit,
    raw_server,
    read_response,
    response,
    rule,
    snapshot,
    start_backend,
    start_proxy,
)

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.metrics import ProxyMetrics, render
from gatewayd.proxy.snapshot import SnapshotHolder


async def delayed(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answers after ``.../delay/<ms>`` milliseconds (at once without)."""
    _, delay, ms = req.target.rpartition("/delay/")
    if delay:
        await asyncio.sleep(int(ms) / 1000)
    w.write(response(200, f"{req.method} {req.target} {len(req.body)}".encode()))


async def delayed_proxy(**opts: float) -> int:
    """A proxy routing everything to a ``delayed`` backend: its port."""
    be = await start_backend(delayed)
    _, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))}, **opts)
    return port


async def timed_get(c: Client, path: str, extra: str = "") -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await c.get(path, extra=extra)
    return resp.status, loop.time() - t0


async def start_metered(bport: int, **opts: float) -> tuple[Proxy, int, CollectorRegistry]:
    """A proxy with metrics routing everything to the backend on ``bport``."""
    registry = CollectorRegistry()
    port = free_port()
    proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None, **opts), ProxyMetrics(registry))
    _opened.append(proxy.close)
    table = Table({"/": hit(rule(backend("b", bport)))})
    assert await proxy.apply(snapshot({port: table})) == {}
    return proxy, port, registry


def log_lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


# --------------------------------------------------------------------------- route timeout


def test_default_route_timeout_is_504_with_flag_ut() -> None:
    async def main() -> None:
        be = await start_backend(delayed)
        proxy, port, registry = await start_metered(
            be.port, route_timeout=0.3, stream_idle_timeout=0
        )
        buf = io.StringIO()
        proxy.access = AccessLogger("json", buf)
        c = await Client.open(port)
        status, elapsed = await timed_get(c, "/delay/3000")
        assert status == 504
        assert 0.25 <= elapsed < 1.5, elapsed
        # The connection stays usable and a fast request is untouched.
        assert (await c.get("/delay/10")).status == 200
        proxy.access.flush()
        assert [line["response_flags"] for line in log_lines(buf)] == ["UT", "-"]
        assert 'reason="upstream_timeout"' in render(registry)[0].decode()
        c.close()

    run(main())


def test_rule_timeouts_override_the_default() -> None:
    async def main() -> None:
        be = await start_backend(delayed)
        routes = {
            # timeouts.request longer than the default: the rule's own wins.
            "/long": hit(rule(backend("b", be.port), request_timeout=2.0)),
            # timeouts.request shorter than the default.
            "/short": hit(rule(backend("b", be.port), request_timeout=0.2)),
            # Only timeouts.backendRequest: the default never cuts a try shorter.
            "/try": hit(rule(backend("b", be.port), backend_request_timeout=2.0)),
            # timeouts.request "0s": no timeout at all, not the default.
            "/off": hit(rule(backend("b", be.port), request_timeout=0.0)),
        }
        _, port, _ = await start_proxy(routes, route_timeout=0.3)
        c = await Client.open(port)
        assert (await c.get("/long/delay/600")).status == 200
        assert (await c.get("/try/delay/600")).status == 200
        assert (await c.get("/off/delay/600")).status == 200
        status, elapsed = await timed_get(c, "/short/delay/3000")
        assert status == 504
        assert elapsed < 1.0, elapsed
        c.close()

    run(main())


def test_route_timeout_zero_disables_it() -> None:
    async def main() -> None:
        port = await delayed_proxy(route_timeout=0, stream_idle_timeout=0)
        c = await Client.open(port)
        assert (await c.get("/delay/700")).status == 200
        c.close()

    run(main())


def test_route_timeout_starts_when_the_request_is_complete() -> None:
    """A slow upload is not a slow response: Envoy's route timeout starts at the end of
    the request."""

    async def main() -> None:
        port = await delayed_proxy(route_timeout=0.3)
        c = await Client.open(port)
        await c.send(b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\n")
        for piece in (b"a", b"b", b"c", b"d"):
            await asyncio.sleep(0.15)  # 0.6 s of upload in all, twice the route timeout
            await c.send(piece)
        resp = await read_response(c.reader)
        assert (resp.status, resp.body) == (200, b"POST /up 4")
        c.close()

    run(main())


def test_upgrade_requests_are_exempt_from_the_route_timeout() -> None:
    """A WebSocket handshake skips the route timeout (the backend here answers it
    without switching protocols: relayed as a plain response)."""

    async def main() -> None:
        port = await delayed_proxy(route_timeout=0.2)
        plain = await Client.open(port)
        assert (await plain.get("/delay/600")).status == 504
        plain.close()
        upgrade = await Client.open(port)
        extra = "connection: upgrade\r\nupgrade: websocket\r\n"
        assert (await upgrade.get("/delay/600", extra=extra)).status == 200
        upgrade.close()

    run(main())


# --------------------------------------------------------------------------- stream idle


def test_stream_idle_408_when_the_request_body_stalls() -> None:
    async def main() -> None:
        be = await start_backend(delayed)
        _, port, registry = await start_metered(be.port, stream_idle_timeout=0.3)
        loop = asyncio.get_running_loop()
        c = await Client.open(port)
        await c.send(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc")
        t0 = loop.time()
        resp = await read_response(c.reader)
        elapsed = loop.time() - t0
        assert (resp.status, resp.body) == (408, b"stream timeout")
        assert resp.header("connection") == "close"
        assert 0.25 <= elapsed < 1.5, elapsed
        assert await c.closed()
        assert 'reason="stream_idle_timeout"' in render(registry)[0].decode()
        c.close()

    run(main())


def test_stream_idle_408_when_the_upstream_is_silent() -> None:
    async def main() -> None:
        port = await delayed_proxy(route_timeout=0, stream_idle_timeout=0.3)
        c = await Client.open(port)
        status, elapsed = await timed_get(c, "/delay/3000")
        assert status == 408
        assert elapsed < 1.5, elapsed
        c.close()

    run(main())


def test_stream_idle_resets_a_client_that_does_not_read_and_frees_its_buffers() -> None:
    size = 64 * 1024 * 1024

    async def main() -> None:
        upstream_closed = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
            piece = b"y" * 65536
            try:
                for _ in range(size // len(piece)):
                    writer.write(piece)
                    await writer.drain()
            except ConnectionError:
                upstream_closed.set()

        _, bport = await raw_server(serve)
        proxy, port, _ = await start_proxy(
            {"/": hit(rule(backend("b", bport)))}, route_timeout=0, stream_idle_timeout=0.3
        )
        buf = io.StringIO()
        proxy.access = AccessLogger("json", buf)
        c = await Client.open(port)
        await c.send(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        # Not reading: the proxy's buffers fill, everything stops, the timeout fires.
        await upstream_closed.wait()
        received = 0
        try:
            while chunk := await c.reader.read(1 << 20):
                received += len(chunk)
        except ConnectionError:
            pass  # reset: the client must see the response is cut
        assert 0 < received < size
        for _ in range(200):  # bounded: 2 s
            if proxy.n_conns == 0:
                break
            await asyncio.sleep(0.01)
        assert proxy.n_conns == 0
        assert proxy.buffered_bytes() == 0
        proxy.access.flush()
        (line,) = log_lines(buf)
        assert (line["response_code"], line["response_flags"]) == (200, "SI")
        c.close()

    run(main())


def test_stream_idle_spares_a_slow_transfer_that_keeps_moving() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n")
            for _ in range(8):
                await asyncio.sleep(0.1)  # 0.8 s in all, the idle timeout is 0.3 s
                writer.write(b"z")
            await writer.drain()

        _, bport = await raw_server(serve)
        _, port, _ = await start_proxy(
            {"/": hit(rule(backend("b", bport)))}, route_timeout=0, stream_idle_timeout=0.3
        )
        c = await Client.open(port)
        resp = await c.get("/")
        assert (resp.status, resp.body) == (200, b"z" * 8)
        c.close()

    run(main())


def test_sweep_interval_follows_the_shortest_timeout() -> None:
    holder = SnapshotHolder()
    assert Proxy(holder, ProxyOptions(access_log=None))._sweep_interval() == 1.0
    fast = ProxyOptions(access_log=None, route_timeout=0.2, stream_idle_timeout=0)
    assert Proxy(holder, fast)._sweep_interval() == 0.05
    idle = ProxyOptions(access_log=None, route_timeout=0, stream_idle_timeout=0.4)
    assert Proxy(holder, idle)._sweep_interval() == 0.1


# --------------------------------------------------------------------------- overload


def test_at_the_limit_the_longest_idle_connections_go_first() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy(
            {"/": hit(rule(backend("b", be.port)))}, max_connections=3
        )
        idle = []
        for _ in range(3):
            c = await Client.open(port)
            assert (await c.get("/")).status == 200
            idle.append(c)
            # Idle since a later millisecond (the loop clock's resolution) than the
            # one before: the order of going idle is the order of closing.
            await asyncio.sleep(0.005)
        for n in range(2):
            new = await Client.open(port)
            assert (await new.get("/")).status == 200  # served at once
            assert await idle[n].reader.read() == b""  # oldest first, closed cleanly
            idle.append(new)
        assert proxy.n_conns == 3
        # The survivors still work.
        for c in idle[2:]:
            assert (await c.get("/")).status == 200
        for c in idle:
            c.close()

    run(main())
