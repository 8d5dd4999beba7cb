"""The admin server answers only requests whose Host names it (DNS rebinding)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import pytest

from gatewayd.proxy.admin import AdminServer, AdminState, _is_own_host, _split_host, start_admin

TIMEOUT = 20.0


def state() -> AdminState:
    return AdminState(
        ready=lambda: True, status_items=list, config_dump=lambda: {"secret": "config"}
    )


async def exchange(server: AdminServer, head: str) -> tuple[int, bytes]:
    """Send a raw request head; (status, body) of the answer."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head.encode("latin-1"))
        await writer.drain()
        data = await reader.read()  # every request below says Connection: close
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def run(address: str, heads: list[str]) -> list[tuple[int, bytes]]:
    async def main() -> list[tuple[int, bytes]]:
        server = await start_admin(address, state())
        try:
            return [await exchange(server, h.replace("PORT", str(server.port))) for h in heads]
        finally:
            await server.close()

    coro: Coroutine[Any, Any, list[tuple[int, bytes]]] = main()
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def get(host: str | None, *, version: str = "1.1", path: str = "/config_dump") -> str:
    header = "" if host is None else f"Host: {host}\r\n"
    return f"GET {path} HTTP/{version}\r\n{header}Connection: close\r\n\r\n"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:PORT", "127.0.0.1", "localhost:PORT", "LOCALHOST", "[::1]:PORT", "127.0.0.2"],
)
def test_own_and_loopback_hosts_are_answered(host: str) -> None:
    ((status, body),) = run("127.0.0.1:0", [get(host)])
    assert status == 200
    assert json.loads(body) == {"secret": "config"}


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:PORT",
        "localhost.evil.example:PORT",
        "127.0.0.1.nip.io:PORT",
        "127.0.0.1:1",  # another port: another server
        "10.1.2.3:PORT",  # not the address this connection arrived at
    ],
)
def test_other_hosts_get_421_and_no_config(host: str) -> None:
    for path in ("/config_dump", "/status", "/ready", "/stats/prometheus", "/"):
        ((status, body),) = run("127.0.0.1:0", [get(host, path=path)])
        assert status == 421, (host, path)
        assert b"secret" not in body
        assert json.loads(body)["error"].startswith("Misdirected Request")


def test_missing_duplicate_or_malformed_host_is_400() -> None:
    answers = run(
        "127.0.0.1:0",
        [
            get(None),
            "GET /config_dump HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n"
            "Connection: close\r\n\r\n",
            get("[::1"),
            get("localhost:http"),
            get("localhost:\u00b2"),
        ],
    )
    assert [status for status, _ in answers] == [400] * 5
    # HTTP/1.0 may leave Host out (RFC 9112 asks it of HTTP/1.1): no browser does.
    ((status, _),) = run("127.0.0.1:0", [get(None, version="1.0")])
    assert status == 200


def test_split_host_and_own_host() -> None:
    assert _split_host("[::1]:9901") == ("::1", "9901")
    assert _split_host("Example.COM") == ("example.com", "")
    assert _split_host("h:") == ("h", "")
    for bad in ("", ":9901", "[::1]x", "h:123456", "h:-1"):
        assert _split_host(bad) is None, bad
    # A wildcard bind's own address is the one the connection arrived at (the unit
    # test: the suite binds loopback only).
    assert _is_own_host("10.0.0.5", "10.0.0.5")
    assert _is_own_host("10.0.0.5", "::ffff:10.0.0.5")
    assert _is_own_host("0.0.0.0", "127.0.0.1", "0.0.0.0")  # status --admin-address 0.0.0.0:N
    assert _is_own_host("::", "::1", "::")
    assert not _is_own_host("0.0.0.0", "127.0.0.1", "127.0.0.1")
    assert not _is_own_host("10.0.0.6", "10.0.0.5")
    assert not _is_own_host("localhost.", "127.0.0.1")
