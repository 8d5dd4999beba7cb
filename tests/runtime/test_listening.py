"""The start-up `listening:` lines and the /ready reason, from real configurations."""

from __future__ import annotations

from pathlib import Path

import yaml

from gatewayd.pipeline import ConfigPipeline
from gatewayd.runtime.listening import listening_lines, not_served_reason
from gatewayd.tls.certs import secret_manifest, self_signed

GW = "gateway.networking.k8s.io/v1"
CONTROLLER = "gatewayd.dev/gateway-controller"


def gateway(listeners: list[dict[str, object]], addresses: list[str] | None) -> dict[str, object]:
    spec: dict[str, object] = {"gatewayClassName": "mine", "listeners": listeners}
    if addresses is not None:
        spec["addresses"] = [{"type": "IPAddress", "value": a} for a in addresses]
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "edge"}, "spec": spec}


def lines_for(
    tmp_path: Path, docs: list[dict[str, object]], pool: str, extra: str = ""
) -> list[str]:
    gc = {
        "apiVersion": GW,
        "kind": "GatewayClass",
        "metadata": {"name": "mine"},
        "spec": {"controllerName": CONTROLLER},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump_all([gc, *docs]) + extra)
    built = ConfigPipeline([str(tmp_path)], address_pool=pool).build()
    return listening_lines(built.snapshot, built.load.config.gateways, failed=(), address_pool=pool)


def test_a_gateway_address_is_the_url_without_a_note(tmp_path: Path) -> None:
    docs = [gateway([{"name": "http", "protocol": "HTTP", "port": 18001}], ["127.0.0.1"])]
    assert lines_for(tmp_path, docs, "127.0.10.0/24") == [
        "listening: gateway default/edge listener http HTTP on http://127.0.0.1:18001"
    ]


def test_a_pool_address_says_where_it_came_from(tmp_path: Path) -> None:
    docs = [gateway([{"name": "http", "protocol": "HTTP", "port": 18001}], None)]
    (line,) = lines_for(tmp_path, docs, "127.0.10.0/24")
    assert line.startswith(
        "listening: gateway default/edge listener http HTTP on http://127.0.10.1:18001 "
        "(loopback only: the Gateway has no spec.addresses, so its address comes from "
        "--address-pool 127.0.10.0/24;"
    )
    (line,) = lines_for(tmp_path, docs, "0.0.0.0/32")
    assert "on http://0.0.0.0:18001 (every address of this host: " in line


def test_tls_listeners_sharing_an_https_port_are_named_tls(tmp_path: Path) -> None:
    cert, key = self_signed(["a.example"])
    secret = secret_manifest(cert, key, name="a", namespace="default")
    tls = {"mode": "Terminate", "certificateRefs": [{"name": "a"}]}
    docs = [
        gateway(
            [
                {
                    "name": "web",
                    "protocol": "HTTPS",
                    "port": 18443,
                    "tls": tls,
                    "hostname": "a.example",
                },
                {
                    "name": "pass",
                    "protocol": "TLS",
                    "port": 18443,
                    "hostname": "b.example",
                    "tls": {"mode": "Passthrough"},
                },
            ],
            ["127.0.0.1"],
        )
    ]
    assert lines_for(tmp_path, docs, "127.0.10.0/24", "---\n" + secret) == [
        "listening: gateway default/edge listener web HTTPS on https://127.0.0.1:18443",
        "listening: gateway default/edge listener pass TLS on tls://127.0.0.1:18443",
    ]


def test_nothing_served_says_why(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": GW,
                    "kind": "GatewayClass",
                    "metadata": {"name": "theirs"},
                    "spec": {"controllerName": "example.com/x"},
                }
            ]
        )
    )
    built = ConfigPipeline([str(tmp_path)]).build()
    args = (built.load.config, built.resolution.statuses)
    assert not_served_reason(*args, controller_name=CONTROLLER, bind_failures={}) == (
        f"no listener is served: no GatewayClass with controllerName {CONTROLLER}; "
        "GatewayClasses of other controllers: theirs (example.com/x)"
    )
    assert not_served_reason(
        *args,
        controller_name=CONTROLLER,
        bind_failures={("127.0.0.1", 80): "Permission denied"},
        name_others=False,
    ) == (
        f"no listener is served: no GatewayClass with controllerName {CONTROLLER}; "
        "cannot bind 127.0.0.1:80: Permission denied"
    )
