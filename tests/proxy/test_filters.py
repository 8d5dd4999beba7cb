from __future__ import annotations

import pytest

from gatewayd.proxy.filters import (
    apply_header_ops,
    cors_preflight,
    cors_response_headers,
    redirect_location,
    rewrite_path,
)
from gatewayd.routing.snapshot.rules import Cors, HeaderOps, PathModifier, Redirect

# --------------------------------------------------------------------------- header ops


def test_header_ops_set_replaces_all_entries_and_appends_when_absent() -> None:
    headers = [(b"host", b"a"), (b"x-set", b"1"), (b"x-other", b"o"), (b"x-set", b"2")]
    apply_header_ops(
        headers,
        HeaderOps(
            set=(("x-set", "new"), ("x-new", "n")),
        ),
    )
    assert headers == [(b"host", b"a"), (b"x-other", b"o"), (b"x-set", b"new"), (b"x-new", b"n")]


def test_header_ops_add_appends_a_new_entry() -> None:
    headers = [(b"x-add", b"some-other-value")]
    apply_header_ops(headers, HeaderOps(add=(("x-add", "add-appends-values"),)))
    assert headers == [(b"x-add", b"some-other-value"), (b"x-add", b"add-appends-values")]


def test_header_ops_remove_drops_every_entry_of_the_name() -> None:
    headers = [(b"x-rm", b"1"), (b"keep", b"k"), (b"x-rm", b"2")]
    apply_header_ops(headers, HeaderOps(remove=("x-rm", "absent")))
    assert headers == [(b"keep", b"k")]


def test_header_ops_order_is_remove_then_set_then_add() -> None:
    headers = [(b"a", b"old"), (b"b", b"old")]
    ops = HeaderOps(
        remove=("a", "b"),
        set=(("a", "set"),),
        add=(("a", "added"), ("b", "added")),
    )
    apply_header_ops(headers, ops)
    # "a" was removed, set, then added to; "b" removed, then added.
    assert headers == [(b"a", b"set"), (b"a", b"added"), (b"b", b"added")]


def test_header_ops_names_are_case_insensitive() -> None:
    # The filter names may arrive canonicalised; the hot path is lower-case.
    headers = [(b"x-header-set", b"orig"), (b"x-header-remove", b"r"), (b"x-header-add", b"o")]
    ops = HeaderOps(
        set=(("X-Header-Set", "header-set"),),
        add=(("X-Header-Add", "header-add"),),
        remove=("X-Header-Remove",),
    )
    apply_header_ops(headers, ops)
    assert headers == [
        (b"x-header-add", b"o"),
        (b"x-header-set", b"header-set"),
        (b"x-header-add", b"header-add"),
    ]


def test_header_ops_are_reusable_and_never_inject_lines() -> None:
    ops = HeaderOps(set=(("x-a", "v\r\nevil: 1"),))
    for _ in range(3):  # the cached compiled form gives the same result every time
        headers: list[tuple[bytes, bytes]] = [(b"x-a", b"1")]
        apply_header_ops(headers, ops)
        assert headers == [(b"x-a", b"v  evil: 1")]


def test_header_ops_empty_is_a_no_op() -> None:
    headers = [(b"a", b"1")]
    apply_header_ops(headers, HeaderOps())
    assert headers == [(b"a", b"1")]


# --------------------------------------------------------------------------- paths

PREFIX = "ReplacePrefixMatch"


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "expected"),
    [
        # The table of HTTPPathModifier.ReplacePrefixMatch in the Gateway API.
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        # More: the brief's examples and the conformance rewrite cases.
        ("/foo/baz", "/foo", "/bar", "/bar/baz"),
        ("/foo/baz", "/foo", "/", "/baz"),
        ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
        ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
        ("/strip-prefix", "/strip-prefix", "/", "/"),
        ("/a/b/c", "/a/b", "/x/y", "/x/y/c"),
        # A "/" prefix matches every path.
        ("/foo", "/", "/xyz", "/xyz/foo"),
        ("/", "/", "/xyz", "/xyz"),
        ("/foo/", "/", "/", "/foo/"),
    ],
)
def test_replace_prefix_match(path: str, prefix: str, replacement: str, expected: str) -> None:
    assert rewrite_path(PathModifier(type=PREFIX, value=replacement), path, prefix) == expected


def test_replace_prefix_match_needs_an_element_boundary_and_a_prefix() -> None:
    mod = PathModifier(type=PREFIX, value="/xyz")
    assert rewrite_path(mod, "/foobar", "/foo") == "/foobar"
    assert rewrite_path(mod, "/other", "/foo") == "/other"
    assert rewrite_path(mod, "/foo/bar", None) == "/foo/bar"


def test_replace_full_path() -> None:
    mod = PathModifier(type="ReplaceFullPath", value="/one")
    assert rewrite_path(mod, "/full/one/two", "/full/one") == "/one"
    assert rewrite_path(mod, "/", None) == "/one"
    assert rewrite_path(PathModifier(type="ReplaceFullPath", value=""), "/a", None) == "/"


# --------------------------------------------------------------------------- redirects


def loc(
    redirect: Redirect,
    *,
    scheme: str = "http",
    host: str = "gw.example",
    port: int | None = 80,
    path: str = "/p",
    query: str = "",
    prefix: str | None = None,
) -> str:
    return redirect_location(
        redirect, scheme=scheme, host=host, port=port, path=path, query=query, prefix=prefix
    )


@pytest.mark.parametrize(
    ("listener", "scheme", "redirect", "expected"),
    [
        # The HTTPRouteRedirectPortAndScheme conformance matrix (hostname example.org).
        (80, "http", Redirect(), "http://example.org/p"),
        (80, "http", Redirect(port=80), "http://example.org/p"),
        (80, "http", Redirect(port=8080), "http://example.org:8080/p"),
        (80, "http", Redirect(scheme="https"), "https://example.org/p"),
        (80, "http", Redirect(scheme="https", port=443), "https://example.org/p"),
        (80, "http", Redirect(scheme="https", port=8443), "https://example.org:8443/p"),
        (8080, "http", Redirect(), "http://example.org:8080/p"),
        (8080, "http", Redirect(port=80), "http://example.org/p"),
        (8080, "http", Redirect(scheme="https"), "https://example.org/p"),
        (443, "https", Redirect(), "https://example.org/p"),
        (443, "https", Redirect(port=443), "https://example.org/p"),
        (443, "https", Redirect(port=8443), "https://example.org:8443/p"),
        (443, "https", Redirect(scheme="http"), "http://example.org/p"),
        (443, "https", Redirect(scheme="http", port=80), "http://example.org/p"),
        (443, "https", Redirect(scheme="http", port=8080), "http://example.org:8080/p"),
        # A set scheme means its well-known port even when it equals the request's.
        (8080, "http", Redirect(scheme="http"), "http://example.org/p"),
        # Port 443 on http (and 80 on https) is not the well-known port: it is kept.
        (80, "http", Redirect(port=443), "http://example.org:443/p"),
    ],
)
def test_redirect_port_and_scheme(
    listener: int, scheme: str, redirect: Redirect, expected: str
) -> None:
    with_host = Redirect(
        scheme=redirect.scheme, hostname="example.org", port=redirect.port, path=redirect.path
    )
    assert loc(with_host, scheme=scheme, port=listener) == expected


def test_redirect_hostname_defaults_to_the_request_host_without_port() -> None:
    assert loc(Redirect(), host="gw.example:8080", port=8080) == "http://gw.example:8080/p"
    assert loc(Redirect(scheme="https"), host="gw.example:80") == "https://gw.example/p"
    assert loc(Redirect(), host="[::1]:8080", port=8080) == "http://[::1]:8080/p"
    assert loc(Redirect(), host="[::1]", port=80) == "http://[::1]/p"


def test_redirect_unknown_listener_port_is_omitted() -> None:
    assert loc(Redirect(), port=None) == "http://gw.example/p"


def test_redirect_keeps_query_and_path_by_default() -> None:
    assert loc(Redirect(), path="/a/b", query="x=1&y=2") == "http://gw.example/a/b?x=1&y=2"


def test_redirect_path_modifiers() -> None:
    prefix = Redirect(path=PathModifier(type=PREFIX, value="/replacement-prefix"))
    assert (
        loc(prefix, path="/original-prefix/lemon", prefix="/original-prefix", query="q")
        == "http://gw.example/replacement-prefix/lemon?q"
    )
    assert (
        loc(prefix, path="/original-prefix", prefix="/original-prefix")
        == "http://gw.example/replacement-prefix"
    )
    full = Redirect(path=PathModifier(type="ReplaceFullPath", value="/full-path-replacement"))
    assert loc(full, path="/full/path/original") == "http://gw.example/full-path-replacement"


# --------------------------------------------------------------------------- CORS

CORS = Cors(
    allow_origins=("https://www.foo.com", "https://*.bar.com"),
    allow_methods=("GET", "OPTIONS"),
    allow_headers=("x-header-1", "x-header-2"),
    expose_headers=("x-header-3", "x-header-4"),
    allow_credentials=True,
    max_age=3600,
)


def as_dict(headers: list[tuple[bytes, bytes]] | None) -> dict[bytes, bytes]:
    assert headers is not None
    out = dict(headers)
    assert len(out) == len(headers), "a header was sent twice"
    return out


def test_cors_preflight_exact_origin() -> None:
    got = as_dict(cors_preflight(CORS, b"https://www.foo.com", b"GET", b"x-header-1, x-header-2"))
    assert got == {
        b"access-control-allow-origin": b"https://www.foo.com",
        b"vary": b"Origin",
        b"access-control-allow-credentials": b"true",
        b"access-control-allow-methods": b"GET, OPTIONS",
        b"access-control-allow-headers": b"x-header-1, x-header-2",
        b"access-control-expose-headers": b"x-header-3, x-header-4",
        b"access-control-max-age": b"3600",
    }


@pytest.mark.parametrize(
    "origin",
    [b"https://www.bar.com", b"https://xpto.www.bar.com", b"https://WWW.Bar.com:443"],
)
def test_cors_preflight_wildcard_origin_allowed(origin: bytes) -> None:
    got = as_dict(cors_preflight(CORS, origin, b"GET", b""))
    assert got[b"access-control-allow-origin"] == origin  # echoed as sent
    # No Access-Control-Request-Headers: no Access-Control-Allow-Headers.
    assert b"access-control-allow-headers" not in got


@pytest.mark.parametrize(
    "origin",
    [
        b"https://foobar.com",
        b"https://bar.com",  # "*." needs at least one label
        b"http://www.bar.com",  # scheme differs
        b"https://www.bar.com:8443",  # port differs
        b"https://evil.com/.bar.com",  # "*" only stands for host characters
        b"https://www.foo.com.evil.com",
        b"",
    ],
)
def test_cors_preflight_origin_denied(origin: bytes) -> None:
    assert cors_preflight(CORS, origin, b"GET", b"x-header-1") == []
    assert cors_response_headers(CORS, origin) == []


def test_cors_preflight_without_request_method_omits_allow_methods() -> None:
    got = as_dict(cors_preflight(CORS, b"https://www.foo.com", b"", b""))
    assert b"access-control-allow-methods" not in got
    assert got[b"access-control-max-age"] == b"3600"


def test_cors_wildcard_methods_without_credentials() -> None:
    cors = Cors(allow_origins=("https://www.foo.com",), allow_methods=("*",))
    got = as_dict(cors_preflight(cors, b"https://www.foo.com", b"POST", b""))
    assert got[b"access-control-allow-methods"] == b"*"
    assert got[b"access-control-allow-origin"] == b"https://www.foo.com"
    assert b"access-control-allow-credentials" not in got
    assert got[b"access-control-max-age"] == b"5"  # the default


def test_cors_wildcard_origin_without_credentials_answers_star() -> None:
    cors = Cors(allow_origins=("*",), allow_methods=("PUT",))
    for origin in (b"https://foobar.com", b"https://foobar.com:12345", b"null"):
        got = as_dict(cors_preflight(cors, origin, b"PUT", b""))
        assert got[b"access-control-allow-origin"] == b"*"
        assert got[b"access-control-allow-methods"] == b"PUT"
        assert b"access-control-allow-credentials" not in got
        assert b"vary" not in got
        assert cors_response_headers(cors, origin) == [(b"access-control-allow-origin", b"*")]


def test_cors_wildcards_with_credentials_echo_the_request() -> None:
    cors = Cors(
        allow_origins=("*",),
        allow_methods=("*",),
        allow_headers=("*",),
        expose_headers=("*",),
        allow_credentials=True,
    )
    got = as_dict(cors_preflight(cors, b"https://other.foo.com", b"PUT", b"x-header-1, x-h-2"))
    # "the gateway must not return `*`" with credentials: everything is echoed.
    assert got[b"access-control-allow-origin"] == b"https://other.foo.com"
    assert got[b"access-control-allow-methods"] == b"PUT"
    assert got[b"access-control-allow-headers"] == b"x-header-1, x-h-2"
    assert got[b"access-control-allow-credentials"] == b"true"
    assert b"access-control-expose-headers" not in got  # "*" cannot be used, so omitted
    assert as_dict(cors_response_headers(cors, b"https://other.foo.com")) == {
        b"access-control-allow-origin": b"https://other.foo.com",
        b"vary": b"Origin",
        b"access-control-allow-credentials": b"true",
    }


def test_cors_wildcard_headers_without_credentials() -> None:
    cors = Cors(allow_origins=("*",), allow_methods=("*",), allow_headers=("*",))
    got = as_dict(cors_preflight(cors, b"https://other.foo.com", b"PUT", b"x-header-1"))
    assert got[b"access-control-allow-headers"] == b"*"
    assert got[b"access-control-allow-methods"] == b"*"


def test_cors_response_headers_for_actual_requests() -> None:
    assert as_dict(cors_response_headers(CORS, b"https://www.bar.com")) == {
        b"access-control-allow-origin": b"https://www.bar.com",
        b"vary": b"Origin",
        b"access-control-allow-credentials": b"true",
        b"access-control-expose-headers": b"x-header-3, x-header-4",
    }
    # Repeated calls hit the per-origin cache and answer the same.
    assert cors_response_headers(CORS, b"https://foobar.com") == []
    assert cors_response_headers(CORS, b"https://foobar.com") == []


def test_cors_allowed_origin_with_explicit_port() -> None:
    cors = Cors(allow_origins=("http://app.example:8080", "https://secure.example:443"))
    assert cors_response_headers(cors, b"http://app.example:8080")
    assert not cors_response_headers(cors, b"http://app.example")
    assert cors_response_headers(cors, b"https://secure.example")
