"""The transparent listener's L4 pass-through honours --max-connections and the TCP idle
timeout and writes one access-log line per connection, on loopback (no TPROXY needed:
the accepted socket's own address stands in for the original destination)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.proxy.transparent import REFUSED, TransparentListener

LOCAL = "127.0.0.1"


def run(go: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            await go()

    uvloop.run(bounded())


async def closed(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(5):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def serve(listener: TransparentListener) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.get_running_loop().create_server(listener.factory, LOCAL, 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
    w.close()


def splice_to(listener: TransparentListener, backend_port: int) -> None:
    """Splice every accepted connection to the backend, whatever address it was for."""
    original = listener._splice

    def to_backend(transport: Any, key: tuple[str, int]) -> None:
        original(transport, (LOCAL, backend_port))

    listener._splice = to_backend  # type: ignore[method-assign]


async def logged(out: io.StringIO) -> list[str]:
    for _ in range(250):
        if out.getvalue():
            break
        await asyncio.sleep(0.02)
    return out.getvalue().splitlines()


def test_pass_through_beyond_max_connections_is_refused() -> None:
    async def go() -> None:
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None, max_connections=0))
        out = io.StringIO()
        proxy.access = AccessLogger("json", out)
        listener = TransparentListener(proxy, own_port=1, mark=None)
        server, port = await serve(listener)
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            assert await closed(reader)
            writer.close()
            assert listener.counts[REFUSED] == 1
            assert not listener.splices and proxy.n_conns == 0
            [line] = [json.loads(x) for x in await logged(out)]
            assert line["response_flags"] == "UO"
            assert line["connection_termination_details"] == "overload"
            assert line["upstream_host"] == f"{LOCAL}:{port}"  # the original destination
        finally:
            server.close()
            await listener.close()
            await proxy.close()

    run(go)


def test_pass_through_splice_counts_and_closes_when_idle() -> None:
    async def go() -> None:
        # The "original destination": an echo server the splice connects to.
        backend = await asyncio.start_server(echo, LOCAL, 0)
        backend_port = backend.sockets[0].getsockname()[1]
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None, tcp_idle_timeout=0.4))
        out = io.StringIO()
        proxy.access = AccessLogger("text", out)
        listener = TransparentListener(proxy, own_port=1, mark=None)
        assert listener.splices in proxy.splice_sets
        splice_to(listener, backend_port)
        server, port = await serve(listener)
        proxy._start_sweeper(asyncio.get_running_loop())
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            assert proxy.n_conns == 1 and len(listener.splices) == 1
            assert await closed(reader)  # idle 0.4 s, swept within a second
            writer.close()
            for _ in range(50):
                if proxy.n_conns == 0:
                    break
                await asyncio.sleep(0.02)
            assert proxy.n_conns == 0 and not listener.splices
            [line] = await logged(out)
            assert ' "- - -" 0 - 5 5 ' in line and line.endswith('"idle_timeout"')
        finally:
            server.close()
            backend.close()
            await listener.close()
            await proxy.close()

    run(go)


def test_pass_through_splice_logs_one_line_when_it_ends() -> None:
    async def go() -> None:
        backend = await asyncio.start_server(echo, LOCAL, 0)
        backend_port = backend.sockets[0].getsockname()[1]
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None))
        out = io.StringIO()
        proxy.access = AccessLogger("text", out)
        listener = TransparentListener(proxy, own_port=1, mark=None)
        splice_to(listener, backend_port)
        server, port = await serve(listener)
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            client = writer.get_extra_info("sockname")
            writer.write(b"a" * 70000)
            assert await reader.readexactly(70000) == b"a" * 70000
            writer.write(b"bye")
            writer.write_eof()  # half-close: the echo answers, then closes
            assert await reader.read() == b"bye"
            writer.close()
            [line] = await logged(out)
            stamp, tail = line.split('] "- - -" 0 ', 1)
            assert stamp.startswith("[") and stamp.endswith("Z")
            flags, rx, tx, duration, *rest = tail.split(" ")
            assert (flags, rx, tx) == ("-", "70003", "70003")
            assert int(duration) < 5000
            # No SNI, cluster or route: the upstream is the original destination.
            assert rest[5:] == [
                f'"{LOCAL}:{backend_port}"',
                f"{LOCAL}:{client[1]}",
                '"-"',
                '"-"',
                '"-"',
                '"-"',
            ]
        finally:
            server.close()
            backend.close()
            await listener.close()
            await proxy.close()

    run(go)
