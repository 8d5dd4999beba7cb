"""The transparent listener's L4 pass-through honours --max-connections and the TCP idle
timeout, on loopback (no TPROXY needed: the accepted socket's own address stands in for
the original destination)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

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


def test_pass_through_beyond_max_connections_is_refused() -> None:
    async def go() -> None:
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None, max_connections=0))
        listener = TransparentListener(proxy, own_port=1, mark=None)
        server, port = await serve(listener)
        try:
            reader, writer = await asyncio.open_connection(LOCAL, port)
            assert await closed(reader)
            writer.close()
            assert listener.counts[REFUSED] == 1
            assert not listener.splices and proxy.n_conns == 0
        finally:
            server.close()
            await listener.close()
            await proxy.close()

    run(go)


def test_pass_through_splice_counts_and_closes_when_idle() -> None:
    async def go() -> None:
        # The "original destination": an echo server the splice connects to.
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
            w.close()

        backend = await asyncio.start_server(echo, LOCAL, 0)
        backend_port = backend.sockets[0].getsockname()[1]
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None, tcp_idle_timeout=0.4))
        listener = TransparentListener(proxy, own_port=1, mark=None)
        assert listener.splices in proxy.splice_sets
        # Splice every accepted connection to the backend, whatever address it was for.
        original = listener._splice

        def to_backend(transport: Any, key: tuple[str, int]) -> None:
            original(transport, (LOCAL, backend_port))

        listener._splice = to_backend  # type: ignore[method-assign]
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
        finally:
            server.close()
            backend.close()
            await listener.close()
            await proxy.close()

    run(go)
