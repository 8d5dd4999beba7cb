"""References and hostnames shared by every kind: parentRefs, backend, Secret and object refs.

Admission-style validation of one kind family (see ``reader`` for the rules and helpers).

Pure module: no I/O.
"""

from __future__ import annotations

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.reader import (
    DNS_LABEL,
    GROUP,
    HOSTNAME,
    KIND,
    SECTION_NAME,
    Obj,
)

# --------------------------------------------------------------------------- references

PARENT_REF_FIELDS = ("group", "kind", "namespace", "name", "sectionName", "port")
BACKEND_OBJECT_REF_FIELDS = ("group", "kind", "name", "namespace", "port")
SECRET_REF_FIELDS = ("group", "kind", "name", "namespace")
OBJECT_REF_FIELDS = ("group", "kind", "name", "namespace")


def read_group(o: Obj, default: str, *, required: bool = False) -> str:
    value = o.str_("group", required=required, max_len=253, syntax=GROUP)
    return default if value is None else value


def read_kind(o: Obj, default: str, *, required: bool = False) -> str:
    value = o.str_("kind", required=required, min_len=1, max_len=63, syntax=KIND)
    return default if value is None else value


def read_ref_name(o: Obj) -> str:
    return o.str_("name", required=True, min_len=1, max_len=253) or ""


def read_ref_namespace(o: Obj) -> str | None:
    return o.str_("namespace", min_len=1, max_len=63, syntax=DNS_LABEL)


def read_port(o: Obj, key: str = "port", *, required: bool = False) -> int | None:
    return o.int_(key, required=required, minimum=1, maximum=65535)


def parse_parent_ref(o: Obj) -> m.ParentReference:
    return m.ParentReference(
        group=read_group(o, m.GATEWAY_GROUP),
        kind=read_kind(o, "Gateway"),
        namespace=read_ref_namespace(o),
        name=read_ref_name(o),
        section_name=o.str_("sectionName", min_len=1, max_len=253, syntax=SECTION_NAME),
        port=read_port(o),
    )


def parse_parent_refs(spec: Obj) -> tuple[m.ParentReference, ...]:
    objs = spec.objs("parentRefs", PARENT_REF_FIELDS, max_items=32)
    refs = tuple(parse_parent_ref(o) for o in objs)
    path = spec.at("parentRefs")

    def parent(p: m.ParentReference) -> tuple[str, str, str, str]:
        return (p.group, p.kind, p.name, p.namespace or "")

    # CEL: "sectionName or port must be specified when parentRefs includes 2 or more
    # references to the same parent" -- all references to one parent agree on whether
    # they set sectionName and whether they set port.
    for i, p1 in enumerate(refs):
        if any(
            parent(p1) == parent(p2)
            and (
                (p1.section_name is None) != (p2.section_name is None)
                or (p1.port is None) != (p2.port is None)
            )
            for p2 in refs[i + 1 :]
        ):
            spec.issues.add(
                path,
                "sectionName or port must be specified when parentRefs includes 2 or more "
                f"references to the same parent (parentRefs[{i}] and another reference "
                f"to {p1.kind} {p1.name} differ)",
            )
            break
    # CEL: "sectionName or port must be unique when parentRefs includes 2 or more
    # references to the same parent".
    seen: set[tuple[str, str, str, str, str | None, int | None]] = set()
    for i, p in enumerate(refs):
        key = (*parent(p), p.section_name, p.port)
        if key in seen:
            spec.issues.add(
                f"{path}[{i}]",
                "sectionName or port must be unique when parentRefs includes 2 or more "
                f"references to the same parent (duplicate reference to {p.kind} {p.name})",
            )
        seen.add(key)
    return refs


def parse_backend_object_ref(o: Obj) -> m.BackendObjectReference:
    ref = m.BackendObjectReference(
        group=read_group(o, m.CORE_GROUP),
        kind=read_kind(o, "Service"),
        name=read_ref_name(o),
        namespace=read_ref_namespace(o),
        port=read_port(o),
    )
    # CEL: "Must have port for Service reference".
    if ref.group == "" and ref.kind == "Service" and ref.port is None and "port" not in o.data:
        o.add("port", 'is required when the reference is to a Service (group "", kind Service)')
    return ref


def parse_secret_ref(o: Obj) -> m.SecretObjectReference:
    return m.SecretObjectReference(
        group=read_group(o, m.CORE_GROUP),
        kind=read_kind(o, "Secret"),
        name=read_ref_name(o),
        namespace=read_ref_namespace(o),
    )


def parse_object_ref(o: Obj) -> m.ObjectReference:
    """A CA certificate reference: group, kind and name are all required."""
    return m.ObjectReference(
        group=read_group(o, m.CORE_GROUP, required=True),
        kind=read_kind(o, "ConfigMap", required=True),
        name=read_ref_name(o),
        namespace=read_ref_namespace(o),
    )


def parse_local_ref(o: Obj) -> m.LocalObjectReference:
    return m.LocalObjectReference(
        group=read_group(o, "", required=True),
        kind=read_kind(o, "", required=True),
        name=read_ref_name(o),
    )


def parse_hostnames(
    spec: Obj, *, max_items: int, min_items: int = 0, required: bool = False
) -> tuple[str, ...]:
    return spec.strs(
        "hostnames",
        required=required,
        min_items=min_items,
        max_items=max_items,
        min_len=1,
        max_len=253,
        syntax=HOSTNAME,
    )
