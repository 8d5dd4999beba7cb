"""BackendTLSPolicy, BackendLBPolicy and ReferenceGrant.

Admission-style validation of one kind family (see ``reader`` for the rules and helpers).

Pure module: no I/O.
"""

from __future__ import annotations

import re

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.reader import (
    DNS_LABEL,
    HOSTNAME,
    PRECISE_HOSTNAME,
    SECTION_NAME,
    Obj,
    Syntax,
    read_spec,
)
from gatewayd.routing.config.validate.refs import read_group, read_kind, read_ref_name
from gatewayd.routing.config.validate.routes import SESSION_FIELDS, parse_session_persistence

# --------------------------------------------------------------------------- BackendTLSPolicy

BACKEND_TLS_POLICY_SPEC_FIELDS = ("targetRefs", "validation", "options")
POLICY_TARGET_REF_FIELDS = ("group", "kind", "name", "sectionName")
BACKEND_TLS_VALIDATION_FIELDS = (
    "caCertificateRefs",
    "wellKnownCACertificates",
    "hostname",
    "subjectAltNames",
)
LOCAL_OBJECT_REF_FIELDS = ("group", "kind", "name")
SUBJECT_ALT_NAME_FIELDS = ("type", "hostname", "uri")
# AbsoluteURI (apis/v1/shared_types.go): "^(([^:/?#]+):)(//([^/?#]*))([^?#]*)(\?([^#]*))?(#(.*))?"
ABSOLUTE_URI = Syntax(
    re.compile(r"(([^:/?#]+):)(//([^/?#]*))([^?#]*)(\?([^#]*))?(#(.*))?"),
    'an absolute URI with a scheme and an authority, such as "spiffe://cluster.local/ns/a/sa/b"',
)


def parse_policy_target_ref(o: Obj) -> m.PolicyTargetReference:
    return m.PolicyTargetReference(
        group=read_group(o, "", required=True),
        kind=read_kind(o, "", required=True),
        name=read_ref_name(o),
        section_name=o.str_("sectionName", min_len=1, max_len=253, syntax=SECTION_NAME),
    )


def _parse_target_refs(spec: Obj) -> tuple[m.PolicyTargetReference, ...]:
    objs = spec.objs(
        "targetRefs", POLICY_TARGET_REF_FIELDS, required=True, min_items=1, max_items=16
    )
    refs = tuple(parse_policy_target_ref(o) for o in objs)
    path = spec.at("targetRefs")
    # CEL: "sectionName must be specified when targetRefs includes 2 or more references
    # to the same target" and "sectionName must be unique when targetRefs includes 2 or
    # more references to the same target".
    seen: dict[tuple[str, str, str], set[str | None]] = {}
    for i, ref in enumerate(refs):
        target = (ref.group, ref.kind, ref.name)
        sections = seen.setdefault(target, set())
        if sections and (ref.section_name is None) != (None in sections):
            spec.issues.add(
                f"{path}[{i}]",
                "sectionName must be specified when targetRefs includes 2 or more references "
                f"to the same target ({ref.kind} {ref.name})",
            )
        elif ref.section_name in sections:
            spec.issues.add(
                f"{path}[{i}]",
                "sectionName must be unique when targetRefs includes 2 or more references "
                f"to the same target ({ref.kind} {ref.name})",
            )
        sections.add(ref.section_name)
    return refs


def _parse_subject_alt_name(o: Obj) -> m.SubjectAltName:
    san_type = o.enum_("type", m.SubjectAltNameType, required=True)
    hostname = o.str_("hostname", max_len=253, syntax=HOSTNAME) or None
    uri = o.str_("uri", min_len=1, max_len=253, syntax=ABSOLUTE_URI) or None
    # CEL: "SubjectAltName element must contain Hostname, if Type is set to Hostname",
    # "... must not contain Hostname, if Type is not set to Hostname", and the same two
    # for URI.
    if san_type is m.SubjectAltNameType.HOSTNAME:
        if hostname is None and "hostname" not in o.data:
            o.add("hostname", "is required when type is Hostname")
        if o.data.get("uri"):
            o.add("uri", "must not be set when type is Hostname")
    elif san_type is m.SubjectAltNameType.URI:
        if uri is None and "uri" not in o.data:
            o.add("uri", "is required when type is URI")
        if o.data.get("hostname"):
            o.add("hostname", "must not be set when type is URI")
    return m.SubjectAltName(
        type=san_type or m.SubjectAltNameType.HOSTNAME, hostname=hostname, uri=uri
    )


def parse_backend_tls_validation(o: Obj) -> m.BackendTLSPolicyValidation:
    ca_refs = tuple(
        m.LocalObjectReference(
            group=read_group(r, "", required=True),
            kind=read_kind(r, "", required=True),
            name=read_ref_name(r),
        )
        for r in o.objs("caCertificateRefs", LOCAL_OBJECT_REF_FIELDS, max_items=8)
    )
    # "+kubebuilder:validation:Enum=System"
    well_known = o.str_("wellKnownCACertificates", choices=("System",))
    # CEL: "must not contain both CACertificateRefs and WellKnownCACertificates" and
    # "must specify either CACertificateRefs or WellKnownCACertificates".
    if ca_refs and well_known:
        o.add(
            "",
            "must not contain both caCertificateRefs and wellKnownCACertificates; use one",
        )
    elif not ca_refs and not well_known and "wellKnownCACertificates" not in o.data:
        o.add(
            "",
            "must specify either caCertificateRefs (a ConfigMap with ca.crt) or "
            'wellKnownCACertificates: "System"',
        )
    sans = tuple(
        _parse_subject_alt_name(san)
        for san in o.objs("subjectAltNames", SUBJECT_ALT_NAME_FIELDS, max_items=5)
    )
    return m.BackendTLSPolicyValidation(
        ca_certificate_refs=ca_refs,
        well_known_ca_certificates=well_known,
        # "Hostname ... PreciseHostname": no wildcard, no IP.
        hostname=o.str_("hostname", required=True, min_len=1, max_len=253, syntax=PRECISE_HOSTNAME)
        or "",
        subject_alt_names=sans,
    )


def parse_backend_tls_policy(meta: m.Meta, doc: Obj, version: str) -> m.BackendTLSPolicy:
    spec = read_spec(doc, BACKEND_TLS_POLICY_SPEC_FIELDS)
    targets = _parse_target_refs(spec)
    validation = spec.sub("validation", BACKEND_TLS_VALIDATION_FIELDS, required=True)
    return m.BackendTLSPolicy(
        meta=meta,
        target_refs=targets,
        validation=parse_backend_tls_validation(validation)
        if validation is not None
        else m.BackendTLSPolicyValidation(hostname=""),
        options=spec.str_map("options", max_props=16, value_max_len=4096),
    )


# --------------------------------------------------------------------------- BackendLBPolicy

BACKEND_LB_POLICY_SPEC_FIELDS = ("targetRefs", "sessionPersistence")
LOCAL_POLICY_TARGET_REF_FIELDS = ("group", "kind", "name")


def parse_backend_lb_policy(meta: m.Meta, doc: Obj, version: str) -> m.BackendLBPolicy:
    spec = read_spec(doc, BACKEND_LB_POLICY_SPEC_FIELDS)
    objs = spec.objs(
        "targetRefs", LOCAL_POLICY_TARGET_REF_FIELDS, required=True, min_items=1, max_items=16
    )
    refs: list[m.PolicyTargetReference] = []
    for i, o in enumerate(objs):
        ref = parse_policy_target_ref(o)
        # "+listType=map +listMapKey=group +listMapKey=kind +listMapKey=name": each
        # target at most once.
        if any((r.group, r.kind, r.name) == (ref.group, ref.kind, ref.name) for r in refs):
            spec.issues.add(
                f"{spec.at('targetRefs')}[{i}]",
                f"duplicate target {ref.kind} {ref.name}; each target may appear once",
            )
            continue
        refs.append(ref)
    session = spec.sub("sessionPersistence", SESSION_FIELDS)
    return m.BackendLBPolicy(
        meta=meta,
        target_refs=tuple(refs),
        session_persistence=parse_session_persistence(session) if session is not None else None,
    )


# --------------------------------------------------------------------------- ReferenceGrant

REFERENCE_GRANT_SPEC_FIELDS = ("from", "to")


def parse_reference_grant(meta: m.Meta, doc: Obj, version: str) -> m.ReferenceGrant:
    spec = read_spec(doc, REFERENCE_GRANT_SPEC_FIELDS)
    froms = tuple(
        m.ReferenceGrantFrom(
            group=read_group(f, "", required=True),
            kind=read_kind(f, "", required=True),
            namespace=f.str_("namespace", required=True, min_len=1, max_len=63, syntax=DNS_LABEL)
            or "",
        )
        for f in spec.objs(
            "from", ("group", "kind", "namespace"), required=True, min_items=1, max_items=16
        )
    )
    tos = tuple(
        m.ReferenceGrantTo(
            group=read_group(t, "", required=True),
            kind=read_kind(t, "", required=True),
            name=t.str_("name", min_len=1, max_len=253),
        )
        for t in spec.objs(
            "to", ("group", "kind", "name"), required=True, min_items=1, max_items=16
        )
    )
    return m.ReferenceGrant(meta=meta, from_=froms, to=tos)
