"""Node-local mode end to end, on real kernel paths: clients in their own network
namespaces call ClusterIPs and a Gateway address; nftables in the ``node`` namespace
diverts them to ``gatewayd run --tproxy``; the echo backends say who answered and what
X-Forwarded-For they were given."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_manifests import SERVICE_PORT, UNROUTED_PORT, manifests
from netns_kit import (
    BOOKSTORE_IP,
    CLIENT_A_IP,
    CLIENT_B_IP,
    GATEWAY_IP,
    NODE_IP_BACKENDS,
    PYTHON,
    REVIEWS_IP,
    Proc,
    Topology,
)

ADMIN = "127.0.0.1:9901"
BOOKSTORE_URL = f"http://{BOOKSTORE_IP}:{SERVICE_PORT}/"
SPLIT_REQUESTS = 400


class Daemon:
    """``gatewayd run --tproxy`` inside the node namespace."""

    def __init__(
        self, topo: Topology, workdir: Path, *, grant: bool = True, text: str | None = None
    ) -> None:
        self.topo = topo
        self.config = workdir / "manifests.yaml"
        self.config.write_text(manifests(grant=grant) if text is None else text)
        self.generation = 1
        self.proc: Proc = topo.spawn(
            topo.node,
            [
                PYTHON,
                "-m",
                "gatewayd",
                "run",
                "--config",
                str(self.config),
                "--admin-address",
                ADMIN,
                "--tproxy",
                "--no-watch",
                "--drain-timeout",
                "1",
            ],
            "gatewayd",
        )
        if not self.proc.wait_line("config generation 1 serving", 15.0):
            self.stop()
            raise AssertionError("gatewayd --tproxy did not start\n" + self.proc.output())

    def admin(self, path: str) -> Any:
        script = (
            "import json, urllib.request, sys\n"
            f"print(urllib.request.urlopen('http://{ADMIN}{path}', timeout=5).read().decode())"
        )
        return json.loads(self.topo.ns_exec(self.topo.node, PYTHON, "-c", script))

    def reload(self, *, grant: bool) -> None:
        self.config.write_text(manifests(grant=grant))
        self.generation += 1
        self.proc.signal(signal.SIGHUP)
        line = f"config generation {self.generation} serving"
        assert self.proc.wait_line(line, 10.0), self.proc.output()

    def route_parents(self, namespace: str, name: str) -> list[dict[str, Any]]:
        for item in self.admin("/status")["items"]:
            meta = item["metadata"]
            if item["kind"] == "HTTPRoute" and (meta["namespace"], meta["name"]) == (
                namespace,
                name,
            ):
                return list(item["status"]["parents"])
        raise AssertionError(f"no status for HTTPRoute {namespace}/{name}")

    def stop(self) -> int:
        code = self.proc.stop()
        self.topo.forget(self.proc)
        return code


def kernel_state(topo: Topology) -> dict[str, str]:
    return {
        "nft": topo.ns_exec(topo.node, "nft", "list", "ruleset"),
        "rules4": topo.ns_exec(topo.node, "ip", "-4", "rule"),
        "rules6": topo.ns_exec(topo.node, "ip", "-6", "rule", check=False),
        "table4": topo.ns_exec(topo.node, "ip", "-4", "route", "show", "table", "100", check=False),
        "table6": topo.ns_exec(topo.node, "ip", "-6", "route", "show", "table", "100", check=False),
    }


@pytest.fixture(scope="module")
def daemon(topology: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(topology, tmp_path_factory.mktemp("tproxy"))
    try:
        yield d
    finally:
        d.stop()


def _condition(parent: dict[str, Any], type_: str) -> tuple[str, str]:
    for c in parent["conditions"]:
        if c["type"] == type_:
            return c["status"], c["reason"]
    raise AssertionError(f"no {type_} condition in {parent}")


def test_clusterip_split_90_10_with_the_client_ip_forwarded(daemon: Daemon) -> None:
    records = daemon.topo.http(daemon.topo.client_a, BOOKSTORE_URL, count=SPLIT_REQUESTS)
    assert all(r.get("status") == 200 for r in records), records[:3]
    assert {r["headers"].get("x-route") for r in records} == {"producer"}
    pods = Counter(r["pod"] for r in records)
    assert set(pods) == {"bookstore-v1", "bookstore-v2"}
    # 10% of 400 is 40 (sd 6): [16, 72] is about four sd either side.
    assert 16 <= pods["bookstore-v2"] <= 72, pods
    # X-Forwarded-For is the address the transparent socket saw: the client's own.
    assert {r["xff"] for r in records} == {CLIENT_A_IP}


def test_consumer_route_changes_only_its_namespace(daemon: Daemon) -> None:
    topo = daemon.topo
    b = topo.http(topo.client_b, BOOKSTORE_URL, count=30)
    assert {(r["status"], r["pod"], r["headers"].get("x-route")) for r in b} == {
        (200, "bookstore-v2", "consumer-reviews")
    }
    assert {r["xff"] for r in b} == {CLIENT_B_IP}
    a = topo.http(topo.client_a, BOOKSTORE_URL, count=30)
    assert {r["headers"].get("x-route") for r in a} == {"producer"}
    parents = daemon.route_parents("reviews", "bookstore-consumer")
    assert [p["parentRef"]["kind"] for p in parents] == ["Service"]
    assert parents[0]["parentRef"]["namespace"] == "bookstore"
    assert _condition(parents[0], "Accepted") == ("True", "Accepted")


def test_gateway_address_through_the_diversion(daemon: Daemon) -> None:
    before = daemon.admin("/config_dump")["tproxy"]["connections"]["gateway"]
    records = daemon.topo.http(daemon.topo.client_a, f"http://{GATEWAY_IP}/", count=3)
    assert {(r["status"], r["headers"].get("x-route"), r["xff"]) for r in records} == {
        (200, "gateway", CLIENT_A_IP)
    }
    after = daemon.admin("/config_dump")["tproxy"]["connections"]["gateway"]
    assert after == before + 1  # one keep-alive connection, through the transparent port
    assert f"ip daddr {GATEWAY_IP} tcp dport 80 tproxy" in kernel_state(daemon.topo)["nft"]


def test_unrouted_traffic_passes_through_untouched(daemon: Daemon) -> None:
    topo = daemon.topo
    # A port without routes is not diverted at all: the server sees the client itself.
    plain = topo.tcp(topo.client_a, BOOKSTORE_IP, UNROUTED_PORT, send="hello")
    assert plain.get("text") == f"peer={CLIENT_A_IP} local={BOOKSTORE_IP}:{UNROUTED_PORT}\nhello"
    # ratings has only a consumer route (of reviews): client-a's connection is diverted
    # but forwarded unchanged at L4 (bytes and half-close intact) from the node.
    spliced = topo.tcp(topo.client_a, REVIEWS_IP, SERVICE_PORT, send="not http\n")
    assert spliced.get("text") == (
        f"peer={NODE_IP_BACKENDS} local={REVIEWS_IP}:{SERVICE_PORT}\nnot http\n"
    )
    # ... while reviews' own client gets its consumer route there.
    b = topo.http(topo.client_b, f"http://{REVIEWS_IP}:{SERVICE_PORT}/")
    assert (b[0]["status"], b[0]["headers"].get("x-route")) == (200, "consumer-ratings")
    counts = daemon.admin("/config_dump")["tproxy"]["connections"]
    assert counts["passthrough"] >= 1


def test_consumer_route_without_grant_is_refused(daemon: Daemon) -> None:
    topo = daemon.topo
    daemon.reload(grant=False)
    try:
        parents = daemon.route_parents("reviews", "bookstore-consumer")
        assert _condition(parents[0], "Accepted") == ("False", "RefNotPermitted")
        # reviews' clients fall back to the producer route.
        b = topo.http(topo.client_b, BOOKSTORE_URL, count=20)
        assert {r["headers"].get("x-route") for r in b} == {"producer"}
        # The ruleset followed the reload (bookstore still has its producer route).
        assert f"ip daddr {BOOKSTORE_IP} tcp dport {SERVICE_PORT}" in kernel_state(topo)["nft"]
    finally:
        daemon.reload(grant=True)
    b = topo.http(topo.client_b, BOOKSTORE_URL, count=5)
    assert {r["headers"].get("x-route") for r in b} == {"consumer-reviews"}
