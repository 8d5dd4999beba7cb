"""Config -> Resolution: the Gateway API status of every object we own, and what attaches.

``resolve()`` decides, as a Gateway API controller would:

* which GatewayClasses are ours (``controllerName``) and Accepted;
* each of our Gateways' addresses, listeners (protocol, conflicts, certificate refs,
  route kinds) and Accepted / Programmed conditions;
* which HTTPRoutes, GRPCRoutes and TLSRoutes attach to which listeners, with the
  effective hostnames, and each route's ``status.parents``;
* every backendRef of those routes resolved to ready endpoints (``backendrefs``).

Normative sources are the Gateway API Go types (apis/v1/*_types.go, v1.6) and the
conformance tests; the sentences enforced are quoted next to the code.  Where they
disagree the conformance test wins and both are quoted.

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from gatewayd.routing.config.model import Config, Gateway, Problem, Route
from gatewayd.routing.control import attach
from gatewayd.routing.control.addressing import allocate
from gatewayd.routing.control.backendlb import resolve_backend_lb
from gatewayd.routing.control.backendrefs import BackendResolver
from gatewayd.routing.control.backendtls import applies_to, resolve_backend_tls
from gatewayd.routing.control.bindings import (
    BackendKey,
    BackendTarget,
    ListenerBinding,
    ObjectStatus,
    Resolution,
)
from gatewayd.routing.control.conditions import API_VERSION
from gatewayd.routing.control.gateways import (
    GatewayState,
    gateway_class_status,
    gateway_conditions,
    gateway_status,
)
from gatewayd.routing.control.listeners import ListenerState, Refs, evaluate_listeners
from gatewayd.routing.control.listenersets import (
    evaluate_listener_sets,
    listener_binding_name,
    listener_set_status,
)
from gatewayd.routing.control.mesh import resolve_mesh
from gatewayd.routing.control.refgrant import ReferenceGrants
from gatewayd.routing.control.rejected import rejected_gateways, rejected_statuses
from gatewayd.routing.control.routes import (
    resolve_route_refs,
    route_id,
    route_kind_name,
    route_order,
    route_parents,
    route_value_problem,
)

# --------------------------------------------------------------------------- resolve


def _instant(now: str) -> dt.datetime:
    """``now`` (RFC 3339, as in lastTransitionTime) as an aware datetime."""
    when = dt.datetime.fromisoformat(now.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def resolve(
    config: Config,
    *,
    controller_name: str = "gatewayd.dev/gateway-controller",
    address_pool: str = "127.0.10.0/24",
    previous_addresses: Mapping[tuple[str, str], str] | None = None,
    is_local_address: Callable[[str], bool] | None = None,
    now: str = "1970-01-01T00:00:00Z",
) -> Resolution:
    """Compute every status, the listener bindings and the resolved backends."""
    is_local = is_local_address if is_local_address is not None else (lambda _a: True)
    grants = ReferenceGrants(config.reference_grants)
    refs = Refs(config, grants, _instant(now))
    problems: list[Problem] = []
    statuses: list[ObjectStatus] = []

    # GatewayClasses: ours only.  "GatewayClasses of other controllers" get nothing.
    classes = {gc.meta.name: gc for gc in config.gateway_classes}
    ours_classes = {name for name, gc in classes.items() if gc.controller_name == controller_name}
    statuses.extend(gateway_class_status(classes[name], now) for name in sorted(ours_classes))

    gateways: list[Gateway] = []
    for gw in config.gateways:
        if gw.gateway_class_name in ours_classes:
            gateways.append(gw)
        elif gw.gateway_class_name not in classes:
            problems.append(
                Problem(
                    source=gw.meta.source,
                    kind="Gateway",
                    namespace=gw.meta.namespace,
                    name=gw.meta.name,
                    field="spec.gatewayClassName",
                    message=(
                        f"GatewayClass {gw.gateway_class_name!r} not found; the Gateway is ignored"
                    ),
                )
            )
    gateways.sort(key=lambda g: (g.meta.creation_timestamp, g.meta.namespace, g.meta.name))
    all_gateway_keys = {(g.meta.namespace, g.meta.name) for g in config.gateways}
    # A rejected Gateway exists (its own status says why it serves nothing): a route
    # naming it gets no "not found" problem.
    all_gateway_keys.update(
        (r.meta.namespace, r.meta.name) for r in config.rejected if r.kind == "Gateway"
    )

    outcomes = allocate(
        gateways, pool=address_pool, previous=previous_addresses or {}, is_local=is_local
    )
    states: dict[tuple[str, str], GatewayState] = {}
    for gw in gateways:
        gs = GatewayState(gateway=gw, listeners=evaluate_listeners(gw, refs))
        gs.address = outcomes[gs.key]
        gateway_conditions(gs, refs)
        states[gs.key] = gs

    # Routes.
    namespace_labels = {ns.meta.name: ns.meta.label_map() for ns in config.namespaces}
    # Services some BackendTLSPolicy targets: kubernetes.io/wss backends need one.
    tls_services = frozenset(
        (p.meta.namespace, t.name)
        for p in config.backend_tls_policies
        for t in p.target_refs
        if t.kind == "Service" and not t.group
    )
    resolver = BackendResolver(
        config.services, config.endpoint_slices, grants, tls_services=tls_services
    )
    backends: dict[BackendKey, BackendTarget] = {}
    routes: list[Route] = config.routes()
    # GAMMA: Service parentRefs (control/mesh.py) -- their status.parents join the Gateway ones.
    mesh = resolve_mesh(
        config,
        grants=grants,
        controller_name=controller_name,
        now=now,
        check_refs=resolve_route_refs,
        check_values=route_value_problem,
    )
    refused_gateways = rejected_gateways(config, ours_classes)
    # ListenerSets: their listeners join their parent Gateway's (control/listenersets.py).
    listener_sets = evaluate_listener_sets(
        config,
        states,
        refs,
        namespace_labels,
        all_gateway_keys=all_gateway_keys,
        rejected_gateways=refused_gateways,
        problems=problems,
    )
    # Attached oldest first (then "{namespace}/{name}"), so that an HTTPRoute and a
    # GRPCRoute sharing a hostname on a listener keep the older one (attach_route);
    # statuses are still reported in the configuration's order.
    attached: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    for route in sorted(routes, key=route_order):
        attached[route_id(route)] = route_parents(
            route,
            states,
            all_gateway_keys,
            namespace_labels,
            controller_name,
            now,
            problems,
            resolver,
            backends,
            refused_gateways,
            listener_sets,
        )
    for route in routes:
        parents = attached[route_id(route)]
        parents.extend(mesh.parents.get(route_id(route), ()))
        if parents:
            kind = route_kind_name(route)
            statuses.append(
                ObjectStatus(
                    api_version=API_VERSION,
                    kind=kind,
                    namespace=route.meta.namespace,
                    name=route.meta.name,
                    generation=route.meta.generation,
                    status={"parents": parents},
                )
            )

    # BackendTLSPolicy: status per Gateway using a target, TLS settings per Service port.
    # Only routes whose backends a policy applies to (not TLSRoutes in Passthrough mode).
    def merged_listeners(key: tuple[str, str]) -> list[ListenerState]:
        """A Gateway's listeners, then those of its attached ListenerSets."""
        own = states[key].listeners
        return [*own, *(s for ls in listener_sets.of_gateway(key) for s in ls.listeners)]

    policy_gateways = [
        (
            gs.gateway,
            [
                a.route
                for s in merged_listeners(gs.key)
                for a in s.routes
                if applies_to(a.route, s.listener)
            ],
        )
        for gs in states.values()
    ]
    policies = resolve_backend_tls(
        config, policy_gateways, controller_name=controller_name, now=now
    )
    statuses.extend(policies.statuses)
    # BackendLBPolicy: status per Gateway whose HTTPRoutes use a target, sessions per
    # Service (a rule's own sessionPersistence takes precedence, in the compiler).
    lb_policies = resolve_backend_lb(
        config, policy_gateways, controller_name=controller_name, now=now
    )
    statuses.extend(lb_policies.statuses)

    # Objects validation refused: reported in their own status, never served.
    statuses.extend(
        rejected_statuses(
            config,
            ours_classes=ours_classes,
            gateway_keys=states.keys() | refused_gateways,
            grants=grants,
            policy_gateways=policy_gateways,
            controller_name=controller_name,
            now=now,
            listener_set_keys=listener_sets.states.keys(),
        )
    )

    bindings: list[ListenerBinding] = []
    gateway_addresses: dict[tuple[str, str], str] = {}
    for gs in states.values():
        for s in gs.listeners:
            s.routes.sort(key=lambda ar: route_order(ar.route))
        statuses.append(gateway_status(gs, now))
        if gs.address.pool_address is not None:
            gateway_addresses[gs.key] = gs.address.pool_address
        if not gs.programmed.ok:
            continue
        served = [(s.name, s) for s in gs.listeners]
        for lss in listener_sets.of_gateway(gs.key):
            for s in lss.listeners:
                s.routes.sort(key=lambda ar: route_order(ar.route))
            if lss.programmed.ok:
                served.extend(
                    (listener_binding_name(lss.listener_set, s.name), s) for s in lss.listeners
                )
        for name, s in served:
            if not s.programmable:
                continue
            mode = attach.tls_mode(s.listener)
            bindings.extend(
                ListenerBinding(
                    gateway_namespace=gs.gateway.meta.namespace,
                    gateway_name=gs.gateway.meta.name,
                    listener_name=name,
                    address=address,
                    port=s.listener.port,
                    protocol=s.listener.protocol,
                    hostname=s.listener.hostname,
                    tls_mode=mode.value if mode is not None else None,
                    certificates=s.certificates,
                    client_ca_pem=s.client_ca_pem,
                    client_auth=s.client_auth,
                    tls_options=s.tls_options,
                    routes=tuple(s.routes),
                )
                for address in gs.address.addresses
            )
    statuses.extend(listener_set_status(lss, now) for lss in listener_sets.states.values())
    bindings.sort(key=lambda b: (b.gateway_namespace, b.gateway_name))
    statuses.sort(key=lambda st: (st.kind, st.namespace, st.name))
    return Resolution(
        listeners=tuple(bindings),
        backends=backends,
        statuses=tuple(statuses),
        problems=tuple(problems),
        gateway_addresses=gateway_addresses,
        mesh=mesh,
        backend_tls=policies.backend_tls,
        backend_sessions=lb_policies.sessions,
        client_certificates={
            gs.key: gs.client_certificate
            for gs in states.values()
            if gs.client_certificate is not None
        },
    )
