"""BackendLBPolicy: session persistence for every route's backendRefs to a Service, and
each policy's status.

Normative source: GEP-1619 and ``apis/v1alpha2/backendlbpolicy_types.go`` of
kubernetes-sigs/gateway-api (v1.2-v1.3, experimental channel; superseded upstream by
BackendTrafficPolicy), with ``policy_types.go`` (PolicyAncestorStatus) and GEP-713
for the conflict rules.  The sentences enforced are quoted next to the code.

A policy targets Services of its own namespace (``LocalPolicyTargetReference``).  Its
status is reported per ancestor, the Gateways of ours with an HTTPRoute sending traffic
to a targeted Service (as for BackendTLSPolicy: "we recommend that implementations
SHOULD use Gateway as the PolicyAncestorStatus object").  GRPCRoutes (no session
persistence served yet) and TLSRoutes (no HTTP) are not affected and make no ancestor.

* Two policies targeting one Service: GEP-713, "the oldest Policy based on creation
  timestamp" wins, then the first by "{namespace}/{name}" alphabetically; the others
  get Accepted False, reason Conflicted, for the Gateways using that Service.
* A route rule with its own ``sessionPersistence``: "Session persistence configuration
  specified in a route rule SHALL override equivalent configuration in
  BackendTrafficPolicy. In this situation, implementations MAY want to indicate a
  warning via a log or status." (GEP-1619): the policy stays Accepted (it applies to
  the other routes) and its message names the overriding rules.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from gatewayd.routing.config.model import (
    CORE_GROUP,
    GATEWAY_GROUP,
    BackendLBPolicy,
    Config,
    Gateway,
    HTTPRoute,
    Route,
    SessionPersistence,
)
from gatewayd.routing.control.backendtls import MAX_ANCESTORS, route_services
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    CONFLICTED,
    TARGET_NOT_FOUND,
    Verdict,
    condition,
)

LB_POLICY_API_VERSION: Final = f"{GATEWAY_GROUP}/v1alpha2"
# Overriding rules named in a message, at most.
MAX_NAMED_OVERRIDES: Final = 4

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True, kw_only=True)
class LBPolicyResolution:
    statuses: tuple[ObjectStatus, ...] = ()
    # (namespace, Service) -> (winning policy "namespace/name", its sessionPersistence)
    sessions: Mapping[ServiceKey, tuple[str, SessionPersistence]] = field(default_factory=dict)


@dataclass(slots=True)
class _Policy:
    policy: BackendLBPolicy
    services: set[ServiceKey] = field(default_factory=set)
    target_problems: dict[ServiceKey, Verdict] = field(default_factory=dict)
    other_kinds: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.policy.meta.namespace}/{self.policy.meta.name}"


def _order(policy: BackendLBPolicy) -> tuple[str, str, str]:
    # GEP-713: "If there are multiple Policies with the same creation timestamp, the
    # Policy appearing first in alphabetical order by {namespace}/{name}" takes
    # precedence, after "The oldest Policy based on creation timestamp."
    meta = policy.meta
    return (meta.creation_timestamp, meta.namespace, meta.name)


def http_routes_of(routes: Iterable[Route]) -> list[HTTPRoute]:
    return [r for r in routes if isinstance(r, HTTPRoute)]


def resolve_backend_lb(
    config: Config,
    gateways: Sequence[tuple[Gateway, Iterable[Route]]],
    *,
    controller_name: str,
    now: str,
) -> LBPolicyResolution:
    """Each policy's status (one ancestor per Gateway whose HTTPRoutes use a target) and
    the session persistence of every targeted Service."""
    if not config.backend_lb_policies:
        return LBPolicyResolution()
    services = {(s.meta.namespace, s.meta.name) for s in config.services}
    evaluated: list[_Policy] = []
    claims: dict[ServiceKey, list[_Policy]] = {}
    for policy in sorted(config.backend_lb_policies, key=_order):
        p = _Policy(policy=policy)
        evaluated.append(p)
        ns = policy.meta.namespace
        for target in policy.target_refs:
            if target.group != CORE_GROUP or target.kind != "Service":
                # "Currently, Backends (i.e. Service, ServiceImport, or any
                # implementation-specific backendRef) are the only valid API target
                # references": gatewayd's backends are Services.
                p.other_kinds.append(f"{target.kind} {target.name}")
                continue
            key = (ns, target.name)
            p.services.add(key)
            if key not in services:
                p.target_problems[key] = Verdict(
                    False, TARGET_NOT_FOUND, f"target Service {ns}/{target.name} not found"
                )
                continue
            claims.setdefault(key, []).append(p)

    sessions: dict[ServiceKey, tuple[str, SessionPersistence]] = {}
    for key, policies in claims.items():
        winner = policies[0]  # ``evaluated`` is in precedence order
        if winner.policy.session_persistence is not None:
            sessions[key] = (winner.name, winner.policy.session_persistence)
        for loser in policies[1:]:
            loser.target_problems[key] = Verdict(
                False,
                CONFLICTED,
                f"BackendLBPolicy {winner.name} takes precedence for Service "
                f"{key[0]}/{key[1]} (older, or first by namespace/name)",
            )
    statuses = [_status(p, gateways, controller_name=controller_name, now=now) for p in evaluated]
    return LBPolicyResolution(statuses=tuple(statuses), sessions=sessions)


def _overrides(routes: Sequence[HTTPRoute], targets: set[ServiceKey]) -> list[str]:
    """The rules of ``routes`` to a targeted Service with their own sessionPersistence."""
    out: list[str] = []
    for route in routes:
        ns = route.meta.namespace
        for i, rule in enumerate(route.rules):
            if rule.session_persistence is None:
                continue
            if any(
                br.ref.group == CORE_GROUP
                and br.ref.kind == "Service"
                and (br.ref.namespace or ns, br.ref.name) in targets
                for br in rule.backend_refs
            ):
                out.append(f"HTTPRoute {ns}/{route.meta.name} rule {i}")
    return out


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
        http = http_routes_of(routes)
        used = {key for route in http for key in route_services(route)} & p.services
        if not used:
            continue
        problems = [p.target_problems[k] for k in sorted(used) if k in p.target_problems]
        if problems:
            problems.sort(key=lambda v: v.reason != TARGET_NOT_FOUND)
            accepted = problems[0]
        else:
            message = "Policy is accepted"
            if p.other_kinds:
                message += (
                    "; targetRefs " + ", ".join(p.other_kinds) + " ignored: gatewayd's "
                    "backends are core Services"
                )
            overridden = _overrides(http, used)
            if overridden:
                shown = ", ".join(overridden[:MAX_NAMED_OVERRIDES])
                more = len(overridden) - MAX_NAMED_OVERRIDES
                if more > 0:
                    shown += f" and {more} more"
                message += f"; the sessionPersistence of {shown} takes precedence there"
            accepted = Verdict(True, ACCEPTED, message)
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
                ],
            }
        )
    return ObjectStatus(
        api_version=LB_POLICY_API_VERSION,
        kind="BackendLBPolicy",
        namespace=meta.namespace,
        name=meta.name,
        generation=gen,
        status={"ancestors": ancestors[:MAX_ANCESTORS]},
    )
