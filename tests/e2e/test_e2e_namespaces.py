"""Cross-namespace attachment and references: allowedRoutes, ReferenceGrant."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from e2e_kit import (
    Gatewayd,
    assert_condition,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    reference_grant,
    request,
    rule,
)

pytestmark = pytest.mark.e2e


@dataclass
class Env:
    daemon: Gatewayd
    same_port: int
    all_port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (app_echo,) = module_echoes.start("app-echo", namespace="app")
    (granted,) = module_echoes.start("granted", namespace="shared")
    (guarded,) = module_echoes.start("guarded", namespace="private")
    same_port, all_port = free_port(), free_port()
    docs = [
        gateway_class(),
        gateway(
            "gw",
            [
                listener("same", same_port),
                listener("all", all_port, from_namespaces="All"),
            ],
            namespace="infra",
        ),
        *app_echo.manifests(),
        *granted.manifests(),
        *guarded.manifests(),
        reference_grant("from-app", "shared", from_namespace="app"),
        # attaches to every listener that allows it: only "all"
        http_route(
            "app-route",
            [rule(backends=[backend_ref("app-echo")])],
            namespace="app",
            parent_namespace="infra",
            hostnames=["app.example"],
        ),
        # asks for the "same" listener only, which does not allow namespace app
        http_route(
            "app-same-only",
            [rule(backends=[backend_ref("app-echo")])],
            namespace="app",
            parent_namespace="infra",
            section="same",
            hostnames=["sameonly.example"],
        ),
        http_route(
            "cross-granted",
            [rule(backends=[backend_ref("granted", namespace="shared")])],
            namespace="app",
            parent_namespace="infra",
            hostnames=["granted.example"],
        ),
        http_route(
            "cross-denied",
            [rule(backends=[backend_ref("guarded", namespace="private")])],
            namespace="app",
            parent_namespace="infra",
            hostnames=["denied.example"],
        ),
    ]
    return Env(module_gatewayd(docs), same_port, all_port)


def test_route_from_other_namespace_attaches_where_allowed(env: Env) -> None:
    r = request(env.all_port, host="app.example")
    assert r.echo()["pod"] == "app-echo"
    assert r.echo()["namespace"] == "app"
    assert request(env.same_port, host="app.example").status == 404
    status = env.daemon.status_of("HTTPRoute", "app-route", namespace="app")
    assert_condition(status["parents"][0], "Accepted", "True")
    gw = env.daemon.status_of("Gateway", "gw", namespace="infra")
    attached = {li["name"]: li["attachedRoutes"] for li in gw["listeners"]}
    # app-route, cross-granted, cross-denied on "all"; nothing on "same"
    assert attached == {"same": 0, "all": 3}, attached


def test_route_not_allowed_by_listener(env: Env) -> None:
    status = env.daemon.status_of("HTTPRoute", "app-same-only", namespace="app")
    assert_condition(status["parents"][0], "Accepted", "False", "NotAllowedByListeners")
    assert request(env.same_port, host="sameonly.example").status == 404
    assert request(env.all_port, host="sameonly.example").status == 404


def test_cross_namespace_backend_with_reference_grant(env: Env) -> None:
    doc = request(env.all_port, host="granted.example").echo()
    assert doc["pod"] == "granted"
    status = env.daemon.status_of("HTTPRoute", "cross-granted", namespace="app")
    assert_condition(status["parents"][0], "ResolvedRefs", "True")


def test_cross_namespace_backend_without_grant_is_refused(env: Env) -> None:
    assert request(env.all_port, host="denied.example").status == 500
    status = env.daemon.status_of("HTTPRoute", "cross-denied", namespace="app")
    assert_condition(status["parents"][0], "Accepted", "True")
    assert_condition(status["parents"][0], "ResolvedRefs", "False", "RefNotPermitted")
