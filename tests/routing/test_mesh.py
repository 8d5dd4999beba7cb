"""GAMMA: routes attached to Services (routing control/mesh.py and compile/mesh.py through
control.resolve.resolve and compile.compiler.compile_snapshot)."""

from __future__ import annotations

import pickle
from typing import Any

from status_builders import (
    backend,
    cond,
    config,
    endpoint_slice,
    grant,
    http_route,
    meta,
    parent,
    parent_status,
)

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.model import (
    Endpoint,
    EndpointPort,
    GRPCRoute,
    GRPCRouteRule,
    Pod,
    Service,
    ServicePort,
)
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.addresses import canonical_ip
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.tproxy.rules import TproxySettings, desired_targets, render_ruleset

STORE_IP = "10.96.0.10"
CLIENT_SHOP = "10.1.0.5"
CLIENT_REVIEWS = "10.1.0.6"


def svc(name: str, ns: str = "store", ip: str | None = STORE_IP, **kw: Any) -> Service:
    ports = kw.pop(
        "ports", (ServicePort(name="http", port=8080), ServicePort(name="admin", port=9090))
    )
    return Service(meta=meta(name, ns), cluster_ips=(ip,) if ip else (), ports=ports, **kw)


def backend_objects(name: str, ns: str = "store", ip: str = "10.2.0.1") -> list[Any]:
    return [
        Service(
            meta=meta(name, ns),
            cluster_ips=("10.96.1.1",),
            ports=(ServicePort(name="http", port=8080),),
        ),
        endpoint_slice(
            f"{name}-1",
            name,
            ns,
            ports=(EndpointPort(name="http", port=3000),),
            endpoints=(Endpoint(addresses=(ip,)),),
        ),
    ]


def sp(name: str = "store", ns: str | None = None, **kw: Any) -> Any:
    return parent(name, ns, group="", kind="Service", **kw)


def pods() -> list[Pod]:
    return [
        Pod(meta=meta("a", "shop"), pod_ips=(CLIENT_SHOP,)),
        Pod(meta=meta("b", "reviews"), pod_ips=(CLIENT_REVIEWS,)),
    ]


def world(*extra: Any) -> list[Any]:
    return [
        svc("store"),
        *backend_objects("v1"),
        *backend_objects("v2", ip="10.2.0.2"),
        *pods(),
        *extra,
    ]


def snap(*objects: Any) -> tuple[Any, Snapshot]:
    res = resolve(config(*objects))
    return res, compile_snapshot(res, generation=1)


def backend_of(snapshot: Snapshot, address: str, port: int, source: str) -> str | None:
    assert snapshot.mesh is not None
    lp = snapshot.mesh.lookup(address, port, source)
    if lp is None:
        return None
    hit = lp.table.lookup("store.store", "GET", "/", "", {})
    assert hit is not None
    return hit.rule.backends[0].name


def producer() -> Any:
    return http_route("split", sp(), namespace="store", backends=[backend("v1", 8080)])


def test_producer_route_applies_to_every_client() -> None:
    res, snapshot = snap(*world(producer()))
    assert cond(parent_status(res, "split", "store"), "Accepted") == ("True", "Accepted")
    ref = parent_status(res, "split", "store")["parentRef"]
    assert ref == {"group": "", "kind": "Service", "namespace": "store", "name": "store"}
    for source in (CLIENT_SHOP, CLIENT_REVIEWS, "10.9.9.9"):
        assert backend_of(snapshot, STORE_IP, 8080, source) == "store/v1:8080"
    # "If port is not set, the implementation MUST associate the route with all ports"
    assert backend_of(snapshot, STORE_IP, 9090, CLIENT_SHOP) == "store/v1:8080"


def test_parent_port_narrows_to_that_port() -> None:
    route = http_route("split", sp(port=8080), namespace="store", backends=[backend("v1", 8080)])
    _, snapshot = snap(*world(route))
    assert snapshot.mesh is not None
    assert set(snapshot.mesh.services) == {(STORE_IP, 8080)}
    assert backend_of(snapshot, STORE_IP, 9090, CLIENT_SHOP) is None


def test_section_name_selects_a_port_by_name() -> None:
    route = http_route("r", sp(section="admin"), namespace="store", backends=[backend("v1", 8080)])
    _, snapshot = snap(*world(route))
    assert snapshot.mesh is not None and set(snapshot.mesh.services) == {(STORE_IP, 9090)}


def test_consumer_route_with_grant_applies_only_to_its_namespace() -> None:
    consumer = http_route(
        "mine",
        sp("store", "store"),
        namespace="reviews",
        backends=[backend("v2", 8080, namespace="store")],
    )
    allow = grant("store", from_namespace="reviews", to_name="store")
    res, snapshot = snap(*world(producer(), consumer, allow))
    assert cond(parent_status(res, "mine", "reviews"), "Accepted") == ("True", "Accepted")
    # Mesh backendRefs need no ReferenceGrant (GEP-1426).
    assert cond(parent_status(res, "mine", "reviews"), "ResolvedRefs") == ("True", "ResolvedRefs")
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_REVIEWS) == "store/v2:8080"
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_SHOP) == "store/v1:8080"
    assert backend_of(snapshot, STORE_IP, 8080, "10.9.9.9") == "store/v1:8080"


def test_consumer_route_without_grant_is_refused() -> None:
    consumer = http_route(
        "mine",
        sp("store", "store"),
        namespace="reviews",
        backends=[backend("v2", 8080, namespace="store")],
    )
    other_grant = grant("store", from_namespace="elsewhere", to_name="store")
    res, snapshot = snap(*world(producer(), consumer, other_grant))
    status, reason = cond(parent_status(res, "mine", "reviews"), "Accepted")
    assert (status, reason) == ("False", "RefNotPermitted")
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_REVIEWS) == "store/v1:8080"


def test_consumer_only_service_passes_other_clients_through() -> None:
    consumer = http_route(
        "mine",
        sp("store", "store"),
        namespace="reviews",
        backends=[backend("v2", 8080, namespace="store")],
    )
    allow = grant("store", from_namespace="reviews")
    _, snapshot = snap(*world(consumer, allow))
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_REVIEWS) == "store/v2:8080"
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_SHOP) is None
    # Still diverted (reviews' clients need it); others are forwarded unchanged.
    assert (4, STORE_IP, 8080) in {(t.family, t.address, t.port) for t in desired_targets(snapshot)}


def test_invalid_parents_get_the_spec_reasons() -> None:
    headless = svc("headless", ip=None)
    routes = [
        http_route("no-port", sp(port=1234), namespace="store", backends=[backend("v1", 8080)]),
        http_route("headless", sp("headless"), namespace="store", backends=[backend("v1", 8080)]),
        http_route("missing", sp("nope"), namespace="store", backends=[backend("v1", 8080)]),
        http_route("bad-backend", sp(), namespace="store", backends=[backend("gone", 8080)]),
    ]
    res, snapshot = snap(*world(headless, *routes))
    assert cond(parent_status(res, "no-port", "store"), "Accepted") == ("False", "NoMatchingParent")
    assert cond(parent_status(res, "headless", "store"), "Accepted") == (
        "False",
        "UnsupportedValue",
    )
    # A Service that does not exist cannot be resolved: no parent entry at all.
    assert all(st.name != "missing" or not st.status.get("parents") for st in res.statuses)
    assert cond(parent_status(res, "bad-backend", "store"), "ResolvedRefs") == (
        "False",
        "BackendNotFound",
    )
    assert snapshot.mesh is not None
    lp = snapshot.mesh.lookup(STORE_IP, 8080, CLIENT_SHOP)
    assert lp is not None
    hit = lp.table.lookup("x", "GET", "/", "", {})
    assert hit is not None and hit.rule.direct_status == 500


def test_grpcroute_is_refused_and_does_not_shadow_the_httproute() -> None:
    # GEP-1426 would let a GRPCRoute win over an HTTPRoute on the same port, but gRPC
    # needs HTTP/2, which the mesh does not speak: the GRPCRoute is refused and the
    # HTTPRoute serves.
    grpc = GRPCRoute(
        meta=meta("g", "store"),
        parent_refs=(sp(port=8080),),
        rules=(GRPCRouteRule(backend_refs=(backend("v2", 8080),)),),
    )
    http = http_route("h", sp(port=8080), namespace="store", backends=[backend("v1", 8080)])
    res, snapshot = snap(*world(grpc, http))
    assert cond(parent_status(res, "h", "store"), "Accepted") == ("True", "Accepted")
    grpc_parent = parent_status(res, "g", "store", kind="GRPCRoute")
    assert cond(grpc_parent, "Accepted") == ("False", "UnsupportedValue")
    accepted = next(c for c in grpc_parent["conditions"] if c["type"] == "Accepted")
    assert "HTTP/2" in accepted["message"]
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_SHOP) == "store/v1:8080"


def test_hostnames_are_ignored_for_mesh_routes() -> None:
    route = http_route(
        "r", sp(), namespace="store", hostnames=["other.example"], backends=[backend("v1", 8080)]
    )
    _, snapshot = snap(*world(route))
    assert backend_of(snapshot, STORE_IP, 8080, CLIENT_SHOP) == "store/v1:8080"


def test_snapshot_with_mesh_pickles_and_dumps() -> None:
    _, snapshot = snap(*world(producer()))
    again = pickle.loads(pickle.dumps(snapshot))
    assert backend_of(again, STORE_IP, 8080, CLIENT_SHOP) == "store/v1:8080"
    dump = snapshot.to_json()
    assert dump["mesh"]["services"][0]["service"] == "store/store"  # type: ignore[index]


def test_ipv6_cluster_ips_and_pods_are_canonical() -> None:
    v6 = svc("store6", ip="fd00:0:0::10")
    pod = Pod(meta=meta("c", "reviews"), pod_ips=("FD00::5",))
    route = http_route("r", sp("store6"), namespace="store", backends=[backend("v1", 8080)])
    _, snapshot = snap(*world(v6, pod, route))
    assert canonical_ip("fd00:0:0::10") == "fd00::10"
    assert snapshot.mesh is not None and ("fd00::10", 8080) in snapshot.mesh.services
    assert snapshot.mesh.namespace_of("fd00::5") == "reviews"
    ruleset = render_ruleset(desired_targets(snapshot), TproxySettings())
    assert "ip6 daddr fd00::10 tcp dport 8080 tproxy ip6 to :15001" in ruleset
