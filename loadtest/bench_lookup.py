"""Micro-benchmark of ``RouteTable.lookup``: µs per lookup at 10 and 1,000 HTTPRoutes.

Builds a Resolution in memory (no loader, no status computation), compiles it with
``compile_snapshot`` and times lookups over fixed request lists with
``time.perf_counter`` in a bounded loop.  Two shapes of 1,000 routes: spread over 100
hostnames (the common case: the Host selects a small group), and all on one hostname
(the worst case for the per-group candidate walk).

    .venv/bin/python loadtest/bench_lookup.py [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.model import (
    BackendObjectReference,
    BackendRef,
    HTTPHeaderMatch,
    HTTPPathMatch,
    HTTPRoute,
    HTTPRouteMatch,
    HTTPRouteRule,
    Meta,
    PathMatchType,
)
from gatewayd.routing.control.bindings import (
    AttachedRoute,
    BackendKey,
    BackendTarget,
    ListenerBinding,
    Resolution,
)
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.rules import RouteTable

Request = tuple[str, str, str, str, Mapping[str, str]]


def build_routes(n: int, hosts: int, rng: random.Random) -> list[HTTPRoute]:
    """``n`` routes over ``hosts`` hostnames (plus a wildcard and catch-all share):
    each route has a prefix rule, an exact-path rule and a header-matched rule."""
    routes: list[HTTPRoute] = []
    for i in range(n):
        kind = i % 20
        if kind == 0:
            hostnames: tuple[str, ...] = ()  # catch-all
        elif kind == 1:
            hostnames = ("*.apps.example.com",)
        else:
            hostnames = (f"svc{i % hosts}.example.com",)
        backend = (BackendRef(ref=BackendObjectReference(name=f"svc{i}", port=8080)),)
        rules = (
            HTTPRouteRule(
                matches=(HTTPRouteMatch(path=HTTPPathMatch(value=f"/api/r{i}")),),
                backend_refs=backend,
            ),
            HTTPRouteRule(
                matches=(
                    HTTPRouteMatch(path=HTTPPathMatch(type=PathMatchType.EXACT, value=f"/e{i}/x")),
                ),
                backend_refs=backend,
            ),
            HTTPRouteRule(
                matches=(
                    HTTPRouteMatch(
                        path=HTTPPathMatch(value=f"/t/r{i}"),
                        headers=(HTTPHeaderMatch(name="x-tenant", value=f"t{i % 7}"),),
                    ),
                ),
                backend_refs=backend,
            ),
        )
        routes.append(
            HTTPRoute(
                meta=Meta(
                    namespace="bench",
                    name=f"route-{i}",
                    creation_timestamp=f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
                ),
                hostnames=hostnames,
                rules=rules,
            )
        )
    rng.shuffle(routes)
    return routes


def build_table(routes: Sequence[HTTPRoute]) -> RouteTable:
    backends = {
        BackendKey.of(br.ref, r.meta.namespace): BackendTarget(
            name=f"bench/{br.ref.name}:8080",
            endpoints=(EndpointAddress(address="127.0.0.1", port=9000),),
        )
        for r in routes
        for rule in r.rules
        for br in rule.backend_refs
    }
    binding = ListenerBinding(
        gateway_namespace="bench",
        gateway_name="gw",
        listener_name="http",
        address="127.0.0.1",
        port=8080,
        protocol="HTTP",
        routes=tuple(AttachedRoute(route=r, hostnames=r.hostnames) for r in routes),
    )
    snap = compile_snapshot(Resolution(listeners=(binding,), backends=backends), generation=1)
    return snap.ports[("127.0.0.1", 8080)].table


def host_of(route: HTTPRoute) -> str:
    if not route.hostnames:
        return "unknown.example.org"
    h = route.hostnames[0]
    return "a.b.apps.example.com" if h.startswith("*.") else h


def requests_for(routes: Sequence[HTTPRoute], rng: random.Random) -> dict[str, list[Request]]:
    hits: list[Request] = []
    headers_hits: list[Request] = []
    misses: list[Request] = []
    for r in rng.sample(list(routes), min(len(routes), 200)):
        i = int(r.meta.name.split("-")[1])
        host = host_of(r)
        hits.append((host, "GET", f"/api/r{i}/items/42", "a=1", {}))
        hits.append((host, "GET", f"/e{i}/x", "", {}))
        headers_hits.append((host, "GET", f"/t/r{i}/x", "", {"x-tenant": f"t{i % 7}"}))
        # Known host, unknown path (walks the host group's default bucket) ...
        misses.append((host, "GET", f"/nothing/{i}", "", {}))
        # ... and a path of a route with its header missing.
        misses.append((host, "GET", f"/t/r{i}/x", "", {"x-tenant": "nobody"}))
    return {"hit prefix/exact": hits, "hit header": headers_hits, "miss": misses}


def time_lookups(table: RouteTable, requests: Sequence[Request], seconds: float) -> float:
    """Median over rounds of the µs per lookup; each round is one pass over
    ``requests``, rounds stop after ``seconds`` (and at most 10,000 rounds)."""
    lookup = table.lookup
    samples: list[float] = []
    deadline = time.perf_counter() + seconds
    for _ in range(10_000):
        start = time.perf_counter()
        for host, method, path, query, headers in requests:
            lookup(host, method, path, query, headers)
        samples.append((time.perf_counter() - start) / len(requests) * 1e6)
        if time.perf_counter() > deadline:
            break
    samples.sort()
    return samples[len(samples) // 2]


def check(table: RouteTable, sets: dict[str, list[Request]]) -> None:
    """The benchmark measures real hits and misses, not 404s everywhere."""
    for name, reqs in sets.items():
        found = sum(table.lookup(*r) is not None for r in reqs)
        if name.startswith("hit") and found != len(reqs):
            raise SystemExit(f"{name}: only {found}/{len(reqs)} requests matched")
        if name == "miss" and found != 0:
            # Requests to catch-all routes' hosts fall through to nothing else: 0 hits.
            raise SystemExit(f"miss: {found}/{len(reqs)} requests matched")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    args = parser.parse_args(argv)
    rng = random.Random(1)
    shapes = [
        ("10 routes, 5 hosts", 10, 5),
        ("1,000 routes, 100 hosts", 1000, 100),
        ("1,000 routes, 1 host", 1000, 1),
    ]
    print(f"{'table':<26}{'requests':<20}{'µs/lookup':>10}   (compile ms)")
    for label, n, hosts in shapes:
        routes = build_routes(n, hosts, rng)
        t0 = time.perf_counter()
        table = build_table(routes)
        compile_ms = (time.perf_counter() - t0) * 1e3
        sets = requests_for(routes, rng)
        check(table, sets)
        for name, reqs in sets.items():
            us = time_lookups(table, reqs, args.seconds)
            print(f"{label:<26}{name:<20}{us:>10.2f}   ({compile_ms:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
