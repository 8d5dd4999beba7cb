"""UDPRoute through ``gatewayd run``: request/response for several clients, one flow
per client (weights per flow, order kept), flow idle expiry, the flow table bound and
the datagram size bound."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from e2e_kit import LOCALHOST, Gatewayd, deadline_loop, gateway, gateway_class, listener
from l4_kit import (
    TCPBackend,
    UDPBackend,
    free_tcp_and_udp_port,
    free_udp_port,
    l4_backend,
    l4_route,
    udp_ask,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def backends() -> Iterator[dict[str, UDPBackend]]:
    started = {"a": UDPBackend("a"), "b": UDPBackend("b")}
    yield started
    for b in started.values():
        b.close()


def start(
    tmp_path_factory: pytest.TempPathFactory,
    backends: dict[str, UDPBackend],
    weights: dict[str, int],
    args: tuple[str, ...] = (),
) -> tuple[Gatewayd, int]:
    port = free_udp_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("dns", port, protocol="UDP")]),
        *(
            d
            for name, b in backends.items()
            for d in l4_backend(f"udp-{name}", b.port, protocol="UDP")
        ),
        l4_route("UDPRoute", "dns", [(f"udp-{n}", w) for n, w in weights.items()]),
    ]
    return Gatewayd(tmp_path_factory.mktemp("udproute"), docs, args=args), port


def client(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCALHOST, 0))
    sock.connect((LOCALHOST, port))
    return sock


def metric(daemon: Gatewayd, prefix: str) -> float:
    text = daemon.metrics()
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {prefix} in:\n{text}")


def test_several_clients_one_flow_each_in_order(
    tmp_path_factory: pytest.TempPathFactory, backends: dict[str, UDPBackend]
) -> None:
    daemon, port = start(tmp_path_factory, backends, {"a": 1, "b": 1})
    try:
        clients = [client(port) for _ in range(16)]
        chosen: dict[int, bytes] = {}
        for i, sock in enumerate(clients):
            for seq in range(10):
                # A DNS-like exchange: one query datagram, one answer datagram.
                query = f"q{i}-{seq}".encode()
                answer = udp_ask(sock, query)
                assert answer is not None, f"client {i} query {seq}: no answer"
                name, _, echoed = answer.partition(b":")
                assert echoed == query
                # Every datagram of a client's flow reaches the backend its first one chose.
                assert chosen.setdefault(i, name) == name
        # Weight 1:1 per flow: both backends got clients (all 16 on one: p = 2**-15).
        assert set(chosen.values()) == {b"a", b"b"}
        # Each flow has one upstream socket, and its datagrams arrived in order.
        flows = [seen for b in backends.values() for seen in b.seen.values()]
        assert len(flows) == 16
        for seen in flows:
            i = int(seen[0].split(b"-")[0][1:])
            assert seen == [f"q{i}-{seq}".encode() for seq in range(10)]
        status = daemon.status_of("UDPRoute", "dns")["parents"][0]
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Accepted": "True",
            "ResolvedRefs": "True",
        }
        listeners = daemon.status_of("Gateway", "gw")["listeners"]
        assert listeners[0]["attachedRoutes"] == 1
        label = f'listener="127.0.0.1:{port}"'
        assert metric(daemon, f"gatewayd_udp_flows_total{{{label}}}") == 16
        assert metric(daemon, f'gatewayd_udp_datagrams_total{{direction="rx",{label}}}') == 160
        for sock in clients:
            sock.close()
    finally:
        daemon.stop()


def test_idle_expiry_table_bound_and_size_bound(
    tmp_path_factory: pytest.TempPathFactory, backends: dict[str, UDPBackend]
) -> None:
    daemon, port = start(
        tmp_path_factory,
        backends,
        {"a": 1},
        args=("--udp-idle-timeout", "0.5", "--udp-max-flows", "2", "--udp-max-datagram", "512"),
    )
    label = f'listener="127.0.0.1:{port}"'
    c1, c2, c3 = client(port), client(port), client(port)
    try:
        assert udp_ask(c1, b"one") == b"a:one"
        assert udp_ask(c2, b"two") == b"a:two"
        # The table holds 2 flows: a third client's datagram is dropped, the others go on.
        assert udp_ask(c3, b"three", timeout=0.3) is None
        assert metric(daemon, f'gatewayd_udp_dropped_total{{{label},reason="table_full"}}') >= 1
        first_upstream = backends["a"].sources()
        assert len(first_upstream) == 2
        # Idle flows end after 0.5 s: gauge back to 0, one access-log line each.
        for _ in deadline_loop(5.0):
            if metric(daemon, f"gatewayd_udp_flows_active{{{label}}}") == 0:
                break
        else:
            raise AssertionError("UDP flows did not expire\n" + daemon.output()[-2000:])
        c1_addr = f"127.0.0.1:{c1.getsockname()[1]}"
        for _ in deadline_loop(5.0):
            lines = [ln for ln in daemon.output().splitlines() if c1_addr in ln]
            if lines:
                break
        assert lines and '"idle_timeout"' in lines[0] and '"default/dns/rule/0"' in lines[0]
        # Room again: the third client gets a flow; the first one gets a new flow with
        # a new upstream socket.
        assert udp_ask(c3, b"three") == b"a:three"
        assert udp_ask(c1, b"again") == b"a:again"
        assert len(backends["a"].sources() - first_upstream) == 2
        # Datagrams over --udp-max-datagram are dropped, not truncated.
        assert udp_ask(c1, b"x" * 600, timeout=0.3) is None
        assert metric(daemon, f'gatewayd_udp_dropped_total{{{label},reason="too_big"}}') >= 1
        assert udp_ask(c1, b"x" * 500) == b"a:" + b"x" * 500
    finally:
        for sock in (c1, c2, c3):
            sock.close()
        daemon.stop()


def test_tcp_and_udp_with_several_workers(
    tmp_path_factory: pytest.TempPathFactory, backends: dict[str, UDPBackend]
) -> None:
    """With --workers 2 the workers splice TCP connections and the daemon process
    serves the UDP flows; both on the same port number."""
    tcp_backend = TCPBackend("t")
    port = free_tcp_and_udp_port()  # the same number serves TCP and UDP
    docs = [
        gateway_class(),
        gateway(
            "gw",
            [listener("dns", port, protocol="UDP"), listener("dns-tcp", port, protocol="TCP")],
        ),
        *l4_backend("udp-a", backends["a"].port, protocol="UDP"),
        *l4_backend("tcp-t", tcp_backend.port),
        l4_route("UDPRoute", "dns", [("udp-a", None)]),
        l4_route("TCPRoute", "dns-tcp", [("tcp-t", None)]),
    ]
    daemon = Gatewayd(tmp_path_factory.mktemp("l4workers"), docs, args=("--workers", "2"))
    try:
        for i in range(4):
            with socket.create_connection((LOCALHOST, port), timeout=5) as sock:
                sock.settimeout(5)
                assert sock.recv(2) == b"t\n"
            with client(port) as sock:
                assert udp_ask(sock, f"q{i}".encode()) == f"a:q{i}".encode()
        assert tcp_backend.accepted == 4
    finally:
        daemon.stop()
        tcp_backend.close()
