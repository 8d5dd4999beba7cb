"""Precedence: each tie-breaker of HTTPRouteRule / GRPCRouteRule, hostname specificity,
and the precedence key being a total order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from route_builders import EXACT, PREFIX, REGEX, get, gmatch, grpc, http, match, meta, rule, table

from gatewayd.routing.compile.precedence import creation_order, grpc_match_key, http_match_key
from gatewayd.routing.config.model import (
    GRPCMethodMatch,
    GRPCRouteMatch,
    HTTPRouteMatch,
    PathMatchType,
)
from gatewayd.routing.snapshot.candidates import PrecedenceKey
from gatewayd.routing.snapshot.hostnames import hostname_matches, hostname_rank
from gatewayd.routing.snapshot.table import HTTPRouteTable

OLD = "2020-01-01T00:00:00Z"
NEW = "2023-01-01T00:00:00Z"

# (description, routes, request kwargs, expected winner "route/rule")
CASES = [
    (
        "exact path beats a longer prefix",
        [http("p", rule(match("/a/b/c"))), http("e", rule(match("/a/b/c", EXACT)))],
        {"path": "/a/b/c"},
        "e/0",
    ),
    (
        "longest prefix wins",
        [http("short", rule(match("/a"))), http("long", rule(match("/a/b")))],
        {"path": "/a/b/c"},
        "long/0",
    ),
    (
        "trailing slash does not make a prefix longer",
        [
            http("slash", rule(match("/a/")), ts=NEW),
            http("plain", rule(match("/a")), ts=OLD),
        ],
        {"path": "/a/x"},
        "plain/0",
    ),
    (
        "regex ranks after exact",
        [http("rx", rule(match("/a.*", REGEX))), http("e", rule(match("/ab", EXACT)))],
        {"path": "/ab"},
        "e/0",
    ),
    (
        "regex ranks before any prefix",
        [http("rx", rule(match("/a.*", REGEX))), http("p", rule(match("/ab/cd/ef")))],
        {"path": "/ab/cd/ef"},
        "rx/0",
    ),
    (
        "longer regex first",
        [http("short", rule(match("/.*", REGEX))), http("long", rule(match("/ab/.*", REGEX)))],
        {"path": "/ab/x"},
        "long/0",
    ),
    (
        "path beats method",
        [
            http("m", rule(match("/a", method="GET"))),
            http("p", rule(match("/a/b"))),
        ],
        {"path": "/a/b"},
        "p/0",
    ),
    (
        "method beats headers",
        [
            http("h", rule(match("/a", headers=[("x", "1"), ("y", "2")]))),
            http("m", rule(match("/a", method="GET"))),
        ],
        {"path": "/a", "headers": {"x": "1", "y": "2"}},
        "m/0",
    ),
    (
        "more headers win",
        [
            http("one", rule(match("/a", headers=[("x", "1")]))),
            http("two", rule(match("/a", headers=[("x", "1"), ("y", "2")]))),
        ],
        {"path": "/a", "headers": {"x": "1", "y": "2"}},
        "two/0",
    ),
    (
        "duplicate header names count once",
        [
            http("dup", rule(match("/a", headers=[("x", "1"), ("X", "1")])), ts=NEW),
            http("one", rule(match("/a", headers=[("x", "1")])), ts=OLD),
        ],
        {"path": "/a", "headers": {"x": "1"}},
        "one/0",
    ),
    (
        "headers beat query params",
        [
            http("q", rule(match("/", query=[("a", "1"), ("b", "2")]))),
            http("h", rule(match("/", headers=[("x", "1")]))),
        ],
        {"path": "/", "query": "a=1&b=2", "headers": {"x": "1"}},
        "h/0",
    ),
    (
        "more query params win",
        [
            http("one", rule(match("/", query=[("a", "1")]))),
            http("two", rule(match("/", query=[("a", "1"), ("b", "2")]))),
        ],
        {"path": "/", "query": "a=1&b=2"},
        "two/0",
    ),
    (
        "oldest route wins a tie",
        [http("a-new", rule(match("/")), ts=NEW), http("z-old", rule(match("/")), ts=OLD)],
        {"path": "/"},
        "z-old/0",
    ),
    (
        "timestamps compare as instants, not strings",
        [
            http("a-utc", rule(match("/")), ts="2020-01-01T00:30:00Z"),
            http("b-offset", rule(match("/")), ts="2020-01-01T01:00:00+01:00"),
        ],
        {"path": "/"},
        "b-offset/0",
    ),
    (
        "then namespace/name order",
        [
            http("b", rule(match("/")), ns="x", ts=OLD),
            http("a", rule(match("/")), ns="y", ts=OLD),
            http("c", rule(match("/")), ns="x", ts=OLD),
        ],
        {"path": "/"},
        "b/0",
    ),
    (
        "then the first rule in list order",
        [http("r", rule(match("/a"), match("/b")), rule(match("/a")))],
        {"path": "/a"},
        "r/0",
    ),
    (
        "a later rule with a more specific match wins over an earlier rule",
        [http("r", rule(match("/")), rule(match("/a")))],
        {"path": "/a"},
        "r/1",
    ),
]


@pytest.mark.parametrize(
    ("routes", "request_kw", "expected"),
    [pytest.param(r, kw, e, id=d) for d, r, kw, e in CASES],
)
def test_tie_breakers(routes: list, request_kw: dict, expected: str) -> None:  # type: ignore[type-arg]
    for order in itertools.permutations(routes):
        # The winner never depends on the order the routes were given in.
        assert get(table(*order), **request_kw) == expected


def test_match_order_within_a_rule() -> None:
    t = table(http("r", rule(match("/", headers=[("x", "1")]), match("/", headers=[("y", "1")]))))
    assert isinstance(t, HTTPRouteTable)
    hit = t.lookup("h", "GET", "/", "", {"x": "1", "y": "1"})
    dump = t.to_json()
    assert isinstance(dump, dict)
    first = dump["listeners"][0]["hostGroups"][0]["candidates"][0]
    assert first["match"] == 0
    assert hit is t.lookup("h", "GET", "/", "", {"x": "1"})
    assert hit is not t.lookup("h", "GET", "/", "", {"y": "1"})


GRPC_CASES = [
    (
        "more service characters win",
        [grpc("short", gmatch("a.S")), grpc("long", gmatch("a.b.S"))],
        "/a.b.S/M",
        "long/0",
    ),
    (
        "service characters before method characters",
        [grpc("method", gmatch(None, "LongMethodName")), grpc("service", gmatch("a.S"))],
        "/a.S/LongMethodName",
        "service/0",
    ),
    (
        "a method match beats a service-only match",
        [grpc("svc", gmatch("a.S")), grpc("both", gmatch("a.S", "M"))],
        "/a.S/M",
        "both/0",
    ),
    (
        "header matches break a tie",
        [
            grpc("plain", gmatch("a.S", "M"), ts=OLD),
            grpc("hdr", gmatch("a.S", "M", headers=[("x", "1")]), ts=NEW),
        ],
        "/a.S/M",
        "hdr/0",
    ),
    (
        "then the oldest route",
        [grpc("a", gmatch("a.S", "M"), ts=NEW), grpc("b", gmatch("a.S", "M"), ts=OLD)],
        "/a.S/M",
        "b/0",
    ),
]


@pytest.mark.parametrize(
    ("routes", "path", "expected"), [pytest.param(r, p, e, id=d) for d, r, p, e in GRPC_CASES]
)
def test_grpc_tie_breakers(routes: list, path: str, expected: str) -> None:  # type: ignore[type-arg]
    for order in itertools.permutations(routes):
        got = get(table(*order), path, method="POST", headers={"x": "1"})
        assert got == expected


# --------------------------------------------------------------------------- hostnames


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("example.com", "example.com", True),
        ("example.com", "a.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.foo.example.com", "a.example.com", False),
    ],
)
def test_hostname_matches(pattern: str, host: str, ok: bool) -> None:
    assert hostname_matches(pattern, host) is ok


def test_hostname_rank_order() -> None:
    ranked = sorted(
        [None, "*.example.com", "a.example.com", "*.foo.example.com", "x.io"],
        key=hostname_rank,
        reverse=True,
    )
    assert ranked == ["a.example.com", "x.io", "*.foo.example.com", "*.example.com", None]


def test_creation_order() -> None:
    assert creation_order("") < creation_order("1999-01-01T00:00:00Z")
    assert creation_order("2020-01-01T00:00:00Z") < creation_order("2020-01-01T00:00:01Z")
    assert creation_order("2020-01-01T02:00:00+03:00") < creation_order("2020-01-01T00:00:00Z")
    assert creation_order("not a date") > creation_order("2999-01-01T00:00:00Z")


# --------------------------------------------------------------------------- total order


@st.composite
def _keys(draw: st.DrawFn) -> PrecedenceKey:
    m = meta(
        draw(st.sampled_from(["a", "b", "c"])),
        ns=draw(st.sampled_from(["x", "y"])),
        ts=draw(st.sampled_from(["", OLD, NEW, "2020-01-01T01:00:00+01:00"])),
    )
    ri = draw(st.integers(0, 2))
    mi = draw(st.integers(0, 2))
    if draw(st.booleans()):
        hm = match(
            draw(st.sampled_from(["/", "/a", "/a/", "/ab", "/a/b"])),
            draw(st.sampled_from(list(PathMatchType))),
            method=draw(st.sampled_from([None, "GET"])),
            headers=draw(
                st.lists(st.sampled_from([("x", "1"), ("X", "2"), ("y", "1")]), max_size=3)
            ),
            query=draw(st.lists(st.sampled_from([("q", "1"), ("Q", "1")]), max_size=2)),
        )
        return http_match_key(m, ri, mi, hm)
    gm = None
    if draw(st.booleans()):
        gm = GRPCRouteMatch(
            method=GRPCMethodMatch(
                service=draw(st.sampled_from([None, "a.S", "a.b.S"])),
                method=draw(st.sampled_from([None, "M", "Method"])),
            )
        )
    return grpc_match_key(m, ri, mi, gm)


def _lt(a: PrecedenceKey, b: PrecedenceKey) -> bool:
    return a < b


@settings(max_examples=300, deadline=None)
@given(a=_keys(), b=_keys(), c=_keys())
def test_precedence_key_is_a_total_order(
    a: PrecedenceKey, b: PrecedenceKey, c: PrecedenceKey
) -> None:
    # Totality + antisymmetry: exactly one of a<b, b<a, a==b.
    assert [_lt(a, b), _lt(b, a), a == b].count(True) == 1
    # Transitivity.
    if _lt(a, b) and _lt(b, c):
        assert _lt(a, c)
    if not _lt(b, a) and not _lt(c, b):
        assert not _lt(c, a)


def test_distinct_candidates_never_tie() -> None:
    # Route identity, rule index and match index end every key: two different
    # (route, rule, match) never compare equal, so the order is strict.
    m1, m2 = meta("a"), meta("b")
    hm = HTTPRouteMatch()
    keys = {http_match_key(m, ri, mi, hm) for m in (m1, m2) for ri in range(3) for mi in range(3)}
    assert len(keys) == 18
    assert http_match_key(m1, 0, 0, hm) < grpc_match_key(m1, 0, 0, None)  # HTTPRoute first
    assert http_match_key(m1, 0, 0, match("/x", EXACT)) < http_match_key(
        m1, 0, 0, match("/x/y/z", PREFIX)
    )
