"""Two ``gatewayd run --kubernetes`` replicas against the API-server double: both serve,
only the Lease holder writes status, a SIGKILLed leader is replaced, a quiet cluster
gets no PATCH.

The replicas take Gateway addresses from different pools (they share the machine), so
each one's status is told apart by the address it reports.  Lease timings are scaled
down by the flags (4 s lease, 3 s renew deadline, 0.5 s retry); the defaults are
client-go's 15/10/2."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e_kit import (
    LOCALHOST,
    Child,
    EchoFactory,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    gatewayd_argv,
    http_route,
    listener,
    request,
    rule,
)
from kits.apiserver import ApiServerDouble

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GW_GROUP = "gateway.networking.k8s.io"
LEASE_NS = "gatewayd-system"
LEASE_NAME = "gatewayd-status"


def _parent(gateway: str, controller: str) -> dict[str, Any]:
    return {
        "parentRef": {
            "group": GW_GROUP,
            "kind": "Gateway",
            "namespace": "default",
            "name": gateway,
        },
        "controllerName": controller,
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "reason": "Accepted",
                "message": "accepted",
                "observedGeneration": 1,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    }


STALE_OURS = _parent("gone", "gatewayd.dev/gateway-controller")
FOREIGN = _parent("theirs", "example.net/other-controller")


class Replica:
    def __init__(self, workdir: Path, name: str, kubeconfig: Path, pool: str) -> None:
        self.name = name
        self.admin_port = free_port()
        self.child = Child(
            gatewayd_argv(
                "run",
                "--kubernetes",
                "--kubeconfig",
                str(kubeconfig),
                "--admin-address",
                f"{LOCALHOST}:{self.admin_port}",
                "--workers",
                "1",
                "--address-pool",
                pool,
                "--leader-election-namespace",
                LEASE_NS,
                "--leader-election-id",
                name,
                "--leader-election-lease-duration",
                "4",
                "--leader-election-renew-deadline",
                "3",
                "--leader-election-retry-period",
                "0.5",
            ),
            f"gatewayd-{name}",
            cwd=workdir,
        )

    def admin(self, path: str) -> str:
        url = f"http://{LOCALHOST}:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=2.0) as resp:
            return str(resp.read().decode())

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.admin("/status"))
        return doc

    def try_status(self) -> dict[str, Any] | None:
        try:
            return self.status()
        except OSError:
            return None

    def writeback(self) -> dict[str, Any]:
        state: dict[str, Any] = self.status()["config"]["statusWriteback"]
        return state

    def is_leader(self) -> bool:
        return bool(self.writeback()["leaderElection"]["leader"])

    def address(self) -> str:
        """The Gateway address this replica computed and serves (its own pool)."""
        for item in self.status()["items"]:
            if item["kind"] == "Gateway":
                return str(item["status"]["addresses"][0]["value"])
        raise AssertionError(f"{self.name}: no Gateway in /status")

    def wait_ready(self, timeout: float = 20.0) -> None:
        for _ in deadline_loop(timeout):
            if not self.child.alive():
                break
            doc = self.try_status()
            if doc is not None and any(i["kind"] == "Gateway" for i in doc.get("items", [])):
                return
        raise AssertionError(f"{self.name} did not load in {timeout}s\n{self.child.output()}")


def gateway_patches(api: ApiServerDouble) -> list[str]:
    """The bodies of PATCHes to the Gateway's status, as text."""
    return [
        json.dumps(r.body)
        for r in api.requests(verb="patch", path_contains="/gateways/gw/status")
        if r.status == 200
    ]


def test_two_replicas_serve_one_writes_status_and_a_killed_leader_is_replaced(
    tmp_path: Path, echoes: EchoFactory
) -> None:
    [echo] = echoes.start("echo")
    port = free_port()
    with ApiServerDouble() as api:
        for doc in [
            gateway_class(),
            gateway("gw", [listener("http", port)], address=None),
            http_route("r", [rule(backends=[backend_ref("echo")])]),
            *echo.manifests(),
            # Detached while no gatewayd ran: our entry must go, the other stays.
            {
                **http_route("stale", [rule(backends=[backend_ref("echo")])], parent="gone"),
                "status": {"parents": [STALE_OURS, FOREIGN]},
            },
        ]:
            api.create(doc)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        replicas = [
            Replica(tmp_path, "replica-a", kubeconfig, "127.0.11.0/24"),
            Replica(tmp_path, "replica-b", kubeconfig, "127.0.12.0/24"),
        ]
        try:
            for r in replicas:
                r.wait_ready()
            # Exactly one leader, and the Lease names it.
            for _ in deadline_loop(10.0):
                if sum(r.is_leader() for r in replicas) == 1:
                    break
            leaders = [r for r in replicas if r.is_leader()]
            assert len(leaders) == 1, [r.writeback() for r in replicas]
            leader = leaders[0]
            [follower] = [r for r in replicas if r is not leader]
            lease = api.get("coordination.k8s.io", "leases", LEASE_NAME, namespace=LEASE_NS)
            assert lease["spec"]["holderIdentity"] == leader.name

            # gatewayd_leader says the same on each replica's metrics.
            for r, value in ((leader, "1.0"), (follower, "0.0")):
                metrics = r.admin("/stats/prometheus")
                assert f'gatewayd_leader{{lease="{LEASE_NS}/{LEASE_NAME}"}} {value}' in metrics

            # Both serve, each on the address of its own pool.
            for r in replicas:
                echo_doc = request(port, address=r.address()).echo()
                assert echo_doc["pod"] == "echo"

            # The leader's statuses reach the API server.
            leader_addr, follower_addr = leader.address(), follower.address()
            api.wait_for(lambda: any(leader_addr in b for b in gateway_patches(api)), 10.0)
            gw = api.get(GW_GROUP, "gateways", "gw", namespace="default")
            assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": leader_addr}]
            route = api.get(GW_GROUP, "httproutes", "r", namespace="default")
            [entry] = route["status"]["parents"]
            assert entry["controllerName"] == "gatewayd.dev/gateway-controller"
            assert {c["type"]: c["status"] for c in entry["conditions"]} == {
                "Accepted": "True",
                "ResolvedRefs": "True",
            }
            api.wait_for(
                lambda: (
                    api.get(GW_GROUP, "httproutes", "stale", namespace="default")["status"][
                        "parents"
                    ]
                    == [FOREIGN]
                ),
                10.0,
            )
            cls = api.get(GW_GROUP, "gatewayclasses", "gatewayd")
            assert {"name": "HTTPRoute"} in cls["status"]["supportedFeatures"]
            # The follower computed its own (shown on its /status) and wrote nothing.
            assert follower.writeback()["sink"]["patches"] == 0
            assert follower.writeback()["sink"]["gets"] == 0
            assert not any(follower_addr in b for b in gateway_patches(api))

            # A quiet cluster: once the leader's queue is empty, no PATCH for 5 s (its
            # own writes come back as watch events and rebuilds: they change nothing).
            for _ in deadline_loop(10.0):
                sink = leader.writeback()["sink"]
                if sink["queued"] == 0 and sink["inFlight"] == 0:
                    break
            time.sleep(1.0)  # the watch events of the last writes, and their rebuild
            api.clear_requests()
            time.sleep(5.0)
            assert api.requests(verb="patch") == []
            assert api.requests(verb="update", path_contains="/status") == []
            # Only the Lease is written meanwhile (its renewals).
            assert {r.path.rsplit("/", 1)[0] for r in api.requests(verb="PUT")} <= {
                f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases"
            }

            # SIGKILL the leader: no release; the follower takes over after expiry.
            killed_at = time.monotonic()
            os.kill(leader.child.pid, signal.SIGKILL)
            leader.child.proc.wait(5.0)
            api.wait_for(lambda: any(follower_addr in b for b in gateway_patches(api)), 30.0)
            took = time.monotonic() - killed_at
            assert took < 30.0
            print(f"takeover after SIGKILL: {took:.2f}s (lease 4 s, retry 0.5 s)")
            assert follower.is_leader()
            lease = api.get("coordination.k8s.io", "leases", LEASE_NAME, namespace=LEASE_NS)
            assert lease["spec"]["holderIdentity"] == follower.name
            gw = api.get(GW_GROUP, "gateways", "gw", namespace="default")
            assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": follower_addr}]
            # It still serves.
            assert request(port, address=follower_addr).echo()["pod"] == "echo"

            # A graceful stop releases the Lease.
            assert follower.child.stop() == 0
            lease = api.get("coordination.k8s.io", "leases", LEASE_NAME, namespace=LEASE_NS)
            assert lease["spec"]["holderIdentity"] == ""
            for r in replicas:
                assert "Traceback" not in r.child.output(), r.child.output()
        except BaseException:
            for r in replicas:
                print(r.child.output())
            raise
        finally:
            for r in replicas:
                r.child.stop()
