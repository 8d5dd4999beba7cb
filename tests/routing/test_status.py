"""GatewayClass / Gateway / listener status, route-level reasons, listener failures."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from status_builders import (
    CONTROLLER,
    backend,
    ca_pem,
    cond,
    config,
    gateway,
    gateway_class,
    has_status,
    http_route,
    listener,
    listener_status,
    parent,
    parent_status,
    passthrough,
    service,
    status_of,
    terminate,
    tls_secret,
)

from gatewayd.routing.config.model import (
    BackendObjectReference,
    BackendRef,
    ConfigMap,
    FilterType,
    FrontendValidation,
    GatewayTLSConfig,
    GRPCRoute,
    GRPCRouteRule,
    HTTPCORSFilter,
    HTTPRequestRedirectFilter,
    HTTPRouteFilter,
    HTTPURLRewriteFilter,
    LocalObjectReference,
    Meta,
    ObjectReference,
    SecretObjectReference,
    TLSModeType,
)
from gatewayd.routing.control.gateways import SUPPORTED_FEATURES, with_listener_failures
from gatewayd.routing.control.resolve import resolve

NOW = "2024-05-06T07:08:09Z"


def conditions_by_type(obj: Any) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["conditions"]}


# --------------------------------------------------------------------------- GatewayClass


def test_gateway_class_ours_accepted_with_features_others_ignored() -> None:
    res = resolve(
        config(classes=[gateway_class("mine"), gateway_class("theirs", "example.com/x")]),
        now=NOW,
    )
    st = status_of(res, "GatewayClass", "mine")
    assert cond(st, "Accepted") == ("True", "Accepted")
    assert st["conditions"][0]["lastTransitionTime"] == NOW
    assert st["supportedFeatures"] == [{"name": n} for n in sorted(SUPPORTED_FEATURES)]
    assert not has_status(res, "GatewayClass", "theirs", "")
    assert list(SUPPORTED_FEATURES) == sorted(SUPPORTED_FEATURES)
    assert {"Gateway", "HTTPRoute", "ReferenceGrant"} <= set(SUPPORTED_FEATURES)


def test_every_condition_has_the_full_shape() -> None:
    gw = gateway("gw", generation=7)
    res = resolve(config(gw, http_route("r", generation=3)), now=NOW)
    gws = status_of(res, "Gateway", "gw")
    for c in [*gws["conditions"], *gws["listeners"][0]["conditions"]]:
        assert list(c) == [
            "type",
            "status",
            "reason",
            "message",
            "observedGeneration",
            "lastTransitionTime",
        ]
        assert c["observedGeneration"] == 7 and c["lastTransitionTime"] == NOW
        assert c["message"]
    for c in parent_status(res, "r")["conditions"]:
        assert c["observedGeneration"] == 3


def test_gateway_of_missing_class_is_a_problem_and_gets_no_status() -> None:
    res = resolve(config(gateway("gw", class_name="nope")))
    assert not has_status(res, "Gateway", "gw")
    assert res.listeners == ()
    [problem] = res.problems
    assert (problem.kind, problem.name, problem.field) == ("Gateway", "gw", "spec.gatewayClassName")
    assert "nope" in problem.message


def test_statuses_are_sorted_by_kind_namespace_name() -> None:
    res = resolve(
        config(
            gateway("z"),
            gateway("a", namespace="b-ns"),
            http_route("r2", parent("z")),
            http_route("r1", parent("z")),
            GRPCRoute(
                meta=Meta(namespace="default", name="g"),
                parent_refs=(parent("z"),),
                rules=(GRPCRouteRule(),),
            ),
        )
    )
    keys = [(s.kind, s.namespace, s.name) for s in res.statuses]
    assert keys == sorted(keys)
    assert [k[0] for k in keys] == [
        "GRPCRoute",
        "Gateway",
        "Gateway",
        "GatewayClass",
        "HTTPRoute",
        "HTTPRoute",
    ]
    assert all(s.api_version == "gateway.networking.k8s.io/v1" for s in res.statuses)


# --------------------------------------------------------------------------- listeners


def test_unsupported_protocol_next_to_a_valid_listener() -> None:
    res = resolve(
        config(gateway("gw", listener("http", 80), listener("tcp", 9000, "example.com/SCTP")))
    )
    gw = status_of(res, "Gateway", "gw")
    assert cond(gw, "Accepted") == ("True", "ListenersNotValid")
    assert cond(gw, "Programmed") == ("True", "Programmed")
    tcp = listener_status(res, "gw", "tcp")
    assert cond(tcp, "Accepted") == ("False", "UnsupportedProtocol")
    assert cond(tcp, "Programmed") == ("False", "Invalid")
    assert tcp["supportedKinds"] == []
    assert [b.listener_name for b in res.listeners] == ["http"]


def test_only_unsupported_protocols_gateway_not_accepted() -> None:
    res = resolve(config(gateway("gw", listener("udp", 53, "example.com/QUIC"))))
    gw = status_of(res, "Gateway", "gw")
    assert cond(gw, "Accepted") == ("False", "ListenersNotValid")
    assert cond(gw, "Programmed") == ("False", "Invalid")
    assert res.listeners == ()


@pytest.mark.parametrize(
    ("listeners", "conflicted", "reason"),
    [
        # HTTP and HTTPS (or TLS) cannot share a port
        (
            [
                listener("a", 8443, "HTTP"),
                listener("b", 8443, "HTTPS", tls=terminate("cert")),
                listener("c", 80),
            ],
            {"a", "b"},
            "ProtocolConflict",
        ),
        (
            [listener("a", 443, "HTTP"), listener("b", 443, "TLS", tls=passthrough())],
            {"a", "b"},
            "ProtocolConflict",
        ),
        # HTTPS and TLS share a port when SNI tells them apart (feature
        # GatewayHTTPSAndTLSPassthroughSamePort), overlapping hostnames included ...
        (
            [
                listener("a", 443, "HTTPS", hostname="*.example.com", tls=terminate("cert")),
                listener("b", 443, "TLS", hostname="abc.example.com", tls=passthrough()),
            ],
            set(),
            "",
        ),
        # ... as TLS listeners in both modes do
        (
            [
                listener("a", 443, "TLS", hostname="a.example.com", tls=terminate("cert")),
                listener("b", 443, "TLS", hostname="b.example.com", tls=passthrough()),
            ],
            set(),
            "",
        ),
        # ... and conflict when it cannot
        (
            [
                listener("a", 443, "HTTPS", hostname="a.example.com", tls=terminate("cert")),
                listener("b", 443, "TLS", hostname="a.example.com", tls=passthrough()),
            ],
            {"a", "b"},
            "HostnameConflict",
        ),
        (
            [
                listener("a", 80, hostname="x.example.com"),
                listener("b", 80, hostname="x.example.com"),
                listener("c", 80),
            ],
            {"a", "b"},
            "HostnameConflict",
        ),
        # an unsupported protocol does not conflict with anything
        ([listener("a", 80), listener("b", 80, "example.com/SCTP")], set(), ""),
        # TCP cannot share a port with HTTP; two TCP listeners cannot share one either
        ([listener("a", 80), listener("b", 80, "TCP")], {"a", "b"}, "ProtocolConflict"),
        (
            [listener("a", 90, "TCP"), listener("b", 90, "TCP", hostname="x.example.com")],
            {"a", "b"},
            "ProtocolConflict",
        ),
        # UDP port 80 is another port than TCP port 80
        ([listener("a", 80), listener("b", 80, "UDP")], set(), ""),
    ],
)
def test_listener_conflicts(listeners: list[Any], conflicted: set[str], reason: str) -> None:
    res = resolve(config(gateway("gw", *listeners), tls_secret("cert")))
    gw = status_of(res, "Gateway", "gw")
    for ls in gw["listeners"]:
        c = conditions_by_type(ls)
        if ls["name"] in conflicted:
            assert c["Conflicted"] == ("True", reason)
            assert c["Accepted"] == ("False", reason)
            assert c["Programmed"] == ("False", reason)
        else:
            assert c["Conflicted"] == ("False", "NoConflicts")
    bound = {b.listener_name for b in res.listeners}
    assert not (bound & conflicted)
    if conflicted:
        assert cond(gw, "Accepted")[1] == "ListenersNotValid"


def test_conflicted_listener_still_counts_attached_routes() -> None:
    res = resolve(
        config(
            gateway(
                "gw",
                listener("a", 80, hostname="x.example.com"),
                listener("b", 80, hostname="x.example.com"),
            ),
            http_route("r", parent(section="a")),
        )
    )
    assert listener_status(res, "gw", "a")["attachedRoutes"] == 1
    assert res.listeners == ()


@pytest.mark.parametrize(
    ("tls", "objects", "reason"),
    [
        (terminate("cert"), [tls_secret("cert")], None),
        (terminate("missing"), [], "InvalidCertificateRef"),
        (terminate("cert"), [tls_secret("cert", complete=False)], "InvalidCertificateRef"),
        (
            terminate(SecretObjectReference(name="cert", kind="ConfigMap")),
            [tls_secret("cert")],
            "InvalidCertificateRef",
        ),
        (
            terminate(SecretObjectReference(name="cert", group="wrong.group.company.io")),
            [tls_secret("cert")],
            "InvalidCertificateRef",
        ),
        (GatewayTLSConfig(mode=TLSModeType.TERMINATE), [], "InvalidCertificateRef"),
        (None, [], "InvalidCertificateRef"),
        (
            terminate(SecretObjectReference(name="cert", namespace="other")),
            [tls_secret("cert", "other")],
            "RefNotPermitted",
        ),
        # first failing ref decides the reason; the message lists all
        (
            terminate("missing", SecretObjectReference(name="c", namespace="other")),
            [],
            "InvalidCertificateRef",
        ),
    ],
)
def test_https_certificate_refs(
    tls: GatewayTLSConfig | None, objects: list[Any], reason: str | None
) -> None:
    res = resolve(
        config(gateway("gw", listener("https", 443, "HTTPS", tls=tls)), http_route("r"), *objects)
    )
    ls = listener_status(res, "gw", "https")
    c = conditions_by_type(ls)
    assert c["Accepted"] == ("True", "Accepted")
    # "AttachedRoutes set even when Gateway has unresolved refs" (conformance)
    assert ls["attachedRoutes"] == 1
    if reason is None:
        assert c["ResolvedRefs"] == ("True", "ResolvedRefs")
        assert c["Programmed"] == ("True", "Programmed")
        assert [(b.protocol, b.tls_mode) for b in res.listeners] == [("HTTPS", "Terminate")]
    else:
        assert c["ResolvedRefs"] == ("False", reason)
        assert c["Programmed"] == ("False", "Invalid")
        assert res.listeners == ()
        gw = status_of(res, "Gateway", "gw")
        assert cond(gw, "Accepted") == ("True", "Accepted")
        assert cond(gw, "Programmed") == ("False", "Invalid")
        assert cond(gw, "ResolvedRefs") == ("False", "ListenersNotResolved")


def test_passthrough_ignores_certificates() -> None:
    res = resolve(config(gateway("gw", listener("tls", 443, "TLS", tls=passthrough()))))
    assert cond(listener_status(res, "gw", "tls"), "ResolvedRefs") == ("True", "ResolvedRefs")
    assert [b.tls_mode for b in res.listeners] == ["Passthrough"]


def test_tls_terminate_listener_carries_tls_routes() -> None:
    res = resolve(
        config(
            gateway("gw", listener("tls", 443, "TLS", tls=terminate("cert"))), tls_secret("cert")
        )
    )
    ls = listener_status(res, "gw", "tls")
    assert ls["supportedKinds"] == [{"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}]
    assert cond(ls, "Programmed") == ("True", "Programmed")


@pytest.mark.parametrize(
    ("protocol", "kinds", "supported", "resolved"),
    [
        ("HTTP", [], ["HTTPRoute", "GRPCRoute"], ("True", "ResolvedRefs")),
        # HTTP/2 is served, so GRPCRoute attaches to HTTP listeners.
        ("HTTP", ["GRPCRoute"], ["GRPCRoute"], ("True", "ResolvedRefs")),
        ("HTTP", ["HTTPRoute", "GRPCRoute"], ["HTTPRoute", "GRPCRoute"], ("True", "ResolvedRefs")),
        ("HTTP", ["HTTPRoute"], ["HTTPRoute"], ("True", "ResolvedRefs")),
        ("HTTP", ["InvalidRoute", "HTTPRoute"], ["HTTPRoute"], ("False", "InvalidRouteKinds")),
        ("HTTP", ["InvalidRoute"], [], ("False", "InvalidRouteKinds")),
        ("HTTP", ["TLSRoute"], [], ("False", "InvalidRouteKinds")),
        ("TLS", ["TCPRoute", "TLSRoute"], ["TLSRoute"], ("False", "InvalidRouteKinds")),
    ],
)
def test_allowed_route_kinds(
    protocol: str, kinds: list[str], supported: list[str], resolved: tuple[str, str]
) -> None:
    tls = passthrough() if protocol == "TLS" else None
    res = resolve(config(gateway("gw", listener("l", 443, protocol, kinds=kinds, tls=tls))))
    ls = listener_status(res, "gw", "l")
    assert [k["kind"] for k in ls["supportedKinds"]] == supported
    assert cond(ls, "ResolvedRefs") == resolved
    assert cond(ls, "Accepted") == ("True", "Accepted")
    assert cond(ls, "Programmed")[0] == ("True" if supported else "False")


def test_frontend_validation_ca_refs() -> None:
    def tls(*refs: ObjectReference) -> GatewayTLSConfig:
        return GatewayTLSConfig(
            certificate_refs=(SecretObjectReference(name="cert"),),
            frontend_validation=FrontendValidation(ca_certificate_refs=refs),
        )

    ca = ConfigMap(meta=Meta(namespace="default", name="ca"), data=(("ca.crt", ca_pem()),))
    empty = ConfigMap(meta=Meta(namespace="default", name="empty"))
    res = resolve(
        config(
            gateway(
                "gw",
                listener(
                    "ok",
                    443,
                    "HTTPS",
                    hostname="ok.example.com",
                    tls=tls(ObjectReference(name="ca")),
                ),
                listener(
                    "some",
                    443,
                    "HTTPS",
                    hostname="some.example.com",
                    tls=tls(ObjectReference(name="ca"), ObjectReference(name="empty")),
                ),
                listener(
                    "none",
                    443,
                    "HTTPS",
                    hostname="none.example.com",
                    tls=tls(ObjectReference(name="missing")),
                ),
                listener(
                    "kind",
                    443,
                    "HTTPS",
                    hostname="kind.example.com",
                    tls=tls(ObjectReference(name="ca", kind="Pod")),
                ),
            ),
            ca,
            empty,
            tls_secret("cert"),
        )
    )
    c = {
        n: conditions_by_type(listener_status(res, "gw", n)) for n in ("ok", "some", "none", "kind")
    }
    assert c["ok"]["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert c["some"]["ResolvedRefs"] == ("False", "InvalidCACertificateRef")
    assert c["some"]["Accepted"] == ("True", "Accepted")
    assert c["none"]["Accepted"] == ("False", "NoValidCACertificate")
    assert c["none"]["ResolvedRefs"] == ("False", "InvalidCACertificateRef")
    assert c["kind"]["ResolvedRefs"] == ("False", "InvalidCACertificateKind")
    assert {b.listener_name for b in res.listeners} == {"ok", "some"}


@pytest.mark.parametrize(
    ("ref", "objects", "expected"),
    [
        (None, [], ("True", "ResolvedRefs")),
        (SecretObjectReference(name="client"), [tls_secret("client")], ("True", "ResolvedRefs")),
        (SecretObjectReference(name="nope"), [], ("False", "InvalidClientCertificateRef")),
        (
            SecretObjectReference(name="client", kind="WrongKind"),
            [tls_secret("client")],
            ("False", "InvalidClientCertificateRef"),
        ),
        (
            SecretObjectReference(name="client", namespace="x"),
            [tls_secret("client", "x")],
            ("False", "RefNotPermitted"),
        ),
    ],
)
def test_backend_client_certificate(
    ref: SecretObjectReference | None, objects: list[Any], expected: tuple[str, str]
) -> None:
    gw = replace(gateway("gw"), backend_client_certificate_ref=ref)
    res = resolve(config(gw, *objects))
    st = status_of(res, "Gateway", "gw")
    assert cond(st, "ResolvedRefs") == expected
    assert cond(st, "Accepted") == ("True", "Accepted")


# --------------------------------------------------------------------------- route reasons


def _ext(name: str = "my-filter") -> HTTPRouteFilter:
    return HTTPRouteFilter(
        type=FilterType.EXTENSION_REF,
        extension_ref=LocalObjectReference(group="example.com", kind="Auth", name=name),
    )


def test_extension_ref_filter_is_invalid_kind_but_accepted() -> None:
    res = resolve(
        config(gateway("gw"), http_route("r", filters=[_ext()], backends=[backend("svc")]))
    )
    p = parent_status(res, "r")
    assert cond(p, "Accepted") == ("True", "Accepted")
    assert cond(p, "ResolvedRefs") == ("False", "InvalidKind")
    msg = p["conditions"][1]["message"]
    assert "ExtensionRef" in msg and "example.com/Auth my-filter" in msg
    # the BackendNotFound of the missing Service is listed too
    assert "svc" in msg
    assert len(res.listeners[0].routes) == 1


def test_extension_ref_on_a_backend_ref() -> None:
    br = BackendRef(ref=BackendObjectReference(name="svc", port=8080), filters=(_ext(),))
    res = resolve(config(gateway("gw"), http_route("r", backends=[br]), service("svc")))
    assert cond(parent_status(res, "r"), "ResolvedRefs") == ("False", "InvalidKind")


def test_redirect_with_rewrite_is_incompatible_filters() -> None:
    filters = [
        HTTPRouteFilter(
            type=FilterType.REQUEST_REDIRECT, request_redirect=HTTPRequestRedirectFilter()
        ),
        HTTPRouteFilter(type=FilterType.URL_REWRITE, url_rewrite=HTTPURLRewriteFilter()),
    ]
    res = resolve(config(gateway("gw"), http_route("r", filters=filters)))
    assert cond(parent_status(res, "r"), "Accepted") == ("False", "IncompatibleFilters")
    assert listener_status(res, "gw", "http")["attachedRoutes"] == 0


def test_redirect_with_rewrite_on_a_backend_ref_is_incompatible_filters() -> None:
    filters = (
        HTTPRouteFilter(
            type=FilterType.REQUEST_REDIRECT, request_redirect=HTTPRequestRedirectFilter()
        ),
        HTTPRouteFilter(type=FilterType.URL_REWRITE, url_rewrite=HTTPURLRewriteFilter()),
    )
    br = BackendRef(ref=BackendObjectReference(name="svc", port=8080), filters=filters)
    res = resolve(config(gateway("gw"), http_route("r", backends=[br]), service("svc")))
    p = parent_status(res, "r")
    assert cond(p, "Accepted") == ("False", "IncompatibleFilters")
    assert "backendRefs[0].filters" in p["conditions"][0]["message"]


def test_grpc_route_with_http_only_filter_is_unsupported_value() -> None:
    redirect = HTTPRouteFilter(
        type=FilterType.REQUEST_REDIRECT, request_redirect=HTTPRequestRedirectFilter()
    )
    grpc = GRPCRoute(
        meta=Meta(namespace="default", name="g"),
        parent_refs=(parent(),),
        rules=(GRPCRouteRule(filters=(redirect,)),),
    )
    res = resolve(config(gateway("gw"), grpc))
    assert cond(parent_status(res, "g", kind="GRPCRoute"), "Accepted") == (
        "False",
        "UnsupportedValue",
    )
    assert listener_status(res, "gw", "http")["attachedRoutes"] == 0


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        (backend("svc", kind="ConfigMap"), "InvalidKind"),
        (backend("svc", group="example.com"), "InvalidKind"),
        (backend("ghost"), "BackendNotFound"),
        (backend("svc", namespace="other"), "RefNotPermitted"),
    ],
)
def test_route_resolved_refs_reasons(ref: BackendRef, reason: str) -> None:
    res = resolve(
        config(
            gateway("gw"), http_route("r", backends=[ref]), service("svc"), service("svc", "other")
        )
    )
    p = parent_status(res, "r")
    assert cond(p, "ResolvedRefs") == ("False", reason)
    assert cond(p, "Accepted") == ("True", "Accepted")


# --------------------------------------------------------------------------- failures


def test_with_listener_failures() -> None:
    res = resolve(
        config(
            gateway("gw", listener("a", 80), listener("b", 8080)),
            gateway("solo", listener("only", 80)),
            http_route("r", parent("gw")),
        ),
        now=NOW,
    )
    assert len(res.listeners) == 3
    out = with_listener_failures(
        res,
        {
            ("default", "gw", "a"): "cannot bind 127.0.10.1:80: address in use",
            ("default", "solo", "only"): "cannot bind 127.0.10.2:80: permission denied",
            ("default", "ghost", "x"): "ignored",
        },
    )
    assert [(b.gateway_name, b.listener_name) for b in out.listeners] == [("gw", "b")]
    a = listener_status(out, "gw", "a")
    assert cond(a, "Programmed") == ("False", "Invalid")
    prog = next(c for c in a["conditions"] if c["type"] == "Programmed")
    assert prog["message"] == "cannot bind 127.0.10.1:80: address in use"
    assert prog["lastTransitionTime"] == NOW
    assert cond(a, "Accepted") == ("True", "Accepted")
    assert a["attachedRoutes"] == 1
    assert cond(listener_status(out, "gw", "b"), "Programmed") == ("True", "Programmed")
    gw = status_of(out, "Gateway", "gw")
    assert cond(gw, "Programmed") == ("True", "Programmed")
    assert "address in use" in gw["conditions"][1]["message"]
    solo = status_of(out, "Gateway", "solo")
    assert cond(solo, "Programmed") == ("False", "Invalid")
    assert "permission denied" in solo["conditions"][1]["message"]
    assert "addresses" not in solo and "addresses" in gw
    # the input is untouched, route statuses are unchanged
    assert cond(listener_status(res, "gw", "a"), "Programmed") == ("True", "Programmed")
    assert status_of(out, "HTTPRoute", "r") == status_of(res, "HTTPRoute", "r")
    assert with_listener_failures(res, {}) is res


def test_listener_failure_does_not_override_an_earlier_reason() -> None:
    res = resolve(
        config(gateway("gw", listener("ok", 80), listener("tcp", 81, "example.com/SCTP")))
    )
    out = with_listener_failures(res, {("default", "gw", "tcp"): "cannot bind"})
    tcp = listener_status(out, "gw", "tcp")
    assert cond(tcp, "Programmed") == ("False", "Invalid")
    assert "cannot bind" not in str(tcp)
    assert cond(status_of(out, "Gateway", "gw"), "Programmed") == ("True", "Programmed")
    assert out.listeners == res.listeners


def test_resolve_is_deterministic() -> None:
    cfg = config(
        gateway("gw", listener("a", 80), listener("b", 8080, hostname="*.example.com")),
        http_route("r", hostnames=["x.example.com"], backends=[backend()]),
        http_route("s", parent(section="b")),
    )
    assert resolve(cfg, now=NOW) == resolve(cfg, now=NOW)


def test_controller_name_parameter() -> None:
    res = resolve(
        config(gateway("gw"), classes=[gateway_class(controller="example.com/ctl")]),
        controller_name="example.com/ctl",
    )
    assert has_status(res, "Gateway", "gw")
    res2 = resolve(config(gateway("gw"), classes=[gateway_class(controller="example.com/ctl")]))
    assert not has_status(res2, "Gateway", "gw")
    assert CONTROLLER != "example.com/ctl"


def test_cors_on_a_backend_ref_is_unsupported_value() -> None:
    cors = HTTPRouteFilter(type=FilterType.CORS, cors=HTTPCORSFilter())
    br = BackendRef(ref=BackendObjectReference(name="svc", port=8080), filters=(cors,))
    res = resolve(config(gateway("gw"), http_route("r", backends=[br]), service("svc")))
    p = parent_status(res, "r")
    assert cond(p, "Accepted") == ("False", "UnsupportedValue")
    assert "backendRefs[0].filters[0]: CORS" in p["conditions"][0]["message"]
