"""compile_snapshot: ports, rules, filters, backends, timeouts, retry."""

from __future__ import annotations

import json

import pytest
from route_builders import (
    ADDRESS,
    REGEX,
    attach,
    binding,
    gmatch,
    grpc,
    http,
    match,
    ref,
    resolution,
    rule,
    snapshot,
    table,
)

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.model import (
    BackendObjectReference,
    FilterType,
    Fraction,
    HTTPCORSFilter,
    HTTPHeader,
    HTTPHeaderFilter,
    HTTPPathModifier,
    HTTPRequestMirrorFilter,
    HTTPRequestRedirectFilter,
    HTTPRouteFilter,
    HTTPRouteRetry,
    HTTPRouteTimeouts,
    HTTPURLRewriteFilter,
    LocalObjectReference,
    PathModifierType,
    SessionPersistence,
)
from gatewayd.routing.control.bindings import BackendKey, BackendTarget
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.rules import CompiledRule, HeaderOps, PathModifier, Redirect, Rewrite
from gatewayd.routing.snapshot.table import HTTPRouteTable, SNITable


def compiled(
    *rules_: object, invalid: tuple[str, ...] = (), missing: tuple[str, ...] = ()
) -> CompiledRule:
    """The CompiledRule of rule 0 of a route made of ``rules_``."""
    route = http("r", *rules_)  # type: ignore[arg-type]
    snap = snapshot(binding(route), invalid=invalid, missing=missing)
    hit = snap.ports[(ADDRESS, 80)].table.lookup("h", "GET", "/", "", {})
    assert hit is not None
    return hit.rule


def header_filter(kind: FilterType, **kw: object) -> HTTPRouteFilter:
    hf = HTTPHeaderFilter(**kw)  # type: ignore[arg-type]
    if kind is FilterType.REQUEST_HEADER_MODIFIER:
        return HTTPRouteFilter(type=kind, request_header_modifier=hf)
    return HTTPRouteFilter(type=kind, response_header_modifier=hf)


# --------------------------------------------------------------------------- ports


def test_listeners_sharing_a_port_share_one_listener_port() -> None:
    a = http("a", rule(), hostnames=["a.example.com"])
    b = http("b", rule(), hostnames=["b.example.com"])
    c = http("c", rule())
    snap = snapshot(
        binding(attach(a), name="la", hostname="a.example.com"),
        binding(attach(b), name="lb", hostname="b.example.com"),
        binding(c, name="other", port=8080),
        binding(c, name="tls", port=8443, protocol="HTTPS"),
    )
    assert set(snap.ports) == {(ADDRESS, 80), (ADDRESS, 8080), (ADDRESS, 8443)}
    port80 = snap.ports[(ADDRESS, 80)]
    assert port80.listener_names == ("la", "lb")
    assert port80.protocol == "HTTP"
    assert (port80.gateway_namespace, port80.gateway_name) == ("default", "gw")
    assert snap.ports[(ADDRESS, 8443)].protocol == "HTTPS"
    assert isinstance(snap.ports[(ADDRESS, 8443)].table, HTTPRouteTable)
    hit = port80.table.lookup("b.example.com", "GET", "/", "", {})
    assert hit is not None and hit.listener_name == "lb" and hit.rule.route_name == "b"
    assert snap.generation == 1
    json.dumps(snap.to_json())


def test_generation_is_passed_through_and_empty_resolution_compiles() -> None:
    snap = compile_snapshot(resolution(), generation=42)
    assert snap.generation == 42
    assert dict(snap.ports) == {}


def test_tls_only_port_gets_sni_table_and_l4_ports_their_own_tables() -> None:
    snap = snapshot(
        binding(name="tls", port=443, protocol="TLS"),
        binding(name="tcp", port=9000, protocol="TCP"),
        binding(name="udp", port=9000, protocol="UDP"),
        binding(name="other", port=9001, protocol="SCTP"),
    )
    assert set(snap.ports) == {(ADDRESS, 443), (ADDRESS, 9000)}
    assert isinstance(snap.ports[(ADDRESS, 443)].table, SNITable)
    # UDP port 9000 is another port than TCP port 9000.
    assert set(snap.udp_ports) == {(ADDRESS, 9000)}
    assert snap.ports[(ADDRESS, 9000)].protocol == "TCP"
    assert snap.udp_ports[(ADDRESS, 9000)].protocol == "UDP"


def test_route_attached_to_two_listeners_shares_compiled_rules() -> None:
    r = http("r", rule())
    snap = snapshot(binding(r, name="one"), binding(r, name="two", port=81))
    h1 = snap.ports[(ADDRESS, 80)].table.lookup("h", "GET", "/", "", {})
    h2 = snap.ports[(ADDRESS, 81)].table.lookup("h", "GET", "/", "", {})
    assert h1 is not None and h2 is not None
    assert h1.rule is h2.rule
    assert (h1.listener_name, h2.listener_name) == ("one", "two")


def test_invalid_regex_match_is_dropped_not_fatal() -> None:
    t = table(http("r", rule(match("/(", kind=REGEX), match("/ok"))))
    assert t.lookup("h", "GET", "/ok", "", {}) is not None
    assert t.lookup("h", "GET", "/(", "", {}) is None


# --------------------------------------------------------------------------- backends


def test_weights_are_cumulative_and_zero_weights_dropped() -> None:
    r = compiled(rule(backends=[ref("a", weight=3), ref("zero", weight=0), ref("b", weight=1)]))
    assert [b.name for b in r.backends] == ["default/a:8080", "default/b:8080"]
    assert r.cumulative_weights == (3, 4)
    assert r.total_weight == 4
    assert r.direct_status is None
    assert r.pick_backend(0.0) is r.backends[0]
    assert r.pick_backend(0.74) is r.backends[0]
    assert r.pick_backend(0.75) is r.backends[1]
    assert r.backends[0].next_endpoint() == EndpointAddress(
        address="10.1.0.1", port=9000, pod="a-pod"
    )


def test_invalid_backend_keeps_its_share_as_500() -> None:
    r = compiled(rule(backends=[ref("good"), ref("bad")]), invalid=("bad",))
    assert [b.invalid_status for b in r.backends] == [None, 500]
    assert r.total_weight == 2
    assert r.direct_status is None


def test_unresolved_backend_is_invalid_too() -> None:
    r = compiled(rule(backends=[ref("good"), ref("gone", port=None)]), missing=("gone",))
    assert r.backends[1].invalid_status == 500
    assert r.backends[1].name == "default/gone"


@pytest.mark.parametrize(
    ("rule_", "invalid"),
    [
        (rule(backends=[]), ()),
        (rule(backends=[ref("a", weight=0), ref("b", weight=0)]), ()),
        (rule(backends=[ref("a"), ref("b")]), ("a", "b")),
    ],
    ids=["no-backendRefs", "all-weights-zero", "all-invalid"],
)
def test_rules_that_cannot_forward_answer_500(rule_: object, invalid: tuple[str, ...]) -> None:
    assert compiled(rule_, invalid=invalid).direct_status == 500


def test_redirect_without_backends_is_not_a_500() -> None:
    redirect = HTTPRouteFilter(
        type=FilterType.REQUEST_REDIRECT,
        request_redirect=HTTPRequestRedirectFilter(
            scheme="https",
            hostname="example.org",
            port=8443,
            status_code=301,
            path=HTTPPathModifier(
                type=PathModifierType.REPLACE_PREFIX_MATCH, replace_prefix_match="/new"
            ),
        ),
    )
    r = compiled(rule(backends=[], filters=[redirect]))
    assert r.direct_status is None
    assert r.redirect == Redirect(
        scheme="https",
        hostname="example.org",
        port=8443,
        status_code=301,
        path=PathModifier(type="ReplacePrefixMatch", value="/new"),
    )


def test_backend_level_header_filters_go_on_the_backend() -> None:
    br = ref(
        "a",
        filters=[
            header_filter(
                FilterType.REQUEST_HEADER_MODIFIER, set=(HTTPHeader(name="X-B", value="1"),)
            ),
            header_filter(FilterType.RESPONSE_HEADER_MODIFIER, remove=("Server",)),
        ],
    )
    r = compiled(rule(backends=[br]))
    (b,) = r.backends
    assert b.request_headers == HeaderOps(set=(("x-b", "1"),))
    assert b.response_headers == HeaderOps(remove=("server",))
    assert r.request_headers is None


def test_backend_target_fields_carried() -> None:
    route = http("r", rule(backends=[ref("a")]))
    key = BackendKey(group="", kind="Service", namespace="default", name="a", port=8080)
    target = BackendTarget(
        name="default/a:8080",
        endpoints=(EndpointAddress(address="svc.example", port=80),),
        app_protocol="kubernetes.io/h2c",
        fqdn=True,
    )
    snap = compile_snapshot(resolution(binding(route), extra={key: target}), generation=3)
    hit = snap.ports[(ADDRESS, 80)].table.lookup("h", "GET", "/", "", {})
    assert hit is not None
    (b,) = hit.rule.backends
    assert (b.app_protocol, b.fqdn, b.endpoints) == ("kubernetes.io/h2c", True, target.endpoints)
    # The snapshot knows every endpoint it may connect to (the pool drains the others).
    assert snap.endpoints is not None and ("svc.example", 80) in snap.endpoints


# --------------------------------------------------------------------------- filters


def test_header_modifiers_lower_cased_and_merged() -> None:
    r = compiled(
        rule(
            filters=[
                header_filter(
                    FilterType.REQUEST_HEADER_MODIFIER,
                    set=(HTTPHeader(name="X-Set", value="V"),),
                    add=(HTTPHeader(name="X-Add", value="a"),),
                    remove=("X-Gone",),
                ),
                header_filter(
                    FilterType.RESPONSE_HEADER_MODIFIER, add=(HTTPHeader(name="X-Resp", value="r"),)
                ),
            ]
        )
    )
    assert r.request_headers == HeaderOps(
        set=(("x-set", "V"),), add=(("x-add", "a"),), remove=("x-gone",)
    )
    assert r.response_headers == HeaderOps(add=(("x-resp", "r"),))


def test_url_rewrite_and_cors() -> None:
    route = http(
        "r",
        rule(
            match("/"),
            filters=[
                HTTPRouteFilter(
                    type=FilterType.URL_REWRITE,
                    url_rewrite=HTTPURLRewriteFilter(
                        hostname="internal",
                        path=HTTPPathModifier(
                            type=PathModifierType.REPLACE_FULL_PATH, replace_full_path="/x"
                        ),
                    ),
                ),
                HTTPRouteFilter(
                    type=FilterType.CORS,
                    cors=HTTPCORSFilter(
                        allow_origins=("https://*.example.com",),
                        allow_methods=("GET",),
                        allow_credentials=True,
                        max_age=60,
                    ),
                ),
            ],
        ),
    )
    hit = table(route).lookup("h", "GET", "/", "", {})
    assert hit is not None
    assert hit.rule.rewrite == Rewrite(
        hostname="internal", path=PathModifier(type="ReplaceFullPath", value="/x")
    )
    cors = hit.rule.cors
    assert cors is not None
    assert cors.allow_origins == ("https://*.example.com",)
    assert (cors.allow_credentials, cors.max_age) == (True, 60)


@pytest.mark.parametrize(
    ("percent", "fraction", "expected"),
    [
        (None, None, 1.0),
        (25, None, 0.25),
        (0, None, 0.0),
        (None, Fraction(numerator=1, denominator=3), 1 / 3),
        (None, Fraction(numerator=5), 0.05),
    ],
)
def test_mirror_fraction(percent: int | None, fraction: Fraction | None, expected: float) -> None:
    mirror = HTTPRouteFilter(
        type=FilterType.REQUEST_MIRROR,
        request_mirror=HTTPRequestMirrorFilter(
            backend_ref=BackendObjectReference(name="shadow", port=8080),
            percent=percent,
            fraction=fraction,
        ),
    )
    r = compiled(rule(filters=[mirror]))
    (m,) = r.mirrors
    assert m.fraction == pytest.approx(expected)
    assert m.backend.name == "default/shadow:8080"
    assert m.backend.endpoints


def test_mirror_to_unresolvable_backend_is_dropped() -> None:
    mirror = HTTPRouteFilter(
        type=FilterType.REQUEST_MIRROR,
        request_mirror=HTTPRequestMirrorFilter(
            backend_ref=BackendObjectReference(name="shadow", port=8080)
        ),
    )
    r = compiled(rule(filters=[mirror]), invalid=("shadow",))
    assert r.mirrors == ()
    assert r.direct_status is None


def test_extension_ref_filter_answers_500() -> None:
    ext = HTTPRouteFilter(
        type=FilterType.EXTENSION_REF,
        extension_ref=LocalObjectReference(group="example.io", kind="Thing", name="t"),
    )
    assert compiled(rule(filters=[ext])).direct_status == 500
    redirect = HTTPRouteFilter(
        type=FilterType.REQUEST_REDIRECT, request_redirect=HTTPRequestRedirectFilter()
    )
    r = compiled(rule(backends=[], filters=[redirect, ext]))
    # "the filter MUST NOT be skipped": no redirect may answer in its place.
    assert (r.direct_status, r.redirect) == (500, None)
    r = compiled(rule(backends=[ref("a", filters=[ext]), ref("b")]))
    assert [b.invalid_status for b in r.backends] == [500, None]


# --------------------------------------------------------------------------- timeouts / retry


@pytest.mark.parametrize(
    ("timeouts", "request_t", "backend_t"),
    [
        (None, None, None),
        (HTTPRouteTimeouts(request=10.0, backend_request=2.5), 10.0, 2.5),
        # 0 disables, which is not the same as unset (the proxy's default applies)
        (HTTPRouteTimeouts(request=0.0, backend_request=0.0), 0.0, 0.0),
        (HTTPRouteTimeouts(backend_request=1.0), None, 1.0),
    ],
)
def test_timeouts(
    timeouts: HTTPRouteTimeouts | None, request_t: float | None, backend_t: float | None
) -> None:
    r = compiled(rule(timeouts=timeouts))
    assert (r.request_timeout, r.backend_request_timeout) == (request_t, backend_t)


def test_retry() -> None:
    r = compiled(rule(retry=HTTPRouteRetry(codes=(500, 503), attempts=3, backoff=0.1)))
    assert r.retry is not None
    assert (r.retry.attempts, r.retry.codes, r.retry.backoff) == (3, frozenset({500, 503}), 0.1)
    r = compiled(rule(retry=HTTPRouteRetry()))
    assert r.retry is not None
    # Unset attempts/backoff: implementation-specific; Envoy's defaults (1, 25 ms).
    assert (r.retry.attempts, r.retry.codes, r.retry.backoff) == (1, frozenset(), 0.025)
    assert compiled(rule()).retry is None


def test_session_persistence_and_rule_name() -> None:
    r = compiled(rule(name="main", session_persistence=SessionPersistence(session_name="sid")))
    assert r.rule_name == "main" and r.sticky
    policy = r.backends[0].session
    assert policy is not None
    assert (policy.name, policy.header, policy.cookie_path, policy.permanent) == (
        "sid",
        False,
        "/",
        False,
    )
    # Bound to the rule: "Route rules referencing the same service MUST NOT share
    # persistent sessions".
    assert policy.scope == b"HTTPRoute default/r/rule/0"
    r = compiled(rule(session_persistence=SessionPersistence()))
    # "If not specified, a unique cookie name SHOULD be generated": named after the rule.
    name = r.backends[0].session.name  # type: ignore[union-attr]
    assert name.startswith("gatewayd-session-") and len(name) == len("gatewayd-session-") + 8
    assert r.route_id == "default/r/rule/0"
    assert not compiled(rule()).sticky


def test_session_persistence_keeps_weight_zero_backends_for_pinned_sessions() -> None:
    # "the persistence to a single backend MUST be maintained across services, even if
    # the weight is set to 0" (GEP-1619): weight 0 gets no new request, but a session
    # token may still name it.
    r = compiled(
        rule(
            backends=[ref("a", weight=1), ref("zero", weight=0)],
            session_persistence=SessionPersistence(session_name="sid"),
        )
    )
    assert [b.name for b in r.backends] == ["default/a:8080"]
    assert [b.name for b in r.session_backends] == ["default/a:8080", "default/zero:8080"]
    assert all(b.session is not None for b in r.session_backends)
    assert compiled(rule(backends=[ref("a"), ref("zero", weight=0)])).session_backends == ()


def test_session_persistence_header_and_permanent() -> None:
    r = compiled(
        rule(session_persistence=SessionPersistence(type="Header", session_name="X-Session"))
    )
    policy = r.backends[0].session
    assert policy is not None and policy.header and policy.name == "x-session"
    r = compiled(
        rule(
            session_persistence=SessionPersistence(
                cookie_lifetime_type="Permanent",
                absolute_timeout=60.0,
                idle_timeout=5.0,
                cookie_path="/app",
            )
        )
    )
    policy = r.backends[0].session
    assert policy is not None
    assert (policy.permanent, policy.absolute_timeout, policy.idle_timeout, policy.cookie_path) == (
        True,
        60.0,
        5.0,
        "/app",
    )


def test_grpc_rule_compiles_like_http() -> None:
    t = table(grpc("g", gmatch("pkg.S", "M"), backends=[ref("a", weight=2), ref("b", weight=0)]))
    hit = t.lookup("h", "POST", "/pkg.S/M", "", {})
    assert hit is not None
    assert hit.rule.route_kind == "GRPCRoute"
    assert hit.rule.total_weight == 2
    assert hit.prefix is None
    hit = table(grpc("g", gmatch("pkg.S"), backends=[])).lookup("h", "POST", "/pkg.S/M", "", {})
    assert hit is not None and hit.rule.direct_status == 500
