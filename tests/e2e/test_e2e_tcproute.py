"""TCPRoute through ``gatewayd run``: echo with half-close, weights per connection,
backpressure on a large transfer, refused connections, status, access log, metrics."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    MemorySampler,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    listener,
)
from l4_kit import TCPBackend, l4_backend, l4_route

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
STREAM_BYTES = 48 * MIB


class Setup:
    def __init__(self, daemon: Gatewayd, ports: dict[str, int], backends: dict[str, TCPBackend]):
        self.daemon = daemon
        self.ports = ports
        self.backends = backends


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    backends = {
        "a": TCPBackend("a"),
        "b": TCPBackend("b"),
        "stream": TCPBackend("stream", mode="stream", stream_bytes=STREAM_BYTES),
        "other": TCPBackend("other"),
        "late": TCPBackend("late"),
    }
    ports = {name: free_port() for name in ("echo", "weights", "stream", "xns")}
    docs = [
        gateway_class(),
        gateway("gw", [listener(n, p, protocol="TCP") for n, p in ports.items()]),
        *l4_backend("svc-a", backends["a"].port),
        *l4_backend("svc-b", backends["b"].port),
        *l4_backend("svc-stream", backends["stream"].port),
        *l4_backend("svc-late", backends["late"].port),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}},
        *l4_backend("svc-other", backends["other"].port, namespace="other"),
        l4_route("TCPRoute", "echo", [("svc-a", None)], section="echo", created=T0),
        # Younger than "echo" on the same listener: accepted and counted, but the
        # listener's connections go to the oldest (conformance
        # TCPRouteMultipleRoutesAttachment).
        l4_route("TCPRoute", "late", [("svc-late", None)], section="echo", created=T1),
        # gateway.networking.k8s.io/v1 (Gateway API v1.6) and v1alpha2 alike.
        l4_route(
            "TCPRoute", "weights", [("svc-a", 3), ("svc-b", 1)], section="weights", version="v1"
        ),
        # The listener's port as the parentRef's narrowing (ParentReference.Port).
        l4_route("TCPRoute", "stream", [("svc-stream", None)], port=ports["stream"]),
        # A backend in another namespace without a ReferenceGrant.
        l4_route("TCPRoute", "xns", [("svc-other", None, "other")], section="xns"),
    ]
    daemon = Gatewayd(tmp_path_factory.mktemp("tcproute"), docs)
    yield Setup(daemon, ports, backends)
    daemon.stop()
    for b in backends.values():
        b.close()


T0 = "2024-01-01T00:00:00Z"
T1 = "2024-01-02T00:00:00Z"


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, port), timeout=10)
    sock.settimeout(10)
    return sock


def read_line(sock: socket.socket) -> bytes:
    buf = b""
    for _ in range(256):
        if buf.endswith(b"\n"):
            break
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def read_all(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    out = b""
    while len(out) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def conditions(parent: dict[str, object]) -> dict[str, tuple[object, object]]:
    conds = parent["conditions"]
    assert isinstance(conds, list)
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


def wait_output(daemon: Gatewayd, needle: str, timeout: float = 5.0) -> str:
    for _ in deadline_loop(timeout):
        out = daemon.output()
        for line in out.splitlines():
            if needle in line:
                return line
    raise AssertionError(f"no output line with {needle!r}:\n{daemon.output()[-3000:]}")


def test_echo_through_with_half_close(setup: Setup) -> None:
    with connect(setup.ports["echo"]) as sock:
        assert read_line(sock) == b"a\n"
        sock.sendall(b"hello over tcp")
        got = b""
        for _ in range(100):
            if len(got) >= 14:
                break
            got += sock.recv(64)
        assert got == b"hello over tcp"
        # Our FIN reaches the backend, whose reply still flows back (half-close).
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock) == b"bye from a\n"
    line = wait_output(setup.daemon, f'"127.0.0.1:{setup.backends["a"].port}"')
    assert '"default/echo/rule/0"' in line
    assert " 14 " in line  # bytes received from the client


def test_weights_per_connection(setup: Setup) -> None:
    counts = {b"a\n": 0, b"b\n": 0}
    for _ in range(80):
        with connect(setup.ports["weights"]) as sock:
            counts[read_line(sock)] += 1
    # weight 3:1 -> 60:20 expected; binomial sd ~3.9.
    assert 45 <= counts[b"a\n"] <= 74, counts
    assert counts[b"a\n"] + counts[b"b\n"] == 80


def test_large_transfer_is_flow_controlled(setup: Setup) -> None:
    daemon = setup.daemon
    with MemorySampler(daemon) as sampler, connect(setup.ports["stream"]) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        # A client that does not read for a while: the backend must be paused, not
        # buffered in gatewayd.
        time.sleep(1.0)
        total = 0
        pattern = bytes(range(256))
        started = time.monotonic()
        while total < STREAM_BYTES and time.monotonic() - started < 60:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            offset = total % 256
            assert chunk[:16] == (pattern[offset:] + pattern)[:16][: len(chunk[:16])]
            total += len(chunk)
        assert total == STREAM_BYTES
        assert sock.recv(1) == b""
    growth = sampler.peak_growth_kb()
    assert growth < 16 * 1024, f"RSS grew {growth} kB during a {STREAM_BYTES // MIB} MiB splice"


def test_invalid_backend_refuses_connections(setup: Setup) -> None:
    with connect(setup.ports["xns"]) as sock:
        assert read_all(sock) == b""
    assert setup.backends["other"].accepted == 0
    metrics = setup.daemon.metrics()
    assert (
        f'gatewayd_tcp_route_cx_total{{listener="127.0.0.1:{setup.ports["xns"]}",'
        'result="invalid_backend"}' in metrics
    )


def test_status(setup: Setup) -> None:
    d = setup.daemon
    echo = d.status_of("TCPRoute", "echo")["parents"][0]
    assert conditions(echo) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    late = conditions(d.status_of("TCPRoute", "late")["parents"][0])
    assert late["Accepted"] == ("True", "Accepted")
    stream = conditions(d.status_of("TCPRoute", "stream")["parents"][0])
    assert stream["Accepted"] == ("True", "Accepted")
    xns = conditions(d.status_of("TCPRoute", "xns")["parents"][0])
    assert xns["Accepted"] == ("True", "Accepted")
    assert xns["ResolvedRefs"] == ("False", "RefNotPermitted")
    gw = d.status_of("Gateway", "gw")
    by_name = {ls["name"]: ls for ls in gw["listeners"]}
    assert by_name["echo"]["attachedRoutes"] == 2
    # Only the oldest route is served: the younger one's backend never got a connection.
    assert setup.backends["late"].accepted == 0
    assert by_name["echo"]["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "TCPRoute"}
    ]
    assert all(conditions(ls)["Programmed"][0] == "True" for ls in gw["listeners"])
    features = {
        f["name"]
        for f in d.status_of("GatewayClass", "gatewayd", namespace=None)["supportedFeatures"]
    }
    assert {"TCPRoute", "UDPRoute"} <= features
    metrics = d.metrics()
    assert (
        f'gatewayd_tcp_route_cx_total{{listener="127.0.0.1:{setup.ports["echo"]}",'
        'result="spliced"}' in metrics
    )
