"""Which routes a listener admits: route kinds, namespaces (label selectors) and hostnames.

Gateway API (apis/v1/gateway_types.go, ListenerStatus.AttachedRoutes):

    "A Route is successfully attached to a Listener when it is selected by the
    Listener's AllowedRoutes field AND the Route has a valid ParentRef selecting the
    whole Gateway resource or a specific Listener as a parent resource"

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatewayd.routing.config.model import (
    GATEWAY_GROUP,
    AllowedRoutes,
    FromNamespaces,
    LabelSelector,
    Listener,
    ParentReference,
    ProtocolType,
    RouteGroupKind,
    TLSModeType,
)
from gatewayd.routing.control import hostnames
from gatewayd.routing.snapshot.frozen import fast_init

HTTP_ROUTE = RouteGroupKind(group=GATEWAY_GROUP, kind="HTTPRoute")
GRPC_ROUTE = RouteGroupKind(group=GATEWAY_GROUP, kind="GRPCRoute")
TLS_ROUTE = RouteGroupKind(group=GATEWAY_GROUP, kind="TLSRoute")
TCP_ROUTE = RouteGroupKind(group=GATEWAY_GROUP, kind="TCPRoute")
UDP_ROUTE = RouteGroupKind(group=GATEWAY_GROUP, kind="UDPRoute")

# The route kinds each supported listener protocol can carry, in the order reported in
# ListenerStatus.supportedKinds when allowedRoutes.kinds is empty.  TLS listeners carry
# TLSRoute in both modes ("Core: The listener CAN be of type Passthrough / Extended:
# The listener CAN be of type Terminate", TLSRouteSpec).
#
# GRPCRoute on HTTP and HTTPS listeners: "Implementations supporting `GRPCRoute` with
# the `HTTP` `ProtocolType` MUST support HTTP/2 over cleartext TCP (h2c ...) without an
# initial upgrade from HTTP/1.1" and over TLS with ALPN for HTTPS (GRPCRoute); both are
# served (h2c prior knowledge, ALPN h2), and backends are reached over HTTP/2.
KINDS_BY_PROTOCOL: Mapping[str, tuple[RouteGroupKind, ...]] = {
    ProtocolType.HTTP.value: (HTTP_ROUTE, GRPC_ROUTE),
    ProtocolType.HTTPS.value: (HTTP_ROUTE, GRPC_ROUTE),
    ProtocolType.TLS.value: (TLS_ROUTE,),
    # TCP and UDP listeners (v1alpha2 TCPRoute / UDPRoute, proxy/tcproute.py, proxy/udp.py).
    ProtocolType.TCP.value: (TCP_ROUTE,),
    ProtocolType.UDP.value: (UDP_ROUTE,),
}

# Why a route kind is missing from KINDS_BY_PROTOCOL, for status messages.
UNSERVED_KINDS: Mapping[RouteGroupKind, str] = {}


def supported_kinds(
    listener: Listener,
) -> tuple[tuple[RouteGroupKind, ...], tuple[RouteGroupKind, ...]]:
    """(valid, invalid) route kinds of a listener.

    "If kinds are specified in Spec that are not supported, they MUST NOT appear in
    this list and an implementation MUST set the "ResolvedRefs" condition to "False"
    with the "InvalidRouteKinds" reason. If both valid and invalid Route kinds are
    specified, the implementation MUST reference the valid Route kinds that have been
    specified." (ListenerStatus.SupportedKinds)
    """
    compatible = KINDS_BY_PROTOCOL.get(listener.protocol, ())
    asked = listener.allowed_routes.kinds
    if not asked:
        return compatible, ()
    valid: list[RouteGroupKind] = []
    invalid: list[RouteGroupKind] = []
    for kind in asked:
        target = valid if kind in compatible else invalid
        if kind not in target:
            target.append(kind)
    return tuple(valid), tuple(invalid)


def tls_mode(listener: Listener) -> TLSModeType | None:
    """The TLS mode of an HTTPS/TLS listener (Terminate when ``tls`` is left out)."""
    if listener.protocol not in (ProtocolType.HTTPS.value, ProtocolType.TLS.value):
        return None
    return listener.tls.mode if listener.tls is not None else TLSModeType.TERMINATE


# --------------------------------------------------------------------------- namespaces


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics (metav1.LabelSelector).

    "The result of matchLabels and matchExpressions are ANDed. An empty label selector
    matches all objects. A null label selector matches no objects."  An unknown operator
    matches nothing (the selector is invalid).
    """
    for key, value in selector.match_labels:
        if labels.get(key) != value:
            return False
    for req in selector.match_expressions:
        present = req.key in labels
        if req.operator == "In":
            if not present or labels[req.key] not in req.values:
                return False
        elif req.operator == "NotIn":
            # NotIn matches objects without the key too (as kubectl selectors do).
            if present and labels[req.key] in req.values:
                return False
        elif req.operator == "Exists":
            if not present:
                return False
        elif req.operator == "DoesNotExist":
            if present:
                return False
        else:
            return False
    return True


def namespace_allowed(
    allowed: AllowedRoutes,
    gateway_namespace: str,
    route_namespace: str,
    namespace_labels: Mapping[str, str],
) -> bool:
    """allowedRoutes.namespaces: All, Same (the default) or Selector."""
    if allowed.namespaces_from is FromNamespaces.ALL:
        return True
    if allowed.namespaces_from is FromNamespaces.SELECTOR:
        # "Selector must be specified when From is set to "Selector"." (RouteNamespaces)
        # Without one the listener selects nothing, as a null selector does.
        if allowed.selector is None:
            return False
        return selector_matches(allowed.selector, namespace_labels)
    return gateway_namespace == route_namespace


# --------------------------------------------------------------------------- parentRefs


def listener_selected(ref: ParentReference, listener: Listener) -> bool:
    """sectionName / port narrowing of a parentRef to a Gateway.

    "When both Port (experimental) and SectionName are specified, the name and port of
    the selected listener must match both specified values." (ParentReference)
    """
    if ref.section_name is not None and ref.section_name != listener.name:
        return False
    return not (ref.port is not None and ref.port != listener.port)


# Reasons a listener refuses a route, from the farthest to the closest to attaching.
NOT_ALLOWED_KIND = 0
NOT_ALLOWED_NAMESPACE = 1
NO_HOSTNAME = 2


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """A listener's answer to one route: the effective hostnames, or why not."""

    hostnames: tuple[str, ...] | None = None  # None: refused
    refusal: int | None = None

    @property
    def admitted(self) -> bool:
        return self.hostnames is not None


def admit(
    listener: Listener,
    listener_kinds: tuple[RouteGroupKind, ...],
    gateway_namespace: str,
    route_kind: RouteGroupKind,
    route_namespace: str,
    route_hostnames: tuple[str, ...],
    namespace_labels: Mapping[str, str],
) -> Admission:
    if route_kind not in listener_kinds:
        return Admission(refusal=NOT_ALLOWED_KIND)
    if not namespace_allowed(
        listener.allowed_routes, gateway_namespace, route_namespace, namespace_labels
    ):
        return Admission(refusal=NOT_ALLOWED_NAMESPACE)
    effective = hostnames.intersect(listener.hostname, route_hostnames)
    if effective is None:
        return Admission(refusal=NO_HOSTNAME)
    return Admission(hostnames=effective)
