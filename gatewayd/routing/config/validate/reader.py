"""Admission-style validation: raw manifest mappings -> typed ``model`` objects.

This module holds what every kind shares (the ``Obj`` reader, ``Issues``, syntaxes,
metadata); each ``parse_<kind>`` function, one module per kind family beside it, reads
one kind's body the way the API server would admit it:
the CRD's OpenAPI schema (types, required fields, enums, lengths, patterns, item limits),
its defaults, and its CEL ``x-kubernetes-validations`` rules.  Everything found wrong is
recorded in an ``Issues`` list as ``(field path, message)``; the caller (``config.load``)
rejects an object with any issue, so the placeholders used to keep going after an error
never leave this package in a loaded ``Config``.

Schema source: kubernetes-sigs/gateway-api ``apis/v1/*_types.go`` and the generated CRDs
(standard channel, plus the experimental fields the model carries: retry,
sessionPersistence, frontend validation, backend client certificate).

Pure module: no I/O.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from gatewayd.routing.config import model as m
from gatewayd.routing.snapshot.frozen import fast_init

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


# Field-name tuples as sets, for ``Obj.of``.  Keyed by the tuple (equal tuples built per
# call find the same set); bounded: the code holds a few dozen distinct field tuples.
_FIELD_SETS: dict[tuple[str, ...], frozenset[str]] = {}
_FIELD_SETS_MAX = 512


def _field_set(allowed: Collection[str]) -> frozenset[str] | None:
    if type(allowed) is frozenset:
        return allowed
    if type(allowed) is not tuple:
        return None
    names = _FIELD_SETS.get(allowed)
    if names is None:
        if len(_FIELD_SETS) >= _FIELD_SETS_MAX:
            _FIELD_SETS.clear()
        names = _FIELD_SETS[allowed] = frozenset(allowed)
    return names


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
        if type(value) is dict and allowed is not None:
            # The common case, a plain mapping of known fields, read as it is: one set
            # comparison in C instead of a check and a copy per field.
            names = _field_set(allowed)
            if names is not None and value.keys() <= names:
                return cls(value, path, issues)
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
        if type(value) is str:
            # The common case, a valid string, without building the field's path.
            if choices is not None:
                if value in choices:
                    return value
            elif (
                len(value) >= min_len
                and (max_len is None or len(value) <= max_len)
                and (syntax is None or syntax.regex.fullmatch(value))
            ):
                return value
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
        choices = [str(c.value) for c in allowed] if allowed is not None else _enum_values(cls)
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


def unique_names(objs: Sequence[tuple[str | None, str]], issues: Issues, what: str) -> None:
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


@fast_init
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


def read_spec(doc: Obj, allowed: Collection[str]) -> Obj:
    spec = doc.sub("spec", allowed, required=True)
    return spec if spec is not None else Obj.empty(doc.at("spec"), doc.issues)


@functools.cache
def _enum_values(cls: type[Enum]) -> list[str]:
    """The values of an enum, as ``enum_`` offers them (computed once per enum)."""
    return [str(c.value) for c in cls]
