"""Resolving a route's backendRefs to ready endpoints, the way kube-proxy does.

A Service backendRef names a Service port by number.  That port's *name* selects the
port of the same name in every EndpointSlice labelled
``kubernetes.io/service-name: <service>`` in the Service's namespace; the ready
endpoints of those slices, at the slice port's number, are the targets.

Gateway API (apis/v1/httproute_types.go, HTTPBackendRef.BackendRef):

    "A BackendRef is invalid if:
    * It refers to an unknown or unsupported kind of resource. In this case, the Reason
      must be set to `InvalidKind` ...
    * It refers to a resource that does not exist. In this case, the Reason must be set
      to `BackendNotFound` ...
    * It refers a resource in another namespace when the reference has not been
      explicitly allowed by a ReferenceGrant (or equivalent concept). In this case, the
      Reason must be set to `RefNotPermitted` ..."

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    BackendObjectReference,
    EndpointPort,
    EndpointSlice,
    Service,
    ServicePort,
)
from gatewayd.routing.control.bindings import BackendKey, BackendTarget
from gatewayd.routing.control.conditions import (
    BACKEND_NOT_FOUND,
    INVALID_KIND,
    REF_NOT_PERMITTED,
    UNSUPPORTED_PROTOCOL,
)
from gatewayd.routing.control.refgrant import ReferenceGrants, RefFrom, RefTo
from gatewayd.routing.snapshot.backends import EndpointAddress

# appProtocols the data plane cannot speak to a backend, per route kind.  Cleartext
# HTTP/2 ("kubernetes.io/h2c") is served by the upstream HTTP/2 pool.  WebSocket over
# cleartext (KEP-3726 "kubernetes.io/ws") is served: the handshake's Upgrade is
# forwarded and the 101 opens a tunnel (proxy/http/upgrade.py); "kubernetes.io/wss"
# (WebSocket over TLS) is served when a BackendTLSPolicy targets the Service (its TLS
# settings are the only ones gatewayd has for a backend), else refused
# (``WSS_WITHOUT_POLICY``).  "If a Route is not able to send
# traffic to the backend using the specified protocol then the backend is considered
# invalid. Implementations MUST set the "ResolvedRefs" condition to "False" with the
# "UnsupportedProtocol" reason." (BackendRef)
UNSUPPORTED_APP_PROTOCOLS: Mapping[str, Mapping[str, str]] = {
    "HTTPRoute": {},
}
WSS: Final = "kubernetes.io/wss"
# Service annotation: send a PROXY protocol header (v1 or v2) to the Service's endpoints
# on connections of L4 routes (TLS passthrough, TCP).  HTTP routes never send one.
UPSTREAM_PROXY_PROTOCOL: Final = "gatewayd.io/upstream-proxy-protocol"
UPSTREAM_PROXY_VERSIONS: Final[Mapping[str, int]] = {"none": 0, "v1": 1, "v2": 2}
WSS_WITHOUT_POLICY: Final = (
    "WebSocket over TLS needs a BackendTLSPolicy targeting the Service, for the TLS "
    "settings to reach it with"
)


class BackendResolver:
    """Resolves BackendObjectReferences against the loaded Services and EndpointSlices."""

    __slots__ = ("_grants", "_resolved", "_services", "_slices", "_tls_services")

    def __init__(
        self,
        services: Iterable[Service],
        endpoint_slices: Iterable[EndpointSlice],
        grants: ReferenceGrants,
        *,
        tls_services: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        # (namespace, name) of the Services a BackendTLSPolicy targets.
        self._tls_services = tls_services
        self._services = {(s.meta.namespace, s.meta.name): s for s in services}
        slices: dict[tuple[str, str], list[EndpointSlice]] = {}
        for es in endpoint_slices:
            if es.service_name:
                slices.setdefault((es.meta.namespace, es.service_name), []).append(es)
        for group in slices.values():
            group.sort(key=lambda es: es.meta.name)
        self._slices = slices
        self._grants = grants
        # (the reference's fields, route kind, route namespace) -> what ``resolve`` gave.
        self._resolved: dict[
            tuple[str, str, str | None, str, int | None, str, str],
            tuple[BackendKey, BackendTarget],
        ] = {}

    def resolve(
        self, ref: BackendObjectReference, route_kind: str, route_namespace: str
    ) -> tuple[BackendKey, BackendTarget]:
        """The reference's key and target, seen from ``route_kind``s in
        ``route_namespace``.

        Resolved once per resolver (one build) for each reference and point of view:
        the answer depends on nothing else, and the 10,000 HTTPRoutes of config-scale
        all name one Service port (~9 us a resolution, ~1 us a lookup)."""
        memo = (ref.group, ref.kind, ref.namespace, ref.name, ref.port, route_kind, route_namespace)
        hit = self._resolved.get(memo)
        if hit is None:
            hit = self._resolved[memo] = self._resolve(ref, route_kind, route_namespace)
        return hit

    def _resolve(
        self, ref: BackendObjectReference, route_kind: str, route_namespace: str
    ) -> tuple[BackendKey, BackendTarget]:
        key = BackendKey.of(ref, route_namespace)
        port_text = "" if key.port is None else str(key.port)
        name = f"{key.namespace}/{key.name}:{port_text}"

        def invalid(reason: str, message: str) -> tuple[BackendKey, BackendTarget]:
            return key, BackendTarget(name=name, invalid=reason, message=message)

        if key.group != CORE_GROUP or key.kind != "Service":
            group = key.group or "core"
            return invalid(
                INVALID_KIND,
                f"backendRef {key.kind} {key.namespace}/{key.name}: unsupported kind "
                f"{key.kind!r} in group {group!r} (only core Services are supported)",
            )
        # Checked before existence so a missing grant does not reveal which Services
        # exist in a namespace the route may not look into.
        if not self._grants.allows(
            RefFrom(group=GATEWAY_GROUP, kind=route_kind, namespace=route_namespace),
            RefTo(group=key.group, kind=key.kind, namespace=key.namespace, name=key.name),
        ):
            return invalid(
                REF_NOT_PERMITTED,
                f"backendRef Service {key.namespace}/{key.name}: no ReferenceGrant in "
                f"namespace {key.namespace!r} allows {route_kind}s from namespace "
                f"{route_namespace!r} to reference it",
            )
        service = self._services.get((key.namespace, key.name))
        if service is None:
            return invalid(
                BACKEND_NOT_FOUND, f"backendRef Service {key.namespace}/{key.name} not found"
            )
        if key.port is None:
            # "Port is required when the referent is a Kubernetes Service."
            # (BackendObjectReference.Port)
            return invalid(
                BACKEND_NOT_FOUND,
                f"backendRef Service {key.namespace}/{key.name}: port is required for a Service",
            )
        service_port = next((p for p in service.ports if p.port == key.port), None)
        if service_port is None:
            known = ", ".join(str(p.port) for p in service.ports) or "none"
            return invalid(
                BACKEND_NOT_FOUND,
                f"backendRef Service {key.namespace}/{key.name} has no port {key.port} "
                f"(ports: {known})",
            )
        endpoints, slice_app_protocol, fqdn = self._endpoints(service, service_port)
        app_protocol = service_port.app_protocol or slice_app_protocol
        why = (
            UNSUPPORTED_APP_PROTOCOLS.get(route_kind, {}).get(app_protocol)
            if app_protocol is not None
            else None
        )
        if (
            why is None
            and app_protocol == WSS
            and route_kind == "HTTPRoute"
            and (key.namespace, key.name) not in self._tls_services
        ):
            why = WSS_WITHOUT_POLICY
        if why is not None:
            return invalid(
                UNSUPPORTED_PROTOCOL,
                f"backendRef Service {key.namespace}/{key.name} port {key.port}: appProtocol "
                f"{app_protocol!r} is not supported for {route_kind} backends ({why})",
            )
        annotations = dict(service.meta.annotations)
        proxy_value = annotations.get(UPSTREAM_PROXY_PROTOCOL)
        proxy_protocol = UPSTREAM_PROXY_VERSIONS.get(proxy_value or "none")
        if proxy_protocol is None:
            return invalid(
                UNSUPPORTED_PROTOCOL,
                f"backendRef Service {key.namespace}/{key.name}: annotation "
                f"{UPSTREAM_PROXY_PROTOCOL}={proxy_value!r} is not one of v1, v2, none",
            )
        return key, BackendTarget(
            name=name,
            endpoints=endpoints,
            app_protocol=app_protocol,
            fqdn=fqdn,
            proxy_protocol=proxy_protocol,
        )

    def _endpoints(
        self, service: Service, service_port: ServicePort
    ) -> tuple[tuple[EndpointAddress, ...], str | None, bool]:
        """Ready endpoints of ``service_port`` from every slice of the Service."""
        ip_eps: list[EndpointAddress] = []
        fqdn_eps: list[EndpointAddress] = []
        seen: set[tuple[str, int]] = set()
        app_protocol: str | None = None
        wanted = service_port.name or None
        for es in self._slices.get((service.meta.namespace, service.meta.name), ()):
            slice_port = _slice_port(es.ports, wanted, service_port.protocol)
            if slice_port is None:
                continue
            number = slice_port.port
            if number is None:
                if not isinstance(service_port.target_port, int):
                    continue
                number = service_port.target_port
            if app_protocol is None:
                app_protocol = slice_port.app_protocol
            is_fqdn = es.address_type == "FQDN"
            for ep in es.endpoints:
                # Only endpoints whose conditions.ready is true (unset counts as true) get
                # traffic, as with kube-proxy; terminating endpoints report ready false.
                if not ep.ready or not ep.addresses:
                    continue
                # The EndpointSlice API defines no meaning for addresses beyond the first
                # one of an endpoint, and kube-proxy only uses the first: so do we.
                address = ep.addresses[0]
                if (address, number) in seen:
                    continue
                seen.add((address, number))
                target = fqdn_eps if is_fqdn else ip_eps
                target.append(EndpointAddress(address=address, port=number, pod=ep.target_ref_name))
        if ip_eps:
            return tuple(ip_eps), app_protocol, False
        return tuple(fqdn_eps), app_protocol, bool(fqdn_eps)


def _slice_port(
    ports: tuple[EndpointPort, ...], name: str | None, protocol: str
) -> EndpointPort | None:
    for port in ports:
        if (port.name or None) == name and port.protocol == protocol:
            return port
    return None
