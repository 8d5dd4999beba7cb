"""Over real loopback sockets: trailer fields end to end over chunked HTTP/1.1 (request
and response), and mirrors sent through the upstream pool (keep-alive reuse)."""

from __future__ import annotations

import asyncio

from loop_kit import run
from test_server import (
    Client,
    backend,
    hit,
    raw_server,
    read_response,
    rule,
    start_backend,
    start_proxy,
)

from gatewayd.routing.snapshot.rules import Mirror


async def _read_until_end_of_chunked(reader: asyncio.StreamReader) -> bytes:
    """Head and chunked body with its trailer section, as raw bytes."""
    data = await reader.readuntil(b"\r\n\r\n")
    while True:
        line = await reader.readuntil(b"\r\n")
        data += line
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        data += await reader.readexactly(size + 2)
    while True:  # trailer fields, then the empty line
        line = await reader.readuntil(b"\r\n")
        data += line
        if line == b"\r\n":
            return data


def test_request_trailers_reach_the_backend() -> None:
    async def main() -> None:
        seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.set_result(await _read_until_end_of_chunked(reader))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

        _, be_port = await raw_server(serve)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("be", be_port)))})
        c = await Client.open(port)
        await c.send(
            b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n"
        )
        got = await seen
        head, _, body = got.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head.lower()
        assert body == b"5\r\nhello\r\n0\r\nx-checksum: 42\r\n\r\n"
        status = await c.reader.readuntil(b"\r\n")
        assert status.startswith(b"HTTP/1.1 200")
        c.close()
        await proxy.close()

    run(main())


def test_response_trailers_reach_the_client() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n"
                b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n"
            )
            await writer.drain()

        _, be_port = await raw_server(serve)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("be", be_port)))})
        c = await Client.open(port)
        await c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        got = await _read_until_end_of_chunked(c.reader)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"\r\ntrailer:" not in head.lower()  # hop-by-hop: the proxy re-frames
        assert body == b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\ngrpc-message: ok\r\n\r\n"
        c.close()
        await proxy.close()

    run(main())


def test_mirrors_reuse_pooled_connections() -> None:
    async def main() -> None:
        main_be = await start_backend()
        mirror_be = await start_backend()
        r = rule(
            backend("main", main_be.port),
            mirrors=(Mirror(backend=backend("mirror", mirror_be.port)),),
        )
        proxy, port, _ = await start_proxy({"/": hit(r)})
        c = await Client.open(port)
        for i in range(3):
            assert (await c.get(f"/m{i}")).status == 200
            async with asyncio.timeout(5):
                while len(mirror_be.requests) <= i:
                    # No await between the check and the clear: no request is missed.
                    mirror_be.got_request.clear()
                    await mirror_be.got_request.wait()
        assert [m.target for m in mirror_be.requests] == ["/m0", "/m1", "/m2"]
        # Through the pool: one keep-alive connection carried every copy.
        assert {m.conn_id for m in mirror_be.requests} == {1}
        assert all(m.header("connection") is None for m in mirror_be.requests)
        assert all(m.header("content-length") == "0" for m in mirror_be.requests)
        c.close()
        await proxy.close()
        await main_be.stop()
        await mirror_be.stop()

    run(main())


def test_te_is_hop_by_hop_towards_http1_backends() -> None:
    """(The HTTP/2 side, ``te: trailers`` kept: tests/e2e/test_e2e_h2_upstream.py, with
    a real HTTP/2 backend.)"""

    async def main() -> None:
        h1_be = await start_backend()
        proxy, port, _ = await start_proxy({"/h1": hit(rule(backend("h1", h1_be.port)))})
        c = await Client.open(port)
        await c.send(
            b"GET /h1 HTTP/1.1\r\nhost: a\r\nte: gzip, trailers\r\n"
            b"connection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\n"
        )
        assert (await read_response(c.reader)).status == 200
        [r1] = h1_be.requests
        assert r1.header("te") is None  # hop-by-hop towards HTTP/1.1
        assert r1.header("connection") is None and r1.header("x-hop") is None
        c.close()
        await proxy.close()
        await h1_be.stop()

    run(main())
