"""``gatewayd explain --config``: the command against configuration directories.

HTTP precedence and a conflict, GRPCRoute service/method, TLS by SNI (TLS listeners
with TLSRoutes, an HTTPS listener sharing the port, 421), the JSON shape, the exit
codes.  The e2e module tests/e2e/test_e2e_explain.py holds the answers to real requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewayd.cli import main
from gatewayd.tls.certs import secret_manifest, self_signed

API = "gateway.networking.k8s.io/v1"
ADDRESS = "127.0.0.1"
HTTP_PORT, MIXED_PORT, TLS_PORT = 18080, 18443, 18444

CERT, KEY = self_signed(["*.example.com"])


def _backend(name: str, port: int = 80) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "p", "port": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": 9000, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.9"], "conditions": {"ready": True}}],
        },
    ]


def _route(kind: str, name: str, spec: dict[str, Any], created: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}


def _docs() -> list[dict[str, Any]]:
    listeners = [
        {"name": "http", "port": HTTP_PORT, "protocol": "HTTP"},
        {"name": "grpc", "port": HTTP_PORT, "protocol": "HTTP", "hostname": "grpc.example.com"},
        {
            "name": "https",
            "port": MIXED_PORT,
            "protocol": "HTTPS",
            "hostname": "*.example.com",
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "gw-cert"}]},
        },
        {
            "name": "pass",
            "port": MIXED_PORT,
            "protocol": "TLS",
            "hostname": "abc.example.com",
            "tls": {"mode": "Passthrough"},
        },
        {"name": "tls", "port": TLS_PORT, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
    ]
    prefix = {"path": {"type": "PathPrefix", "value": "/shop"}}
    return [
        {
            "apiVersion": API,
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayd"},
            "spec": {"controllerName": "gatewayd.dev/gateway-controller"},
        },
        {
            "apiVersion": API,
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {
                "gatewayClassName": "gatewayd",
                "addresses": [{"type": "IPAddress", "value": ADDRESS}],
                "listeners": listeners,
            },
        },
        *_backend("shop"),
        *_backend("shop-canary"),
        *_backend("greeter"),
        *_backend("tls-a", 443),
        *_backend("tls-any", 443),
        # The conflict: two routes with the same match; the older one wins.
        _route(
            "HTTPRoute",
            "shop-new",
            {
                "parentRefs": [{"name": "gw", "sectionName": "http"}],
                "rules": [
                    {"matches": [prefix], "backendRefs": [{"name": "shop-canary", "port": 80}]}
                ],
            },
            created="2025-06-01T00:00:00Z",
        ),
        _route(
            "HTTPRoute",
            "shop-old",
            {
                "parentRefs": [
                    {"name": "gw", "sectionName": "http"},
                    {"name": "gw", "sectionName": "https"},
                ],
                "rules": [
                    {
                        "matches": [prefix],
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {
                                    "set": [{"name": "x-shop", "value": "1"}]
                                },
                            },
                            {
                                "type": "URLRewrite",
                                "urlRewrite": {
                                    "path": {
                                        "type": "ReplacePrefixMatch",
                                        "replacePrefixMatch": "/",
                                    }
                                },
                            },
                        ],
                        "backendRefs": [
                            {"name": "shop", "port": 80, "weight": 9},
                            {"name": "shop-canary", "port": 80, "weight": 1},
                            {"name": "missing", "port": 80, "weight": 0},
                        ],
                    }
                ],
            },
            created="2024-06-01T00:00:00Z",
        ),
        # Names a listener that does not exist: not attached, and explain says so.
        _route(
            "HTTPRoute",
            "stray",
            {
                "parentRefs": [{"name": "gw", "sectionName": "nosuch"}],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/stray"}}]}],
            },
        ),
        _route(
            "GRPCRoute",
            "greeter",
            {
                "parentRefs": [{"name": "gw", "sectionName": "grpc"}],
                "hostnames": ["grpc.example.com"],
                "rules": [
                    {
                        "matches": [
                            {"method": {"service": "helloworld.Greeter", "method": "SayHello"}}
                        ],
                        "backendRefs": [{"name": "greeter", "port": 80}],
                    },
                    {
                        "matches": [{"method": {"service": "helloworld.Greeter"}}],
                        "backendRefs": [{"name": "shop", "port": 80}],
                    },
                ],
            },
        ),
        _route(
            "TLSRoute",
            "pass",
            {
                "parentRefs": [{"name": "gw", "sectionName": "pass"}],
                "hostnames": ["abc.example.com"],
                "rules": [{"backendRefs": [{"name": "tls-a", "port": 443}]}],
            },
        ),
        _route(
            "TLSRoute",
            "t-exact",
            {
                "parentRefs": [{"name": "gw", "sectionName": "tls"}],
                "hostnames": ["a.t.test"],
                "rules": [{"backendRefs": [{"name": "tls-a", "port": 443}]}],
            },
        ),
        _route(
            "TLSRoute",
            "t-wild",
            {
                "parentRefs": [{"name": "gw", "sectionName": "tls"}],
                "hostnames": ["*.t.test"],
                "rules": [{"backendRefs": [{"name": "tls-any", "port": 443}]}],
            },
        ),
    ]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("explain-config")
    (d / "all.yaml").write_text(yaml.safe_dump_all(_docs(), sort_keys=False))
    (d / "secret.yaml").write_text(secret_manifest(CERT, KEY, name="gw-cert", namespace="default"))
    return d


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _json(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, Any]:
    code, out, err = _run(capsys, *argv, "--config", str(config), "-o", "json")
    assert not err, err
    return code, json.loads(out)


def test_precedence_conflict_filters_and_weights(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = _json(
        capsys, config, f"http://shop.test:{HTTP_PORT}/shop/cart", "--address", ADDRESS
    )
    assert code == 0
    assert doc["chosen"]["routeId"] == "default/shop-old/rule/0"
    (new,) = [c for c in doc["rules"]["candidates"] if c["route"] == "HTTPRoute default/shop-new"]
    assert new["result"] == "lost"
    assert new["decidedBy"] == "route creation time (oldest wins)"
    rule = doc["chosen"]["rule"]
    assert [f["filter"] for f in rule["filters"]] == ["RequestHeaderModifier", "URLRewrite"]
    assert "'/shop'" in rule["filters"][1]["effect"]  # the matched prefix it replaces
    shares = {b["name"]: (b["weight"], b["share"], b["eligible"]) for b in rule["backends"]}
    # Weight 0 is never chosen and is not listed.
    assert shares == {
        "default/shop:80": (9, 0.9, True),
        "default/shop-canary:80": (1, 0.1, True),
    }
    assert rule["backends"][0]["endpoints"] == ["127.0.0.9:9000"]
    # Text: the same story, with the spec behind each step.
    code, out, _ = _run(capsys, f"http://{ADDRESS}:{HTTP_PORT}/shop/cart", "--config", str(config))
    assert code == 0
    assert "[lost] HTTPRoute default/shop-new rule 0 match 0: PathPrefix /shop" in out
    assert "matched, but loses on route creation time (oldest wins)" in out
    assert "default/shop:80  weight 9 (90%)  eligible" in out
    assert "The oldest Route based on creation timestamp." in out
    assert "Result: routed to HTTPRoute default/shop-old rule 0 via listener http" in out
    code, short, _ = _run(
        capsys, f"http://{ADDRESS}:{HTTP_PORT}/shop/cart", "--config", str(config), "--no-spec"
    )
    assert code == 0 and "spec:" not in short and "spec:" in out
    assert short.splitlines()[-1] == out.splitlines()[-1]


def test_json_shape(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json(
        capsys,
        config,
        f"http://x.test:{HTTP_PORT}/shop?a=1",
        "-X",
        "PUT",
        "-H",
        "X-One: 1",
        "-H",
        "x-one: 2",
    )
    assert code == 0
    assert set(doc) >= {
        "request",
        "generation",
        "routed",
        "port",
        "listener",
        "rules",
        "dataPlane",
        "chosen",
        "outcome",
    }
    req = doc["request"]
    assert req["method"] == "PUT" and req["path"] == "/shop" and req["query"] == "a=1"
    assert req["headers"]["x-one"] == "1,2"  # joined as the data plane joins them
    assert req["host"] == "x.test" and req["port"] == HTTP_PORT
    assert isinstance(doc["generation"], int) and doc["routed"] is True
    for c in doc["rules"]["candidates"]:
        assert {"route", "rule", "match", "rank", "result", "path"} <= set(c)
        assert c["result"] in ("chosen", "lost", "failed")
        if c["result"] == "failed":
            assert c["matcher"] in ("path", "method", "header", "queryParam") and c["why"]
    assert doc["dataPlane"] == {"routeId": "default/shop-old/rule/0", "agrees": True}
    for b in doc["chosen"]["rule"]["backends"]:
        assert {"name", "weight", "share", "endpoints", "eligible", "why"} <= set(b)
    assert (
        isinstance(doc["port"]["spec"], str) and "Port is the network port" in doc["port"]["spec"]
    )


def test_grpc_service_and_method(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://grpc.example.com:{HTTP_PORT}/helloworld.Greeter/SayHello"
    code, doc = _json(capsys, config, url, "--grpc")
    assert code == 0
    assert doc["request"]["method"] == "POST"
    assert doc["request"]["headers"]["content-type"] == "application/grpc"
    assert doc["chosen"]["routeId"] == "default/greeter/rule/0"
    rows = {(c["rule"], c["result"]): c for c in doc["rules"]["candidates"]}
    assert rows[(1, "lost")]["decidedBy"] == "characters in the method match"
    # Another method of the service: the service-only rule.
    code, doc = _json(capsys, config, url.replace("SayHello", "SayBye"), "--grpc")
    assert code == 0 and doc["chosen"]["routeId"] == "default/greeter/rule/1"
    failed = [c for c in doc["rules"]["candidates"] if c["result"] == "failed"]
    assert failed[0]["matcher"] == "path" and "SayHello" in failed[0]["why"]
    # Not a gRPC call (GET): no GRPCRoute match; the host group holds only the GRPCRoute.
    code, doc = _json(capsys, config, url)
    assert code == 1 and doc["outcome"]["status"] == 404
    assert {c["matcher"] for c in doc["rules"]["candidates"]} == {"method"}
    code, out, _ = _run(capsys, url, "--grpc", "--config", str(config))
    assert "gRPC Exact service=helloworld.Greeter method=SayHello" in out


def test_tls_by_sni(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A TLS-only port: the exact hostname beats the wildcard.
    code, doc = _json(capsys, config, f"tls://{ADDRESS}:{TLS_PORT}", "--sni", "a.t.test")
    assert code == 0
    assert doc["chosen"]["route"] == "TLSRoute default/t-exact"
    routes = {r["route"]: r for r in doc["tls"]["routes"]}
    assert routes["TLSRoute default/t-wild"]["result"] == "lost"
    assert "more specific" in routes["TLSRoute default/t-wild"]["why"]
    code, doc = _json(capsys, config, f"tls://{ADDRESS}:{TLS_PORT}", "--sni", "b.t.test")
    assert code == 0 and doc["chosen"]["route"] == "TLSRoute default/t-wild"
    code, doc = _json(capsys, config, f"tls://{ADDRESS}:{TLS_PORT}", "--sni", "c.other")
    assert code == 1 and "closed" in doc["outcome"]["reason"]
    code, doc = _json(capsys, config, f"tls://{ADDRESS}:{TLS_PORT}")  # no SNI (an IP URL)
    assert code == 1 and "without server name" in doc["outcome"]["reason"]
    # HTTPS and TLS Passthrough on one port: the SNI decides which listener.
    code, doc = _json(
        capsys, config, f"https://abc.example.com:{MIXED_PORT}/", "--address", ADDRESS
    )
    assert code == 0
    assert doc["chosen"]["route"] == "TLSRoute default/pass"
    assert doc["chosen"]["mode"] == "Passthrough"
    code, doc = _json(
        capsys, config, f"https://www.example.com:{MIXED_PORT}/shop", "--address", ADDRESS
    )
    assert code == 0 and doc["chosen"]["routeId"] == "default/shop-old/rule/0"
    assert doc["chosen"]["listener"] == "https"
    # Host for the passthrough name over a connection whose SNI chose the HTTPS
    # listener: 421.
    code, doc = _json(
        capsys,
        config,
        f"https://www.example.com:{MIXED_PORT}/shop",
        "--address",
        ADDRESS,
        "-H",
        "Host: abc.example.com",
    )
    assert code == 1 and doc["outcome"]["status"] == 421
    code, out, _ = _run(
        capsys,
        f"https://www.example.com:{MIXED_PORT}/shop",
        "--address",
        ADDRESS,
        "-H",
        "Host: abc.example.com",
        "--config",
        str(config),
    )
    assert "Result: not routed: 421" in out
    assert "TLS: server name www.example.com" in out


def test_exit_codes(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json(capsys, config, f"http://{ADDRESS}:{HTTP_PORT}/nothing")
    assert code == 1 and doc["outcome"]["status"] == 404
    code, doc = _json(capsys, config, f"http://{ADDRESS}:1/")
    assert code == 1 and "no Gateway listens" in doc["outcome"]["reason"]
    code, _, err = _run(capsys, "ftp://x/", "--config", str(config))
    assert code == 2 and "not an http://" in err
    code, _, err = _run(capsys, "http://x/", "-H", "novalue", "--config", str(config))
    assert code == 2 and "-H takes" in err
    code, _, err = _run(capsys, "http://x/", "--config", str(config / "typo"))
    assert code == 2
    # Nothing listens on port 1 of loopback: the admin is unreachable.
    code, _, err = _run(capsys, "http://x/", "--admin", "127.0.0.1:1")
    assert code == 2 and "cannot reach the gatewayd admin" in err
    with pytest.raises(SystemExit) as exc:
        main(["explain"])
    assert exc.value.code == 2


def test_as_a_subprocess(config: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatewayd",
            "explain",
            f"http://{ADDRESS}:{HTTP_PORT}/shop",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Result: routed to HTTPRoute default/shop-old rule 0" in out.stdout


def test_routes_not_attached_are_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _json(capsys, config, f"http://{ADDRESS}:{HTTP_PORT}/stray")
    assert code == 1 and doc["outcome"]["status"] == 404
    (stray,) = [m for m in doc["notServed"] if m["object"].startswith("HTTPRoute default/stray")]
    assert stray["condition"] == "Accepted" and stray["reason"] == "NoMatchingParent"
    code, out, _ = _run(capsys, f"http://{ADDRESS}:{HTTP_PORT}/stray", "--config", str(config))
    assert "Not served on this Gateway (from status)" in out
    assert (
        "HTTPRoute default/stray -> Gateway default/gw (sectionName nosuch): "
        "Accepted False (NoMatchingParent)" in out
    )
