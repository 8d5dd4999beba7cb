"""Node-local mode over IPv6, end to end on real kernel paths: the same dual-stack
namespaces as ``test_node_local``, a daemon serving ``manifests_v6()`` (IPv6 ClusterIPs,
``addressType: IPv6`` endpoints, an IPv6 Gateway address), clients calling
``[ClusterIP]:port`` and ``[Gateway]:80``; ``nft`` and ``ip -6`` show what was
installed and what shutdown removed.  Skipped where the kernel has no IPv6 TPROXY."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest
from mesh_manifests import SERVICE_PORT, UNROUTED_PORT, V1_PORT, V2_PORT, V6_SPLIT, manifests_v6
from netns_kit import (
    BACKENDS_IP6,
    BOOKSTORE_IP6,
    CLIENT_A_IP6,
    CLIENT_B_IP,
    CLIENT_B_IP6,
    GATEWAY_IP6,
    HERE,
    NODE_IP6_BACKENDS,
    NODE_IP_BACKENDS,
    PYTHON,
    REVIEWS_IP,
    REVIEWS_IP6,
    ROOT,
    Topology,
    child_env,
)
from test_node_local import Daemon, kernel_state

BOOKSTORE_URL = f"http://[{BOOKSTORE_IP6}]:{SERVICE_PORT}/"
SPLIT_REQUESTS = 200


@pytest.fixture(scope="module")
def daemon6(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    if topology.no_ipv6 is not None:
        pytest.skip(topology.no_ipv6)
    procs = [
        topology.spawn(
            topology.backends,
            [
                PYTHON,
                "-m",
                "gatewayd",
                "echo",
                "--listen",
                f"[{BACKENDS_IP6}]:{port}",
                "--name",
                name,
                "--namespace",
                "bookstore",
            ],
            f"{name} (IPv6)",
        )
        for name, port in (("bookstore-v1", V1_PORT), ("bookstore-v2", V2_PORT))
    ]
    peers = topology.spawn(
        topology.backends,
        [
            PYTHON,
            str(HERE / "peer_server.py"),
            f"[{BOOKSTORE_IP6}]:{UNROUTED_PORT}",
            f"[{REVIEWS_IP6}]:{SERVICE_PORT}",
        ],
        "peer-server (IPv6)",
    )
    procs.append(peers)
    d: Daemon | None = None
    try:
        if not peers.wait_line("ready", 10.0):
            raise AssertionError("IPv6 peer server did not start\n" + topology.outputs())
        for proc in procs[:2]:
            if not proc.wait_line("listening on", 10.0):
                raise AssertionError("IPv6 echo backend did not start\n" + topology.outputs())
        d = Daemon(topology, tmp_path_factory.mktemp("tproxy6"), text=manifests_v6())
        yield d
    finally:
        if d is not None:
            d.stop()
        for proc in procs:
            proc.stop()
            topology.forget(proc)


def test_ipv6_clusterip_split_with_the_client_address_forwarded(daemon6: Daemon) -> None:
    topo = daemon6.topo
    before = daemon6.admin("/config_dump")["tproxy"]["connections"]["mesh"]
    records = topo.http(topo.client_a, BOOKSTORE_URL, count=SPLIT_REQUESTS)
    assert all(r.get("status") == 200 for r in records), records[:3]
    assert {r["headers"].get("x-route") for r in records} == {"producer"}
    pods = Counter(r["pod"] for r in records)
    assert set(pods) == {"bookstore-v1", "bookstore-v2"}
    # 25% of 200 is 50 (sd 6.1): [26, 74] is about four sd either side.
    share = SPLIT_REQUESTS * V6_SPLIT[1] // sum(V6_SPLIT)
    assert share - 24 <= pods["bookstore-v2"] <= share + 24, pods
    # X-Forwarded-For is the client's IPv6 address as the transparent socket saw it:
    # bare, compressed, no brackets and no port.
    assert {r["xff"] for r in records} == {CLIENT_A_IP6}
    dump = daemon6.admin("/config_dump")
    assert dump["tproxy"]["connections"]["mesh"] == before + 1  # one keep-alive connection
    assert "ipv6" in dump["tproxy"]["families"]
    # The mesh table shows IPv6 endpoints bracketed: "fd00:231:3::2:8081" is ambiguous.
    assert {f"[{BACKENDS_IP6}]:{V1_PORT}", f"[{BACKENDS_IP6}]:{V2_PORT}"} <= _endpoints(
        dump["mesh"]
    )


def _endpoints(doc: object) -> set[str]:
    """Every string listed under an "endpoints" key anywhere in ``doc``."""
    if isinstance(doc, dict):
        found = set()
        for key, value in doc.items():
            if key == "endpoints" and isinstance(value, list):
                found |= {v for v in value if isinstance(v, str)}
            else:
                found |= _endpoints(value)
        return found
    if isinstance(doc, list):
        return set().union(*(_endpoints(v) for v in doc))
    return set()


def test_ipv6_consumer_route_for_its_namespace_and_splice_for_others(daemon6: Daemon) -> None:
    topo = daemon6.topo
    url = f"http://[{REVIEWS_IP6}]:{SERVICE_PORT}/"
    # client-b's IPv6 source address maps to its Pod in "reviews": the consumer route.
    b = topo.http(topo.client_b, url, count=3)
    assert {(r["status"], r["headers"].get("x-route"), r["xff"]) for r in b} == {
        (200, "consumer-ratings", CLIENT_B_IP6)
    }
    # client-a (namespace shop) has no route there: diverted, then forwarded unchanged
    # at L4 from the node over a marked IPv6 connection.
    before = daemon6.admin("/config_dump")["tproxy"]["connections"]["passthrough"]
    spliced = topo.tcp(topo.client_a, REVIEWS_IP6, SERVICE_PORT, send="not http\n")
    assert spliced.get("text") == (
        f"peer={NODE_IP6_BACKENDS} local={REVIEWS_IP6}:{SERVICE_PORT}\nnot http\n"
    ), spliced
    after = daemon6.admin("/config_dump")["tproxy"]["connections"]["passthrough"]
    assert after == before + 1


def test_dual_stack_service_is_diverted_on_both_cluster_ips(daemon6: Daemon) -> None:
    topo = daemon6.topo
    nft = kernel_state(topo)["nft"]
    assert f"ip6 daddr {REVIEWS_IP6} tcp dport {SERVICE_PORT} tproxy ip6" in nft, nft
    assert f"ip daddr {REVIEWS_IP} tcp dport {SERVICE_PORT} tproxy ip" in nft, nft
    # Over IPv4 too, client-b's (second) Pod IP puts it in "reviews": its consumer route.
    b = topo.http(topo.client_b, f"http://{REVIEWS_IP}:{SERVICE_PORT}/", count=2)
    assert {(r["status"], r["headers"].get("x-route"), r["xff"]) for r in b} == {
        (200, "consumer-ratings", CLIENT_B_IP)
    }
    spliced = topo.tcp(topo.client_a, REVIEWS_IP, SERVICE_PORT, send="v4")
    assert spliced.get("text") == f"peer={NODE_IP_BACKENDS} local={REVIEWS_IP}:{SERVICE_PORT}\nv4"


def test_ipv6_gateway_address_through_the_diversion(daemon6: Daemon) -> None:
    before = daemon6.admin("/config_dump")["tproxy"]["connections"]["gateway"]
    records = daemon6.topo.http(daemon6.topo.client_a, f"http://[{GATEWAY_IP6}]/", count=3)
    assert {(r["status"], r["headers"].get("x-route"), r["xff"]) for r in records} == {
        (200, "gateway", CLIENT_A_IP6)
    }
    after = daemon6.admin("/config_dump")["tproxy"]["connections"]["gateway"]
    assert after == before + 1  # one keep-alive connection, through the transparent port


def test_ipv6_unrouted_port_passes_through_untouched(daemon6: Daemon) -> None:
    topo = daemon6.topo
    before = daemon6.admin("/config_dump")["tproxy"]["connections"]
    plain = topo.tcp(topo.client_a, BOOKSTORE_IP6, UNROUTED_PORT, send="hello")
    # Not diverted at all: the server sees the client itself, and gatewayd nothing.
    assert plain.get("text") == f"peer={CLIENT_A_IP6} local={BOOKSTORE_IP6}:{UNROUTED_PORT}\nhello"
    assert daemon6.admin("/config_dump")["tproxy"]["connections"] == before


def test_ipv6_rules_in_the_kernel_and_in_the_dry_run(daemon6: Daemon) -> None:
    topo = daemon6.topo
    state = kernel_state(topo)
    nft = state["nft"]
    for address, port in ((BOOKSTORE_IP6, SERVICE_PORT), (REVIEWS_IP6, SERVICE_PORT)):
        assert f"ip6 daddr {address} tcp dport {port} tproxy ip6 to :15001" in nft, nft
    assert f"ip6 daddr {GATEWAY_IP6} tcp dport 80 tproxy ip6 to :15001" in nft, nft
    assert f"dport {UNROUTED_PORT}" not in nft
    assert "fwmark 0x1 lookup 100" in state["rules6"], state["rules6"]
    assert "local default dev lo" in state["table6"], state["table6"]
    # The dry run in the same namespace (where the Gateway address is local) prints the
    # same IPv6 rules and the ip -6 policy routing, installing nothing.
    argv = ["--config", str(daemon6.config), "--tproxy-dry-run"]
    done = subprocess.run(
        ["ip", "netns", "exec", topo.node, PYTHON, "-m", "gatewayd", "run", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"ip6 daddr {BOOKSTORE_IP6} tcp dport {SERVICE_PORT} tproxy ip6 to :15001" in out
    assert f"ip6 daddr {GATEWAY_IP6} tcp dport 80 tproxy ip6 to :15001" in out
    assert "ip -6 rule add fwmark 0x1 lookup 100" in out
    assert "ip -6 route replace local default dev lo table 100" in out
    assert f"dport {UNROUTED_PORT}" not in out


def test_ipv6_shutdown_removes_the_ipv6_rule_and_route(daemon6: Daemon) -> None:
    # Runs last in this module: it stops the module's daemon (the fixture's stop is
    # idempotent).
    topo = daemon6.topo
    up = kernel_state(topo)
    assert "fwmark 0x1 lookup 100" in up["rules6"]
    code = daemon6.stop()
    assert code == 0, daemon6.proc.output()
    # The access log (flushed at shutdown) names each IPv6 upstream as Envoy's
    # %UPSTREAM_HOST% does: [address]:port.
    log = "\n".join(daemon6.proc.lines)
    assert f'"[{BACKENDS_IP6}]:{V1_PORT}"' in log, daemon6.proc.output()
    assert f'"{BACKENDS_IP6}:{V1_PORT}"' not in log
    down = kernel_state(topo)
    assert "gatewayd" not in down["nft"]
    assert "fwmark" not in down["rules6"], down["rules6"]
    assert "local" not in down["table6"], down["table6"]
    # Nothing is diverted any more: the ClusterIP is what kube-proxy would serve.
    plain = topo.tcp(topo.client_a, REVIEWS_IP6, SERVICE_PORT, send="bye")
    assert plain.get("text") == f"peer={CLIENT_A_IP6} local={REVIEWS_IP6}:{SERVICE_PORT}\nbye"
