"""What the status computation hands the compiler: attached routes and resolved backends.

``control.resolve.resolve()`` produces a ``Resolution``;
``compile.compiler.compile_snapshot()`` consumes it.  Only accepted Gateways and
listeners that can be programmed appear in ``listeners``; everything else is reported in
``statuses`` and dropped here.  The backend data the snapshot itself carries
(``EndpointAddress``, ``BackendTLS``) lives in ``snapshot.backends``.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gatewayd.routing.config.model import (
    BackendObjectReference,
    Problem,
    Route,
    SessionPersistence,
)
from gatewayd.routing.snapshot.backends import BackendTLS, ClientCertificate, EndpointAddress
from gatewayd.routing.snapshot.frozen import fast_init
from gatewayd.routing.snapshot.rules import TLSOptions

if TYPE_CHECKING:
    from gatewayd.tls.certs import CertificateInfo


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class BackendKey:
    """A backend reference as seen from a route namespace (the namespace is resolved)."""

    group: str
    kind: str
    namespace: str
    name: str
    port: int | None

    @staticmethod
    def of(ref: BackendObjectReference, route_namespace: str) -> BackendKey:
        return BackendKey(
            group=ref.group,
            kind=ref.kind,
            namespace=ref.namespace or route_namespace,
            name=ref.name,
            port=ref.port,
        )


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTarget:
    """A resolved backendRef.

    ``invalid`` is a reason (BackendNotFound, InvalidKind, RefNotPermitted,
    UnsupportedProtocol) when the reference cannot be used: its weight stays a share of
    the rule that is answered 500.  A valid target may still have no ready endpoints
    (answered 503 by the data plane).
    """

    name: str  # "namespace/name:port", used in metrics and config_dump
    endpoints: tuple[EndpointAddress, ...] = ()
    invalid: str | None = None
    message: str = ""
    app_protocol: str | None = None
    fqdn: bool = False  # endpoints are DNS names resolved at connect time
    # PROXY protocol version sent to the endpoints of L4 routes (TLS passthrough, TCP):
    # 0 none, 1 or 2 (the Service's gatewayd.io/upstream-proxy-protocol annotation).
    proxy_protocol: int = 0


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class AttachedRoute:
    """A route accepted by one listener.

    ``hostnames`` is the intersection of the route's hostnames with the listener's
    hostname (GEP-1294 / HTTPRoute spec): the most specific form of each pair, in the
    route's order; ``()`` means "any host" (neither side restricts).
    """

    route: Route
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerBinding:
    """One programmable listener of one accepted Gateway, with what attached to it."""

    gateway_namespace: str
    gateway_name: str
    listener_name: str
    address: str  # the Gateway's address (IPv4/IPv6 literal)
    port: int
    protocol: str  # HTTP | HTTPS | TLS
    hostname: str | None = None
    tls_mode: str | None = None  # Terminate | Passthrough for HTTPS/TLS listeners
    # Terminate mode: checked key pairs (certificateRefs order) and frontend validation.
    certificates: tuple[CertificateInfo, ...] = ()
    client_ca_pem: bytes | None = None
    client_auth: str = "none"  # none | require | optional
    tls_options: TLSOptions | None = None  # listener tls.options gatewayd implements
    routes: tuple[AttachedRoute, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectStatus:
    """One object's Gateway API status, in the Kubernetes JSON shape (camelCase keys)."""

    api_version: str
    kind: str
    namespace: str
    name: str
    generation: int
    status: Mapping[str, object]

    def as_item(self) -> dict[str, object]:
        meta: dict[str, object] = {"name": self.name, "generation": self.generation}
        if self.namespace:
            meta["namespace"] = self.namespace
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": meta,
            "status": self.status,
        }


# GAMMA (control/mesh.py -> compile/mesh.py)

RouteId = tuple[str, str, str]  # (kind, namespace, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePortRoutes:
    """The routes attached to one port of one Service (status -> compiler)."""

    service_namespace: str
    service_name: str
    cluster_ips: tuple[str, ...]  # canonical text form
    port: int
    producer: tuple[Route, ...] = ()
    consumers: Mapping[str, tuple[Route, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshResolution:
    """Everything GAMMA contributes to a ``Resolution``."""

    services: tuple[ServicePortRoutes, ...] = ()
    # Mesh routes resolve their backendRefs apart from Gateway routes: GEP-1426 "Routes
    # of either type can send traffic to backendRefs in any namespace. Unlike Gateway
    # bound routes, this is allowed without a ReferenceGrant."
    backends: Mapping[BackendKey, BackendTarget] = field(default_factory=dict)
    # route id -> its status.parents entries for Service parents, in parentRefs order
    parents: Mapping[RouteId, tuple[dict[str, object], ...]] = field(default_factory=dict)
    pod_namespaces: Mapping[str, str] = field(default_factory=dict)  # pod IP -> namespace


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    listeners: tuple[ListenerBinding, ...] = ()
    backends: Mapping[BackendKey, BackendTarget] = field(default_factory=dict)
    statuses: tuple[ObjectStatus, ...] = ()
    problems: tuple[Problem, ...] = ()
    # (namespace, name) -> address, to keep allocation stable across reloads
    gateway_addresses: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # GAMMA: routes attached to Services (control/mesh.py); None when nothing asked.
    mesh: MeshResolution | None = None
    # BackendTLSPolicy: (namespace, Service name, port) -> TLS settings to that port.
    backend_tls: Mapping[tuple[str, str, int], BackendTLS] = field(default_factory=dict)
    # spec.tls.backend.clientCertificateRef of each Gateway whose reference resolved.
    client_certificates: Mapping[tuple[str, str], ClientCertificate] = field(default_factory=dict)
    # BackendLBPolicy: (namespace, Service name) -> the accepted policy's name and its
    # sessionPersistence (a route rule's own sessionPersistence takes precedence).
    backend_sessions: Mapping[tuple[str, str], tuple[str, SessionPersistence]] = field(
        default_factory=dict
    )
