"""Hostname matching and Listener x Route hostname intersection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.routing.control.hostnames import intersect, intersect_pair, matches


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*.example.com", "foo.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "fooexample.com", False),
        ("*.example.com", "foo.example.net", False),
        ("foo.example.com", "foo.example.com", True),
        ("foo.example.com", "FOO.example.com", True),
        ("foo.example.com", "bar.example.com", False),
    ],
)
def test_matches(pattern: str, host: str, expected: bool) -> None:
    assert matches(pattern, host) is expected


@pytest.mark.parametrize(
    ("listener", "route", "expected"),
    [
        # precise x precise
        ("foo.example.com", "foo.example.com", "foo.example.com"),
        ("foo.example.com", "bar.example.com", None),
        # wildcard listener x precise route: the route's precise name
        ("*.example.com", "foo.example.com", "foo.example.com"),
        ("*.example.com", "a.b.example.com", "a.b.example.com"),
        ("*.example.com", "example.com", None),
        # precise listener x wildcard route: the listener's precise name
        ("foo.example.com", "*.example.com", "foo.example.com"),
        ("example.com", "*.example.com", None),
        # wildcard x wildcard: the more specific one
        ("*.example.com", "*.example.com", "*.example.com"),
        ("*.example.com", "*.foo.example.com", "*.foo.example.com"),
        ("*.foo.example.com", "*.example.com", "*.foo.example.com"),
        ("*.example.com", "*.example.net", None),
        ("*.foo.example.com", "*.bar.example.com", None),
    ],
)
def test_intersect_pair(listener: str, route: str, expected: str | None) -> None:
    assert intersect_pair(listener, route) == expected


@pytest.mark.parametrize(
    ("listener", "routes", "expected"),
    [
        (None, (), ()),  # neither restricts: any host
        ("foo.example.com", (), ("foo.example.com",)),
        (None, ("a.example.com", "b.example.com"), ("a.example.com", "b.example.com")),
        # spec example: listener *.example.com, route test.example.com + test.example.net
        ("*.example.com", ("test.example.com", "test.example.net"), ("test.example.com",)),
        ("*.example.com", ("example.com",), None),
        # route order is kept, duplicates dropped
        (
            "*.example.com",
            ("b.example.com", "*.example.com", "a.example.com", "b.example.com"),
            ("b.example.com", "*.example.com", "a.example.com"),
        ),
        # two route wildcards that both narrow to the listener's precise name
        ("foo.example.com", ("*.example.com", "foo.example.com"), ("foo.example.com",)),
    ],
)
def test_intersect(
    listener: str | None, routes: tuple[str, ...], expected: tuple[str, ...] | None
) -> None:
    assert intersect(listener, routes) == expected


# --------------------------------------------------------------------------- properties

labels = st.sampled_from(["a", "b", "foo", "example", "com", "net"])
precise = st.lists(labels, min_size=1, max_size=4).map(".".join)
wildcard = precise.map(lambda h: "*." + h)
hostname = st.one_of(precise, wildcard)


@given(hostname, hostname)
def test_intersection_is_symmetric_in_existence(a: str, b: str) -> None:
    """Whether two hostnames intersect does not depend on which side is the listener."""
    assert (intersect_pair(a, b) is None) == (intersect_pair(b, a) is None)


@given(hostname, hostname)
def test_intersection_is_matched_by_both_sides(a: str, b: str) -> None:
    """The result is at least as specific as both sides: every precise host it covers
    is matched by both the listener and the route hostname."""
    hit = intersect_pair(a, b)
    if hit is None:
        return
    probe = "x." + hit[2:] if hit.startswith("*.") else hit
    assert matches(a, probe)
    assert matches(b, probe)


@given(precise, hostname, hostname)
def test_exact_host_matching_both_sides_is_covered(host: str, a: str, b: str) -> None:
    """A precise host matched by both the listener and the route is matched by the
    intersection (so no request the spec routes is lost)."""
    if matches(a, host) and matches(b, host):
        hit = intersect_pair(a, b)
        assert hit is not None
        assert matches(hit, host)


@given(precise, hostname)
def test_precise_name_on_either_side_is_kept_verbatim(host: str, other: str) -> None:
    if matches(other, host):
        assert intersect_pair(host, other) == host
        assert intersect_pair(other, host) == host


@given(st.one_of(st.none(), hostname), st.lists(hostname, max_size=5))
def test_intersect_results_come_from_pairs(listener: str | None, routes: list[str]) -> None:
    result = intersect(listener, routes)
    if result is None:
        assert listener is not None and routes
        assert all(intersect_pair(listener, r) is None for r in routes)
        return
    if listener is None:
        assert set(result) == set(routes)
    elif not routes:
        assert result == (listener,)
    else:
        assert set(result) == {h for r in routes if (h := intersect_pair(listener, r)) is not None}
