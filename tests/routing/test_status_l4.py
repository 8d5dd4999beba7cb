"""TCPRoute and UDPRoute: loading, status on TCP/UDP listeners, compiled L4 tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import load_documents
from gatewayd.routing.config.model import Config
from gatewayd.routing.control.bindings import Resolution
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.l4 import L4Table

GW = "gateway.networking.k8s.io"
Doc = dict[str, Any]


def gateway(*listeners: Doc) -> Doc:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "default"},
        "spec": {
            "gatewayClassName": "gatewayd",
            "addresses": [{"type": "IPAddress", "value": "127.0.0.1"}],
            "listeners": list(listeners),
        },
    }


def lst(name: str, port: int, protocol: str, **kw: Any) -> Doc:
    return {"name": name, "port": port, "protocol": protocol, **kw}


def svc(name: str, namespace: str = "default", protocol: str = "TCP") -> list[Doc]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "p", "port": 80, "protocol": protocol}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": 9000, "protocol": protocol}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}],
        },
    ]


def route(
    kind: str, name: str, *, parent: Doc | None = None, created: str = "", **spec: Any
) -> Doc:
    meta: Doc = {"name": name, "namespace": "default"}
    if created:
        meta["creationTimestamp"] = created
    body: Doc = {
        "parentRefs": [parent or {"name": "gw"}],
        "rules": [{"backendRefs": [{"name": "svc", "port": 80}]}],
    }
    body.update(spec)
    return {"apiVersion": f"{GW}/v1alpha2", "kind": kind, "metadata": meta, "spec": body}


CLASS: Doc = {
    "apiVersion": f"{GW}/v1",
    "kind": "GatewayClass",
    "metadata": {"name": "gatewayd"},
    "spec": {"controllerName": "gatewayd.dev/gateway-controller"},
}


def load(*docs: Doc) -> tuple[Config, tuple[str, ...]]:
    text = "\n---\n".join(json.dumps(d) for d in (CLASS, *docs))
    result = load_documents([("f.yaml", text)])
    return result.config, tuple(str(p) for p in result.problems)


def run(*docs: Doc) -> Resolution:
    config, problems = load(*docs)
    assert problems == ()
    return resolve(config)


def status(res: Resolution, kind: str, name: str) -> dict[str, Any]:
    for st in res.statuses:
        if st.kind == kind and st.name == name:
            return st.status
    raise AssertionError(f"no status for {kind} {name}")


def conds(parent: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in parent["conditions"]}


def test_tcp_and_udp_listeners_carry_their_route_kinds() -> None:
    res = run(
        gateway(lst("t", 9000, "TCP"), lst("u", 9000, "UDP")),
        *svc("svc"),
        route("TCPRoute", "tcp", parent={"name": "gw", "sectionName": "t"}),
        route("UDPRoute", "udp", parent={"name": "gw", "port": 9000, "sectionName": "u"}),
    )
    gw = status(res, "Gateway", "gw")
    by_name = {ls["name"]: ls for ls in gw["listeners"]}
    assert by_name["t"]["supportedKinds"] == [{"group": GW, "kind": "TCPRoute"}]
    assert by_name["u"]["supportedKinds"] == [{"group": GW, "kind": "UDPRoute"}]
    assert by_name["t"]["attachedRoutes"] == by_name["u"]["attachedRoutes"] == 1
    for kind, name in (("TCPRoute", "tcp"), ("UDPRoute", "udp")):
        [parent] = status(res, kind, name)["parents"]
        assert conds(parent) == {
            "Accepted": ("True", "Accepted"),
            "ResolvedRefs": ("True", "ResolvedRefs"),
        }
    # Reported as v1 (the storage version since Gateway API v1.6), like TLSRoute.
    assert {st.api_version for st in res.statuses if st.kind in ("TCPRoute", "UDPRoute")} == {
        f"{GW}/v1"
    }
    snap = compile_snapshot(res, generation=1)
    tcp = snap.ports[("127.0.0.1", 9000)]
    udp = snap.udp_ports[("127.0.0.1", 9000)]
    assert isinstance(tcp.table, L4Table) and isinstance(udp.table, L4Table)
    assert tcp.table.hit is not None and tcp.table.hit.rule.route_id == "default/tcp/rule/0"
    assert udp.table.hit is not None and udp.table.hit.rule.route_kind == "UDPRoute"


def test_wrong_kind_for_the_listener_is_not_allowed() -> None:
    res = run(gateway(lst("t", 9000, "TCP")), *svc("svc"), route("UDPRoute", "udp"))
    [parent] = status(res, "UDPRoute", "udp")["parents"]
    assert conds(parent)["Accepted"] == ("False", "NotAllowedByListeners")


def test_oldest_route_wins_the_listener() -> None:
    res = run(
        gateway(lst("t", 9000, "TCP")),
        *svc("svc"),
        route("TCPRoute", "young", created="2024-02-01T00:00:00Z"),
        route("TCPRoute", "old", created="2024-01-01T00:00:00Z"),
    )
    [old] = status(res, "TCPRoute", "old")["parents"]
    [young] = status(res, "TCPRoute", "young")["parents"]
    # Conformance TCPRouteMultipleRoutesAttachment: both Accepted, both counted, only
    # the oldest served; the younger one's message says where the traffic goes.
    assert conds(old)["Accepted"] == ("True", "Accepted")
    assert conds(young)["Accepted"] == ("True", "Accepted")
    assert "older TCPRoute default/old" in young["conditions"][0]["message"]
    assert "older" not in old["conditions"][0]["message"]
    gw = status(res, "Gateway", "gw")
    assert gw["listeners"][0]["attachedRoutes"] == 2
    table = compile_snapshot(res, generation=1).ports[("127.0.0.1", 9000)].table
    assert isinstance(table, L4Table) and table.hit is not None
    assert table.hit.rule.route_name == "old"


def test_cross_namespace_backend_needs_a_reference_grant() -> None:
    grant = {
        "apiVersion": f"{GW}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "g", "namespace": "other"},
        "spec": {
            "from": [{"group": GW, "kind": "TCPRoute", "namespace": "default"}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    rules = [{"backendRefs": [{"name": "svc", "namespace": "other", "port": 80}]}]
    docs = (
        gateway(lst("t", 9000, "TCP")),
        *svc("svc", "other"),
        route("TCPRoute", "r", rules=rules),
    )
    [parent] = status(run(*docs), "TCPRoute", "r")["parents"]
    assert conds(parent)["ResolvedRefs"] == ("False", "RefNotPermitted")
    [parent] = status(run(*docs, grant), "TCPRoute", "r")["parents"]
    assert conds(parent)["ResolvedRefs"] == ("True", "ResolvedRefs")
    # A grant for UDPRoutes does not cover a TCPRoute.
    udp_grant = json.loads(json.dumps(grant).replace('"TCPRoute"', '"UDPRoute"'))
    [parent] = status(run(*docs, udp_grant), "TCPRoute", "r")["parents"]
    assert conds(parent)["ResolvedRefs"] == ("False", "RefNotPermitted")


def test_weights_compile_per_backend() -> None:
    rules = [
        {
            "backendRefs": [
                {"name": "svc", "port": 80, "weight": 3},
                {"name": "missing", "port": 80, "weight": 1},
            ]
        }
    ]
    res = run(gateway(lst("t", 9000, "TCP")), *svc("svc"), route("TCPRoute", "r", rules=rules))
    [parent] = status(res, "TCPRoute", "r")["parents"]
    assert conds(parent)["ResolvedRefs"] == ("False", "BackendNotFound")
    table = compile_snapshot(res, generation=1).ports[("127.0.0.1", 9000)].table
    assert isinstance(table, L4Table) and table.hit is not None
    rule = table.hit.rule
    # The invalid backend keeps its share: 1 connection in 4 is refused.
    assert rule.cumulative_weights == (3, 4)
    assert rule.backends[1].invalid_status is not None
    assert rule.pick_backend(0.74) is rule.backends[0]
    assert rule.pick_backend(0.76) is rule.backends[1]


def test_service_parent_is_refused_not_ignored() -> None:
    res = run(
        gateway(lst("t", 9000, "TCP")),
        *svc("svc"),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "mesh", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 5432, "protocol": "TCP"}]},
        },
        route("TCPRoute", "r", parent={"group": "", "kind": "Service", "name": "mesh"}),
    )
    [parent] = status(res, "TCPRoute", "r")["parents"]
    assert parent["parentRef"]["kind"] == "Service"
    assert conds(parent)["Accepted"] == ("False", "UnsupportedValue")
    assert "GAMMA" in parent["conditions"][0]["message"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"rules": []}, "spec.rules"),
        ({"rules": [{"backendRefs": []}]}, "spec.rules[0].backendRefs"),
        ({"rules": [{"backendRefs": [{"name": "svc", "port": 80}]}] * 17}, "spec.rules"),
        ({"hostnames": ["a.example"]}, 'spec: unknown field "hostnames"'),
        (
            {"rules": [{"name": "x", "backendRefs": [{"name": "s", "port": 80}]}] * 2},
            "spec.rules[1].name",
        ),
    ],
)
def test_validation(spec: Doc, problem: str) -> None:
    for kind in ("TCPRoute", "UDPRoute"):
        _, problems = load(route(kind, "r", **spec))
        assert any(f"{kind} default/r: {problem}" in p for p in problems), problems


def test_v1_allows_one_rule_v1alpha2_sixteen() -> None:
    rules = [{"backendRefs": [{"name": "svc", "port": 80}]}] * 2
    for kind in ("TCPRoute", "UDPRoute"):
        doc = route(kind, "r", rules=rules)
        config, problems = load(doc)
        assert problems == ()
        assert len([*config.tcp_routes, *config.udp_routes][0].rules) == 2
        doc["apiVersion"] = f"{GW}/v1"
        _, problems = load(doc)
        assert any(f"{kind} default/r: spec.rules" in p for p in problems), problems
        doc["spec"]["rules"] = rules[:1]
        assert load(doc)[1] == ()
    doc["apiVersion"] = f"{GW}/v1alpha3"
    _, problems = load(doc)
    assert any("v1alpha2" in p for p in problems), problems


def test_invalid_route_is_reported_in_its_own_status() -> None:
    bad = route("UDPRoute", "bad", rules=[])
    config, problems = load(gateway(lst("u", 53, "UDP")), *svc("svc", protocol="UDP"), bad)
    assert problems
    res = resolve(config)
    [st] = [s for s in res.statuses if s.kind == "UDPRoute"]
    assert st.api_version == f"{GW}/v1"
    [parent] = st.status["parents"]
    assert conds(parent)["Accepted"] == ("False", "UnsupportedValue")
