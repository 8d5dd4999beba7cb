"""Hostname matching and intersection between Listener and Route hostnames.

Gateway API (apis/v1/gateway_types.go, Listener.Hostname):

    "Hostnames that are prefixed with a wildcard label (`*.`) are interpreted as a
    suffix match. That means that a match for `*.example.com` would match both
    `test.example.com`, and `foo.test.example.com`, but not `example.com`."

HTTPRoute (apis/v1/httproute_types.go, HTTPRouteSpec.Hostnames):

    "If both the Listener and HTTPRoute have specified hostnames, any HTTPRoute
    hostnames that do not match the Listener hostname MUST be ignored."

Hostnames are compared case-insensitively (DNS names are); the API only admits
lower-case names, so results keep the spelling written in the manifests.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence


def is_wildcard(hostname: str) -> bool:
    return hostname.startswith("*.")


def matches(pattern: str, hostname: str) -> bool:
    """True when the precise ``hostname`` is matched by ``pattern`` (precise or ``*.``)."""
    p = pattern.lower()
    h = hostname.lower()
    if not is_wildcard(p):
        return p == h
    # "*.example.com" is a suffix match on ".example.com" with at least one label in
    # front of it: "foo.example.com" and "a.b.example.com" match, "example.com" does not.
    suffix = p[1:]
    return len(h) > len(suffix) and h.endswith(suffix)


def intersect_pair(listener: str, route: str) -> str | None:
    """The most specific hostname matched by both ``listener`` and ``route``, or None.

    Two wildcards intersect when one's suffix contains the other's
    (``*.foo.example.com`` and ``*.example.com`` -> ``*.foo.example.com``).
    """
    lw, rw = is_wildcard(listener), is_wildcard(route)
    if not lw and not rw:
        return route if listener.lower() == route.lower() else None
    if lw and not rw:
        return route if matches(listener, route) else None
    if rw and not lw:
        return listener if matches(route, listener) else None
    # Both wildcards: equal, or one is strictly more specific than the other.
    if listener.lower() == route.lower():
        return route
    if matches(listener, route[2:]):  # route "*.a.example.com" under listener "*.example.com"
        return route
    if matches(route, listener[2:]):
        return listener
    return None


def intersect(
    listener_hostname: str | None, route_hostnames: Sequence[str]
) -> tuple[str, ...] | None:
    """Effective hostnames of a route on a listener, or None when they do not intersect.

    ``()`` means "any host": neither the listener nor the route restricts hostnames.
    Otherwise the result keeps the route's order (the listener's hostname stands alone
    when the route lists none) and holds the most specific form of each matching pair.
    """
    if not route_hostnames:
        return (listener_hostname,) if listener_hostname else ()
    if not listener_hostname:
        return _dedupe(route_hostnames)
    out: list[str] = []
    for route_hostname in route_hostnames:
        hit = intersect_pair(listener_hostname, route_hostname)
        if hit is not None:
            out.append(hit)
    if not out:
        return None
    return _dedupe(out)


def _dedupe(names: Sequence[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        key = name.lower()
        if key not in seen:
            seen.add(key)
            out.append(name)
    return tuple(out)
