"""Default timeouts and overload through ``gatewayd run``: --route-timeout (504 when a
backend never answers, a rule's timeouts.request overriding it), --stream-idle-timeout (a
client that never reads is disconnected and its buffers freed), and --max-connections
(idle keep-alive connections make room for a new client)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_kit import (
    LOCALHOST,
    Client,
    Gatewayd,
    MemorySampler,
    backend_manifests,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    read_response_head,
    request,
    rule,
)

pytestmark = pytest.mark.e2e

BIG = 50 * 1024 * 1024


class SilentBackend:
    """Accepts connections and reads what arrives, never answering."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOCALHOST, 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = self.sock.accept()
                self.conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[SilentBackend]:
    backend = SilentBackend()
    yield backend
    backend.close()


@dataclass
class Env:
    daemon: Gatewayd
    port: int


@pytest.fixture(scope="module")
def env(module_echoes, silent, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs += backend_manifests("silent", silent.port)
    docs += [
        http_route(
            "silent", [rule(backends=[backend_ref("silent")])], hostnames=["silent.example"]
        ),
        http_route(
            "own",
            [rule(backends=[backend_ref("echo-v1")], timeouts={"request": "3s"})],
            hostnames=["own.example"],
        ),
        http_route(
            "off",
            [rule(backends=[backend_ref("echo-v1")], timeouts={"request": "0s"})],
            hostnames=["off.example"],
        ),
        http_route("echo", [rule(backends=[backend_ref("echo-v1")])], hostnames=["echo.example"]),
        http_route(
            "download",
            # Its own long timeouts.request: only the stream idle timeout can end it.
            [rule(backends=[backend_ref("echo-v1")], timeouts={"request": "60s"})],
            hostnames=["download.example"],
        ),
    ]
    daemon = module_gatewayd(
        docs,
        args=["--route-timeout", "0.5", "--stream-idle-timeout", "1", "--access-log", "json"],
    )
    return Env(daemon, port)


def logged(daemon: Gatewayd, *parts: str) -> bool:
    """Whether an access log line with all ``parts`` appears (the log is flushed in
    batches, so within a few seconds)."""
    line = daemon.child.stdout.wait_for(lambda s: all(p in s for p in parts), 5.0)
    return line is not None


def metric(daemon: Gatewayd, name: str, **labels: str) -> float:
    samples = prometheus_samples(daemon.metrics(), name)
    return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))


def test_route_timeout_answers_504_for_a_backend_that_never_answers(env: Env) -> None:
    start = time.monotonic()
    reply = request(env.port, "/", host="silent.example", timeout=10)
    elapsed = time.monotonic() - start
    assert reply.status == 504
    assert reply.body == b"upstream request timeout"
    assert 0.4 <= elapsed < 2.0, f"504 after {elapsed:.2f}s, expected about 0.5s"
    assert logged(env.daemon, '"authority":"silent.example"', '"response_flags":"UT"')


def test_a_rules_timeouts_request_overrides_the_route_timeout(env: Env) -> None:
    # 0.8 s is over --route-timeout 0.5 but within the rule's own 3 s (and within
    # --stream-idle-timeout 1).
    reply = request(env.port, "/?delay_ms=800", host="own.example")
    assert reply.status == 200
    # "0s" disables the timeout (Gateway API: "Setting a timeout to the zero duration
    # (e.g. "0s") SHOULD disable the timeout completely"), the default included.
    assert request(env.port, "/?delay_ms=800", host="off.example").status == 200
    # The same backend without a rule timeout gets the default.
    assert request(env.port, "/?delay_ms=800", host="echo.example").status == 504


def test_upgrade_requests_are_exempt_from_the_route_timeout(env: Env) -> None:
    # A WebSocket handshake is a long-lived stream for the timeouts: the route timeout
    # does not apply to it, even when the backend (here the echo, which does not speak
    # WebSocket) answers it with a plain response, relayed as it is.
    upgrade = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    reply = request(env.port, "/?delay_ms=800", host="echo.example", headers=upgrade)
    assert reply.status == 200


def test_a_client_that_never_reads_is_disconnected_and_its_memory_returned(env: Env) -> None:
    daemon = env.daemon
    with Client(env.port) as warm:  # first allocations out of the way
        assert warm.request("/?size=1048576", host="download.example").status == 200
    before = metric(daemon, "gatewayd_local_reply_total", reason="stream_idle_timeout")
    upstream_before = metric(daemon, "gatewayd_upstream_cx_active")  # pooled: kept
    with (
        MemorySampler(daemon) as sampler,
        socket.create_connection((LOCALHOST, env.port), timeout=10) as s,
    ):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.sendall(f"GET /?size={BIG} HTTP/1.1\r\nHost: download.example\r\n\r\n".encode())
        head, _ = read_response_head(s)
        assert head.startswith(b"HTTP/1.1 200")
        # Not reading any more: gatewayd's buffers fill, nothing moves, and after
        # --stream-idle-timeout 1 it gives up on the stream.
        started = time.monotonic()
        for _ in deadline_loop(10.0, 0.1):
            if metric(daemon, "gatewayd_local_reply_total", reason="stream_idle_timeout") > before:
                break
        else:
            raise AssertionError("no stream idle timeout within 10 s")
        fired_after = time.monotonic() - started
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                received += len(chunk)
    assert received < BIG, "the response should have been cut"
    assert 0.9 <= fired_after < 4.0, fired_after
    # Both connections are gone: nothing of them is held by gatewayd any more.
    for _ in deadline_loop(5.0):
        if (
            metric(daemon, "gatewayd_downstream_cx_active") == 0
            and metric(daemon, "gatewayd_upstream_cx_active") <= upstream_before
        ):
            break
    else:
        raise AssertionError(daemon.metrics())
    assert sampler.peak_growth_kb() < 16 * 1024, "gatewayd buffered the response"
    rss, _ = daemon.memory_kb()
    assert rss - sampler.baseline_rss < 8 * 1024, f"RSS grew by {rss - sampler.baseline_rss} kB"
    assert logged(daemon, '"response_code":200', '"response_flags":"SI"')


def test_at_max_connections_idle_clients_make_room_for_a_new_one(
    echoes,  # type: ignore[no-untyped-def]
    gatewayd,
) -> None:
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs += [http_route("echo", [rule(backends=[backend_ref("echo-v1")])])]
    gatewayd(docs, args=["--max-connections", "4"])
    idle = [Client(port) for _ in range(4)]
    try:
        for c in idle:
            assert c.request("/").status == 200  # now idle, kept alive
            time.sleep(0.005)  # idle since a later millisecond: a definite oldest
        start = time.monotonic()
        reply = request(port, "/new", timeout=5)
        elapsed = time.monotonic() - start
        assert reply.status == 200
        assert elapsed < 1.0, f"the new client waited {elapsed:.2f}s"
        # The longest-idle connection was closed cleanly (FIN, not a reset) ...
        oldest = idle[0].conn.sock
        assert oldest is not None
        oldest.settimeout(5)
        assert oldest.recv(1) == b""
        # ... and the others still serve.
        for c in idle[1:]:
            assert c.request("/again").status == 200
    finally:
        for c in idle:
            c.close()
