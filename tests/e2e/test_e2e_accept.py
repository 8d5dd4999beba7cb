"""Workers of ``gatewayd run --workers 2`` share the connections of their one listening
socket: connections opened at once are spread over both, over plain HTTP and HTTPS.

Which worker holds a connection is read from /proc (the socket inodes of each worker's
descriptors), while the connection is open.  Everything runs on loopback.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_kit import (
    LOCALHOST,
    EchoBackend,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    raw_exchange,
    read_response_head,
    rule,
    to_yaml,
)
from test_e2e_operations import owners, worker_pids

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

# Rounds per connection count, and how many of them may leave a worker under MIN_SHARE.
# Before (libuv accepting every queued connection per wake-up), rounds went 0/100, 96/4,
# 63/1 or 13/51: a worker held under a quarter in about 45% of the rounds
# (loadtest/accept_split.py and this test run on 02d1e45), so 7 fair rounds of 8
# happened in ~6% of the runs of one test.  With the balance, rounds split within a few
# connections (28/36 at worst seen); only with a CPU hog competing for the 2 cores did a
# round go 13/51 (2 rounds in ~90: a worker got no CPU for longer than MAX_WAIT).
ROUNDS = 8
UNFAIR_ROUNDS_ALLOWED = 1
MIN_SHARE = 0.25

Wrap = Callable[[socket.socket], socket.socket]


def wait_connected(socks: list[socket.socket], timeout: float = 10.0) -> None:
    """Wait (bounded) until every non-blocking connect has completed, and succeeded."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLOUT)
    end = time.monotonic() + timeout
    while by_fd:
        left = end - time.monotonic()
        assert left > 0, f"{len(by_fd)} connections not established in {timeout}s"
        for fd, _ in poller.poll(left * 1000):
            s = by_fd.pop(fd)
            poller.unregister(fd)
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
            s.settimeout(10.0)


def open_at_once(port: int, count: int, wrap: Wrap | None = None) -> list[socket.socket]:
    """``count`` connections opened back to back: all queued before a worker can take
    them; then the TLS handshakes (if ``wrap``), one request on each, every answer read.
    The connections stay open (keep-alive)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.setblocking(False)
        # Non-blocking connects in a tight loop: on loopback each handshake completes
        # within the call, so the connections are queued faster than a worker takes one.
        address = (LOCALHOST, port)
        for s in socks:
            assert s.connect_ex(address) in (0, errno.EINPROGRESS)
        wait_connected(socks)
        if wrap is not None:
            socks[:] = [wrap(s) for s in socks]
        for n, s in enumerate(socks):
            s.sendall(f"GET /spread/{n} HTTP/1.1\r\nHost: spread.test\r\n\r\n".encode())
        for s in socks:
            head, _ = read_response_head(s)
            assert head.startswith(b"HTTP/1.1 200 "), head
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def wait_settled(port: int, timeout: float = 10.0) -> None:
    """Wait until the workers have closed their side of every connection to ``port``: a
    worker still busy closing the last round's connections accepts less of the next
    (which is the point), so rounds start from idle workers."""
    for _ in deadline_loop(timeout, 0.01):
        if all(state == "0A" for state in server_side_states(port)):
            return
    raise AssertionError(f"connections to port {port} still open: {server_side_states(port)}")


def server_side_states(port: int) -> list[str]:
    """TCP states (hex, as /proc/net/tcp shows them) of the sockets whose local port is
    ``port``: the listening socket (0A) and the workers' side of each connection."""
    states = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port:
            states.append(cols[3])
    return states


def assert_fair_split(port: int, pids: list[int], count: int, wrap: Wrap | None = None) -> None:
    splits = []
    for _ in range(ROUNDS):
        socks = open_at_once(port, count, wrap)
        try:
            held = owners(port, pids)
        finally:
            for s in socks:
                s.close()
        split = [len(held[p]) for p in pids]
        assert sum(split) == count, f"{count} connections open, workers hold {split}"
        splits.append(split)
        wait_settled(port)
    unfair = [s for s in splits if min(s) < MIN_SHARE * count]
    assert len(unfair) <= UNFAIR_ROUNDS_ALLOWED, f"{count} at once, per worker: {splits}"


@pytest.mark.parametrize("count", [64, 100])
def test_connections_opened_at_once_are_spread_over_both_workers(  # type: ignore[no-untyped-def]
    echoes, gatewayd, count: int
) -> None:
    (echo,) = echoes.start("echo")
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *echo.manifests(),
        http_route("all", [rule(backends=[backend_ref(echo.name)])]),
    ]
    daemon = gatewayd(docs, args=["--workers", "2", "--access-log", "off"])
    pids = worker_pids(daemon)
    assert len(pids) == 2
    assert_fair_split(port, pids, count)


def https_docs(port: int, echo: EchoBackend) -> tuple[str, bytes]:
    """A Gateway with one HTTPS listener (spread.test) routing to ``echo``: (manifests,
    the certificate's PEM)."""
    cert, key = self_signed(["spread.test"])
    https = {
        "name": "https",
        "port": port,
        "protocol": "HTTPS",
        "hostname": "spread.test",
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]},
    }
    docs = [
        gateway_class(),
        gateway("gw", [https]),
        *echo.manifests(),
        http_route("all", [rule(backends=[backend_ref(echo.name)])]),
    ]
    secret = secret_manifest(cert, key, name="cert", namespace="default")
    return to_yaml(docs) + "---\n" + secret, cert


def test_https_connections_opened_at_once_are_spread_over_both_workers(  # type: ignore[no-untyped-def]
    echoes, gatewayd
) -> None:
    """HTTPS ports are served with the loop's TLS: the handshake runs after the fair
    accept, as it ran after the server's accept before."""
    (echo,) = echoes.start("echo")
    port = free_port()
    docs, cert = https_docs(port, echo)
    daemon = gatewayd(docs, args=["--workers", "2", "--access-log", "off"])
    pids = worker_pids(daemon)
    client = ssl.create_default_context(cadata=cert.decode())

    def wrap(s: socket.socket) -> socket.socket:
        return client.wrap_socket(s, server_hostname="spread.test")

    assert_fair_split(port, pids, 64, wrap)


def test_failed_tls_handshakes_are_still_counted_and_quiet_with_workers(  # type: ignore[no-untyped-def]
    echoes, gatewayd
) -> None:
    """Handshakes that fail after a fair accept are counted by reason, summed over the
    workers, and log no traceback; a good client is served meanwhile."""
    (echo,) = echoes.start("echo")
    port = free_port()
    docs, cert = https_docs(port, echo)
    daemon = gatewayd(docs, args=["--workers", "2", "--access-log", "off"])
    client = ssl.create_default_context(cadata=cert.decode())
    for _ in range(6):
        plain = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: spread.test\r\n\r\n")
        assert plain.closed and plain.status is None, plain
        with (
            socket.create_connection((LOCALHOST, port), timeout=5) as raw,
            pytest.raises(ssl.SSLError),
        ):
            client.wrap_socket(raw, server_hostname="other.test")
    with (
        socket.create_connection((LOCALHOST, port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="spread.test") as tls,
    ):
        tls.sendall(b"GET /still HTTP/1.1\r\nHost: spread.test\r\n\r\n")
        assert read_response_head(tls)[0].startswith(b"HTTP/1.1 200 ")
    label = daemon.listener_label(port)
    errors: dict[str, float] = {}
    for _ in deadline_loop(10.0, 0.1):
        samples = prometheus_samples(daemon.metrics(), "gatewayd_tls_handshake_error_total")
        errors = {k["reason"]: v for k, v in samples if k.get("listener") == label}
        if errors.get("not_tls") == 6 and errors.get("unknown_sni") == 6:
            break
    assert errors.get("not_tls") == 6 and errors.get("unknown_sni") == 6, errors
    log = daemon.child.stderr.text()
    assert "Traceback" not in log and "never retrieved" not in log, daemon.output()
