"""Matcher compilation: HTTPRouteMatch / GRPCRouteMatch -> ``snapshot.candidates.Candidate``.

Regexes are compiled here (RE2: ``snapshot.regex``), header and query conditions
normalised, the precedence key computed (``precedence``); a regex RE2 rejects raises
``InvalidMatch`` so the compiler can drop that one match.

Pure module: no I/O.
"""

from __future__ import annotations

from gatewayd.routing.compile.precedence import (
    grpc_match_key,
    http_match_key,
    normalize_prefix,
    unique_header_names,
    unique_query_names,
)
from gatewayd.routing.config.model import (
    GRPCRouteMatch,
    HeaderMatchType,
    HTTPHeaderMatch,
    HTTPQueryParamMatch,
    HTTPRouteMatch,
    Meta,
    PathMatchType,
)
from gatewayd.routing.snapshot.candidates import (
    PATH_EXACT,
    PATH_PREFIX,
    PATH_REGEX,
    Candidate,
    ValueCondition,
)
from gatewayd.routing.snapshot.regex import NEVER, Regex, RegexError, escape
from gatewayd.routing.snapshot.rules import CompiledRule, RouteHit

_PATH_KIND_NAMES = {PATH_EXACT: "Exact", PATH_PREFIX: "PathPrefix", PATH_REGEX: "RegularExpression"}


class InvalidMatch(ValueError):
    """A regular expression of a match does not compile with RE2."""


def _compile_regex(pattern: str, what: str) -> Regex:
    try:
        return Regex(pattern)
    except RegexError as exc:
        raise InvalidMatch(f"{what}: invalid regular expression {pattern!r}: {exc}") from exc


def _header_conditions(headers: tuple[HTTPHeaderMatch, ...]) -> tuple[ValueCondition, ...]:
    keep = unique_header_names([h.name for h in headers])
    out: list[ValueCondition] = []
    for i in keep:
        h = headers[i]
        name = h.name.lower()
        if h.type is HeaderMatchType.REGULAR_EXPRESSION:
            out.append((name, None, _compile_regex(h.value, f"header {h.name}")))
        else:
            out.append((name, h.value, None))
    return tuple(out)


def _query_conditions(params: tuple[HTTPQueryParamMatch, ...]) -> tuple[ValueCondition, ...]:
    keep = unique_query_names([q.name for q in params])
    out: list[ValueCondition] = []
    for i in keep:
        q = params[i]
        if q.type is HeaderMatchType.REGULAR_EXPRESSION:
            out.append((q.name, None, _compile_regex(q.value, f"query param {q.name}")))
        else:
            out.append((q.name, q.value, None))
    return tuple(out)


def _conditions_json(conds: tuple[ValueCondition, ...]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for name, exact, rx in conds:
        if rx is None:
            out.append({"name": name, "type": "Exact", "value": exact or ""})
        else:
            out.append({"name": name, "type": "RegularExpression", "value": rx.pattern})
    return out


def compile_http_match(
    *,
    meta: Meta,
    rule_index: int,
    match_index: int,
    match: HTTPRouteMatch,
    rule: CompiledRule,
    listener_name: str,
) -> Candidate:
    """Raises ``InvalidMatch`` for a regex RE2 cannot compile."""
    ptype = match.path.type
    prefix: str | None = None
    if ptype is PathMatchType.EXACT:
        kind, path = PATH_EXACT, match.path.value
    elif ptype is PathMatchType.PATH_PREFIX:
        kind, path = PATH_PREFIX, normalize_prefix(match.path.value)
        # For ReplacePrefixMatch: the prefix without its trailing '/' (root stays "/").
        prefix = path or "/"
    else:
        kind, path = PATH_REGEX, match.path.value
    headers = _header_conditions(match.headers)
    query = _query_conditions(match.query_params)
    summary: dict[str, object] = {"path": {"type": ptype.value, "value": match.path.value}}
    if match.method is not None:
        summary["method"] = match.method
    if headers:
        summary["headers"] = _conditions_json(headers)
    if query:
        summary["queryParams"] = _conditions_json(query)
    return Candidate(
        key=http_match_key(meta, rule_index, match_index, match),
        path_kind=kind,
        path=path,
        regex=_compile_regex(path, "path") if kind == PATH_REGEX else NEVER,
        method=match.method,
        headers=headers,
        query=query,
        hit=RouteHit(rule=rule, prefix=prefix, listener_name=listener_name),
        route_kind="HTTPRoute",
        route_name=f"{meta.namespace}/{meta.name}",
        rule_index=rule_index,
        match_index=match_index,
        summary=summary,
    )


def grpc_path_match(match: GRPCRouteMatch | None) -> tuple[int, str]:
    """Translate a GRPCMethodMatch into a path test on "/{service}/{method}".

    Exact with service and method: that exact path; service only: the element-wise
    prefix "/{service}"; method only: a regex for any service ("Value of the service to
    match against. If left empty or omitted, will match any service."); no method match:
    every path ("If no matches are specified, the implementation MUST match every gRPC
    request").  RegularExpression: the two patterns joined into one full-match regex,
    an omitted side matching any one path element.
    """
    method_match = match.method if match is not None else None
    if method_match is None:
        return PATH_PREFIX, ""
    service = method_match.service or None
    method = method_match.method or None
    if method_match.type is HeaderMatchType.REGULAR_EXPRESSION:
        s = f"(?:{service})" if service else "[^/]+"
        m = f"(?:{method})" if method else "[^/]+"
        return PATH_REGEX, f"/{s}/{m}"
    if service and method:
        return PATH_EXACT, f"/{service}/{method}"
    if service:
        return PATH_PREFIX, f"/{service}"
    if method:
        return PATH_REGEX, f"/[^/]+/{escape(method)}"
    return PATH_PREFIX, ""


def compile_grpc_match(
    *,
    meta: Meta,
    rule_index: int,
    match_index: int,
    match: GRPCRouteMatch | None,
    rule: CompiledRule,
    listener_name: str,
) -> Candidate:
    """Raises ``InvalidMatch`` for a regex RE2 cannot compile."""
    kind, path = grpc_path_match(match)
    headers = _header_conditions(match.headers) if match is not None else ()
    summary: dict[str, object] = {"path": {"type": _PATH_KIND_NAMES[kind], "value": path or "/"}}
    if match is not None and match.method is not None:
        summary["grpcMethod"] = {
            "type": match.method.type.value,
            "service": match.method.service,
            "method": match.method.method,
        }
    summary["method"] = "POST"
    if headers:
        summary["headers"] = _conditions_json(headers)
    return Candidate(
        key=grpc_match_key(meta, rule_index, match_index, match),
        path_kind=kind,
        path=path,
        regex=_compile_regex(path, "path") if kind == PATH_REGEX else NEVER,
        # gRPC is always carried by POST (gRPC over HTTP/2 spec: ":method POST").
        method="POST",
        headers=headers,
        query=(),
        hit=RouteHit(rule=rule, prefix=None, listener_name=listener_name),
        route_kind="GRPCRoute",
        route_name=f"{meta.namespace}/{meta.name}",
        rule_index=rule_index,
        match_index=match_index,
        summary=summary,
    )
