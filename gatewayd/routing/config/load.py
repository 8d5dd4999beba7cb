"""YAML manifests -> ``model.Config`` plus every ``model.Problem`` found.

The loader behaves like the API server admitting the objects one by one: each object is
checked against its CRD schema and CEL rules (``config.validate``); an invalid object is
rejected alone and reported, everything else still loads.  It never raises for bad
input: broken YAML, wrong types and unknown fields all become Problems naming the file,
the document, the object and the field.

It also does what the control plane would do around admission: default namespaces,
create the namespaces objects refer to, label every Namespace with
``kubernetes.io/metadata.name``, and track ``metadata.generation`` across reloads from a
digest of each object's spec.

``load_documents`` is pure; only ``read_config_files`` / ``load_paths`` touch files.

Reading is bounded (``ConfigLimits``): a file larger than ``max_file_bytes`` or beyond
``max_total_bytes`` is not read, and YAML composition stops after ``max_nodes`` nodes,
an alias counting as every node it repeats.  Each refusal is a Problem naming the file,
so a reload that brings one keeps the last good configuration.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

import yaml

from gatewayd.routing.config import model as m
from gatewayd.routing.config.loadcache import CachedFile, CachedObject, LoadCache, ObjectCache
from gatewayd.routing.config.validate import reader
from gatewayd.routing.config.validate.core import (
    NAMESPACE_NAME_LABEL,
    parse_config_map,
    parse_endpoint_slice,
    parse_namespace,
    parse_pod,
    parse_secret,
    parse_service,
)
from gatewayd.routing.config.validate.gateways import parse_gateway, parse_gateway_class
from gatewayd.routing.config.validate.l4routes import parse_tcp_route, parse_udp_route
from gatewayd.routing.config.validate.listenersets import parse_listener_set
from gatewayd.routing.config.validate.policies import (
    parse_backend_lb_policy,
    parse_backend_tls_policy,
    parse_reference_grant,
)
from gatewayd.routing.config.validate.rejected import STATUS_KINDS, rejected_object
from gatewayd.routing.config.validate.routes import (
    parse_grpc_route,
    parse_http_route,
    parse_tls_route,
)
from gatewayd.routing.config.yamlblock import block_documents
from gatewayd.routing.config.yamlfast import fast_documents

GenerationKey: TypeAlias = tuple[str, str, str]  # (kind, namespace, name)
Generations: TypeAlias = Mapping[GenerationKey, tuple[str, int]]  # -> (spec digest, generation)

_GW = m.GATEWAY_GROUP
_Parser: TypeAlias = Callable[[m.Meta, reader.Obj, str], object]
_T = TypeVar("_T")


class ConfigPathError(Exception):
    """A configuration path that does not exist or cannot be read."""


MIB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigLimits:
    """How much configuration one load reads (``gatewayd run`` / ``check`` flags).

    The defaults leave room for far more objects than a cluster's Gateway API config
    (etcd, which stores a cluster's objects, refuses a request over 1.5 MiB by default)
    while bounding memory: block-style manifests take about 8 bytes per YAML node, so
    1,000,000 nodes is some 8 MiB of YAML (about 130 MB of memory once loaded); the
    same nodes written flow-style in one document are the worst case, measured at
    685 MB peak RSS while PyYAML composes them.
    """

    max_file_bytes: int = 4 * MIB  # --max-config-file-size
    max_total_bytes: int = 16 * MIB  # --max-config-size: every file together
    max_nodes: int = 1_000_000  # --max-config-nodes: every file together, aliases expanded


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    config: m.Config
    problems: tuple[m.Problem, ...]  # every error; an invalid object is rejected alone
    notices: tuple[str, ...]  # e.g. one line per skipped unknown kind
    # One warning per skipped object (a kind gatewayd does not read), with its source.
    skipped: tuple[m.Problem, ...] = ()
    # (kind, namespace, name) -> (spec digest, generation): pass back as ``previous``.
    generations: Mapping[GenerationKey, tuple[str, int]] = field(default_factory=dict)


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True, slots=True, kw_only=True)
class _KindInfo:
    kind: m.Kind
    group: str
    versions: tuple[str, ...]
    namespaced: bool
    top_level: frozenset[str]  # allowed top-level fields besides apiVersion/kind/metadata
    parse: _Parser
    name_syntax: reader.Syntax = reader.DNS_SUBDOMAIN

    def api_versions(self) -> list[str]:
        return [f"{self.group}/{ver}" if self.group else ver for ver in self.versions]


_SPEC_STATUS = frozenset({"spec", "status"})
_OBJECT_FIELDS = frozenset({"apiVersion", "kind", "metadata"})  # besides top_level
_KINDS: dict[str, _KindInfo] = {
    info.kind.value: info
    for info in (
        _KindInfo(
            kind=m.Kind.GATEWAY_CLASS,
            group=_GW,
            versions=("v1", "v1beta1"),
            namespaced=False,
            top_level=_SPEC_STATUS,
            parse=parse_gateway_class,
        ),
        _KindInfo(
            kind=m.Kind.GATEWAY,
            group=_GW,
            versions=("v1", "v1beta1"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_gateway,
        ),
        _KindInfo(
            kind=m.Kind.HTTP_ROUTE,
            group=_GW,
            versions=("v1", "v1beta1"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_http_route,
        ),
        _KindInfo(
            kind=m.Kind.GRPC_ROUTE,
            group=_GW,
            versions=("v1", "v1alpha2"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_grpc_route,
        ),
        _KindInfo(
            kind=m.Kind.TLS_ROUTE,
            group=_GW,
            versions=("v1", "v1alpha3", "v1alpha2"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_tls_route,
        ),
        # TCPRoute and UDPRoute: v1 since Gateway API v1.6 (the version the upstream
        # conformance suite uses), v1alpha2 in the experimental channel before.
        _KindInfo(
            kind=m.Kind.TCP_ROUTE,
            group=_GW,
            versions=("v1", "v1alpha2"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_tcp_route,
        ),
        _KindInfo(
            kind=m.Kind.UDP_ROUTE,
            group=_GW,
            versions=("v1", "v1alpha2"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_udp_route,
        ),
        _KindInfo(
            kind=m.Kind.REFERENCE_GRANT,
            group=_GW,
            versions=("v1beta1", "v1", "v1alpha2"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_reference_grant,
        ),
        _KindInfo(
            kind=m.Kind.BACKEND_TLS_POLICY,
            group=_GW,
            versions=("v1", "v1alpha3"),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_backend_tls_policy,
        ),
        _KindInfo(
            kind=m.Kind.LISTENER_SET,
            group=_GW,
            versions=("v1",),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_listener_set,
        ),
        _KindInfo(
            # Experimental channel, Gateway API v1.2-v1.3 (GEP-1619; superseded upstream
            # by BackendTrafficPolicy, which gatewayd does not read yet).
            kind=m.Kind.BACKEND_LB_POLICY,
            group=_GW,
            versions=("v1alpha2",),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_backend_lb_policy,
        ),
        _KindInfo(
            kind=m.Kind.NAMESPACE,
            group="",
            versions=("v1",),
            namespaced=False,
            top_level=_SPEC_STATUS,
            parse=parse_namespace,
            name_syntax=reader.DNS_LABEL,
        ),
        _KindInfo(
            kind=m.Kind.SERVICE,
            group="",
            versions=("v1",),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_service,
            name_syntax=reader.DNS1035_LABEL,
        ),
        _KindInfo(
            kind=m.Kind.ENDPOINT_SLICE,
            group="discovery.k8s.io",
            versions=("v1",),
            namespaced=True,
            top_level=frozenset({"addressType", "endpoints", "ports"}),
            parse=parse_endpoint_slice,
        ),
        _KindInfo(
            kind=m.Kind.SECRET,
            group="",
            versions=("v1",),
            namespaced=True,
            top_level=frozenset({"data", "stringData", "type", "immutable"}),
            parse=parse_secret,
        ),
        _KindInfo(
            kind=m.Kind.CONFIG_MAP,
            group="",
            versions=("v1",),
            namespaced=True,
            top_level=frozenset({"data", "binaryData", "immutable"}),
            parse=parse_config_map,
        ),
        _KindInfo(
            kind=m.Kind.POD,
            group="",
            versions=("v1",),
            namespaced=True,
            top_level=_SPEC_STATUS,
            parse=parse_pod,
        ),
    )
}
_LIST_KINDS = frozenset({"List", *(f"{k}List" for k in _KINDS)})


# Gateway API kinds gatewayd does not read (skipped with a warning, like any other kind):
# a kind of a Gateway API group outside this set and _KINDS is a typo (an error).
_OTHER_GATEWAY_API_KINDS = frozenset(
    {
        "TCPRoute",
        "UDPRoute",
        "BackendLBPolicy",
        "BackendTrafficPolicy",
        "XBackendTrafficPolicy",
        "ListenerSet",
        "XListenerSet",
        "XMesh",
    }
)
_GATEWAY_API_GROUPS = frozenset({_GW, "gateway.networking.x-k8s.io"})
SKIPPED_NOTICE = "not a kind gatewayd reads"


def _misspelt_gateway_kind(kind: str, group: str) -> str | None:
    """The message for a kind that no Gateway API group has, else None."""
    known = {k for k, info in _KINDS.items() if info.group == _GW} | _OTHER_GATEWAY_API_KINDS
    if group not in _GATEWAY_API_GROUPS or kind in known or kind.removesuffix("List") in known:
        return None
    close = difflib.get_close_matches(kind, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{reader.show(kind)} is not a kind of the Gateway API ({group}){hint}"


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _is_foreign_group(group: str, info: _KindInfo) -> bool:
    """True for another API's kind of the same name (e.g. a Knative ``Service``).

    A core (``v1``) or ``*.k8s.io`` group is taken as a typo for the right one and
    reported; any other group is some other project's kind and is skipped.
    """
    return group != info.group and group != "" and not group.endswith("k8s.io")


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as the strings they were written as."""


# YAML 1.1 also reads 1:30 as the base-60 integer 90; Kubernetes' YAML reader does not,
# so those stay strings (and get the usual "must be a string/integer" problems).
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"""
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"""
    r"""|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"""
)
_REPLACED = {"tag:yaml.org,2002:int": _INT, "tag:yaml.org,2002:float": _FLOAT}
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, _REPLACED.get(tag, regexp))
        for tag, regexp in resolvers
        if tag != "tag:yaml.org,2002:timestamp"
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class _PlainResolver(yaml.resolver.Resolver):
    """``_Loader``'s scalar resolution, for ``yamlfast``."""

    yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


_RESOLVER = _PlainResolver()


class _NodeBudget:
    """The YAML nodes one load may still compose, shared by all its files."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def charge(self, nodes: int, mark: yaml.Mark | None) -> None:
        self.left -= nodes
        if self.left < 0:
            raise _TooManyNodes(
                None,
                None,
                f"the configuration holds more than {self.limit} YAML nodes, an alias "
                "counting as every node it repeats (raise --max-config-nodes if it is "
                "really this large)",
                mark,
            )


class _TooManyNodes(yaml.MarkedYAMLError):
    """The node budget ran out (a huge file, or an alias bomb)."""


class _Budgeted:
    """Charges every composed node to a ``_NodeBudget`` (a mixin of the loaders below).

    An alias composes to the very node it names, so PyYAML itself stays small, but
    everything that walks the data afterwards (validation, the spec digest, JSON dumps)
    sees the expansion: nine anchors each repeating the previous one nine times are
    9**9 (387 million) nodes from 1.4 KB of YAML.  So an alias is charged the weight of
    its anchor, counted while that anchor was composed, and the load stops as soon as
    the budget is spent, before anything expands.
    """

    _budget: _NodeBudget
    _weights: dict[int, int]  # id(anchored node) -> nodes it expands to

    def compose_document(self) -> yaml.Node | None:
        self._weights = {}  # anchors end with their document, as in PyYAML
        return super().compose_document()  # type: ignore[misc, no-any-return]

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]
        # Marks: yaml.error.Mark from the pure-Python parser, libyaml's own Mark class
        # from the C one; both have line and column.
        mark = event.start_mark if hasattr(event.start_mark, "line") else None
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)  # type: ignore[attr-defined]
            if target is not None:  # an unknown anchor is PyYAML's own error
                weight = self._weights.get(id(target))
                if weight is None:
                    # go-yaml (kubectl's reader) refuses these too: the data would be
                    # infinite.
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"alias *{event.anchor} refers to a node that contains it",
                        mark,
                    )
                self._budget.charge(weight, mark)
            return super().compose_node(parent, index)  # type: ignore[misc, no-any-return]
        before = self._budget.left
        self._budget.charge(1, mark)
        node = super().compose_node(parent, index)  # type: ignore[misc]
        if getattr(event, "anchor", None) is not None:
            self._weights[id(node)] = before - self._budget.left
        return node  # type: ignore[no-any-return]


class _BoundedLoader(_Budgeted, _Loader):
    """The pure-Python loader, budgeted (used where PyYAML was built without libyaml)."""

    def __init__(self, stream: str, budget: _NodeBudget) -> None:
        super().__init__(stream)
        self._budget = budget
        self._weights = {}


if yaml.__with_libyaml__:
    CParser: Any = getattr(yaml.cyaml, "CParser")  # noqa: B009 (not in the type stubs)

    class _FastBoundedLoader(
        _Budgeted,
        yaml.composer.Composer,
        CParser,  # type: ignore[misc]
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """libyaml scans and parses (its events carry the same marks); the nodes are
        composed in Python, so the budget sees every alias where it is written.  About
        ten times faster than the pure-Python loader on large configurations (10,000
        HTTPRoutes: most of the load time was the pure-Python scanner and parser)."""

        yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers

        def __init__(self, stream: str, budget: _NodeBudget) -> None:
            CParser.__init__(self, stream)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)
            yaml.composer.Composer.__init__(self)
            self._budget = budget
            self._weights = {}

    _LOADER: type[_BoundedLoader] | type[_FastBoundedLoader] = _FastBoundedLoader
else:  # pragma: no cover - PyYAML without libyaml
    _LOADER = _BoundedLoader


def _yaml_documents(
    filename: str, text: str, budget: _NodeBudget
) -> Iterator[tuple[int, object | None, m.Problem | None]]:
    """(document index, data, problem); a parse error ends the file's documents."""
    start = budget.left
    # Block-style text line by line first, else libyaml's events (``yamlblock``,
    # ``yamlfast``); either returns None for text it does not read, and an error (the
    # budget ran out) leaves it to the node-graph loader, which reports where.
    try:
        fast = block_documents(text, _RESOLVER, budget.charge)
    except Exception:
        fast = None
    if fast is None:
        budget.left = start
        try:
            fast = fast_documents(text, _RESOLVER, budget.charge)
        except Exception:
            fast = None
    if fast is not None:
        yield from ((i, data, None) for i, data in enumerate(fast))
        return
    budget.left = start
    index = 0
    loader: Any = None
    before = budget.left
    try:
        # Inside the try: the reader already refuses unprintable characters here.
        loader = _LOADER(text, budget)
        while True:
            before = budget.left
            if not loader.check_data():
                break
            yield index, loader.get_data(), None
            index += 1
    except _TooManyNodes as exc:
        # The refused document is dropped, so its nodes go back to the other files.
        budget.left = before
        mark = exc.problem_mark
        where = f" (at line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        message = f"{exc.problem}{where}; the rest of this file is not read"
        yield index, None, _problem_at(filename, index, message)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        yield (
            index,
            None,
            _problem_at(
                filename, index, f"invalid YAML{where}: {what}; the rest of this file is not read"
            ),
        )
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        yield (
            index,
            None,
            _problem_at(filename, index, f"invalid YAML: {exc}; the rest of this file is not read"),
        )
    finally:
        if loader is not None:
            loader.dispose()


def _problem_at(filename: str, index: int, message: str) -> m.Problem:
    return m.Problem(source=m.Source(file=filename, index=index), message=message)


# --------------------------------------------------------------------------- digest


# One encoder for every digest: json.dumps with these options builds a JSONEncoder per
# call, ~1.2 of the ~12 us a route's digest costs (10,000 routes: ~12 ms of a load).
_DIGEST_JSON: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)


def spec_digest(doc: Mapping[str, object]) -> str:
    """A stable hash of everything in an object but apiVersion, kind, metadata, status."""
    body = {
        k: val for k, val in doc.items() if k not in ("apiVersion", "kind", "metadata", "status")
    }
    try:
        text = _DIGEST_JSON.encode(body)
    except (TypeError, ValueError, RecursionError):
        text = repr(body)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------- loading


class _Loading:
    """The state of one ``load_documents`` call."""

    def __init__(self, previous: Generations | None, *, admitted: bool = False) -> None:
        self.previous: Generations = previous or {}
        self.admitted = admitted  # objects an API server admitted: unknown fields ignored
        self.problems: list[m.Problem] = []
        self.skipped: dict[str, int] = {}
        self.skipped_objects: list[m.Problem] = []
        self.seen: dict[GenerationKey, m.Source] = {}
        self.generations: dict[GenerationKey, tuple[str, int]] = {}
        self.objects: dict[m.Kind, list[object]] = {k: [] for k in m.Kind}
        self.rejected: list[m.RejectedObject] = []

    def problem(
        self,
        source: m.Source,
        message: str,
        *,
        kind: str = "",
        namespace: str = "",
        name: str = "",
        path: str = "",
    ) -> None:
        self.problems.append(
            m.Problem(
                source=source,
                kind=kind,
                namespace=namespace,
                name=name,
                field=path,
                message=message,
            )
        )

    def document(self, data: object, source: m.Source) -> tuple[bool, CachedObject | None]:
        """Read one document: (clean, the object it gave).  Clean: an empty document or
        one object read without any problem, notice or rejection (``LoadCache``)."""
        if data is None:
            return True, None  # an empty document
        if not isinstance(data, Mapping):
            self.problem(
                source,
                "a document must be a mapping with apiVersion and kind, got "
                f"{reader.describe(data)}",
            )
            return False, None
        kind = data.get("kind")
        if isinstance(kind, str) and kind in _LIST_KINDS:
            self.list_document(data, source)
            return False, None
        record = self.read_object(data, source, "")
        return record is not None, record

    def reuse(self, filename: str, entry: CachedFile, budget: _NodeBudget) -> bool:
        """Add the objects of a cached clean file as reading it would; False (nothing
        added) when reading it could give anything else: the budget is short, an
        object is already defined by an earlier file, or a generation moved."""
        if budget.left < entry.nodes:
            return False
        if not all(r is None or self._reusable(r) for r in entry.objects):
            return False
        budget.left -= entry.nodes
        for index, record in enumerate(entry.objects):
            if record is not None:
                self._add(record, m.Source(file=filename, index=index))
        return True

    def reuse_object(self, source: m.Source, record: CachedObject) -> bool:
        """``reuse`` for one object an API server returned (``ObjectCache``)."""
        if not self._reusable(record):
            return False
        self._add(record, source)
        return True

    def _reusable(self, record: CachedObject) -> bool:
        """Reading the object again would give ``record``: not already defined, and the
        same generation against this load's previous generations."""
        if record.key[2] and record.key in self.seen:
            return False
        return self._generation(record.key, record.digest, record.given) == record.generation

    def _add(self, record: CachedObject, source: m.Source) -> None:
        if record.key[2]:
            self.seen[record.key] = source
        self.generations[record.key] = (record.digest, record.generation)
        self.objects[record.kind].append(record.obj)

    def list_document(self, data: Mapping[object, object], source: m.Source) -> None:
        items = data.get("items")
        if items is None:
            return
        if not isinstance(items, list):
            self.problem(
                source,
                f"must be a list of objects, got {reader.describe(items)}",
                kind="List",
                path="items",
            )
            return
        for i, item in enumerate(items):
            prefix = f"items[{i}]"
            if not isinstance(item, Mapping):
                self.problem(
                    source,
                    f"must be an object with apiVersion and kind, got {reader.describe(item)}",
                    path=prefix,
                )
            elif isinstance(item.get("kind"), str) and item.get("kind") in _LIST_KINDS:
                self.problem(source, "a List inside a List is not supported", path=prefix)
            else:
                self.read_object(item, source, prefix)

    def read_object(
        self, data: Mapping[object, object], source: m.Source, prefix: str
    ) -> CachedObject | None:
        """Read one object; what it added when it was read without any problem."""
        try:
            return self._object(data, source, prefix)
        except Exception as exc:
            self.problem(
                source, f"could not read this object: {type(exc).__name__}: {exc}", path=prefix
            )
            return None

    def _object(
        self, data: Mapping[object, object], source: m.Source, prefix: str
    ) -> CachedObject | None:
        kind, api_version = data.get("kind"), data.get("apiVersion")
        name_hint = _name_hint(data)
        if not isinstance(kind, str) or not kind:
            got = "" if kind is None else f", got {reader.describe(kind)}"
            self.problem(
                source,
                f"is required: a string such as HTTPRoute{got}",
                name=name_hint,
                path=reader.join(prefix, "kind"),
            )
            return None
        if not isinstance(api_version, str) or not api_version:
            got = "" if api_version is None else f", got {reader.describe(api_version)}"
            self.problem(
                source,
                f"is required: a string such as gateway.networking.k8s.io/v1{got}",
                kind=kind,
                name=name_hint,
                path=reader.join(prefix, "apiVersion"),
            )
            return None
        group, version = _split_api_version(api_version)
        info = _KINDS.get(kind)
        if info is None or (
            api_version not in info.api_versions() and _is_foreign_group(group, info)
        ):
            misspelt = _misspelt_gateway_kind(kind, group) if info is None else None
            if misspelt is not None:
                self.problem(
                    source,
                    misspelt,
                    kind=kind,
                    namespace=_namespace_hint(data),
                    name=name_hint,
                    path=reader.join(prefix, "kind"),
                )
                return None
            label = kind if info is None else f"{kind} ({api_version})"
            self.skipped[label] = self.skipped.get(label, 0) + 1
            self.skipped_objects.append(
                m.Problem(
                    source=source,
                    kind=kind if info is None else f"{kind} ({api_version})",
                    namespace=_namespace_hint(data),
                    name=name_hint,
                    message=f"skipped: {SKIPPED_NOTICE}",
                )
            )
            return None

        issues = reader.Issues(ignore_unknown_fields=self.admitted)
        meta_read = reader.read_meta(
            data.get("metadata"),
            "metadata",
            issues,
            namespaced=info.namespaced,
            name_syntax=info.name_syntax,
        )
        # Name problems by what the file says even when that name is itself invalid.
        who = {"kind": kind, "namespace": meta_read.namespace, "name": meta_read.name or name_hint}
        if api_version not in info.api_versions():
            self.problem(
                source,
                f"{reader.show(api_version)} is not served for {kind}; use "
                f"{' or '.join(info.api_versions())}",
                path=reader.join(prefix, "apiVersion"),
                **who,
            )
            return None
        key: GenerationKey = (kind, meta_read.namespace, meta_read.name)
        if meta_read.name and not issues.items:
            first = self.seen.get(key)
            if first is not None:
                self.problem(
                    source,
                    f"already defined at {first}; this later definition is ignored",
                    path=prefix,
                    **who,
                )
                return None
            self.seen[key] = source

        doc = reader.Obj.of(data, "", issues, _OBJECT_FIELDS | info.top_level) or reader.Obj.empty(
            "", issues
        )
        digest = spec_digest(doc.data)
        generation = self._generation(key, digest, meta_read.generation)
        meta = meta_read.meta(generation=generation, source=source)
        obj = info.parse(meta, doc, version)
        if issues.items:
            for path, message in issues.items:
                self.problem(source, message, path=reader.join(prefix, path), **who)
            # Kept for its own status (control.rejected): "an invalid object is reported
            # in its own status and skipped; the rest keeps serving" (issue 13).
            record = rejected_object(info.kind, meta, data, issues.items, admitted=self.admitted)
            if record is not None:
                self.rejected.append(record)
            # A rejected update keeps the generation it had (the API server would not
            # have stored it), so fixing it later counts as one change.
            if key in self.previous:
                self.generations[key] = self.previous[key]
            return None
        self.generations[key] = (digest, generation)
        self.objects[info.kind].append(obj)
        return CachedObject(info.kind, key, digest, meta_read.generation, generation, obj)

    def _generation(self, key: GenerationKey, digest: str, given: int | None) -> int:
        if given is not None:
            return given
        before = self.previous.get(key)
        if before is None:
            return 1
        old_digest, old_generation = before
        # "generation: A sequence number representing a specific generation of the
        # desired state" -- it moves only when the spec changes.
        return old_generation if old_digest == digest else old_generation + 1

    def notices(self) -> tuple[str, ...]:
        return tuple(
            f"skipped {count} {label} object{'s' if count != 1 else ''}: {SKIPPED_NOTICE}"
            for label, count in self.skipped.items()
        )

    def _rejected(self) -> tuple[m.RejectedObject, ...]:
        """One record per object.  A later definition of a name is refused before it is
        read ("already defined"), but one whose metadata was invalid is not remembered:
        a valid definition, or else the first refused one, owns the object's status."""
        taken: set[GenerationKey] = set()
        for kind in STATUS_KINDS:
            for obj in self.objects[kind]:
                meta = getattr(obj, "meta", None)
                if isinstance(meta, m.Meta):
                    taken.add((kind.value, meta.namespace, meta.name))
        out: list[m.RejectedObject] = []
        for record in self.rejected:
            key = (record.kind.value, record.meta.namespace, record.meta.name)
            if key not in taken:
                taken.add(key)
                out.append(record)
        return tuple(out)

    def config(self) -> m.Config:
        objs = self.objects

        def of(kind: m.Kind, cls: type[_T]) -> tuple[_T, ...]:
            return tuple(o for o in objs[kind] if isinstance(o, cls))

        config = m.Config(
            gateway_classes=of(m.Kind.GATEWAY_CLASS, m.GatewayClass),
            gateways=of(m.Kind.GATEWAY, m.Gateway),
            http_routes=of(m.Kind.HTTP_ROUTE, m.HTTPRoute),
            grpc_routes=of(m.Kind.GRPC_ROUTE, m.GRPCRoute),
            tls_routes=of(m.Kind.TLS_ROUTE, m.TLSRoute),
            tcp_routes=of(m.Kind.TCP_ROUTE, m.TCPRoute),
            udp_routes=of(m.Kind.UDP_ROUTE, m.UDPRoute),
            reference_grants=of(m.Kind.REFERENCE_GRANT, m.ReferenceGrant),
            namespaces=of(m.Kind.NAMESPACE, m.Namespace),
            services=of(m.Kind.SERVICE, m.Service),
            endpoint_slices=of(m.Kind.ENDPOINT_SLICE, m.EndpointSlice),
            secrets=of(m.Kind.SECRET, m.Secret),
            config_maps=of(m.Kind.CONFIG_MAP, m.ConfigMap),
            pods=of(m.Kind.POD, m.Pod),
            backend_tls_policies=of(m.Kind.BACKEND_TLS_POLICY, m.BackendTLSPolicy),
            listener_sets=of(m.Kind.LISTENER_SET, m.ListenerSet),
            backend_lb_policies=of(m.Kind.BACKEND_LB_POLICY, m.BackendLBPolicy),
            rejected=self._rejected(),
        )
        return _with_implied_namespaces(config)


def _namespace_hint(data: Mapping[object, object]) -> str:
    md = data.get("metadata")
    namespace = md.get("namespace") if isinstance(md, Mapping) else None
    return namespace if isinstance(namespace, str) else ""


def _name_hint(data: Mapping[object, object]) -> str:
    md = data.get("metadata")
    if isinstance(md, Mapping):
        name = md.get("name")
        if isinstance(name, str):
            return name
    return ""


# --------------------------------------------------------------------------- namespaces


def _referenced_namespaces(config: m.Config) -> Iterator[tuple[str, m.Source]]:
    """Every namespace an object lives in or points at, with the object's source."""
    for gw in config.gateways:
        src = gw.meta.source
        yield gw.meta.namespace, src
        for listener in gw.listeners:
            if listener.tls is not None:
                for cert in listener.tls.certificate_refs:
                    yield cert.namespace or "", src
                if listener.tls.frontend_validation is not None:
                    for ca in listener.tls.frontend_validation.ca_certificate_refs:
                        yield ca.namespace or "", src
        if gw.backend_client_certificate_ref is not None:
            yield gw.backend_client_certificate_ref.namespace or "", src
    for ls in config.listener_sets:
        src = ls.meta.source
        yield ls.meta.namespace, src
        yield ls.parent_ref.namespace or "", src
        for listener in ls.listeners:
            if listener.tls is not None:
                for cert in listener.tls.certificate_refs:
                    yield cert.namespace or "", src
    routes: list[m.Route] = config.routes()
    for route in routes:
        src = route.meta.source
        yield route.meta.namespace, src
        for parent in route.parent_refs:
            yield parent.namespace or "", src
        for ref in _route_backend_refs(route):
            yield ref.namespace or "", src
    for grant in config.reference_grants:
        yield grant.meta.namespace, grant.meta.source
        for frm in grant.from_:
            yield frm.namespace, grant.meta.source
    for policy in config.backend_tls_policies:
        yield policy.meta.namespace, policy.meta.source
    for lb in config.backend_lb_policies:
        yield lb.meta.namespace, lb.meta.source
    others: list[m.Service | m.EndpointSlice | m.Secret | m.ConfigMap | m.Pod] = [
        *config.services,
        *config.endpoint_slices,
        *config.secrets,
        *config.config_maps,
        *config.pods,
    ]
    for obj in others:
        yield obj.meta.namespace, obj.meta.source


def _route_backend_refs(route: m.Route) -> Iterator[m.BackendObjectReference]:
    def mirrors(filters: Iterable[m.HTTPRouteFilter]) -> Iterator[m.BackendObjectReference]:
        for f in filters:
            if f.request_mirror is not None:
                yield f.request_mirror.backend_ref

    for rule in route.rules:
        if not isinstance(rule, m.PLAIN_RULES):
            yield from mirrors(rule.filters)
        for backend in rule.backend_refs:
            yield backend.ref
            yield from mirrors(backend.filters)


def _with_implied_namespaces(config: m.Config) -> m.Config:
    declared = {ns.meta.name for ns in config.namespaces}
    implied: dict[str, m.Source] = {}
    for name, source in _referenced_namespaces(config):
        if name and name not in declared and name not in implied:
            implied[name] = source
    if not implied:
        return config
    extra = tuple(
        # A namespace that is referenced but not declared exists, without labels but
        # the one the control plane sets on every namespace.
        m.Namespace(
            meta=m.Meta(
                namespace="",
                name=name,
                labels=((NAMESPACE_NAME_LABEL, name),),
                source=implied[name],
            )
        )
        for name in sorted(implied)
    )
    return replace(config, namespaces=(*config.namespaces, *extra))


# --------------------------------------------------------------------------- public API


def load_documents(
    docs: Iterable[tuple[str, str]],
    *,
    previous: Generations | None = None,
    limits: ConfigLimits | None = None,
    problems: Iterable[m.Problem] = (),
    cache: LoadCache | None = None,
) -> LoadResult:
    """Load ``(filename, YAML text)`` pairs.  Pure: no file I/O, never raises on input.

    ``problems`` are reported first (those ``read_config_files`` found).  ``cache``:
    what the previous load made of each file, reused for a file whose text is the same
    (``loadcache.py``); this load's clean files replace its contents."""
    state = _Loading(previous)
    state.problems.extend(problems)
    budget = _NodeBudget((limits or ConfigLimits()).max_nodes)
    if cache is not None:
        cache.begin()
    for filename, text in docs:
        if cache is not None:
            entry = cache.get(filename, text)
            if entry is not None and state.reuse(filename, entry, budget):
                cache.hits += 1
                cache.keep(filename, entry)
                continue
            cache.misses += 1
        before = budget.left
        clean = True
        records: list[CachedObject | None] = []
        for index, data, problem in _yaml_documents(filename, text, budget):
            if problem is not None:
                state.problems.append(problem)
                clean = False
                continue
            ok, record = state.document(data, m.Source(file=filename, index=index))
            clean = clean and ok
            records.append(record)
        if cache is not None and clean:
            cache.keep(filename, CachedFile(text, before - budget.left, tuple(records)))
    if cache is not None:
        cache.end()
    return LoadResult(
        config=state.config(),
        problems=tuple(state.problems),
        notices=state.notices(),
        skipped=tuple(state.skipped_objects),
        generations=dict(state.generations),
    )


def load_objects(
    objects: Iterable[tuple[m.Source, Mapping[Any, object]]],
    *,
    previous: Generations | None = None,
    notices: Iterable[str] = (),
    cache: ObjectCache | None = None,
) -> LoadResult:
    """Load objects an API server returned, each with the ``Source`` that names it (for
    Kubernetes, ``k8s:Kind/namespace/name``).  Pure, never raises on input.

    The same checks as ``load_documents`` but for two: no YAML (nothing to bound: the
    caller bounded what it read), and a field gatewayd does not know is ignored, since
    the cluster's schema admitted it.  ``notices`` are the caller's (e.g. missing CRDs).
    ``cache``: what the previous load made of each object, reused for an object whose
    content is the same (``loadcache.py``).
    """
    state = _Loading(previous, admitted=True)
    if cache is not None:
        cache.begin()
    for source, data in objects:
        if cache is None:
            state.read_object(data, source, "")
            continue
        content = cache.content(data)
        hit = cache.get(source, content)
        if hit is not None and state.reuse_object(source, hit):
            cache.hits += 1
            cache.keep(source, content, hit)
            continue
        cache.misses += 1
        record = state.read_object(data, source, "")
        if record is not None:
            cache.keep(source, content, record)
    if cache is not None:
        cache.end()
    return LoadResult(
        config=state.config(),
        problems=tuple(state.problems),
        notices=(*notices, *state.notices()),
        skipped=tuple(state.skipped_objects),
        generations=dict(state.generations),
    )


_YAML_SUFFIXES = (".yaml", ".yml")


def _directory_files(root: Path) -> list[Path]:
    """*.yaml / *.yml below ``root``, sorted; hidden files and directories skipped.

    Skipping dot-names matters for ConfigMap volumes: the kubelet mounts each file both
    as ``name.yaml`` and under ``..data/`` and a timestamped ``..2024_...`` directory,
    which would otherwise load every object three times.  Symlinked directories are
    followed, each real directory once (so a link loop ends).
    """
    found: list[Path] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise_walk_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath, name)
            for name in filenames
            if not name.startswith(".") and name.endswith(_YAML_SUFFIXES)
        )
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _raise_walk_error(exc: OSError) -> None:
    raise ConfigPathError(f"cannot read config directory {exc.filename}: {exc.strerror or exc}")


@dataclass(frozen=True, slots=True)
class ConfigFiles:
    """What ``read_config_files`` read: ``(filename, text)`` pairs, and a Problem for
    each file it refused to read (too large, not a regular file)."""

    files: list[tuple[str, str]]
    problems: list[m.Problem]


def read_config_files(
    paths: Sequence[str | os.PathLike[str]], limits: ConfigLimits | None = None
) -> ConfigFiles:
    """Read each path: a YAML file, or a directory searched recursively for YAML files.

    Raises ConfigPathError for a path that does not exist or a file that cannot be read.
    A file over ``limits`` is not read at all: it becomes a Problem naming it.
    """
    limits = limits or ConfigLimits()
    out = ConfigFiles([], [])
    done: set[Path] = set()
    total = 0
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigPathError(f"config path {str(path)!r} does not exist")
        named = not path.is_dir()
        files = [path] if named else _directory_files(path)
        for file in files:
            try:
                resolved = file.resolve()
            except (OSError, RuntimeError):
                resolved = file
            if resolved in done:
                continue  # the same file named twice (e.g. a file and its directory)
            done.add(resolved)
            data = _read_bounded(file, named=named, limits=limits, total=total, out=out)
            if data is None:
                continue
            total += len(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigPathError(
                    f"cannot read config file {str(file)!r}: "
                    f"not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from exc
            out.files.append((str(file), text))
    return out


def _read_bounded(
    file: Path, *, named: bool, limits: ConfigLimits, total: int, out: ConfigFiles
) -> bytes | None:
    """The bytes of ``file``, or None after adding the Problem that says why not."""

    def refuse(message: str) -> None:
        out.problems.append(_problem_at(str(file), 0, message + "; this file is not read"))

    try:
        st = os.stat(file)
        # A FIFO or device found in a directory would block the load or never end;
        # one named on the command line (``--config <(...)``) was asked for.
        if not named and not stat.S_ISREG(st.st_mode):
            refuse("not a regular file")
            return None
        room = min(limits.max_file_bytes, limits.max_total_bytes - total)
        if stat.S_ISREG(st.st_mode) and st.st_size > room:
            refuse(_too_large(st.st_size, limits, total))
            return None
        with open(file, "rb") as f:
            data = f.read(room + 1)  # one byte more tells a file that grew meanwhile
    except OSError as exc:
        raise ConfigPathError(
            f"cannot read config file {str(file)!r}: {exc.strerror or exc}"
        ) from exc
    if len(data) > room:
        refuse(_too_large(len(data), limits, total, at_least=True))
        return None
    return data


def _too_large(size: int, limits: ConfigLimits, total: int, *, at_least: bool = False) -> str:
    more = " or more" if at_least else ""
    if size > limits.max_file_bytes:
        return (
            f"the file is {size} bytes{more}, over the {limits.max_file_bytes}-byte limit "
            "of one config file (--max-config-file-size)"
        )
    return (
        f"the config files read before it hold {total} bytes and this one {size}{more}: "
        f"together over the {limits.max_total_bytes}-byte limit (--max-config-size)"
    )


def load_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    previous: Generations | None = None,
    limits: ConfigLimits | None = None,
    cache: LoadCache | None = None,
) -> LoadResult:
    """``read_config_files`` then ``load_documents``; raises ConfigPathError only."""
    read = read_config_files(paths, limits)
    return load_documents(
        read.files, previous=previous, limits=limits, problems=read.problems, cache=cache
    )
