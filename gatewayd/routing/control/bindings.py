"""What the status computation hands the compiler: attached routes and resolved backends.

``status.resolve()`` produces a ``Resolution``; ``compile.compile_snapshot()`` consumes
it.  Only accepted Gateways and listeners that can be programmed appear in
``listeners``; everything else is reported in ``statuses`` and dropped here.

Pure module: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gatewayd.routing.config.model import BackendObjectReference, Problem, Route

if TYPE_CHECKING:
    from gatewayd.routing.control.mesh import MeshResolution
    from gatewayd.tls.certs import CertificateInfo


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointAddress:
    """One ready endpoint: an IP address (or an FQDN for addressType FQDN) and a port."""

    address: str
    port: int
    pod: str | None = None


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCertificate:
    """The Gateway's client certificate for backends (spec.tls.backend), as PEM."""

    chain_pem: bytes  # the Secret's tls.crt
    key_pem: bytes  # the Secret's tls.key


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLS:
    """How to speak TLS to one Service port (its effective BackendTLSPolicy).

    Plain data (it crosses the pipe to the worker processes, where an SSLContext cannot):
    the serving process builds one client context per distinct ``key`` on first use.
    ``error`` is set when the policy has no usable CA certificate: "Connections using an
    invalid CACertificateRef MUST fail, and the client MUST receive an HTTP 5xx error
    response." (BackendTLSPolicyValidation.CACertificateRefs)
    """

    policy: str  # "namespace/name" of the BackendTLSPolicy
    hostname: str  # SNI, and the name verified when subject_alt_names is empty
    ca_pem: bytes | None = None  # None: the system trust store (wellKnownCACertificates)
    subject_alt_names: tuple[str, ...] = ()  # DNS names or URIs
    client_certificate: ClientCertificate | None = None  # the Gateway's, if any
    error: str | None = None
    # A digest of everything above: the cache key of the client context and part of the
    # upstream pool key (a TLS connection is only reused for the same settings).
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        cert = self.client_certificate
        for part in (
            self.hostname.encode(),
            b"system" if self.ca_pem is None else self.ca_pem,
            "\n".join(self.subject_alt_names).encode(),
            b"" if cert is None else cert.chain_pem,
            b"" if cert is None else cert.key_pem,
        ):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        object.__setattr__(self, "key", "tls:" + h.hexdigest()[:32])


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
    routes: tuple[AttachedRoute, ...] = ()


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    listeners: tuple[ListenerBinding, ...] = ()
    backends: Mapping[BackendKey, BackendTarget] = field(default_factory=dict)
    statuses: tuple[ObjectStatus, ...] = ()
    problems: tuple[Problem, ...] = ()
    # (namespace, name) -> address, to keep allocation stable across reloads
    gateway_addresses: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # GAMMA: routes attached to Services (routing/mesh.py); None when nothing asked.
    mesh: MeshResolution | None = None
    # BackendTLSPolicy: (namespace, Service name, port) -> TLS settings to that port.
    backend_tls: Mapping[tuple[str, str, int], BackendTLS] = field(default_factory=dict)
    # spec.tls.backend.clientCertificateRef of each Gateway whose reference resolved.
    client_certificates: Mapping[tuple[str, str], ClientCertificate] = field(default_factory=dict)
