"""Routes: attachment to Gateway listeners and each route's ``status.parents`` entries.

What makes a whole route unusable (values RE2 or the data plane cannot serve), its
backendRefs (ResolvedRefs), and which listeners of a parentRef admit it (Accepted).

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Final

from gatewayd.routing.config.model import (
    GATEWAY_GROUP,
    BackendRef,
    FilterType,
    GRPCRoute,
    HeaderMatchType,
    HTTPRoute,
    HTTPRouteFilter,
    Meta,
    ParentReference,
    PathMatchType,
    Problem,
    Route,
    RouteGroupKind,
    TCPRoute,
    TLSRoute,
    UDPRoute,
)
from gatewayd.routing.control import attach, hostnames
from gatewayd.routing.control.backendrefs import BackendResolver
from gatewayd.routing.control.bindings import AttachedRoute, BackendKey, BackendTarget
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    INCOMPATIBLE_FILTERS,
    INVALID_KIND,
    NO_MATCHING_LISTENER_HOSTNAME,
    NO_MATCHING_PARENT,
    NOT_ALLOWED_BY_LISTENERS,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    Verdict,
    condition,
    failed,
    passed,
)
from gatewayd.routing.control.gateways import GatewayState
from gatewayd.routing.control.listeners import ListenerState, owner_kind
from gatewayd.routing.control.listenersets import ListenerSets, ListenerSetState
from gatewayd.routing.snapshot.regex import regex_problem

# Filter types a GRPCRoute may carry ("+kubebuilder:validation:Enum=ResponseHeaderModifier;
# RequestHeaderModifier;RequestMirror;ExtensionRef", GRPCRouteFilter.Type).
GRPC_FILTER_TYPES: Final = frozenset(
    {
        FilterType.REQUEST_HEADER_MODIFIER,
        FilterType.RESPONSE_HEADER_MODIFIER,
        FilterType.REQUEST_MIRROR,
        FilterType.EXTENSION_REF,
    }
)


# --------------------------------------------------------------------------- routes


def route_kind_name(route: Route) -> str:
    if isinstance(route, HTTPRoute):
        return "HTTPRoute"
    if isinstance(route, GRPCRoute):
        return "GRPCRoute"
    if isinstance(route, TCPRoute):
        return "TCPRoute"
    if isinstance(route, UDPRoute):
        return "UDPRoute"
    return "TLSRoute"


def route_id(route: Route) -> tuple[str, str, str]:
    return (route_kind_name(route), route.meta.namespace, route.meta.name)


def route_order(route: Route) -> tuple[str, str, str, str]:
    # "The oldest Route based on creation timestamp ... If everything else is equivalent,
    # the Route appearing first in alphabetical order (namespace/name)" (AllowedRoutes)
    return (
        route.meta.creation_timestamp,
        route.meta.namespace,
        route.meta.name,
        route_kind_name(route),
    )


def route_regex_problem(route: HTTPRoute | GRPCRoute) -> Verdict | None:
    """The first RegularExpression value of the route that RE2 cannot compile.

    Matching runs on RE2 (linear time, bounded memory: snapshot.regex); a pattern it rejects
    (backreferences, lookaround, over the memory budget, bad syntax) could only never
    match, so the route is refused with RE2's reason: "UnsupportedValue" (the dialect is
    implementation-specific, PathMatchRegularExpression).
    """
    # (field path, pattern); a match's path is built only when it holds a regex.
    found: list[tuple[str, str]] = []
    regex = HeaderMatchType.REGULAR_EXPRESSION
    if isinstance(route, HTTPRoute):
        for i, http_rule in enumerate(route.rules):
            for j, http_match in enumerate(http_rule.matches):
                if http_match.path.type is PathMatchType.REGULAR_EXPRESSION:
                    found.append((f"rules[{i}].matches[{j}].path.value", http_match.path.value))
                found.extend(
                    (f"rules[{i}].matches[{j}].headers[{k}].value", h.value)
                    for k, h in enumerate(http_match.headers)
                    if h.type is regex
                )
                found.extend(
                    (f"rules[{i}].matches[{j}].queryParams[{k}].value", q.value)
                    for k, q in enumerate(http_match.query_params)
                    if q.type is regex
                )
    else:
        for i, grpc_rule in enumerate(route.rules):
            for j, grpc_match in enumerate(grpc_rule.matches):
                where = f"rules[{i}].matches[{j}]"
                method = grpc_match.method
                if method is not None and method.type is regex:
                    for key, value in (("service", method.service), ("method", method.method)):
                        if value:
                            found.append((f"{where}.method.{key}", value))
                found.extend(
                    (f"{where}.headers[{k}].value", h.value)
                    for k, h in enumerate(grpc_match.headers)
                    if h.type is regex
                )
    for where, pattern in found:
        problem = regex_problem(pattern)
        if problem is not None:
            shown = pattern if len(pattern) <= 80 else pattern[:76] + "..."
            return failed(
                UNSUPPORTED_VALUE,
                f"{where}: invalid regular expression {shown!r}: {problem}",
            )
    return None


def route_value_problem(route: Route) -> Verdict | None:
    """Route-wide problems that make every parent refuse the route (Accepted False)."""
    if isinstance(route, HTTPRoute | GRPCRoute):
        regex_verdict = route_regex_problem(route)
        if regex_verdict is not None:
            return regex_verdict
    if isinstance(route, GRPCRoute):
        for i, grpc_session_rule in enumerate(route.rules):
            if grpc_session_rule.session_persistence is not None:
                # HTTPRoutes are served with session persistence; GRPCRoutes are not
                # yet (no end-to-end test through gRPC clients).  Serving the rule
                # without it would break the stickiness the route asks for while status
                # claimed it, so the route is refused like a value the implementation
                # does not recognise: "UnsupportedValue" (RouteReasonUnsupportedValue).
                return failed(
                    UNSUPPORTED_VALUE,
                    f"rules[{i}].sessionPersistence: session persistence on GRPCRoutes is "
                    "not supported by gatewayd yet; remove the field to serve this route",
                )
    if isinstance(route, GRPCRoute):
        for i, grpc_rule in enumerate(route.rules):
            filter_lists = [(f"rules[{i}].filters", grpc_rule.filters)] + [
                (f"rules[{i}].backendRefs[{j}].filters", br.filters)
                for j, br in enumerate(grpc_rule.backend_refs)
            ]
            for where, filters in filter_lists:
                for k, f in enumerate(filters):
                    if f.type not in GRPC_FILTER_TYPES:
                        # "Unknown values here must result in the implementation setting
                        # the Accepted Condition for the Route to `status: False`, with a
                        # Reason of `UnsupportedValue`." (HTTPRouteFilter.Type)
                        return failed(
                            UNSUPPORTED_VALUE,
                            f"{where}[{k}]: filter type {f.type.value} is not valid on a GRPCRoute",
                        )
    if isinstance(route, HTTPRoute):
        for i, http_rule in enumerate(route.rules):
            for j, br in enumerate(http_rule.backend_refs):
                for k, f in enumerate(br.filters):
                    if f.type is FilterType.CORS:
                        # Answered before a backendRef is picked, a preflight cannot
                        # depend on one: refused rather than ignored.
                        return failed(
                            UNSUPPORTED_VALUE,
                            f"rules[{i}].backendRefs[{j}].filters[{k}]: CORS on a backendRef "
                            "is not supported by gatewayd; put the filter on the rule",
                        )
            # The rule's filters, then each backendRef's (index j - 1).
            lists = (http_rule.filters, *(br.filters for br in http_rule.backend_refs))
            for j, filters in enumerate(lists):
                if len(filters) < 2:
                    continue  # one filter cannot be incompatible with itself
                types = {f.type for f in filters}
                if FilterType.REQUEST_REDIRECT in types and FilterType.URL_REWRITE in types:
                    # "IncompatibleFilters: ... when there are incompatible filters present
                    # on a route rule (for example if the URLRewrite and RequestRedirect
                    # are both present on an HTTPRoute)."  The same holds on a backendRef.
                    where = (
                        f"rules[{i}].filters"
                        if j == 0
                        else f"rules[{i}].backendRefs[{j - 1}].filters"
                    )
                    return failed(
                        INCOMPATIBLE_FILTERS,
                        f"{where}: RequestRedirect and URLRewrite cannot be combined",
                    )
    return None


def route_backend_refs(
    route: Route,
) -> list[tuple[str, BackendRef | None, HTTPRouteFilter | None]]:
    """Every (field path, backendRef, filter) of a route to check, in spec order."""
    out: list[tuple[str, BackendRef | None, HTTPRouteFilter | None]] = []

    def filters(where: str, fs: Iterable[HTTPRouteFilter]) -> None:
        for k, f in enumerate(fs):
            out.append((f"{where}.filters[{k}]", None, f))

    if isinstance(route, TLSRoute | TCPRoute | UDPRoute):
        plain: list[tuple[BackendRef, ...]] = [r.backend_refs for r in route.rules]
        for i, backend_refs in enumerate(plain):
            for j, br in enumerate(backend_refs):
                out.append((f"rules[{i}].backendRefs[{j}]", br, None))
        return out
    rules: list[tuple[tuple[HTTPRouteFilter, ...], tuple[BackendRef, ...]]] = [
        (rule.filters, rule.backend_refs) for rule in route.rules
    ]
    for i, (rule_filters, backend_refs) in enumerate(rules):
        filters(f"rules[{i}]", rule_filters)
        for j, br in enumerate(backend_refs):
            out.append((f"rules[{i}].backendRefs[{j}]", br, None))
            filters(f"rules[{i}].backendRefs[{j}]", br.filters)
    return out


def resolve_route_refs(
    route: Route,
    resolver: BackendResolver,
    backends: dict[BackendKey, BackendTarget],
) -> Verdict:
    kind = route_kind_name(route)
    ns = route.meta.namespace
    problems: list[Verdict] = []
    for where, br, flt in route_backend_refs(route):
        if br is not None:
            key, target = resolver.resolve(br.ref, kind, ns)
            backends[key] = target
            if target.invalid is not None:
                problems.append(failed(target.invalid, f"{where}: {target.message}"))
            continue
        assert flt is not None
        if flt.type is FilterType.REQUEST_MIRROR and flt.request_mirror is not None:
            key, target = resolver.resolve(flt.request_mirror.backend_ref, kind, ns)
            backends[key] = target
            if target.invalid is not None:
                # "If the referent cannot be found, this BackendRef is invalid and must be
                # dropped from the Gateway. The controller must ensure the "ResolvedRefs"
                # condition on the Route status is set to `status: False`"
                # (HTTPRequestMirrorFilter.BackendRef)
                problems.append(
                    failed(target.invalid, f"{where}.requestMirror.backendRef: {target.message}")
                )
        elif flt.type is FilterType.EXTENSION_REF:
            # No extension filters exist here, so every ExtensionRef is unresolvable:
            # "If a reference to a custom filter type cannot be resolved, the filter MUST
            # NOT be skipped. Instead, requests that would have been processed by that
            # filter MUST receive a HTTP error response." (HTTPRouteFilter.Type) -- the
            # route stays Accepted (its other rules work) and ResolvedRefs is False with
            # InvalidKind: "one of the Route's rules has a reference to an unknown or
            # unsupported Group and/or Kind." (RouteReasonInvalidKind).  The compiler
            # answers 500 for the rule.
            ext = flt.extension_ref
            shown = f"{ext.group}/{ext.kind} {ext.name}" if ext is not None else "(missing)"
            problems.append(
                failed(INVALID_KIND, f"{where}: ExtensionRef filter {shown} is not supported")
            )
    if problems:
        return failed(problems[0].reason, "; ".join(p.message for p in problems))
    return passed(RESOLVED_REFS, "All references are resolved")


def parent_ref_json(ref: ParentReference, route_namespace: str) -> dict[str, object]:
    out: dict[str, object] = {
        "group": ref.group,
        "kind": ref.kind,
        "namespace": ref.namespace or route_namespace,
        "name": ref.name,
    }
    if ref.section_name is not None:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def route_parents(
    route: Route,
    states: Mapping[tuple[str, str], GatewayState],
    all_gateway_keys: set[tuple[str, str]],
    namespace_labels: Mapping[str, Mapping[str, str]],
    controller_name: str,
    now: str,
    problems: list[Problem],
    resolver: BackendResolver,
    backends: dict[BackendKey, BackendTarget],
    rejected_gateways: Set[tuple[str, str]] = frozenset(),
    listener_sets: ListenerSets | None = None,
) -> list[dict[str, object]]:
    """``rejected_gateways``: our Gateways that validation refused (control.rejected);
    ``listener_sets``: the ListenerSets of our Gateways (control.listenersets)."""
    kind_name = route_kind_name(route)
    route_kind = RouteGroupKind(group=GATEWAY_GROUP, kind=kind_name)
    meta: Meta = route.meta
    ns = meta.namespace
    labels = namespace_labels.get(ns, {"kubernetes.io/metadata.name": ns})
    value_problem = route_value_problem(route)
    resolved: Verdict | None = None
    parents: list[dict[str, object]] = []
    for index, ref in enumerate(route.parent_refs):
        if ref.group == GATEWAY_GROUP and ref.kind == "ListenerSet":
            ls_key = (ref.namespace or ns, ref.name)
            lss = listener_sets.states.get(ls_key) if listener_sets is not None else None
            if lss is None:
                if listener_sets is None or ls_key not in listener_sets.all_keys:
                    problems.append(
                        Problem(
                            source=meta.source,
                            kind=kind_name,
                            namespace=ns,
                            name=meta.name,
                            field=f"spec.parentRefs[{index}]",
                            message=f"ListenerSet {ls_key[0]}/{ls_key[1]} not found",
                        )
                    )
                # A ListenerSet of another controller's Gateway: not ours to report.
                continue
            if resolved is None:
                resolved = resolve_route_refs(route, resolver, backends)
            if lss.merged:
                accepted = attach_route(route, route_kind, ref, lss, labels, value_problem)
            else:
                # Its listeners are not part of any Gateway: "there are no matching
                # Parents" (RouteReasonNoMatchingParent).
                accepted = failed(
                    NO_MATCHING_PARENT,
                    f"ListenerSet {ls_key[0]}/{ls_key[1]} is not attached to its Gateway: "
                    f"{lss.accepted.message}",
                )
            parents.append(_parent_entry(ref, ns, controller_name, accepted, resolved, meta, now))
            continue
        if ref.group != GATEWAY_GROUP or ref.kind != "Gateway":
            # Service parents (GAMMA, the mesh profile) and other parent kinds are out of
            # scope for now: "Note that parent references that cannot be resolved by an
            # implementation of this API will not be added to this list."
            # (RouteStatus.Parents)  Nothing is reported for them.
            continue
        gw_ns = ref.namespace or ns
        gs = states.get((gw_ns, ref.name))
        if gs is None and (gw_ns, ref.name) not in rejected_gateways:
            if (gw_ns, ref.name) not in all_gateway_keys:
                problems.append(
                    Problem(
                        source=meta.source,
                        kind=kind_name,
                        namespace=ns,
                        name=meta.name,
                        field=f"spec.parentRefs[{index}]",
                        message=f"Gateway {gw_ns}/{ref.name} not found",
                    )
                )
            # Gateways of other controllers: "Implementations of this API can only
            # populate Route status for the Gateways/parent resources they are
            # responsible for." (RouteStatus.Parents)
            continue
        if resolved is None:
            resolved = resolve_route_refs(route, resolver, backends)
        if gs is None:
            # Our Gateway exists but validation refused it, so it has no listener to
            # attach to: "there are no matching Parents" (RouteReasonNoMatchingParent).
            accepted = failed(
                NO_MATCHING_PARENT,
                f"Gateway {gw_ns}/{ref.name} is invalid and has no listeners (see its status)",
            )
        else:
            accepted = attach_route(route, route_kind, ref, gs, labels, value_problem)
        gen = meta.generation
        parents.append(
            {
                "parentRef": parent_ref_json(ref, ns),
                "controllerName": controller_name,
                "conditions": [
                    condition(ACCEPTED, accepted.ok, accepted.reason, accepted.message, gen, now),
                    condition(
                        RESOLVED_REFS, resolved.ok, resolved.reason, resolved.message, gen, now
                    ),
                ],
            }
        )
    return parents


def _parent_entry(
    ref: ParentReference,
    ns: str,
    controller_name: str,
    accepted: Verdict,
    resolved: Verdict,
    meta: Meta,
    now: str,
) -> dict[str, object]:
    gen = meta.generation
    return {
        "parentRef": parent_ref_json(ref, ns),
        "controllerName": controller_name,
        "conditions": [
            condition(ACCEPTED, accepted.ok, accepted.reason, accepted.message, gen, now),
            condition(RESOLVED_REFS, resolved.ok, resolved.reason, resolved.message, gen, now),
        ],
    }


def attach_route(
    route: Route,
    route_kind: RouteGroupKind,
    ref: ParentReference,
    gs: GatewayState | ListenerSetState,
    labels: Mapping[str, str],
    value_problem: Verdict | None,
) -> Verdict:
    """Attach ``route`` to the listeners ``ref`` selects; the Accepted verdict.

    ``gs`` is a Gateway or a ListenerSet: a parentRef selects only that object's own
    listeners (a ListenerSet's "allowedRoutes" Same namespace is the ListenerSet's).
    """
    gw = gs.gateway if isinstance(gs, GatewayState) else gs.listener_set
    gw_name = f"{owner_kind(gw)} {gw.meta.namespace}/{gw.meta.name}"
    selected = [s for s in gs.listeners if attach.listener_selected(ref, s.listener)]
    if not selected:
        narrowing = []
        if ref.section_name is not None:
            narrowing.append(f"sectionName {ref.section_name!r}")
        if ref.port is not None:
            narrowing.append(f"port {ref.port}")
        # "NoMatchingParent: ... this can occur when a Route ParentRef specifies a Port
        # and/or SectionName that does not match any Listeners in the Gateway."
        return failed(
            NO_MATCHING_PARENT,
            f"{gw_name} has no listener matching {' and '.join(narrowing)}",
        )
    if value_problem is not None:
        return value_problem
    admitted: list[tuple[ListenerState, tuple[str, ...]]] = []
    closest = attach.NOT_ALLOWED_KIND
    for s in selected:
        verdict = attach.admit(
            s.listener,
            s.kinds,
            gw.meta.namespace,
            route_kind,
            route.meta.namespace,
            route.hostnames,
            labels,
        )
        if verdict.hostnames is not None:
            admitted.append((s, verdict.hostnames))
        elif verdict.refusal is not None:
            closest = max(closest, verdict.refusal)
    if not admitted:
        if closest == attach.NO_HOSTNAME:
            return failed(
                NO_MATCHING_LISTENER_HOSTNAME,
                f"no listener of {gw_name} has a hostname matching the route's "
                f"hostnames {list(route.hostnames)}",
            )
        # Conformance (TLSRouteInvalidNoMatchingListener, HTTPRouteDisallowedKind) expects
        # NotAllowedByListeners for a route kind the listeners do not carry, although
        # TLSRouteSpec.Hostnames says "UnsupportedValue"; the conformance test wins.
        if closest == attach.NOT_ALLOWED_KIND:
            message = f"no listener of {gw_name} accepts {route_kind.kind}s"
            unserved = attach.UNSERVED_KINDS.get(route_kind)
            if unserved is not None:
                message = f"{message}: {unserved}"
        else:
            message = (
                f"no listener of {gw_name} allows {route_kind.kind}s from namespace "
                f"{route.meta.namespace!r}"
            )
        return failed(NOT_ALLOWED_BY_LISTENERS, message)
    # Attachment is independent of listener conditions: "Listener or Route status does
    # not impact successful attachment, i.e. the AttachedRoutes field count MUST be set
    # for Listeners, even if the Accepted condition of an individual Listener is set to
    # "False"." (ListenerStatus.AttachedRoutes)
    rid = route_id(route)
    other_kind = _HTTP_GRPC_OTHER.get(route_kind.kind)
    single = route_kind.kind in _L4_KINDS
    conflicts: list[str] = []
    served_elsewhere: list[str] = []
    attached = 0
    for s, effective in admitted:
        if rid in s.route_ids:
            attached += 1
            continue
        if single and s.by_kind.get(route_kind.kind):
            # A TCPRoute or UDPRoute matches every connection of its listener, so only
            # one can be served there: "matching precedence MUST be determined in order
            # of the following criteria: ... The oldest Route based on creation
            # timestamp. ... The Route appearing first in alphabetical order by
            # "{namespace}/{name}"" (AllowedRoutes).  Routes are attached oldest first
            # (resolve) and the compiler serves the first.  Conformance
            # (TCPRouteMultipleRoutesAttachment, UDPRouteMultipleRoutesAttachment)
            # expects the younger route Accepted too and counted in attachedRoutes
            # ("Gateway listener should report 2 attached Routes"); its message says
            # which route gets the traffic.
            winner = s.by_kind[route_kind.kind][0].route
            served_elsewhere.append(
                f"listener {s.name!r} sends its traffic to the older {route_kind.kind} "
                f"{winner.meta.namespace}/{winner.meta.name} (one {route_kind.kind} per "
                "listener is served)"
            )
        if other_kind is not None:
            # "If a Route (A) of type HTTPRoute or GRPCRoute is attached to a Listener
            # and that listener already has another Route (B) of the other type
            # attached and the intersection of the hostnames of A and B is non-empty,
            # then the implementation MUST accept exactly one of these two routes,
            # determined by ... The oldest Route based on creation timestamp ... first
            # in alphabetical order by "{namespace}/{name}"" (GRPCRouteSpec.Hostnames).
            # Routes are attached oldest first (resolve), so the one found is older.
            rival = next(
                (
                    a.route
                    for a in s.by_kind.get(other_kind, ())
                    if _hostnames_overlap(a.hostnames, effective)
                ),
                None,
            )
            if rival is not None:
                conflicts.append(
                    f"listener {s.name!r}: {other_kind} {rival.meta.namespace}/"
                    f"{rival.meta.name} is older and shares a hostname"
                )
                continue
        attached += 1
        s.route_ids.add(rid)
        ar = AttachedRoute(route=route, hostnames=effective)
        s.routes.append(ar)
        if other_kind is not None or single:
            s.by_kind.setdefault(route_kind.kind, []).append(ar)
    if not attached:
        # The spec names no reason; the listeners do not allow this route next to the
        # older one of the other kind.
        return failed(
            NOT_ALLOWED_BY_LISTENERS,
            f"{route_kind.kind} not accepted by {gw_name}: " + "; ".join(conflicts),
        )
    if served_elsewhere:
        return passed(ACCEPTED, f"Route is accepted by {gw_name}; " + "; ".join(served_elsewhere))
    return passed(ACCEPTED, f"Route is accepted by {gw_name}")


_HTTP_GRPC_OTHER: Final = {"HTTPRoute": "GRPCRoute", "GRPCRoute": "HTTPRoute"}
_L4_KINDS: Final = frozenset({"TCPRoute", "UDPRoute"})


def _hostnames_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Effective hostnames (``()``: any host) of two routes on one listener intersect."""
    if not a or not b:
        return True
    return any(hostnames.intersect_pair(x, y) is not None for x in a for y in b)
