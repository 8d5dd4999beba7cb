"""The admin server's HTTP/1.1 handling on a raw socket: keep-alive, HEAD, chunked and
100-continue bodies, malformed requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from gatewayd.proxy.admin import AdminState, start_admin

TIMEOUT = 20.0


def state() -> AdminState:
    def explain(fields: Mapping[str, object]) -> Mapping[str, object]:
        return {"echo": dict(fields)}

    return AdminState(
        ready=lambda: True,
        status_items=list,
        config_dump=lambda: {"generation": 1},
        explain=explain,
    )


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
    return status, headers, b""


def talk(
    chunks: list[bytes], answers: int, *, head_only: frozenset[int] = frozenset()
) -> list[Any]:
    """Send ``chunks`` on one connection; read ``answers`` responses (their bodies by
    Content-Length, none for the indexes in ``head_only``), then whether the server
    closed the connection."""

    async def main() -> list[Any]:
        server = await start_admin("127.0.0.1:0", state())
        try:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            for chunk in chunks:
                writer.write(chunk)
            await writer.drain()
            got: list[Any] = []
            for i in range(answers):
                status, headers, _ = await _read_answer(reader)
                while status == 100:
                    status, headers, _ = await _read_answer(reader)
                length = 0 if i in head_only else int(headers["content-length"])
                got.append((status, headers, await reader.readexactly(length)))
            try:
                async with asyncio.timeout(0.5):
                    closed = await reader.read(1) == b""
            except TimeoutError:
                closed = False
            got.append(closed)
            writer.close()
            return got
        finally:
            await server.close()

    return asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_keep_alive_serves_several_requests_and_head_has_no_body() -> None:
    get = b"GET /ready HTTP/1.1\r\nHost: localhost\r\n\r\n"
    head = b"HEAD /config_dump HTTP/1.1\r\nHost: localhost\r\n\r\n"
    (a, b, c, closed) = talk([get, head, get], 3, head_only=frozenset({1}))
    assert a[0] == 200 and a[2] == b"LIVE\n"
    assert a[1]["content-type"] == "text/plain; charset=utf-8"
    assert b[0] == 200 and b[2] == b"" and int(b[1]["content-length"]) > 0
    assert c[0] == 200 and c[2] == b"LIVE\n"
    assert not closed  # keep-alive: the connection stays open


def test_http10_closes_unless_keep_alive() -> None:
    (a, closed) = talk([b"GET /ready HTTP/1.0\r\n\r\n"], 1)
    assert a[0] == 200 and a[1]["connection"] == "close"
    assert closed


def test_chunked_and_expect_continue_bodies_are_read() -> None:
    body = json.dumps({"port": 1}).encode()
    chunked = (
        b"POST /explain HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % 3
        + body[:3]
        + b"\r\n"
        + b"%x;ext=1\r\n" % (len(body) - 3)
        + body[3:]
        + b"\r\n0\r\n\r\n"
    )
    expect = (
        b"POST /explain HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    (a, b, closed) = talk([chunked, expect], 2)
    assert a[0] == 200 and json.loads(a[2]) == {"echo": {"port": 1}}
    assert b[0] == 200 and json.loads(b[2]) == {"echo": {"port": 1}}
    assert not closed


def test_unread_body_closes_the_connection() -> None:
    post = b"POST /ready HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
    (a, closed) = talk([post], 1)
    assert a[0] == 405 and a[1]["allow"] == "GET,HEAD"
    assert a[1]["connection"] == "close" and closed


def test_malformed_requests_get_400_and_close() -> None:
    for bad in (
        b"GET /ready\r\nHost: localhost\r\n\r\n",
        b"GET /ready HTTP/2.0\r\nHost: localhost\r\n\r\n",
        b"GET ready HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nHost: localhost\r\n folded\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    ):
        (a, closed) = talk([bad], 1)
        assert a[0] == 400, bad
        assert "error" in json.loads(a[2])
        assert closed, bad


def test_too_large_head_is_refused() -> None:
    big = b"GET /ready HTTP/1.1\r\nHost: localhost\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
    (a, closed) = talk([big], 1)
    assert a[0] == 431
    assert closed


def test_a_refused_body_can_be_sent_whole_and_the_answer_read() -> None:
    """A 413 after 64 KiB of a chunked body: the server keeps reading (and dropping)
    the rest until the client closes, so the client, still sending, gets the answer
    and not a reset."""
    head = (
        b"POST /explain HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunks = [head] + [b"%x\r\n" % 40_000 + b"a" * 40_000 + b"\r\n" for _ in range(8)]
    (a, closed) = talk([*chunks, b"0\r\n\r\n"], 1)
    assert a[0] == 413 and a[1]["connection"] == "close"
    assert closed
