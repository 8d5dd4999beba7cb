"""ListenerSets: listeners other teams add to a Gateway that allows them.

Gateway API (apis/v1/listenerset_types.go, gateway_types.go at v1.5+):

* "The parent Gateway must explicitly allow ListenerSet attachment through its
  AllowedListeners configuration. By default, Gateways do not allow ListenerSet
  attachment." -- ``spec.allowedListeners.namespaces.from`` None (the default), Same,
  All or Selector.
* "Implementations MUST treat the parent Gateway as having the merged list of all
  listeners from itself and attached ListenerSets using the following precedence:
  1. "parent" Gateway 2. ListenerSet ordered by creation time (oldest first)
  3. ListenerSet ordered alphabetically by "{namespace}/{name}"."  A listener that
  conflicts with one earlier in that order is Conflicted and not accepted; the earlier
  one keeps serving (conformance ListenerSetHostnameConflict, ListenerSetProtocolConflict:
  "The first conflicted listener is accepted based on Listener precedence").
* The ListenerSet is Accepted when at least one of its listeners is valid
  (ListenersNotValid otherwise); the Gateway's ``status.attachedListenerSets`` counts
  the accepted ones.
* "ReferenceGrants applied to a Gateway are not inherited by child ListenerSets":
  certificate references are checked with the ListenerSet as the referrer
  (``listeners.Refs.gateway_may_reference``).

Routes attach to a ListenerSet with a parentRef of kind ListenerSet (routes.route_parents);
a parentRef to the Gateway never selects a ListenerSet's listeners (conformance
ListenerSetGatewayParentSectionNameNotFound, ListenerSetRouteStatusScopedToParentRef).

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Final

from gatewayd.routing.config.model import (
    GATEWAY_GROUP,
    Config,
    ListenerSet,
    Problem,
    ProtocolType,
)
from gatewayd.routing.control import attach
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    API_VERSION,
    HOSTNAME_CONFLICT,
    LISTENERS_NOT_VALID,
    PENDING,
    PROGRAMMED,
    PROTOCOL_CONFLICT,
    Verdict,
    condition,
    failed,
    passed,
)
from gatewayd.routing.control.gateways import GatewayState, listener_status
from gatewayd.routing.control.listeners import ListenerState, Refs, evaluate_listeners

# ListenerSet condition reasons (ListenerSetConditionReason).
NOT_ALLOWED: Final = "NotAllowed"
PARENT_NOT_ACCEPTED: Final = "ParentNotAccepted"
PARENT_NOT_PROGRAMMED: Final = "ParentNotProgrammed"


@dataclass(slots=True)
class ListenerSetState:
    listener_set: ListenerSet
    parent: GatewayState | None  # None: our parent Gateway was refused by validation
    listeners: list[ListenerState]
    accepted: Verdict
    programmed: Verdict
    # Its listeners are part of the parent Gateway (allowed, parent accepted): routes
    # attach to them and the programmable ones are served.
    merged: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.listener_set.meta.namespace, self.listener_set.meta.name)


@dataclass(slots=True)
class ListenerSets:
    """The ListenerSets whose parent Gateway is ours, and every ListenerSet's key."""

    states: dict[tuple[str, str], ListenerSetState] = field(default_factory=dict)
    all_keys: set[tuple[str, str]] = field(default_factory=set)
    # Gateway -> its merged ListenerSets, in precedence order.
    merged: dict[tuple[str, str], list[ListenerSetState]] = field(default_factory=dict)

    def of_gateway(self, key: tuple[str, str]) -> list[ListenerSetState]:
        return self.merged.get(key, [])


def listener_set_order(ls: ListenerSet) -> tuple[str, str, str]:
    # "2. ListenerSet ordered by creation time (oldest first) 3. ListenerSet ordered
    # alphabetically by "{namespace}/{name}"." (ListenerSetSpec.Listeners)
    return (ls.meta.creation_timestamp, ls.meta.namespace, ls.meta.name)


# --------------------------------------------------------------------------- conflicts


@dataclass(frozen=True, slots=True)
class _Claim:
    """A listener already holding a port (and hostname) of the merged Gateway."""

    family: str
    transport: str
    hostname: str
    protocol: str
    who: str


def _family(protocol: str) -> str:
    """Listeners of one family can share a port: TLS-based ones are told apart by SNI,
    HTTP ones by Host; TCP and any other protocol have nothing to tell them apart."""
    if protocol == ProtocolType.HTTP.value:
        return "HTTP"
    if protocol in (ProtocolType.HTTPS.value, ProtocolType.TLS.value):
        return "TLS"
    return protocol


def _transport(protocol: str) -> str:
    # A UDP socket and a TCP socket may hold the same port number.
    return "udp" if protocol == ProtocolType.UDP.value else "tcp"


def _claim(s: ListenerState, who: str) -> _Claim:
    lst = s.listener
    return _Claim(
        family=_family(lst.protocol),
        transport=_transport(lst.protocol),
        hostname=(lst.hostname or "").lower(),
        protocol=lst.protocol,
        who=f"{who} listener {lst.name}",
    )


class _Claims:
    """The listeners holding ports of one merged Gateway, looked up in constant time
    (a Gateway may take thousands of ListenerSets: no listener is compared with all)."""

    __slots__ = ("families", "hosts")

    def __init__(self) -> None:
        # (port, transport) -> family -> the first listener of that family on the port
        self.families: dict[tuple[int, str], dict[str, _Claim]] = {}
        # (port, family, hostname) -> the first listener holding it
        self.hosts: dict[tuple[int, str, str], _Claim] = {}

    def add(self, s: ListenerState, who: str) -> None:
        c = _claim(s, who)
        port = s.listener.port
        self.families.setdefault((port, c.transport), {}).setdefault(c.family, c)
        self.hosts.setdefault((port, c.family, c.hostname), c)

    def conflict(self, s: ListenerState) -> Verdict | None:
        mine = _claim(s, "")
        port = s.listener.port
        families = self.families.get((port, mine.transport), {})
        # At most a handful of families per port: HTTP, TLS, TCP, unknown protocols.
        other = next((c for fam, c in families.items() if fam != mine.family), None)
        if other is not None:
            return failed(
                PROTOCOL_CONFLICT,
                f"port {port} is already used by {other.who} ({other.protocol}), which comes "
                f"first in listener precedence; {mine.protocol} cannot share it",
            )
        held = self.hosts.get((port, mine.family, mine.hostname))
        if held is not None:
            shown = mine.hostname or "(any hostname)"
            return failed(
                HOSTNAME_CONFLICT,
                f"port {port} with hostname {shown} is already used by {held.who}, which "
                "comes first in listener precedence",
            )
        return None


def _mark_conflicted(s: ListenerState, verdict: Verdict) -> None:
    s.conflict = verdict
    s.accepted = failed(verdict.reason, verdict.message)
    # Conformance (ListenerSetProtocolConflict, ListenerSetHostnameConflict): Programmed
    # False with the conflict reason itself.
    s.programmed = failed(verdict.reason, f"listener is not accepted: {verdict.message}")


# --------------------------------------------------------------------------- attachment


def _allowed(
    ls: ListenerSet, gs: GatewayState, namespace_labels: Mapping[str, Mapping[str, str]]
) -> str | None:
    """Why the parent Gateway does not allow ``ls``, or None when it does."""
    allowed = gs.gateway.allowed_listeners
    gw = gs.gateway.meta
    ns = ls.meta.namespace
    where = f"Gateway {gw.namespace}/{gw.name} spec.allowedListeners.namespaces.from"
    if allowed.namespaces_from == "All":
        return None
    if allowed.namespaces_from == "Same":
        if ns == gw.namespace:
            return None
        return f"{where} is Same and the ListenerSet is in namespace {ns!r}"
    if allowed.namespaces_from == "Selector":
        labels = namespace_labels.get(ns, {"kubernetes.io/metadata.name": ns})
        # "Selector must be specified when From is set to "Selector"." -- without one
        # nothing is selected, as a null label selector selects nothing.
        if allowed.selector is not None and attach.selector_matches(allowed.selector, labels):
            return None
        return f"{where} is Selector and namespace {ns!r} is not selected"
    # "None: Only listeners defined in the Gateway's spec are allowed" (the default).
    return f"{where} is None (the default): the Gateway allows no ListenerSets"


def _detached(
    ls: ListenerSet, gs: GatewayState | None, reason: str, message: str
) -> ListenerSetState:
    """A ListenerSet whose listeners are not part of its Gateway: none is accepted."""
    states: list[ListenerState] = []
    for listener in ls.listeners:
        kinds, invalid = attach.supported_kinds(listener)
        s = ListenerState(listener=listener, kinds=kinds, invalid_kinds=invalid)
        s.accepted = failed(reason, message)
        s.programmed = failed(reason, message)
        states.append(s)
    return ListenerSetState(
        listener_set=ls,
        parent=gs,
        listeners=states,
        accepted=failed(reason, message),
        programmed=failed(reason, message),
    )


def evaluate_listener_sets(
    config: Config,
    gateways: Mapping[tuple[str, str], GatewayState],
    refs: Refs,
    namespace_labels: Mapping[str, Mapping[str, str]],
    *,
    all_gateway_keys: Set[tuple[str, str]],
    rejected_gateways: Set[tuple[str, str]],
    problems: list[Problem],
) -> ListenerSets:
    """Attach every ListenerSet whose parent is one of our Gateways, in precedence order.

    Sets ``GatewayState.attached_listener_sets`` on Gateways that allow ListenerSets.
    """
    out = ListenerSets(
        all_keys={(ls.meta.namespace, ls.meta.name) for ls in config.listener_sets}
        # A refused ListenerSet exists (its own status says why it serves nothing).
        | {(r.meta.namespace, r.meta.name) for r in config.rejected if r.kind == "ListenerSet"}
    )
    claims: dict[tuple[str, str], _Claims] = {}
    for key, parent in gateways.items():
        if parent.gateway.allowed_listeners.namespaces_from != "None":
            parent.attached_listener_sets = 0
        held = claims[key] = _Claims()
        gw_name = f"Gateway {key[0]}/{key[1]}"
        for s in parent.listeners:
            # The parent's listeners come first; a conflicted one still holds its port
            # against the ListenerSets (it is the parent's own problem to fix).
            if s.accepted.ok or s.conflict is not None:
                held.add(s, gw_name)

    for ls in sorted(config.listener_sets, key=listener_set_order):
        meta = ls.meta
        ref = ls.parent_ref
        gw_key = (ref.namespace or meta.namespace, ref.name)
        if ref.group != GATEWAY_GROUP or ref.kind != "Gateway":
            problems.append(
                Problem(
                    source=meta.source,
                    kind="ListenerSet",
                    namespace=meta.namespace,
                    name=meta.name,
                    field="spec.parentRef",
                    message=f"parent {ref.group}/{ref.kind} is not a Gateway; the ListenerSet "
                    "is ignored",
                )
            )
            continue
        gs = gateways.get(gw_key)
        shown = f"Gateway {gw_key[0]}/{gw_key[1]}"
        if gs is None:
            if gw_key in rejected_gateways:
                out.states[(meta.namespace, meta.name)] = _detached(
                    ls, None, PARENT_NOT_ACCEPTED, f"{shown} is invalid (see its status)"
                )
            elif gw_key not in all_gateway_keys:
                problems.append(
                    Problem(
                        source=meta.source,
                        kind="ListenerSet",
                        namespace=meta.namespace,
                        name=meta.name,
                        field="spec.parentRef",
                        message=f"{shown} not found",
                    )
                )
            # A Gateway of another controller: its controller reports the ListenerSet.
            continue
        why = _allowed(ls, gs, namespace_labels)
        if why is not None:
            out.states[(meta.namespace, meta.name)] = _detached(ls, gs, NOT_ALLOWED, why)
            continue
        if not gs.accepted.ok:
            out.states[(meta.namespace, meta.name)] = _detached(
                ls, gs, PARENT_NOT_ACCEPTED, f"{shown} is not accepted: {gs.accepted.message}"
            )
            continue

        listeners = evaluate_listeners(ls, refs)
        held = claims[gw_key]
        for s in listeners:
            if s.conflict is not None:
                continue
            verdict = held.conflict(s)
            if verdict is not None:
                _mark_conflicted(s, verdict)
        who = f"ListenerSet {meta.namespace}/{meta.name}"
        for s in listeners:
            if s.accepted.ok:
                held.add(s, who)

        invalid = [s for s in listeners if not s.programmable]
        listed = "; ".join(
            f"{s.name}: {s.accepted.message if not s.accepted.ok else s.refs.message}"
            for s in invalid
        )
        if len(invalid) == len(listeners):
            accepted = failed(LISTENERS_NOT_VALID, f"no listener is valid ({listed})")
        elif invalid:
            # "ListenersNotValid ... This can be the reason when "Accepted" is "True" or
            # "False", depending on whether the listener being invalid causes the entire
            # ListenerSet to not be accepted."
            accepted = passed(LISTENERS_NOT_VALID, f"some listeners are not valid ({listed})")
        else:
            accepted = passed(ACCEPTED, f"ListenerSet is attached to {shown}")
        if not accepted.ok:
            programmed = failed(LISTENERS_NOT_VALID, accepted.message)
        elif not gs.programmed.ok:
            programmed = failed(
                PARENT_NOT_PROGRAMMED, f"{shown} is not programmed: {gs.programmed.message}"
            )
            for s in listeners:
                if s.programmed.ok:
                    s.programmed = failed(PENDING, programmed.message)
        else:
            programmed = passed(PROGRAMMED, "ListenerSet is programmed")
        state = ListenerSetState(
            listener_set=ls,
            parent=gs,
            listeners=listeners,
            accepted=accepted,
            programmed=programmed,
            merged=True,
        )
        out.states[state.key] = state
        out.merged.setdefault(gw_key, []).append(state)
        # "A ListenerSet is successfully attached to a Gateway when ... The ListenerSet's
        # status has the condition "Accepted: true"" (GatewayStatus.AttachedListenerSets)
        if accepted.ok and gs.attached_listener_sets is not None:
            gs.attached_listener_sets += 1
    return out


# --------------------------------------------------------------------------- status


def listener_binding_name(ls: ListenerSet, listener_name: str) -> str:
    """The name a ListenerSet listener is served under (metrics, logs, config_dump).

    "Name is not required to be unique across a Gateway and ListenerSets"
    (ListenerEntry.Name): the ListenerSet's namespace and name make it unique.
    """
    return f"{ls.meta.namespace}/{ls.meta.name}/{listener_name}"


def listener_set_status(state: ListenerSetState, now: str) -> ObjectStatus:
    ls = state.listener_set
    gen = ls.meta.generation
    a, p = state.accepted, state.programmed
    return ObjectStatus(
        api_version=API_VERSION,
        kind="ListenerSet",
        namespace=ls.meta.namespace,
        name=ls.meta.name,
        generation=gen,
        status={
            "conditions": [
                condition(ACCEPTED, a.ok, a.reason, a.message, gen, now),
                condition(PROGRAMMED, p.ok, p.reason, p.message, gen, now),
            ],
            "listeners": [listener_status(s, gen, now) for s in state.listeners],
        },
    )
