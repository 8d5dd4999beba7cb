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

import copy
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    BackendRef,
    Config,
    FilterType,
    Gateway,
    GatewayClass,
    GRPCRoute,
    HeaderMatchType,
    HTTPRoute,
    HTTPRouteFilter,
    Listener,
    Meta,
    ParentReference,
    PathMatchType,
    Problem,
    ProtocolType,
    Route,
    RouteGroupKind,
    Secret,
    SecretObjectReference,
    TLSModeType,
    TLSRoute,
)
from gatewayd.routing.control import attach
from gatewayd.routing.control.addressing import AddressOutcome, allocate
from gatewayd.routing.control.backendrefs import INVALID_KIND, BackendResolver
from gatewayd.routing.control.backendtls import applies_to, resolve_backend_tls
from gatewayd.routing.control.bindings import (
    AttachedRoute,
    BackendKey,
    BackendTarget,
    ClientCertificate,
    ListenerBinding,
    ObjectStatus,
    Resolution,
)
from gatewayd.routing.control.mesh import resolve_mesh
from gatewayd.routing.control.refgrant import ReferenceGrants, RefFrom, RefTo
from gatewayd.routing.snapshot.regex import regex_problem
from gatewayd.tls.certs import (
    CertificateInfo,
    InvalidCertificate,
    keypair_from_secret,
    load_ca_bundle,
)

API_VERSION: Final = "gateway.networking.k8s.io/v1"
# TLSRoute is served as gateway.networking.k8s.io/v1 since Gateway API v1.5 (standard
# channel); v1alpha2/v1alpha3 manifests are the same object, reported as v1.

# Conformance feature names (pkg/features) this implementation claims on its
# GatewayClasses, sorted as "It MUST be sorted in ascending alphabetical order by the
# Name key." (GatewayClassStatus.SupportedFeatures).  Only what the data plane serves
# today: no GRPCRoute (needs HTTP/2), listener isolation or retries until the
# compiler/proxy confirm them.
SUPPORTED_FEATURES: tuple[str, ...] = tuple(
    sorted(
        (
            "BackendTLSPolicy",
            "BackendTLSPolicySANValidation",
            "Gateway",
            "GatewayAddressEmpty",
            "GatewayBackendClientCertificate",
            "GatewayFrontendClientCertificateValidation",
            "GatewayFrontendClientCertificateValidationInsecureFallback",
            "GatewayHTTPSAndTLSPassthroughSamePort",
            "GatewayHTTPSListenerDetectMisdirectedRequests",
            "GatewayPort8080",
            "GatewayStaticAddresses",
            "HTTPRoute",
            "HTTPRoute303RedirectStatusCode",
            "HTTPRoute307RedirectStatusCode",
            "HTTPRoute308RedirectStatusCode",
            "HTTPRouteBackendRequestHeaderModification",
            "HTTPRouteBackendTimeout",
            "HTTPRouteCORS",
            "HTTPRouteHostRewrite",
            "HTTPRouteMethodMatching",
            "HTTPRouteNamedRouteRule",
            "HTTPRouteParentRefPort",
            "HTTPRoutePathRedirect",
            "HTTPRoutePathRewrite",
            "HTTPRoutePortRedirect",
            "HTTPRouteQueryParamMatching",
            "HTTPRouteRequestMirror",
            "HTTPRouteRequestMultipleMirrors",
            "HTTPRouteRequestPercentageMirror",
            "HTTPRouteRequestTimeout",
            "HTTPRouteResponseHeaderModification",
            "HTTPRouteSchemeRedirect",
            "Mesh",
            "MeshClusterIPMatching",
            "MeshConsumerRoute",
            "ReferenceGrant",
            "TLSRoute",
            "TLSRouteModeMixed",
            "TLSRouteModeTerminate",
        )
    )
)

SUPPORTED_PROTOCOLS: Final = (
    ProtocolType.HTTP.value,
    ProtocolType.HTTPS.value,
    ProtocolType.TLS.value,
)

# Condition types and reasons (apis/v1/*_types.go).
ACCEPTED: Final = "Accepted"
PROGRAMMED: Final = "Programmed"
RESOLVED_REFS: Final = "ResolvedRefs"
CONFLICTED: Final = "Conflicted"
INVALID: Final = "Invalid"
PENDING: Final = "Pending"
LISTENERS_NOT_VALID: Final = "ListenersNotValid"
LISTENERS_NOT_RESOLVED: Final = "ListenersNotResolved"
UNSUPPORTED_ADDRESS: Final = "UnsupportedAddress"
ADDRESS_NOT_USABLE: Final = "AddressNotUsable"
ADDRESS_NOT_ASSIGNED: Final = "AddressNotAssigned"
UNSUPPORTED_PROTOCOL: Final = "UnsupportedProtocol"
PROTOCOL_CONFLICT: Final = "ProtocolConflict"
HOSTNAME_CONFLICT: Final = "HostnameConflict"
NO_CONFLICTS: Final = "NoConflicts"
INVALID_CERTIFICATE_REF: Final = "InvalidCertificateRef"
INVALID_ROUTE_KINDS: Final = "InvalidRouteKinds"
REF_NOT_PERMITTED: Final = "RefNotPermitted"
INVALID_CA_CERTIFICATE_REF: Final = "InvalidCACertificateRef"
INVALID_CA_CERTIFICATE_KIND: Final = "InvalidCACertificateKind"
NO_VALID_CA_CERTIFICATE: Final = "NoValidCACertificate"
INVALID_CLIENT_CERTIFICATE_REF: Final = "InvalidClientCertificateRef"
NOT_ALLOWED_BY_LISTENERS: Final = "NotAllowedByListeners"
NO_MATCHING_LISTENER_HOSTNAME: Final = "NoMatchingListenerHostname"
NO_MATCHING_PARENT: Final = "NoMatchingParent"
UNSUPPORTED_VALUE: Final = "UnsupportedValue"
INCOMPATIBLE_FILTERS: Final = "IncompatibleFilters"

GATEWAY_KIND = RouteGroupKind(group=GATEWAY_GROUP, kind="Gateway")

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


# --------------------------------------------------------------------------- conditions


def condition(
    type_: str, ok: bool, reason: str, message: str, generation: int, now: str
) -> dict[str, object]:
    """A metav1.Condition in JSON form."""
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now,
    }


@dataclass(slots=True)
class _Verdict:
    ok: bool
    reason: str
    message: str


def _ok(reason: str, message: str) -> _Verdict:
    return _Verdict(True, reason, message)


def _no(reason: str, message: str) -> _Verdict:
    return _Verdict(False, reason, message)


# --------------------------------------------------------------------------- listeners


def _family(protocol: str) -> str:
    """Listeners of one family can share a port: TLS-based ones are told apart by SNI."""
    return "HTTP" if protocol == ProtocolType.HTTP.value else "TLS"


@dataclass(slots=True)
class _ListenerState:
    listener: Listener
    kinds: tuple[RouteGroupKind, ...]
    invalid_kinds: tuple[RouteGroupKind, ...]
    accepted: _Verdict = field(default_factory=lambda: _ok(ACCEPTED, "Listener is accepted"))
    conflict: _Verdict | None = None  # set: Conflicted True with this reason
    refs: _Verdict = field(
        default_factory=lambda: _ok(RESOLVED_REFS, "All references are resolved")
    )
    certs_ok: bool = True
    # Terminate mode: the checked key pairs (certificateRefs order) and the client CA
    # bundle of frontend validation, carried to the data plane as PEM.
    certificates: tuple[CertificateInfo, ...] = ()
    client_ca_pem: bytes | None = None
    client_auth: str = "none"  # none | require | optional (gatewayd.tls.context)
    programmed: _Verdict = field(default_factory=lambda: _ok(PROGRAMMED, "Listener is programmed"))
    routes: list[AttachedRoute] = field(default_factory=list)
    route_ids: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.listener.name

    @property
    def programmable(self) -> bool:
        return self.accepted.ok and self.certs_ok and bool(self.kinds)


class _Refs:
    """Object lookups shared by the listener and route evaluation."""

    __slots__ = ("config_maps", "grants", "now", "secrets")

    def __init__(self, config: Config, grants: ReferenceGrants, now: dt.datetime) -> None:
        self.secrets = {(s.meta.namespace, s.meta.name): s for s in config.secrets}
        self.config_maps = {(c.meta.namespace, c.meta.name): c for c in config.config_maps}
        self.grants = grants
        self.now = now  # certificate validity is checked at this instant

    def gateway_may_reference(self, gw: Gateway, group: str, kind: str, ns: str, name: str) -> bool:
        return self.grants.allows(
            RefFrom(group=GATEWAY_GROUP, kind="Gateway", namespace=gw.meta.namespace),
            RefTo(group=group, kind=kind, namespace=ns, name=name),
        )


def _secret_ref_problem(
    gw: Gateway,
    ref: SecretObjectReference,
    refs: _Refs,
    what: str,
    invalid_reason: str,
) -> _Verdict | None:
    """Why a Gateway's reference to a TLS Secret cannot be used, or None when it can."""
    ns = ref.namespace or gw.meta.namespace
    if ref.group != CORE_GROUP or ref.kind != "Secret":
        group = ref.group or "core"
        return _no(
            invalid_reason,
            f"{what}: unsupported kind {ref.kind!r} in group {group!r} (only core Secrets)",
        )
    # "References to a resource in different namespace are invalid UNLESS there is a
    # ReferenceGrant in the target namespace that allows the certificate to be attached.
    # If a ReferenceGrant does not allow this reference, the "ResolvedRefs" condition
    # MUST be set to False for this listener with the "RefNotPermitted" reason."
    # (ListenerTLSConfig.CertificateRefs)
    if not refs.gateway_may_reference(gw, CORE_GROUP, "Secret", ns, ref.name):
        return _no(
            REF_NOT_PERMITTED,
            f"{what}: Secret {ns}/{ref.name} is in another namespace and no ReferenceGrant "
            f"in {ns!r} allows Gateways from {gw.meta.namespace!r} to reference it",
        )
    secret: Secret | None = refs.secrets.get((ns, ref.name))
    if secret is None:
        return _no(invalid_reason, f"{what}: Secret {ns}/{ref.name} not found")
    # "A CertificateRef is considered invalid when it refers to a nonexistent or
    # unsupported resource or kind, or when the data within that resource is malformed."
    # Only presence is checked here; the TLS loader checks the PEM itself.
    missing = [k for k in ("tls.crt", "tls.key") if not secret.get(k)]
    if missing:
        return _no(
            invalid_reason,
            f"{what}: Secret {ns}/{ref.name} has no {' or '.join(missing)}",
        )
    return None


def _check_certificates(gw: Gateway, state: _ListenerState, refs: _Refs) -> list[_Verdict]:
    """Problems of a Terminate listener's certificateRefs; sets ``state.certificates``."""
    listener = state.listener
    mode = attach.tls_mode(listener)
    if mode is not TLSModeType.TERMINATE:
        # "Passthrough: ... The certificateRefs field is ignored in this mode."
        return []
    prefix = f"listener {listener.name}"
    tls = listener.tls
    if tls is None or not tls.certificate_refs:
        return [
            _no(
                INVALID_CERTIFICATE_REF,
                f"{prefix}: tls.certificateRefs is required to terminate TLS",
            )
        ]
    problems: list[_Verdict] = []
    certificates: list[CertificateInfo] = []
    for i, ref in enumerate(tls.certificate_refs):
        what = f"{prefix}: tls.certificateRefs[{i}]"
        problem = _secret_ref_problem(gw, ref, refs, what, INVALID_CERTIFICATE_REF)
        if problem is not None:
            problems.append(problem)
            continue
        ns = ref.namespace or gw.meta.namespace
        secret = refs.secrets[(ns, ref.name)]
        # "A CertificateRef is considered invalid when it refers to a nonexistent or
        # unsupported resource or kind, or when the data within that resource is
        # malformed." (ListenerTLSConfig.CertificateRefs)  Parsed here with
        # cryptography, so the listener reports why (expired, key mismatch, not PEM)
        # instead of the data plane failing with an OpenSSL error.
        try:
            certificates.append(keypair_from_secret(secret, now=refs.now))
        except InvalidCertificate as exc:
            problems.append(
                _no(
                    INVALID_CERTIFICATE_REF,
                    f"{what}: Secret {ns}/{ref.name}: {exc}; "
                    "fix the Secret's tls.crt/tls.key (gatewayd cert makes a valid pair)",
                )
            )
    if not problems:
        state.certificates = tuple(certificates)
    return problems


def _check_ca_certificates(
    gw: Gateway, state: _ListenerState, refs: _Refs
) -> tuple[list[_Verdict], bool]:
    """Frontend client-certificate validation refs: (problems, none_valid)."""
    tls = state.listener.tls
    if tls is None or tls.frontend_validation is None:
        return [], False
    ca_refs = tls.frontend_validation.ca_certificate_refs
    problems: list[_Verdict] = []
    bundles: list[bytes] = []
    for i, ref in enumerate(ca_refs):
        what = f"listener {state.name}: tls.frontendValidation.caCertificateRefs[{i}]"
        ns = ref.namespace or gw.meta.namespace
        if ref.group != CORE_GROUP or ref.kind not in ("ConfigMap", "Secret"):
            problems.append(
                _no(
                    INVALID_CA_CERTIFICATE_KIND,
                    f"{what}: unsupported kind {ref.kind!r} (ConfigMap or Secret)",
                )
            )
            continue
        if not refs.gateway_may_reference(gw, CORE_GROUP, ref.kind, ns, ref.name):
            problems.append(
                _no(
                    REF_NOT_PERMITTED,
                    f"{what}: {ref.kind} {ns}/{ref.name} is in another namespace and no "
                    f"ReferenceGrant allows it",
                )
            )
            continue
        ca: str | bytes | None = None
        if ref.kind == "ConfigMap":
            cm = refs.config_maps.get((ns, ref.name))
            found = cm is not None
            if cm is not None:
                ca = cm.get("ca.crt")
        else:
            secret = refs.secrets.get((ns, ref.name))
            found = secret is not None
            if secret is not None:
                ca = secret.get("ca.crt")
        if not found:
            problems.append(
                _no(INVALID_CA_CERTIFICATE_REF, f"{what}: {ref.kind} {ns}/{ref.name} not found")
            )
        elif not ca:
            problems.append(
                _no(INVALID_CA_CERTIFICATE_REF, f"{what}: {ref.kind} {ns}/{ref.name} has no ca.crt")
            )
        else:
            try:
                bundles.append(load_ca_bundle(ca))
            except InvalidCertificate as exc:
                problems.append(
                    _no(
                        INVALID_CA_CERTIFICATE_REF,
                        f"{what}: {ref.kind} {ns}/{ref.name}: ca.crt: {exc}",
                    )
                )
    # "If ALL CACertificateRefs are invalid, the implementation MUST also ensure the
    # `Accepted` condition on the listener is set to `status: False`, with the Reason
    # `NoValidCACertificate`." (FrontendTLSValidation.CACertificateRefs)
    none_valid = bool(ca_refs) and len(problems) == len(ca_refs)
    if bundles:
        # The valid bundles serve (the invalid ones are reported): never fall back to
        # no client validation because one reference broke.
        state.client_ca_pem = b"".join(bundles)
        # FrontendValidation mode: AllowValidOnly (default) refuses a connection without
        # a valid client certificate; AllowInsecureFallback lets one without through.
        fallback = tls.frontend_validation.mode == "AllowInsecureFallback"
        state.client_auth = "optional" if fallback else "require"
    return problems, none_valid


def _evaluate_listeners(gw: Gateway, refs: _Refs) -> list[_ListenerState]:
    states: list[_ListenerState] = []
    for listener in gw.listeners:
        kinds, invalid = attach.supported_kinds(listener)
        states.append(_ListenerState(listener=listener, kinds=kinds, invalid_kinds=invalid))

    supported = [s for s in states if s.listener.protocol in SUPPORTED_PROTOCOLS]
    for s in states:
        if s.listener.protocol not in SUPPORTED_PROTOCOLS:
            # "a Listener with an unsupported protocol will never generate any data plane
            # config, and so will have Accepted set to `false.`" (ListenerConditionAccepted)
            s.accepted = _no(
                UNSUPPORTED_PROTOCOL,
                f"protocol {s.listener.protocol!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_PROTOCOLS)})",
            )

    # "If a set of Listeners contains Listeners that are not distinct, then those
    # Listeners are _Conflicted_, and the implementation MUST set the "Conflicted"
    # condition in the Listener Status to "True"." and "The implementation MUST NOT pick
    # one conflicting Listener as the winner. ALL indistinct Listeners must not be
    # accepted for processing." (GatewaySpec.Listeners)
    by_port: dict[int, list[_ListenerState]] = {}
    for s in supported:
        by_port.setdefault(s.listener.port, []).append(s)
    for port, group in by_port.items():
        families = {_family(s.listener.protocol) for s in group}
        if len(families) > 1:
            # Cleartext HTTP and TLS cannot be told apart on one socket.
            names = ", ".join(f"{s.name} ({s.listener.protocol})" for s in group)
            for s in group:
                s.conflict = _no(
                    PROTOCOL_CONFLICT,
                    f"port {port} is shared by listeners of incompatible protocols: {names}",
                )
            continue
        # HTTPS and TLS listeners may share a port (feature
        # GatewayHTTPSAndTLSPassthroughSamePort): the ClientHello's server name picks the
        # listener, so their hostnames must differ like any others on the port.
        by_host: dict[str, list[_ListenerState]] = {}
        for s in group:
            by_host.setdefault((s.listener.hostname or "").lower(), []).append(s)
        for host, same in by_host.items():
            if len(same) < 2:
                continue
            names = ", ".join(s.name for s in same)
            shown = host or "(any hostname)"
            for s in same:
                s.conflict = _no(
                    HOSTNAME_CONFLICT,
                    f"listeners {names} use port {port} with the same hostname {shown}",
                )

    for s in states:
        if s.conflict is not None:
            s.accepted = _no(s.conflict.reason, s.conflict.message)
        elif s.accepted.ok and s.listener.tls is not None and s.listener.tls.options:
            # "Options are a list of key/value pairs to enable extended TLS configuration
            # for each implementation ... Support: Implementation-specific"
            # (GatewayTLSConfig.Options): gatewayd implements none.  Serving the listener
            # without them could weaken TLS the user hardened (a minimum version, a
            # cipher list), so it is refused: "UnsupportedValue ... the Listener uses a
            # value for a field that is not supported by the implementation"
            # (ListenerReasonUnsupportedValue).
            keys = ", ".join(sorted(k for k, _ in s.listener.tls.options))
            s.accepted = _no(
                UNSUPPORTED_VALUE,
                f"tls.options {keys}: gatewayd supports no TLS options yet; "
                "remove them to serve this listener",
            )

    for s in supported:
        problems = _check_certificates(gw, s, refs)
        s.certs_ok = not problems
        ca_problems, no_valid_ca = _check_ca_certificates(gw, s, refs)
        problems.extend(ca_problems)
        if no_valid_ca and s.conflict is None:
            s.accepted = _no(
                NO_VALID_CA_CERTIFICATE,
                "no valid CA certificate: " + "; ".join(p.message for p in ca_problems),
            )
        if problems:
            s.refs = _no(problems[0].reason, "; ".join(p.message for p in problems))
    for s in states:
        if s.invalid_kinds:
            shown = ", ".join(f"{k.group}/{k.kind}" for k in s.invalid_kinds)
            message = f"route kinds {shown} are not supported on a {s.listener.protocol} listener"
            why = [attach.UNSERVED_KINDS[k] for k in s.invalid_kinds if k in attach.UNSERVED_KINDS]
            if why:
                message = f"{message} ({'; '.join(why)})"
            if s.refs.ok:
                s.refs = _no(INVALID_ROUTE_KINDS, message)
            else:
                s.refs = _no(s.refs.reason, f"{s.refs.message}; {message}")

    for s in states:
        if not s.accepted.ok:
            # Conformance (ListenerSetProtocolConflict) expects Programmed False with the
            # conflict reason itself.
            reason = s.conflict.reason if s.conflict is not None else INVALID
            s.programmed = _no(reason, f"listener is not accepted: {s.accepted.message}")
        elif not s.certs_ok:
            s.programmed = _no(INVALID, "listener has unresolved certificateRefs")
        elif not s.kinds:
            s.programmed = _no(INVALID, "listener supports no route kind")
    return states


# --------------------------------------------------------------------------- gateways


@dataclass(slots=True)
class _GatewayState:
    gateway: Gateway
    listeners: list[_ListenerState]
    address: AddressOutcome = field(default_factory=AddressOutcome)
    accepted: _Verdict = field(default_factory=lambda: _ok(ACCEPTED, "Gateway is accepted"))
    programmed: _Verdict = field(default_factory=lambda: _ok(PROGRAMMED, "Gateway is programmed"))
    resolved: _Verdict = field(
        default_factory=lambda: _ok(RESOLVED_REFS, "All references are resolved")
    )
    client_certificate: ClientCertificate | None = None  # spec.tls.backend, when usable

    @property
    def key(self) -> tuple[str, str]:
        return (self.gateway.meta.namespace, self.gateway.meta.name)


def _gateway_conditions(gs: _GatewayState, refs: _Refs) -> None:
    gw = gs.gateway
    not_accepted = [s for s in gs.listeners if not s.accepted.ok]
    if gs.address.unsupported is not None:
        # "the Gateway could not be accepted because an address that was provided is a
        # type which is not supported by the implementation." (UnsupportedAddress)
        gs.accepted = _no(UNSUPPORTED_ADDRESS, gs.address.unsupported)
    elif not_accepted:
        listed = "; ".join(f"{s.name}: {s.accepted.reason}" for s in not_accepted)
        if len(not_accepted) == len(gs.listeners):
            # Conformance (GatewayListenerUnsupportedProtocol): "The Gateway itself should
            # only be Accepted if at least one of its listeners is accepted."
            gs.accepted = _no(LISTENERS_NOT_VALID, f"no listener is accepted ({listed})")
        else:
            # "The implementation MUST set a "ListenersNotValid" condition on the Gateway
            # Status when the Gateway contains Conflicted Listeners whether or not they
            # accept the Gateway." (GatewaySpec.Listeners)
            accepted = ", ".join(s.name for s in gs.listeners if s.accepted.ok)
            gs.accepted = _ok(
                LISTENERS_NOT_VALID,
                f"some listeners are not accepted ({listed}); accepted: {accepted}",
            )

    if not gs.accepted.ok:
        gs.programmed = _no(INVALID, f"Gateway is not accepted: {gs.accepted.message}")
    elif gs.address.not_usable is not None:
        gs.programmed = _no(ADDRESS_NOT_USABLE, gs.address.not_usable)
    elif gs.address.not_assigned is not None:
        gs.programmed = _no(ADDRESS_NOT_ASSIGNED, gs.address.not_assigned)
    elif not any(s.programmable for s in gs.listeners):
        gs.programmed = _no(INVALID, "no listener can be programmed")

    if not gs.programmed.ok:
        for s in gs.listeners:
            if s.programmed.ok:
                # Pending: "the Listener is either not yet reconciled or not yet not
                # online and ready to accept client traffic" (ListenerReasonPending, sic).
                reason = PENDING if gs.accepted.ok else INVALID
                s.programmed = _no(reason, f"Gateway is not programmed: {gs.programmed.message}")

    # Gateway ResolvedRefs: the backend client certificate, then a summary of the
    # listeners ("a positive-polarity summary of Listener's "ResolvedRefs" condition").
    client_ref = gw.backend_client_certificate_ref
    problem = None
    if client_ref is not None:
        problem = _secret_ref_problem(
            gw,
            client_ref,
            refs,
            "spec.tls.backend.clientCertificateRef",
            INVALID_CLIENT_CERTIFICATE_REF,
        )
    unresolved = [s.name for s in gs.listeners if not s.refs.ok]
    if client_ref is not None and problem is None:
        secret = refs.secrets[(client_ref.namespace or gw.meta.namespace, client_ref.name)]
        gs.client_certificate = ClientCertificate(
            chain_pem=secret.get("tls.crt") or b"", key_pem=secret.get("tls.key") or b""
        )
    if problem is not None:
        gs.resolved = problem
    elif unresolved:
        gs.resolved = _no(
            LISTENERS_NOT_RESOLVED, f"listeners with unresolved references: {', '.join(unresolved)}"
        )


# --------------------------------------------------------------------------- routes


def _route_kind(route: Route) -> str:
    if isinstance(route, HTTPRoute):
        return "HTTPRoute"
    if isinstance(route, GRPCRoute):
        return "GRPCRoute"
    return "TLSRoute"


def _route_id(route: Route) -> tuple[str, str, str]:
    return (_route_kind(route), route.meta.namespace, route.meta.name)


def _route_order(route: Route) -> tuple[str, str, str, str]:
    # "The oldest Route based on creation timestamp ... If everything else is equivalent,
    # the Route appearing first in alphabetical order (namespace/name)" (AllowedRoutes)
    return (
        route.meta.creation_timestamp,
        route.meta.namespace,
        route.meta.name,
        _route_kind(route),
    )


def _regex_problem(route: HTTPRoute | GRPCRoute) -> _Verdict | None:
    """The first RegularExpression value of the route that RE2 cannot compile.

    Matching runs on RE2 (linear time, bounded memory: regex.py); a pattern it rejects
    (backreferences, lookaround, over the memory budget, bad syntax) could only never
    match, so the route is refused with RE2's reason: "UnsupportedValue" (the dialect is
    implementation-specific, PathMatchRegularExpression).
    """
    found: list[tuple[str, str]] = []  # (field path, pattern)
    regex = HeaderMatchType.REGULAR_EXPRESSION
    if isinstance(route, HTTPRoute):
        for i, http_rule in enumerate(route.rules):
            for j, http_match in enumerate(http_rule.matches):
                where = f"rules[{i}].matches[{j}]"
                if http_match.path.type is PathMatchType.REGULAR_EXPRESSION:
                    found.append((f"{where}.path.value", http_match.path.value))
                found.extend(
                    (f"{where}.headers[{k}].value", h.value)
                    for k, h in enumerate(http_match.headers)
                    if h.type is regex
                )
                found.extend(
                    (f"{where}.queryParams[{k}].value", q.value)
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
            return _no(
                UNSUPPORTED_VALUE,
                f"{where}: invalid regular expression {shown!r}: {problem}",
            )
    return None


def _route_value_problem(route: Route) -> _Verdict | None:
    """Route-wide problems that make every parent refuse the route (Accepted False)."""
    if isinstance(route, HTTPRoute | GRPCRoute):
        regex_verdict = _regex_problem(route)
        if regex_verdict is not None:
            return regex_verdict
        sessions = [r.session_persistence for r in route.rules]
        for i, session in enumerate(sessions):
            if session is not None:
                # Session persistence ("Support: Extended") is not implemented: the data
                # plane balances every request on its own.  Serving the rule without it
                # would break the stickiness the route asks for while status claimed it,
                # so the route is refused like a value the implementation does not
                # recognise: "UnsupportedValue" (RouteReasonUnsupportedValue).
                return _no(
                    UNSUPPORTED_VALUE,
                    f"rules[{i}].sessionPersistence: session persistence is not supported "
                    "by gatewayd yet; remove the field to serve this route",
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
                        return _no(
                            UNSUPPORTED_VALUE,
                            f"{where}[{k}]: filter type {f.type.value} is not valid on a GRPCRoute",
                        )
    if isinstance(route, HTTPRoute):
        for i, http_rule in enumerate(route.rules):
            types = {f.type for f in http_rule.filters}
            if FilterType.REQUEST_REDIRECT in types and FilterType.URL_REWRITE in types:
                # "IncompatibleFilters: ... when there are incompatible filters present on
                # a route rule (for example if the URLRewrite and RequestRedirect are both
                # present on an HTTPRoute)."
                return _no(
                    INCOMPATIBLE_FILTERS,
                    f"rules[{i}].filters: RequestRedirect and URLRewrite cannot be combined",
                )
    return None


def _route_backend_refs(
    route: Route,
) -> list[tuple[str, BackendRef | None, HTTPRouteFilter | None]]:
    """Every (field path, backendRef, filter) of a route to check, in spec order."""
    out: list[tuple[str, BackendRef | None, HTTPRouteFilter | None]] = []

    def filters(where: str, fs: Iterable[HTTPRouteFilter]) -> None:
        for k, f in enumerate(fs):
            out.append((f"{where}.filters[{k}]", None, f))

    if isinstance(route, TLSRoute):
        for i, tls_rule in enumerate(route.rules):
            for j, br in enumerate(tls_rule.backend_refs):
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


def _resolve_route_refs(
    route: Route,
    resolver: BackendResolver,
    backends: dict[BackendKey, BackendTarget],
) -> _Verdict:
    kind = _route_kind(route)
    ns = route.meta.namespace
    problems: list[_Verdict] = []
    for where, br, flt in _route_backend_refs(route):
        if br is not None:
            key, target = resolver.resolve(br.ref, kind, ns)
            backends[key] = target
            if target.invalid is not None:
                problems.append(_no(target.invalid, f"{where}: {target.message}"))
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
                    _no(target.invalid, f"{where}.requestMirror.backendRef: {target.message}")
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
                _no(INVALID_KIND, f"{where}: ExtensionRef filter {shown} is not supported")
            )
    if problems:
        return _no(problems[0].reason, "; ".join(p.message for p in problems))
    return _ok(RESOLVED_REFS, "All references are resolved")


def _parent_ref_json(ref: ParentReference, route_namespace: str) -> dict[str, object]:
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
    refs = _Refs(config, grants, _instant(now))
    problems: list[Problem] = []
    statuses: list[ObjectStatus] = []

    # GatewayClasses: ours only.  "GatewayClasses of other controllers" get nothing.
    classes = {gc.meta.name: gc for gc in config.gateway_classes}
    ours_classes = {name for name, gc in classes.items() if gc.controller_name == controller_name}
    statuses.extend(_gateway_class_status(classes[name], now) for name in sorted(ours_classes))

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

    outcomes = allocate(
        gateways, pool=address_pool, previous=previous_addresses or {}, is_local=is_local
    )
    states: dict[tuple[str, str], _GatewayState] = {}
    for gw in gateways:
        gs = _GatewayState(gateway=gw, listeners=_evaluate_listeners(gw, refs))
        gs.address = outcomes[gs.key]
        _gateway_conditions(gs, refs)
        states[gs.key] = gs

    # Routes.
    namespace_labels = {ns.meta.name: ns.meta.label_map() for ns in config.namespaces}
    resolver = BackendResolver(config.services, config.endpoint_slices, grants)
    backends: dict[BackendKey, BackendTarget] = {}
    routes: list[Route] = [*config.http_routes, *config.grpc_routes, *config.tls_routes]
    # GAMMA: Service parentRefs (mesh.py) -- their status.parents join the Gateway ones.
    mesh = resolve_mesh(
        config,
        grants=grants,
        controller_name=controller_name,
        now=now,
        check_refs=_resolve_route_refs,
        check_values=_route_value_problem,
    )
    for route in routes:
        parents = _route_parents(
            route,
            states,
            all_gateway_keys,
            namespace_labels,
            controller_name,
            now,
            problems,
            resolver,
            backends,
        )
        parents.extend(mesh.parents.get(_route_id(route), ()))
        if parents:
            kind = _route_kind(route)
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
    policies = resolve_backend_tls(
        config,
        [
            (
                gs.gateway,
                [
                    a.route
                    for s in gs.listeners
                    for a in s.routes
                    if applies_to(a.route, s.listener)
                ],
            )
            for gs in states.values()
        ],
        controller_name=controller_name,
        now=now,
    )
    statuses.extend(policies.statuses)

    bindings: list[ListenerBinding] = []
    gateway_addresses: dict[tuple[str, str], str] = {}
    for gs in states.values():
        for s in gs.listeners:
            s.routes.sort(key=lambda ar: _route_order(ar.route))
        statuses.append(_gateway_status(gs, now))
        if gs.address.pool_address is not None:
            gateway_addresses[gs.key] = gs.address.pool_address
        if not gs.programmed.ok:
            continue
        for s in gs.listeners:
            if not s.programmable:
                continue
            mode = attach.tls_mode(s.listener)
            bindings.extend(
                ListenerBinding(
                    gateway_namespace=gs.gateway.meta.namespace,
                    gateway_name=gs.gateway.meta.name,
                    listener_name=s.name,
                    address=address,
                    port=s.listener.port,
                    protocol=s.listener.protocol,
                    hostname=s.listener.hostname,
                    tls_mode=mode.value if mode is not None else None,
                    certificates=s.certificates,
                    client_ca_pem=s.client_ca_pem,
                    client_auth=s.client_auth,
                    routes=tuple(s.routes),
                )
                for address in gs.address.addresses
            )
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
        client_certificates={
            gs.key: gs.client_certificate
            for gs in states.values()
            if gs.client_certificate is not None
        },
    )


def _route_parents(
    route: Route,
    states: Mapping[tuple[str, str], _GatewayState],
    all_gateway_keys: set[tuple[str, str]],
    namespace_labels: Mapping[str, Mapping[str, str]],
    controller_name: str,
    now: str,
    problems: list[Problem],
    resolver: BackendResolver,
    backends: dict[BackendKey, BackendTarget],
) -> list[dict[str, object]]:
    kind_name = _route_kind(route)
    route_kind = RouteGroupKind(group=GATEWAY_GROUP, kind=kind_name)
    meta: Meta = route.meta
    ns = meta.namespace
    labels = namespace_labels.get(ns, {"kubernetes.io/metadata.name": ns})
    value_problem = _route_value_problem(route)
    resolved: _Verdict | None = None
    parents: list[dict[str, object]] = []
    for index, ref in enumerate(route.parent_refs):
        if ref.group != GATEWAY_GROUP or ref.kind != "Gateway":
            # Service parents (GAMMA, the mesh profile) and other parent kinds are out of
            # scope for now: "Note that parent references that cannot be resolved by an
            # implementation of this API will not be added to this list."
            # (RouteStatus.Parents)  Nothing is reported for them.
            continue
        gw_ns = ref.namespace or ns
        gs = states.get((gw_ns, ref.name))
        if gs is None:
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
            resolved = _resolve_route_refs(route, resolver, backends)
        accepted = _attach(route, route_kind, ref, gs, labels, value_problem)
        gen = meta.generation
        parents.append(
            {
                "parentRef": _parent_ref_json(ref, ns),
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


def _attach(
    route: Route,
    route_kind: RouteGroupKind,
    ref: ParentReference,
    gs: _GatewayState,
    labels: Mapping[str, str],
    value_problem: _Verdict | None,
) -> _Verdict:
    """Attach ``route`` to the listeners ``ref`` selects; the Accepted verdict."""
    gw = gs.gateway
    gw_name = f"{gw.meta.namespace}/{gw.meta.name}"
    selected = [s for s in gs.listeners if attach.listener_selected(ref, s.listener)]
    if not selected:
        narrowing = []
        if ref.section_name is not None:
            narrowing.append(f"sectionName {ref.section_name!r}")
        if ref.port is not None:
            narrowing.append(f"port {ref.port}")
        # "NoMatchingParent: ... this can occur when a Route ParentRef specifies a Port
        # and/or SectionName that does not match any Listeners in the Gateway."
        return _no(
            NO_MATCHING_PARENT,
            f"Gateway {gw_name} has no listener matching {' and '.join(narrowing)}",
        )
    if value_problem is not None:
        return value_problem
    admitted: list[tuple[_ListenerState, tuple[str, ...]]] = []
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
            return _no(
                NO_MATCHING_LISTENER_HOSTNAME,
                f"no listener of Gateway {gw_name} has a hostname matching the route's "
                f"hostnames {list(route.hostnames)}",
            )
        # Conformance (TLSRouteInvalidNoMatchingListener, HTTPRouteDisallowedKind) expects
        # NotAllowedByListeners for a route kind the listeners do not carry, although
        # TLSRouteSpec.Hostnames says "UnsupportedValue"; the conformance test wins.
        if closest == attach.NOT_ALLOWED_KIND:
            message = f"no listener of Gateway {gw_name} accepts {route_kind.kind}s"
            unserved = attach.UNSERVED_KINDS.get(route_kind)
            if unserved is not None:
                message = f"{message}: {unserved}"
        else:
            message = (
                f"no listener of Gateway {gw_name} allows {route_kind.kind}s from namespace "
                f"{route.meta.namespace!r}"
            )
        return _no(NOT_ALLOWED_BY_LISTENERS, message)
    # Attachment is independent of listener conditions: "Listener or Route status does
    # not impact successful attachment, i.e. the AttachedRoutes field count MUST be set
    # for Listeners, even if the Accepted condition of an individual Listener is set to
    # "False"." (ListenerStatus.AttachedRoutes)
    rid = _route_id(route)
    for s, effective in admitted:
        if rid in s.route_ids:
            continue
        s.route_ids.add(rid)
        s.routes.append(AttachedRoute(route=route, hostnames=effective))
    return _ok(ACCEPTED, f"Route is accepted by Gateway {gw_name}")


# --------------------------------------------------------------------------- status JSON


def _gateway_class_status(gc: GatewayClass, now: str) -> ObjectStatus:
    gen = gc.meta.generation
    return ObjectStatus(
        api_version=API_VERSION,
        kind="GatewayClass",
        namespace="",
        name=gc.meta.name,
        generation=gen,
        status={
            "conditions": [
                condition(ACCEPTED, True, "Accepted", f"Handled by {gc.controller_name}", gen, now)
            ],
            "supportedFeatures": [{"name": name} for name in SUPPORTED_FEATURES],
        },
    )


def _listener_status(s: _ListenerState, gen: int, now: str) -> dict[str, object]:
    conflict = s.conflict
    return {
        "name": s.name,
        "supportedKinds": [{"group": k.group, "kind": k.kind} for k in s.kinds],
        "attachedRoutes": len(s.routes),
        "conditions": [
            condition(ACCEPTED, s.accepted.ok, s.accepted.reason, s.accepted.message, gen, now),
            condition(
                PROGRAMMED, s.programmed.ok, s.programmed.reason, s.programmed.message, gen, now
            ),
            condition(RESOLVED_REFS, s.refs.ok, s.refs.reason, s.refs.message, gen, now),
            condition(
                CONFLICTED,
                conflict is not None,
                conflict.reason if conflict is not None else NO_CONFLICTS,
                conflict.message if conflict is not None else "No conflicts",
                gen,
                now,
            ),
        ],
    }


def _gateway_status(gs: _GatewayState, now: str) -> ObjectStatus:
    gw = gs.gateway
    gen = gw.meta.generation
    status: dict[str, object] = {}
    # "Addresses lists the network addresses that have been bound to the Gateway."
    # (GatewayStatus.Addresses) -- only a programmed Gateway binds anything.
    if gs.programmed.ok and gs.address.addresses:
        status["addresses"] = [{"type": "IPAddress", "value": a} for a in gs.address.addresses]
    status["conditions"] = [
        condition(ACCEPTED, gs.accepted.ok, gs.accepted.reason, gs.accepted.message, gen, now),
        condition(
            PROGRAMMED, gs.programmed.ok, gs.programmed.reason, gs.programmed.message, gen, now
        ),
        condition(RESOLVED_REFS, gs.resolved.ok, gs.resolved.reason, gs.resolved.message, gen, now),
    ]
    status["listeners"] = [_listener_status(s, gen, now) for s in gs.listeners]
    return ObjectStatus(
        api_version=API_VERSION,
        kind="Gateway",
        namespace=gw.meta.namespace,
        name=gw.meta.name,
        generation=gen,
        status=status,
    )


# --------------------------------------------------------------------------- bind failures


def with_listener_failures(
    resolution: Resolution, failures: Mapping[tuple[str, str, str], str]
) -> Resolution:
    """Report listeners the data plane could not program (e.g. a failed bind).

    ``failures`` maps (gateway namespace, gateway name, listener name) to a message.
    Each such listener becomes Programmed False with reason Invalid and that message,
    and its ListenerBindings are dropped.  A Gateway left with no programmed listener
    becomes Programmed False (Invalid).  Accepted conditions, attachedRoutes and route
    statuses are unchanged: "Listener or Route status does not impact successful
    attachment" (ListenerStatus.AttachedRoutes).
    """
    if not failures:
        return resolution
    kept = tuple(
        b
        for b in resolution.listeners
        if (b.gateway_namespace, b.gateway_name, b.listener_name) not in failures
    )
    serving = {(b.gateway_namespace, b.gateway_name) for b in kept}
    affected = {(ns, name) for ns, name, _ in failures}
    statuses: list[ObjectStatus] = []
    for st in resolution.statuses:
        key = (st.namespace, st.name)
        if st.kind != "Gateway" or key not in affected:
            statuses.append(st)
            continue
        status = copy.deepcopy(dict(st.status))
        failed_here: list[str] = []
        for ls in _dicts(status.get("listeners")):
            message = failures.get((st.namespace, st.name, str(ls.get("name"))))
            if message is None:
                continue
            cond = _find_condition(ls, PROGRAMMED)
            if cond is None or cond.get("status") != "True":
                continue  # not programmed anyway: its own reason stands
            failed_here.append(f"{ls.get('name')}: {message}")
            cond.update(status="False", reason=INVALID, message=message)
        gw_programmed = _find_condition(status, PROGRAMMED)
        if failed_here and gw_programmed is not None and gw_programmed.get("status") == "True":
            if key in serving:
                gw_programmed["message"] = (
                    f"Gateway is programmed; listeners not programmed: {'; '.join(failed_here)}"
                )
            else:
                gw_programmed.update(
                    status="False",
                    reason=INVALID,
                    message=f"no listener could be programmed: {'; '.join(failed_here)}",
                )
                # Nothing is bound any more ("addresses that have been bound").
                status.pop("addresses", None)
        statuses.append(replace(st, status=status))
    return replace(resolution, listeners=kept, statuses=tuple(statuses))


def _dicts(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _find_condition(obj: Mapping[str, object], type_: str) -> dict[str, object] | None:
    for cond in _dicts(obj.get("conditions")):
        if cond.get("type") == type_:
            return cond
    return None


__all__ = [
    "API_VERSION",
    "SUPPORTED_FEATURES",
    "condition",
    "resolve",
    "with_listener_failures",
]
