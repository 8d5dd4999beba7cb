"""GAMMA (Gateway API for service mesh): routes whose parent is a Service.

A node-local data plane sees a connection's original destination (the Service's
ClusterIP and port, thanks to TPROXY) and its source address.  This module decides,
purely from the manifests, what happens to such a connection:

* ``resolve_mesh()`` (status side) finds the routes attached to each Service port, tells
  producer routes from consumer routes, checks ReferenceGrants for consumer routes,
  resolves their backendRefs and writes each route's ``status.parents`` entries for
  ``kind: Service``;
* ``compile.mesh.compile_mesh()`` (compiler side) turns that into a ``MeshTable`` keyed by
  ``(clusterIP, port)``: one producer ``ListenerPort`` and one per consumer namespace,
  plus the Pod IP -> namespace map that identifies a client's namespace.

Normative text (GEP-1426 "xRoutes Mesh Binding", GEP-1324, ParentReference.Namespace):

    "A route is a producer route when the parentRef refers to a service in the same
    namespace. This route SHOULD apply to all incoming requests to the service,
    including from clients in other namespaces."

    "A route is a consumer route when the parentRef refers to a service in another
    namespace. Unlike producer routes, consumer routes are scoped only the same
    namespace."

    "Requests from a namespace with consumer routes will utilize the (possibly merged)
    set of routes in the consumer namespace. Requests from other namespaces will
    utilize the (possibly merged) set of routes in the producer namespace."

    "Cross-namespace references are only valid if they are explicitly allowed by
    something in the namespace they are referring to. [...] ReferenceGrant provides a
    generic way to enable any other kind of cross-namespace reference."
    (ParentReference.Namespace) -- so a consumer route needs a ReferenceGrant in the
    Service's namespace; without one its parentRef is refused (Accepted False,
    RefNotPermitted) and its namespace keeps using the producer routes.

    "When no xRoute resources are defined, all traffic should implicitly work - this is
    just how Kubernetes functions." -- a Service port without routes (or a client
    without a route of its own and no producer route) is forwarded unchanged.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    Config,
    GRPCRoute,
    ParentReference,
    Route,
    Service,
    ServicePort,
    TCPRoute,
    TLSRoute,
    UDPRoute,
)
from gatewayd.routing.control.backendrefs import BackendResolver
from gatewayd.routing.control.bindings import (
    BackendKey,
    BackendTarget,
    MeshResolution,
    RouteId,
    ServicePortRoutes,
)
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    CONFLICTED,
    NO_MATCHING_PARENT,
    REF_NOT_PERMITTED,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    Verdict,
    condition,
)
from gatewayd.routing.control.refgrant import ReferenceGrants, RefFrom, RefTo
from gatewayd.routing.control.routes import parent_ref_json, route_kind_name
from gatewayd.routing.snapshot.addresses import canonical_ip

SERVICE_KIND: Final = "Service"

# Conditions: ``conditions.CONFLICTED`` is GEP-1426's for rejected route types: "The
# rejected routes should be ignored and have the RouteConditionAccepted status set to
# the (new) reason RouteReasonConflicted."

# GEP-1426: "Route type specificity is defined in the following order (first one wins):
# GRPCRoute, HTTPRoute, TLSRoute, TCPRoute".  GRPCRoutes are refused before ranking
# until the mesh speaks HTTP/2 (resolve_mesh), so today only HTTPRoutes get here.
_KIND_RANK: Final = {"GRPCRoute": 0, "HTTPRoute": 1}


RefsCheck = Callable[[Route, BackendResolver, dict[BackendKey, BackendTarget]], Verdict]
ValueCheck = Callable[[Route], Verdict | None]


# --------------------------------------------------------------------------- resolve


class _AllowAll(ReferenceGrants):
    """Mesh backendRefs need no ReferenceGrant (GEP-1426, quoted on MeshResolution)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(())

    def allows(self, source: RefFrom, target: RefTo) -> bool:
        return True


def is_service_parent(ref: ParentReference) -> bool:
    return ref.group == CORE_GROUP and ref.kind == SERVICE_KIND


@dataclass(slots=True)
class _Attachment:
    route: Route
    ref_index: int
    ports: list[int]
    conflicted: list[int] = field(default_factory=list)


def _select_ports(service: Service, ref: ParentReference) -> list[ServicePort]:
    """GEP-1426 Ports: "If port is set, the implementation MUST associate the route
    only with that port. If port is not set, the implementation MUST associate the
    route with all ports defined in the Service."  ParentReference.SectionName for a
    Service: "Port name. When both Port (experimental) and SectionName are specified,
    the name and port of the selected port must match both specified values."  Only
    TCP ports carry HTTP."""
    return [
        p
        for p in service.ports
        if p.protocol == "TCP"
        and (ref.port is None or p.port == ref.port)
        and (ref.section_name is None or p.name == ref.section_name)
    ]


def resolve_mesh(
    config: Config,
    *,
    grants: ReferenceGrants,
    controller_name: str,
    now: str,
    check_refs: RefsCheck,
    check_values: ValueCheck | None = None,
) -> MeshResolution:
    """Attach every route with Service parentRefs; their status parents and bindings.

    ``check_refs`` resolves a route's backendRefs into ``backends`` and returns the
    ResolvedRefs verdict (the status computation's own check, so Gateway and mesh
    routes report references the same way); ``check_values`` returns the route-wide
    problem that makes every parent refuse the route, if any.
    """
    services = {(s.meta.namespace, s.meta.name): s for s in config.services}
    resolver = BackendResolver(config.services, config.endpoint_slices, _AllowAll())
    backends: dict[BackendKey, BackendTarget] = {}
    # (service ns, name, port) -> group ("" producer, else consumer namespace) -> routes
    attached: dict[tuple[str, str, int], dict[str, list[_Attachment]]] = {}
    verdicts: dict[tuple[RouteId, int], tuple[bool, str, str]] = {}
    attachments: list[_Attachment] = []
    refs_of: dict[RouteId, Verdict] = {}
    routes: list[Route] = config.routes()

    for route in routes:
        kind = route_kind_name(route)
        ns = route.meta.namespace
        rid: RouteId = (kind, ns, route.meta.name)
        for index, ref in enumerate(route.parent_refs):
            if not is_service_parent(ref):
                continue
            svc_ns = ref.namespace or ns
            svc_name = f"{svc_ns}/{ref.name}"
            # Checked before existence, so that a missing grant does not reveal which
            # Services exist in a namespace the route may not look into.
            if svc_ns != ns and not grants.allows(
                RefFrom(group=GATEWAY_GROUP, kind=kind, namespace=ns),
                RefTo(group=CORE_GROUP, kind=SERVICE_KIND, namespace=svc_ns, name=ref.name),
            ):
                verdicts[(rid, index)] = (
                    False,
                    REF_NOT_PERMITTED,
                    f"no ReferenceGrant in namespace {svc_ns!r} allows {kind}s from "
                    f"namespace {ns!r} to attach to Service {svc_name} (consumer route)",
                )
                continue
            service = services.get((svc_ns, ref.name))
            if service is None:
                # "Note that parent references that cannot be resolved by an
                # implementation of this API will not be added to this list."
                # (RouteStatus.Parents)
                continue
            if isinstance(route, TLSRoute):
                verdicts[(rid, index)] = (
                    False,
                    UNSUPPORTED_VALUE,
                    "TLSRoutes cannot attach to a Service in this mesh (HTTP only)",
                )
                continue
            if isinstance(route, TCPRoute | UDPRoute):
                # GAMMA (GEP-1426) defines Service parents for HTTPRoute and GRPCRoute;
                # TCPRoute and UDPRoute on a Service are outside the mesh profile this
                # node-local mode implements, so the parent is refused, not ignored.
                verdicts[(rid, index)] = (
                    False,
                    UNSUPPORTED_VALUE,
                    f"{kind}s cannot attach to a Service: gatewayd's mesh (GAMMA) carries "
                    "HTTPRoutes only; attach the route to a Gateway TCP/UDP listener",
                )
                continue
            if isinstance(route, GRPCRoute):
                # gRPC needs HTTP/2, which the mesh data plane does not speak yet: the
                # route is refused rather than reported as serving (attach.UNSERVED_KINDS
                # says the same for Gateway listeners).
                verdicts[(rid, index)] = (
                    False,
                    UNSUPPORTED_VALUE,
                    "GRPCRoutes cannot attach to a Service in this mesh: gRPC needs "
                    "HTTP/2, which gatewayd does not serve yet",
                )
                continue
            # GEP-1426 Allowed service types: "Headless Services SHOULD NOT be supported
            # as a parentRef, because they do not implement the "frontend" functionality
            # of a service." / "Service resources with type: ExternalName SHOULD NOT be
            # allowed as parentRefs".
            ips = [ip for ip in (canonical_ip(a) for a in service.cluster_ips) if ip]
            if service.type == "ExternalName" or not ips:
                verdicts[(rid, index)] = (
                    False,
                    UNSUPPORTED_VALUE,
                    f"Service {svc_name} has no cluster IP (headless or ExternalName) and "
                    "cannot be a parent",
                )
                continue
            ports = _select_ports(service, ref)
            if not ports:
                narrowing = []
                if ref.section_name is not None:
                    narrowing.append(f"name {ref.section_name!r}")
                if ref.port is not None:
                    narrowing.append(f"port {ref.port}")
                verdicts[(rid, index)] = (
                    False,
                    NO_MATCHING_PARENT,
                    f"Service {svc_name} has no TCP port matching {' and '.join(narrowing)}",
                )
                continue
            if check_values is not None:
                problem = check_values(route)
                if problem is not None:
                    verdicts[(rid, index)] = (False, problem.reason, problem.message)
                    continue
            if rid not in refs_of:
                refs_of[rid] = check_refs(route, resolver, backends)
            att = _Attachment(route=route, ref_index=index, ports=[p.port for p in ports])
            attachments.append(att)
            group = "" if svc_ns == ns else ns
            for p in ports:
                attached.setdefault((svc_ns, ref.name, p.port), {}).setdefault(group, []).append(
                    att
                )
            verdicts[(rid, index)] = (True, ACCEPTED, f"Route is accepted by Service {svc_name}")

    # Route types: "If multiple routes with different types both bind to the same
    # Service and Port pair, only a single route type should be applied."  Groups
    # (producer, each consumer namespace) are separate route sets.
    bindings: list[ServicePortRoutes] = []
    for (svc_ns, svc_name, port), groups in sorted(attached.items()):
        kept: dict[str, tuple[Route, ...]] = {}
        for group, atts in groups.items():
            best = min(_KIND_RANK[route_kind_name(a.route)] for a in atts)
            routes_here: list[Route] = []
            for a in atts:
                if _KIND_RANK[route_kind_name(a.route)] != best:
                    a.conflicted.append(port)
                    continue
                if not any(r is a.route for r in routes_here):
                    routes_here.append(a.route)
            kept[group] = tuple(routes_here)
        service = services[(svc_ns, svc_name)]
        cluster_ips = tuple(ip for ip in (canonical_ip(a) for a in service.cluster_ips) if ip)
        bindings.append(
            ServicePortRoutes(
                service_namespace=svc_ns,
                service_name=svc_name,
                cluster_ips=cluster_ips,
                port=port,
                producer=kept.get("", ()),
                consumers={g: r for g, r in sorted(kept.items()) if g},
            )
        )
    for att in attachments:
        if att.conflicted and len(att.conflicted) == len(att.ports):
            rid = (route_kind_name(att.route), att.route.meta.namespace, att.route.meta.name)
            verdicts[(rid, att.ref_index)] = (
                False,
                CONFLICTED,
                "a GRPCRoute attaches to the same Service port, and GRPCRoute takes "
                "precedence over HTTPRoute (GEP-1426)",
            )

    parents: dict[RouteId, list[dict[str, object]]] = {}
    for route in routes:
        kind = route_kind_name(route)
        ns = route.meta.namespace
        rid = (kind, ns, route.meta.name)
        gen = route.meta.generation
        for index, ref in enumerate(route.parent_refs):
            got = verdicts.get((rid, index))
            if got is None:
                continue
            ok, reason, message = got
            conditions = [condition(ACCEPTED, ok, reason, message, gen, now)]
            refs = refs_of.get(rid)
            if refs is None:
                refs = check_refs(route, resolver, {})
            conditions.append(
                condition(RESOLVED_REFS, refs.ok, refs.reason, refs.message, gen, now)
            )
            parents.setdefault(rid, []).append(
                {
                    "parentRef": parent_ref_json(ref, ns),
                    "controllerName": controller_name,
                    "conditions": conditions,
                }
            )

    return MeshResolution(
        services=tuple(bindings),
        backends=backends,
        parents={rid: tuple(p) for rid, p in parents.items()},
        pod_namespaces=pod_namespaces(config),
    )


def pod_namespaces(config: Config) -> dict[str, str]:
    """Pod IP (canonical) -> the Pod's namespace: how a client's namespace is known
    from the source address of its connection.  Should two Pods claim one IP (a stale
    object), the first one in file order wins."""
    out: dict[str, str] = {}
    for pod in config.pods:
        for ip in pod.pod_ips:
            canon = canonical_ip(ip)
            if canon is not None:
                out.setdefault(canon, pod.meta.namespace)
    return out
