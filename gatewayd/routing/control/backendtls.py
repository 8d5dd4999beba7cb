"""BackendTLSPolicy: which Service ports gatewayd reaches over TLS, and each policy's status.

Normative source: kubernetes-sigs/gateway-api ``apis/v1/backendtlspolicy_types.go`` and
``policy_types.go`` (PolicyAncestorStatus), and the conformance tests
``backendtlspolicy*.go``.  The sentences enforced are quoted next to the code.

A policy targets Services in its own namespace (``LocalPolicyTargetReference``: a
cross-namespace target cannot be written), optionally one port by name
(``sectionName``).  Its status is reported per ancestor: "we recommend that
implementations SHOULD use Gateway as the PolicyAncestorStatus object", so the
ancestors are our Gateways with a route attached that sends traffic (a backendRef or a
mirror) to a targeted Service.  A TLSRoute counts only behind a Terminate listener,
where gatewayd re-encrypts the decrypted stream (conformance
BackendTLSPolicyTLSRouteTerminate expects the Gateway as ancestor); behind a
Passthrough listener the backend gets the client's own TLS stream and no policy
applies.  A policy no route of ours uses has no ancestor.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    PLAIN_RULES,
    BackendTLSPolicy,
    Config,
    ConfigMap,
    Gateway,
    GRPCRouteRule,
    HTTPRouteRule,
    L4Route,
    Listener,
    Route,
    Service,
    TCPRouteRule,
    TLSModeType,
    TLSRoute,
    TLSRouteRule,
    UDPRouteRule,
)
from gatewayd.routing.control.attach import tls_mode
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    API_VERSION,
    CONFLICTED,
    INVALID_CA_CERTIFICATE_REF,
    INVALID_KIND,
    NO_VALID_CA_CERTIFICATE,
    RESOLVED_REFS,
    TARGET_NOT_FOUND,
    Verdict,
    condition,
)
from gatewayd.routing.snapshot.backends import BackendTLS
from gatewayd.tls.certs import CA_BUNDLE_KEY, InvalidCertificate, load_ca_bundle

# "A maximum of 16 ancestors will be represented in this list." (PolicyStatus.Ancestors)
MAX_ANCESTORS: Final = 16

ServiceKey = tuple[str, str]  # (namespace, name)
GatewayKey = tuple[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyResolution:
    statuses: tuple[ObjectStatus, ...] = ()
    # (namespace, Service, port number) -> the TLS settings of its effective policy
    backend_tls: Mapping[tuple[str, str, int], BackendTLS] = field(default_factory=dict)


@dataclass(slots=True)
class _Policy:
    policy: BackendTLSPolicy
    refs: Verdict  # ResolvedRefs
    ca_pem: bytes | None  # None: system trust store (or no valid CA: see ``no_ca``)
    no_ca: str | None  # set when every caCertificateRef is invalid
    # (Service namespace, name) -> why this policy does not apply to it, if it does not
    target_problems: dict[ServiceKey, Verdict] = field(default_factory=dict)
    services: set[ServiceKey] = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"{self.policy.meta.namespace}/{self.policy.meta.name}"


def _order(policy: BackendTLSPolicy) -> tuple[str, str]:
    # "The older policy by creation timestamp takes precedence ... The policy appearing
    # first in alphabetical order by {name}." (BackendTLSPolicySpec.TargetRefs)
    return (policy.meta.creation_timestamp, policy.meta.name)


def _check_ca_refs(
    policy: BackendTLSPolicy, config_maps: Mapping[ServiceKey, ConfigMap]
) -> tuple[Verdict, bytes | None, str | None]:
    """(ResolvedRefs verdict, CA bundle or None for the system store, no-valid-CA message)."""
    validation = policy.validation
    if not validation.ca_certificate_refs:
        # wellKnownCACertificates: System (validated at load: the only allowed value).
        return Verdict(True, RESOLVED_REFS, "All references are resolved"), None, None
    ns = policy.meta.namespace
    problems: list[Verdict] = []
    bundles: list[bytes] = []
    for i, ref in enumerate(validation.ca_certificate_refs):
        what = f"validation.caCertificateRefs[{i}]"
        if ref.group != CORE_GROUP or ref.kind != "ConfigMap":
            # "It refers to an unknown or unsupported kind of resource. In this case, the
            # Reason must be set to `InvalidKind` and the Message of the Condition must
            # explain which kind of resource is unknown or unsupported."
            group = ref.group or "core"
            problems.append(
                Verdict(
                    False,
                    INVALID_KIND,
                    f"{what}: unsupported kind {ref.kind!r} in group {group!r} "
                    "(only core ConfigMaps with a ca.crt key)",
                )
            )
            continue
        cm = config_maps.get((ns, ref.name))
        # "It refers to a resource that cannot be resolved (e.g., the referenced resource
        # does not exist) or is misconfigured (e.g., a ConfigMap does not contain a key
        # named `ca.crt`). In this case, the Reason must be set to
        # `InvalidCACertificateRef`"
        if cm is None:
            problems.append(
                Verdict(
                    False,
                    INVALID_CA_CERTIFICATE_REF,
                    f"{what}: ConfigMap {ns}/{ref.name} not found",
                )
            )
            continue
        value = cm.get(CA_BUNDLE_KEY)
        if value is None:
            problems.append(
                Verdict(
                    False,
                    INVALID_CA_CERTIFICATE_REF,
                    f"{what}: ConfigMap {ns}/{ref.name} has no {CA_BUNDLE_KEY} key",
                )
            )
            continue
        try:
            bundles.append(load_ca_bundle(value))
        except InvalidCertificate as exc:
            problems.append(
                Verdict(
                    False,
                    INVALID_CA_CERTIFICATE_REF,
                    f"{what}: ConfigMap {ns}/{ref.name} {CA_BUNDLE_KEY}: {exc}",
                )
            )
    if not problems:
        refs = Verdict(True, RESOLVED_REFS, "All references are resolved")
    else:
        # "the implementation MUST ensure the `ResolvedRefs` Condition on the
        # BackendTLSPolicy is set to `status: False`, with a Reason and Message that
        # indicate the cause of the error."
        refs = Verdict(False, problems[0].reason, "; ".join(p.message for p in problems))
    if not bundles:
        # "If ALL CACertificateRefs are invalid, the implementation MUST also ensure the
        # `Accepted` Condition on the BackendTLSPolicy is set to `status: False`, with a
        # Reason `NoValidCACertificate`."
        return refs, None, f"no valid CA certificate: {refs.message}"
    return refs, b"".join(bundles), None


def applies_to(route: Route, listener: Listener) -> bool:
    """Whether a BackendTLSPolicy can apply to the backends of ``route`` attached to
    ``listener``: always for HTTPRoutes and GRPCRoutes; for a TLSRoute only when the
    listener terminates TLS (the default mode) and so re-encrypts, never in Passthrough
    mode, where the backend gets the client's own TLS stream."""
    if isinstance(route, L4Route):
        # TCPRoute and UDPRoute carry opaque bytes: gatewayd never originates TLS for
        # them (README, "TCPRoute and UDPRoute").
        return False
    if not isinstance(route, TLSRoute):
        return True
    return tls_mode(listener) is TLSModeType.TERMINATE


def route_services(route: Route) -> Iterator[ServiceKey]:
    """Every Service a route sends traffic to (backendRefs and mirrors).  The caller
    passes only routes the policies apply to (``applies_to``)."""
    ns = route.meta.namespace
    rules: Sequence[HTTPRouteRule | GRPCRouteRule | TLSRouteRule | TCPRouteRule | UDPRouteRule] = (
        route.rules
    )
    for rule in rules:
        refs = [br.ref for br in rule.backend_refs]
        if not isinstance(rule, PLAIN_RULES):  # TLS/TCP/UDP routes: no filters, no mirrors
            filters = [*rule.filters, *(f for br in rule.backend_refs for f in br.filters)]
            refs += [f.request_mirror.backend_ref for f in filters if f.request_mirror]
        for ref in refs:
            if ref.group == CORE_GROUP and ref.kind == "Service":
                yield (ref.namespace or ns, ref.name)


def resolve_backend_tls(
    config: Config,
    gateways: Sequence[tuple[Gateway, Iterable[Route]]],
    *,
    controller_name: str,
    now: str,
) -> PolicyResolution:
    """Each policy's status (one ancestor per Gateway using a target) and the TLS settings
    of every targeted Service port.  ``gateways``: our Gateways with their attached routes.
    """
    if not config.backend_tls_policies:
        return PolicyResolution()
    services: dict[ServiceKey, Service] = {
        (s.meta.namespace, s.meta.name): s for s in config.services
    }
    config_maps = {(c.meta.namespace, c.meta.name): c for c in config.config_maps}

    evaluated: list[_Policy] = []
    # (namespace, Service, sectionName) -> policies claiming it, for conflict resolution
    claims: dict[tuple[str, str, str | None], list[_Policy]] = {}
    for policy in sorted(config.backend_tls_policies, key=_order):
        refs, ca_pem, no_ca = _check_ca_refs(policy, config_maps)
        p = _Policy(policy=policy, refs=refs, ca_pem=ca_pem, no_ca=no_ca)
        evaluated.append(p)
        ns = policy.meta.namespace
        for target in policy.target_refs:
            if target.group != CORE_GROUP or target.kind != "Service":
                # Only Services are supported ("Only Services have Extended support");
                # no route of ours can send traffic to anything else, so such a target
                # has no ancestor to report on.
                continue
            key = (ns, target.name)
            p.services.add(key)
            service = services.get(key)
            if service is None:
                p.target_problems[key] = Verdict(
                    False, TARGET_NOT_FOUND, f"target Service {ns}/{target.name} not found"
                )
                continue
            if target.section_name is not None and not any(
                port.name == target.section_name for port in service.ports
            ):
                # "If a SectionName is specified, but does not exist on the targeted
                # object, the Policy must fail to attach" (LocalPolicyTarget...SectionName)
                p.target_problems[key] = Verdict(
                    False,
                    TARGET_NOT_FOUND,
                    f"target Service {ns}/{target.name} has no port named {target.section_name!r}",
                )
                continue
            claims.setdefault((ns, target.name, target.section_name), []).append(p)

    winners: dict[tuple[str, str, str | None], _Policy] = {}
    for claim, policies in claims.items():
        # ``evaluated`` is in precedence order, so the first claimant wins.
        winner = policies[0]
        winners[claim] = winner
        for loser in policies[1:]:
            # "For any BackendTLSPolicy that does not take precedence, the implementation
            # MUST ensure the `Accepted` Condition is set to `status: False`, with Reason
            # `Conflicted`."
            section = f" port {claim[2]!r}" if claim[2] is not None else ""
            loser.target_problems.setdefault(
                claim[:2],
                Verdict(
                    False,
                    CONFLICTED,
                    f"BackendTLSPolicy {winner.name} takes precedence for Service "
                    f"{claim[0]}/{claim[1]}{section} (older, or first by name)",
                ),
            )

    backend_tls: dict[tuple[str, str, int], BackendTLS] = {}
    for (ns, name), service in services.items():
        for port in service.ports:
            # A policy naming the port wins over one for the whole Service (conformance:
            # BackendTLSPolicyConflictResolution, "with and without a section name").
            chosen = winners.get((ns, name, port.name)) if port.name else None
            if chosen is None:
                chosen = winners.get((ns, name, None))
            if chosen is None:
                continue
            v = chosen.policy.validation
            backend_tls[(ns, name, port.port)] = BackendTLS(
                policy=chosen.name,
                hostname=v.hostname,
                ca_pem=chosen.ca_pem,
                subject_alt_names=tuple(san.value for san in v.subject_alt_names),
                error=chosen.no_ca,
            )

    statuses = [_status(p, gateways, controller_name=controller_name, now=now) for p in evaluated]
    return PolicyResolution(statuses=tuple(statuses), backend_tls=backend_tls)


def _status(
    p: _Policy,
    gateways: Sequence[tuple[Gateway, Iterable[Route]]],
    *,
    controller_name: str,
    now: str,
) -> ObjectStatus:
    meta = p.policy.meta
    gen = meta.generation
    ancestors: list[dict[str, object]] = []
    for gw, routes in gateways:
        used = {key for route in routes for key in route_services(route)} & p.services
        if not used:
            continue
        problems = [p.target_problems[k] for k in sorted(used) if k in p.target_problems]
        if problems:
            # Only this Gateway's targets count: TargetNotFound before Conflicted.
            problems.sort(key=lambda v: v.reason != TARGET_NOT_FOUND)
            accepted = problems[0]
        elif p.no_ca is not None:
            accepted = Verdict(False, NO_VALID_CA_CERTIFICATE, p.no_ca)
        else:
            accepted = Verdict(True, ACCEPTED, "Policy is accepted")
        ancestors.append(
            {
                "ancestorRef": {
                    "group": GATEWAY_GROUP,
                    "kind": "Gateway",
                    "namespace": gw.meta.namespace,
                    "name": gw.meta.name,
                },
                "controllerName": controller_name,
                "conditions": [
                    condition(ACCEPTED, accepted.ok, accepted.reason, accepted.message, gen, now),
                    condition(RESOLVED_REFS, p.refs.ok, p.refs.reason, p.refs.message, gen, now),
                ],
            }
        )
    return ObjectStatus(
        api_version=API_VERSION,
        kind="BackendTLSPolicy",
        namespace=meta.namespace,
        name=meta.name,
        generation=gen,
        status={"ancestors": ancestors[:MAX_ANCESTORS]},
    )
