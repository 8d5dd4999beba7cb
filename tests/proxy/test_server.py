"""The HTTP/1.1 proxy over real loopback sockets: proxy, backends and clients share one
uvloop event loop per test."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from loop_kit import LOCAL, free_port, run
from loop_kit import opened as _opened
from prometheus_client import CollectorRegistry

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.metrics import ProxyMetrics, render
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.rules import (
    CompiledBackend,
    CompiledRule,
    HeaderOps,
    Mirror,
    Retry,
    RouteHit,
)

# --------------------------------------------------------------------------- harness


class Table:
    """A RouteTable mapping path prefixes to hits; records what it was asked."""

    def __init__(self, routes: Mapping[str, RouteHit]) -> None:
        self.routes = dict(routes)
        self.seen: list[tuple[str, str, str, str, dict[str, str]]] = []

    def lookup(
        self, host: str, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> RouteHit | None:
        self.seen.append((host, method, path, query, dict(headers)))
        for prefix, hit in self.routes.items():
            if path.startswith(prefix):
                return hit
        return None

    def to_json(self) -> object:
        return sorted(self.routes)


def backend(name: str, *ports: int, **kw: Any) -> CompiledBackend:
    return CompiledBackend(
        name=name, endpoints=tuple(EndpointAddress(address=LOCAL, port=p) for p in ports), **kw
    )


def rule(*backends: CompiledBackend, **kw: Any) -> CompiledRule:
    cum = tuple(range(1, len(backends) + 1))
    return CompiledRule(
        route_kind="HTTPRoute",
        route_namespace="default",
        route_name="r",
        rule_index=0,
        backends=backends,
        cumulative_weights=cum,
        total_weight=len(backends),
        **kw,
    )


def hit(r: CompiledRule, prefix: str | None = None) -> RouteHit:
    return RouteHit(rule=r, prefix=prefix, listener_name="http")


def snapshot(tables: Mapping[int, Table], generation: int = 1) -> Snapshot:
    return Snapshot(
        generation=generation,
        ports={
            (LOCAL, port): ListenerPort(
                address=LOCAL,
                port=port,
                protocol="HTTP",
                gateway_namespace="default",
                gateway_name="gw",
                listener_names=("http",),
                table=table,
            )
            for port, table in tables.items()
        },
    )


async def start_proxy(routes: Mapping[str, RouteHit], **opts: Any) -> tuple[Proxy, int, Table]:
    opts.setdefault("access_log", None)
    table = Table(routes)
    port = free_port()
    proxy = Proxy(SnapshotHolder(), ProxyOptions(**opts))
    _opened.append(proxy.close)
    failed = await proxy.apply(snapshot({port: table}))
    assert failed == {}
    return proxy, port, table


@dataclass
class Req:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_len: int = 0
    conn_id: int = 0

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            n, _, v = line.partition(":")
            headers.append((n.strip().lower(), v.strip()))
    return lines[0], headers


async def _read_chunked(reader: asyncio.StreamReader, sink: bytearray | None) -> int:
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return total
        data = await reader.readexactly(size)
        total += size
        if sink is not None:
            sink += data
        await reader.readexactly(2)


async def read_request(reader: asyncio.StreamReader) -> Req | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    first, headers = _parse_head(head)
    method, target, version = first.split(" ")
    req = Req(method, target, version, headers)
    cl = req.header("content-length")
    if req.header("transfer-encoding"):
        buf = bytearray()
        req.body_len = await _read_chunked(reader, buf)
        req.body = bytes(buf)
    elif cl is not None:
        n = int(cl)
        req.body_len = n
        if n <= 1 << 20:
            req.body = await reader.readexactly(n)
        else:
            left = n
            while left:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(chunk)
    return req


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Resp:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        first, headers = _parse_head(head)
        status = int(first.split(" ")[1])
        if status >= 200:
            break
    resp = Resp(status, headers)
    if head_request or status in (204, 304):
        return resp
    cl = resp.header("content-length")
    if resp.header("transfer-encoding") == "chunked":
        buf = bytearray()
        await _read_chunked(reader, buf)
        resp.body = bytes(buf)
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


def response(status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    lines += [f"{n}: {v}" for n, v in headers]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Handler = Callable[[Req, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool | None]]


async def echo_handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(response(200, f"{req.method} {req.target} {len(req.body)}".encode()))


@dataclass
class Backend:
    handler: Handler = echo_handler
    connections: int = 0
    requests: list[Req] = field(default_factory=list)
    port: int = 0
    server: asyncio.AbstractServer | None = None
    got_request: asyncio.Event = field(default_factory=asyncio.Event)
    host: str = LOCAL

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        _opened.append(self.server.close)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _opened.append(writer.transport.abort)
        conn_id = self.connections
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    break
                req.conn_id = conn_id
                self.requests.append(req)
                self.got_request.set()
                if await self.handler(req, reader, writer) is False:
                    break
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


async def start_backend(handler: Handler = echo_handler) -> Backend:
    return await Backend(handler).start()


async def raw_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.AbstractServer, int]:
    """A test-specific backend; its connections are aborted at the end of the test."""

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _opened.append(writer.transport.abort)
        await serve(reader, writer)

    server = await asyncio.start_server(tracked, LOCAL, 0)
    _opened.append(server.close)
    return server, server.sockets[0].getsockname()[1]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        r, w = await asyncio.open_connection(LOCAL, port, limit=1 << 20)
        _opened.append(w.transport.abort)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def get(self, path: str = "/", extra: str = "", host: str = "example.com") -> Resp:
        await self.send(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode())
        return await read_response(self.reader)

    async def closed(self) -> bool:
        """True when the server closed the connection (EOF or reset)."""
        try:
            rest = await self.reader.read()
        except ConnectionError:
            return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


async def once(port: int, raw: bytes, head_request: bool = False) -> tuple[Resp, bool]:
    """Send raw bytes, read one response, report whether the connection then closed."""
    c = await Client.open(port)
    try:
        await c.send(raw)
        resp = await read_response(c.reader, head_request)
        return resp, await c.closed()
    finally:
        c.close()


# --------------------------------------------------------------------------- basics


def test_keepalive_forwarding_headers_and_connection_reuse() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, table = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        for i in range(5):
            resp = await c.get(f"/p{i}?q=1", extra="X-Forwarded-For: 10.0.0.9\r\n")
            assert resp.status == 200
            assert resp.body == f"GET /p{i}?q=1 0".encode()
            assert resp.header("x-request-id") == be.requests[-1].header("x-request-id")
        c2 = await Client.open(port)
        assert (await c2.get("/other")).status == 200
        # Upstream keep-alive: every request went over one backend connection.
        assert be.connections == 1
        req = be.requests[0]
        assert req.header("host") == "example.com"
        assert req.header("x-forwarded-for") == "10.0.0.9, 127.0.0.1"
        assert req.header("x-forwarded-proto") == "http"
        assert req.version == "HTTP/1.1"
        host, method, path, query, headers = table.seen[0]
        assert (host, method, path, query) == ("example.com", "GET", "/p0", "q=1")
        assert headers["host"] == "example.com"
        c.close()
        c2.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_host_port_stripped_and_lowercased_for_lookup() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, table = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        await c.send(b"GET /x HTTP/1.1\r\nHost: WWW.Example.COM:8080\r\nX-A: 1\r\nx-a: 2\r\n\r\n")
        assert (await read_response(c.reader)).status == 200
        host, _, _, _, headers = table.seen[0]
        assert host == "www.example.com"
        assert headers["x-a"] == "1,2"
        assert be.requests[0].header("host") == "WWW.Example.COM:8080"
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_hop_by_hop_headers_removed_both_ways() -> None:
    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(
            response(
                200,
                b"ok",
                [
                    ("connection", "x-backend-private"),
                    ("x-backend-private", "secret"),
                    ("keep-alive", "timeout=5"),
                    ("x-kept", "yes"),
                ],
            )
        )

    async def main() -> None:
        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        resp = await c.get(
            "/",
            extra=(
                "Connection: keep-alive, X-Client-Private\r\nX-Client-Private: 1\r\n"
                "Keep-Alive: timeout=9\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n"
                "X-Normal: 2\r\n"
            ),
        )
        assert resp.status == 200
        sent = {n for n, _ in be.requests[0].headers}
        for name in ("connection", "x-client-private", "keep-alive", "te", "proxy-connection"):
            assert name not in sent
        assert be.requests[0].header("x-normal") == "2"
        got = {n for n, _ in resp.headers}
        assert "x-backend-private" not in got
        assert "keep-alive" not in got
        assert resp.header("x-kept") == "yes"
        assert resp.header("connection") is None  # HTTP/1.1 keep-alive is the default
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_header_filters_and_rewrite() -> None:
    async def main() -> None:
        be = await start_backend()
        from gatewayd.routing.snapshot.rules import PathModifier, Rewrite

        r = rule(
            backend(
                "b",
                be.port,
                request_headers=HeaderOps(add=(("x-backend", "1"),)),
                response_headers=HeaderOps(set=(("x-resp-backend", "b"),)),
            ),
            request_headers=HeaderOps(set=(("x-rule", "r"),), remove=("x-drop",)),
            response_headers=HeaderOps(add=(("x-resp-rule", "r"),)),
            rewrite=Rewrite(
                hostname="internal.svc",
                path=PathModifier(type="ReplacePrefixMatch", value="/v2"),
            ),
        )
        proxy, port, _ = await start_proxy({"/api": hit(r, prefix="/api")})
        c = await Client.open(port)
        resp = await c.get("/api/items?x=1", extra="x-drop: 1\r\n")
        assert resp.status == 200
        req = be.requests[0]
        assert req.target == "/v2/items?x=1"
        assert req.header("host") == "internal.svc"
        assert req.header("x-rule") == "r"
        assert req.header("x-backend") == "1"
        assert req.header("x-drop") is None
        assert resp.header("x-resp-rule") == "r"
        assert resp.header("x-resp-backend") == "b"
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_pipelined_requests_answered_in_order() -> None:
    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        # Earlier requests are answered slower: order must come from the proxy.
        n = int(req.target.strip("/"))
        await asyncio.sleep((5 - n) * 0.01)
        w.write(response(200, req.target.encode() + b":" + req.body))

    async def main() -> None:
        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        reqs = b""
        for i in range(5):
            body = f"body{i}".encode()
            reqs += b"POST /%d HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s" % (
                i,
                len(body),
                body,
            )
        reqs += b"GET /9 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        await c.send(reqs)
        for i in range(5):
            resp = await read_response(c.reader)
            assert resp.body == f"/{i}:body{i}".encode()
        last = await read_response(c.reader)
        assert last.body == b"/9:"
        assert last.header("connection") == "close"
        assert await c.closed()
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_http10_and_connection_close() -> None:
    async def chunked(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")

    async def main() -> None:
        be = await start_backend(chunked)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        # HTTP/1.0 without keep-alive: close-delimited body, then close.
        resp, closed = await once(port, b"GET / HTTP/1.0\r\n\r\n")
        assert resp.status == 200 and resp.body == b"abc" and closed
        assert resp.header("transfer-encoding") is None
        # HTTP/1.1 with Connection: close.
        resp, closed = await once(port, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        assert resp.body == b"abc" and resp.header("connection") == "close" and closed
        # The backend saw HTTP/1.1 requests with a Host header.
        assert all(r.version == "HTTP/1.1" and r.header("host") is not None for r in be.requests)
        await proxy.close()
        await be.stop()

    run(main())


def test_http10_keepalive_with_content_length() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        for _ in range(2):
            await c.send(b"GET /k HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            resp = await read_response(c.reader)
            assert resp.body == b"GET /k 0"
            assert resp.header("connection") == "keep-alive"
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_head_and_no_body_statuses_keep_the_connection_usable() -> None:
    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if req.method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        elif req.target == "/204":
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            w.write(b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n")
        else:
            w.write(response(200, b"body"))

    async def main() -> None:
        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        await c.send(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n")
        resp = await read_response(c.reader, head_request=True)
        assert resp.status == 200 and resp.header("content-length") == "1000"
        for path, status in (("/204", 204), ("/304", 304), ("/x", 200)):
            resp = await c.get(path)
            assert resp.status == status
            assert resp.header("transfer-encoding") is None
        assert resp.body == b"body"
        assert be.connections == 1  # the HEAD response did not spoil the upstream connection
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


# --------------------------------------------------------------------------- streaming


def test_chunked_request_and_response_are_streamed() -> None:
    first_piece = asyncio.Event
    state: dict[str, Any] = {}

    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        raise AssertionError("unused")

    async def main() -> None:
        got_first = first_piece()
        release_second = first_piece()
        backend_conn: dict[str, Any] = {}

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            backend_conn["head"] = head
            # First chunk arrives before the client has sent the rest.
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            backend_conn["first"] = await reader.readexactly(size)
            await reader.readexactly(2)
            got_first.set()
            buf = bytearray()
            total = await _read_chunked(reader, buf)
            backend_conn["rest"] = bytes(buf)
            state["rest_len"] = total
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await release_second.wait()
            writer.write(b"6\r\n world\r\n0\r\n\r\n")
            await writer.drain()
            writer.close()

        server, bport = await raw_server(serve)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", bport)))})
        c = await Client.open(port)
        await c.send(
            b"POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n"
        )
        await got_first.wait()
        assert backend_conn["first"] == b"abcd"
        assert b"transfer-encoding: chunked" in backend_conn["head"].lower()
        await c.send(b"3\r\nefg\r\n0\r\n\r\n")
        head = await c.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding: chunked" in head
        # The first response chunk reaches the client before the backend sent the rest.
        assert await c.reader.readuntil(b"hello\r\n") == b"5\r\nhello\r\n"
        release_second.set()
        buf = bytearray()
        await _read_chunked(c.reader, buf)
        assert bytes(buf) == b" world"
        assert backend_conn["rest"] == b"efg"
        c.close()
        await proxy.close()
        server.close()

    run(main())


def test_50mb_bodies_stream_with_bounded_proxy_buffers() -> None:
    size = 50 * 1024 * 1024
    piece = b"x" * (256 * 1024)

    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert req.body_len == size
        w.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
        for _ in range(size // len(piece)):
            w.write(piece)
            await w.drain()

    async def main() -> None:
        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        peak = 0
        done = False

        async def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, proxy.buffered_bytes())
                await asyncio.sleep(0.002)

        sampler = asyncio.create_task(sample())
        c = await Client.open(port)
        await c.send(f"PUT /big HTTP/1.1\r\nhost: a\r\ncontent-length: {size}\r\n\r\n".encode())
        for _ in range(size // len(piece)):
            c.writer.write(piece)
            await c.writer.drain()
        head = await c.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = 0
        while received < size:
            chunk = await c.reader.read(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == size
        done = True
        await sampler
        assert be.requests[0].body_len == size
        # Both directions passed 50 MB; the proxy never held more than a few of its
        # 128 KiB write buffers' worth.
        assert peak < 2 * 1024 * 1024, peak
        c.close()
        await proxy.close()
        await be.stop()

    run(main(), timeout=60)


def test_slow_reader_does_not_grow_proxy_buffers() -> None:
    size = 64 * 1024 * 1024
    state: dict[str, Any] = {}

    async def main() -> None:
        blocked = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.transport.set_write_buffer_limits(high=4 * 1024 * 1024)
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n".encode())
            piece = b"y" * 65536
            sent = 0
            while sent < size:
                writer.write(piece)
                sent += len(piece)
                # The client is not reading: once the proxy stops reading from us, our
                # own buffer fills up (the kernel buffers in between are full).
                if not blocked.is_set() and writer.transport.get_write_buffer_size() > 1 << 20:
                    state["blocked_at"] = sent
                    state["proxy_buffered"] = proxy.buffered_bytes()
                    blocked.set()
                await writer.drain()
            writer.close()

        server, bport = await raw_server(serve)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", bport)))})
        c = await Client.open(port)
        await c.send(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        # Not reading: the client's StreamReader pauses its transport at its limit.
        await blocked.wait()
        assert state["proxy_buffered"] < 1024 * 1024
        assert proxy.buffered_bytes() < 1024 * 1024
        assert state["blocked_at"] < size
        await c.reader.readuntil(b"\r\n\r\n")
        received = 0
        while received < size:
            chunk = await c.reader.read(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == size
        c.close()
        await proxy.close()
        server.close()

    run(main())


def test_expect_100_continue() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy({"/up": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        await c.send(
            b"POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        interim = await c.reader.readuntil(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"hello")
        resp = await read_response(c.reader)
        assert resp.status == 200 and resp.body == b"POST /up 5"
        assert be.requests[0].header("expect") is None
        assert be.requests[0].body == b"hello"
        # No route: a final answer without asking for the body, and the connection is
        # not reused (the client may or may not send the body now).
        await c.send(
            b"POST /nope HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        resp = await read_response(c.reader)
        assert resp.status == 404
        assert resp.header("connection") == "close"
        assert await c.closed()
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


# --------------------------------------------------------------------------- errors


def test_error_statuses() -> None:
    async def reset(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.transport.abort()
        return False

    async def hang(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        be_reset = await start_backend(reset)
        be_hang = await start_backend(hang)
        dead = free_port()
        routes = {
            "/invalid": hit(rule(backend("inv", invalid_status=500))),
            "/direct": hit(rule(direct_status=500)),
            "/empty": hit(rule(backend("empty"))),
            "/refused": hit(rule(backend("dead", dead))),
            "/slow": hit(rule(backend("hang", be_hang.port), backend_request_timeout=0.2)),
            "/total": hit(rule(backend("hang", be_hang.port), request_timeout=0.2)),
            "/reset": hit(rule(backend("reset", be_reset.port))),
        }
        registry = CollectorRegistry()
        metrics = ProxyMetrics(registry)
        table = Table(routes)
        port = free_port()
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None), metrics)
        _opened.append(proxy.close)
        assert await proxy.apply(snapshot({port: table})) == {}
        c = await Client.open(port)
        expected = {
            "/unknown": 404,
            "/invalid": 500,
            "/direct": 500,
            "/empty": 503,
            "/refused": 503,
            "/slow": 504,
            "/total": 504,
            "/reset": 502,
        }
        for path, status in expected.items():
            resp = await c.get(path)
            assert resp.status == status, (path, resp)
            assert resp.body  # a short explanation
            assert resp.header("connection") is None  # keep-alive survives local replies
        assert (await c.get("/unknown")).body == b"route not found"
        text = render(registry)[0].decode()
        assert 'reason="upstream_connect_failure"' in text
        assert 'backend="dead"' in text  # counted as a connect failure
        assert 'reason="no_route"' in text
        c.close()
        await proxy.close()
        await be_reset.stop()
        await be_hang.stop()

    run(main())


def test_reused_connection_closed_by_backend_is_retried_once() -> None:
    async def flaky(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool | None:
        if req.target == "/close-me":
            w.transport.abort()  # closed before any response byte, on a reused connection
            return False
        w.write(response(200, b"fine"))
        return None

    async def main() -> None:
        be = await start_backend(flaky)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        assert (await c.get("/warm")).status == 200

        # The backend drops the pooled connection when this request arrives; the
        # retry on a fresh connection reaches the handler again (and is dropped again:
        # only one retry, so the client gets 502).
        resp = await c.get("/close-me")
        assert resp.status == 502
        assert [r.target for r in be.requests].count("/close-me") == 2
        assert be.connections == 2
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_retry_on_503_replays_small_body() -> None:
    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if len(be.requests) < 3:
            w.write(response(503, b"busy"))
        else:
            w.write(response(200, b"got " + req.body))

    be: Backend

    async def main() -> None:
        nonlocal be
        be = await start_backend(handler)
        r = rule(
            backend("b", be.port),
            retry=Retry(attempts=3, codes=frozenset({503}), backoff=0.001),
        )
        proxy, port, _ = await start_proxy({"/": hit(r)})
        c = await Client.open(port)
        await c.send(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n\r\ndata")
        resp = await read_response(c.reader)
        assert resp.status == 200 and resp.body == b"got data"
        assert len(be.requests) == 3
        assert all(q.body == b"data" for q in be.requests)
        # Out of attempts: the last 503 is passed on.
        be.requests.clear()
        r2 = rule(backend("b", be.port), retry=Retry(attempts=1, codes=frozenset({503})))
        await proxy.apply(snapshot({port: Table({"/": hit(r2)})}, generation=2))
        resp = await c.get("/")
        assert resp.status == 503 and resp.body == b"busy"
        assert len(be.requests) == 2
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_retry_on_connect_failure_moves_to_next_endpoint() -> None:
    async def main() -> None:
        be = await start_backend()
        dead = free_port()
        r = rule(
            backend("b", dead, be.port),
            retry=Retry(attempts=1, codes=frozenset({503}), backoff=0.001),
        )
        proxy, port, _ = await start_proxy({"/": hit(r)})
        c = await Client.open(port)
        for _ in range(4):
            assert (await c.get("/")).status == 200
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_mirror_reaches_second_backend_without_delaying_response() -> None:
    async def main() -> None:
        mirrored = asyncio.Event()
        release = asyncio.Event()

        async def mirror_handler(
            req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter
        ) -> None:
            mirrored.set()
            await release.wait()  # never answers in time: must not matter
            w.write(response(500, b"ignored"))

        main_be = await start_backend()
        mirror_be = await start_backend(mirror_handler)
        r = rule(
            backend("main", main_be.port),
            mirrors=(Mirror(backend=backend("mirror", mirror_be.port)),),
        )
        proxy, port, _ = await start_proxy({"/": hit(r)})
        c = await Client.open(port)
        await c.send(b"POST /m HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc")
        resp = await read_response(c.reader)
        assert resp.status == 200 and resp.body == b"POST /m 3"
        await mirrored.wait()
        m = mirror_be.requests[0]
        assert (m.method, m.target, m.body) == ("POST", "/m", b"abc")
        assert m.header("host") == "a"
        release.set()
        c.close()
        await proxy.close()
        await main_be.stop()
        await mirror_be.stop()

    run(main())


# --------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nhost: a\r\n"
            + b"".join(b"x-h%d: v\r\n" % i for i in range(101))
            + b"\r\n",
            431,
        ),
        (
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nbad header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-ctl: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nhost: a\r\nx-fold: a\r\n  folded\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
        (b"BLAH\r\n\r\n", 400),
    ],
    ids=[
        "431-size",
        "431-count",
        "te-and-cl",
        "dup-cl",
        "bad-name",
        "bad-value",
        "obs-fold",
        "bad-chunk",
        "no-host",
        "two-hosts",
        "garbage",
    ],
)
def test_malformed_requests_are_answered_then_closed(raw: bytes, status: int) -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        resp, closed = await once(port, raw)
        assert resp.status == status
        assert resp.header("connection") == "close"
        assert closed
        assert be.requests == []
        await proxy.close()
        await be.stop()

    run(main())


def test_head_split_across_packets_over_limit_is_431() -> None:
    async def main() -> None:
        proxy, port, _ = await start_proxy({}, max_header_bytes=1024)
        c = await Client.open(port)
        await c.send(b"GET / HTTP/1.1\r\nhost: a\r\nx-long: ")
        for _ in range(10):
            c.writer.write(b"a" * 200)
            await c.writer.drain()
        resp = await read_response(c.reader)
        assert resp.status == 431
        assert await c.closed()
        c.close()
        await proxy.close()

    run(main())


def test_header_timeout_and_idle_timeout() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy(
            {"/": hit(rule(backend("b", be.port)))}, header_timeout=0.2, idle_timeout=0.2
        )
        loop = asyncio.get_running_loop()
        # Partial head: 408 then close.
        c = await Client.open(port)
        await c.send(b"GET / HTTP/1.1\r\nhost: a\r\n")
        resp = await read_response(c.reader)
        assert resp.status == 408
        assert await c.closed()
        c.close()
        # Idle between requests: silent close.
        c = await Client.open(port)
        assert (await c.get("/")).status == 200
        t0 = loop.time()
        assert await c.reader.read() == b""
        assert loop.time() - t0 < 5
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_max_connections_enforced() -> None:
    """At the limit a busy connection keeps its slot and the new client is reset; an
    idle keep-alive connection is closed (FIN) to serve the new client instead."""

    async def main() -> None:
        release = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if req.target == "/wait":
                await release.wait()
            w.write(response(200, b"ok"))

        be = await start_backend(handler)
        proxy, port, _ = await start_proxy(
            {"/": hit(rule(backend("b", be.port)))}, max_connections=1
        )
        c1 = await Client.open(port)
        await c1.send(b"GET /wait HTTP/1.1\r\nhost: a\r\n\r\n")
        await be.got_request.wait()
        c2 = await Client.open(port)
        assert await c2.closed()  # c1 is busy: nothing to close for c2
        c2.close()
        release.set()
        assert (await read_response(c1.reader)).status == 200
        # c1 is idle now: it is closed for c3, which is served at once.
        c3 = await Client.open(port)
        assert (await c3.get("/")).status == 200
        assert await c1.reader.read() == b""  # a clean close, not a reset
        assert proxy.n_conns == 1
        c1.close()
        c3.close()
        await proxy.close()
        await be.stop()

    run(main())


# --------------------------------------------------------------------------- listeners


def test_apply_binds_reports_failures_and_closes_removed_ports() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if req.target == "/wait":
                await release.wait()
            w.write(response(200, b"ok " + req.target.encode()))

        be = await start_backend(handler)
        routes = {"/": hit(rule(backend("b", be.port)))}
        holder = SnapshotHolder()
        proxy = Proxy(holder, ProxyOptions(access_log=None))
        _opened.append(proxy.close)
        p1, p2 = free_port(), free_port()
        assert await proxy.apply(snapshot({p1: Table(routes)})) == {}
        assert proxy.bound() == {(LOCAL, p1)}

        # A port held by a socket without SO_REUSEPORT cannot be bound.
        blocker = socket.socket()
        _opened.append(blocker.close)
        blocker.bind((LOCAL, 0))
        blocker.listen()
        busy = blocker.getsockname()[1]
        failed = await proxy.apply(
            snapshot({p1: Table(routes), p2: Table(routes), busy: Table(routes)}, 2)
        )
        assert list(failed) == [(LOCAL, busy)]
        assert "cannot bind" in failed[(LOCAL, busy)]
        assert proxy.bound() == {(LOCAL, p1), (LOCAL, p2)}
        assert holder.current.generation == 2
        for p in (p1, p2):
            c = await Client.open(p)
            assert (await c.get("/")).status == 200
            c.close()
        blocker.close()

        # Removing p1: its listener closes, the request in flight on it finishes.
        inflight = await Client.open(p1)
        await inflight.send(b"GET /wait HTTP/1.1\r\nhost: a\r\n\r\n")
        while not any(r.target == "/wait" for r in be.requests):
            await be.got_request.wait()
            be.got_request.clear()
        assert await proxy.apply(snapshot({p2: Table(routes)}, 3)) == {}
        assert proxy.bound() == {(LOCAL, p2)}
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(LOCAL, p1)
        release.set()
        resp = await read_response(inflight.reader)
        assert resp.status == 200 and resp.body == b"ok /wait"
        assert resp.header("connection") == "close"
        assert await inflight.closed()
        inflight.close()
        c = await Client.open(p2)
        assert (await c.get("/")).status == 200
        c.close()
        await proxy.close()
        assert proxy.bound() == set()
        await be.stop()

    run(main())


def test_close_drains_in_flight_requests() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await release.wait()
            w.write(response(200, b"done"))

        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        idle = await Client.open(port)
        busy = await Client.open(port)
        await busy.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await be.got_request.wait()
        closing = asyncio.create_task(proxy.close(drain_timeout=5))
        assert await idle.closed()
        release.set()
        resp = await read_response(busy.reader)
        assert resp.status == 200 and resp.body == b"done"
        await closing
        idle.close()
        busy.close()
        await be.stop()

    run(main())


def test_access_log_line_per_request() -> None:
    async def main() -> None:
        be = await start_backend()
        # --preserve-request-id: the client's id is the one logged (and forwarded)
        proxy, port, _ = await start_proxy(
            {"/": hit(rule(backend("b", be.port)))}, preserve_request_id=True
        )
        buf = io.StringIO()
        proxy.access = AccessLogger("json", buf)
        c = await Client.open(port)
        await c.get("/a?b=1", extra="user-agent: t/1\r\nx-request-id: rid-1\r\n")
        c.close()
        await proxy.close()
        lines = [json.loads(line) for line in buf.getvalue().splitlines()]
        assert len(lines) == 1
        entry = lines[0]
        assert entry["method"] == "GET" and entry["path"] == "/a?b=1"
        assert entry["response_code"] == 200
        assert entry["request_id"] == "rid-1"
        assert entry["user_agent"] == "t/1"
        assert entry["upstream_host"] == f"{LOCAL}:{be.port}"
        assert entry["route_name"] == "default/r/rule/0"
        assert entry["bytes_sent"] == len(b"GET /a?b=1 0")
        await be.stop()

    run(main())


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this host")
def test_access_log_brackets_an_ipv6_upstream_host() -> None:
    async def main() -> None:
        be = await Backend(host="::1").start()
        six = CompiledBackend(name="b6", endpoints=(EndpointAddress(address="::1", port=be.port),))
        proxy, port, _ = await start_proxy({"/": hit(rule(six))})
        buf = io.StringIO()
        proxy.access = AccessLogger("json", buf)
        c = await Client.open(port)
        await c.get("/")
        c.close()
        await proxy.close()
        (entry,) = [json.loads(line) for line in buf.getvalue().splitlines()]
        assert entry["response_code"] == 200
        # Envoy's %UPSTREAM_HOST% form; "::1:1234" would read as an address of 8 groups.
        assert entry["upstream_host"] == f"[::1]:{be.port}"
        await be.stop()

    run(main())


# --------------------------------------------------------------------------- more edges


def test_cors_preflight_and_redirect_are_local() -> None:
    async def main() -> None:
        from gatewayd.routing.snapshot.rules import Cors, Redirect

        be = await start_backend()
        routes = {
            "/cors": hit(
                rule(
                    backend("b", be.port),
                    cors=Cors(allow_origins=("https://app.example",), allow_methods=("PUT",)),
                )
            ),
            "/old": hit(rule(redirect=Redirect(hostname="new.example", status_code=301))),
        }
        proxy, port, _ = await start_proxy(routes)
        c = await Client.open(port)
        await c.send(
            b"OPTIONS /cors HTTP/1.1\r\nhost: a\r\norigin: https://app.example\r\n"
            b"access-control-request-method: PUT\r\n\r\n"
        )
        resp = await read_response(c.reader)
        assert resp.status == 200
        assert resp.header("access-control-allow-origin") == "https://app.example"
        # A normal request from that origin is forwarded and gets the CORS headers.
        resp = await c.get("/cors", extra="origin: https://app.example\r\n")
        assert resp.status == 200 and resp.body == b"GET /cors 0"
        assert resp.header("access-control-allow-origin") == "https://app.example"
        resp = await c.get("/old/page?x=1")
        assert resp.status == 301
        assert resp.header("location") == f"http://new.example:{port}/old/page?x=1"
        assert [r.method for r in be.requests] == ["GET"]
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_upstream_connection_close_is_not_reused() -> None:
    async def closing(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(response(200, b"bye", [("connection", "close")]))
        await w.drain()
        return False

    async def main() -> None:
        be = await start_backend(closing)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        for _ in range(3):
            resp = await c.get("/")
            assert resp.status == 200 and resp.body == b"bye"
            assert resp.header("connection") is None  # downstream stays keep-alive
        assert be.connections == 3
        assert proxy.pool.idle_count() == 0
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_idle_pool_is_bounded_per_endpoint() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        arrived = 0
        all_in = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == 3:
                all_in.set()
            await gate.wait()
            w.write(response(200, b"ok"))

        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        proxy.pool.max_idle = 2
        clients = [await Client.open(port) for _ in range(3)]
        for c in clients:
            await c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await all_in.wait()
        gate.set()
        for c in clients:
            assert (await read_response(c.reader)).status == 200
        assert be.connections == 3
        assert proxy.pool.idle_count((LOCAL, be.port, "")) == 2
        # Reused last-in first-out: the next request takes a pooled connection.
        assert (await clients[0].get("/")).status == 200
        assert be.connections == 3
        for c in clients:
            c.close()
        await proxy.close()
        await be.stop()

    run(main())


@pytest.mark.parametrize(("ceiling", "kept"), [(1024, 3), (2, 2)])
def test_idle_limit_follows_demand_within_its_ceiling(ceiling: int, kept: int) -> None:
    """Six requests in flight with a floor of 2 idle connections: released together,
    idle ones are kept while fewer than the busy ones (3 of 6), within the ceiling; the
    next three concurrent requests then open no new upstream connection."""

    async def main() -> None:
        gate = asyncio.Event()
        arrived = 0
        all_in = asyncio.Event()
        n = 6

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal arrived
            arrived += 1
            if arrived == n:
                all_in.set()
            await gate.wait()
            w.write(response(200, b"ok"))

        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        proxy.pool.max_idle = 2
        proxy.pool.max_idle_ceiling = ceiling
        key = (LOCAL, be.port, "")
        clients = [await Client.open(port) for _ in range(n)]
        for c in clients:
            await c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await all_in.wait()
        gate.set()
        for c in clients:
            assert (await read_response(c.reader)).status == 200
        assert be.connections == n
        assert proxy.pool.idle_count(key) == kept
        assert proxy.pool.open_count[key] == kept
        # As many requests in flight as idle connections kept: all reuse one.
        rounds = await asyncio.gather(*(c.get("/") for c in clients[:kept]))
        assert [r.status for r in rounds] == [200] * kept
        assert be.connections == n
        for c in clients:
            c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_error_after_pipelined_request_is_answered_in_order() -> None:
    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        await c.send(b"GET /ok HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nbad header\r\n\r\n")
        first = await read_response(c.reader)
        assert first.status == 200 and first.body == b"GET /ok 0"
        second = await read_response(c.reader)
        assert second.status == 400
        assert await c.closed()
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_large_body_is_not_retried_and_mirror_gets_no_body() -> None:
    big = b"z" * (100 * 1024)

    async def main() -> None:
        mirrored = asyncio.Event()

        async def busy(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(response(503, b"busy"))

        async def mirror_handler(
            req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter
        ) -> None:
            mirrored.set()
            w.write(response(200))

        be = await start_backend(busy)
        mirror_be = await start_backend(mirror_handler)
        r = rule(
            backend("b", be.port),
            retry=Retry(attempts=3, codes=frozenset({503}), backoff=0.001),
            mirrors=(Mirror(backend=backend("m", mirror_be.port)),),
        )
        proxy, port, _ = await start_proxy({"/": hit(r)})
        c = await Client.open(port)
        await c.send(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % len(big) + big)
        resp = await read_response(c.reader)
        assert resp.status == 503
        assert len(be.requests) == 1  # more than 64 KiB: cannot be replayed
        assert be.requests[0].body == big
        await mirrored.wait()
        assert mirror_be.requests[0].header("content-length") == "0"
        c.close()
        await proxy.close()
        await be.stop()
        await mirror_be.stop()

    run(main())


def test_client_disconnect_aborts_upstream_request() -> None:
    async def main() -> None:
        upstream_closed = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            await reader.read()  # EOF once the proxy drops the request
            upstream_closed.set()

        server, bport = await raw_server(serve)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", bport)))})
        c = await Client.open(port)
        await c.send(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await c.reader.readuntil(b"\r\n\r\n")
        c.writer.transport.abort()
        await upstream_closed.wait()
        assert proxy.pool.idle_count() == 0
        await proxy.close()
        server.close()

    run(main())


def test_extra_bytes_after_a_response_do_not_leak_into_the_next() -> None:
    async def twice(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if req.target == "/double":
            w.write(response(200, b"one") + response(200, b"two"))
        else:
            w.write(response(200, b"fresh " + req.target.encode()))

    async def main() -> None:
        be = await start_backend(twice)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        assert (await c.get("/double")).body == b"one"
        assert (await c.get("/next")).body == b"fresh /next"
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_metrics_and_connection_gauges() -> None:
    async def main() -> None:
        be = await start_backend()
        registry = CollectorRegistry()
        port = free_port()
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None), ProxyMetrics(registry))
        _opened.append(proxy.close)
        table = Table({"/": hit(rule(backend("svc", be.port)))})
        assert await proxy.apply(snapshot({port: table})) == {}
        c = await Client.open(port)
        assert (await c.get("/")).status == 200
        assert (await c.get("/")).status == 200
        text = render(registry)[0].decode()
        assert f'listener="{LOCAL}:{port}"' in text
        assert 'backend="svc"' in text
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_many_pipelined_requests_pause_reading_and_complete_in_order() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await gate.wait()
            w.write(response(200, req.target.encode()))

        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        n = 3000  # ~80 KB of requests
        await c.send(b"".join(b"GET /%d HTTP/1.1\r\nhost: a\r\n\r\n" % i for i in range(n)))
        await be.got_request.wait()
        (conn,) = proxy.conns
        # The first request is in flight, a bounded number are parsed ahead (at most
        # one 16 KiB slice past the limit of 16), and the client connection is no
        # longer read.
        assert conn.read_mask != 0
        assert 16 <= len(conn.queue) <= 16 + 16 * 1024 // 27
        assert conn.backlog
        gate.set()
        for i in range(n):
            resp = await read_response(c.reader)
            assert resp.body == b"/%d" % i
        assert be.connections == 1
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_malformed_request_is_access_logged() -> None:
    async def main() -> None:
        proxy, port, _ = await start_proxy({})
        buf = io.StringIO()
        proxy.access = AccessLogger("text", buf)
        resp, closed = await once(port, b"GET / HTTP/1.1\r\nhost: a\r\nbad header: 1\r\n\r\n")
        assert resp.status == 400 and closed
        await proxy.close()
        assert " 400 DPE " in buf.getvalue()

    run(main())


def test_reload_drains_upstream_connections_of_removed_endpoints() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        slow_arrived = asyncio.Event()

        async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if req.target == "/slow":
                slow_arrived.set()
                await gate.wait()
            w.write(response(200, b"ok"))

        old, new = await start_backend(handler), await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", old.port)))})
        idle_client, busy_client = await Client.open(port), await Client.open(port)
        await busy_client.send(b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n")
        await slow_arrived.wait()
        assert (await idle_client.get("/")).status == 200  # leaves one idle connection
        assert proxy.pool.idle_count((LOCAL, old.port, "")) == 1
        # The new configuration sends traffic to another endpoint only.
        moved = Table({"/": hit(rule(backend("b", new.port)))})
        after = dataclasses.replace(
            snapshot({port: moved}, generation=2), endpoints=frozenset({(LOCAL, new.port)})
        )
        assert await proxy.apply(after) == {}
        assert proxy.pool.idle_count((LOCAL, old.port, "")) == 0  # closed at once
        gate.set()  # the request in flight still finishes on its connection ...
        assert (await read_response(busy_client.reader)).status == 200
        await asyncio.sleep(0.05)
        # ... which is then closed, not pooled; new requests go to the new endpoint.
        assert proxy.pool.idle_count((LOCAL, old.port, "")) == 0
        assert not [c for c in proxy.pool.conns if c.key[1] == old.port]
        assert (await idle_client.get("/")).status == 200
        assert new.connections == 1
        for c in (idle_client, busy_client):
            c.close()
        await proxy.close()
        await old.stop()
        await new.stop()

    run(main())
