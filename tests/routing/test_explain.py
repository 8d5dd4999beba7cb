"""``snapshot.explain``: the trace agrees with ``RouteTable.lookup`` and says why."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from route_builders import (
    ADDRESS,
    EXACT,
    HEXACT,
    HREGEX,
    REGEX,
    attach,
    binding,
    gmatch,
    grpc,
    http,
    match,
    ref,
    rule,
    snapshot,
)

from gatewayd.routing.snapshot.explain import ExplainRequest, explain


def _req(path: str = "/", **kw: Any) -> ExplainRequest:
    kw.setdefault("host", "example.com")
    kw.setdefault("address", ADDRESS)
    kw.setdefault("port", 80)
    path, _, query = path.partition("?")
    return ExplainRequest(path=path, query=query, **kw)


def _rows(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{r['route']}/{r['rule']}/{r['match']}": r for r in doc["rules"]["candidates"]}


PRECEDENCE = [
    http("prefix-long", rule(match("/api/v1")), ts="2024-01-01T00:00:00Z"),
    http("prefix-short", rule(match("/api")), ts="2024-01-01T00:00:00Z"),
    http("exact", rule(match("/api/v1/users", EXACT)), ts="2024-01-02T00:00:00Z"),
    http("with-method", rule(match("/api/v1", method="POST")), ts="2024-01-03T00:00:00Z"),
    http(
        "with-header",
        rule(match("/api/v1", headers=[("x-env", "canary")])),
        ts="2024-01-03T00:00:00Z",
    ),
    http("older-twin", rule(match("/api/v1")), ts="2023-01-01T00:00:00Z"),
]


def test_precedence_names_the_deciding_criterion() -> None:
    snap = snapshot(binding(*PRECEDENCE))
    doc = explain(snap, _req("/api/v1/items", headers={"x-env": "canary"}))
    assert doc["routed"] is True
    assert doc["dataPlane"] == {"routeId": "default/with-header/rule/0", "agrees": True}
    rows = _rows(doc)
    assert rows["HTTPRoute default/with-header/0/0"]["result"] == "chosen"
    assert rows["HTTPRoute default/exact/0/0"]["matcher"] == "path"
    assert "does not match '/api/v1/items'" in rows["HTTPRoute default/exact/0/0"]["why"]
    assert rows["HTTPRoute default/with-method/0/0"]["matcher"] == "method"
    # Both plain /api/v1 prefixes match but lose on header count; the shorter prefix
    # loses on path length.
    assert rows["HTTPRoute default/older-twin/0/0"]["decidedBy"] == "number of header matches"
    assert rows["HTTPRoute default/prefix-short/0/0"]["decidedBy"].startswith("path length")
    # Without the header: the two identical matches tie until creation time.
    doc = explain(snap, _req("/api/v1/items"))
    rows = _rows(doc)
    assert doc["chosen"]["routeId"] == "default/older-twin/rule/0"
    assert rows["HTTPRoute default/prefix-long/0/0"]["decidedBy"].startswith("route creation")
    assert rows["HTTPRoute default/with-header/0/0"]["why"] == "header 'x-env' is absent"
    assert doc["outcome"] == {"status": None, "reason": "forwarded to a backend chosen by weight"}


def test_no_route_is_404_with_every_failure() -> None:
    snap = snapshot(binding(*PRECEDENCE))
    doc = explain(snap, _req("/other"))
    assert doc["routed"] is False
    assert doc["outcome"]["status"] == 404
    assert doc["dataPlane"] == {"routeId": None, "agrees": True}
    assert {r["result"] for r in doc["rules"]["candidates"]} == {"failed"}
    assert "404" in doc["outcome"]["spec"]


def test_listener_isolation_and_host_groups() -> None:
    wild = http("wild", rule(match("/")), hostnames=["*.example.com"])
    exact = http("exact-host", rule(match("/x", EXACT)), hostnames=["a.example.com"])
    snap = snapshot(
        binding(wild, exact, name="wild", hostname="*.example.com"),
        binding(http("any", rule(match("/"))), name="any"),
    )
    doc = explain(snap, _req("/y", host="a.example.com"))
    # The exact host group is the only one searched: /y is a 404 there.
    assert doc["outcome"]["status"] == 404
    verdicts = {g["hostname"]: g["verdict"] for g in doc["rules"]["hostGroups"]}
    assert verdicts["a.example.com"].startswith("chosen")
    assert verdicts["*.example.com"].startswith("lost: matches")
    listeners = {tuple(x["listeners"]): x["verdict"] for x in doc["listener"]["listeners"]}
    assert listeners[("wild",)].startswith("chosen")
    assert "more specific" in listeners[("any",)]
    doc = explain(snap, _req("/y", host="other.test"))
    assert doc["chosen"]["routeId"] == "default/any/rule/0"
    assert (
        "does not match"
        in {tuple(x["listeners"]): x["verdict"] for x in doc["listener"]["listeners"]}[("wild",)]
    )


def test_port_choice_and_others() -> None:
    snap = snapshot(
        binding(http("a", rule(match("/"))), name="one", port=80),
        binding(http("b", rule(match("/"))), name="two", port=8080),
        binding(http("c", rule(match("/"))), name="three", port=8080, address="10.0.0.2"),
    )
    doc = explain(snap, _req("/", port=8080, address="10.0.0.2"))
    assert doc["port"]["chosen"]["listeners"] == ["three"]
    lost = sorted(o["lost"] for o in doc["port"]["others"])
    assert lost == ["address 10.0.0.1, not 10.0.0.2", "port 80, not 8080"]
    doc = explain(snap, _req("/", port=8080, address=None))
    assert doc["ambiguous"] is True and doc["routed"] is False
    doc = explain(snap, _req("/", port=9999))
    assert doc["outcome"]["reason"] == f"no Gateway listens on {ADDRESS} port 9999"
    # The address a user tries first is not the Gateway's: say which one is.
    doc = explain(snap, _req("/", port=80, address="127.0.0.1"))
    assert doc["outcome"]["reason"] == (
        f"no Gateway listens on 127.0.0.1 port 80 (port 80 is served on {ADDRESS}: connect there)"
    )


def test_grpc_service_and_method() -> None:
    route = grpc(
        "greeter",
        gmatch("helloworld.Greeter", "SayHello"),
        gmatch("helloworld.Greeter"),
    )
    snap = snapshot(binding(route))
    doc = explain(snap, _req("/helloworld.Greeter/SayHello", method="POST"))
    rows = _rows(doc)
    assert rows["GRPCRoute default/greeter/0/0"]["result"] == "chosen"
    assert rows["GRPCRoute default/greeter/0/1"]["decidedBy"] == "characters in the method match"
    assert rows["GRPCRoute default/greeter/0/0"]["grpcMethod"]["method"] == "SayHello"
    doc = explain(snap, _req("/helloworld.Greeter/SayHello", method="GET"))
    assert doc["outcome"]["status"] == 404
    assert {r["matcher"] for r in doc["rules"]["candidates"]} == {"method"}


def test_filters_backends_and_weights() -> None:
    route = http(
        "split",
        rule(
            match("/"),
            backends=[ref("a", weight=3), ref("b", weight=1), ref("gone", weight=1)],
        ),
    )
    snap = snapshot(binding(route), invalid=["gone"])
    doc = explain(snap, _req("/"))
    backends = {b["name"]: b for b in doc["chosen"]["rule"]["backends"]}
    assert backends["default/a:8080"]["share"] == 0.6
    assert backends["default/a:8080"]["eligible"] is True
    assert backends["default/a:8080"]["endpoints"] == ["10.1.0.1:9000"]
    assert backends["default/gone:8080"]["eligible"] is False
    assert "500" in backends["default/gone:8080"]["why"]
    assert doc["chosen"]["rule"]["totalWeight"] == 5


def test_candidate_list_is_bounded() -> None:
    routes = [http(f"r{i:03d}", rule(match(f"/p{i}", EXACT))) for i in range(300)]
    routes.append(http("catch", rule(match("/"))))
    snap = snapshot(binding(*routes))
    doc = explain(snap, _req("/zzz"), max_candidates=20)
    cands = doc["rules"]["candidates"]
    assert len(cands) == 21  # 20 listed, then the chosen one appended
    assert cands[-1]["result"] == "chosen"
    assert doc["rules"]["omitted"] == 301 - 21
    json.dumps(doc)  # JSON-ready


_SEGS = ["a", "b", "v1"]
_HOSTS = ["a.example.com", "b.a.example.com", "example.com", "other.test"]


@st.composite
def _path(draw: st.DrawFn) -> str:
    segs = draw(st.lists(st.sampled_from(_SEGS), max_size=3))
    return "/" + "/".join(segs) + ("/" if segs and draw(st.booleans()) else "")


@st.composite
def _route(draw: st.DrawFn, i: int) -> Any:
    kind = draw(st.sampled_from(["prefix", "exact", "regex"]))
    p = draw(_path())
    m = match(
        p if kind != "regex" else p.rstrip("/") + "(/.*)?",
        {"prefix": match().path.type, "exact": EXACT, "regex": REGEX}[kind],
        method=draw(st.sampled_from([None, "GET", "POST"])),
        headers=draw(
            st.sampled_from([[], [("x-a", "1")], [("x-a", "[0-9]+", HREGEX), ("x-b", "z")]])
        ),
        query=draw(st.sampled_from([[], [("q", "1")]])),
    )
    hosts = draw(st.sampled_from([[], ["a.example.com"], ["*.example.com"], ["*.a.example.com"]]))
    ts = draw(st.sampled_from(["", "2024-01-01T00:00:00Z", "2023-01-01T00:00:00Z"]))
    return attach(http(f"r{i}", rule(m), hostnames=hosts, ts=ts))


@st.composite
def _grpc_route(draw: st.DrawFn, i: int) -> Any:
    service = draw(st.sampled_from([None, "a", "v1"]))
    method = draw(st.sampled_from([None, "b", "v1"]))
    kind = draw(st.sampled_from([HEXACT, HREGEX]))
    hosts = draw(st.sampled_from([[], ["a.example.com"], ["*.example.com"]]))
    m = gmatch(service, method, kind=kind, headers=draw(st.sampled_from([[], [("x-a", "1")]])))
    return attach(grpc(f"g{i}", m, hostnames=hosts))


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[Any], list[ExplainRequest]]:
    n = draw(st.integers(1, 6))
    routes = [draw(_route(i)) for i in range(n)]
    routes += [draw(_grpc_route(i)) for i in range(draw(st.integers(0, 3)))]
    reqs = [
        _req(
            draw(_path()) + draw(st.sampled_from(["", "?q=1", "?q=2"])),
            host=draw(st.sampled_from(_HOSTS)),
            method=draw(st.sampled_from(["GET", "POST"])),
            headers=draw(st.sampled_from([{}, {"x-a": "1"}, {"x-a": "12", "x-b": "z"}])),
        )
        for _ in range(8)
    ]
    return routes, reqs


@settings(max_examples=150, deadline=None)
@given(_scenario())
def test_trace_agrees_with_lookup(scenario: tuple[list[Any], list[ExplainRequest]]) -> None:
    routes, reqs = scenario
    snap = snapshot(binding(*routes))
    table = snap.ports[(ADDRESS, 80)].table
    for req in reqs:
        doc = explain(snap, req)
        hit = table.lookup(req.host, req.method, req.path, req.query, req.headers)
        assert doc["dataPlane"]["agrees"] is True, doc
        assert doc["routed"] is (hit is not None)
        if hit is not None:
            assert doc["chosen"]["routeId"] == hit.rule.route_id
            chosen = [c for c in doc["rules"]["candidates"] if c["result"] == "chosen"]
            assert len(chosen) == 1
