"""TCPRoute and UDPRoute in ``gatewayd run --kubernetes``: read from an API-server
double serving them at v1alpha2 only (a cluster with the experimental CRDs of Gateway
API before v1.6), served, and their status written back at that version."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from e2e_kit import LOCALHOST, free_port, gateway, gateway_class, listener
from kits.apiserver import ApiServerDouble
from l4_kit import TCPBackend, UDPBackend, free_udp_port, l4_backend, l4_route, udp_ask
from test_e2e_kubernetes import KubeGatewayd

pytestmark = pytest.mark.e2e

GW = "gateway.networking.k8s.io"


def accepted(api: ApiServerDouble, plural: str, name: str) -> bool:
    obj: dict[str, Any] = api.get(GW, plural, name, namespace="default")
    parents = obj.get("status", {}).get("parents", [])
    return any(
        c["type"] == "Accepted" and c["status"] == "True"
        for p in parents
        for c in p.get("conditions", [])
    )


def test_tcp_and_udp_routes_from_the_api_server(tmp_path: Path) -> None:
    tcp_backend, udp_backend = TCPBackend("t"), UDPBackend("u")
    tcp_port, udp_port = free_port(), free_udp_port()
    try:
        omit = [f"{GW}/v1/tcproutes", f"{GW}/v1/udproutes"]
        with ApiServerDouble(omit=omit) as api:
            for doc in [
                gateway_class(),
                gateway(
                    "gw",
                    [
                        listener("tcp", tcp_port, protocol="TCP"),
                        listener("udp", udp_port, protocol="UDP"),
                    ],
                ),
                *l4_backend("svc-t", tcp_backend.port),
                *l4_backend("svc-u", udp_backend.port, protocol="UDP"),
                l4_route("TCPRoute", "t", [("svc-t", None)]),
                l4_route("UDPRoute", "u", [("svc-u", None)]),
            ]:
                api.create(doc)
            kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
            daemon = KubeGatewayd(tmp_path / "gatewayd", ["--kubeconfig", str(kubeconfig)])
            try:
                api.wait_for(lambda: accepted(api, "tcproutes", "t"), 15.0)
                api.wait_for(lambda: accepted(api, "udproutes", "u"), 15.0)
                # Written at the version the cluster serves for the kind.  (The double
                # logs a request after handling it: the status can be seen first.)
                api.wait_for(
                    lambda: any(
                        "/v1alpha2/namespaces/default/tcproutes/t/status" in r.path
                        for r in api.requests(verb="patch")
                    ),
                    5.0,
                )
                with socket.create_connection((LOCALHOST, tcp_port), timeout=5) as sock:
                    sock.settimeout(5)
                    assert sock.recv(2) == b"t\n"
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.connect((LOCALHOST, udp_port))
                    assert udp_ask(sock, b"ping") == b"u:ping"
            finally:
                daemon.stop()
    finally:
        tcp_backend.close()
        udp_backend.close()
