"""Streaming and connection reuse: 50 MB bodies each way with bounded daemon memory, a
slow reader that must not make the daemon buffer, upstream keep-alive."""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Client,
    Gatewayd,
    MemorySampler,
    RecordingServer,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    read_response_head,
    request,
    rule,
)

pytestmark = pytest.mark.e2e

SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024
MAX_GROWTH_KB = 40 * 1024  # the daemon may grow by 40 MB at most while 50 MB go through


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    recorder: RecordingServer
    oneshot: RecordingServer


@pytest.fixture(scope="module")
def env(module_echoes, module_recorders, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    recorder = module_recorders("ok")
    oneshot = module_recorders("oneshot")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs += backend_manifests("recorder", recorder.port)
    docs += backend_manifests("oneshot", oneshot.port)
    docs += [
        http_route("echo", [rule(backends=[backend_ref("echo-v1")])], hostnames=["echo.example"]),
        http_route(
            "recorder", [rule(backends=[backend_ref("recorder")])], hostnames=["rec.example"]
        ),
        http_route(
            "oneshot", [rule(backends=[backend_ref("oneshot")])], hostnames=["oneshot.example"]
        ),
    ]
    daemon = module_gatewayd(docs, args=["--access-log", "off"])
    # warm up: first requests allocate buffers, pools, caches
    with Client(port) as c:
        for _ in range(20):
            c.request("/?size=65536", host="echo.example")
    return Env(daemon, port, recorder, oneshot)


def _growth_msg(sampler: MemorySampler) -> str:
    return (
        f"daemon RSS grew by {sampler.peak_growth_kb() / 1024:.1f} MB "
        f"(baseline {sampler.baseline_rss / 1024:.1f} MB, peak {sampler.peak_rss / 1024:.1f} MB)"
    )


def test_chunked_upload_50mb_streams(env: Env) -> None:
    block = b"u" * CHUNK
    with MemorySampler(env.daemon) as sampler:
        sock = socket.create_connection(("127.0.0.1", env.port), timeout=30)
        with sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: echo.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            sent = 0
            chunk_head = f"{CHUNK:x}\r\n".encode()
            while sent < SIZE:
                sock.sendall(chunk_head + block + b"\r\n")
                sent += CHUNK
            sock.sendall(b"0\r\n\r\n")
            head, rest = read_response_head(sock)
            body = bytearray(rest)
            length = _content_length(head)
            while length is not None and len(body) < length:
                data = sock.recv(65536)
                if not data:
                    break
                body += data
    assert head.startswith(b"HTTP/1.1 200"), head
    doc = json.loads(bytes(body))
    assert doc["body_bytes"] == SIZE
    assert sampler.peak_growth_kb() < MAX_GROWTH_KB, _growth_msg(sampler)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_download_50mb_streams(env: Env, chunked: bool) -> None:
    path = f"/?size={SIZE}" + ("&chunked=1" if chunked else "")
    with MemorySampler(env.daemon) as sampler:
        conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=30)
        try:
            conn.request("GET", path, headers={"Host": "echo.example"})
            resp = conn.getresponse()
            assert resp.status == 200
            total = 0
            while True:
                data = resp.read(CHUNK)
                if not data:
                    break
                total += len(data)
        finally:
            conn.close()
    assert total == SIZE
    assert sampler.peak_growth_kb() < MAX_GROWTH_KB, _growth_msg(sampler)


def test_slow_reader_does_not_make_the_daemon_buffer(env: Env) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    with sock, MemorySampler(env.daemon) as sampler:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", env.port))
        sock.sendall(f"GET /?size={SIZE} HTTP/1.1\r\nHost: echo.example\r\n\r\n".encode())
        head, rest = read_response_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        received = len(rest)
        # Read a trickle for ~3 s: a proxy that does not apply backpressure would pull
        # the whole 50 MB from the fast echo into memory meanwhile.
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            data = sock.recv(4096)
            assert data, "connection closed during the slow read"
            received += len(data)
            time.sleep(0.05)
        # meanwhile the daemon keeps serving others
        assert request(env.port, "/other", host="echo.example").echo()["path"] == "/other"
    assert received < SIZE // 2
    assert sampler.peak_growth_kb() < MAX_GROWTH_KB, _growth_msg(sampler)


def test_upstream_connections_are_reused(env: Env) -> None:
    before, _ = env.recorder.snapshot()
    with Client(env.port) as c:
        for i in range(200):
            r = c.request(f"/reuse/{i}", host="rec.example")
            assert r.status == 200, r
    after, recs = env.recorder.snapshot()
    paths = [r.path for r in recs if r.path.startswith("/reuse/")]
    assert len(paths) == 200
    new_connections = after - before
    assert new_connections <= 5, f"200 requests opened {new_connections} upstream connections"
    # this daemon runs with --access-log off
    assert env.daemon.child.stdout.count(lambda s: "/reuse/" in s) == 0


def test_upstream_closing_idle_connection_is_not_an_error(env: Env) -> None:
    """The backend closes each connection after answering, without a Connection: close
    header (as an idle timeout does): the next request must not fail on the dead one."""
    with Client(env.port) as c:
        for i in range(5):
            r = c.request(f"/oneshot/{i}", host="oneshot.example")
            assert r.status == 200, f"request {i}: {r.status} {r.body[:200]!r}"
            # the backend's FIN has gone out before the next request
            assert env.oneshot.wait_closed(i + 1, timeout=5)
    _, recs = env.oneshot.snapshot()
    assert [r.path for r in recs] == [f"/oneshot/{i}" for i in range(5)]


def test_expect_100_continue(env: Env) -> None:
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as sock:
        sock.sendall(
            b"POST /expect HTTP/1.1\r\nHost: echo.example\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim, rest = read_response_head(sock)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(b"hello")
        final, body = read_response_head(sock) if not rest else _split_head(rest, sock)
        assert final.startswith(b"HTTP/1.1 200"), final
        length = _content_length(final)
        assert length is not None
        while len(body) < length:
            data = sock.recv(65536)
            assert data
            body += data
        assert json.loads(body)["body_bytes"] == 5


def _split_head(buffered: bytes, sock: socket.socket) -> tuple[bytes, bytes]:
    buf = bytearray(buffered)
    while b"\r\n\r\n" not in buf:
        data = sock.recv(4096)
        assert data
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    return head, rest


def test_large_response_headers_pass_through(env: Env) -> None:
    big = "v" * 20000
    r = request(env.port, "/", host="echo.example", headers={"x-echo-set-x-big": big})
    assert r.status == 200
    assert r.header("x-big") == big
