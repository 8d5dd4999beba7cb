"""Admission-style validation: raw manifest mappings -> typed ``model`` objects.

Each ``parse_*`` function reads one kind's body the way the API server would admit it:
the CRD's OpenAPI schema (types, required fields, enums, lengths, patterns, item limits),
its defaults, and its CEL ``x-kubernetes-validations`` rules.  Everything found wrong is
recorded in an ``Issues`` list as ``(field path, message)``; the caller (``load.py``)
rejects an object with any issue, so the placeholders used to keep going after an error
never leave this module in a loaded ``Config``.

Schema source: kubernetes-sigs/gateway-api ``apis/v1/*_types.go`` and the generated CRDs
(standard channel, plus the experimental fields the model carries: retry,
sessionPersistence, frontend validation, backend client certificate).

Pure module: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TypeVar

from gatewayd.routing import model as m

E = TypeVar("E", bound=Enum)


# --------------------------------------------------------------------------- syntaxes


@dataclass(frozen=True, slots=True)
class Syntax:
    """A pattern a string must match in full, with a human description of it."""

    regex: re.Pattern[str]
    what: str


_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*"

DNS_SUBDOMAIN = Syntax(
    re.compile(_DNS1123_SUBDOMAIN),
    "a DNS subdomain (lower-case letters, digits, '-' and '.', starting and ending "
    "with a letter or digit)",
)
DNS_LABEL = Syntax(
    re.compile(_DNS1123_LABEL),
    "a DNS label (lower-case letters, digits and '-', starting and ending with a letter or digit)",
)
DNS1035_LABEL = Syntax(
    re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?"),
    "a DNS-1035 label (lower-case letters, digits and '-', starting with a letter and "
    "ending with a letter or digit)",
)
# Hostname: "This matches the RFC 1123 definition of a hostname with 2 notable
# exceptions: 1. IPs are not allowed. 2. A hostname may be prefixed with a wildcard
# label (`*.`)."
HOSTNAME = Syntax(
    re.compile(rf"(\*\.)?{_DNS1123_SUBDOMAIN}"),
    'a hostname (lower-case RFC 1123 labels, optionally starting with the wildcard "*.")',
)
# PreciseHostname: "the fully qualified domain name of a network host ... wildcards not
# allowed".
PRECISE_HOSTNAME = Syntax(
    re.compile(_DNS1123_SUBDOMAIN),
    "a precise hostname (lower-case RFC 1123 labels, no wildcard)",
)
SECTION_NAME = Syntax(
    re.compile(_DNS1123_SUBDOMAIN),
    "a valid section name (lower-case letters, digits, '-' and '.', starting and ending "
    "with a letter or digit)",
)
GROUP = Syntax(
    re.compile(rf"(|{_DNS1123_SUBDOMAIN})"),
    'an API group ("" for the core group, or a DNS subdomain)',
)
KIND = Syntax(
    re.compile(r"[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?"),
    "a kind (letters, digits and '-', starting with a letter)",
)
# HeaderName: RFC 7230 token characters.
HEADER_NAME = Syntax(
    re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+"),
    "an HTTP header name (RFC 7230 token characters)",
)
PATH_CHARS = Syntax(
    re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+"),
    "a path of valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$)",
)
CONTROLLER_NAME = Syntax(
    re.compile(rf"{_DNS1123_SUBDOMAIN}/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+"),
    'a domain-prefixed path such as "example.net/gateway-controller"',
)
PROTOCOL = Syntax(
    re.compile(rf"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?|{_DNS1123_SUBDOMAIN}/[A-Za-z0-9]+"),
    "a protocol name such as HTTP, HTTPS, TLS, TCP, UDP or a domain-prefixed name",
)
ADDRESS_TYPE = Syntax(
    re.compile(
        rf"Hostname|IPAddress|NamedAddress|{_DNS1123_SUBDOMAIN}/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+"
    ),
    "IPAddress, Hostname, NamedAddress or a domain-prefixed type",
)
CORS_ORIGIN = Syntax(
    re.compile(r"\*|https?://((\*\.)?([a-zA-Z0-9\-]+\.)*[a-zA-Z0-9-]+|\*)(:[0-9]{1,5})?"),
    'an origin such as "https://example.com", "https://*.example.com:8443" or "*"',
)
GRPC_SERVICE = Syntax(
    re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE),
    "a gRPC service name (matching ^(?i)\\.?[a-z_][a-z_0-9]*(\\.[a-z_][a-z_0-9]*)*$)",
)
GRPC_METHOD = Syntax(
    re.compile(r"[A-Za-z_][A-Za-z_0-9]*"),
    "a gRPC method name (matching ^[A-Za-z_][A-Za-z_0-9]*$)",
)
CONFIG_KEY = Syntax(
    re.compile(r"[-._a-zA-Z0-9]+"),
    "a valid data key (letters, digits, '-', '_' and '.')",
)
# GEP-2257 Duration: "^([0-9]{1,5}(h|m|s|ms)){1,4}$".
DURATION = Syntax(
    re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}"),
    'a Gateway API duration (1 to 4 <number><unit> pairs, units h, m, s, ms; e.g. "1h30m" '
    'or "500ms")',
)
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
REDIRECT_STATUS_CODES = (301, 302, 303, 307, 308)


def parse_duration(text: str) -> float | None:
    """A GEP-2257 duration string as seconds, or None when it does not match the format."""
    if not DURATION.regex.fullmatch(text):
        return None
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


# --------------------------------------------------------------------------- reader


class Issues:
    """What is wrong with one object: ``(field path, message)`` pairs, in reading order."""

    __slots__ = ("ignore_unknown_fields", "items")

    def __init__(self, *, ignore_unknown_fields: bool = False) -> None:
        self.items: list[tuple[str, str]] = []
        # Objects the API server admitted were checked against the cluster's CRD schema,
        # which may be newer than gatewayd's: a field gatewayd does not know is ignored
        # there, as an older controller would (Kubernetes mode), and refused in files.
        self.ignore_unknown_fields = ignore_unknown_fields

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def __len__(self) -> int:
        return len(self.items)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def show(value: str, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 4] + '..."'


def describe(value: object) -> str:
    """A short description of a YAML value, for 'must be X, got Y' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {show(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def check_str(
    value: object,
    path: str,
    issues: Issues,
    *,
    min_len: int = 0,
    max_len: int | None = None,
    syntax: Syntax | None = None,
    choices: Sequence[str] | None = None,
) -> str | None:
    """``value`` if it is a string meeting the constraints; else record why and None."""
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, bool | int | float):
            hint = " (quote the value in YAML to make it a string)"
        issues.add(path, f"must be a string, got {describe(value)}{hint}")
        return None
    if choices is not None:
        if value not in choices:
            issues.add(path, f"must be one of {', '.join(choices)}; got {show(value)}")
            return None
        return value
    if len(value) < min_len:
        issues.add(
            path, "must not be empty" if min_len == 1 else f"must be at least {min_len} characters"
        )
        return None
    if max_len is not None and len(value) > max_len:
        issues.add(path, f"must be at most {max_len} characters, got {len(value)}")
        return None
    if syntax is not None and not syntax.regex.fullmatch(value):
        issues.add(path, f"{show(value)} is not {syntax.what}")
        return None
    return value


def check_int(
    value: object,
    path: str,
    issues: Issues,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: Sequence[int] | None = None,
) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        issues.add(path, f"must be an integer, got {describe(value)}")
        return None
    if choices is not None:
        if value not in choices:
            issues.add(path, f"must be one of {', '.join(map(str, choices))}; got {value}")
            return None
        return value
    if minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            issues.add(path, f"must be between {minimum} and {maximum}, got {value}")
            return None
    elif minimum is not None and value < minimum:
        issues.add(path, f"must be at least {minimum}, got {value}")
        return None
    elif maximum is not None and value > maximum:
        issues.add(path, f"must be at most {maximum}, got {value}")
        return None
    return value


def unknown_field_message(key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return f"unknown field {show(key)}{hint}; allowed: {', '.join(sorted(allowed))}"


class Obj:
    """A mapping being read at ``path``; getters validate and record issues."""

    __slots__ = ("data", "issues", "path")

    def __init__(self, data: Mapping[str, object], path: str, issues: Issues) -> None:
        self.data = data
        self.path = path
        self.issues = issues

    @classmethod
    def of(
        cls, value: object, path: str, issues: Issues, allowed: Collection[str] | None
    ) -> Obj | None:
        """Read ``value`` as a mapping whose field names are in ``allowed`` (None: any)."""
        if not isinstance(value, Mapping):
            issues.add(path, f"must be a mapping, got {describe(value)}")
            return None
        data: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                issues.add(path, f"field names must be strings, got {describe(key)}")
            elif allowed is not None and key not in allowed:
                if not issues.ignore_unknown_fields:
                    issues.add(path, unknown_field_message(key, allowed))
            else:
                data[key] = item
        return cls(data, path, issues)

    @classmethod
    def empty(cls, path: str, issues: Issues) -> Obj:
        return cls({}, path, issues)

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def add(self, key: str, message: str) -> None:
        """Record an issue about field ``key`` ("" for this object itself)."""
        self.issues.add(self.at(key) if key else self.path, message)

    def _get(self, key: str, required: bool) -> object | None:
        value = self.data.get(key)
        if value is None and required:
            self.issues.add(self.at(key), "is required")
        return value

    def str_(
        self,
        key: str,
        *,
        required: bool = False,
        min_len: int = 0,
        max_len: int | None = None,
        syntax: Syntax | None = None,
        choices: Sequence[str] | None = None,
    ) -> str | None:
        value = self._get(key, required)
        if value is None:
            return None
        return check_str(
            value,
            self.at(key),
            self.issues,
            min_len=min_len,
            max_len=max_len,
            syntax=syntax,
            choices=choices,
        )

    def int_(
        self,
        key: str,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
        choices: Sequence[int] | None = None,
    ) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        return check_int(
            value, self.at(key), self.issues, minimum=minimum, maximum=maximum, choices=choices
        )

    def bool_(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.issues.add(self.at(key), f"must be true or false, got {describe(value)}")
            return None
        return value

    def enum_(
        self,
        key: str,
        cls: type[E],
        *,
        required: bool = False,
        allowed: Sequence[E] | None = None,
    ) -> E | None:
        choices = [str(c.value) for c in (allowed if allowed is not None else list(cls))]
        text = self.str_(key, required=required, choices=choices)
        return None if text is None else cls(text)

    def duration(self, key: str) -> float | None:
        text = self.str_(key)
        if text is None:
            return None
        seconds = parse_duration(text)
        if seconds is None:
            self.issues.add(self.at(key), f"{show(text)} is not {DURATION.what}")
        return seconds

    def sub(
        self, key: str, allowed: Collection[str] | None, *, required: bool = False
    ) -> Obj | None:
        value = self._get(key, required)
        if value is None:
            return None
        return Obj.of(value, self.at(key), self.issues, allowed)

    def list_(
        self,
        key: str,
        *,
        required: bool = False,
        min_items: int = 0,
        max_items: int | None = None,
    ) -> list[tuple[object, str]]:
        """The items of list ``key`` with their paths ([] when absent or not a list)."""
        value = self._get(key, required)
        if value is None:
            return []
        path = self.at(key)
        if not isinstance(value, list):
            self.issues.add(path, f"must be a list, got {describe(value)}")
            return []
        if len(value) < min_items:
            self.issues.add(path, f"must have at least {_plural(min_items, 'item')}")
        if max_items is not None and len(value) > max_items:
            self.issues.add(path, f"must have at most {max_items} items, got {len(value)}")
        return [(item, f"{path}[{i}]") for i, item in enumerate(value)]

    def objs(
        self,
        key: str,
        allowed: Collection[str] | None,
        *,
        required: bool = False,
        min_items: int = 0,
        max_items: int | None = None,
    ) -> list[Obj]:
        out: list[Obj] = []
        for item, path in self.list_(
            key, required=required, min_items=min_items, max_items=max_items
        ):
            obj = Obj.of(item, path, self.issues, allowed)
            if obj is not None:
                out.append(obj)
        return out

    def strs(
        self,
        key: str,
        *,
        required: bool = False,
        min_items: int = 0,
        max_items: int | None = None,
        unique: bool = False,
        min_len: int = 0,
        max_len: int | None = None,
        syntax: Syntax | None = None,
        choices: Sequence[str] | None = None,
    ) -> tuple[str, ...]:
        out: list[str] = []
        for item, path in self.list_(
            key, required=required, min_items=min_items, max_items=max_items
        ):
            text = check_str(
                item,
                path,
                self.issues,
                min_len=min_len,
                max_len=max_len,
                syntax=syntax,
                choices=choices,
            )
            if text is None:
                continue
            if unique and text in out:
                self.issues.add(path, f"duplicate value {show(text)}; each value may appear once")
                continue
            out.append(text)
        return tuple(out)

    def str_map(
        self, key: str, *, max_props: int | None = None, value_max_len: int | None = None
    ) -> tuple[tuple[str, str], ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        path = self.at(key)
        if not isinstance(value, Mapping):
            self.issues.add(path, f"must be a mapping of strings, got {describe(value)}")
            return ()
        if max_props is not None and len(value) > max_props:
            self.issues.add(path, f"must have at most {max_props} entries, got {len(value)}")
        out: list[tuple[str, str]] = []
        for k, v in value.items():
            if not isinstance(k, str):
                self.issues.add(path, f"keys must be strings, got {describe(k)}")
                continue
            text = check_str(v, join(path, k), self.issues, max_len=value_max_len)
            if text is not None:
                out.append((k, text))
        return tuple(out)


def _unique_names(objs: Sequence[tuple[str | None, str]], issues: Issues, what: str) -> None:
    """Report exact duplicate list-map keys (``x-kubernetes-list-type: map``)."""
    seen: set[str] = set()
    for name, path in objs:
        if name is None:
            continue
        if name in seen:
            issues.add(path, f"duplicate {what} {show(name)}; each {what} may appear once")
        seen.add(name)


# --------------------------------------------------------------------------- metadata

META_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "generation",
        "creationTimestamp",
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generateName",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "ownerReferences",
        "finalizers",
        "managedFields",
        "selfLink",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetaRead:
    """What ``read_meta`` found: the identity, the generation the file gives, the rest."""

    namespace: str
    name: str
    generation: int | None
    creation_timestamp: str
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]

    def meta(self, *, generation: int, source: m.Source) -> m.Meta:
        return m.Meta(
            namespace=self.namespace,
            name=self.name,
            generation=generation,
            creation_timestamp=self.creation_timestamp,
            labels=self.labels,
            annotations=self.annotations,
            source=source,
        )


def read_meta(
    raw: object, path: str, issues: Issues, *, namespaced: bool, name_syntax: Syntax
) -> MetaRead:
    """Read ``metadata``; a missing namespace is "default" (cluster-scoped kinds: "")."""
    md = Obj.of(raw, path, issues, META_FIELDS) if raw is not None else None
    if md is None:
        if raw is None:
            issues.add(path, "is required (metadata.name names the object)")
        md = Obj.empty(path, issues)
    max_len = 63 if name_syntax is DNS_LABEL or name_syntax is DNS1035_LABEL else 253
    name = md.str_("name", required=True, min_len=1, max_len=max_len, syntax=name_syntax) or ""
    namespace = ""
    if namespaced:
        namespace = md.str_("namespace", min_len=1, max_len=63, syntax=DNS_LABEL) or "default"
    generation = md.int_("generation", minimum=1)
    created = md.data.get("creationTimestamp")
    timestamp = "" if created is None else str(created)
    return MetaRead(
        namespace=namespace,
        name=name,
        generation=generation,
        creation_timestamp=timestamp,
        labels=md.str_map("labels"),
        annotations=md.str_map("annotations"),
    )


# --------------------------------------------------------------------------- references

PARENT_REF_FIELDS = ("group", "kind", "namespace", "name", "sectionName", "port")
BACKEND_OBJECT_REF_FIELDS = ("group", "kind", "name", "namespace", "port")
SECRET_REF_FIELDS = ("group", "kind", "name", "namespace")
OBJECT_REF_FIELDS = ("group", "kind", "name", "namespace")


def _group(o: Obj, default: str, *, required: bool = False) -> str:
    value = o.str_("group", required=required, max_len=253, syntax=GROUP)
    return default if value is None else value


def _kind(o: Obj, default: str, *, required: bool = False) -> str:
    value = o.str_("kind", required=required, min_len=1, max_len=63, syntax=KIND)
    return default if value is None else value


def _ref_name(o: Obj) -> str:
    return o.str_("name", required=True, min_len=1, max_len=253) or ""


def _ref_namespace(o: Obj) -> str | None:
    return o.str_("namespace", min_len=1, max_len=63, syntax=DNS_LABEL)


def _port(o: Obj, key: str = "port", *, required: bool = False) -> int | None:
    return o.int_(key, required=required, minimum=1, maximum=65535)


def parse_parent_ref(o: Obj) -> m.ParentReference:
    return m.ParentReference(
        group=_group(o, m.GATEWAY_GROUP),
        kind=_kind(o, "Gateway"),
        namespace=_ref_namespace(o),
        name=_ref_name(o),
        section_name=o.str_("sectionName", min_len=1, max_len=253, syntax=SECTION_NAME),
        port=_port(o),
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
        group=_group(o, m.CORE_GROUP),
        kind=_kind(o, "Service"),
        name=_ref_name(o),
        namespace=_ref_namespace(o),
        port=_port(o),
    )
    # CEL: "Must have port for Service reference".
    if ref.group == "" and ref.kind == "Service" and ref.port is None and "port" not in o.data:
        o.add("port", 'is required when the reference is to a Service (group "", kind Service)')
    return ref


def parse_secret_ref(o: Obj) -> m.SecretObjectReference:
    return m.SecretObjectReference(
        group=_group(o, m.CORE_GROUP),
        kind=_kind(o, "Secret"),
        name=_ref_name(o),
        namespace=_ref_namespace(o),
    )


def parse_object_ref(o: Obj) -> m.ObjectReference:
    """A CA certificate reference: group, kind and name are all required."""
    return m.ObjectReference(
        group=_group(o, m.CORE_GROUP, required=True),
        kind=_kind(o, "ConfigMap", required=True),
        name=_ref_name(o),
        namespace=_ref_namespace(o),
    )


def parse_local_ref(o: Obj) -> m.LocalObjectReference:
    return m.LocalObjectReference(
        group=_group(o, "", required=True), kind=_kind(o, "", required=True), name=_ref_name(o)
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


# --------------------------------------------------------------------------- filters

_FILTER_FIELD = {
    m.FilterType.REQUEST_HEADER_MODIFIER: "requestHeaderModifier",
    m.FilterType.RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
    m.FilterType.REQUEST_REDIRECT: "requestRedirect",
    m.FilterType.URL_REWRITE: "urlRewrite",
    m.FilterType.REQUEST_MIRROR: "requestMirror",
    m.FilterType.CORS: "cors",
    m.FilterType.EXTENSION_REF: "extensionRef",
}
HTTP_FILTER_TYPES = (
    m.FilterType.REQUEST_HEADER_MODIFIER,
    m.FilterType.RESPONSE_HEADER_MODIFIER,
    m.FilterType.REQUEST_MIRROR,
    m.FilterType.REQUEST_REDIRECT,
    m.FilterType.URL_REWRITE,
    m.FilterType.EXTENSION_REF,
    m.FilterType.CORS,
)
GRPC_FILTER_TYPES = (
    m.FilterType.RESPONSE_HEADER_MODIFIER,
    m.FilterType.REQUEST_HEADER_MODIFIER,
    m.FilterType.REQUEST_MIRROR,
    m.FilterType.EXTENSION_REF,
)
HEADER_FILTER_FIELDS = ("set", "add", "remove")
HEADER_FIELDS = ("name", "value")
PATH_MODIFIER_FIELDS = ("type", "replaceFullPath", "replacePrefixMatch")
REDIRECT_FIELDS = ("scheme", "hostname", "path", "port", "statusCode")
REWRITE_FIELDS = ("hostname", "path")
MIRROR_FIELDS = ("backendRef", "percent", "fraction")
FRACTION_FIELDS = ("numerator", "denominator")
CORS_FIELDS = (
    "allowOrigins",
    "allowCredentials",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "maxAge",
)
EXTENSION_REF_FIELDS = ("group", "kind", "name")


def _headers(o: Obj, key: str) -> tuple[m.HTTPHeader, ...]:
    items = o.objs(key, HEADER_FIELDS, max_items=16)
    out = tuple(
        m.HTTPHeader(
            name=h.str_("name", required=True, min_len=1, max_len=256, syntax=HEADER_NAME) or "",
            value=h.str_("value", required=True, min_len=1, max_len=4096) or "",
        )
        for h in items
    )
    _unique_names(
        [(h.name or None, i.path) for h, i in zip(out, items, strict=True)], o.issues, "header name"
    )
    return out


def parse_header_filter(o: Obj) -> m.HTTPHeaderFilter:
    return m.HTTPHeaderFilter(
        set=_headers(o, "set"),
        add=_headers(o, "add"),
        remove=o.strs("remove", max_items=16, unique=True),
    )


def parse_path_modifier(o: Obj) -> m.HTTPPathModifier:
    kind = o.enum_("type", m.PathModifierType, required=True)
    full = o.str_("replaceFullPath", max_len=1024)
    prefix = o.str_("replacePrefixMatch", max_len=1024)
    # CEL: "replaceFullPath must be specified when type is set to 'ReplaceFullPath'",
    # "type must be 'ReplaceFullPath' when replaceFullPath is set", and the same pair
    # for ReplacePrefixMatch.
    if kind is m.PathModifierType.REPLACE_FULL_PATH and not o.has("replaceFullPath"):
        o.add("replaceFullPath", "is required when type is ReplaceFullPath")
    if kind is m.PathModifierType.REPLACE_PREFIX_MATCH and not o.has("replacePrefixMatch"):
        o.add("replacePrefixMatch", "is required when type is ReplacePrefixMatch")
    if (
        kind is not None
        and kind is not m.PathModifierType.REPLACE_FULL_PATH
        and o.has("replaceFullPath")
    ):
        o.add("replaceFullPath", "must not be set unless type is ReplaceFullPath")
    if (
        kind is not None
        and kind is not m.PathModifierType.REPLACE_PREFIX_MATCH
        and o.has("replacePrefixMatch")
    ):
        o.add("replacePrefixMatch", "must not be set unless type is ReplacePrefixMatch")
    return m.HTTPPathModifier(
        type=kind or m.PathModifierType.REPLACE_FULL_PATH,
        replace_full_path=full,
        replace_prefix_match=prefix,
    )


def _path_modifier(o: Obj) -> m.HTTPPathModifier | None:
    sub = o.sub("path", PATH_MODIFIER_FIELDS)
    return None if sub is None else parse_path_modifier(sub)


def parse_redirect(o: Obj) -> m.HTTPRequestRedirectFilter:
    status = o.int_("statusCode", choices=REDIRECT_STATUS_CODES)
    return m.HTTPRequestRedirectFilter(
        scheme=o.str_("scheme", choices=("http", "https")),
        hostname=o.str_("hostname", min_len=1, max_len=253, syntax=PRECISE_HOSTNAME),
        path=_path_modifier(o),
        port=_port(o),
        status_code=302 if status is None else status,
    )


def parse_rewrite(o: Obj) -> m.HTTPURLRewriteFilter:
    return m.HTTPURLRewriteFilter(
        hostname=o.str_("hostname", min_len=1, max_len=253, syntax=PRECISE_HOSTNAME),
        path=_path_modifier(o),
    )


def parse_mirror(o: Obj) -> m.HTTPRequestMirrorFilter:
    ref_obj = o.sub("backendRef", BACKEND_OBJECT_REF_FIELDS, required=True)
    ref = (
        parse_backend_object_ref(ref_obj)
        if ref_obj is not None
        else m.BackendObjectReference(name="")
    )
    percent = o.int_("percent", minimum=0, maximum=100)
    fraction: m.Fraction | None = None
    fo = o.sub("fraction", FRACTION_FIELDS)
    if fo is not None:
        numerator = fo.int_("numerator", required=True, minimum=0)
        denominator = fo.int_("denominator", minimum=1)
        fraction = m.Fraction(
            numerator=numerator or 0, denominator=100 if denominator is None else denominator
        )
        # CEL: "numerator must be less than or equal to denominator".
        if numerator is not None and numerator > fraction.denominator:
            fo.add(
                "numerator",
                f"must be less than or equal to denominator ({fraction.denominator}), "
                f"got {numerator}",
            )
    # CEL: "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter".
    if o.has("percent") and o.has("fraction"):
        o.add("", "only one of percent or fraction may be specified")
    return m.HTTPRequestMirrorFilter(backend_ref=ref, percent=percent, fraction=fraction)


def _star_alone(o: Obj, key: str, values: tuple[str, ...], what: str) -> None:
    # CEL: "AllowOrigins cannot contain '*' alongside other origins" (and the same for
    # allowMethods and allowHeaders).
    if "*" in values and len(values) > 1:
        o.add(key, f"cannot contain '*' alongside other {what}")


def parse_cors(o: Obj) -> m.HTTPCORSFilter:
    origins = o.strs(
        "allowOrigins", max_items=64, unique=True, min_len=1, max_len=253, syntax=CORS_ORIGIN
    )
    methods = o.strs("allowMethods", max_items=9, unique=True, choices=(*HTTP_METHODS, "*"))
    headers = o.strs(
        "allowHeaders", max_items=64, unique=True, min_len=1, max_len=256, syntax=HEADER_NAME
    )
    _star_alone(o, "allowOrigins", origins, "origins")
    _star_alone(o, "allowMethods", methods, "methods")
    _star_alone(o, "allowHeaders", headers, "headers")
    max_age = o.int_("maxAge", minimum=1)
    return m.HTTPCORSFilter(
        allow_origins=origins,
        allow_methods=methods,
        allow_headers=headers,
        expose_headers=o.strs(
            "exposeHeaders", max_items=64, unique=True, min_len=1, max_len=256, syntax=HEADER_NAME
        ),
        allow_credentials=bool(o.bool_("allowCredentials")),
        max_age=5 if max_age is None else max_age,
    )


def parse_filter(o: Obj, allowed: Sequence[m.FilterType]) -> m.HTTPRouteFilter:
    names = [str(t.value) for t in allowed]
    type_text = o.str_("type", required=True)
    ftype: m.FilterType | None = None
    if type_text is not None:
        if type_text in names:
            ftype = m.FilterType(type_text)
        else:
            o.add("type", f"unsupported filter type {show(type_text)}; allowed: {', '.join(names)}")
    fields = {t: _FILTER_FIELD[t] for t in allowed}
    for t, field_name in fields.items():
        # CEL: "filter.<field> must be nil if the filter.type is not <Type>" and
        # "filter.<field> must be specified for <Type> filter.type".
        if o.has(field_name) and ftype is not None and t is not ftype:
            o.add(
                field_name,
                f"must not be set when type is {ftype.value} (it belongs to type {t.value})",
            )
        if t is ftype and not o.has(field_name):
            o.add(field_name, f"is required when type is {t.value}")

    def sub(t: m.FilterType, fields: Collection[str]) -> Obj | None:
        return o.sub(_FILTER_FIELD[t], fields) if t in allowed else None

    rqh = sub(m.FilterType.REQUEST_HEADER_MODIFIER, HEADER_FILTER_FIELDS)
    rsh = sub(m.FilterType.RESPONSE_HEADER_MODIFIER, HEADER_FILTER_FIELDS)
    red = sub(m.FilterType.REQUEST_REDIRECT, REDIRECT_FIELDS)
    rew = sub(m.FilterType.URL_REWRITE, REWRITE_FIELDS)
    mir = sub(m.FilterType.REQUEST_MIRROR, MIRROR_FIELDS)
    cors = sub(m.FilterType.CORS, CORS_FIELDS)
    ext = sub(m.FilterType.EXTENSION_REF, EXTENSION_REF_FIELDS)
    return m.HTTPRouteFilter(
        type=ftype or m.FilterType.EXTENSION_REF,
        request_header_modifier=parse_header_filter(rqh) if rqh is not None else None,
        response_header_modifier=parse_header_filter(rsh) if rsh is not None else None,
        request_redirect=parse_redirect(red) if red is not None else None,
        url_rewrite=parse_rewrite(rew) if rew is not None else None,
        request_mirror=parse_mirror(mir) if mir is not None else None,
        cors=parse_cors(cors) if cors is not None else None,
        extension_ref=parse_local_ref(ext) if ext is not None else None,
    )


def parse_filters(o: Obj, allowed: Sequence[m.FilterType]) -> tuple[m.HTTPRouteFilter, ...]:
    field_names = ("type", *(_FILTER_FIELD[t] for t in allowed))
    filters = tuple(parse_filter(f, allowed) for f in o.objs("filters", field_names, max_items=16))
    path = o.at("filters")
    types = [f.type for f in filters]
    # CEL: "May specify either httpRouteFilterRequestRedirect or
    # httpRouteFilterRequestRewrite, but not both".
    if m.FilterType.REQUEST_REDIRECT in types and m.FilterType.URL_REWRITE in types:
        o.issues.add(path, "RequestRedirect and URLRewrite filters must not be used together")
    # CEL: "<Type> filter cannot be repeated".
    for t in (
        m.FilterType.CORS,
        m.FilterType.REQUEST_HEADER_MODIFIER,
        m.FilterType.RESPONSE_HEADER_MODIFIER,
        m.FilterType.REQUEST_REDIRECT,
        m.FilterType.URL_REWRITE,
    ):
        if t in allowed and types.count(t) > 1:
            o.issues.add(path, f"{t.value} filter cannot be repeated (found {types.count(t)})")
    return filters


# --------------------------------------------------------------------------- backendRefs

_BACKEND_REF_FIELDS = (*BACKEND_OBJECT_REF_FIELDS, "weight")


def parse_backend_ref(o: Obj, filter_types: Sequence[m.FilterType] | None) -> m.BackendRef:
    weight = o.int_("weight", minimum=0, maximum=1_000_000)
    filters = parse_filters(o, filter_types) if filter_types is not None else ()
    return m.BackendRef(
        ref=parse_backend_object_ref(o),
        weight=1 if weight is None else weight,
        filters=filters,
    )


def parse_backend_refs(
    o: Obj,
    filter_types: Sequence[m.FilterType] | None,
    *,
    required: bool = False,
    min_items: int = 0,
) -> tuple[m.BackendRef, ...]:
    fields = _BACKEND_REF_FIELDS if filter_types is None else (*_BACKEND_REF_FIELDS, "filters")
    return tuple(
        parse_backend_ref(b, filter_types)
        for b in o.objs("backendRefs", fields, required=required, min_items=min_items, max_items=16)
    )


# --------------------------------------------------------------------------- HTTPRoute

HTTP_ROUTE_SPEC_FIELDS = ("parentRefs", "hostnames", "rules")
HTTP_RULE_FIELDS = (
    "name",
    "matches",
    "filters",
    "backendRefs",
    "timeouts",
    "retry",
    "sessionPersistence",
)
HTTP_MATCH_FIELDS = ("path", "headers", "queryParams", "method")
PATH_MATCH_FIELDS = ("type", "value")
HEADER_MATCH_FIELDS = ("type", "name", "value")
TIMEOUT_FIELDS = ("request", "backendRequest")
RETRY_FIELDS = ("codes", "attempts", "backoff")
SESSION_FIELDS = (
    "sessionName",
    "absoluteTimeout",
    "idleTimeout",
    "type",
    "cookieConfig",
    "cookie",
    "header",
)

# HTTPPathMatch CEL rules for Exact and PathPrefix values: (predicate, message).
_PATH_RULES: tuple[tuple[str, str, str], ...] = (
    ("contains", "//", "must not contain '//'"),
    ("contains", "/./", "must not contain '/./'"),
    ("contains", "/../", "must not contain '/../'"),
    ("contains", "%2f", "must not contain '%2f'"),
    ("contains", "%2F", "must not contain '%2F'"),
    ("contains", "#", "must not contain '#'"),
    ("endswith", "/..", "must not end with '/..'"),
    ("endswith", "/.", "must not end with '/.'"),
)


def parse_path_match(o: Obj) -> m.HTTPPathMatch:
    ptype = o.enum_("type", m.PathMatchType) or m.PathMatchType.PATH_PREFIX
    # Default: value "/"; an invalid value (already reported) reads as "/" too.
    value = o.str_("value", max_len=1024)
    if value is None:
        value = "/"
    # RegularExpression values have no CRD rule ("implementations can support POSIX,
    # PCRE, RE2 or any other regular expression dialect"), so the API server admits any
    # string: a pattern RE2 cannot compile is reported on the route's status instead
    # (status._regex_problem), where the user sees it, and the rest keeps serving.
    if ptype is not m.PathMatchType.REGULAR_EXPRESSION:
        where = o.at("value")
        # CEL: "value must be an absolute path and start with '/' when type one of
        # ['Exact', 'PathPrefix']", then the '//', '/./', ... rules.
        if not value.startswith("/"):
            o.issues.add(
                where,
                f"{show(value)} must be an absolute path starting with '/' "
                f"when type is {ptype.value}",
            )
        for op, needle, message in _PATH_RULES:
            hit = needle in value if op == "contains" else value.endswith(needle)
            if hit:
                o.issues.add(where, f"{show(value)} {message} when type is {ptype.value}")
        if value and not PATH_CHARS.regex.fullmatch(value):
            o.issues.add(
                where, f"{show(value)} must only contain valid characters: {PATH_CHARS.what}"
            )
    return m.HTTPPathMatch(type=ptype, value=value)


def _header_matches(o: Obj, key: str, *, value_max: int) -> tuple[m.HTTPHeaderMatch, ...]:
    items = o.objs(key, HEADER_MATCH_FIELDS, max_items=16)
    out: list[m.HTTPHeaderMatch] = []
    for h in items:
        htype = h.enum_("type", m.HeaderMatchType) or m.HeaderMatchType.EXACT
        # A RegularExpression value is checked by the status computation (see
        # parse_path_match).
        value = h.str_("value", required=True, min_len=1, max_len=value_max) or ""
        out.append(
            m.HTTPHeaderMatch(
                type=htype,
                name=h.str_("name", required=True, min_len=1, max_len=256, syntax=HEADER_NAME)
                or "",
                value=value,
            )
        )
    _unique_names(
        [(x.name or None, i.path) for x, i in zip(out, items, strict=True)], o.issues, "name"
    )
    return tuple(out)


def parse_http_match(o: Obj) -> m.HTTPRouteMatch:
    path_obj = o.sub("path", PATH_MATCH_FIELDS)
    queries = _header_matches(o, "queryParams", value_max=1024)
    return m.HTTPRouteMatch(
        path=parse_path_match(path_obj) if path_obj is not None else m.HTTPPathMatch(),
        headers=_header_matches(o, "headers", value_max=4096),
        query_params=tuple(
            m.HTTPQueryParamMatch(type=q.type, name=q.name, value=q.value) for q in queries
        ),
        method=o.str_("method", choices=HTTP_METHODS),
    )


def parse_timeouts(o: Obj) -> m.HTTPRouteTimeouts:
    request = o.duration("request")
    backend = o.duration("backendRequest")
    # CEL: "backendRequest timeout cannot be longer than request timeout" (a request
    # timeout of 0s disables it, so anything goes then).
    if request is not None and backend is not None and request != 0 and backend > request:
        o.add(
            "backendRequest",
            "timeout cannot be longer than the request timeout "
            f"({o.data['backendRequest']} > {o.data['request']})",
        )
    return m.HTTPRouteTimeouts(request=request, backend_request=backend)


def parse_retry(o: Obj) -> m.HTTPRouteRetry:
    codes: list[int] = []
    for item, path in o.list_("codes"):
        code = check_int(item, path, o.issues, minimum=400, maximum=599)
        if code is None:
            continue
        if code in codes:
            o.issues.add(path, f"duplicate value {code}; each code may appear once")
            continue
        codes.append(code)
    return m.HTTPRouteRetry(
        codes=tuple(codes), attempts=o.int_("attempts", minimum=1), backoff=o.duration("backoff")
    )


def parse_session_persistence(o: Obj) -> m.SessionPersistence:
    """Both the v1.3 shape (sessionName, cookieConfig) and the newer (cookie, header)."""
    stype = o.str_("type", choices=("Cookie", "Header")) or "Cookie"
    session_name = o.str_("sessionName", max_len=128)
    lifetime: str | None = None
    config = o.sub("cookieConfig", ("lifetimeType",))
    if config is not None:
        lifetime = config.str_("lifetimeType", choices=("Permanent", "Session"))
    cookie = o.sub("cookie", ("name", "lifetimeType", "path"))
    header = o.sub("header", ("name",))
    if cookie is not None or header is not None:
        if o.has("sessionName") or config is not None:
            o.add("", "use either sessionName/cookieConfig or cookie/header, not both")
        # CEL: "cookie must be nil if type is not Cookie", "header must be nil if type is
        # not Header".
        if cookie is not None and stype != "Cookie":
            o.add("cookie", "must not be set unless type is Cookie")
        if header is not None and stype != "Header":
            o.add("header", "must not be set unless type is Header")
    if cookie is not None:
        session_name = (
            cookie.str_("name", min_len=1, max_len=256, syntax=HEADER_NAME) or session_name
        )
        lifetime = cookie.str_("lifetimeType", choices=("Permanent", "Session")) or lifetime
        cookie.str_("path", max_len=1024)
    if header is not None:
        session_name = header.str_(
            "name", required=True, min_len=1, max_len=256, syntax=HEADER_NAME
        )
    absolute = o.duration("absoluteTimeout")
    # CEL: "AbsoluteTimeout must be specified when cookie lifetimeType is Permanent".
    if lifetime == "Permanent" and not o.has("absoluteTimeout"):
        o.add("absoluteTimeout", "must be specified when the cookie lifetimeType is Permanent")
    return m.SessionPersistence(
        session_name=session_name,
        type=stype,
        absolute_timeout=absolute,
        idle_timeout=o.duration("idleTimeout"),
        cookie_lifetime_type=lifetime or "Session",
    )


def _replace_prefix_filters(filters: Sequence[m.HTTPRouteFilter]) -> list[str]:
    out = []
    for f in filters:
        for name, mod in (
            ("RequestRedirect", f.request_redirect.path if f.request_redirect else None),
            ("URLRewrite", f.url_rewrite.path if f.url_rewrite else None),
        ):
            if (
                mod is not None
                and mod.type is m.PathModifierType.REPLACE_PREFIX_MATCH
                and mod.replace_prefix_match is not None
            ):
                out.append(name)
    return out


def parse_http_rule(o: Obj) -> m.HTTPRouteRule:
    matches = tuple(parse_http_match(x) for x in o.objs("matches", HTTP_MATCH_FIELDS, max_items=64))
    if not matches and not o.data.get("matches"):
        # Default: "matches: {{path: {type: "PathPrefix", value: "/"}}}" -- "If no matches
        # are specified, the default is a prefix path match on "/", which has the effect
        # of matching every HTTP request."
        matches = (m.HTTPRouteMatch(),)
    filters = parse_filters(o, HTTP_FILTER_TYPES)
    backends = parse_backend_refs(o, HTTP_FILTER_TYPES)
    timeouts = o.sub("timeouts", TIMEOUT_FIELDS)
    retry = o.sub("retry", RETRY_FIELDS)
    session = o.sub("sessionPersistence", SESSION_FIELDS)
    rule = m.HTTPRouteRule(
        name=o.str_("name", min_len=1, max_len=253, syntax=SECTION_NAME),
        matches=matches,
        filters=filters,
        backend_refs=backends,
        timeouts=parse_timeouts(timeouts) if timeouts is not None else None,
        retry=parse_retry(retry) if retry is not None else None,
        session_persistence=parse_session_persistence(session) if session is not None else None,
    )
    # CEL: "RequestRedirect filter must not be used together with backendRefs".
    if backends and any(f.request_redirect is not None for f in filters):
        o.add("filters", "a RequestRedirect filter must not be used together with backendRefs")
    # CEL: "When using RequestRedirect filter with path.replacePrefixMatch, exactly one
    # PathPrefix match must be specified" (and the same for URLRewrite, and for the
    # filters of backendRefs).
    single_prefix = len(matches) == 1 and matches[0].path.type is m.PathMatchType.PATH_PREFIX
    if not single_prefix:
        for name in _replace_prefix_filters(filters):
            o.add(
                "filters",
                f"when using a {name} filter with path.replacePrefixMatch, "
                "exactly one PathPrefix match must be specified",
            )
        for i, b in enumerate(backends):
            for name in _replace_prefix_filters(b.filters):
                o.add(
                    f"backendRefs[{i}].filters",
                    f"when using a {name} filter with path.replacePrefixMatch, "
                    "exactly one PathPrefix match must be specified in the rule",
                )
    return rule


def _unique_rule_names(spec: Obj, names: Sequence[str | None]) -> None:
    # CEL: "Rule name must be unique within the route".
    _unique_names(
        [(n, f"{spec.at('rules')}[{i}].name") for i, n in enumerate(names)],
        spec.issues,
        "rule name",
    )


def _total_matches(spec: Obj, counts: Sequence[int]) -> None:
    # CEL: "While 16 rules and 64 matches per rule are allowed, the total number of
    # matches across all rules in a route must be less than 128".
    total = sum(counts)
    if total > 128:
        spec.add(
            "rules",
            f"the total number of matches across all rules must be at most 128, got {total}",
        )


def parse_http_route(meta: m.Meta, doc: Obj, version: str) -> m.HTTPRoute:
    spec = _spec(doc, HTTP_ROUTE_SPEC_FIELDS)
    rules = tuple(
        parse_http_rule(r) for r in spec.objs("rules", HTTP_RULE_FIELDS, min_items=1, max_items=16)
    )
    if "rules" not in spec.data or spec.data["rules"] is None:
        # Default: "rules: {{matches: {{path: {type: "PathPrefix", value: "/"}}}}}".
        rules = (m.HTTPRouteRule(matches=(m.HTTPRouteMatch(),)),)
    _total_matches(spec, [len(r.matches) for r in rules])
    _unique_rule_names(spec, [r.name for r in rules])
    return m.HTTPRoute(
        meta=meta,
        parent_refs=parse_parent_refs(spec),
        hostnames=parse_hostnames(spec, max_items=16),
        rules=rules,
    )


# --------------------------------------------------------------------------- GRPCRoute

GRPC_ROUTE_SPEC_FIELDS = ("parentRefs", "hostnames", "rules")
GRPC_RULE_FIELDS = ("name", "matches", "filters", "backendRefs", "sessionPersistence")
GRPC_MATCH_FIELDS = ("method", "headers")
GRPC_METHOD_FIELDS = ("type", "service", "method")


def parse_grpc_method(o: Obj) -> m.GRPCMethodMatch:
    mtype = o.enum_("type", m.HeaderMatchType) or m.HeaderMatchType.EXACT
    exact = mtype is m.HeaderMatchType.EXACT
    service = o.str_("service", max_len=1024, syntax=GRPC_SERVICE if exact else None)
    method = o.str_("method", max_len=1024, syntax=GRPC_METHOD if exact else None)
    # CEL: "One or both of 'service' or 'method' must be specified".
    if not o.has("service") and not o.has("method"):
        o.add("", "one or both of service or method must be specified")
    # RegularExpression service/method values are checked by the status computation
    # (see parse_path_match).
    return m.GRPCMethodMatch(type=mtype, service=service, method=method)


def parse_grpc_match(o: Obj) -> m.GRPCRouteMatch:
    method = o.sub("method", GRPC_METHOD_FIELDS)
    return m.GRPCRouteMatch(
        method=parse_grpc_method(method) if method is not None else None,
        headers=_header_matches(o, "headers", value_max=4096),
    )


def parse_grpc_rule(o: Obj) -> m.GRPCRouteRule:
    session = o.sub("sessionPersistence", SESSION_FIELDS)
    return m.GRPCRouteRule(
        name=o.str_("name", min_len=1, max_len=253, syntax=SECTION_NAME),
        matches=tuple(
            parse_grpc_match(x) for x in o.objs("matches", GRPC_MATCH_FIELDS, max_items=64)
        ),
        filters=parse_filters(o, GRPC_FILTER_TYPES),
        backend_refs=parse_backend_refs(o, GRPC_FILTER_TYPES),
        session_persistence=parse_session_persistence(session) if session is not None else None,
    )


def parse_grpc_route(meta: m.Meta, doc: Obj, version: str) -> m.GRPCRoute:
    spec = _spec(doc, GRPC_ROUTE_SPEC_FIELDS)
    rules = tuple(parse_grpc_rule(r) for r in spec.objs("rules", GRPC_RULE_FIELDS, max_items=16))
    _total_matches(spec, [len(r.matches) for r in rules])
    _unique_rule_names(spec, [r.name for r in rules])
    return m.GRPCRoute(
        meta=meta,
        parent_refs=parse_parent_refs(spec),
        hostnames=parse_hostnames(spec, max_items=16),
        rules=rules,
    )


# --------------------------------------------------------------------------- TLSRoute

TLS_ROUTE_SPEC_FIELDS = ("parentRefs", "hostnames", "rules")
TLS_RULE_FIELDS = ("name", "backendRefs")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_tls_route(meta: m.Meta, doc: Obj, version: str) -> m.TLSRoute:
    spec = _spec(doc, TLS_ROUTE_SPEC_FIELDS)
    # v1 and v1alpha3 require hostnames and exactly one rule; v1alpha2 allowed 16 rules.
    legacy = version == "v1alpha2"
    hostnames = parse_hostnames(
        spec, max_items=1024, required=not legacy, min_items=0 if legacy else 1
    )
    if not legacy:
        # CEL: "Hostnames cannot contain an IP".
        for i, h in enumerate(hostnames):
            if _is_ip(h):
                spec.issues.add(
                    f"{spec.at('hostnames')}[{i}]", f"{show(h)}: hostnames cannot contain an IP"
                )
    rules = tuple(
        m.TLSRouteRule(
            name=r.str_("name", min_len=1, max_len=253, syntax=SECTION_NAME),
            backend_refs=parse_backend_refs(r, None, required=True, min_items=1),
        )
        for r in spec.objs(
            "rules", TLS_RULE_FIELDS, required=True, min_items=1, max_items=16 if legacy else 1
        )
    )
    _unique_rule_names(spec, [r.name for r in rules])
    return m.TLSRoute(
        meta=meta, parent_refs=parse_parent_refs(spec), hostnames=hostnames, rules=rules
    )


# --------------------------------------------------------------------------- Gateway

GATEWAY_SPEC_FIELDS = (
    "gatewayClassName",
    "listeners",
    "addresses",
    "infrastructure",
    "tls",
    "backendTLS",
    "allowedListeners",
    "defaultScope",
)
LISTENER_FIELDS = ("name", "hostname", "port", "protocol", "tls", "allowedRoutes")
LISTENER_TLS_FIELDS = ("mode", "certificateRefs", "options", "frontendValidation")
FRONTEND_VALIDATION_FIELDS = ("caCertificateRefs", "mode")
ALLOWED_ROUTES_FIELDS = ("namespaces", "kinds")
ROUTE_NAMESPACES_FIELDS = ("from", "selector")
SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
SELECTOR_REQUIREMENT_FIELDS = ("key", "operator", "values")
ROUTE_GROUP_KIND_FIELDS = ("group", "kind")
ADDRESS_FIELDS = ("type", "value")
GATEWAY_TLS_FIELDS = ("backend", "frontend")
CLIENT_CERT_FIELDS = ("clientCertificateRef",)
FRONTEND_FIELDS = ("default", "perPort")
FRONTEND_TLS_FIELDS = ("validation",)
PER_PORT_FIELDS = ("port", "tls")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def parse_label_selector(o: Obj) -> m.LabelSelector:
    requirements: list[m.LabelSelectorRequirement] = []
    for r in o.objs("matchExpressions", SELECTOR_REQUIREMENT_FIELDS):
        op = r.str_("operator", required=True, choices=SELECTOR_OPERATORS)
        values = r.strs("values")
        # metav1.LabelSelectorRequirement: "If the operator is In or NotIn, the values
        # array must be non-empty. If the operator is Exists or DoesNotExist, the values
        # array must be empty."
        if op in ("In", "NotIn") and not values:
            r.add("values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            r.add("values", f"must be empty when operator is {op}")
        requirements.append(
            m.LabelSelectorRequirement(
                key=r.str_("key", required=True, min_len=1) or "",
                operator=op or "In",
                values=values,
            )
        )
    return m.LabelSelector(
        match_labels=o.str_map("matchLabels"), match_expressions=tuple(requirements)
    )


def parse_frontend_validation(o: Obj, *, max_refs: int) -> m.FrontendValidation:
    refs = tuple(
        parse_object_ref(r)
        for r in o.objs(
            "caCertificateRefs", OBJECT_REF_FIELDS, required=True, min_items=1, max_items=max_refs
        )
    )
    mode = o.str_("mode", choices=("AllowValidOnly", "AllowInsecureFallback"))
    return m.FrontendValidation(ca_certificate_refs=refs, mode=mode or "AllowValidOnly")


def parse_listener_tls(o: Obj) -> m.GatewayTLSConfig:
    mode = o.enum_("mode", m.TLSModeType) or m.TLSModeType.TERMINATE
    refs = tuple(
        parse_secret_ref(r) for r in o.objs("certificateRefs", SECRET_REF_FIELDS, max_items=64)
    )
    options = o.str_map("options", max_props=16, value_max_len=4096)
    # CEL: "certificateRefs or options must be specified when mode is Terminate".
    if mode is m.TLSModeType.TERMINATE and not refs and not options:
        o.add(
            "certificateRefs", "certificateRefs or options must be specified when mode is Terminate"
        )
    fv = o.sub("frontendValidation", FRONTEND_VALIDATION_FIELDS)
    return m.GatewayTLSConfig(
        mode=mode,
        certificate_refs=refs,
        frontend_validation=parse_frontend_validation(fv, max_refs=8) if fv is not None else None,
        options=options,
    )


def parse_allowed_routes(o: Obj) -> m.AllowedRoutes:
    ns = o.sub("namespaces", ROUTE_NAMESPACES_FIELDS)
    from_ = m.FromNamespaces.SAME
    selector: m.LabelSelector | None = None
    if ns is not None:
        from_ = ns.enum_("from", m.FromNamespaces) or m.FromNamespaces.SAME
        sel = ns.sub("selector", SELECTOR_FIELDS)
        selector = parse_label_selector(sel) if sel is not None else None
    kinds = tuple(
        m.RouteGroupKind(group=_group(k, m.GATEWAY_GROUP), kind=_kind(k, "", required=True))
        for k in o.objs("kinds", ROUTE_GROUP_KIND_FIELDS, max_items=8)
    )
    return m.AllowedRoutes(namespaces_from=from_, selector=selector, kinds=kinds)


def parse_listener(o: Obj) -> m.Listener:
    tls = o.sub("tls", LISTENER_TLS_FIELDS)
    routes = o.sub("allowedRoutes", ALLOWED_ROUTES_FIELDS)
    return m.Listener(
        name=o.str_("name", required=True, min_len=1, max_len=253, syntax=SECTION_NAME) or "",
        hostname=o.str_("hostname", min_len=1, max_len=253, syntax=HOSTNAME),
        port=_port(o, required=True) or 0,
        # Protocol is not an enum: an unknown protocol is admitted and reported later
        # with the UnsupportedProtocol reason.
        protocol=o.str_("protocol", required=True, min_len=1, max_len=255, syntax=PROTOCOL) or "",
        tls=parse_listener_tls(tls) if tls is not None else None,
        # Default: allowedRoutes "namespaces: {from: Same}".
        allowed_routes=parse_allowed_routes(routes) if routes is not None else m.AllowedRoutes(),
    )


def _check_listeners(spec: Obj, listeners: Sequence[m.Listener], objs: Sequence[Obj]) -> None:
    seen_names: set[str] = set()
    seen_combo: set[tuple[int, str, str | None]] = set()
    for listener, o in zip(listeners, objs, strict=True):
        proto = listener.protocol
        # CEL: "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']".
        if proto in ("HTTP", "TCP", "UDP") and o.has("tls"):
            o.add("tls", f"must not be specified for protocol {proto}")
        # CEL: "tls mode must be Terminate for protocol HTTPS".
        if (
            proto == "HTTPS"
            and listener.tls is not None
            and listener.tls.mode is not m.TLSModeType.TERMINATE
        ):
            o.add("tls.mode", "must be Terminate for protocol HTTPS")
        # CEL: "tls mode must be set for protocol TLS".
        if proto == "TLS" and listener.tls is None:
            o.add("tls", "is required for protocol TLS (with mode Terminate or Passthrough)")
        # CEL: "hostname must not be specified for protocols ['TCP', 'UDP']".
        if proto in ("TCP", "UDP") and listener.hostname is not None:
            o.add("hostname", f"must not be specified for protocol {proto}")
        # CEL: "Listener name must be unique within the Gateway".
        if listener.name and listener.name in seen_names:
            o.add(
                "name",
                f"duplicate listener name {show(listener.name)}; "
                "listener names must be unique within the Gateway",
            )
        seen_names.add(listener.name)
        # CEL: "Combination of port, protocol and hostname must be unique for each
        # listener".
        combo = (listener.port, proto, listener.hostname)
        if combo in seen_combo:
            o.add(
                "",
                "the combination of port, protocol and hostname must be unique for each listener",
            )
        seen_combo.add(combo)


def _parse_addresses(spec: Obj) -> tuple[m.GatewayAddress, ...]:
    out: list[m.GatewayAddress] = []
    seen: set[tuple[str, str]] = set()
    for a in spec.objs("addresses", ADDRESS_FIELDS, max_items=16):
        atype = a.str_("type", min_len=1, max_len=253, syntax=ADDRESS_TYPE) or "IPAddress"
        value = a.str_("value", max_len=253) or ""
        if atype == "IPAddress" and a.has("value") and not _is_ip(value):
            a.add("value", f"{show(value)} is not an IPv4 or IPv6 address (type IPAddress)")
        if atype == "Hostname" and value and not HOSTNAME.regex.fullmatch(value):
            a.add("value", f"{show(value)} is not {HOSTNAME.what} (type Hostname)")
        # CEL: "IPAddress values must be unique", "Hostname values must be unique".
        if atype in ("IPAddress", "Hostname") and value:
            if (atype, value) in seen:
                a.add(
                    "value", f"duplicate {atype} value {show(value)}; {atype} values must be unique"
                )
            seen.add((atype, value))
        out.append(m.GatewayAddress(type=atype, value=value))
    return tuple(out)


def _client_cert_ref(spec: Obj, key: str) -> m.SecretObjectReference | None:
    holder = spec.sub(key, CLIENT_CERT_FIELDS)
    if holder is None:
        return None
    ref = holder.sub("clientCertificateRef", SECRET_REF_FIELDS)
    return parse_secret_ref(ref) if ref is not None else None


def _gateway_frontend(
    tls: Obj | None,
) -> tuple[m.FrontendValidation | None, dict[int, m.FrontendValidation]]:
    """spec.tls.frontend: the default client validation and the per-port overrides."""
    if tls is None:
        return None, {}
    frontend = tls.sub("frontend", FRONTEND_FIELDS)
    if frontend is None:
        return None, {}
    default: m.FrontendValidation | None = None
    d = frontend.sub("default", FRONTEND_TLS_FIELDS, required=True)
    if d is not None:
        v = d.sub("validation", FRONTEND_VALIDATION_FIELDS)
        default = parse_frontend_validation(v, max_refs=16) if v is not None else None
    per_port: dict[int, m.FrontendValidation] = {}
    for p in frontend.objs("perPort", PER_PORT_FIELDS, max_items=64):
        port = _port(p, required=True)
        t = p.sub("tls", FRONTEND_TLS_FIELDS, required=True)
        v = t.sub("validation", FRONTEND_VALIDATION_FIELDS) if t is not None else None
        if port is None or v is None:
            continue
        # CEL: "Port for TLS configuration must be unique within the Gateway".
        if port in per_port:
            p.add(
                "port",
                f"duplicate port {port}; "
                "the port for TLS configuration must be unique within the Gateway",
            )
        per_port[port] = parse_frontend_validation(v, max_refs=16)
    return default, per_port


def parse_gateway(meta: m.Meta, doc: Obj, version: str) -> m.Gateway:
    spec = _spec(doc, GATEWAY_SPEC_FIELDS)
    objs = spec.objs("listeners", LISTENER_FIELDS, required=True, min_items=1, max_items=64)
    listeners = [parse_listener(o) for o in objs]
    _check_listeners(spec, listeners, objs)
    tls = spec.sub("tls", GATEWAY_TLS_FIELDS)
    default_fv, per_port_fv = _gateway_frontend(tls)
    if default_fv is not None or per_port_fv:
        # spec.tls.frontend applies to every listener that terminates TLS; a listener's
        # own tls.frontendValidation (the older, per-listener field) takes precedence.
        for i, listener in enumerate(listeners):
            if listener.tls is None or listener.tls.frontend_validation is not None:
                continue
            fv = per_port_fv.get(listener.port, default_fv)
            if fv is not None:
                listeners[i] = replace(listener, tls=replace(listener.tls, frontend_validation=fv))
    client_cert = _client_cert_ref(tls, "backend") if tls is not None else None
    if client_cert is None:
        client_cert = _client_cert_ref(spec, "backendTLS")
    for key in ("infrastructure", "allowedListeners"):
        spec.sub(key, None)  # admitted, not used by gatewayd
    spec.str_("defaultScope", choices=("All", "None"))
    return m.Gateway(
        meta=meta,
        gateway_class_name=spec.str_("gatewayClassName", required=True, min_len=1, max_len=253)
        or "",
        listeners=tuple(listeners),
        addresses=_parse_addresses(spec),
        backend_client_certificate_ref=client_cert,
    )


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


def _parse_target_refs(spec: Obj) -> tuple[m.PolicyTargetReference, ...]:
    objs = spec.objs(
        "targetRefs", POLICY_TARGET_REF_FIELDS, required=True, min_items=1, max_items=16
    )
    refs = tuple(
        m.PolicyTargetReference(
            group=_group(o, "", required=True),
            kind=_kind(o, "", required=True),
            name=_ref_name(o),
            section_name=o.str_("sectionName", min_len=1, max_len=253, syntax=SECTION_NAME),
        )
        for o in objs
    )
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
            group=_group(r, "", required=True), kind=_kind(r, "", required=True), name=_ref_name(r)
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
    spec = _spec(doc, BACKEND_TLS_POLICY_SPEC_FIELDS)
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


# --------------------------------------------------------------------------- GatewayClass

GATEWAY_CLASS_SPEC_FIELDS = ("controllerName", "description", "parametersRef")
PARAMETERS_REF_FIELDS = ("group", "kind", "name", "namespace")


def parse_gateway_class(meta: m.Meta, doc: Obj, version: str) -> m.GatewayClass:
    spec = _spec(doc, GATEWAY_CLASS_SPEC_FIELDS)
    params = spec.sub("parametersRef", PARAMETERS_REF_FIELDS)
    if params is not None:  # admitted, not used by gatewayd
        _group(params, "", required=True)
        _kind(params, "", required=True)
        _ref_name(params)
        _ref_namespace(params)
    return m.GatewayClass(
        meta=meta,
        controller_name=spec.str_(
            "controllerName", required=True, min_len=1, max_len=253, syntax=CONTROLLER_NAME
        )
        or "",
        description=spec.str_("description", max_len=64),
    )


# --------------------------------------------------------------------------- ReferenceGrant

REFERENCE_GRANT_SPEC_FIELDS = ("from", "to")


def parse_reference_grant(meta: m.Meta, doc: Obj, version: str) -> m.ReferenceGrant:
    spec = _spec(doc, REFERENCE_GRANT_SPEC_FIELDS)
    froms = tuple(
        m.ReferenceGrantFrom(
            group=_group(f, "", required=True),
            kind=_kind(f, "", required=True),
            namespace=f.str_("namespace", required=True, min_len=1, max_len=63, syntax=DNS_LABEL)
            or "",
        )
        for f in spec.objs(
            "from", ("group", "kind", "namespace"), required=True, min_items=1, max_items=16
        )
    )
    tos = tuple(
        m.ReferenceGrantTo(
            group=_group(t, "", required=True),
            kind=_kind(t, "", required=True),
            name=t.str_("name", min_len=1, max_len=253),
        )
        for t in spec.objs(
            "to", ("group", "kind", "name"), required=True, min_items=1, max_items=16
        )
    )
    return m.ReferenceGrant(meta=meta, from_=froms, to=tos)


def _spec(doc: Obj, allowed: Collection[str]) -> Obj:
    spec = doc.sub("spec", allowed, required=True)
    return spec if spec is not None else Obj.empty(doc.at("spec"), doc.issues)


# --------------------------------------------------------------------------- core kinds

SERVICE_SPEC_FIELDS = (
    "ports",
    "selector",
    "clusterIP",
    "clusterIPs",
    "type",
    "externalIPs",
    "sessionAffinity",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "ipFamilies",
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
    "trafficDistribution",
)
SERVICE_PORT_FIELDS = ("name", "protocol", "appProtocol", "port", "targetPort", "nodePort")
PROTOCOLS = ("TCP", "UDP", "SCTP")


def parse_service(meta: m.Meta, doc: Obj, version: str) -> m.Service:
    spec = doc.sub("spec", SERVICE_SPEC_FIELDS) or Obj.empty(doc.at("spec"), doc.issues)
    ports: list[m.ServicePort] = []
    port_objs = spec.objs("ports", SERVICE_PORT_FIELDS)
    for p in port_objs:
        target: int | str | None = None
        raw_target = p.data.get("targetPort")
        if isinstance(raw_target, str):
            target = p.str_("targetPort", min_len=1, max_len=15)
        elif raw_target is not None:
            target = _port(p, "targetPort")
        p.int_("nodePort", minimum=0, maximum=65535)
        ports.append(
            m.ServicePort(
                name=p.str_("name", max_len=63) or None,
                port=_port(p, required=True) or 0,
                target_port=target,
                protocol=p.str_("protocol", choices=PROTOCOLS) or "TCP",
                app_protocol=p.str_("appProtocol"),
            )
        )
    _unique_names(
        [(pt.name, o.at("name")) for pt, o in zip(ports, port_objs, strict=True)],
        spec.issues,
        "port name",
    )
    # spec.clusterIPs, else spec.clusterIP; "None" marks a headless Service.
    ips = spec.strs("clusterIPs", max_items=2)
    if not ips:
        single = spec.str_("clusterIP")
        ips = (single,) if single else ()
    return m.Service(
        meta=meta,
        type=spec.str_("type", choices=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"))
        or "ClusterIP",
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"),
        ports=tuple(ports),
        selector=spec.str_map("selector"),
    )


ENDPOINT_FIELDS = (
    "addresses",
    "conditions",
    "hostname",
    "targetRef",
    "nodeName",
    "zone",
    "hints",
    "deprecatedTopology",
)
ENDPOINT_CONDITION_FIELDS = ("ready", "serving", "terminating")
ENDPOINT_PORT_FIELDS = ("name", "protocol", "port", "appProtocol")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def parse_endpoint_slice(meta: m.Meta, doc: Obj, version: str) -> m.EndpointSlice:
    address_type = (
        doc.str_("addressType", required=True, choices=("IPv4", "IPv6", "FQDN")) or "IPv4"
    )
    ports = tuple(
        m.EndpointPort(
            # An empty name is the unnamed port: normalised to None.
            name=p.str_("name", max_len=63) or None,
            port=_port(p),
            protocol=p.str_("protocol", choices=PROTOCOLS) or "TCP",
            app_protocol=p.str_("appProtocol"),
        )
        for p in doc.objs("ports", ENDPOINT_PORT_FIELDS, max_items=20000)
    )
    endpoints: list[m.Endpoint] = []
    for e in doc.objs("endpoints", ENDPOINT_FIELDS, max_items=1000):
        addresses = e.strs("addresses", required=True, min_items=1, max_items=100, min_len=1)
        if address_type in ("IPv4", "IPv6"):
            for i, a in enumerate(addresses):
                if not _is_ip(a) or (address_type == "IPv4") != ("." in a and ":" not in a):
                    e.issues.add(
                        f"{e.at('addresses')}[{i}]", f"{show(a)} is not an {address_type} address"
                    )
        cond = e.sub("conditions", ENDPOINT_CONDITION_FIELDS) or Obj.empty(
            e.at("conditions"), e.issues
        )
        ready = cond.bool_("ready")
        serving = cond.bool_("serving")
        terminating = cond.bool_("terminating")
        target = e.sub("targetRef", None)
        target_name = target.str_("name") if target is not None else None
        endpoints.append(
            m.Endpoint(
                addresses=addresses,
                # "ready ... nil ... should be interpreted as ready".
                ready=True if ready is None else ready,
                serving=True if serving is None else serving,
                terminating=False if terminating is None else terminating,
                hostname=e.str_("hostname", max_len=63),
                target_ref_name=target_name,
            )
        )
    return m.EndpointSlice(
        meta=meta,
        service_name=meta.label_map().get(SERVICE_NAME_LABEL),
        address_type=address_type,
        ports=ports,
        endpoints=tuple(endpoints),
    )


def _data_keys(doc: Obj, key: str) -> list[tuple[str, object, str]]:
    value = doc.data.get(key)
    if value is None:
        return []
    path = doc.at(key)
    if not isinstance(value, Mapping):
        doc.issues.add(path, f"must be a mapping of keys to values, got {describe(value)}")
        return []
    out: list[tuple[str, object, str]] = []
    for k, v in value.items():
        if not isinstance(k, str):
            doc.issues.add(path, f"keys must be strings, got {describe(k)}")
            continue
        check_str(k, path, doc.issues, max_len=253, syntax=CONFIG_KEY)
        out.append((k, v, join(path, k)))
    return out


def _base64(value: object, path: str, issues: Issues) -> bytes | None:
    text = check_str(value, path, issues)
    if text is None:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        issues.add(
            path,
            "is not valid base64 (data values are base64-encoded; use stringData for plain text)",
        )
        return None


def parse_secret(meta: m.Meta, doc: Obj, version: str) -> m.Secret:
    data: dict[str, bytes] = {}
    for k, v, path in _data_keys(doc, "data"):
        decoded = _base64(v, path, doc.issues)
        if decoded is not None:
            data[k] = decoded
    # "stringData ... is merged into the data field on write, overwriting any existing
    # values."
    for k, v, path in _data_keys(doc, "stringData"):
        text = check_str(v, path, doc.issues)
        if text is not None:
            data[k] = text.encode("utf-8")
    doc.bool_("immutable")
    return m.Secret(
        meta=meta,
        type=doc.str_("type", min_len=1) or "Opaque",
        data=tuple(data.items()),
    )


def parse_config_map(meta: m.Meta, doc: Obj, version: str) -> m.ConfigMap:
    data: dict[str, str] = {}
    for k, v, path in _data_keys(doc, "data"):
        text = check_str(v, path, doc.issues)
        if text is not None:
            data[k] = text
    for k, v, path in _data_keys(doc, "binaryData"):
        if k in data:
            doc.issues.add(path, f"key {show(k)} is also in data; a key may appear in only one")
        decoded = _base64(v, path, doc.issues)
        if decoded is None:
            continue
        try:
            data[k] = decoded.decode("utf-8")
        except UnicodeDecodeError:
            doc.issues.add(
                path,
                "decodes to bytes that are not UTF-8 text; gatewayd reads ConfigMap values as text",
            )
    doc.bool_("immutable")
    return m.ConfigMap(meta=meta, data=tuple(data.items()))


def parse_pod(meta: m.Meta, doc: Obj, version: str) -> m.Pod:
    doc.sub("spec", None)  # admitted, not read
    status = doc.sub("status", None)
    ips: tuple[str, ...] = ()
    if status is not None:
        # status.podIPs, else status.podIP.
        found: list[str] = []
        for item in status.objs("podIPs", ("ip",)):
            ip = item.str_("ip", required=True, min_len=1)
            if ip is not None:
                found.append(ip)
        ips = tuple(found)
        if not ips:
            single = status.str_("podIP")
            ips = (single,) if single else ()
        for i, ip in enumerate(ips):
            if not _is_ip(ip):
                status.issues.add(
                    join(status.path, f"podIPs[{i}]" if status.has("podIPs") else "podIP"),
                    f"{show(ip)} is not an IP address",
                )
    return m.Pod(meta=meta, pod_ips=ips)


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def parse_namespace(meta: m.Meta, doc: Obj, version: str) -> m.Namespace:
    doc.sub("spec", None)  # admitted, not read (finalizers)
    # "The Kubernetes control plane sets an immutable label kubernetes.io/metadata.name
    # on all namespaces", whatever the manifest says.
    labels = tuple((k, v) for k, v in meta.labels if k != NAMESPACE_NAME_LABEL)
    return m.Namespace(meta=replace(meta, labels=(*labels, (NAMESPACE_NAME_LABEL, meta.name))))
