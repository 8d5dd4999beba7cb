"""ListenerSet through ``gatewayd run``: the upstream ListenerSet conformance scenarios.

One daemon serves a Gateway per scenario (each on its own port), with the manifests of
conformance/tests/listenerset-*.yaml rewritten for gatewayd (ports, echo backends), and
checks both the statuses the conformance tests read and the requests they make.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Doc,
    EchoBackend,
    Gatewayd,
    assert_condition,
    backend_ref,
    conditions,
    free_port,
    gateway,
    gateway_class,
    http_route,
    reference_grant,
    request,
    rule,
    to_yaml,
)

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

INFRA = "infra"
GW_API = "gateway.networking.k8s.io/v1"


def ls_listener(
    name: str,
    port: int,
    hostname: str | None,
    *,
    protocol: str = "HTTP",
    from_namespaces: str = "All",
    tls: Doc | None = None,
) -> Doc:
    doc: Doc = {
        "name": name,
        "port": port,
        "protocol": protocol,
        "allowedRoutes": {"namespaces": {"from": from_namespaces}},
    }
    if hostname is not None:
        doc["hostname"] = hostname
    if tls is not None:
        doc["tls"] = tls
    return doc


def allow(gw: Doc, from_: str, selector: Doc | None = None) -> Doc:
    namespaces: Doc = {"from": from_}
    if selector is not None:
        namespaces["selector"] = selector
    gw["spec"]["allowedListeners"] = {"namespaces": namespaces}
    return gw


def listener_set(
    name: str, parent: str, listeners: list[Doc], *, namespace: str = INFRA, created: str = ""
) -> Doc:
    meta: Doc = {"name": name, "namespace": namespace}
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": GW_API,
        "kind": "ListenerSet",
        "metadata": meta,
        "spec": {
            "parentRef": {
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "name": parent,
                "namespace": INFRA,
            },
            "listeners": listeners,
        },
    }


def namespace_manifest(name: str, labels: dict[str, str] | None = None) -> Doc:
    meta: Doc = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def route(name: str, parents: list[Doc], prefix: str, backend: str, ns: str = INFRA) -> Doc:
    prefix_match = {"path": {"type": "PathPrefix", "value": prefix}}
    backends = [backend_ref(backend, namespace=INFRA)]
    doc = http_route(name, [rule(matches=[prefix_match], backends=backends)])
    doc["metadata"]["namespace"] = ns
    doc["spec"]["parentRefs"] = parents
    return doc


def gw_parent(name: str, section: str | None = None) -> Doc:
    ref: Doc = {"name": name, "namespace": INFRA}
    if section is not None:
        ref["sectionName"] = section
    return ref


def ls_parent(name: str, section: str | None = None) -> Doc:
    ref: Doc = {
        "group": "gateway.networking.k8s.io",
        "kind": "ListenerSet",
        "name": name,
        "namespace": INFRA,
    }
    if section is not None:
        ref["sectionName"] = section
    return ref


def http(name: str, port: int, hostname: str, from_namespaces: str = "All") -> Doc:
    return ls_listener(name, port, hostname, from_namespaces=from_namespaces)


@dataclass
class Env:
    daemon: Gatewayd
    ports: dict[str, int]
    addresses: dict[str, str]
    cert: bytes


def _namespaces() -> list[Doc]:
    return [
        namespace_manifest(INFRA),
        namespace_manifest("not-allowed-ns"),
        namespace_manifest("selected-ns", labels={"listenerset": "allowed"}),
        namespace_manifest("unselected-ns"),
        namespace_manifest("routes-allowed-ns", labels={"routes": "allowed"}),
        namespace_manifest("routes-not-allowed-ns"),
        namespace_manifest("certs"),
        namespace_manifest("ungranted-ns"),
    ]


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    v1, v2, v3 = module_echoes.start(
        "infra-backend-v1", "infra-backend-v2", "infra-backend-v3", namespace=INFRA
    )
    echoes: list[EchoBackend] = [v1, v2, v3]
    names = (
        "routing",
        "none",
        "same",
        "selector",
        "hostconf",
        "protoconf",
        "tls",
        "dual",
        "section",
        "scoped",
        "routens",
    )
    names = (*names, "none2")
    # One loopback address per Gateway: two Gateways cannot share an address.
    addresses = {n: f"127.0.{20 + i}.1" for i, n in enumerate(names)}
    ports = {n: free_port() for n in names}
    ports["none2"] = ports["none"]
    p = ports
    docs: list[Doc] = [gateway_class(), *_namespaces()]
    for echo in echoes:
        docs.extend(echo.manifests())

    # ListenerSetHTTPRouting
    docs += [
        allow(
            gateway(
                "gw-routing",
                [
                    http("gateway-listener-1", p["routing"], "gateway-listener-1.com"),
                    http("gateway-listener-2", p["routing"], "gateway-listener-2.com"),
                ],
                namespace=INFRA,
            ),
            "All",
        ),
        listener_set(
            "ls-routing-1",
            "gw-routing",
            [
                http("ls1-listener-1", p["routing"], "ls1-listener-1.com"),
                http("ls1-listener-2", p["routing"], "ls1-listener-2.com"),
            ],
        ),
        listener_set(
            "ls-routing-2",
            "gw-routing",
            [
                http("ls2-listener-1", p["routing"], "ls2-listener-1.com"),
                http("ls2-listener-2", p["routing"], "ls2-listener-2.com"),
            ],
        ),
        route(
            "attaches-to-all-listeners",
            [gw_parent("gw-routing"), ls_parent("ls-routing-1"), ls_parent("ls-routing-2")],
            "/route",
            "infra-backend-v1",
        ),
        route("gateway-route", [gw_parent("gw-routing")], "/gateway-route", "infra-backend-v2"),
        route(
            "gateway-section-route",
            [gw_parent("gw-routing", "gateway-listener-1")],
            "/gateway-section-route",
            "infra-backend-v3",
        ),
        route("ls1-route", [ls_parent("ls-routing-1")], "/ls1-route", "infra-backend-v2"),
        route(
            "ls1-section-route",
            [ls_parent("ls-routing-1", "ls1-listener-1")],
            "/ls1-section-route",
            "infra-backend-v3",
        ),
        route("ls2-route", [ls_parent("ls-routing-2")], "/ls2-route", "infra-backend-v2"),
    ]
    # ListenerSetDefaultNotAllowed / ListenerSetAllowedNamespaceNone
    docs += [
        gateway("gw-default", [http("gw", p["none"], "gw-default.com")], namespace=INFRA),
        listener_set(
            "ls-default-not-allowed", "gw-default", [http("ls", p["none"], "ls-default.com")]
        ),
        allow(gateway("gw-none", [http("gw", p["none"], "gw-none.com")], namespace=INFRA), "None"),
        listener_set("ls-none-not-allowed", "gw-none", [http("ls", p["none"], "ls-none.com")]),
        route(
            "route-to-disallowed", [ls_parent("ls-default-not-allowed")], "/", "infra-backend-v1"
        ),
    ]
    # ListenerSetAllowedNamespaceSame / ...Selector
    docs += [
        allow(gateway("gw-same", [http("gw", p["same"], "gw-same.com")], namespace=INFRA), "Same"),
        listener_set(
            "ls-in-same-namespace", "gw-same", [http("ls-same", p["same"], "ls-same.com")]
        ),
        listener_set(
            "ls-in-different-namespace",
            "gw-same",
            [http("ls-other", p["same"], "ls-other.com")],
            namespace="not-allowed-ns",
        ),
        allow(
            gateway("gw-selector", [http("gw", p["selector"], "gw-sel.com")], namespace=INFRA),
            "Selector",
            {"matchLabels": {"listenerset": "allowed"}},
        ),
        listener_set(
            "ls-in-selected-namespace",
            "gw-selector",
            [http("ls-sel", p["selector"], "ls-sel.com")],
            namespace="selected-ns",
        ),
        listener_set(
            "ls-not-in-selected-namespace",
            "gw-selector",
            [http("ls-unsel", p["selector"], "ls-unsel.com")],
            namespace="unselected-ns",
        ),
    ]
    # ListenerSetHostnameConflict / ListenerSetProtocolConflict
    for kind, port in (("host", p["hostconf"]), ("proto", p["protoconf"])):
        gw = f"gw-{kind}conf"
        docs.append(
            allow(
                gateway(
                    gw,
                    [
                        http("gateway-listener", port, "gateway-listener.com"),
                        http(
                            "conflict-with-gateway-listener",
                            port,
                            "conflict-with-gateway-listener.com",
                        ),
                    ],
                    namespace=INFRA,
                ),
                "Same",
            )
        )

        def loser(name: str, hostname: str, port: int = port, kind: str = kind) -> Doc:
            if kind == "proto":
                return ls_listener(name, port, None, protocol="TCP")
            return http(name, port, hostname)

        docs += [
            listener_set(
                f"{kind}-conflict-with-gateway-1",
                gw,
                [
                    http("listener-set-1-listener", port, "listener-set-1-listener.com"),
                    loser("conflict-with-gateway-listener", "conflict-with-gateway-listener.com"),
                    http(
                        "conflict-with-listener-set-listener", port, "conflict-with-ls-listener.com"
                    ),
                ],
                created="2024-01-01T00:00:01Z",
            ),
            listener_set(
                f"{kind}-conflict-with-gateway-2",
                gw,
                [
                    loser("conflict-with-gateway-listener", "conflict-with-gateway-listener.com"),
                ],
                created="2024-01-01T00:00:02Z",
            ),
            listener_set(
                f"{kind}-conflict-with-listener-set-1",
                gw,
                [
                    http("listener-set-2-listener", port, "listener-set-2-listener.com"),
                    loser("conflict-with-listener-set-listener", "conflict-with-ls-listener.com"),
                ],
                created="2024-01-01T00:00:03Z",
            ),
            listener_set(
                f"{kind}-conflict-with-listener-set-2",
                gw,
                [
                    loser("conflict-with-listener-set-listener", "conflict-with-ls-listener.com"),
                ],
                created="2024-01-01T00:00:04Z",
            ),
            route(
                f"{kind}-winner",
                [ls_parent(f"{kind}-conflict-with-gateway-1")],
                "/",
                "infra-backend-v3",
            ),
            route(f"{kind}-gw", [gw_parent(gw)], "/", "infra-backend-v1"),
        ]
    # ListenerSetReferenceGrant
    cert, key = self_signed(["gateway-listener.com", "ls-granted.com", "ls-ungranted.com"])
    tls = {
        "mode": "Terminate",
        "certificateRefs": [
            {"group": "", "kind": "Secret", "name": "certificate", "namespace": "certs"}
        ],
    }
    docs += [
        allow(
            gateway(
                "gw-tls",
                [
                    ls_listener(
                        "gateway-listener",
                        p["tls"],
                        "gateway-listener.com",
                        protocol="HTTPS",
                        tls=tls,
                    )
                ],
                namespace=INFRA,
            ),
            "All",
        ),
        reference_grant(
            "grant-for-gateway",
            "certs",
            from_namespace=INFRA,
            from_kind="Gateway",
            to_kind="Secret",
        ),
        listener_set(
            "ls-with-grant",
            "gw-tls",
            [
                ls_listener(
                    "ls-granted-listener", p["tls"], "ls-granted.com", protocol="HTTPS", tls=tls
                )
            ],
        ),
        reference_grant(
            "grant-for-ls", "certs", from_namespace=INFRA, from_kind="ListenerSet", to_kind="Secret"
        ),
        listener_set(
            "ls-without-grant",
            "gw-tls",
            [
                ls_listener(
                    "ls-ungranted-listener", p["tls"], "ls-ungranted.com", protocol="HTTPS", tls=tls
                )
            ],
            namespace="ungranted-ns",
        ),
        route("tls-route", [ls_parent("ls-with-grant")], "/", "infra-backend-v2"),
    ]
    # ListenerSetDualParentRefIndependence
    docs += [
        allow(
            gateway(
                "gw-dual",
                [http("gw-dual-listener", p["dual"], "gw-dual.com", "Same")],
                namespace=INFRA,
            ),
            "Same",
        ),
        listener_set(
            "ls-dual", "gw-dual", [http("ls-dual-listener", p["dual"], "ls-dual.com", "Same")]
        ),
        route(
            "route-dual-both",
            [gw_parent("gw-dual"), ls_parent("ls-dual")],
            "/dualboth",
            "infra-backend-v1",
        ),
        route(
            "route-dual-one",
            [gw_parent("gw-dual", "ls-dual-listener"), ls_parent("ls-dual")],
            "/dualone",
            "infra-backend-v2",
        ),
    ]
    # ListenerSetGatewayParentSectionNameNotFound
    docs += [
        allow(
            gateway(
                "gw-section",
                [http("gw-listener", p["section"], "gw-section.com", "Same")],
                namespace=INFRA,
            ),
            "Same",
        ),
        listener_set(
            "ls-section",
            "gw-section",
            [http("ls-listener", p["section"], "ls-section-name.com", "Same")],
        ),
        route(
            "route-via-ls",
            [ls_parent("ls-section", "ls-listener")],
            "/goodsection",
            "infra-backend-v1",
        ),
        route(
            "route-via-gateway",
            [gw_parent("gw-section", "ls-listener")],
            "/badsection",
            "infra-backend-v1",
        ),
    ]
    # ListenerSetRouteStatusScopedToParentRef
    docs += [
        allow(
            gateway(
                "gw-scoped",
                [http("gw-parentref-listener", p["scoped"], "gw-parentref.com", "Same")],
                namespace=INFRA,
            ),
            "Same",
        ),
        listener_set(
            "ls-scoped",
            "gw-scoped",
            [http("ls-parentref-listener", p["scoped"], "ls-parentref.com", "Same")],
        ),
        route("route-gwonly", [gw_parent("gw-scoped")], "/gwonly", "infra-backend-v1"),
        route("route-lsonly", [ls_parent("ls-scoped")], "/lsonly", "infra-backend-v2"),
    ]
    # ListenerSetAllowedRoutesNamespaces / ...SupportedKinds
    docs += [
        allow(
            gateway(
                "gw-routens",
                [http("gateway-listener", p["routens"], "gw-routens.com")],
                namespace=INFRA,
            ),
            "All",
        ),
        listener_set(
            "ls-routens",
            "gw-routens",
            [
                http("allowed-routes-all", p["routens"], "all.com", "All"),
                http("allowed-routes-same", p["routens"], "same.com", "Same"),
                {
                    **http("allowed-routes-selector", p["routens"], "selector.com"),
                    "allowedRoutes": {
                        "namespaces": {
                            "from": "Selector",
                            "selector": {"matchLabels": {"routes": "allowed"}},
                        }
                    },
                },
                {
                    **ls_listener(
                        "tls-only",
                        free_port(),
                        "tls-only.com",
                        protocol="TLS",
                        tls={"mode": "Passthrough"},
                    ),
                    "allowedRoutes": {
                        "namespaces": {"from": "All"},
                        "kinds": [{"kind": "HTTPRoute"}],
                    },
                },
            ],
        ),
        route(
            "route-in-same-namespace",
            [ls_parent("ls-routens")],
            "/route-in-same-namespace",
            "infra-backend-v1",
        ),
        route(
            "route-in-selected-namespace",
            [ls_parent("ls-routens")],
            "/route-in-selected-namespace",
            "infra-backend-v2",
            ns="routes-allowed-ns",
        ),
        route(
            "route-not-in-selected-namespace",
            [ls_parent("ls-routens")],
            "/route-not-in-selected-namespace",
            "infra-backend-v3",
            ns="routes-not-allowed-ns",
        ),
        # routes in other namespaces reach the infra backends through a grant
        reference_grant("routes-to-infra", INFRA, from_namespace="routes-allowed-ns"),
        reference_grant("routes-to-infra-2", INFRA, from_namespace="routes-not-allowed-ns"),
    ]
    owner = {"gw-default": "none", "gw-none": "none2"}
    for doc in docs:
        if doc["kind"] == "Gateway":
            name = doc["metadata"]["name"]
            where = owner.get(name, name.removeprefix("gw-"))
            doc["spec"]["addresses"] = [{"type": "IPAddress", "value": addresses[where]}]
    text = (
        to_yaml(docs) + "---\n" + secret_manifest(cert, key, name="certificate", namespace="certs")
    )
    return Env(module_gatewayd(text), ports, addresses, cert)


def ls_status(env: Env, name: str, namespace: str = INFRA) -> Doc:
    return env.daemon.status_of("ListenerSet", name, namespace=namespace)


def gw_status(env: Env, name: str) -> Doc:
    return env.daemon.status_of("Gateway", name, namespace=INFRA)


def listener_of(status: Doc, name: str) -> Doc:
    found = [li for li in status["listeners"] if li["name"] == name]
    assert found, f"no listener {name} in {status}"
    return found[0]


def assert_listener_ok(status: Doc, name: str, attached: int | None = None) -> None:
    li = listener_of(status, name)
    for ctype in ("Accepted", "Programmed", "ResolvedRefs"):
        assert_condition(li, ctype, "True")
    assert li["supportedKinds"][0]["kind"] == "HTTPRoute"
    if attached is not None:
        assert li["attachedRoutes"] == attached, li


def parent_entry(status: Doc, kind: str, name: str, section: str | None = None) -> Doc:
    found = [
        p
        for p in status["parents"]
        if p["parentRef"]["kind"] == kind
        and p["parentRef"]["name"] == name
        and p["parentRef"].get("sectionName") == section
    ]
    assert len(found) == 1, status
    return found[0]


def served_by(env: Env, key: str, host: str, path: str) -> str | int:
    r = request(env.ports[key], path, host=host, address=env.addresses[key])
    return r.echo()["pod"] if r.status == 200 else r.status


def test_http_routing(env: Env) -> None:
    assert gw_status(env, "gw-routing")["attachedListenerSets"] == 2
    s1 = ls_status(env, "ls-routing-1")
    assert_condition(s1, "Accepted", "True", "Accepted")
    assert_condition(s1, "Programmed", "True", "Programmed")
    assert_listener_ok(s1, "ls1-listener-1", 3)
    assert_listener_ok(s1, "ls1-listener-2", 2)
    s2 = ls_status(env, "ls-routing-2")
    assert_listener_ok(s2, "ls2-listener-1", 2)
    assert_listener_ok(s2, "ls2-listener-2", 2)
    gw = gw_status(env, "gw-routing")
    assert listener_of(gw, "gateway-listener-1")["attachedRoutes"] == 3
    assert listener_of(gw, "gateway-listener-2")["attachedRoutes"] == 2
    route_st = env.daemon.status_of("HTTPRoute", "attaches-to-all-listeners", namespace=INFRA)
    for kind, name in (
        ("Gateway", "gw-routing"),
        ("ListenerSet", "ls-routing-1"),
        ("ListenerSet", "ls-routing-2"),
    ):
        entry = parent_entry(route_st, kind, name)
        assert entry["parentRef"]["namespace"] == INFRA
        assert_condition(entry, "Accepted", "True", "Accepted")
    gw_hosts = ["gateway-listener-1.com", "gateway-listener-2.com"]
    ls1_hosts = ["ls1-listener-1.com", "ls1-listener-2.com"]
    ls2_hosts = ["ls2-listener-1.com", "ls2-listener-2.com"]
    every = gw_hosts + ls1_hosts + ls2_hosts
    expected: dict[tuple[str, str], str | int] = {}
    for host in every:
        expected[(host, "/route")] = "infra-backend-v1"
        expected[(host, "/gateway-route")] = "infra-backend-v2" if host in gw_hosts else 404
        expected[(host, "/gateway-section-route")] = (
            "infra-backend-v3" if host == "gateway-listener-1.com" else 404
        )
        expected[(host, "/ls1-route")] = "infra-backend-v2" if host in ls1_hosts else 404
        expected[(host, "/ls1-section-route")] = (
            "infra-backend-v3" if host == "ls1-listener-1.com" else 404
        )
        expected[(host, "/ls2-route")] = "infra-backend-v2" if host in ls2_hosts else 404
    got = {(h, path): served_by(env, "routing", h, path) for h, path in expected}
    assert got == expected


@pytest.mark.parametrize(
    ("gw", "ls", "host"),
    [
        ("gw-default", "ls-default-not-allowed", "ls-default.com"),
        ("gw-none", "ls-none-not-allowed", "ls-none.com"),
    ],
)
def test_not_allowed_by_default_or_none(env: Env, gw: str, ls: str, host: str) -> None:
    gst = gw_status(env, gw)
    assert_condition(gst, "Accepted", "True")
    assert gst.get("attachedListenerSets", 0) == 0
    st = ls_status(env, ls)
    assert_condition(st, "Accepted", "False", "NotAllowed")
    assert_condition(st, "Programmed", "False", "NotAllowed")
    key = "none" if gw == "gw-default" else "none2"
    assert served_by(env, key, host, "/") == 404
    if ls == "ls-default-not-allowed":
        rst = env.daemon.status_of("HTTPRoute", "route-to-disallowed", namespace=INFRA)
        assert_condition(rst["parents"][0], "Accepted", "False", "NoMatchingParent")


def test_allowed_namespace_same_and_selector(env: Env) -> None:
    for gw, ok, ok_ns, refused, refused_ns, key, host in (
        (
            "gw-same",
            "ls-in-same-namespace",
            INFRA,
            "ls-in-different-namespace",
            "not-allowed-ns",
            "same",
            "ls-same.com",
        ),
        (
            "gw-selector",
            "ls-in-selected-namespace",
            "selected-ns",
            "ls-not-in-selected-namespace",
            "unselected-ns",
            "selector",
            "ls-sel.com",
        ),
    ):
        assert_condition(gw_status(env, gw), "Accepted", "True")
        assert gw_status(env, gw)["attachedListenerSets"] == 1
        st = ls_status(env, ok, ok_ns)
        assert_condition(st, "Accepted", "True", "Accepted")
        assert_condition(st, "Programmed", "True", "Programmed")
        assert_condition(st["listeners"][0], "Accepted", "True")
        st = ls_status(env, refused, refused_ns)
        assert_condition(st, "Accepted", "False", "NotAllowed")
        assert_condition(st, "Programmed", "False", "NotAllowed")
        # An accepted ListenerSet listener with no route answers 404 (served, no route);
        # the Gateway's own hostname does too.
        assert served_by(env, key, host, "/") == 404


@pytest.mark.parametrize(
    ("kind", "reason"), [("host", "HostnameConflict"), ("proto", "ProtocolConflict")]
)
def test_conflicts_follow_listener_precedence(env: Env, kind: str, reason: str) -> None:
    gw = gw_status(env, f"gw-{kind}conf")
    assert_condition(gw, "Accepted", "True")
    assert_listener_ok(gw, "gateway-listener")
    assert_listener_ok(gw, "conflict-with-gateway-listener")
    assert gw["attachedListenerSets"] == 2

    def conflicted(st: Doc, name: str) -> None:
        li = listener_of(st, name)
        assert_condition(li, "Accepted", "False", reason)
        assert_condition(li, "Programmed", "False", reason)
        assert_condition(li, "Conflicted", "True", reason)

    first = ls_status(env, f"{kind}-conflict-with-gateway-1")
    assert_condition(first, "Accepted", "True")
    assert_condition(first, "Programmed", "True", "Programmed")
    assert_listener_ok(first, "listener-set-1-listener")
    conflicted(first, "conflict-with-gateway-listener")
    assert_listener_ok(first, "conflict-with-listener-set-listener")
    for name, loser in (
        ("conflict-with-gateway-2", "conflict-with-gateway-listener"),
        ("conflict-with-listener-set-2", "conflict-with-listener-set-listener"),
    ):
        st = ls_status(env, f"{kind}-{name}")
        assert_condition(st, "Accepted", "False", "ListenersNotValid")
        assert_condition(st, "Programmed", "False", "ListenersNotValid")
        conflicted(st, loser)
    third = ls_status(env, f"{kind}-conflict-with-listener-set-1")
    assert_condition(third, "Accepted", "True")
    assert_listener_ok(third, "listener-set-2-listener")
    conflicted(third, "conflict-with-listener-set-listener")
    # The winners serve: the Gateway's listener, then the oldest ListenerSet's.
    port = f"{kind}conf"
    assert served_by(env, port, "conflict-with-gateway-listener.com", "/x") == "infra-backend-v1"
    assert served_by(env, port, "conflict-with-ls-listener.com", "/x") == "infra-backend-v3"


def test_reference_grant_for_certificates(env: Env) -> None:
    st = ls_status(env, "ls-with-grant")
    assert_condition(st, "Accepted", "True")
    assert_condition(st, "Programmed", "True")
    assert_condition(listener_of(st, "ls-granted-listener"), "ResolvedRefs", "True")
    st = ls_status(env, "ls-without-grant", "ungranted-ns")
    assert_condition(st, "Accepted", "False", "ListenersNotValid")
    assert_condition(st, "Programmed", "False", "ListenersNotValid")
    assert_condition(
        listener_of(st, "ls-ungranted-listener"), "ResolvedRefs", "False", "RefNotPermitted"
    )
    # The granted ListenerSet listener terminates TLS with the Secret from "certs".
    client = ssl.create_default_context(cadata=env.cert.decode())
    chunks = []
    with (
        socket.create_connection((env.addresses["tls"], env.ports["tls"]), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="ls-granted.com") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: ls-granted.com\r\nConnection: close\r\n\r\n")
        for _ in range(1000):  # bounded: the reply is a few hundred bytes
            chunk = tls.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    reply = b"".join(chunks)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert b"infra-backend-v2" in reply


def test_dual_parent_refs_are_independent(env: Env) -> None:
    assert gw_status(env, "gw-dual")["attachedListenerSets"] == 1
    st = ls_status(env, "ls-dual")
    assert_listener_ok(st, "ls-dual-listener", 2)
    both = env.daemon.status_of("HTTPRoute", "route-dual-both", namespace=INFRA)
    assert_condition(parent_entry(both, "Gateway", "gw-dual"), "Accepted", "True")
    assert_condition(parent_entry(both, "ListenerSet", "ls-dual"), "Accepted", "True")
    one = env.daemon.status_of("HTTPRoute", "route-dual-one", namespace=INFRA)
    assert_condition(
        parent_entry(one, "Gateway", "gw-dual", "ls-dual-listener"),
        "Accepted",
        "False",
        "NoMatchingParent",
    )
    assert_condition(parent_entry(one, "ListenerSet", "ls-dual"), "Accepted", "True")
    port = "dual"
    assert served_by(env, port, "gw-dual.com", "/dualboth") == "infra-backend-v1"
    assert served_by(env, port, "ls-dual.com", "/dualboth") == "infra-backend-v1"
    assert served_by(env, port, "ls-dual.com", "/dualone") == "infra-backend-v2"
    assert served_by(env, port, "gw-dual.com", "/dualone") == 404


def test_gateway_parent_cannot_select_a_listener_set_section(env: Env) -> None:
    good = env.daemon.status_of("HTTPRoute", "route-via-ls", namespace=INFRA)
    assert_condition(good["parents"][0], "Accepted", "True")
    bad = env.daemon.status_of("HTTPRoute", "route-via-gateway", namespace=INFRA)
    assert_condition(bad["parents"][0], "Accepted", "False", "NoMatchingParent")
    port = "section"
    assert served_by(env, port, "ls-section-name.com", "/goodsection") == "infra-backend-v1"
    assert served_by(env, port, "gw-section.com", "/badsection") == 404


def test_route_status_scoped_to_parent_refs(env: Env) -> None:
    st = ls_status(env, "ls-scoped")
    assert_listener_ok(st, "ls-parentref-listener", 1)
    gwonly = env.daemon.status_of("HTTPRoute", "route-gwonly", namespace=INFRA)
    assert [p["parentRef"]["kind"] for p in gwonly["parents"]] == ["Gateway"]
    lsonly = env.daemon.status_of("HTTPRoute", "route-lsonly", namespace=INFRA)
    assert [p["parentRef"]["kind"] for p in lsonly["parents"]] == ["ListenerSet"]
    assert_condition(lsonly["parents"][0], "Accepted", "True")
    port = "scoped"
    assert served_by(env, port, "ls-parentref.com", "/lsonly") == "infra-backend-v2"
    assert served_by(env, port, "ls-parentref.com", "/gwonly") == 404


def test_allowed_routes_namespaces_and_kinds(env: Env) -> None:
    assert gw_status(env, "gw-routens")["attachedListenerSets"] == 1
    st = ls_status(env, "ls-routens")
    assert_listener_ok(st, "allowed-routes-all", 3)
    assert_listener_ok(st, "allowed-routes-same", 1)
    assert_listener_ok(st, "allowed-routes-selector", 1)
    tls_only = listener_of(st, "tls-only")
    assert_condition(tls_only, "ResolvedRefs", "False", "InvalidRouteKinds")
    assert conditions(st)["Accepted"]["status"] == "True"
    port = "routens"
    paths = (
        "/route-in-same-namespace",
        "/route-in-selected-namespace",
        "/route-not-in-selected-namespace",
    )
    got = {
        (h, path): served_by(env, port, h, path)
        for h in ("all.com", "same.com", "selector.com")
        for path in paths
    }
    assert got == {
        ("all.com", paths[0]): "infra-backend-v1",
        ("all.com", paths[1]): "infra-backend-v2",
        ("all.com", paths[2]): "infra-backend-v3",
        ("same.com", paths[0]): "infra-backend-v1",
        ("same.com", paths[1]): 404,
        ("same.com", paths[2]): 404,
        ("selector.com", paths[0]): 404,
        ("selector.com", paths[1]): "infra-backend-v2",
        ("selector.com", paths[2]): 404,
    }
