"""Route attachment: parentRefs, sectionName/port, allowedRoutes namespaces and kinds,
hostnames, route parent statuses and attachedRoutes."""

from __future__ import annotations

from typing import Any

import pytest
from status_builders import (
    backend,
    cond,
    config,
    gateway,
    gateway_class,
    has_status,
    http_route,
    listener,
    listener_status,
    namespace,
    parent,
    parent_status,
    passthrough,
    status_of,
    terminate,
    tls_secret,
)

from gatewayd.routing.config.model import (
    FromNamespaces,
    GRPCRoute,
    GRPCRouteRule,
    LabelSelector,
    LabelSelectorRequirement,
    Meta,
    TLSRoute,
    TLSRouteRule,
)
from gatewayd.routing.control.attach import selector_matches
from gatewayd.routing.control.bindings import Resolution
from gatewayd.routing.control.resolve import resolve

ENV = {"env": "prod", "team": "a"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (LabelSelector(), True),  # empty selector matches everything
        (LabelSelector(match_labels=(("env", "prod"),)), True),
        (LabelSelector(match_labels=(("env", "dev"),)), False),
        (LabelSelector(match_labels=(("env", "prod"), ("team", "b"))), False),
        (
            LabelSelector(
                match_expressions=(
                    LabelSelectorRequirement(key="env", operator="In", values=("dev", "prod")),
                )
            ),
            True,
        ),
        (
            LabelSelector(
                match_expressions=(
                    LabelSelectorRequirement(key="env", operator="In", values=("dev",)),
                )
            ),
            False,
        ),
        (
            LabelSelector(
                match_expressions=(
                    LabelSelectorRequirement(key="zone", operator="In", values=("x",)),
                )
            ),
            False,
        ),
        (
            LabelSelector(
                match_expressions=(
                    LabelSelectorRequirement(key="env", operator="NotIn", values=("dev",)),
                )
            ),
            True,
        ),
        (
            LabelSelector(
                match_expressions=(
                    LabelSelectorRequirement(key="env", operator="NotIn", values=("prod",)),
                )
            ),
            False,
        ),
        (
            LabelSelector(
                match_expressions=(
                    LabelSelectorRequirement(key="zone", operator="NotIn", values=("x",)),
                )
            ),
            True,
        ),
        (
            LabelSelector(
                match_expressions=(LabelSelectorRequirement(key="team", operator="Exists"),)
            ),
            True,
        ),
        (
            LabelSelector(
                match_expressions=(LabelSelectorRequirement(key="zone", operator="Exists"),)
            ),
            False,
        ),
        (
            LabelSelector(
                match_expressions=(LabelSelectorRequirement(key="zone", operator="DoesNotExist"),)
            ),
            True,
        ),
        (
            LabelSelector(
                match_expressions=(LabelSelectorRequirement(key="team", operator="DoesNotExist"),)
            ),
            False,
        ),
        (
            LabelSelector(
                match_expressions=(LabelSelectorRequirement(key="team", operator="Bogus"),)
            ),
            False,
        ),
        # labels AND expressions
        (
            LabelSelector(
                match_labels=(("env", "prod"),),
                match_expressions=(
                    LabelSelectorRequirement(key="team", operator="In", values=("b",)),
                ),
            ),
            False,
        ),
    ],
)
def test_selector_operators(selector: LabelSelector, expected: bool) -> None:
    assert selector_matches(selector, ENV) is expected


def _accepted(
    res: Resolution, route: str, ns: str = "default", kind: str = "HTTPRoute"
) -> tuple[str, str]:
    return cond(parent_status(res, route, ns, kind), "Accepted")


@pytest.mark.parametrize(
    ("from_", "selector", "route_ns", "expected"),
    [
        (FromNamespaces.SAME, None, "default", ("True", "Accepted")),
        (FromNamespaces.SAME, None, "team-a", ("False", "NotAllowedByListeners")),
        (FromNamespaces.ALL, None, "team-a", ("True", "Accepted")),
        (
            FromNamespaces.SELECTOR,
            LabelSelector(match_labels=(("env", "prod"),)),
            "team-a",
            ("True", "Accepted"),
        ),
        (
            FromNamespaces.SELECTOR,
            LabelSelector(match_labels=(("env", "prod"),)),
            "team-b",
            ("False", "NotAllowedByListeners"),
        ),
        (
            FromNamespaces.SELECTOR,
            LabelSelector(match_labels=(("kubernetes.io/metadata.name", "team-b"),)),
            "team-b",
            ("True", "Accepted"),
        ),
        # a namespace that is not declared still has its metadata.name label
        (
            FromNamespaces.SELECTOR,
            LabelSelector(match_labels=(("kubernetes.io/metadata.name", "ghost"),)),
            "ghost",
            ("True", "Accepted"),
        ),
        (FromNamespaces.SELECTOR, None, "team-a", ("False", "NotAllowedByListeners")),
    ],
)
def test_allowed_namespaces(
    from_: FromNamespaces, selector: LabelSelector | None, route_ns: str, expected: tuple[str, str]
) -> None:
    res = resolve(
        config(
            gateway("gw", listener(from_=from_, selector=selector)),
            namespace("team-a", env="prod"),
            namespace("team-b", env="dev"),
            http_route("r", parent("gw", "default"), namespace=route_ns),
        )
    )
    assert _accepted(res, "r", route_ns) == expected
    attached = listener_status(res, "gw", "http")["attachedRoutes"]
    assert attached == (1 if expected[0] == "True" else 0)


def test_section_name_and_port_narrowing() -> None:
    gw = gateway("gw", listener("a", 80), listener("b", 8080))
    routes = [
        http_route("by-section", parent(section="b")),
        http_route("by-port", parent(port=80)),
        http_route("both", parent(section="b", port=8080)),
        http_route("no-section", parent(section="nope")),
        http_route("no-port", parent(port=81)),
        http_route("mismatch", parent(section="b", port=80)),
        http_route("whole", parent()),
    ]
    res = resolve(config(gw, *routes))
    for name in ("by-section", "by-port", "both", "whole"):
        assert _accepted(res, name) == ("True", "Accepted"), name
    for name in ("no-section", "no-port", "mismatch"):
        assert _accepted(res, name) == ("False", "NoMatchingParent"), name
    assert listener_status(res, "gw", "a")["attachedRoutes"] == 2  # by-port, whole
    assert listener_status(res, "gw", "b")["attachedRoutes"] == 3  # by-section, both, whole
    by_listener = {b.listener_name: [ar.route.meta.name for ar in b.routes] for b in res.listeners}
    assert sorted(by_listener["a"]) == ["by-port", "whole"]


def test_parent_ref_status_echoes_the_full_reference() -> None:
    res = resolve(
        config(gateway("gw", listener("a", 80)), http_route("r", parent(section="a", port=80)))
    )
    p = parent_status(res, "r")
    assert p["parentRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
        "sectionName": "a",
        "port": 80,
    }
    assert p["controllerName"] == "gatewayd.dev/gateway-controller"
    assert [c["type"] for c in p["conditions"]] == ["Accepted", "ResolvedRefs"]


def test_hostnames_and_effective_hostnames() -> None:
    gw = gateway(
        "gw",
        listener("wild", 80, hostname="*.example.com"),
        listener("exact", 8080, hostname="foo.example.com"),
        listener("any", 8081),
    )
    res = resolve(
        config(
            gw,
            http_route("r", hostnames=["foo.example.com", "bar.example.net"]),
            http_route(
                "none", hostnames=["example.com"], creation_timestamp="2024-01-01T00:00:00Z"
            ),
        )
    )
    assert _accepted(res, "r") == ("True", "Accepted")
    eff = {b.listener_name: b.routes[0].hostnames for b in res.listeners if b.routes}
    assert eff == {
        "wild": ("foo.example.com",),
        "exact": ("foo.example.com",),
        "any": ("foo.example.com", "bar.example.net"),
    }
    # "example.com" only attaches to the listener without hostname
    assert _accepted(res, "none") == ("True", "Accepted")
    assert listener_status(res, "gw", "wild")["attachedRoutes"] == 1
    assert listener_status(res, "gw", "any")["attachedRoutes"] == 2


def test_no_matching_listener_hostname() -> None:
    res = resolve(
        config(
            gateway("gw", listener(hostname="foo.example.com")),
            http_route("r", hostnames=["not-accepted.test.com"]),
        )
    )
    assert _accepted(res, "r") == ("False", "NoMatchingListenerHostname")
    assert listener_status(res, "gw", "http")["attachedRoutes"] == 0


def test_hostname_reason_wins_over_namespace_reason() -> None:
    gw = gateway(
        "gw",
        listener("same", 80, hostname="a.example.com"),
        listener("all", 8080, hostname="b.example.com", from_=FromNamespaces.ALL),
    )
    res = resolve(
        config(
            gw,
            http_route(
                "r", parent("gw", "default"), namespace="other", hostnames=["c.example.com"]
            ),
        )
    )
    assert _accepted(res, "r", "other") == ("False", "NoMatchingListenerHostname")


def _tls_route(
    name: str, *parents: Any, hostnames: tuple[str, ...] = ("tls.example.com",)
) -> TLSRoute:
    return TLSRoute(
        meta=Meta(namespace="default", name=name),
        parent_refs=tuple(parents) or (parent(),),
        hostnames=hostnames,
        rules=(TLSRouteRule(backend_refs=(backend("tls-svc", 443),)),),
    )


def test_route_kinds_per_listener_protocol() -> None:
    res = resolve(
        config(
            gateway("http-only", listener()),
            gateway(
                "https-only",
                listener("https", 443, "HTTPS", tls=terminate("cert")),
            ),
            gateway(
                "tls-only", listener("tls", 443, "TLS", tls=passthrough()), addresses=["127.0.0.9"]
            ),
            tls_secret("cert"),
            _tls_route("tls-on-http", parent("http-only")),
            _tls_route("tls-on-https", parent("https-only")),
            _tls_route("tls-on-tls", parent("tls-only")),
            http_route("http-on-tls", parent("tls-only")),
            GRPCRoute(
                meta=Meta(namespace="default", name="grpc"),
                parent_refs=(parent("https-only"),),
                rules=(GRPCRouteRule(),),
            ),
        )
    )
    assert _accepted(res, "tls-on-http", kind="TLSRoute") == ("False", "NotAllowedByListeners")
    assert _accepted(res, "tls-on-https", kind="TLSRoute") == ("False", "NotAllowedByListeners")
    assert _accepted(res, "tls-on-tls", kind="TLSRoute") == ("True", "Accepted")
    assert _accepted(res, "http-on-tls") == ("False", "NotAllowedByListeners")
    # HTTP/2 is served (h2c and ALPN h2): HTTPS listeners carry GRPCRoutes.
    assert _accepted(res, "grpc", kind="GRPCRoute") == ("True", "Accepted")
    tls_binding = next(b for b in res.listeners if b.gateway_name == "tls-only")
    assert tls_binding.tls_mode == "Passthrough"
    assert [ar.hostnames for ar in tls_binding.routes] == [("tls.example.com",)]
    assert status_of(res, "TLSRoute", "tls-on-tls")["parents"][0]["parentRef"]["name"] == "tls-only"


def test_listener_kinds_restrict_attachment() -> None:
    gw = gateway("gw", listener(kinds=["GRPCRoute"]))
    res = resolve(config(gw, http_route("r")))
    assert _accepted(res, "r") == ("False", "NotAllowedByListeners")


def test_parents_of_other_controllers_and_services_get_no_entry() -> None:
    res = resolve(
        config(
            gateway("mine"),
            gateway("theirs", class_name="other"),
            http_route(
                "r",
                parent("theirs"),
                parent("mine"),
                parent("svc", group="", kind="Service"),
                parent("missing"),
            ),
            http_route("only-theirs", parent("theirs")),
            classes=[gateway_class(), gateway_class("other", "example.com/other")],
        )
    )
    parents = status_of(res, "HTTPRoute", "r")["parents"]
    assert [p["parentRef"]["name"] for p in parents] == ["mine"]
    assert not has_status(res, "HTTPRoute", "only-theirs")
    assert not has_status(res, "Gateway", "theirs")
    assert not has_status(res, "GatewayClass", "other", "")
    # the missing Gateway is a problem, the other controller's Gateway is not
    assert [(p.kind, p.name, p.field) for p in res.problems] == [
        ("HTTPRoute", "r", "spec.parentRefs[3]")
    ]


def test_attached_routes_are_ordered_oldest_first_then_by_name() -> None:
    res = resolve(
        config(
            gateway("gw", listener(from_=FromNamespaces.ALL)),
            http_route("b", parent("gw", "default"), creation_timestamp="2024-01-01T00:00:00Z"),
            http_route("a", parent("gw", "default"), creation_timestamp="2024-01-02T00:00:00Z"),
            http_route(
                "a",
                parent("gw", "default"),
                namespace="x",
                creation_timestamp="2024-01-01T00:00:00Z",
            ),
        )
    )
    order = [(ar.route.meta.namespace, ar.route.meta.name) for ar in res.listeners[0].routes]
    assert order == [("default", "b"), ("x", "a"), ("default", "a")]


def test_route_with_two_parent_refs_counts_once_per_listener() -> None:
    res = resolve(
        config(
            gateway("gw", listener("a", 80), listener("b", 8080)),
            http_route("r", parent(section="a"), parent(section="b")),
        )
    )
    assert [cond(p, "Accepted") for p in status_of(res, "HTTPRoute", "r")["parents"]] == [
        ("True", "Accepted"),
        ("True", "Accepted"),
    ]
    assert listener_status(res, "gw", "a")["attachedRoutes"] == 1
    assert listener_status(res, "gw", "b")["attachedRoutes"] == 1


def test_route_resolved_refs_is_reported_on_every_parent() -> None:
    res = resolve(config(gateway("gw"), http_route("r", backends=[backend("ghost")])))
    p = parent_status(res, "r")
    assert cond(p, "Accepted") == ("True", "Accepted")
    assert cond(p, "ResolvedRefs") == ("False", "BackendNotFound")
    assert "ghost" in p["conditions"][1]["message"]


def _grpc(name: str, hostnames: tuple[str, ...] = (), created: str = "") -> GRPCRoute:
    return GRPCRoute(
        meta=Meta(namespace="default", name=name, creation_timestamp=created),
        parent_refs=(parent(),),
        hostnames=hostnames,
        rules=(GRPCRouteRule(),),
    )


@pytest.mark.parametrize(
    ("http_created", "grpc_created", "http_hosts", "grpc_hosts", "http_ok", "grpc_ok"),
    [
        # Shared hostname: the older route is accepted, the younger refused.
        (
            "2024-01-01T00:00:00Z",
            "2024-02-01T00:00:00Z",
            ["a.example"],
            ("a.example",),
            True,
            False,
        ),
        (
            "2024-02-01T00:00:00Z",
            "2024-01-01T00:00:00Z",
            ["a.example"],
            ("a.example",),
            False,
            True,
        ),
        # A wildcard intersecting a precise name is a shared hostname too.
        (
            "2024-01-01T00:00:00Z",
            "2024-02-01T00:00:00Z",
            ["*.example"],
            ("a.example",),
            True,
            False,
        ),
        # No hostnames on either: both match every host.
        ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", [], (), True, False),
        # Disjoint hostnames: both accepted.
        ("2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z", ["a.example"], ("b.example",), True, True),
    ],
)
def test_http_and_grpc_routes_sharing_a_hostname(
    http_created: str,
    grpc_created: str,
    http_hosts: list[str],
    grpc_hosts: tuple[str, ...],
    http_ok: bool,
    grpc_ok: bool,
) -> None:
    """GRPCRouteSpec.Hostnames: "the implementation MUST accept exactly one of these two
    routes ... The oldest Route based on creation timestamp"."""
    res = resolve(
        config(
            gateway("gw", listener()),
            http_route("web", hostnames=http_hosts, creation_timestamp=http_created),
            _grpc("rpc", grpc_hosts, grpc_created),
        )
    )
    expect = {True: ("True", "Accepted"), False: ("False", "NotAllowedByListeners")}
    assert _accepted(res, "web") == expect[http_ok]
    assert _accepted(res, "rpc", kind="GRPCRoute") == expect[grpc_ok]
    refused = "rpc" if not grpc_ok else "web" if not http_ok else None
    if refused is not None:
        kind = "GRPCRoute" if refused == "rpc" else "HTTPRoute"
        msg = next(
            c["message"]
            for c in parent_status(res, refused, "default", kind)["conditions"]
            if c["type"] == "Accepted"
        )
        assert "is older and shares a hostname" in msg
    (binding,) = [b for b in res.listeners if b.gateway_name == "gw"]
    kinds = sorted(type(a.route).__name__ for a in binding.routes)
    assert kinds == sorted(
        [*(["HTTPRoute"] if http_ok else []), *(["GRPCRoute"] if grpc_ok else [])]
    )
