"""Conditions: the one place that builds a metav1.Condition and names its types and reasons.

Every status of the control stage (GatewayClass, Gateway, listeners, route parents,
BackendTLSPolicy ancestors, GAMMA Service parents) gets its conditions from ``condition()``;
``Verdict`` is the (ok, reason, message) a check returns before it becomes one.

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Mapping
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
