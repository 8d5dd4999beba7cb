"""ListenerSet (gateway.networking.k8s.io/v1): a parent Gateway reference and listeners.

Admission-style validation of the ListenerSet kind; its listeners are read and checked
like a Gateway's (``validate.gateways``).

Pure module: no I/O.
"""

from __future__ import annotations

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.gateways import (
    LISTENER_FIELDS,
    check_listeners,
    parse_listener,
)
from gatewayd.routing.config.validate.reader import Obj, read_spec
from gatewayd.routing.config.validate.refs import (
    read_group,
    read_kind,
    read_ref_name,
    read_ref_namespace,
)

LISTENER_SET_SPEC_FIELDS = ("parentRef", "listeners")
PARENT_GATEWAY_REF_FIELDS = ("group", "kind", "name", "namespace")


def parse_listener_set(meta: m.Meta, doc: Obj, version: str) -> m.ListenerSet:
    spec = read_spec(doc, LISTENER_SET_SPEC_FIELDS)
    ref = spec.sub("parentRef", PARENT_GATEWAY_REF_FIELDS, required=True)
    parent = m.ParentGatewayReference(name="")
    if ref is not None:
        parent = m.ParentGatewayReference(
            group=read_group(ref, m.GATEWAY_GROUP),
            kind=read_kind(ref, "Gateway"),
            name=read_ref_name(ref),
            namespace=read_ref_namespace(ref),
        )
    # "+kubebuilder:validation:MaxItems=64" and "Name ... MUST be unique within a
    # ListenerSet." (ListenerEntry.Name); the other listener rules are the Gateway's.
    objs = spec.objs("listeners", LISTENER_FIELDS, required=True, min_items=1, max_items=64)
    listeners = [parse_listener(o) for o in objs]
    check_listeners(spec, listeners, objs, owner="ListenerSet")
    return m.ListenerSet(meta=meta, parent_ref=parent, listeners=tuple(listeners))
