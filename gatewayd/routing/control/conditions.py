"""Conditions: the one place that builds a metav1.Condition and names its types and reasons.

Every status of the control stage (GatewayClass, Gateway, listeners, route parents,
BackendTLSPolicy ancestors, GAMMA Service parents) gets its conditions from ``condition()``;
``Verdict`` is the (ok, reason, message) a check returns before it becomes one.
``keep_transition_times()`` carries an earlier status's ``lastTransitionTime`` over to
the conditions whose status did not change, so a recomputed status only moves that time
on a real transition.

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

API_VERSION: Final = "gateway.networking.k8s.io/v1"


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
INVALID_PARAMETERS: Final = "InvalidParameters"
INSECURE_FRONTEND_VALIDATION_MODE: Final = "InsecureFrontendValidationMode"
CONFIGURATION_CHANGED: Final = "ConfigurationChanged"
# Route ResolvedRefs reasons of one backendRef (control.backendrefs).
BACKEND_NOT_FOUND: Final = "BackendNotFound"
INVALID_KIND: Final = "InvalidKind"
# BackendTLSPolicy (policy_types.go, backendtlspolicy_types.go).
TARGET_NOT_FOUND: Final = "TargetNotFound"


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
class Verdict:
    ok: bool
    reason: str
    message: str


def passed(reason: str, message: str) -> Verdict:
    return Verdict(True, reason, message)


def failed(reason: str, message: str) -> Verdict:
    return Verdict(False, reason, message)


def dicts(value: object) -> list[dict[str, object]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def find_condition(obj: Mapping[str, object], type_: str) -> dict[str, object] | None:
    for cond in dicts(obj.get("conditions")):
        if cond.get("type") == type_:
            return cond
    return None


# --------------------------------------------------------------------------- lastTransitionTime

# Fields naming one entry of a status list: listeners[] by name, parents[] by parentRef
# and controllerName (RouteParentStatus), ancestors[] by ancestorRef and controllerName
# (PolicyAncestorStatus).
_ENTRY_KEYS: Final = ("name", "parentRef", "ancestorRef", "controllerName")
# Status shapes nest two levels (status.parents[].conditions); a deeper document is not
# a Gateway API status and is left as it is (bounded work on a foreign object).
_MAX_DEPTH: Final = 4


def _entry_key(entry: Mapping[str, object]) -> str | None:
    parts = [(k, entry[k]) for k in _ENTRY_KEYS if k in entry]
    return repr(parts) if parts else None


def keep_condition_times(new: Sequence[object], old: object) -> list[object]:
    """``new`` conditions, each with ``old``'s ``lastTransitionTime`` when ``old`` holds a
    condition of the same type and status."""
    before = {
        (c.get("type"), c.get("status")): c.get("lastTransitionTime")
        for c in dicts(old)
        if "lastTransitionTime" in c
    }
    out: list[object] = []
    for cond in new:
        if isinstance(cond, dict):
            when = before.get((cond.get("type"), cond.get("status")))
            if when is not None and cond.get("lastTransitionTime") != when:
                cond = {**cond, "lastTransitionTime": when}
        out.append(cond)
    return out


def keep_transition_times(
    new: Mapping[str, object], old: Mapping[str, object] | None, *, _depth: int = 0
) -> dict[str, object]:
    """``new`` (a status in Kubernetes JSON) with the ``lastTransitionTime`` of ``old``
    kept on every condition whose type and status are unchanged.

    metav1.Condition: "lastTransitionTime is the last time the condition transitioned
    from one status to another."  A new message, reason or observedGeneration is not a
    transition; a condition that is new or flipped keeps ``new``'s time.  Conditions are
    found at ``conditions`` and inside list entries named by ``_ENTRY_KEYS`` (Gateway
    listeners, route parents, policy ancestors).  ``new`` and ``old`` are not modified.
    """
    out = dict(new)
    if old is None or _depth > _MAX_DEPTH:
        return out
    for key, value in new.items():
        previous = old.get(key)
        if key == "conditions" and isinstance(value, list):
            out[key] = keep_condition_times(value, previous)
        elif isinstance(value, list) and isinstance(previous, list):
            earlier: dict[str, dict[str, object]] = {}
            for entry in dicts(previous):
                name = _entry_key(entry)
                if name is not None:
                    earlier.setdefault(name, entry)
            merged: list[object] = []
            for entry in value:
                name = _entry_key(entry) if isinstance(entry, dict) else None
                if name is not None and name in earlier:
                    entry = keep_transition_times(entry, earlier[name], _depth=_depth + 1)
                merged.append(entry)
            out[key] = merged
    return out
