"""Typed Gateway API model: what the manifests say, after admission-style validation.

Every object is a frozen, slotted dataclass holding tuples, so a loaded ``Config`` can be
shared between the status computation, the compiler and the admin endpoint without
copies.  Field names follow the Gateway API Go types (``apis/v1/*_types.go``) in
snake_case; defaults are the CRD defaults, applied by the loader.

Pure module: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from gatewayd.routing.snapshot.frozen import fast_init

GATEWAY_GROUP = "gateway.networking.k8s.io"
CORE_GROUP = ""  # the core API group ("" in Gateway API references)


class Kind(StrEnum):
    GATEWAY_CLASS = "GatewayClass"
    GATEWAY = "Gateway"
    HTTP_ROUTE = "HTTPRoute"
    GRPC_ROUTE = "GRPCRoute"
    TLS_ROUTE = "TLSRoute"
    TCP_ROUTE = "TCPRoute"
    UDP_ROUTE = "UDPRoute"
    REFERENCE_GRANT = "ReferenceGrant"
    NAMESPACE = "Namespace"
    SERVICE = "Service"
    ENDPOINT_SLICE = "EndpointSlice"
    SECRET = "Secret"
    CONFIG_MAP = "ConfigMap"
    POD = "Pod"
    BACKEND_TLS_POLICY = "BackendTLSPolicy"
    LISTENER_SET = "ListenerSet"
    BACKEND_LB_POLICY = "BackendLBPolicy"


class PathMatchType(StrEnum):
    EXACT = "Exact"
    PATH_PREFIX = "PathPrefix"
    REGULAR_EXPRESSION = "RegularExpression"


class HeaderMatchType(StrEnum):
    EXACT = "Exact"
    REGULAR_EXPRESSION = "RegularExpression"


class FilterType(StrEnum):
    REQUEST_HEADER_MODIFIER = "RequestHeaderModifier"
    RESPONSE_HEADER_MODIFIER = "ResponseHeaderModifier"
    REQUEST_REDIRECT = "RequestRedirect"
    URL_REWRITE = "URLRewrite"
    REQUEST_MIRROR = "RequestMirror"
    CORS = "CORS"
    EXTENSION_REF = "ExtensionRef"


class PathModifierType(StrEnum):
    REPLACE_FULL_PATH = "ReplaceFullPath"
    REPLACE_PREFIX_MATCH = "ReplacePrefixMatch"


class ProtocolType(StrEnum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"
    TLS = "TLS"
    TCP = "TCP"
    UDP = "UDP"


class TLSModeType(StrEnum):
    TERMINATE = "Terminate"
    PASSTHROUGH = "Passthrough"


class FromNamespaces(StrEnum):
    ALL = "All"
    SAME = "Same"
    SELECTOR = "Selector"


# --------------------------------------------------------------------------- metadata


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Where an object came from: a file and the 0-based index of its YAML document."""

    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file}:{self.index}"


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    namespace: str  # "default" when the manifest gives none; "" for cluster-scoped kinds
    name: str
    generation: int = 1
    creation_timestamp: str = ""  # RFC 3339 as written; "" sorts first
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    source: Source = field(default_factory=lambda: Source(file="<memory>", index=0))

    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


# --------------------------------------------------------------------------- references


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ParentReference:
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    namespace: str | None = None  # None: the route's namespace
    name: str
    section_name: str | None = None
    port: int | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class BackendObjectReference:
    group: str = CORE_GROUP
    kind: str = "Service"
    name: str
    namespace: str | None = None  # None: the route's namespace
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretObjectReference:
    group: str = CORE_GROUP
    kind: str = "Secret"
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectReference:
    """A reference to a CA bundle (ConfigMap or Secret), used by frontend validation."""

    group: str = CORE_GROUP
    kind: str = "ConfigMap"
    name: str
    namespace: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalObjectReference:
    group: str
    kind: str
    name: str


# --------------------------------------------------------------------------- GatewayClass


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayClass:
    meta: Meta
    controller_name: str
    description: str | None = None


# --------------------------------------------------------------------------- Gateway


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelectorRequirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RouteGroupKind:
    group: str = GATEWAY_GROUP
    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowedRoutes:
    namespaces_from: FromNamespaces = FromNamespaces.SAME
    selector: LabelSelector | None = None
    kinds: tuple[RouteGroupKind, ...] = ()  # () : the kinds the listener protocol supports


@dataclass(frozen=True, slots=True, kw_only=True)
class FrontendValidation:
    ca_certificate_refs: tuple[ObjectReference, ...] = ()
    mode: str = "AllowValidOnly"  # AllowValidOnly | AllowInsecureFallback


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayTLSConfig:
    mode: TLSModeType = TLSModeType.TERMINATE
    certificate_refs: tuple[SecretObjectReference, ...] = ()
    frontend_validation: FrontendValidation | None = None
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    name: str
    hostname: str | None = None
    port: int
    protocol: str  # a ProtocolType value, or anything else (reported UnsupportedProtocol)
    tls: GatewayTLSConfig | None = None
    allowed_routes: AllowedRoutes = field(default_factory=AllowedRoutes)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayAddress:
    type: str = "IPAddress"  # IPAddress | Hostname | <domain-prefixed custom>
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AllowedListeners:
    """spec.allowedListeners.namespaces: which ListenerSets may attach to the Gateway.

    ``namespaces_from`` is None, Same, All or Selector; "The default value is to allow
    no ListenerSets." (AllowedListeners.Namespaces)
    """

    namespaces_from: str = "None"
    selector: LabelSelector | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Gateway:
    meta: Meta
    gateway_class_name: str
    listeners: tuple[Listener, ...]
    addresses: tuple[GatewayAddress, ...] = ()
    # spec.tls.backend.clientCertificateRef (the Gateway's client certificate upstream)
    backend_client_certificate_ref: SecretObjectReference | None = None
    allowed_listeners: AllowedListeners = field(default_factory=AllowedListeners)
    # spec.infrastructure.parametersRef as "group/Kind name" (gatewayd reads no
    # parameters object: any reference makes the Gateway Accepted False).
    infrastructure_parameters_ref: str | None = None


# --------------------------------------------------------------------------- ListenerSet


@dataclass(frozen=True, slots=True, kw_only=True)
class ParentGatewayReference:
    group: str = GATEWAY_GROUP
    kind: str = "Gateway"
    name: str
    namespace: str | None = None  # None: the ListenerSet's namespace


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerSet:
    """Listeners added to a parent Gateway that allows them (apis/v1 ListenerSet)."""

    meta: Meta
    parent_ref: ParentGatewayReference
    listeners: tuple[Listener, ...]


# --------------------------------------------------------------------------- HTTPRoute


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPPathMatch:
    type: PathMatchType = PathMatchType.PATH_PREFIX
    value: str = "/"


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPHeaderMatch:
    type: HeaderMatchType = HeaderMatchType.EXACT
    name: str  # as written; compare case-insensitively
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPQueryParamMatch:
    type: HeaderMatchType = HeaderMatchType.EXACT
    name: str  # case-sensitive per spec
    value: str


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteMatch:
    path: HTTPPathMatch = field(default_factory=HTTPPathMatch)
    headers: tuple[HTTPHeaderMatch, ...] = ()
    query_params: tuple[HTTPQueryParamMatch, ...] = ()
    method: str | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPHeader:
    name: str
    value: str


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPHeaderFilter:
    set: tuple[HTTPHeader, ...] = ()
    add: tuple[HTTPHeader, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPPathModifier:
    type: PathModifierType
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRequestRedirectFilter:
    scheme: str | None = None
    hostname: str | None = None
    path: HTTPPathModifier | None = None
    port: int | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPURLRewriteFilter:
    hostname: str | None = None
    path: HTTPPathModifier | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Fraction:
    numerator: int
    denominator: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRequestMirrorFilter:
    backend_ref: BackendObjectReference
    percent: int | None = None
    fraction: Fraction | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPCORSFilter:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 5


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteFilter:
    """One filter; exactly the field named by ``type`` is set (validated at load)."""

    type: FilterType
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None
    cors: HTTPCORSFilter | None = None
    extension_ref: LocalObjectReference | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class BackendRef:
    """An HTTPBackendRef / GRPCBackendRef / TLSRoute backendRef."""

    ref: BackendObjectReference
    weight: int = 1
    filters: tuple[HTTPRouteFilter, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteTimeouts:
    request: float | None = None  # seconds; 0 disables
    backend_request: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteRetry:
    codes: tuple[int, ...] = ()
    attempts: int | None = None
    backoff: float | None = None  # seconds


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPersistence:
    session_name: str | None = None
    type: str = "Cookie"  # Cookie | Header
    absolute_timeout: float | None = None
    idle_timeout: float | None = None
    cookie_lifetime_type: str = "Session"  # Permanent | Session
    cookie_path: str | None = None  # cookie.path (newer API); None: "/"


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRouteRule:
    name: str | None = None
    matches: tuple[HTTPRouteMatch, ...] = ()  # loader fills the default PathPrefix "/"
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    session_persistence: SessionPersistence | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRoute:
    meta: Meta
    parent_refs: tuple[ParentReference, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[HTTPRouteRule, ...] = ()


# --------------------------------------------------------------------------- GRPCRoute


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCMethodMatch:
    type: HeaderMatchType = HeaderMatchType.EXACT
    service: str | None = None
    method: str | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[HTTPHeaderMatch, ...] = ()


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRouteRule:
    name: str | None = None
    matches: tuple[GRPCRouteMatch, ...] = ()
    filters: tuple[HTTPRouteFilter, ...] = ()  # only header modifiers and mirror are valid
    backend_refs: tuple[BackendRef, ...] = ()
    session_persistence: SessionPersistence | None = None


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GRPCRoute:
    meta: Meta
    parent_refs: tuple[ParentReference, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[GRPCRouteRule, ...] = ()


# --------------------------------------------------------------------------- TLSRoute


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSRouteRule:
    name: str | None = None
    backend_refs: tuple[BackendRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSRoute:
    meta: Meta
    parent_refs: tuple[ParentReference, ...] = ()
    hostnames: tuple[str, ...] = ()
    rules: tuple[TLSRouteRule, ...] = ()


# --------------------------------------------------------------------------- TCPRoute, UDPRoute


@dataclass(frozen=True, slots=True, kw_only=True)
class TCPRouteRule:
    name: str | None = None
    backend_refs: tuple[BackendRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TCPRoute:
    """gateway.networking.k8s.io/v1alpha2 TCPRoute: every connection of a TCP listener."""

    meta: Meta
    parent_refs: tuple[ParentReference, ...] = ()
    rules: tuple[TCPRouteRule, ...] = ()

    @property
    def hostnames(self) -> tuple[str, ...]:
        # No hostnames in the spec: L4 routes match every connection of the listener.
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UDPRouteRule:
    name: str | None = None
    backend_refs: tuple[BackendRef, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UDPRoute:
    """gateway.networking.k8s.io/v1alpha2 UDPRoute: every datagram of a UDP listener."""

    meta: Meta
    parent_refs: tuple[ParentReference, ...] = ()
    rules: tuple[UDPRouteRule, ...] = ()

    @property
    def hostnames(self) -> tuple[str, ...]:
        return ()


L4Route = TCPRoute | UDPRoute
# Rules without filters (nothing but backendRefs).
PLAIN_RULES = (TLSRouteRule, TCPRouteRule, UDPRouteRule)

Route = HTTPRoute | GRPCRoute | TLSRoute | TCPRoute | UDPRoute


# --------------------------------------------------------------------------- ReferenceGrant


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceGrantFrom:
    group: str
    kind: str
    namespace: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceGrantTo:
    group: str
    kind: str
    name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceGrant:
    meta: Meta
    from_: tuple[ReferenceGrantFrom, ...]
    to: tuple[ReferenceGrantTo, ...]


# --------------------------------------------------------------------------- BackendTLSPolicy


class SubjectAltNameType(StrEnum):
    HOSTNAME = "Hostname"
    URI = "URI"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyTargetReference:
    """LocalPolicyTargetReferenceWithSectionName: a target in the policy's namespace."""

    group: str
    kind: str
    name: str
    section_name: str | None = None  # for a Service: a port name


@dataclass(frozen=True, slots=True, kw_only=True)
class SubjectAltName:
    type: SubjectAltNameType
    hostname: str | None = None  # type Hostname
    uri: str | None = None  # type URI

    @property
    def value(self) -> str:
        return (self.hostname if self.type is SubjectAltNameType.HOSTNAME else self.uri) or ""


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLSPolicyValidation:
    ca_certificate_refs: tuple[LocalObjectReference, ...] = ()
    well_known_ca_certificates: str | None = None  # "System"
    hostname: str
    subject_alt_names: tuple[SubjectAltName, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLSPolicy:
    meta: Meta
    target_refs: tuple[PolicyTargetReference, ...]
    validation: BackendTLSPolicyValidation
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendLBPolicy:
    """gateway.networking.k8s.io/v1alpha2 BackendLBPolicy (GEP-1619): load balancing
    of the Services it targets, today session persistence only."""

    meta: Meta
    target_refs: tuple[PolicyTargetReference, ...]
    session_persistence: SessionPersistence | None = None


# --------------------------------------------------------------------------- core kinds


@dataclass(frozen=True, slots=True, kw_only=True)
class Namespace:
    meta: Meta  # meta.namespace == ""; labels include kubernetes.io/metadata.name


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    name: str | None = None
    port: int
    target_port: int | str | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    meta: Meta
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()  # spec.clusterIPs, else (spec.clusterIP,), "None" dropped
    ports: tuple[ServicePort, ...] = ()
    selector: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointPort:
    name: str | None = None  # "" in the manifest is normalised to None
    port: int | None = None
    protocol: str = "TCP"
    app_protocol: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool = True  # conditions.ready; unset means ready (as the API says)
    serving: bool = True
    terminating: bool = False
    hostname: str | None = None
    target_ref_name: str | None = None  # targetRef.name (a Pod), for the echo "pod"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSlice:
    meta: Meta
    service_name: str | None  # label kubernetes.io/service-name
    address_type: str = "IPv4"  # IPv4 | IPv6 | FQDN
    ports: tuple[EndpointPort, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    meta: Meta
    type: str = "Opaque"
    data: tuple[tuple[str, bytes], ...] = ()  # data (base64-decoded) merged with stringData

    def get(self, key: str) -> bytes | None:
        for k, v in self.data:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigMap:
    meta: Meta
    data: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        for k, v in self.data:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    meta: Meta
    pod_ips: tuple[str, ...] = ()  # status.podIPs[].ip, else (status.podIP,)


# --------------------------------------------------------------------------- the whole


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectedObject:
    """An object of a kind whose status gatewayd writes, refused by validation.

    What the API server would hold of it and the control stage needs to report it in
    its own status (issue 13: "an invalid object is reported in its own status and
    skipped; the rest keeps serving"): who it is, and the references that could still
    be read, each of them valid on its own.  Nothing of it is ever served.
    """

    kind: Kind  # GATEWAY, HTTP_ROUTE, GRPC_ROUTE, TLS_ROUTE or a BACKEND_*_POLICY
    meta: Meta
    messages: tuple[str, ...]  # "field.path: message", in reading order (bounded)
    more: int = 0  # messages left out of ``messages``
    parent_refs: tuple[ParentReference, ...] = ()  # routes; a ListenerSet's parentRef
    gateway_class_name: str | None = None  # a Gateway; None when it cannot be read
    target_refs: tuple[PolicyTargetReference, ...] = ()  # a BackendTLSPolicy/LBPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything that was loaded and passed validation, in file order."""

    gateway_classes: tuple[GatewayClass, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    http_routes: tuple[HTTPRoute, ...] = ()
    grpc_routes: tuple[GRPCRoute, ...] = ()
    tls_routes: tuple[TLSRoute, ...] = ()
    tcp_routes: tuple[TCPRoute, ...] = ()
    udp_routes: tuple[UDPRoute, ...] = ()
    reference_grants: tuple[ReferenceGrant, ...] = ()
    namespaces: tuple[Namespace, ...] = ()  # declared and implied (referenced) namespaces
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    secrets: tuple[Secret, ...] = ()
    config_maps: tuple[ConfigMap, ...] = ()
    pods: tuple[Pod, ...] = ()
    backend_tls_policies: tuple[BackendTLSPolicy, ...] = ()
    listener_sets: tuple[ListenerSet, ...] = ()
    backend_lb_policies: tuple[BackendLBPolicy, ...] = ()
    # Objects refused by validation whose own status reports it (never served).
    rejected: tuple[RejectedObject, ...] = ()

    def routes(self) -> list[Route]:
        """Every route of every kind, in kind then file order."""
        return [
            *self.http_routes,
            *self.grpc_routes,
            *self.tls_routes,
            *self.tcp_routes,
            *self.udp_routes,
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A user-facing error: ``file:document-index: Kind ns/name: field.path: message``."""

    source: Source | None
    kind: str = ""
    namespace: str = ""
    name: str = ""
    field: str = ""
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source is not None else ""
        obj = ""
        if self.kind:
            ref = f"{self.namespace}/{self.name}" if self.namespace else self.name
            obj = f"{self.kind} {ref}: "
        fld = f"{self.field}: " if self.field else ""
        return f"{where}{obj}{fld}{self.message}"
