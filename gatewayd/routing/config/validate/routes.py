"""HTTPRoute, GRPCRoute and TLSRoute: specs, rules, matches, timeouts, retries, sessions.

Admission-style validation of one kind family (see ``reader`` for the rules and helpers).

Pure module: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.filters import (
    GRPC_FILTER_TYPES,
    HTTP_FILTER_TYPES,
    parse_backend_refs,
    parse_filters,
)
from gatewayd.routing.config.validate.reader import (
    GRPC_METHOD,
    GRPC_SERVICE,
    HEADER_NAME,
    HTTP_METHODS,
    PATH_CHARS,
    SECTION_NAME,
    Obj,
    check_int,
    read_spec,
    show,
    unique_names,
)
from gatewayd.routing.config.validate.refs import parse_hostnames, parse_parent_refs

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
    # (control.routes.route_regex_problem), where the user sees it, and the rest keeps serving.
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
    unique_names(
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
    cookie_path: str | None = None
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
        cookie_path = cookie.str_("path", max_len=1024)
        if cookie_path is not None and (
            not cookie_path.startswith("/") or any(c in cookie_path for c in ";\r\n\0")
        ):
            # RFC 6265 4.1.1: path-value is "<any CHAR except CTLs or ";">"; a cookie
            # path that is not absolute never matches a request path.
            cookie.add("path", "must start with '/' and contain no ';' or control characters")
            cookie_path = None
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
        cookie_path=cookie_path,
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
    unique_names(
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
    spec = read_spec(doc, HTTP_ROUTE_SPEC_FIELDS)
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
    spec = read_spec(doc, GRPC_ROUTE_SPEC_FIELDS)
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


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_tls_route(meta: m.Meta, doc: Obj, version: str) -> m.TLSRoute:
    spec = read_spec(doc, TLS_ROUTE_SPEC_FIELDS)
    # v1 and v1alpha3 require hostnames and exactly one rule; v1alpha2 allowed 16 rules.
    legacy = version == "v1alpha2"
    hostnames = parse_hostnames(
        spec, max_items=1024, required=not legacy, min_items=0 if legacy else 1
    )
    if not legacy:
        # CEL: "Hostnames cannot contain an IP".
        for i, h in enumerate(hostnames):
            if is_ip(h):
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
