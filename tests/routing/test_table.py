"""RouteTable.lookup: match types, host selection, listener isolation, gRPC methods."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from route_builders import (
    ADDRESS,
    EXACT,
    HREGEX,
    PREFIX,
    REGEX,
    attach,
    binding,
    get,
    gmatch,
    grpc,
    http,
    match,
    rule,
    snapshot,
    table,
    who,
)

from gatewayd.routing.config.model import HeaderMatchType, HTTPRoute, HTTPRouteMatch, PathMatchType
from gatewayd.routing.control.bindings import AttachedRoute
from gatewayd.routing.snapshot.candidates import parse_query
from gatewayd.routing.snapshot.table import HTTPRouteTable, SNITable

# --------------------------------------------------------------------------- path matches


@pytest.mark.parametrize(
    ("prefix", "path", "hit"),
    [
        ("/foo", "/foo", True),
        ("/foo", "/foo/", True),
        ("/foo", "/foo/bar", True),
        ("/foo", "/foobar", False),
        ("/foo", "/fo", False),
        ("/foo", "/", False),
        ("/foo/", "/foo", True),  # "When specified, a trailing `/` is ignored."
        ("/foo/", "/foo/bar", True),
        ("/foo/", "/foobar", False),
        ("/foo/bar", "/foo/bar/baz", True),
        ("/foo/bar", "/foo/barbaz", False),
        ("/foo/bar", "/foo", False),
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/foo", "/Foo", False),  # case-sensitive
    ],
)
def test_path_prefix_is_element_wise(prefix: str, path: str, hit: bool) -> None:
    t = table(http("r", rule(match(prefix, PREFIX))))
    assert (get(t, path) == "r/0") is hit


@pytest.mark.parametrize(
    ("value", "path", "hit"),
    [
        ("/abc", "/abc", True),
        ("/abc", "/abc/", False),
        ("/abc", "/Abc", False),
        ("/abc", "/abcd", False),
        ("/", "/", True),
        ("/", "/x", False),
    ],
)
def test_exact_path(value: str, path: str, hit: bool) -> None:
    t = table(http("r", rule(match(value, EXACT))))
    assert (get(t, path) == "r/0") is hit


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        (r"/v\d+/users", "/v2/users", True),
        (r"/v\d+/users", "/v2/users/1", False),  # full match, not search
        (r"/v\d+/users", "/x/v2/users", False),
        (r"/v\d+/users.*", "/v2/users/1", True),
        (r"/(a|b)", "/b", True),
        (r"/(a|b)", "/c", False),
    ],
)
def test_regex_path_is_a_full_match(pattern: str, path: str, hit: bool) -> None:
    t = table(http("r", rule(match(pattern, REGEX))))
    assert (get(t, path) == "r/0") is hit


def test_prefix_hit_carries_the_matched_prefix_for_rewrites() -> None:
    t = table(
        http("r", rule(match("/api/", PREFIX)), rule(match("/", PREFIX)), rule(match("/x", EXACT)))
    )
    hit = t.lookup("h", "GET", "/api/v1", "", {})
    assert hit is not None and hit.prefix == "/api"
    hit = t.lookup("h", "GET", "/other", "", {})
    assert hit is not None and hit.prefix == "/"
    hit = t.lookup("h", "GET", "/x", "", {})
    assert hit is not None and hit.prefix is None
    assert hit.listener_name == "http"


def test_hits_are_preallocated() -> None:
    t = table(http("r", rule(match("/a"), match("/b"))))
    first = t.lookup("h", "GET", "/a/1", "", {})
    assert first is not None
    assert t.lookup("h", "GET", "/a/2", "", {}) is first
    other = t.lookup("h", "GET", "/b", "", {})
    assert other is not None and other is not first and other.rule is first.rule


# --------------------------------------------------------------------------- other conditions


def test_method_match() -> None:
    t = table(http("r", rule(match("/", method="POST"))))
    assert get(t, "/", method="POST") == "r/0"
    assert get(t, "/", method="GET") is None
    assert get(t, "/", method="post") is None


def test_header_exact_names_case_insensitive_values_case_sensitive() -> None:
    t = table(http("r", rule(match("/", headers=[("X-Version", "V2")]))))
    assert get(t, "/", headers={"x-version": "V2"}) == "r/0"
    assert get(t, "/", headers={"x-version": "v2"}) is None
    assert get(t, "/", headers={"x-other": "V2"}) is None
    assert get(t, "/") is None


def test_header_regex() -> None:
    t = table(http("r", rule(match("/", headers=[("x-id", r"[0-9]+", HREGEX)]))))
    assert get(t, "/", headers={"x-id": "123"}) == "r/0"
    assert get(t, "/", headers={"x-id": "123a"}) is None


def test_repeated_header_name_only_first_entry_counts() -> None:
    # "only the first entry with an equivalent name MUST be considered for a match"
    t = table(http("r", rule(match("/", headers=[("x-a", "1"), ("X-A", "2")]))))
    assert get(t, "/", headers={"x-a": "1"}) == "r/0"
    assert get(t, "/", headers={"x-a": "2"}) is None


def test_all_conditions_of_a_match_must_hold_and_matches_are_ored() -> None:
    t = table(
        http(
            "r",
            rule(
                match("/foo", headers=[("version", "v2")]),
                match("/v2/foo"),
            ),
        )
    )
    assert get(t, "/foo", headers={"version": "v2"}) == "r/0"
    assert get(t, "/foo") is None  # path holds, header does not
    assert get(t, "/v2/foo") == "r/0"
    assert get(t, "/bar", headers={"version": "v2"}) is None


def test_query_params_exact_and_regex() -> None:
    t = table(
        http(
            "r",
            rule(match("/", query=[("animal", "whale")])),
            rule(match("/", query=[("id", r"\d+", HeaderMatchType.REGULAR_EXPRESSION)])),
        )
    )
    assert get(t, "/", query="animal=whale") == "r/0"
    assert get(t, "/", query="animal=whale&other=1") == "r/0"
    assert get(t, "/", query="ANIMAL=whale") is None  # names are case-sensitive
    assert get(t, "/", query="animal=Whale") is None
    assert get(t, "/", query="animal=whaledolphin") is None
    assert get(t, "/", query="id=42") == "r/1"
    assert get(t, "/", query="id=42x") is None
    assert get(t, "/") is None


def test_query_decoding_and_first_value_wins() -> None:
    t = table(http("r", rule(match("/", query=[("q", "a b/c")]))))
    assert get(t, "/", query="q=a+b%2Fc") == "r/0"
    assert get(t, "/", query="q=a%20b/c&q=zzz") == "r/0"
    assert get(t, "/", query="q=zzz&q=a+b%2Fc") is None


def test_parse_query_rules() -> None:
    assert parse_query("") == {}
    assert parse_query("a=1&a=2&b&c=&&d=%41+b") == {"a": "1", "b": "", "c": "", "d": "A b"}
    assert parse_query("x%3Dy=1") == {"x=y": "1"}


# --------------------------------------------------------------------------- hostnames


def test_hostname_precedence_exact_then_longest_wildcard_then_any() -> None:
    t = table(
        http("exact", rule(), hostnames=["a.foo.example.com"]),
        http("wild-long", rule(), hostnames=["*.foo.example.com"]),
        http("wild-short", rule(), hostnames=["*.example.com"]),
        http("any", rule()),
    )
    assert get(t, "/", host="a.foo.example.com") == "exact/0"
    assert get(t, "/", host="b.foo.example.com") == "wild-long/0"
    assert get(t, "/", host="x.b.foo.example.com") == "wild-long/0"
    assert get(t, "/", host="b.example.com") == "wild-short/0"
    assert get(t, "/", host="a.b.example.com") == "wild-short/0"  # one or more labels
    assert get(t, "/", host="foo.example.com") == "wild-short/0"
    assert get(t, "/", host="example.com") == "any/0"  # a wildcard needs a label
    assert get(t, "/", host="other.net") == "any/0"
    assert get(t, "/", host="") == "any/0"


def test_most_specific_host_group_does_not_fall_through() -> None:
    # Envoy virtual-host semantics: the Host picks one group; a miss there is a 404 even
    # when a less specific group has a matching rule.
    t = table(
        http("specific", rule(match("/only")), hostnames=["a.example.com"]),
        http("wild", rule(match("/")), hostnames=["*.example.com"]),
        http("any", rule(match("/"))),
    )
    assert get(t, "/only", host="a.example.com") == "specific/0"
    assert get(t, "/else", host="a.example.com") is None
    assert get(t, "/else", host="b.example.com") == "wild/0"


def test_routes_sharing_a_hostname_are_ranked_together() -> None:
    # HTTPRouteMatchingAcrossRoutes: both routes serve example.com.
    part1 = http(
        "part1",
        rule(match("/"), match("/", headers=[("version", "one")]), backends=None),
        hostnames=["example.com", "example.net"],
    )
    part2 = http(
        "part2",
        rule(match("/v2"), match("/", headers=[("version", "two")])),
        hostnames=["example.com"],
    )
    t = table(part1, part2)
    assert get(t, "/", host="example.com") == "part1/0"
    assert get(t, "/v2", host="example.com") == "part2/0"
    assert get(t, "/v2", host="example.net") == "part1/0"
    assert get(t, "/v2example", host="example.com") == "part1/0"
    assert get(t, "/", host="example.com", headers={"version": "two"}) == "part2/0"
    assert get(t, "/", host="example.com", headers={"version": "one"}) == "part1/0"


def test_route_attached_with_intersected_hostnames() -> None:
    # HTTPRouteHostnameIntersection: "*.specific.com" on listener "very.specific.com"
    # becomes "very.specific.com" (AttachedRoute.hostnames).
    r1 = http("s1", rule(match("/s1")), hostnames=["non.matching.com", "very.specific.com"])
    r3 = http("s3", rule(match("/s3")), hostnames=["*.specific.com"])
    lst = binding(
        attach(r1, ["very.specific.com"]),
        attach(r3, ["very.specific.com"]),
        name="listener-1",
        hostname="very.specific.com",
    )
    t = snapshot(lst).ports[(ADDRESS, 80)].table
    assert get(t, "/s1", host="very.specific.com") == "s1/0"
    assert get(t, "/s3", host="very.specific.com") == "s3/0"
    assert get(t, "/s3", host="foo.specific.com") is None
    assert get(t, "/s1", host="non.matching.com") is None


def test_listener_isolation() -> None:
    """GatewayHTTPListenerIsolation with hostname intersection: a request is served only
    by routes of the most specific listener matching its host."""
    hostnames = ["bar.com", "*.example.com", "*.foo.example.com", "abc.foo.example.com"]

    def route(name: str) -> AttachedRoute:
        r = http(name, rule(match(f"/{name}")), hostnames=hostnames)
        return attach(r, effective[name])

    effective = {
        "empty-hostname": hostnames,
        "wildcard-example-com": ["*.example.com", "*.foo.example.com", "abc.foo.example.com"],
        "wildcard-foo-example-com": ["*.foo.example.com", "abc.foo.example.com"],
        "abc-foo-example-com": ["abc.foo.example.com"],
    }
    listeners = {
        "empty-hostname": None,
        "wildcard-example-com": "*.example.com",
        "wildcard-foo-example-com": "*.foo.example.com",
        "abc-foo-example-com": "abc.foo.example.com",
    }
    snap = snapshot(*(binding(route(n), name=n, hostname=h) for n, h in listeners.items()))
    assert list(snap.ports) == [(ADDRESS, 80)]
    port = snap.ports[(ADDRESS, 80)]
    assert set(port.listener_names) == set(listeners)
    t = port.table
    expect = {
        "bar.com": "empty-hostname",
        "bar.example.com": "wildcard-example-com",
        "bar.foo.example.com": "wildcard-foo-example-com",
        "abc.foo.example.com": "abc-foo-example-com",
    }
    for host, owner in expect.items():
        for name in listeners:
            hit = t.lookup(host, "GET", f"/{name}", "", {})
            if name == owner:
                assert hit is not None and hit.listener_name == owner, (host, name)
                assert who(hit) == f"{name}/0"
            else:
                assert hit is None, (host, name)


def test_listener_hostname_matching() -> None:
    # HTTPRouteListenerHostnameMatching: routes without hostnames on four listeners.
    v1 = http("v1", rule())
    v2 = http("v2", rule())
    v3 = http("v3", rule())
    snap = snapshot(
        binding(attach(v1, ["bar.com"]), name="l1", hostname="bar.com"),
        binding(attach(v2, ["foo.bar.com"]), name="l2", hostname="foo.bar.com"),
        binding(attach(v3, ["*.bar.com"]), name="l3", hostname="*.bar.com"),
        binding(attach(v3, ["*.foo.com"]), name="l4", hostname="*.foo.com"),
    )
    t = snap.ports[(ADDRESS, 80)].table
    assert get(t, "/", host="bar.com") == "v1/0"
    assert get(t, "/", host="foo.bar.com") == "v2/0"
    assert get(t, "/", host="baz.bar.com") == "v3/0"
    assert get(t, "/", host="multiple.prefixes.bar.com") == "v3/0"
    assert get(t, "/", host="multiple.prefixes.foo.com") == "v3/0"
    assert get(t, "/", host="foo.com") is None
    assert get(t, "/", host="no.matching.host") is None


# --------------------------------------------------------------------------- gRPC


def test_grpc_method_matching() -> None:
    t = table(
        grpc("both", gmatch("pkg.Echo", "Echo")),
        grpc("service", gmatch("pkg.Echo")),
        grpc("method", gmatch(None, "Ping")),
        grpc("regex", gmatch(r"pkg\.R.*", r"Get.*", kind=HeaderMatchType.REGULAR_EXPRESSION)),
    )
    assert get(t, "/pkg.Echo/Echo", method="POST") == "both/0"
    assert get(t, "/pkg.Echo/EchoTwo", method="POST") == "service/0"
    assert get(t, "/pkg.EchoX/Echo", method="POST") is None
    assert get(t, "/other.Svc/Ping", method="POST") == "method/0"
    assert get(t, "/pkg.Echo/Ping", method="POST") == "service/0"  # service chars first
    assert get(t, "/pkg.Rows/GetAll", method="POST") == "regex/0"
    assert get(t, "/pkg.Rows/PutAll", method="POST") is None
    assert get(t, "/pkg.Echo/Echo", method="GET") is None  # gRPC implies POST


def test_grpc_headers_and_match_all() -> None:
    t = table(
        grpc("hdr", gmatch("pkg.S", "M", headers=[("x-tenant", "a")])),
        grpc("plain", gmatch("pkg.S", "M")),
        grpc("all"),
    )
    assert get(t, "/pkg.S/M", method="POST", headers={"x-tenant": "a"}) == "hdr/0"
    assert get(t, "/pkg.S/M", method="POST") == "plain/0"
    assert get(t, "/any.Svc/Any", method="POST") == "all/0"


def test_httproute_ranks_before_grpcroute_on_a_shared_hostname() -> None:
    t = table(
        grpc("g", gmatch("pkg.S", "M"), hostnames=["h.example.com"], ts="2020-01-01T00:00:00Z"),
        http("h", rule(match("/")), hostnames=["h.example.com"], ts="2024-01-01T00:00:00Z"),
    )
    assert get(t, "/pkg.S/M", host="h.example.com", method="POST") == "h/0"


# --------------------------------------------------------------------------- buckets


def test_many_routes_bucketed_correctly() -> None:
    routes = []
    for i in range(50):
        routes.append(http(f"p{i}", rule(match(f"/svc{i}")), hostnames=["h"]))
        routes.append(http(f"e{i}", rule(match(f"/svc{i}/exact", EXACT)), hostnames=["h"]))
    routes.append(http("root", rule(match("/")), hostnames=["h"]))
    routes.append(http("rx", rule(match(r"/svc1\d/special", REGEX)), hostnames=["h"]))
    t = table(*routes)
    assert get(t, "/svc7", host="h") == "p7/0"
    assert get(t, "/svc7/exact", host="h") == "e7/0"
    assert get(t, "/svc7/exact/x", host="h") == "p7/0"
    assert get(t, "/svc12/special", host="h") == "rx/0"  # regex ranks before prefix
    assert get(t, "/svc7/special", host="h") == "p7/0"
    assert get(t, "/nothing", host="h") == "root/0"
    assert get(t, "relative", host="h") is None


# --------------------------------------------------------------------------- TLS / dump


def test_tls_passthrough_port_gets_an_sni_table() -> None:
    from route_builders import meta, ref

    from gatewayd.routing.config.model import TLSRoute, TLSRouteRule

    old = TLSRoute(
        meta=meta("old", ts="2020-01-01T00:00:00Z"),
        hostnames=("*.example.com",),
        rules=(TLSRouteRule(backend_refs=(ref("a"),)),),
    )
    new = TLSRoute(
        meta=meta("new", ts="2021-01-01T00:00:00Z"),
        hostnames=("*.example.com",),
        rules=(TLSRouteRule(backend_refs=(ref("b"),)),),
    )
    exact = TLSRoute(
        meta=meta("exact"),
        hostnames=("x.example.com",),
        rules=(TLSRouteRule(backend_refs=(ref("c"),)),),
    )
    snap = snapshot(binding(new, old, exact, name="tls", port=443, protocol="TLS"))
    port = snap.ports[(ADDRESS, 443)]
    assert port.protocol == "TLS"
    t = port.table
    assert isinstance(t, SNITable)
    assert t.lookup("x.example.com", "GET", "/", "", {}) is None
    hit = t.lookup_sni("y.example.com")
    assert hit is not None and hit.rule.route_name == "old" and hit.rule.route_kind == "TLSRoute"
    assert hit.rule.backends[0].name.endswith("/a:8080")
    hit = t.lookup_sni("X.Example.com")
    assert hit is not None and hit.rule.route_name == "exact"
    assert t.lookup_sni("example.org") is None
    json.dumps(t.to_json())


def test_to_json_is_a_readable_dump() -> None:
    t = table(
        http(
            "r", rule(match("/a", headers=[("x", "1")]), backends=None), hostnames=["h.example.com"]
        ),
        http("s", rule(match("/b", EXACT))),
    )
    assert isinstance(t, HTTPRouteTable)
    dump = t.to_json()
    text = json.dumps(dump)
    assert isinstance(dump, dict)
    (listener,) = dump["listeners"]
    groups = listener["hostGroups"]
    assert [g["hostname"] for g in groups] == ["h.example.com", "*"]
    first = groups[0]["candidates"][0]
    assert first["route"] == "HTTPRoute default/r"
    assert first["path"] == {"type": "PathPrefix", "value": "/a"}
    assert first["headers"] == [{"name": "x", "type": "Exact", "value": "1"}]
    rule_dump = dump["rules"]["default/r/rule/0"]
    assert rule_dump["backends"][0]["weight"] == 1
    assert rule_dump["backends"][0]["endpoints"] == ["10.1.0.1:9000"]
    assert "default/s/rule/0" in text


# --------------------------------------------------------------------------- property: reference


def _ref_path_ok(kind: PathMatchType, value: str, path: str) -> bool:
    if kind is PathMatchType.EXACT:
        return path == value
    if kind is PathMatchType.REGULAR_EXPRESSION:
        return re.fullmatch(value, path) is not None
    # Element-wise prefix: compare the '/'-separated elements.
    if not path.startswith("/"):
        return False
    want = [e for e in value.split("/") if e]
    have = path.split("/")[1:]
    return have[: len(want)] == want


def _first_by(items: Sequence[tuple[str, str]], fold: bool) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for name, value in items:
        k = name.lower() if fold else name
        if k not in seen:
            seen.add(k)
            out.append((name, value))
    return out


def _ref_key(route: HTTPRoute, ri: int, mi: int, m: HTTPRouteMatch) -> tuple[object, ...]:
    # Written from the spec text, independently of compile/precedence.py.
    tier = {
        PathMatchType.EXACT: 0,
        PathMatchType.REGULAR_EXPRESSION: 1,
        PathMatchType.PATH_PREFIX: 2,
    }
    value = m.path.value
    length = len(value.rstrip("/")) if m.path.type is PathMatchType.PATH_PREFIX else len(value)
    ts = route.meta.creation_timestamp
    return (
        tier[m.path.type],
        -length,
        0 if m.method else 1,
        -len(_first_by([(h.name, h.value) for h in m.headers], True)),
        -len(_first_by([(q.name, q.value) for q in m.query_params], False)),
        ts != "",  # "" sorts first
        ts,
        f"{route.meta.namespace}/{route.meta.name}",
        ri,
        mi,
    )


def _ref_host_rank(pattern: str | None, host: str) -> tuple[int, int] | None:
    if pattern is None:
        return (0, 0)
    if pattern.startswith("*."):
        labels = host.split(".")
        suffix = pattern[2:].split(".")
        ok = len(labels) > len(suffix) and labels[-len(suffix) :] == suffix
        return (1, len(pattern)) if ok else None
    return (2, len(pattern)) if pattern == host else None


def reference_lookup(
    routes: Sequence[HTTPRoute],
    host: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
) -> tuple[str, str | None] | None:
    """A straightforward scan: pick the most specific hostname, then sort every
    (route, rule, match) of that host by the spec's precedence and take the first
    whose conditions all hold."""
    best: tuple[int, int] | None = None
    owners: dict[str | None, list[HTTPRoute]] = {}
    for r in routes:
        for pattern in r.hostnames or (None,):
            rank = _ref_host_rank(pattern, host)
            if rank is None:
                continue
            owners.setdefault(pattern, []).append(r)
            if best is None or rank > best:
                best = rank
    if best is None:
        return None
    group = next(rs for p, rs in owners.items() if _ref_host_rank(p, host) == best)
    cands = []
    for r in group:
        for ri, rl in enumerate(r.rules):
            for mi, m in enumerate(rl.matches):
                cands.append((_ref_key(r, ri, mi, m), r, ri, m))
    cands.sort(key=lambda c: c[0])
    params: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        params.setdefault(k, v)
    for _, r, ri, m in cands:
        if not _ref_path_ok(m.path.type, m.path.value, path):
            continue
        if m.method is not None and m.method != method:
            continue
        hdrs = [(h.name.lower(), h.value, h.type) for h in m.headers]
        if not all(
            n in headers
            and (headers[n] == v if t is HeaderMatchType.EXACT else re.fullmatch(v, headers[n]))
            for n, v, t in _dedupe3(hdrs)
        ):
            continue
        qs = [(q.name, q.value, q.type) for q in m.query_params]
        if not all(
            n in params
            and (params[n] == v if t is HeaderMatchType.EXACT else re.fullmatch(v, params[n]))
            for n, v, t in _dedupe3(qs)
        ):
            continue
        prefix = None
        if m.path.type is PathMatchType.PATH_PREFIX:
            prefix = m.path.value.rstrip("/") or "/"
        return (f"{r.meta.name}/{ri}", prefix)
    return None


def _dedupe3(
    items: list[tuple[str, str, HeaderMatchType]],
) -> list[tuple[str, str, HeaderMatchType]]:
    seen: set[str] = set()
    out = []
    for n, v, t in items:
        if n not in seen:
            seen.add(n)
            out.append((n, v, t))
    return out


_SEGMENTS = ["a", "b", "ab", "v1"]
_HOSTS = ["a.example.com", "b.a.example.com", "c.example.com", "example.com", "x.b.a.example.com"]
_PATTERNS = ["a.example.com", "*.example.com", "b.a.example.com", "*.a.example.com"]


@st.composite
def _paths(draw: st.DrawFn) -> str:
    """Valid route path values: no empty element ("Must not contain consecutive `/`
    characters"), an optional trailing '/'."""
    segs = draw(st.lists(st.sampled_from(_SEGMENTS), min_size=0, max_size=3))
    slash: bool = draw(st.booleans())
    tail = "/" if segs and slash else ""
    return "/" + "/".join(segs) + tail


@st.composite
def _request_paths(draw: st.DrawFn) -> str:
    """Request paths may hold empty elements."""
    segs = draw(st.lists(st.sampled_from([*_SEGMENTS, ""]), min_size=0, max_size=3))
    return "/" + "/".join(segs)


@st.composite
def _matches(draw: st.DrawFn) -> HTTPRouteMatch:
    kind = draw(st.sampled_from(list(PathMatchType)))
    path = draw(_paths())
    if kind is PathMatchType.REGULAR_EXPRESSION:
        path = re.escape(path) + draw(st.sampled_from(["", ".*", "(/.*)?"]))
    pairs = [("x-a", "1"), ("X-A", "2"), ("x-b", "2"), ("x-c", "[0-9]")]
    headers = draw(st.lists(st.sampled_from(pairs), max_size=2, unique=True))
    qpairs = [("q", "1"), ("Q", "1"), ("r", "a b"), ("s", "[a-z]+")]
    query = draw(st.lists(st.sampled_from(qpairs), max_size=2, unique=True))
    regex_names = {"x-c", "s"}
    return match(
        path,
        kind,
        method=draw(st.sampled_from([None, "GET", "POST"])),
        headers=[(n, v, HREGEX if n in regex_names else HeaderMatchType.EXACT) for n, v in headers],
        query=[(n, v, HREGEX if n in regex_names else HeaderMatchType.EXACT) for n, v in query],
    )


@st.composite
def _routes(draw: st.DrawFn) -> list[HTTPRoute]:
    n = draw(st.integers(min_value=1, max_value=6))
    out = []
    for i in range(n):
        rules = [
            rule(*draw(st.lists(_matches(), min_size=1, max_size=3)))
            for _ in range(draw(st.integers(min_value=1, max_value=3)))
        ]
        out.append(
            http(
                f"r{i}",
                *rules,
                hostnames=draw(st.lists(st.sampled_from(_PATTERNS), max_size=2, unique=True)),
                ns=draw(st.sampled_from(["a", "b"])),
                ts=draw(st.sampled_from(["", "2020-01-01T00:00:00Z", "2021-06-01T00:00:00Z"])),
            )
        )
    return out


def _requests(
    routes: list[HTTPRoute],
) -> st.SearchStrategy[tuple[str, str, str, str, dict[str, str]]]:
    # Request paths near the routes' own paths (plus suffixes that test element
    # boundaries) so that most requests have several candidates to rank.
    near = sorted(
        {
            (m.path.value.rstrip("/") + tail) or "/"
            for r in routes
            for rl in r.rules
            for m in rl.matches
            if m.path.type is not PathMatchType.REGULAR_EXPRESSION
            for tail in ("", "/", "b", "/b", "/a/b")
        }
    )
    paths = st.one_of(_request_paths(), st.sampled_from(near)) if near else _request_paths()
    headers = st.lists(
        st.sampled_from([("x-a", "1"), ("x-a", "2"), ("x-b", "2"), ("x-c", "7")]), max_size=3
    ).map(dict)
    query = st.lists(
        st.sampled_from(["q=1", "Q=1", "r=a+b", "r=a%20b", "s=abc", "q=2"]), max_size=3
    ).map("&".join)
    return st.tuples(
        st.sampled_from(_HOSTS), st.sampled_from(["GET", "POST"]), paths, query, headers
    )


@settings(max_examples=150, deadline=None)
@given(routes=_routes(), data=st.data())
def test_table_agrees_with_reference_matcher(routes: list[HTTPRoute], data: st.DataObject) -> None:
    t = table(*routes)
    requests = data.draw(st.lists(_requests(routes), min_size=1, max_size=10))
    for host, method, path, query, headers in requests:
        hit = t.lookup(host, method, path, query, headers)
        got = None if hit is None else (who(hit), hit.prefix)
        assert got == reference_lookup(routes, host, method, path, query, headers)


def _path_only(routes: list[HTTPRoute]) -> list[HTTPRoute]:
    """``routes`` with every match reduced to its path."""
    return [
        http(
            r.meta.name,
            *(rule(*(match(m.path.value, m.path.type) for m in rl.matches)) for rl in r.rules),
            hostnames=r.hostnames,
            ns=r.meta.namespace,
            ts=r.meta.creation_timestamp,
        )
        for r in routes
    ]


@settings(max_examples=150, deadline=None)
@given(routes=_routes(), data=st.data())
def test_a_table_matching_on_host_and_path_alone_remembers_its_answers(
    routes: list[HTTPRoute], data: st.DataObject
) -> None:
    """A table whose matches have no method, header or query condition keeps each
    answer by (host, path) (``HTTPRouteTable.memo``): asked again, with any method,
    fields or query, it still agrees with the reference matcher."""
    routes = _path_only(routes)
    t = table(*routes)
    assert isinstance(t, HTTPRouteTable) and t.memo == {}
    requests = data.draw(st.lists(_requests(routes), min_size=1, max_size=10))
    for _ in range(2):
        for host, method, path, query, headers in requests:
            hit = t.lookup(host, method, path, query, headers)
            assert t.memo[(host, path)] is hit
            got = None if hit is None else (who(hit), hit.prefix)
            assert got == reference_lookup(routes, host, method, path, query, headers)


def test_the_memo_is_only_kept_where_host_and_path_decide_and_is_bounded() -> None:
    from gatewayd.routing.snapshot import table as table_module

    for conditions in ({"method": "GET"}, {"headers": [("x-a", "1")]}, {"query": [("q", "1")]}):
        t = table(http("r", rule(match("/a", PREFIX, **conditions))))  # type: ignore[arg-type]
        assert isinstance(t, HTTPRouteTable) and t.memo is None
        assert get(t, "/a/b", **{"method": "POST"}) is None
    t = table(http("r", rule(match("/a", PREFIX)), rule(match("/b.*", REGEX))))
    assert isinstance(t, HTTPRouteTable) and t.memo is not None
    for i in range(table_module.MEMO_SIZE + 5):
        assert get(t, f"/a/{i}") == "r/0"
        assert len(t.memo) <= table_module.MEMO_SIZE
    assert get(t, "/bx") == "r/1" and get(t, "/c") is None
    assert t.memo[("example.com", "/c")] is None


def test_the_memo_keeps_no_long_keys() -> None:
    """Host and path are the client's: a long one is answered (the same answer) but not
    kept, so the memo's memory is bounded by its entry count times MEMO_KEY_LEN."""
    from gatewayd.routing.snapshot import table as table_module

    t = table(http("r", rule(match("/a", PREFIX))))
    assert isinstance(t, HTTPRouteTable) and t.memo is not None
    long_path = "/a/" + "x" * table_module.MEMO_KEY_LEN
    assert get(t, long_path) == "r/0"
    assert get(t, long_path) == "r/0"
    assert all(len(h) + len(p) <= table_module.MEMO_KEY_LEN for h, p in t.memo)
    assert get(t, "/a/short") == "r/0" and ("example.com", "/a/short") in t.memo
