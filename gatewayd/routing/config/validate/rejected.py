"""What is kept of an object that validation refused, so that its own status can say so.

In Kubernetes mode the API server has already admitted every object; one that fails
gatewayd's checks is skipped "and reported in its own status" (issue 13).  The control
stage (``control.rejected``) needs for that who the object is and where to report:
a route's parentRefs, a Gateway's gatewayClassName, a BackendTLSPolicy's targetRefs.
Each reference is read again on its own, and kept only when it is valid by itself, so a
broken reference never names a parent; the rest of the object is dropped.

Bounded: at most 32 parentRefs and 16 targetRefs are read (the CRDs' maxItems), and
``MAX_MESSAGES`` messages of at most ``MAX_MESSAGE_CHARS`` characters are kept.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.policies import (
    POLICY_TARGET_REF_FIELDS,
    parse_policy_target_ref,
)
from gatewayd.routing.config.validate.reader import Issues, Obj
from gatewayd.routing.config.validate.refs import PARENT_REF_FIELDS, parse_parent_ref

# Kinds whose status gatewayd writes (GatewayClass is never refused alone: an invalid
# one has no controllerName to tell whose it is).
STATUS_KINDS: Final = frozenset(
    {
        m.Kind.GATEWAY,
        m.Kind.HTTP_ROUTE,
        m.Kind.GRPC_ROUTE,
        m.Kind.TLS_ROUTE,
        m.Kind.TCP_ROUTE,
        m.Kind.UDP_ROUTE,
        m.Kind.BACKEND_TLS_POLICY,
        m.Kind.LISTENER_SET,
        m.Kind.BACKEND_LB_POLICY,
    }
)
ROUTE_KINDS: Final = frozenset(
    {m.Kind.HTTP_ROUTE, m.Kind.GRPC_ROUTE, m.Kind.TLS_ROUTE, m.Kind.TCP_ROUTE, m.Kind.UDP_ROUTE}
)

MAX_PARENT_REFS: Final = 32  # "+kubebuilder:validation:MaxItems=32" (CommonRouteSpec)
MAX_TARGET_REFS: Final = 16  # "+kubebuilder:validation:MaxItems=16" (BackendTLSPolicySpec)
# The messages a status carries: enough to fix the object, short enough for a condition
# (metav1.Condition allows 32768 characters) and for ``kubectl describe``.
MAX_MESSAGES: Final = 8
MAX_MESSAGE_CHARS: Final = 256

# Issues at these paths leave the object without a usable name: nothing to report on.
_NAMING_PATHS: Final = frozenset({"metadata", "metadata.name", "metadata.namespace"})


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _items(spec: Mapping[object, object], key: str, limit: int) -> list[tuple[int, object]]:
    value = spec.get(key)
    return list(enumerate(value[:limit])) if isinstance(value, list) else []


def _parent_refs(spec: Mapping[object, object], *, admitted: bool) -> tuple[m.ParentReference, ...]:
    out: list[m.ParentReference] = []
    for i, item in _items(spec, "parentRefs", MAX_PARENT_REFS):
        issues = Issues(ignore_unknown_fields=admitted)
        o = Obj.of(item, f"spec.parentRefs[{i}]", issues, PARENT_REF_FIELDS)
        if o is None:
            continue
        ref = parse_parent_ref(o)
        if not issues.items:
            out.append(ref)
    return tuple(out)


def _target_refs(
    spec: Mapping[object, object], *, admitted: bool
) -> tuple[m.PolicyTargetReference, ...]:
    out: list[m.PolicyTargetReference] = []
    for i, item in _items(spec, "targetRefs", MAX_TARGET_REFS):
        issues = Issues(ignore_unknown_fields=admitted)
        o = Obj.of(item, f"spec.targetRefs[{i}]", issues, POLICY_TARGET_REF_FIELDS)
        if o is None:
            continue
        ref = parse_policy_target_ref(o)
        if not issues.items:
            out.append(ref)
    return tuple(out)


def _listener_set_parent(
    spec: Mapping[object, object], *, admitted: bool
) -> tuple[m.ParentReference, ...]:
    """A ListenerSet's spec.parentRef (a Gateway), when it can be read on its own."""
    issues = Issues(ignore_unknown_fields=admitted)
    o = Obj.of(
        spec.get("parentRef"), "spec.parentRef", issues, ("group", "kind", "name", "namespace")
    )
    if o is None:
        return ()
    ref = parse_parent_ref(o)
    return (ref,) if not issues.items else ()


def _gateway_class_name(spec: Mapping[object, object]) -> str | None:
    issues = Issues(ignore_unknown_fields=True)
    o = Obj.of(spec, "spec", issues, None)
    if o is None:
        return None
    name = o.str_("gatewayClassName", required=True, min_len=1, max_len=253)
    return name if not issues.items else None


def rejected_object(
    kind: m.Kind,
    meta: m.Meta,
    data: Mapping[object, object],
    issues: Sequence[tuple[str, str]],
    *,
    admitted: bool,
) -> m.RejectedObject | None:
    """The record of a refused object of a kind whose status gatewayd writes, or None
    (another kind, or no usable name).  ``data`` is the object as read; ``issues`` are
    validation's (field path, message) pairs; ``admitted``: an API server admitted it
    (fields gatewayd does not know are ignored, as in validation)."""
    if kind not in STATUS_KINDS or not meta.name:
        return None
    if any(path in _NAMING_PATHS for path, _ in issues):
        return None
    messages = tuple(
        _shorten(f"{path}: {message}" if path else message)
        for path, message in issues[:MAX_MESSAGES]
    )
    raw_spec = data.get("spec")
    spec: Mapping[object, object] = raw_spec if isinstance(raw_spec, Mapping) else {}
    return m.RejectedObject(
        kind=kind,
        meta=meta,
        messages=messages,
        more=max(0, len(issues) - MAX_MESSAGES),
        parent_refs=(
            _parent_refs(spec, admitted=admitted)
            if kind in ROUTE_KINDS
            else _listener_set_parent(spec, admitted=admitted)
            if kind is m.Kind.LISTENER_SET
            else ()
        ),
        gateway_class_name=_gateway_class_name(spec) if kind is m.Kind.GATEWAY else None,
        target_refs=(
            _target_refs(spec, admitted=admitted)
            if kind in (m.Kind.BACKEND_TLS_POLICY, m.Kind.BACKEND_LB_POLICY)
            else ()
        ),
    )
