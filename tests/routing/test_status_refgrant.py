"""ReferenceGrant: cross-namespace backendRefs (route -> Service) and certificateRefs
(Gateway -> Secret)."""

from __future__ import annotations

import pytest
from status_builders import (
    backend,
    cond,
    config,
    gateway,
    grant,
    http_route,
    listener,
    listener_status,
    parent_status,
    service,
    terminate,
    tls_secret,
)

from gatewayd.routing.config.model import GATEWAY_GROUP, ReferenceGrant, SecretObjectReference
from gatewayd.routing.control.bindings import BackendKey
from gatewayd.routing.control.refgrant import ReferenceGrants, RefFrom, RefTo
from gatewayd.routing.control.resolve import resolve

ROUTE_FROM = RefFrom(group=GATEWAY_GROUP, kind="HTTPRoute", namespace="apps")
SVC = RefTo(group="", kind="Service", namespace="backends", name="svc")


@pytest.mark.parametrize(
    ("grants", "allowed"),
    [
        ([], False),
        ([grant("backends", from_namespace="apps")], True),
        ([grant("backends", from_namespace="apps", to_name="svc")], True),
        ([grant("backends", from_namespace="apps", to_name="other")], False),
        ([grant("backends", from_namespace="elsewhere")], False),
        ([grant("backends", from_namespace="apps", from_kind="GRPCRoute")], False),
        ([grant("backends", from_namespace="apps", from_group="example.com")], False),
        ([grant("backends", from_namespace="apps", to_kind="Secret")], False),
        ([grant("backends", from_namespace="apps", to_group="example.com")], False),
        # a grant protects the namespace it lives in, not the one it names
        ([grant("apps", from_namespace="apps")], False),
        # several grants add up
        (
            [
                grant("backends", from_namespace="x", name="g1"),
                grant("backends", from_namespace="apps", name="g2"),
            ],
            True,
        ),
    ],
)
def test_allows(grants: list[ReferenceGrant], allowed: bool) -> None:
    assert ReferenceGrants(grants).allows(ROUTE_FROM, SVC) is allowed


def test_same_namespace_needs_no_grant() -> None:
    to = RefTo(group="", kind="Service", namespace="apps", name="svc")
    assert ReferenceGrants([]).allows(ROUTE_FROM, to)


def _route_resolved(*extra: object) -> tuple[str, str]:
    res = resolve(
        config(
            gateway("gw", listener(), namespace="apps"),
            http_route("r", namespace="apps", backends=[backend("svc", namespace="backends")]),
            service("svc", namespace="backends"),
            *extra,
        )
    )
    return cond(parent_status(res, "r", "apps"), "ResolvedRefs")


def test_cross_namespace_backend_without_grant_is_ref_not_permitted() -> None:
    assert _route_resolved() == ("False", "RefNotPermitted")


def test_cross_namespace_backend_with_grant_resolves() -> None:
    assert _route_resolved(grant("backends", from_namespace="apps")) == ("True", "ResolvedRefs")


def test_grant_for_another_service_name_does_not_apply() -> None:
    got = _route_resolved(grant("backends", from_namespace="apps", to_name="nope"))
    assert got == ("False", "RefNotPermitted")


def test_ref_not_permitted_is_reported_even_if_the_service_is_missing() -> None:
    res = resolve(
        config(
            gateway("gw", listener(), namespace="apps"),
            http_route("r", namespace="apps", backends=[backend("ghost", namespace="backends")]),
        )
    )
    assert cond(parent_status(res, "r", "apps"), "ResolvedRefs") == ("False", "RefNotPermitted")
    key = BackendKey(group="", kind="Service", namespace="backends", name="ghost", port=8080)
    assert res.backends[key].invalid == "RefNotPermitted"


def _cert_listener(*extra: object) -> tuple[str, str]:
    ref = SecretObjectReference(name="cert", namespace="certs")
    res = resolve(
        config(
            gateway("gw", listener("https", 443, "HTTPS", tls=terminate(ref))),
            tls_secret("cert", "certs"),
            *extra,
        )
    )
    return cond(listener_status(res, "gw", "https"), "ResolvedRefs")


def test_cross_namespace_certificate_without_grant() -> None:
    assert _cert_listener() == ("False", "RefNotPermitted")


def test_cross_namespace_certificate_with_grant() -> None:
    g = grant("certs", from_kind="Gateway", from_namespace="default", to_kind="Secret")
    assert _cert_listener(g) == ("True", "ResolvedRefs")


def test_grant_for_routes_does_not_cover_gateways() -> None:
    g = grant("certs", from_kind="HTTPRoute", from_namespace="default", to_kind="Secret")
    assert _cert_listener(g) == ("False", "RefNotPermitted")
