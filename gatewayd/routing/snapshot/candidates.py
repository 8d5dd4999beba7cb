"""Compiled request matchers: one ``Candidate`` per (route, rule, match) and listener.

A candidate holds everything ``RouteTable.lookup`` needs to test one HTTPRouteMatch (or
a GRPCRouteMatch translated to a path match) without touching the model: the path
test, the method, header and query conditions with regexes precompiled (RE2, linear
time: ``snapshot.regex``), its precedence key and the preallocated ``RouteHit`` returned on
success.  ``compile.match`` builds them; the table orders and indexes them.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import unquote_plus

from gatewayd.routing.snapshot.regex import NEVER, Regex
from gatewayd.routing.snapshot.rules import RouteHit

# Smaller sorts first (wins).  Every key has the same shape so HTTPRoute and GRPCRoute
# keys compare without type errors:
#   (kind, a, b, c, d, e, created, "ns/name", rule index, match index)
PrecedenceKey = tuple[int, int, int, int, int, int, float, str, int, int]

PATH_EXACT = 0
PATH_PREFIX = 1
PATH_REGEX = 2

# One header or query condition: (name, exact value or None, compiled regex or None).
# Header names are lower-case (the data plane hands lower-case names); query names are
# kept as written: "Name is the name of the HTTP query param to be matched. This must be
# an exact string match."
ValueCondition = tuple[str, str | None, Regex | None]


def values_hold(conditions: tuple[ValueCondition, ...], values: Mapping[str, str]) -> bool:
    """Every header / query condition holds (AND).  Exact values are case-sensitive;
    a regex must match the whole value (like Envoy's safe_regex)."""
    for name, exact, rx in conditions:
        got = values.get(name)
        if got is None:
            return False
        if rx is None:
            if got != exact:
                return False
        elif not rx.fullmatch(got):
            return False
    return True


def parse_query(query: str) -> dict[str, str]:
    """Decode a raw query string (without '?') into name -> first value.

    Same splitting and decoding as ``urllib.parse.parse_qsl(keep_blank_values=True)``
    ('&' separated, '+' is a space, percent-decoding).  For repeated parameters the
    first value wins: "it is *recommended* that implementations should match against
    the first value of the param if the data plane supports it".
    """
    out: dict[str, str] = {}
    if not query:
        return out
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if name in out:
            continue
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        out[name] = value
    return out


class Candidate:
    """One match of one rule of one route, as attached through one listener."""

    __slots__ = (
        "headers",
        "hit",
        "key",
        "match_index",
        "method",
        "path",
        "path_kind",
        "query",
        "rank",
        "regex",
        "route_kind",
        "route_name",
        "rule_index",
        "summary",
    )

    def __init__(
        self,
        *,
        key: PrecedenceKey,
        path_kind: int,
        path: str,
        regex: Regex = NEVER,
        method: str | None,
        headers: tuple[ValueCondition, ...],
        query: tuple[ValueCondition, ...],
        hit: RouteHit,
        route_kind: str,
        route_name: str,
        rule_index: int,
        match_index: int,
        summary: dict[str, object],
    ) -> None:
        self.key = key
        # Position in precedence order among the candidates of one table (set by the
        # table builder); lookup compares ranks instead of keys.
        self.rank = 0
        self.path_kind = path_kind
        # Exact: the path; PathPrefix: the normalised prefix ("" for "/"); regex: pattern
        # (``regex``: that pattern, compiled by compile.match).
        self.path = path
        # Never None, so the lookup loop needs no check: non-regex kinds get NEVER.
        self.regex = regex if path_kind == PATH_REGEX else NEVER
        self.method = method
        self.headers = headers
        self.query = query
        self.hit = hit
        self.route_kind = route_kind
        self.route_name = route_name
        self.rule_index = rule_index
        self.match_index = match_index
        self.summary = summary

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "route": f"{self.route_kind} {self.route_name}",
            "rule": self.rule_index,
            "match": self.match_index,
        }
        out.update(self.summary)
        return out


# --------------------------------------------------------------------------- explain

# What each position of a ``PrecedenceKey`` means, by route kind (``compile.precedence``
# builds the keys; ``snapshot.explain`` names the first position where two keys differ).
HTTP_KEY_CRITERIA: tuple[str, ...] = (
    "route kind (HTTPRoute before GRPCRoute)",
    "path match type (Exact, then RegularExpression, then PathPrefix)",
    "path length (more characters wins)",
    "method match",
    "number of header matches",
    "number of query param matches",
    "route creation time (oldest wins)",
    'route "{namespace}/{name}" (alphabetical)',
    "rule order within the route",
    "match order within the rule",
)
GRPC_KEY_CRITERIA: tuple[str, ...] = (
    "route kind (HTTPRoute before GRPCRoute)",
    "characters in the service match",
    "characters in the method match",
    "number of header matches",
    "(unused)",
    "(unused)",
    "route creation time (oldest wins)",
    'route "{namespace}/{name}" (alphabetical)',
    "rule order within the route",
    "match order within the rule",
)


def path_holds(c: Candidate, path: str) -> bool:
    """The path test of ``c`` as ``RouteTable.lookup`` applies it: the exact list of the
    path, the element-wise prefix lists ("/a/b" holds "/a/b", "/a/b/..." and not
    "/a/bc"; the root prefix "" holds every path), or a full regex match."""
    kind = c.path_kind
    if kind == PATH_EXACT:
        return path == c.path
    if kind == PATH_PREFIX:
        p = c.path
        return not p or path == p or path.startswith(p + "/")
    return c.regex.fullmatch(path)


def _value_failure(kind: str, conds: tuple[ValueCondition, ...], values: Mapping[str, str]) -> str:
    """Why ``values_hold(conds, values)`` is False, naming the first condition that fails."""
    for name, exact, rx in conds:
        got = values.get(name)
        if got is None:
            return f"{kind} {name!r} is absent"
        if rx is None:
            if got != exact:
                return f"{kind} {name!r} is {got!r}, not {exact!r} (Exact, case-sensitive)"
        elif not rx.fullmatch(got):
            return (
                f"{kind} {name!r} is {got!r}, which RegularExpression {rx.pattern!r} does not match"
            )
    return ""


def first_failure(
    c: Candidate,
    path: str,
    method: str,
    headers: Mapping[str, str],
    params: Mapping[str, str],
) -> tuple[str, str] | None:
    """None when every condition of ``c`` holds, else (matcher, why) for the first that
    does not, tested in the order ``RouteTable.lookup`` tests them: path, method,
    headers, query params.  Off the request path (``gatewayd explain``); the tests hold
    it to ``lookup``'s answer."""
    if not path_holds(c, path):
        kinds = {PATH_EXACT: "Exact", PATH_PREFIX: "PathPrefix", PATH_REGEX: "RegularExpression"}
        shown = c.path if c.path_kind != PATH_PREFIX else (c.path or "/")
        return "path", f"{kinds[c.path_kind]} {shown!r} does not match {path!r}"
    if c.method is not None and c.method != method:
        return "method", f"method is {method}, not {c.method}"
    if c.headers and not values_hold(c.headers, headers):
        return "header", _value_failure("header", c.headers, headers)
    if c.query and not values_hold(c.query, params):
        return "queryParam", _value_failure("query param", c.query, params)
    return None
