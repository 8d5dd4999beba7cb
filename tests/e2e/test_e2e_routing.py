"""HTTPRoute matching end to end: every match type, precedence and hostnames.

One daemon serves the whole module.  Each scenario lives under its own hostname so the
routes of one scenario cannot steal requests from another; the echo backend that
answers (its "pod" field) tells which rule matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from e2e_kit import (
    Gatewayd,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    request,
    rule,
)

pytestmark = pytest.mark.e2e


@dataclass
class Env:
    daemon: Gatewayd
    port: int  # the catch-all listener
    wild_port: int  # listener with hostname *.wild.example
    only_port: int  # listener with hostname only.example

    def pod(
        self,
        host: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        port: int | None = None,
    ) -> str | int:
        """The echo pod that answered, or the status code when no echo answered."""
        r = request(port or self.port, path, method=method, host=host, headers=headers)
        if r.status != 200:
            return r.status
        return str(r.json()["pod"])


def to(name: str) -> list[dict[str, object]]:
    return [backend_ref(name)]


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    backends = module_echoes.start("a", "b", "c", "d")
    port, wild_port, only_port = free_port(), free_port(), free_port()
    docs = [
        gateway_class(),
        gateway(
            "gw",
            [
                listener("http", port),
                listener("wild", wild_port, hostname="*.wild.example"),
                listener("only", only_port, hostname="only.example"),
            ],
        ),
    ]
    for b in backends:
        docs += b.manifests()
    routes = [
        # -- path match types
        http_route(
            "paths",
            [
                rule(matches=[match("/exact", type="Exact")], backends=to("a")),
                rule(matches=[match("/foo")], backends=to("b")),
                rule(matches=[match(r"/re/[0-9]+", type="RegularExpression")], backends=to("c")),
            ],
            hostnames=["paths.example"],
        ),
        # -- header matches
        http_route(
            "headers",
            [
                rule(matches=[match("/", headers=[("x-env", "canary")])], backends=to("a")),
                rule(
                    matches=[match("/", headers=[("RegularExpression", "x-ver", "^v[0-9]+$")])],
                    backends=to("b"),
                ),
            ],
            hostnames=["headers.example"],
        ),
        # -- query parameter matches
        http_route(
            "query",
            [
                rule(matches=[match("/", query=[("tier", "gold")])], backends=to("a")),
                rule(
                    matches=[match("/", query=[("RegularExpression", "id", "^[0-9]{3}$")])],
                    backends=to("b"),
                ),
            ],
            hostnames=["query.example"],
        ),
        # -- method matches (a rule with a method beats the same path without one)
        http_route(
            "method",
            [
                rule(matches=[match("/")], backends=to("b")),
                rule(matches=[match("/", method="POST")], backends=to("a")),
            ],
            hostnames=["method.example"],
        ),
        # -- precedence: exact > longest prefix; header count; query count
        http_route(
            "prec",
            [
                rule(matches=[match("/p")], backends=to("b")),
                rule(matches=[match("/p", type="Exact")], backends=to("a")),
                rule(matches=[match("/p/long")], backends=to("c")),
                rule(matches=[match("/h", headers=[("x-a", "1")])], backends=to("a")),
                rule(
                    matches=[match("/h", headers=[("x-a", "1"), ("x-b", "1")])],
                    backends=to("b"),
                ),
                rule(matches=[match("/q", query=[("a", "1")])], backends=to("a")),
                rule(matches=[match("/q", query=[("a", "1"), ("b", "1")])], backends=to("b")),
                # method outranks header matches
                rule(matches=[match("/m", headers=[("x-a", "1")])], backends=to("c")),
                rule(matches=[match("/m", method="GET")], backends=to("d")),
            ],
            hostnames=["prec.example"],
        ),
        # -- the oldest route wins a tie, even against an alphabetically earlier name
        http_route(
            "zz-old",
            [rule(matches=[match("/")], backends=to("a"))],
            hostnames=["age.example"],
            created="2020-01-01T00:00:00Z",
        ),
        http_route(
            "aa-new",
            [rule(matches=[match("/")], backends=to("b"))],
            hostnames=["age.example"],
            created="2024-06-01T00:00:00Z",
        ),
        # -- same timestamp: alphabetical namespace/name order
        http_route(
            "alpha-b",
            [rule(matches=[match("/")], backends=to("b"))],
            hostnames=["alpha.example"],
            created="2023-01-01T00:00:00Z",
        ),
        http_route(
            "alpha-a",
            [rule(matches=[match("/")], backends=to("a"))],
            hostnames=["alpha.example"],
            created="2023-01-01T00:00:00Z",
        ),
        # -- route hostnames: exact beats wildcard; wildcard needs at least one label
        http_route(
            "pick-exact",
            [rule(matches=[match("/")], backends=to("a"))],
            hostnames=["foo.pick.example"],
        ),
        http_route(
            "pick-wild",
            [rule(matches=[match("/")], backends=to("b"))],
            hostnames=["*.pick.example"],
        ),
        # -- wildcard listener: a route without hostnames inherits it
        http_route(
            "wild-any",
            [rule(matches=[match("/")], backends=to("c"))],
            section="wild",
        ),
        # -- wildcard listener x route hostnames: only the intersection is served
        http_route(
            "wild-some",
            [rule(matches=[match("/")], backends=to("d"))],
            section="wild",
            hostnames=["exact.wild.example", "elsewhere.example"],
        ),
    ]
    routes.append(
        http_route("only-any", [rule(matches=[match("/")], backends=to("a"))], section="only")
    )
    return Env(module_gatewayd(docs + routes), port, wild_port, only_port)


# --------------------------------------------------------------------------- path


def test_path_exact(env: Env) -> None:
    assert env.pod("paths.example", "/exact") == "a"
    # Exact does not match a longer path or a trailing slash.
    assert env.pod("paths.example", "/exact/more") == 404
    assert env.pod("paths.example", "/exact/") == 404


def test_path_exact_ignores_query(env: Env) -> None:
    assert env.pod("paths.example", "/exact?x=1") == "a"


def test_path_prefix_is_segment_based(env: Env) -> None:
    assert env.pod("paths.example", "/foo") == "b"
    assert env.pod("paths.example", "/foo/") == "b"
    assert env.pod("paths.example", "/foo/bar") == "b"
    assert env.pod("paths.example", "/foo/bar?q=1") == "b"
    # "/foo" must not match "/foobar": prefixes match whole path elements.
    assert env.pod("paths.example", "/foobar") == 404


def test_path_regular_expression(env: Env) -> None:
    assert env.pod("paths.example", "/re/123") == "c"
    assert env.pod("paths.example", "/re/abc") == 404


def test_no_matching_rule_is_404(env: Env) -> None:
    assert env.pod("paths.example", "/nothing") == 404


def test_unknown_host_is_404(env: Env) -> None:
    assert env.pod("nobody.example", "/exact") == 404


def test_host_header_port_and_case_are_ignored(env: Env) -> None:
    assert env.pod(f"paths.example:{env.port}", "/exact") == "a"
    assert env.pod("PATHS.Example", "/exact") == "a"


# --------------------------------------------------------------------------- headers


def test_header_exact(env: Env) -> None:
    assert env.pod("headers.example", headers={"x-env": "canary"}) == "a"
    # header names are case-insensitive
    assert env.pod("headers.example", headers={"X-ENV": "canary"}) == "a"
    assert env.pod("headers.example", headers={"x-env": "stable"}) == 404
    assert env.pod("headers.example") == 404


def test_header_regular_expression(env: Env) -> None:
    assert env.pod("headers.example", headers={"x-ver": "v42"}) == "b"
    assert env.pod("headers.example", headers={"x-ver": "version"}) == 404


# --------------------------------------------------------------------------- query


def test_query_param_exact(env: Env) -> None:
    assert env.pod("query.example", "/?tier=gold") == "a"
    assert env.pod("query.example", "/x?other=1&tier=gold") == "a"
    assert env.pod("query.example", "/?tier=silver") == 404
    # query parameter names are case-sensitive
    assert env.pod("query.example", "/?TIER=gold") == 404


def test_query_param_regular_expression(env: Env) -> None:
    assert env.pod("query.example", "/?id=123") == "b"
    assert env.pod("query.example", "/?id=12") == 404


# --------------------------------------------------------------------------- method


def test_method_match(env: Env) -> None:
    assert env.pod("method.example", method="POST") == "a"
    assert env.pod("method.example", method="GET") == "b"
    assert env.pod("method.example", method="DELETE") == "b"


# --------------------------------------------------------------------------- precedence


def test_exact_beats_prefix(env: Env) -> None:
    assert env.pod("prec.example", "/p") == "a"
    assert env.pod("prec.example", "/p/x") == "b"


def test_longest_prefix_wins(env: Env) -> None:
    assert env.pod("prec.example", "/p/long") == "c"
    assert env.pod("prec.example", "/p/long/x") == "c"
    assert env.pod("prec.example", "/p/longer") == "b"


def test_more_header_matches_win(env: Env) -> None:
    assert env.pod("prec.example", "/h", headers={"x-a": "1"}) == "a"
    assert env.pod("prec.example", "/h", headers={"x-a": "1", "x-b": "1"}) == "b"


def test_more_query_matches_win(env: Env) -> None:
    assert env.pod("prec.example", "/q?a=1") == "a"
    assert env.pod("prec.example", "/q?a=1&b=1") == "b"


def test_method_beats_header_matches(env: Env) -> None:
    assert env.pod("prec.example", "/m", headers={"x-a": "1"}) == "d"
    assert env.pod("prec.example", "/m", method="PUT", headers={"x-a": "1"}) == "c"


def test_oldest_route_wins(env: Env) -> None:
    assert env.pod("age.example", "/") == "a"


def test_alphabetical_order_breaks_timestamp_ties(env: Env) -> None:
    assert env.pod("alpha.example", "/") == "a"


# --------------------------------------------------------------------------- hostnames


def test_exact_route_hostname_beats_wildcard(env: Env) -> None:
    assert env.pod("foo.pick.example") == "a"
    assert env.pod("bar.pick.example") == "b"
    assert env.pod("deep.bar.pick.example") == "b"
    # "*.pick.example" does not match the parent domain itself
    assert env.pod("pick.example") == 404


def test_wildcard_listener_hostname(env: Env) -> None:
    port = env.wild_port
    assert env.pod("one.wild.example", port=port) == "c"
    assert env.pod("two.levels.wild.example", port=port) == "c"
    assert env.pod("wild.example", port=port) == 404
    assert env.pod("paths.example", "/exact", port=port) == 404


def test_wildcard_listener_intersects_route_hostnames(env: Env) -> None:
    port = env.wild_port
    assert env.pod("exact.wild.example", port=port) == "d"
    # the route's other hostname is outside the listener's wildcard: not served there
    assert env.pod("elsewhere.example", port=port) == 404


def test_listener_scoped_routes_stay_on_their_listener(env: Env) -> None:
    # wild-any / wild-some attach with sectionName "wild" only
    assert env.pod("one.wild.example") == 404
    assert env.pod("exact.wild.example") == 404


def test_exact_listener_hostname(env: Env) -> None:
    port = env.only_port
    assert env.pod("only.example", port=port) == "a"
    assert env.pod(f"only.example:{port}", port=port) == "a"
    assert env.pod("other.example", port=port) == 404
    assert env.pod("sub.only.example", port=port) == 404
