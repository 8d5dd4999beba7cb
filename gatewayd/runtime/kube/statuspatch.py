"""What to PATCH on an object's ``/status``: our computed status merged into the live one.

Pure: ``status_patch(ours, live, controller_name=...)`` takes an ``ObjectStatus`` (what
``routing.status.resolve`` computed) and the object as the API server last returned it,
and answers the JSON merge-patch body (RFC 7386) to send, or ``None`` when the live
status already says what we would write.

Why a merge patch carrying ``metadata.resourceVersion`` (read-modify-write) and not
server-side apply: the lists we share with other controllers are atomic, "+listType=atomic"
(RouteStatus.Parents, PolicyStatus.Ancestors), so neither a merge patch nor an apply can
change one entry of them; whoever writes the list writes all of it.  We therefore read
the object, keep the other controllers' entries, put ours in, and send the whole list
with the resourceVersion we read: the API server refuses it (409 Conflict) if anybody
wrote in between, and the caller re-reads and recomputes (``runtime.sinks.kubernetes``).

Ownership, per kind:

* GatewayClass (only ours reach here) and Gateway (of our classes): we are the
  controller, so we own ``conditions``, ``supportedFeatures`` / ``addresses`` and
  ``listeners``; a field we own but no longer compute is removed (``null``), every other
  status field is left alone.
* ListenerSet (whose parent Gateway is ours): ``conditions`` and ``listeners``, like a
  Gateway's.
* HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, UDPRoute: ``status.parents[]``;
  "Implementations of this API can only populate Route status for the Gateways/parent
  resources they are responsible for." (RouteStatus.Parents)  Entries whose
  ``controllerName`` is ours are replaced by the computed ones; the others are kept, in
  their order, before ours.
* BackendTLSPolicy, BackendLBPolicy: ``status.ancestors[]`` the same way
  (PolicyAncestorStatus).

``lastTransitionTime`` "is the last time the condition transitioned from one status to
another" (metav1.Condition): a computed condition whose ``status`` equals the live
condition of the same type keeps the live time, whatever its reason or message.  So a
status that differs from the live one only in times is "unchanged": no PATCH.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import keep_condition_times

__all__ = [
    "SHARED_LISTS",
    "SharedList",
    "desired_status",
    "status_patch",
]


@dataclass(frozen=True, slots=True)
class SharedList:
    """A status list several controllers write, one entry per (reference, controller)."""

    field: str  # "parents" | "ancestors"
    ref_field: str  # "parentRef" | "ancestorRef"
    max_items: int


# "A maximum of 32 Gateways will be represented in this list." (RouteStatus.Parents)
PARENTS: Final = SharedList("parents", "parentRef", 32)
# "+kubebuilder:validation:MaxItems=16" (PolicyStatus.Ancestors)
ANCESTORS: Final = SharedList("ancestors", "ancestorRef", 16)

SHARED_LISTS: Final[Mapping[str, SharedList]] = {
    "HTTPRoute": PARENTS,
    "GRPCRoute": PARENTS,
    "TLSRoute": PARENTS,
    "TCPRoute": PARENTS,
    "UDPRoute": PARENTS,
    "BackendTLSPolicy": ANCESTORS,
    "BackendLBPolicy": ANCESTORS,
}

# Status fields the owning controller writes, per kind of object we own outright.
OWNED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "GatewayClass": ("conditions", "supportedFeatures"),
    "Gateway": ("addresses", "conditions", "listeners", "attachedListenerSets"),
    "ListenerSet": ("conditions", "listeners"),
}


def _dicts(value: object) -> list[Mapping[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _with_times(
    entry: Mapping[str, object], live: Mapping[str, object] | None
) -> dict[str, object]:
    """A status object (Gateway, listener, route parent, policy ancestor) whose
    ``conditions`` keep the live transition times."""
    out = dict(entry)
    if "conditions" in out:
        out["conditions"] = keep_condition_times(
            _dicts(out["conditions"]), None if live is None else live.get("conditions")
        )
    return out


def _same_ref(a: object, b: object, namespace: str) -> bool:
    """Two parentRef/ancestorRef objects name the same parent (defaults filled in:
    group gateway.networking.k8s.io, kind Gateway, namespace of the object)."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return False

    def norm(ref: Mapping[str, object]) -> tuple[object, ...]:
        return (
            ref.get("group", "gateway.networking.k8s.io"),
            ref.get("kind", "Gateway"),
            ref.get("namespace") or namespace,
            ref.get("name"),
            ref.get("sectionName"),
            ref.get("port"),
        )

    return norm(a) == norm(b)


def _merge_shared(
    shared: SharedList,
    ours: Sequence[Mapping[str, object]],
    live: Sequence[Mapping[str, object]],
    controller_name: str,
    namespace: str,
) -> list[dict[str, object]]:
    """Other controllers' live entries (kept as they are, in order), then ours with the
    live transition times of our previous entry for the same reference."""
    foreign = [dict(e) for e in live if e.get("controllerName") != controller_name]
    mine_before = [e for e in live if e.get("controllerName") == controller_name]
    merged: list[dict[str, object]] = list(foreign)
    room = max(0, shared.max_items - len(foreign))
    for entry in list(ours)[:room]:
        before = next(
            (
                e
                for e in mine_before
                if _same_ref(e.get(shared.ref_field), entry.get(shared.ref_field), namespace)
            ),
            None,
        )
        merged.append(_with_times(entry, before))
    return merged


def desired_status(
    ours: ObjectStatus, live_status: Mapping[str, object], *, controller_name: str
) -> dict[str, object]:
    """The status fields we write (only those), as they should read after our write."""
    shared = SHARED_LISTS.get(ours.kind)
    if shared is not None:
        return {
            shared.field: _merge_shared(
                shared,
                _dicts(ours.status.get(shared.field)),
                _dicts(live_status.get(shared.field)),
                controller_name,
                ours.namespace,
            )
        }
    owned = OWNED_FIELDS.get(ours.kind)
    if owned is None:
        raise ValueError(f"no status write-back for kind {ours.kind!r}")
    out: dict[str, object] = {}
    for name in owned:
        value = copy.deepcopy(ours.status.get(name))
        if name == "conditions":
            value = keep_condition_times(_dicts(value), live_status.get("conditions"))
        elif name == "listeners":
            live_listeners = {ls.get("name"): ls for ls in _dicts(live_status.get("listeners"))}
            value = [_with_times(ls, live_listeners.get(ls.get("name"))) for ls in _dicts(value)]
        out[name] = value  # None: a field we own and no longer compute, removed
    return out


def _differs(live: object, desired: object) -> bool:
    # An absent list and an empty one say the same: a policy none of our Gateways uses
    # is not written ``ancestors: []`` for nothing.
    if desired == [] and live is None:
        return False
    return live != desired


def status_patch(
    ours: ObjectStatus, live: Mapping[str, object], *, controller_name: str
) -> dict[str, object] | None:
    """The merge-patch body for ``live``'s ``/status``, or None when nothing changes.

    ``live`` is the whole object as read (``metadata.resourceVersion`` makes the write
    conditional on nobody having written since)."""
    raw_status = live.get("status")
    live_status: Mapping[str, object] = raw_status if isinstance(raw_status, Mapping) else {}
    desired = desired_status(ours, live_status, controller_name=controller_name)
    changed = {k: v for k, v in desired.items() if _differs(live_status.get(k), v)}
    if not changed:
        return None
    body: dict[str, object] = {"status": changed}
    meta = live.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("resourceVersion"), str):
        body["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    return body
