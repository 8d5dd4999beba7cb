"""The echo backend over real loopback sockets."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import pytest

from gatewayd.proxy.echo import (
    EchoServer,
    canonical_header_key,
    parse_go_duration,
    parse_listen,
    serve_echo,
)

TIMEOUT = 20.0


def arun(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def with_echo(
    test: Callable[[EchoServer], Awaitable[None]], **kwargs: Any
) -> Coroutine[Any, Any, None]:
    async def main() -> None:
        server = await serve_echo("127.0.0.1", 0, **kwargs)
        try:
            await test(server)
        finally:
            await server.close()

    return main()


class RawResponse:
    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0].split()[1])
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name, value.strip()))
        self.raw_body = body
        self.body = _dechunk(body) if self.header("transfer-encoding") == "chunked" else body

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            assert data == b"\r\n", "no trailers expected"
            return bytes(out)
        out += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


async def raw_exchange(port: int, request: bytes) -> RawResponse:
    """Send ``request`` (which should ask for Connection: close) and read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    return RawResponse(head, body)


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("x-foo-BAR", "X-Foo-Bar"),
        ("content-md5", "Content-Md5"),
        ("HOST", "Host"),
        ("x_under-score", "X_under-Score"),
        ("bad name", "bad name"),  # not a token: Go leaves it alone
        ("", ""),
    ],
)
def test_canonical_header_key_follows_go(name: str, canonical: str) -> None:
    assert canonical_header_key(name) == canonical


def test_parse_go_duration() -> None:
    assert parse_go_duration("1s") == 1.0
    assert parse_go_duration("250ms") == pytest.approx(0.25)
    assert parse_go_duration("1m30s") == 90.0
    assert parse_go_duration("1.5h") == 5400.0
    assert parse_go_duration("0") == 0.0
    for bad in ("", "1", "s", "1x", "1s2", "-1s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:3000") == ("127.0.0.1", 3000)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("127.0.0.1", "host:http", "h:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# --------------------------------------------------------------------------- the echo


def test_echo_document_shape_like_conformance_echo() -> None:
    async def test(server: EchoServer) -> None:
        resp = await raw_exchange(
            server.port,
            b"GET /foo//bar?a=1&b=%2F HTTP/1.1\r\n"
            b"Host: example.com:8080\r\n"
            b"x-foo-BAR: one\r\n"
            b"X-Foo-Bar: two\r\n"
            b"user-agent: test\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert resp.status == 200
        assert resp.header("content-type") == "application/json"
        assert resp.json() == {
            "path": "/foo//bar?a=1&b=%2F",  # request-target as received
            "host": "example.com:8080",
            "method": "GET",
            "proto": "HTTP/1.1",
            # Host is not repeated in headers (Go keeps it in Request.Host)
            "headers": {
                "X-Foo-Bar": ["one", "two"],
                "User-Agent": ["test"],
                "Connection": ["close"],
            },
            "namespace": "default",
            "pod": "echo-v1",
            "body_bytes": 0,
            "transfer_encoding": [],
        }

    arun(with_echo(test, name="echo-v1", namespace="default"))


def test_echo_any_method_and_http10() -> None:
    async def test(server: EchoServer) -> None:
        resp = await raw_exchange(
            server.port, b"PATCH /x HTTP/1.0\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        )
        doc = resp.json()
        assert (doc["method"], doc["proto"], doc["body_bytes"]) == ("PATCH", "HTTP/1.0", 3)
        assert doc["headers"]["Content-Length"] == ["3"]

    arun(with_echo(test, name="e", namespace="n"))


def test_pod_and_namespace_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "pod-from-env")
    monkeypatch.setenv("NAMESPACE", "ns-from-env")

    async def test(server: EchoServer) -> None:
        # HTTP/1.0 may omit Host (HTTP/1.1 without one is a 400 by RFC 9112 section 3.2).
        doc = (await raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n")).json()
        assert (doc["pod"], doc["namespace"], doc["host"]) == ("pod-from-env", "ns-from-env", "")

    arun(with_echo(test))

    monkeypatch.delenv("POD_NAME")
    monkeypatch.delenv("NAMESPACE")

    async def test_fallback(server: EchoServer) -> None:
        doc = (await raw_exchange(server.port, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")).json()
        assert (doc["pod"], doc["namespace"], doc["host"]) == (socket.gethostname(), "", "h")

    arun(with_echo(test_fallback))


def test_status_helper() -> None:
    async def test(server: EchoServer) -> None:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{server.url}/x?status=503") as r:
                assert r.status == 503
                assert (await r.json())["path"] == "/x?status=503"
            async with client.get(f"{server.url}/x?status=204") as r:
                assert r.status == 204
                assert await r.read() == b""
            for bad in ("999", "abc", "101"):
                async with client.get(f"{server.url}/x?status={bad}") as r:
                    assert r.status == 400
                    assert "message" in await r.json()

    arun(with_echo(test, name="e"))


def test_delay_helpers() -> None:
    async def test(server: EchoServer) -> None:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as client:
            for query in ("delay_ms=300", "delay=300ms"):
                started = loop.time()
                async with client.get(f"{server.url}/?{query}") as r:
                    assert r.status == 200
                    await r.read()
                assert loop.time() - started >= 0.29
            async with client.get(f"{server.url}/?delay=forever") as r:
                assert r.status == 400

    arun(with_echo(test, name="e"))


def test_size_helper() -> None:
    async def test(server: EchoServer) -> None:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{server.url}/?size=200001") as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/plain"
                assert r.headers["Content-Length"] == "200001"
                body = await r.read()
                assert body == b"x" * 200001
            async with client.get(f"{server.url}/?size=0&status=404") as r:
                assert r.status == 404
                assert await r.read() == b""
            async with client.head(f"{server.url}/?size=10") as r:
                assert r.headers["Content-Length"] == "10"
                assert await r.read() == b""

    arun(with_echo(test, name="e"))


def test_chunked_helper() -> None:
    async def test(server: EchoServer) -> None:
        resp = await raw_exchange(
            server.port, b"GET /c?chunked=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.header("content-length") is None
        assert resp.json()["path"] == "/c?chunked=1"

        resp = await raw_exchange(
            server.port,
            b"GET /c?chunked=1&size=150000 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.raw_body != resp.body  # really framed
        assert resp.body == b"x" * 150000

        # Without chunked=1 the length is declared.
        resp = await raw_exchange(
            server.port, b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") == str(len(resp.body))

    arun(with_echo(test, name="e"))


def test_x_echo_set_headers() -> None:
    async def test(server: EchoServer) -> None:
        resp = await raw_exchange(
            server.port,
            b"GET /?size=3 HTTP/1.1\r\nHost: h\r\n"
            b"x-echo-set-X-Custom: hello world\r\n"
            b"x-echo-set-cache-control: no-store\r\n"
            b"x-echo-set-x-multi: a\r\n"
            b"x-echo-set-x-multi: b\r\n"
            b"X-Echo-Set-Header: X-Conf-A:1, x-conf-b: 2\r\n"
            b"Connection: close\r\n\r\n",
        )
        assert resp.all("X-Custom") == ["hello world"]
        assert resp.all("Cache-Control") == ["no-store"]
        assert resp.all("x-multi") == ["a", "b"]
        assert resp.all("X-Conf-A") == ["1"]
        assert resp.all("x-conf-b") == ["2"]
        assert resp.body == b"xxx"

        resp = await raw_exchange(
            server.port,
            b"GET / HTTP/1.1\r\nHost: h\r\nx-echo-set-x-json: yes\r\nConnection: close\r\n\r\n",
        )
        assert resp.all("x-json") == ["yes"]
        assert resp.json()["headers"]["X-Echo-Set-X-Json"] == ["yes"]

    arun(with_echo(test, name="e"))


def test_large_streamed_post_is_counted() -> None:
    total = 5 * 1024 * 1024 + 7

    async def body() -> AsyncIterator[bytes]:
        block = b"a" * 65536
        left = total
        while left:
            n = min(left, len(block))
            yield block[:n]
            left -= n

    async def test(server: EchoServer) -> None:
        async with aiohttp.ClientSession() as client:
            async with client.post(f"{server.url}/upload", data=body()) as r:
                doc = await r.json()
            assert doc["body_bytes"] == total
            assert doc["transfer_encoding"] == ["chunked"]
            assert "Transfer-Encoding" not in doc["headers"]

            async with client.put(f"{server.url}/upload", data=io.BytesIO(b"z" * total)) as r:
                doc = await r.json()
            assert doc["body_bytes"] == total
            assert doc["headers"]["Content-Length"] == [str(total)]

    arun(with_echo(test, name="e"))


def test_keep_alive_after_body_and_compressed_body_counted_raw() -> None:
    async def test(server: EchoServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            # A gzip-labelled body must be counted as sent, not decompressed.
            writer.write(
                b"POST /one HTTP/1.1\r\nHost: h\r\nContent-Encoding: gzip\r\n"
                b"Content-Length: 5\r\n\r\nnotgz"
                b"GET /two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        first, second = data.split(b"HTTP/1.1 200 OK", 2)[1:]
        body1 = json.loads(first.partition(b"\r\n\r\n")[2])
        body2 = json.loads(second.partition(b"\r\n\r\n")[2])
        assert (body1["path"], body1["body_bytes"]) == ("/one", 5)
        assert body2["path"] == "/two"

    arun(with_echo(test, name="e"))


def test_expect_100_continue() -> None:
    async def test(server: EchoServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(
                b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                b"Content-Length: 4\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"data")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        assert data.startswith(b"HTTP/1.1 200 ")
        assert json.loads(data.partition(b"\r\n\r\n")[2])["body_bytes"] == 4

    arun(with_echo(test, name="e"))


# --------------------------------------------------------------------------- run_echo


def _spawn_echo(listen: str) -> subprocess.Popen[str]:
    code = (
        "import sys\n"
        "from gatewayd.proxy.echo import run_echo\n"
        f"sys.exit(run_echo({listen!r}, name='echo-sub', namespace='ns-sub'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "NAMESPACE")}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line from the echo subprocess in time"
    return proc.stdout.readline()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_echo_subprocess_serves_until_signal(sig: signal.Signals) -> None:
    proc = _spawn_echo("127.0.0.1:0")
    try:
        line = _read_line(proc)
        prefix = "echo echo-sub listening on 127.0.0.1:"
        assert line.startswith(prefix), line
        port = int(line[len(prefix) :])
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/hello?x=1", timeout=10) as resp:
            doc = json.loads(resp.read())
        assert (doc["path"], doc["pod"], doc["namespace"]) == ("/hello?x=1", "echo-sub", "ns-sub")
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_run_echo_reports_unusable_addresses() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for listen, rc, words in (
            (f"127.0.0.1:{port}", 1, "cannot listen on"),
            ("127.0.0.1", 2, "not host:port"),
        ):
            proc = _spawn_echo(listen)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == rc, err
            assert out == ""
            assert words in err
