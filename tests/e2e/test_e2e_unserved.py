"""Status never claims what the data plane does not serve (issue 11, "Also").

Through ``gatewayd run``: a GRPCRoute rule with ``sessionPersistence`` (HTTPRoutes
serve it: test_e2e_session.py), a backend whose Service port declares
``kubernetes.io/wss`` and an HTTPS listener with ``tls.options`` are each reported
with the condition the spec names for an unsupported value, with a message saying
why, and the traffic they would have claimed is not served as if they worked.  The
rest of the Gateway serves.  (A GRPCRoute was refused here until HTTP/2 was served;
it now attaches, which this module checks too; tests/e2e/test_e2e_grpc.py serves it.)
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from e2e_kit import (
    GATEWAY_API,
    LOCALHOST,
    Doc,
    Gatewayd,
    assert_condition,
    backend_ref,
    conditions,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    request,
    rule,
)

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e


@dataclass
class Env:
    daemon: Gatewayd
    port: int  # the plain HTTP listener
    grpc_only_port: int  # allowedRoutes.kinds: [GRPCRoute]
    https_port: int  # tls.options set


def _message(obj: dict[str, Any], ctype: str) -> str:
    return str(conditions(obj)[ctype]["message"])


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo")
    port, grpc_only_port, https_port = free_port(), free_port(), free_port()
    cert, key = self_signed(["secure.example"])
    grpc_only = listener("grpc-only", grpc_only_port)
    grpc_only["allowedRoutes"] = {"kinds": [{"kind": "GRPCRoute"}]}
    https: Doc = {
        "name": "https",
        "port": https_port,
        "protocol": "HTTPS",
        "hostname": "secure.example",
        "tls": {
            "certificateRefs": [{"name": "secure"}],
            "options": {"example.com/min-tls-version": "1.3"},
        },
    }
    # A Service whose port says WebSocket over TLS, backed by the (cleartext) echo.
    ws_service, ws_slice = echo.manifests("chat")
    ws_service["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/wss"
    sticky: Doc = {
        "apiVersion": GATEWAY_API,
        "kind": "GRPCRoute",
        "metadata": {"name": "sticky", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["sticky.example"],
            "rules": [
                {
                    "backendRefs": [{"name": "echo", "port": 80}],
                    "sessionPersistence": {"sessionName": "s", "type": "Cookie"},
                }
            ],
        },
    }
    grpc_route: Doc = {
        "apiVersion": GATEWAY_API,
        "kind": "GRPCRoute",
        "metadata": {"name": "grpc", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["grpc.example"],
            "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}],
        },
    }
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port), grpc_only, https]),
        yaml.safe_load(secret_manifest(cert, key, name="secure", namespace="default")),
        *echo.manifests(),
        ws_service,
        ws_slice,
        http_route("plain", [rule(backends=[backend_ref("echo")])], hostnames=["plain.example"]),
        sticky,
        http_route("chat", [rule(backends=[backend_ref("chat")])], hostnames=["chat.example"]),
        grpc_route,
    ]
    return Env(module_gatewayd(docs), port, grpc_only_port, https_port)


def test_the_rest_serves(env: Env) -> None:
    assert request(env.port, "/", host="plain.example").echo()["pod"] == "echo"
    gw = env.daemon.status_of("Gateway", "gw")
    assert_condition(gw, "Programmed", "True", "Programmed")


def test_grpcroute_attaches_now_that_http2_is_served(env: Env) -> None:
    parent = env.daemon.status_of("GRPCRoute", "grpc")["parents"][0]
    assert_condition(parent, "Accepted", "True", "Accepted")
    listeners = {ls["name"]: ls for ls in env.daemon.status_of("Gateway", "gw")["listeners"]}
    for name in ("http", "https"):
        kinds = [k["kind"] for k in listeners[name]["supportedKinds"]]
        assert kinds == ["HTTPRoute", "GRPCRoute"], (name, kinds)
    grpc_only = listeners["grpc-only"]
    assert [k["kind"] for k in grpc_only["supportedKinds"]] == ["GRPCRoute"]
    assert_condition(grpc_only, "ResolvedRefs", "True", "ResolvedRefs")
    # The GatewayClass claims GRPCRoute, and no session persistence: upstream
    # pkg/features has no name for it yet (README, "Session persistence").
    gc = env.daemon.status_of("GatewayClass", "gatewayd", namespace=None)
    features = {f["name"] for f in gc["supportedFeatures"]}
    assert {"GRPCRoute", "GRPCRouteNamedRouteRule", "HTTPRouteBackendProtocolH2C"} <= features
    assert not {f for f in features if "SessionPersistence" in f}


def test_grpcroute_session_persistence_is_refused(env: Env) -> None:
    parent = env.daemon.status_of("GRPCRoute", "sticky")["parents"][0]
    assert_condition(parent, "Accepted", "False", "UnsupportedValue")
    assert _message(parent, "Accepted").startswith("rules[0].sessionPersistence:")
    # Not served without the stickiness it asks for.
    r = request(env.port, "/", host="sticky.example")
    assert r.status == 404
    assert r.header("set-cookie") is None


def test_websocket_backend_is_unsupported_protocol(env: Env) -> None:
    parent = env.daemon.status_of("HTTPRoute", "chat")["parents"][0]
    assert_condition(parent, "Accepted", "True", "Accepted")
    assert_condition(parent, "ResolvedRefs", "False", "UnsupportedProtocol")
    message = _message(parent, "ResolvedRefs")
    assert "kubernetes.io/wss" in message
    assert "WebSocket over TLS" in message
    # "500 status codes MUST be returned for requests that would have otherwise been
    # routed to an invalid backend" -- not a 200 that silently dropped the upgrade.
    r = request(
        env.port,
        "/socket",
        host="chat.example",
        headers={
            "connection": "Upgrade",
            "upgrade": "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert r.status == 500


def test_listener_tls_options_are_unsupported_value(env: Env) -> None:
    listeners = {ls["name"]: ls for ls in env.daemon.status_of("Gateway", "gw")["listeners"]}
    https = listeners["https"]
    assert_condition(https, "Accepted", "False", "UnsupportedValue")
    assert "example.com/min-tls-version: not a key gatewayd implements" in _message(
        https, "Accepted"
    )
    assert_condition(https, "Programmed", "False", "Invalid")
    gw = env.daemon.status_of("Gateway", "gw")
    assert_condition(gw, "Accepted", "True", "ListenersNotValid")
    # Not served with weaker TLS than asked for: nothing listens on its port.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, env.https_port), timeout=5).close()
