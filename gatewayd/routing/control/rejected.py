"""Objects validation refused (``config.RejectedObject``): reported in their own status.

Issue 13: "an invalid object is reported in its own status and skipped; the rest keeps
serving."  Nothing of a rejected object is served or attaches anywhere (Gateways'
``attachedRoutes`` do not count it); its status says why, with validation's messages:

* a route: one ``parents[]`` entry per parentRef naming one of our Gateways (valid or
  rejected itself), or a Service a mesh route may attach to (``control.mesh`` reports
  Service parents the same way), with Accepted False.
* a Gateway of one of our GatewayClasses: Accepted False and Programmed False, no
  listeners.  Gateways of other controllers' classes are untouched.
* a BackendTLSPolicy or BackendLBPolicy: one ``ancestors[]`` entry per Gateway of ours
  whose routes send traffic to a targeted Service (the ancestors a valid policy gets),
  Accepted False.

ResolvedRefs is not reported: the references of a refused object were not resolved,
and the condition would claim a check that never ran (it is not required: only
"Accepted" is, RouteParentStatus.Conditions).  A ResolvedRefs written while the object
was valid goes away with our entry, which the write replaces whole.

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    Config,
    Gateway,
    Kind,
    RejectedObject,
    Route,
)
from gatewayd.routing.control.backendlb import LB_POLICY_API_VERSION, http_routes_of
from gatewayd.routing.control.backendtls import MAX_ANCESTORS, route_services
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    API_VERSION,
    INVALID,
    PROGRAMMED,
    UNSUPPORTED_VALUE,
    condition,
)
from gatewayd.routing.control.mesh import SERVICE_KIND, is_service_parent
from gatewayd.routing.control.refgrant import ReferenceGrants, RefFrom, RefTo
from gatewayd.routing.control.routes import parent_ref_json

GatewayKey = tuple[str, str]  # (namespace, name)

# "A maximum of 32 Gateways will be represented in this list." (RouteStatus.Parents)
MAX_PARENTS: Final = 32


def rejected_message(obj: RejectedObject) -> str:
    """What the status says: that nothing of it is served, and validation's messages."""
    text = "; ".join(obj.messages)
    if obj.more:
        text += f" (and {obj.more} more)"
    return f"{obj.kind.value} is invalid and not served: {text}"


def rejected_gateways(config: Config, ours_classes: Set[str]) -> set[GatewayKey]:
    """The rejected Gateways of our GatewayClasses: their parents exist, serve nothing."""
    return {
        (r.meta.namespace, r.meta.name)
        for r in config.rejected
        if r.kind is Kind.GATEWAY and r.gateway_class_name in ours_classes
    }


def rejected_statuses(
    config: Config,
    *,
    ours_classes: Set[str],
    gateway_keys: Set[GatewayKey],
    grants: ReferenceGrants,
    policy_gateways: Sequence[tuple[Gateway, Iterable[Route]]],
    controller_name: str,
    now: str,
    listener_set_keys: Set[GatewayKey] = frozenset(),
) -> list[ObjectStatus]:
    """The status of every rejected object gatewayd reports on.

    ``gateway_keys``: our Gateways, valid or rejected; ``policy_gateways``: our valid
    Gateways with the routes a BackendTLSPolicy would apply to (as for valid policies);
    ``listener_set_keys``: the ListenerSets of our Gateways.
    """
    services = {(s.meta.namespace, s.meta.name) for s in config.services}
    out: list[ObjectStatus] = []
    for obj in config.rejected:
        status: dict[str, object] | None
        if obj.kind is Kind.GATEWAY:
            status = _gateway(obj, ours_classes, now)
        elif obj.kind is Kind.BACKEND_TLS_POLICY:
            status = _policy(obj, policy_gateways, controller_name, now)
        elif obj.kind is Kind.LISTENER_SET:
            status = _listener_set(obj, gateway_keys, now)
        elif obj.kind is Kind.BACKEND_LB_POLICY:
            # Ancestors as for a valid BackendLBPolicy: Gateways of its HTTPRoutes.
            lb_gateways = [(gw, http_routes_of(routes)) for gw, routes in policy_gateways]
            status = _policy(obj, lb_gateways, controller_name, now)
        else:
            parents = gateway_keys, listener_set_keys
            status = _route(obj, parents, services, grants, controller_name, now)
        if status is not None:
            out.append(
                ObjectStatus(
                    api_version=LB_POLICY_API_VERSION
                    if obj.kind is Kind.BACKEND_LB_POLICY
                    else API_VERSION,
                    kind=obj.kind.value,
                    namespace=obj.meta.namespace,
                    name=obj.meta.name,
                    generation=obj.meta.generation,
                    status=status,
                )
            )
    return out


def _gateway(obj: RejectedObject, ours_classes: Set[str], now: str) -> dict[str, object] | None:
    if obj.gateway_class_name not in ours_classes:
        # Another controller's Gateway (or a class that cannot be read: whose it is is
        # unknown), so not ours to report on.
        return None
    gen = obj.meta.generation
    message = rejected_message(obj)
    # "Invalid: This reason is used with the "Programmed" and "Accepted" conditions when
    # the Gateway is syntactically or semantically invalid." (GatewayConditionReason)
    return {
        "conditions": [
            condition(ACCEPTED, False, INVALID, message, gen, now),
            condition(PROGRAMMED, False, INVALID, message, gen, now),
        ],
        # No listener is served; an empty list also clears what a valid version reported.
        "listeners": [],
    }


def _listener_set(
    obj: RejectedObject, gateway_keys: Set[GatewayKey], now: str
) -> dict[str, object] | None:
    """A refused ListenerSet whose parentRef names one of our Gateways."""
    if not obj.parent_refs:
        return None  # whose it is cannot be read
    ref = obj.parent_refs[0]
    if (ref.namespace or obj.meta.namespace, ref.name) not in gateway_keys:
        return None
    gen = obj.meta.generation
    message = rejected_message(obj)
    # "Invalid: ... used with the "Programmed" and "Accepted" conditions when the
    # ListenerSet is syntactically or semantically invalid." (ListenerSetReasonInvalid)
    return {
        "conditions": [
            condition(ACCEPTED, False, INVALID, message, gen, now),
            condition(PROGRAMMED, False, INVALID, message, gen, now),
        ],
        "listeners": [],
    }


def _route(
    obj: RejectedObject,
    parent_keys: tuple[Set[GatewayKey], Set[GatewayKey]],
    services: Set[tuple[str, str]],
    grants: ReferenceGrants,
    controller_name: str,
    now: str,
) -> dict[str, object] | None:
    ns = obj.meta.namespace
    gen = obj.meta.generation
    message = rejected_message(obj)
    parents: list[dict[str, object]] = []
    gateway_keys, listener_set_keys = parent_keys
    for ref in obj.parent_refs:
        target = (ref.namespace or ns, ref.name)
        if ref.group == GATEWAY_GROUP and ref.kind == "Gateway":
            # "Implementations of this API can only populate Route status for the
            # Gateways/parent resources they are responsible for." (RouteStatus.Parents)
            ours = target in gateway_keys
        elif ref.group == GATEWAY_GROUP and ref.kind == "ListenerSet":
            ours = target in listener_set_keys
        elif is_service_parent(ref):
            # A mesh parent, as control.mesh reports it: a Service that exists, in the
            # route's namespace or one whose ReferenceGrant lets the route attach (no
            # entry otherwise, so that a missing grant does not reveal which Services
            # exist in a namespace the route may not look into).
            ours = target in services and (
                target[0] == ns
                or grants.allows(
                    RefFrom(group=GATEWAY_GROUP, kind=obj.kind.value, namespace=ns),
                    RefTo(group=CORE_GROUP, kind=SERVICE_KIND, namespace=target[0], name=ref.name),
                )
            )
        else:
            ours = False
        if not ours:
            continue
        # RouteConditionAccepted's reasons for False are NotAllowedByListeners,
        # NoMatchingListenerHostname, NoMatchingParent (all about the parent) and
        # UnsupportedValue, the only one about the route's own values ("a value for an
        # Enum is not recognized"); gatewayd uses it for every value it refuses (a
        # regex RE2 cannot compile, sessionPersistence), so a refused object gets it too.
        parents.append(
            {
                "parentRef": parent_ref_json(ref, ns),
                "controllerName": controller_name,
                "conditions": [condition(ACCEPTED, False, UNSUPPORTED_VALUE, message, gen, now)],
            }
        )
    if not parents:
        return None
    return {"parents": parents[:MAX_PARENTS]}


def _policy(
    obj: RejectedObject,
    policy_gateways: Sequence[tuple[Gateway, Iterable[Route]]],
    controller_name: str,
    now: str,
) -> dict[str, object] | None:
    ns = obj.meta.namespace
    targeted = {
        (ns, t.name) for t in obj.target_refs if t.group == CORE_GROUP and t.kind == SERVICE_KIND
    }
    gen = obj.meta.generation
    message = rejected_message(obj)
    ancestors: list[dict[str, object]] = []
    for gw, routes in policy_gateways:
        if not any(key in targeted for route in routes for key in route_services(route)):
            continue
        # "PolicyReasonInvalid is used with the "Accepted" condition when the policy is
        # syntactically or semantically invalid." (PolicyConditionReason)
        ancestors.append(
            {
                "ancestorRef": {
                    "group": GATEWAY_GROUP,
                    "kind": "Gateway",
                    "namespace": gw.meta.namespace,
                    "name": gw.meta.name,
                },
                "controllerName": controller_name,
                "conditions": [condition(ACCEPTED, False, INVALID, message, gen, now)],
            }
        )
    if not ancestors:
        return None
    return {"ancestors": ancestors[:MAX_ANCESTORS]}
