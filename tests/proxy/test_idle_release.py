"""An idle keep-alive HTTP/1.1 connection gives back its parser (the deadline sweep calls
``release_idle``) and parses its next requests with a new one; a connection in the
middle of a request never does.  Real loopback sockets, one uvloop loop per test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from loop_kit import run
from test_server import (
    Client,
    Req,
    backend,
    hit,
    read_response,
    response,
    rule,
    start_backend,
    start_proxy,
)

from gatewayd.proxy.http.h1_server import HttpConnection

# A short header timeout makes the sweep run every 0.1 s (a quarter of it).
SWEEP_OPTS = {"header_timeout": 0.4, "idle_timeout": 600.0}


async def eventually(cond: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Whether ``cond()`` holds within ``seconds`` (polled: the sweep is a timer)."""
    for _ in range(int(seconds / 0.01)):
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


async def released(conn: HttpConnection) -> bool:
    """Wait (bounded) for the sweep to release the connection's parser."""
    return await eventually(lambda: conn.parser is None)


def test_idle_connection_releases_its_parser_and_parses_the_next_requests() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))}, **SWEEP_OPTS)
        c = await Client.open(port)
        assert (await c.get("/first")).status == 200
        (conn,) = proxy.conns
        assert await released(conn)
        # A plain request, then pipelined ones, then a chunked body: all parsed whole by
        # the new parser, each answered in order on the same connection.
        resp = await c.get("/second?x=1")
        assert (resp.status, resp.body) == (200, b"GET /second?x=1 0")
        assert conn.parser is not None
        assert await released(conn)
        await c.send(b"GET /p1 HTTP/1.1\r\nhost: a\r\n\r\nGET /p2 HTTP/1.1\r\nhost: a\r\n\r\n")
        assert (await read_response(c.reader)).body == b"GET /p1 0"
        assert (await read_response(c.reader)).body == b"GET /p2 0"
        assert await released(conn)
        await c.send(
            b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        resp = await read_response(c.reader)
        assert (resp.status, resp.body) == (200, b"POST /up 11")
        assert be.connections == 1 and len(proxy.conns) == 1
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_a_connection_inside_a_request_keeps_its_parser() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await gate.wait()
            w.write(response(200, f"{req.method} {req.target} {len(req.body)}".encode()))

        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))}, **SWEEP_OPTS)
        c = await Client.open(port)
        # Half a head: the parser holds the request line.
        await c.send(b"POST /half HTTP/1.1\r\nhost: a\r\n")
        assert await eventually(lambda: bool(proxy.conns))
        (conn,) = proxy.conns
        assert await eventually(lambda: conn.cur_head is not None)
        conn.release_idle()
        assert conn.parser is not None
        # The head, then half of the body: the parser counts the body's bytes.
        await c.send(b"content-length: 10\r\n\r\n01234")
        assert await eventually(lambda: conn.cur is not None)
        conn.release_idle()
        assert conn.parser is not None
        await asyncio.sleep(0.3)  # a few sweeps pass over it
        assert conn.parser is not None
        await c.send(b"56789")
        gate.set()
        resp = await read_response(c.reader)
        assert (resp.status, resp.body) == (200, b"POST /half 10")
        # Done and idle: now it may go.
        assert await released(conn)
        assert (await c.get("/after")).body == b"GET /after 0"
        c.close()
        await proxy.close()
        await be.stop()

    run(main())
