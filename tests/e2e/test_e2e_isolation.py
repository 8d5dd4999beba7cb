"""GatewayHTTPListenerIsolation and HTTPRouteDestinationPortMatching through ``gatewayd
run``, as the upstream conformance scenarios drive them.

Isolation: four HTTP listeners share one port (no hostname, ``*.example.com``,
``*.foo.example.com``, ``abc.foo.example.com``), each with its own route; a request is
served only by the routes of the most specific listener its Host selects, even when a
route of a less specific listener names that host too.  Destination port: a parentRef
whose ``port`` no listener has is ``Accepted: False`` (NoMatchingParent) and attaches
to nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from e2e_kit import (
    LOCALHOST,
    Doc,
    Gatewayd,
    backend_ref,
    conditions,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    request,
    rule,
)

pytestmark = pytest.mark.e2e

LISTENERS = {
    "empty-hostname": None,
    "wildcard-example-com": "*.example.com",
    "wildcard-foo-example-com": "*.foo.example.com",
    "abc-foo-example-com": "abc.foo.example.com",
}
# Host -> the listener (and so the only path) that serves it.
SERVED_BY = {
    "bar.com": "empty-hostname",
    "bar.example.com": "wildcard-example-com",
    "bar.foo.example.com": "wildcard-foo-example-com",
    "abc.foo.example.com": "abc-foo-example-com",
}
SECOND = "127.0.0.2"
ROUTE_HOSTNAMES = ["bar.com", "*.example.com", "*.foo.example.com", "abc.foo.example.com"]


@dataclass
class Env:
    daemon: Gatewayd
    plain: int  # routes without hostnames
    intersecting: int  # routes listing every hostname


def isolation_gateway(
    name: str, port: int, *, with_hostnames: bool, address: str = LOCALHOST
) -> list[Doc]:
    listeners = [
        listener(section, port, hostname=hostname, from_namespaces="All")
        for section, hostname in LISTENERS.items()
    ]
    routes = [
        http_route(
            f"{name}-{section}",
            [rule(matches=[match(f"/{section}")], backends=[backend_ref("echo-v1")])],
            parent=name,
            section=section,
            hostnames=ROUTE_HOSTNAMES if with_hostnames else (),
        )
        for section in LISTENERS
    ]
    return [gateway(name, listeners, address=address), *routes]


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    # Two Gateways, two addresses: a Gateway address belongs to one Gateway.
    plain, intersecting = free_port(), free_port(SECOND)
    docs = [gateway_class(), *echo.manifests()]
    docs += isolation_gateway("isolation", plain, with_hostnames=False)
    docs += isolation_gateway("intersection", intersecting, with_hostnames=True, address=SECOND)
    # HTTPRouteDestinationPortMatching: no listener of "isolation" is on port 81.
    mismatch = http_route("port-mismatch", [rule(backends=[backend_ref("echo-v1")])])
    mismatch["spec"]["parentRefs"] = [{"name": "isolation", "port": 81}]
    docs.append(mismatch)
    return Env(module_gatewayd(docs), plain, intersecting)


@pytest.mark.parametrize("which", ["plain", "intersecting"])
@pytest.mark.parametrize("host", list(SERVED_BY))
def test_each_host_reaches_only_its_listener_routes(env: Env, which: str, host: str) -> None:
    port, address = (env.plain, LOCALHOST) if which == "plain" else (env.intersecting, SECOND)
    for section in LISTENERS:
        r = request(port, f"/{section}", host=host, address=address)
        if section == SERVED_BY[host]:
            assert r.echo()["pod"] == "echo-v1", (host, section)
        else:
            assert r.status == 404, (host, section, r.status)


def test_every_isolation_route_is_accepted(env: Env) -> None:
    for gw in ("isolation", "intersection"):
        for section in LISTENERS:
            (parent,) = env.daemon.status_of("HTTPRoute", f"{gw}-{section}")["parents"]
            conds = conditions(parent)
            assert conds["Accepted"]["status"] == "True", (gw, section, conds)
            assert conds["ResolvedRefs"]["status"] == "True", (gw, section, conds)


def test_parent_ref_port_without_listener_is_no_matching_parent(env: Env) -> None:
    (parent,) = env.daemon.status_of("HTTPRoute", "port-mismatch")["parents"]
    conds = conditions(parent)
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == (
        "False",
        "NoMatchingParent",
    )
    assert conds["ResolvedRefs"]["status"] == "True"
    listeners = env.daemon.status_of("Gateway", "isolation")["listeners"]
    attached = {ls["name"]: ls["attachedRoutes"] for ls in listeners}
    assert attached == dict.fromkeys(LISTENERS, 1)  # only the section routes
