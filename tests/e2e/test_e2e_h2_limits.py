"""HTTP/2 limit flags and hostile backends, end to end through `gatewayd run`.

One daemon with every HTTP/2 limit flag off its default:

- downstream: ``--max-header-bytes 4KiB`` and ``--max-headers 20`` reach the client's
  SETTINGS (MAX_HEADER_LIST_SIZE) and bound its requests (431 on the stream),
  ``--h2-hpack-table-size 0`` reaches SETTINGS_HEADER_TABLE_SIZE;
- upstream: ``--upstream-h2-max-concurrent-streams 1`` keeps one stream per backend
  connection although the backend allows 100, ``--upstream-h2-initial-stream-window``
  and ``--upstream-h2-initial-connection-window`` reach the backend, and the header
  limits bound its responses (502);
- hostile backend bytes (HPACK garbage, a header list over the bound, DATA first, an
  oversized frame, a CONTINUATION flood, a PING flood): 502, and the next request to
  the same backend is served (a new connection), the daemon unharmed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import h2.connection
import h2.events
import pytest
from e2e_kit import (
    Gatewayd,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    request,
    rule,
)
from h2_backend_kit import HOSTILE, H2Backend
from test_e2e_h2_upstream import h2c_backend_manifests
from test_e2e_h2c import H2cClient

pytestmark = pytest.mark.e2e

HOST = "limits.example"


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    backend: H2Backend


@pytest.fixture(scope="module")
def backend() -> Iterator[H2Backend]:
    b = H2Backend("h2-limits", max_concurrent_streams=100)
    yield b
    b.close()


@pytest.fixture(scope="module")
def env(backend, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *h2c_backend_manifests("h2-limits", backend.port),
        http_route("r", [rule(backends=[backend_ref("h2-limits")])], hostnames=[HOST]),
    ]
    daemon = module_gatewayd(
        docs,
        args=[
            "--max-header-bytes", "4KiB",
            "--max-headers", "20",
            "--h2-hpack-table-size", "0",
            "--upstream-h2-max-concurrent-streams", "1",
            "--upstream-h2-initial-stream-window", "256KiB",
            "--upstream-h2-initial-connection-window", "4MiB",
        ],
    )  # fmt: skip
    return Env(daemon, port, backend)


def h2_request(port: int, path: str, extra: list[tuple[bytes, bytes]]) -> tuple[str, int]:
    """One HTTP/2 request with ``extra`` header fields: ("status", code), ("reset", error
    code) or ("goaway", error code) when gatewayd ended the connection."""
    c = H2cClient(port)
    try:
        conn: h2.connection.H2Connection = c.conn
        sid = conn.get_next_available_stream_id()
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", HOST.encode()),
            (b":path", path.encode()),
            *extra,
        ]
        conn.send_headers(sid, fields, end_stream=True)
        c.sock.sendall(conn.data_to_send())
        for _ in range(100):
            data = c.sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    return "status", int(dict(ev.headers or ())[b":status"])
                if isinstance(ev, h2.events.StreamReset):
                    return "reset", int(ev.error_code or 0)
                if isinstance(ev, h2.events.ConnectionTerminated):
                    return "goaway", int(ev.error_code or 0)
        return "closed", 0
    finally:
        c.close()


def test_downstream_settings_follow_the_flags(env: Env) -> None:
    c = H2cClient(env.port)
    try:
        remote = c.conn.remote_settings
        assert remote.max_header_list_size == 4096
        assert remote.header_table_size == 0
    finally:
        c.close()


def test_downstream_header_count_and_size_are_bounded(env: Env) -> None:
    few = [(b"x-n%d" % i, b"v") for i in range(15)]
    assert h2_request(env.port, "/ok", few) == ("status", 200)
    many = [(b"x-n%d" % i, b"v") for i in range(25)]
    assert h2_request(env.port, "/many", many) == ("status", 431)
    # Over the decoded bound (RFC 9113 6.5.2 size, SETTINGS_MAX_HEADER_LIST_SIZE): the
    # HPACK decoder refuses the block, a connection error (GOAWAY), never served.
    big = [(b"x-big", b"v" * 5000)]
    assert h2_request(env.port, "/big", big)[0] == "goaway"
    assert h2_request(env.port, "/ok-again", few) == ("status", 200)


def test_upstream_stream_cap_opens_more_connections(env: Env) -> None:
    before = env.backend.connections
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(
            pool.map(lambda i: request(env.port, f"/delay/0.3/{i}", host=HOST), range(6))
        )
    assert [r.status for r in replies] == [200] * 6
    assert env.backend.peak == 1  # the backend allows 100: the cap is ours
    assert env.backend.connections - before >= 2


def test_upstream_windows_and_table_reach_the_backend(env: Env) -> None:
    assert request(env.port, "/settings", host=HOST).status == 200
    assert env.backend.settings["initial_window_size"] == 256 * 1024
    assert env.backend.settings["header_table_size"] == 0
    assert env.backend.settings["max_header_list_size"] == 4096
    # 4 MiB less the response bytes of this reused connection not acknowledged yet (a
    # few KiB); the default would be 1 MiB.
    assert 4 * 1024 * 1024 - 64 * 1024 <= env.backend.connection_window <= 4 * 1024 * 1024


def test_upstream_response_header_count_is_bounded(env: Env) -> None:
    ok = request(env.port, "/fields/10", host=HOST)
    assert ok.status == 200
    assert json.loads(ok.body)["path"] == "/fields/10"
    assert request(env.port, "/fields/25", host=HOST).status == 502
    assert request(env.port, "/after-fields", host=HOST).status == 200


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_backend_is_a_502_and_the_next_request_is_served(env: Env, kind: str) -> None:
    reply = request(env.port, f"/hostile/{kind}", host=HOST)
    assert reply.status == 502, (kind, reply.status)
    assert request(env.port, f"/after/{kind}", host=HOST).status == 200
    assert env.daemon.child.alive()
