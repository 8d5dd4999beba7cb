"""The request-head limits and timeouts of ``gatewayd run`` are flags: a lowered limit
is what the data plane enforces, for request heads (431, 408) and for upstream response
heads (502)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from e2e_kit import (
    LOCALHOST,
    Doc,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    raw_exchange,
    rule,
)

pytestmark = pytest.mark.e2e


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def one_route(port: int, backend_port: int) -> list[Doc]:
    """A Gateway listening on ``port`` whose one route goes to the backend."""
    return [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *backend_manifests("many", backend_port),
        http_route("r", [rule(backends=[backend_ref("many")])]),
    ]


@pytest.fixture
def many_headers_backend() -> Iterator[int]:
    """A backend answering every request with 12 header fields, then closing."""
    server = socket.create_server((LOCALHOST, 0))
    port = int(server.getsockname()[1])
    fields = "".join(f"X-F{i}: v\r\n" for i in range(10))
    answer = f"HTTP/1.1 200 OK\r\n{fields}Content-Length: 2\r\nConnection: close\r\n\r\nok"

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(answer.encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    server.close()
    thread.join(5)


def test_lowered_limits_are_enforced(gatewayd, many_headers_backend: int) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = one_route(port, many_headers_backend)
    gatewayd(
        docs,
        args=[
            "--max-headers",
            "11",
            "--max-header-bytes",
            "2KiB",
            "--request-headers-timeout",
            "0.5",
        ],
    )
    # 12 fields in a request: over --max-headers 11.
    many = head("GET / HTTP/1.1", "Host: a.example", *(f"X-N{i}: v" for i in range(11)))
    result = raw_exchange(port, many, timeout=5)
    assert result.status == 431 and result.closed
    # A 3 KiB head: over --max-header-bytes 2KiB.
    big = head("GET / HTTP/1.1", "Host: a.example", "X-Big: " + "b" * 3000)
    assert raw_exchange(port, big, timeout=5).status == 431
    # A head that never completes: 408 after --request-headers-timeout 0.5 s (the sweep
    # may add up to its interval).
    started = time.monotonic()
    result = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a.example\r\n", timeout=5)
    took = time.monotonic() - started
    assert result.status == 408 and result.closed
    assert 0.4 < took < 3.0, took
    # The backend's 12 response fields (10 + Content-Length + Connection): over the same
    # --max-headers limit, so 502; a request within the limits gets there.
    ok = head("GET / HTTP/1.1", "Host: a.example", "Connection: close")
    result = raw_exchange(port, ok, timeout=5)
    assert result.status == 502, result.data[:300]


def test_default_allows_what_a_lowered_limit_refuses(gatewayd, many_headers_backend: int) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = one_route(port, many_headers_backend)
    gatewayd(docs)
    many = head(
        "GET / HTTP/1.1", "Host: a.example", "Connection: close", *(f"X-N{i}: v" for i in range(11))
    )
    result = raw_exchange(port, many, timeout=5)
    assert result.status == 200, result.data[:300]
