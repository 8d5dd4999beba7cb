"""Malformed requests over raw sockets: the right 4xx, then the connection is closed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from e2e_kit import (
    Gatewayd,
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


@dataclass
class Env:
    daemon: Gatewayd
    port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs.append(http_route("all", [rule(backends=[backend_ref("echo-v1")])]))
    return Env(module_gatewayd(docs), port)


GOOD = b"GET /next HTTP/1.1\r\nHost: a.example\r\n\r\n"


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


CASES: dict[str, tuple[bytes, int]] = {
    "headers-over-60KiB": (
        head("GET / HTTP/1.1", "Host: a.example", "X-Big: " + "b" * (61 * 1024)),
        431,
    ),
    "many-small-headers-over-60KiB": (
        head(
            "GET / HTTP/1.1",
            "Host: a.example",
            *(f"X-H{i}: {'v' * 1000}" for i in range(70)),
        ),
        431,
    ),
    "more-than-100-headers": (
        head("GET / HTTP/1.1", "Host: a.example", *(f"X-N{i}: v" for i in range(101))),
        431,
    ),
    "transfer-encoding-and-content-length": (
        head(
            "POST / HTTP/1.1",
            "Host: a.example",
            "Transfer-Encoding: chunked",
            "Content-Length: 5",
        )
        + b"0\r\n\r\n",
        400,
    ),
    "differing-duplicate-content-length": (
        head("POST / HTTP/1.1", "Host: a.example", "Content-Length: 3", "Content-Length: 4")
        + b"abcd",
        400,
    ),
    "invalid-header-name": (
        head("GET / HTTP/1.1", "Host: a.example", "Bad Header: x"),
        400,
    ),
    "invalid-header-name-char": (
        head("GET / HTTP/1.1", "Host: a.example", "Bad(Name): x"),
        400,
    ),
    "obs-fold": (
        head("GET / HTTP/1.1", "Host: a.example", "X-Folded: first", " second"),
        400,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_request(env: Env, case: str) -> None:
    data, expected = CASES[case]
    # A well-formed request pipelined after the bad one must not be answered.
    result = raw_exchange(env.port, data + GOOD, timeout=5)
    assert result.status == expected, f"{case}: got {result.data[:200]!r}"
    assert result.closed, f"{case}: connection left open after {expected}"
    assert len(result.status_lines()) == 1, f"{case}: more than one response: {result.data!r}"


def test_exactly_100_headers_is_fine(env: Env) -> None:
    # the limit is "more than 100": Host + Connection + 98 others is exactly 100
    data = head(
        "GET /hundred HTTP/1.1",
        "Host: a.example",
        "Connection: close",
        *(f"X-N{i}: v" for i in range(98)),
    )
    result = raw_exchange(env.port, data, timeout=5)
    assert result.status == 200, result.data[:300]


def test_well_formed_request_on_raw_socket(env: Env) -> None:
    data = head("GET /raw HTTP/1.1", "Host: a.example", "Connection: close")
    result = raw_exchange(env.port, data, timeout=5)
    assert result.status == 200
    assert result.closed
    assert b'"path": "/raw"' in result.data


def test_daemon_still_serves_after_malformed_requests(env: Env) -> None:
    for data, _ in CASES.values():
        raw_exchange(env.port, data, timeout=5)
    result = raw_exchange(
        env.port, head("GET /alive HTTP/1.1", "Host: a.example", "Connection: close")
    )
    assert result.status == 200


def test_non_numeric_content_length_is_400(env: Env) -> None:
    data = head("POST / HTTP/1.1", "Host: a.example", "Content-Length: abc") + b"abc"
    result = raw_exchange(env.port, data + GOOD, timeout=5)
    assert result.status == 400, result.data[:200]
    assert result.closed


def test_pipelined_requests_answered_in_order(env: Env) -> None:
    data = (
        head("GET /one HTTP/1.1", "Host: a.example")
        + head("POST /two HTTP/1.1", "Host: a.example", "Content-Length: 3")
        + b"abc"
        + head("GET /three HTTP/1.1", "Host: a.example", "Connection: close")
    )
    result = raw_exchange(env.port, data, timeout=5)
    assert result.closed
    assert [line[:12] for line in result.status_lines()] == [b"HTTP/1.1 200"] * 3, result.data
    positions = [result.data.find(f'"path": "/{p}"'.encode()) for p in ("one", "two", "three")]
    assert -1 not in positions and positions == sorted(positions), result.data


def test_http_1_0_request_is_answered_and_closed(env: Env) -> None:
    result = raw_exchange(env.port, head("GET /old HTTP/1.0", "Host: a.example"), timeout=5)
    assert result.status == 200, result.data[:200]
    assert result.closed
    assert b'"path": "/old"' in result.data
