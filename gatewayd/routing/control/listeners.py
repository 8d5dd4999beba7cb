"""Listeners: protocol, conflicts, route kinds and certificate references of each listener.

``evaluate_listeners()`` gives one ``ListenerState`` per listener of a Gateway: its
Accepted / Conflicted / ResolvedRefs / Programmed verdicts and, for Terminate mode, the
checked key pairs and client CA bundle carried to the data plane as PEM.

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    Config,
    Gateway,
    Listener,
    ListenerSet,
    ProtocolType,
    RouteGroupKind,
    Secret,
    SecretObjectReference,
    TLSModeType,
)
from gatewayd.routing.control import attach
from gatewayd.routing.control.bindings import AttachedRoute
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    HOSTNAME_CONFLICT,
    INVALID,
    INVALID_CA_CERTIFICATE_KIND,
    INVALID_CA_CERTIFICATE_REF,
    INVALID_CERTIFICATE_REF,
    INVALID_ROUTE_KINDS,
    NO_VALID_CA_CERTIFICATE,
    PROGRAMMED,
    PROTOCOL_CONFLICT,
    REF_NOT_PERMITTED,
    RESOLVED_REFS,
    UNSUPPORTED_PROTOCOL,
    UNSUPPORTED_VALUE,
    Verdict,
    failed,
    passed,
)
from gatewayd.routing.control.refgrant import ReferenceGrants, RefFrom, RefTo
from gatewayd.routing.control.tlsoptions import describe, parse_tls_options
from gatewayd.routing.snapshot.rules import TLSOptions
from gatewayd.tls.certs import (
    TLS_CERT_KEY,
    TLS_PRIVATE_KEY_KEY,
    CertificateInfo,
    InvalidCertificate,
    load_ca_bundle,
    load_keypair,
)

SUPPORTED_PROTOCOLS: Final = (
    ProtocolType.HTTP.value,
    ProtocolType.HTTPS.value,
    ProtocolType.TLS.value,
    ProtocolType.TCP.value,
    ProtocolType.UDP.value,
)
# Listeners whose protocol has nothing to tell two of them apart on one port (no Host,
# no SNI): a second one on the same port is a conflict whatever its hostname.
L4_PROTOCOLS: Final = frozenset({ProtocolType.TCP.value, ProtocolType.UDP.value})


# --------------------------------------------------------------------------- listeners


def keypair_from_secret(secret: Secret, *, now: dt.datetime) -> CertificateInfo:
    """``tls.certs.load_keypair`` on a Secret's ``tls.crt`` / ``tls.key``.

    The Secret type is not checked here: Gateway API certificateRefs name "a Kubernetes
    Secret of type kubernetes.io/tls", a rule the caller applies (it knows the object);
    the content is what matters to ``ssl``.
    """
    return load_keypair(secret.get(TLS_CERT_KEY), secret.get(TLS_PRIVATE_KEY_KEY), now=now)


def protocol_family(protocol: str) -> str:
    """Listeners of one family can share a port: TLS-based ones are told apart by SNI."""
    if protocol in L4_PROTOCOLS:
        return protocol
    return "HTTP" if protocol == ProtocolType.HTTP.value else "TLS"


def transport(protocol: str) -> str:
    """The port space a listener binds in: UDP listeners never conflict with TCP ones."""
    return "udp" if protocol == ProtocolType.UDP.value else "tcp"


@dataclass(slots=True)
class ListenerState:
    listener: Listener
    kinds: tuple[RouteGroupKind, ...]
    invalid_kinds: tuple[RouteGroupKind, ...]
    accepted: Verdict = field(default_factory=lambda: passed(ACCEPTED, "Listener is accepted"))
    conflict: Verdict | None = None  # set: Conflicted True with this reason
    refs: Verdict = field(
        default_factory=lambda: passed(RESOLVED_REFS, "All references are resolved")
    )
    certs_ok: bool = True
    # Terminate mode: the checked key pairs (certificateRefs order) and the client CA
    # bundle of frontend validation, carried to the data plane as PEM.
    certificates: tuple[CertificateInfo, ...] = ()
    client_ca_pem: bytes | None = None
    client_auth: str = "none"  # none | require | optional (gatewayd.tls.context)
    tls_options: TLSOptions | None = None  # tls.options (control/tlsoptions.py)
    programmed: Verdict = field(
        default_factory=lambda: passed(PROGRAMMED, "Listener is programmed")
    )
    routes: list[AttachedRoute] = field(default_factory=list)
    route_ids: set[tuple[str, str, str]] = field(default_factory=set)
    # The attached HTTPRoutes and GRPCRoutes by kind, for the hostname conflict between
    # the two kinds (routes.attach_route) without a scan of every attached route.
    by_kind: dict[str, list[AttachedRoute]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.listener.name

    @property
    def programmable(self) -> bool:
        return self.accepted.ok and self.certs_ok and bool(self.kinds)


class Refs:
    """Object lookups shared by the listener and route evaluation."""

    __slots__ = ("config_maps", "grants", "now", "secrets")

    def __init__(self, config: Config, grants: ReferenceGrants, now: dt.datetime) -> None:
        self.secrets = {(s.meta.namespace, s.meta.name): s for s in config.secrets}
        self.config_maps = {(c.meta.namespace, c.meta.name): c for c in config.config_maps}
        self.grants = grants
        self.now = now  # certificate validity is checked at this instant

    def gateway_may_reference(
        self, gw: Gateway | ListenerSet, group: str, kind: str, ns: str, name: str
    ) -> bool:
        # "ReferenceGrants applied to a Gateway are not inherited by child ListenerSets"
        # (ListenerSet): a ListenerSet's references need a grant from kind ListenerSet.
        return self.grants.allows(
            RefFrom(group=GATEWAY_GROUP, kind=owner_kind(gw), namespace=gw.meta.namespace),
            RefTo(group=group, kind=kind, namespace=ns, name=name),
        )


def owner_kind(owner: Gateway | ListenerSet) -> str:
    """The kind of the object whose listeners (and references) these are."""
    return "ListenerSet" if isinstance(owner, ListenerSet) else "Gateway"


def secret_ref_problem(
    gw: Gateway | ListenerSet,
    ref: SecretObjectReference,
    refs: Refs,
    what: str,
    invalid_reason: str,
) -> Verdict | None:
    """Why a Gateway's reference to a TLS Secret cannot be used, or None when it can."""
    ns = ref.namespace or gw.meta.namespace
    if ref.group != CORE_GROUP or ref.kind != "Secret":
        group = ref.group or "core"
        return failed(
            invalid_reason,
            f"{what}: unsupported kind {ref.kind!r} in group {group!r} (only core Secrets)",
        )
    # "References to a resource in different namespace are invalid UNLESS there is a
    # ReferenceGrant in the target namespace that allows the certificate to be attached.
    # If a ReferenceGrant does not allow this reference, the "ResolvedRefs" condition
    # MUST be set to False for this listener with the "RefNotPermitted" reason."
    # (ListenerTLSConfig.CertificateRefs)
    if not refs.gateway_may_reference(gw, CORE_GROUP, "Secret", ns, ref.name):
        return failed(
            REF_NOT_PERMITTED,
            f"{what}: Secret {ns}/{ref.name} is in another namespace and no ReferenceGrant "
            f"in {ns!r} allows {owner_kind(gw)}s from {gw.meta.namespace!r} to reference it",
        )
    secret: Secret | None = refs.secrets.get((ns, ref.name))
    if secret is None:
        return failed(invalid_reason, f"{what}: Secret {ns}/{ref.name} not found")
    # "A CertificateRef is considered invalid when it refers to a nonexistent or
    # unsupported resource or kind, or when the data within that resource is malformed."
    # Only presence is checked here; the TLS loader checks the PEM itself.
    missing = [k for k in ("tls.crt", "tls.key") if not secret.get(k)]
    if missing:
        return failed(
            invalid_reason,
            f"{what}: Secret {ns}/{ref.name} has no {' or '.join(missing)}",
        )
    return None


def check_certificates(
    gw: Gateway | ListenerSet, state: ListenerState, refs: Refs
) -> list[Verdict]:
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
            failed(
                INVALID_CERTIFICATE_REF,
                f"{prefix}: tls.certificateRefs is required to terminate TLS",
            )
        ]
    problems: list[Verdict] = []
    certificates: list[CertificateInfo] = []
    for i, ref in enumerate(tls.certificate_refs):
        what = f"{prefix}: tls.certificateRefs[{i}]"
        problem = secret_ref_problem(gw, ref, refs, what, INVALID_CERTIFICATE_REF)
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
                failed(
                    INVALID_CERTIFICATE_REF,
                    f"{what}: Secret {ns}/{ref.name}: {exc}; "
                    "fix the Secret's tls.crt/tls.key (gatewayd cert makes a valid pair)",
                )
            )
    if not problems:
        state.certificates = tuple(certificates)
    return problems


def check_ca_certificates(
    gw: Gateway | ListenerSet, state: ListenerState, refs: Refs
) -> tuple[list[Verdict], bool]:
    """Frontend client-certificate validation refs: (problems, none_valid)."""
    tls = state.listener.tls
    if tls is None or tls.frontend_validation is None:
        return [], False
    ca_refs = tls.frontend_validation.ca_certificate_refs
    problems: list[Verdict] = []
    bundles: list[bytes] = []
    for i, ref in enumerate(ca_refs):
        what = f"listener {state.name}: tls.frontendValidation.caCertificateRefs[{i}]"
        ns = ref.namespace or gw.meta.namespace
        if ref.group != CORE_GROUP or ref.kind not in ("ConfigMap", "Secret"):
            problems.append(
                failed(
                    INVALID_CA_CERTIFICATE_KIND,
                    f"{what}: unsupported kind {ref.kind!r} (ConfigMap or Secret)",
                )
            )
            continue
        if not refs.gateway_may_reference(gw, CORE_GROUP, ref.kind, ns, ref.name):
            problems.append(
                failed(
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
                failed(INVALID_CA_CERTIFICATE_REF, f"{what}: {ref.kind} {ns}/{ref.name} not found")
            )
        elif not ca:
            problems.append(
                failed(
                    INVALID_CA_CERTIFICATE_REF, f"{what}: {ref.kind} {ns}/{ref.name} has no ca.crt"
                )
            )
        else:
            try:
                bundles.append(load_ca_bundle(ca))
            except InvalidCertificate as exc:
                problems.append(
                    failed(
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


def evaluate_listeners(gw: Gateway | ListenerSet, refs: Refs) -> list[ListenerState]:
    states: list[ListenerState] = []
    for listener in gw.listeners:
        kinds, invalid = attach.supported_kinds(listener)
        states.append(ListenerState(listener=listener, kinds=kinds, invalid_kinds=invalid))

    supported = [s for s in states if s.listener.protocol in SUPPORTED_PROTOCOLS]
    for s in states:
        if s.listener.protocol not in SUPPORTED_PROTOCOLS:
            # "a Listener with an unsupported protocol will never generate any data plane
            # config, and so will have Accepted set to `false.`" (ListenerConditionAccepted)
            s.accepted = failed(
                UNSUPPORTED_PROTOCOL,
                f"protocol {s.listener.protocol!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_PROTOCOLS)})",
            )

    # "If a set of Listeners contains Listeners that are not distinct, then those
    # Listeners are _Conflicted_, and the implementation MUST set the "Conflicted"
    # condition in the Listener Status to "True"." and "The implementation MUST NOT pick
    # one conflicting Listener as the winner. ALL indistinct Listeners must not be
    # accepted for processing." (GatewaySpec.Listeners)
    by_port: dict[tuple[str, int], list[ListenerState]] = {}
    for s in supported:
        by_port.setdefault((transport(s.listener.protocol), s.listener.port), []).append(s)
    for (_, port), group in by_port.items():
        families = {protocol_family(s.listener.protocol) for s in group}
        if len(families) == 1 and len(group) > 1 and group[0].listener.protocol in L4_PROTOCOLS:
            # "TCP: The Listener Hostname field is ignored." (Listener.Hostname; UDP the
            # same), so two such listeners on one port are never distinct.
            names = ", ".join(s.name for s in group)
            for s in group:
                s.conflict = failed(
                    PROTOCOL_CONFLICT,
                    f"listeners {names} are all {group[0].listener.protocol} on port {port}; "
                    "nothing tells their connections apart",
                )
            continue
        if len(families) > 1:
            # Cleartext HTTP and TLS cannot be told apart on one socket.
            names = ", ".join(f"{s.name} ({s.listener.protocol})" for s in group)
            losers = group
            if isinstance(gw, ListenerSet):
                # A ListenerSet's listeners follow listener precedence, as they do
                # against the Gateway's and other ListenerSets' (the upstream
                # ListenerSetProtocolConflict scenario keeps the HTTP listeners of a set
                # that also holds a TCP one on their port): the first protocol family
                # listed on the port keeps it.
                first = protocol_family(group[0].listener.protocol)
                losers = [s for s in group if protocol_family(s.listener.protocol) != first]
            for s in losers:
                s.conflict = failed(
                    PROTOCOL_CONFLICT,
                    f"port {port} is shared by listeners of incompatible protocols: {names}",
                )
            continue
        # HTTPS and TLS listeners may share a port (feature
        # GatewayHTTPSAndTLSPassthroughSamePort): the ClientHello's server name picks the
        # listener, so their hostnames must differ like any others on the port.
        by_host: dict[str, list[ListenerState]] = {}
        for s in group:
            by_host.setdefault((s.listener.hostname or "").lower(), []).append(s)
        for host, same in by_host.items():
            if len(same) < 2:
                continue
            names = ", ".join(s.name for s in same)
            shown = host or "(any hostname)"
            for s in same:
                s.conflict = failed(
                    HOSTNAME_CONFLICT,
                    f"listeners {names} use port {port} with the same hostname {shown}",
                )

    for s in states:
        if s.conflict is not None:
            s.accepted = failed(s.conflict.reason, s.conflict.message)
        elif s.accepted.ok and s.listener.tls is not None and s.listener.tls.options:
            # tls.options (control/tlsoptions.py): the keys gatewayd implements are
            # applied; any other key or value refuses the listener, since serving it
            # without could weaken TLS the user hardened: "UnsupportedValue ... the
            # Listener uses a value for a field that is not supported by the
            # implementation" (ListenerReasonUnsupportedValue).
            if _terminates(s.listener):
                options, option_problems = parse_tls_options(s.listener.tls.options)
            else:
                options, option_problems = None, ["a Passthrough listener terminates no TLS"]
            if option_problems:
                s.accepted = failed(
                    UNSUPPORTED_VALUE,
                    f"tls.options: {'; '.join(option_problems)}; fix or remove them to "
                    "serve this listener",
                )
            else:
                s.tls_options = options
    _port_tls_option_conflicts(states)

    for s in supported:
        problems = check_certificates(gw, s, refs)
        s.certs_ok = not problems
        ca_problems, no_valid_ca = check_ca_certificates(gw, s, refs)
        problems.extend(ca_problems)
        if no_valid_ca and s.conflict is None:
            s.accepted = failed(
                NO_VALID_CA_CERTIFICATE,
                "no valid CA certificate: " + "; ".join(p.message for p in ca_problems),
            )
        if problems:
            s.refs = failed(problems[0].reason, "; ".join(p.message for p in problems))
    for s in states:
        if s.invalid_kinds:
            shown = ", ".join(f"{k.group}/{k.kind}" for k in s.invalid_kinds)
            message = f"route kinds {shown} are not supported on a {s.listener.protocol} listener"
            why = [attach.UNSERVED_KINDS[k] for k in s.invalid_kinds if k in attach.UNSERVED_KINDS]
            if why:
                message = f"{message} ({'; '.join(why)})"
            if s.refs.ok:
                s.refs = failed(INVALID_ROUTE_KINDS, message)
            else:
                s.refs = failed(s.refs.reason, f"{s.refs.message}; {message}")

    for s in states:
        if not s.accepted.ok:
            # Conformance (ListenerSetProtocolConflict) expects Programmed False with the
            # conflict reason itself.
            reason = s.conflict.reason if s.conflict is not None else INVALID
            s.programmed = failed(reason, f"listener is not accepted: {s.accepted.message}")
        elif not s.certs_ok:
            s.programmed = failed(INVALID, "listener has unresolved certificateRefs")
        elif not s.kinds:
            s.programmed = failed(INVALID, "listener supports no route kind")
    return states


def _terminates(listener: Listener) -> bool:
    """Whether gatewayd terminates TLS for the listener (HTTPS, TLS Terminate)."""
    if listener.protocol not in ("HTTPS", "TLS"):
        return False
    mode = listener.tls.mode if listener.tls is not None else TLSModeType.TERMINATE
    return mode == TLSModeType.TERMINATE


def _port_tls_option_conflicts(states: list[ListenerState]) -> None:
    """TLS versions and suites are chosen before the server name picks a listener: every
    listener terminating TLS on a port must carry the same tls.options as the first
    one; the others are refused (UnsupportedValue), naming it."""
    first: dict[int, ListenerState] = {}
    for s in states:
        if not s.accepted.ok or not _terminates(s.listener):
            continue
        port = s.listener.port
        ref = first.setdefault(port, s)
        if ref is s or ref.tls_options == s.tls_options:
            continue
        s.accepted = failed(
            UNSUPPORTED_VALUE,
            f"tls.options ({describe(s.tls_options)}) differ from listener {ref.name}'s "
            f"({describe(ref.tls_options)}) on port {port}: TLS versions and cipher suites "
            "apply to the whole port; give every listener of the port the same tls.options",
        )
