"""Golden status files for a few invalid configurations, compared exactly.

Regenerate after an intended change with:

    GATEWAYD_REGEN_GOLDEN=1 .venv/bin/pytest tests/routing/test_status_golden.py

and review the diff of tests/routing/golden/*.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from status_builders import (
    backend,
    config,
    endpoint_slice,
    gateway,
    gateway_class,
    grant,
    http_route,
    listener,
    listener_set,
    namespace,
    parent,
    passthrough,
    service,
    terminate,
    tls_secret,
)

from gatewayd.routing.config.model import (
    AllowedListeners,
    BackendLBPolicy,
    Config,
    Endpoint,
    FilterType,
    FromNamespaces,
    Gateway,
    GatewayAddress,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRouteFilter,
    LabelSelector,
    LabelSelectorRequirement,
    ListenerSet,
    LocalObjectReference,
    Meta,
    PolicyTargetReference,
    SecretObjectReference,
    ServicePort,
    SessionPersistence,
    Source,
    TLSRoute,
    TLSRouteRule,
)
from gatewayd.routing.control.bindings import Resolution
from gatewayd.routing.control.resolve import resolve

GOLDEN = Path(__file__).parent / "golden"
NOW = "2024-01-01T00:00:00Z"


def src(file: str, index: int) -> Source:
    return Source(file=file, index=index)


def listener_problems() -> Config:
    """One Gateway with every kind of listener problem next to a healthy listener."""
    return config(
        gateway(
            "edge",
            listener("http", 80),
            listener("sctp", 9000, "example.com/SCTP"),
            listener("clash-http", 8443, "HTTP"),
            listener("clash-https", 8443, "HTTPS", tls=terminate("cert")),
            listener("dup-a", 8080, hostname="dup.example.com"),
            listener("dup-b", 8080, hostname="dup.example.com"),
            listener("no-cert", 443, "HTTPS", hostname="a.example.com", tls=terminate("missing")),
            listener(
                "foreign-cert",
                443,
                "HTTPS",
                hostname="b.example.com",
                tls=terminate(SecretObjectReference(name="cert", namespace="vault")),
            ),
            listener("bad-kinds", 8081, kinds=["HTTPRoute", "TCPRoute"]),
            listener("tls", 443, "TLS", hostname="c.example.com", tls=passthrough()),
            generation=4,
        ),
        tls_secret("cert"),
        tls_secret("cert", "vault"),
        http_route("web", parent("edge"), backends=[backend()], generation=2),
        service(),
        endpoint_slice("svc-1", endpoints=[Endpoint(addresses=("10.0.0.1",))]),
    )


def route_problems() -> Config:
    """Routes refused or partly unresolved, each for a different reason."""
    ext = HTTPRouteFilter(
        type=FilterType.EXTENSION_REF,
        extension_ref=LocalObjectReference(group="example.com", kind="RateLimit", name="rl"),
    )
    selector = LabelSelector(
        match_expressions=(LabelSelectorRequirement(key="env", operator="In", values=("prod",)),)
    )
    return config(
        namespace("shop", env="prod"),
        namespace("blog", env="dev"),
        gateway(
            "gw",
            listener(
                "web",
                80,
                hostname="*.example.com",
                from_=FromNamespaces.SELECTOR,
                selector=selector,
            ),
            listener("admin", 8080, hostname="admin.example.com"),
            namespace="infra",
        ),
        gateway("theirs", class_name="other-class", namespace="infra"),
        http_route(
            "shop",
            parent("gw", "infra"),
            namespace="shop",
            hostnames=["shop.example.com", "shop.example.net"],
            backends=[backend("cart"), backend("payments", namespace="billing"), backend("ghost")],
            creation_timestamp="2024-01-02T00:00:00Z",
        ),
        http_route("blog", parent("gw", "infra"), namespace="blog", hostnames=["blog.example.com"]),
        http_route(
            "wrong-host", parent("gw", "infra"), namespace="shop", hostnames=["www.example.org"]
        ),
        http_route("no-section", parent("gw", "infra", section="metrics"), namespace="shop"),
        http_route(
            "ext",
            parent("gw", "infra", section="web"),
            parent("theirs", "infra"),
            parent("gone", "infra"),
            namespace="shop",
            hostnames=["ext.example.com"],
            filters=[ext],
            source=src("routes.yaml", 3),
        ),
        TLSRoute(
            meta=Meta(namespace="shop", name="tls-on-http"),
            parent_refs=(parent("gw", "infra"),),
            hostnames=("tls.example.com",),
            rules=(TLSRouteRule(backend_refs=(backend("tls-svc", 443),)),),
        ),
        service("cart", "shop"),
        service("payments", "billing"),
        grant("billing", from_namespace="elsewhere"),
        classes=[gateway_class(), gateway_class("other-class", "example.com/other")],
    )


def unserved_features() -> Config:
    """Features the data plane does not serve yet, each reported instead of claimed:
    sessionPersistence on a GRPCRoute (HTTPRoutes serve it), WebSocket-over-TLS
    backends, listener tls.options."""
    sticky = GRPCRoute(
        meta=Meta(namespace="default", name="sticky"),
        parent_refs=(parent("gw"),),
        rules=(
            GRPCRouteRule(
                backend_refs=(backend(),), session_persistence=SessionPersistence(type="Cookie")
            ),
        ),
    )
    hardened = replace(terminate("cert"), options=(("example.com/min-tls-version", "1.3"),))
    return config(
        gateway(
            "gw",
            listener("http", 80),
            listener("grpc-only", 8080, kinds=["GRPCRoute", "HTTPRoute"]),
            listener("https", 443, "HTTPS", hostname="secure.example.com", tls=hardened),
        ),
        tls_secret("cert"),
        GRPCRoute(
            meta=Meta(namespace="default", name="grpc"),
            parent_refs=(parent("gw"),),
            rules=(GRPCRouteRule(backend_refs=(backend(),)),),
        ),
        sticky,
        http_route("chat", parent("gw", section="http"), backends=[backend("ws", 8080)]),
        service(),
        service("ws", ports=[ServicePort(name="ws", port=8080, app_protocol="kubernetes.io/wss")]),
        endpoint_slice("svc-1", endpoints=[Endpoint(addresses=("10.0.0.1",))]),
    )


def backend_lb_policies() -> Config:
    """BackendLBPolicy: the older of two policies on a Service wins (the other is
    Conflicted), a rule's own sessionPersistence is named as taking precedence, a missing
    target is TargetNotFound, a non-Service target is ignored (said in the message)."""
    overriding = http_route("own-session", parent("gw"), backends=[backend()])
    overriding = replace(
        overriding,
        rules=(
            replace(overriding.rules[0], session_persistence=SessionPersistence(session_name="r")),
        ),
    )

    def lb(name: str, created: str, *targets: PolicyTargetReference) -> BackendLBPolicy:
        return BackendLBPolicy(
            meta=Meta(namespace="default", name=name, creation_timestamp=created),
            target_refs=targets,
            session_persistence=SessionPersistence(session_name=name),
        )

    svc = PolicyTargetReference(group="", kind="Service", name="svc")
    return config(
        gateway("gw", listener("http", 80)),
        gateway("other", listener("http", 8080)),
        http_route("plain", parent("gw"), backends=[backend()]),
        overriding,
        http_route("to-gone", parent("other"), backends=[backend("gone")]),
        service(),
        endpoint_slice("svc-1", endpoints=[Endpoint(addresses=("10.0.0.1",))]),
        lb(
            "older",
            "2024-01-01T00:00:00Z",
            svc,
            PolicyTargetReference(group="multicluster.x-k8s.io", kind="ServiceImport", name="i"),
        ),
        lb("newer", "2024-02-01T00:00:00Z", svc),
        lb("targets-gone", "2024-01-01T00:00:00Z", replace(svc, name="gone")),
    )


def address_problems() -> Config:
    """Static and pool addresses that cannot all be used."""
    return config(
        gateway("first", addresses=["127.0.0.5"], creation_timestamp="2024-01-01T00:00:00Z"),
        gateway("second", addresses=["127.0.0.5"], creation_timestamp="2024-01-02T00:00:00Z"),
        gateway(
            "remote",
            addresses=["192.0.2.1", "127.0.0.6"],
            creation_timestamp="2024-01-03T00:00:00Z",
        ),
        gateway(
            "by-name",
            addresses=[GatewayAddress(type="Hostname", value="gw.example.com")],
            creation_timestamp="2024-01-04T00:00:00Z",
        ),
        gateway("pooled", creation_timestamp="2024-01-05T00:00:00Z"),
        gateway("no-room", creation_timestamp="2024-01-06T00:00:00Z"),
        gateway("orphan", class_name="missing", source=src("gateways.yaml", 6)),
    )


def allowing(gw: Gateway, from_: str, selector: LabelSelector | None = None) -> Gateway:
    return replace(gw, allowed_listeners=AllowedListeners(namespaces_from=from_, selector=selector))


def listener_sets() -> Config:
    """ListenerSets attached, refused and conflicting, and routes attaching to them."""
    ts = "2024-01-01T00:00:0{}Z".format
    lsets: list[ListenerSet] = [
        listener_set(
            "team-a",
            "gw",
            listener("a", 80, hostname="a.example.com"),
            listener("a-tls", 443, "HTTPS", hostname="a.example.com", tls=terminate("cert")),
            namespace="infra",
            creation_timestamp=ts(1),
        ),
        # conflicts: with the Gateway's listener (hostname), then with team-a (protocol)
        listener_set(
            "team-b",
            "gw",
            listener("b", 80, hostname="edge.example.com"),
            listener("b-tcp", 443, "TCP"),
            listener("b-ok", 80, hostname="b.example.com"),
            namespace="infra",
            parent_namespace="infra",
            creation_timestamp=ts(2),
        ),
        # selected by namespace label, but its certificate needs a ReferenceGrant
        listener_set(
            "team-c",
            "gw",
            listener(
                "c",
                8443,
                "HTTPS",
                hostname="c.example.com",
                tls=terminate(SecretObjectReference(name="cert", namespace="infra")),
            ),
            namespace="shop",
            parent_namespace="infra",
            creation_timestamp=ts(3),
        ),
        listener_set(
            "refused", "gw", listener("r", 80), namespace="blog", parent_namespace="infra"
        ),
        listener_set("closed", "closed", listener("x", 80), namespace="infra"),
        listener_set("theirs", "theirs", listener("x", 80), namespace="infra"),
        listener_set(
            "orphan", "gone", listener("x", 80), namespace="infra", source=src("ls.yaml", 3)
        ),
    ]
    return config(
        namespace("infra", team="yes"),
        namespace("shop", team="yes"),
        namespace("blog"),
        allowing(
            gateway("gw", listener("edge", 80, hostname="edge.example.com"), namespace="infra"),
            "Selector",
            LabelSelector(match_labels=(("team", "yes"),)),
        ),
        gateway("closed", listener("edge", 9090), namespace="infra"),
        gateway("theirs", class_name="other-class", namespace="infra"),
        *lsets,
        tls_secret("cert", "infra"),
        http_route(
            "to-a",
            parent("team-a", "infra", section="a", kind="ListenerSet"),
            namespace="infra",
            backends=[backend()],
        ),
        http_route(
            "to-refused",
            parent("refused", "blog", kind="ListenerSet"),
            parent("missing", "infra", kind="ListenerSet"),
            namespace="infra",
        ),
        service(namespace="infra"),
        endpoint_slice("svc-1", namespace="infra", endpoints=[Endpoint(addresses=("10.0.0.1",))]),
    )


def summary(res: Resolution) -> dict[str, object]:
    return {
        "statuses": [st.as_item() for st in res.statuses],
        "problems": [str(p) for p in res.problems],
        "listeners": [
            {
                "gateway": f"{b.gateway_namespace}/{b.gateway_name}",
                "listener": b.listener_name,
                "address": f"{b.address}:{b.port}",
                "protocol": b.protocol,
                "hostname": b.hostname,
                "tlsMode": b.tls_mode,
                "routes": [
                    {
                        "route": f"{ar.route.meta.namespace}/{ar.route.meta.name}",
                        "hostnames": list(ar.hostnames),
                    }
                    for ar in b.routes
                ],
            }
            for b in res.listeners
        ],
        "backends": {
            f"{k.kind} {k.namespace}/{k.name}:{k.port}": {
                "name": t.name,
                "invalid": t.invalid,
                "message": t.message,
                "endpoints": [f"{e.address}:{e.port}" for e in t.endpoints],
            }
            for k, t in sorted(
                res.backends.items(), key=lambda kv: (kv[0].namespace, kv[0].name, kv[0].port or 0)
            )
        },
        "gatewayAddresses": {
            f"{ns}/{name}": a for (ns, name), a in sorted(res.gateway_addresses.items())
        },
        # BackendLBPolicy sessions per Service (only where some policy applies).
        **(
            {
                "backendSessions": {
                    f"{ns}/{name}": {"policy": policy, "sessionName": sp.session_name}
                    for (ns, name), (policy, sp) in sorted(res.backend_sessions.items())
                }
            }
            if res.backend_sessions
            else {}
        ),
    }


CASES: dict[str, Callable[[], Resolution]] = {
    "listener_problems": lambda: resolve(listener_problems(), now=NOW),
    "route_problems": lambda: resolve(route_problems(), now=NOW),
    "unserved_features": lambda: resolve(unserved_features(), now=NOW),
    "listener_sets": lambda: resolve(listener_sets(), now=NOW),
    "backend_lb_policies": lambda: resolve(backend_lb_policies(), now=NOW),
    "address_problems": lambda: resolve(
        address_problems(),
        now=NOW,
        address_pool="127.0.10.1/32",
        is_local_address=lambda a: a.startswith("127."),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    got = json.dumps(summary(CASES[name]()), indent=2, sort_keys=False) + "\n"
    path = GOLDEN / f"{name}.json"
    if os.environ.get("GATEWAYD_REGEN_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.exists(), f"{path} missing: run with GATEWAYD_REGEN_GOLDEN=1"
    assert got == path.read_text(encoding="utf-8")
