"""Ordering rules of the Gateway API: route match precedence and route order.

Everything that decides "which route wins" lives here (hostname specificity, which the
tables also apply at lookup time, in ``snapshot.hostnames``) so the table builder, the
reference matcher of the tests and the config dump agree on one definition.

Pure module: no I/O.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from gatewayd.routing.config.model import GRPCRouteMatch, HTTPRouteMatch, Meta, PathMatchType
from gatewayd.routing.snapshot.candidates import PrecedenceKey

# --------------------------------------------------------------------------- route order


def creation_order(timestamp: str) -> float:
    """Sortable creation time: "" (unknown) sorts first, as model.Meta documents;
    an unparsable value sorts last (treated as the newest route)."""
    if not timestamp:
        return -math.inf
    try:
        dt = datetime.fromisoformat(timestamp)
    except ValueError:
        return math.inf
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def route_order(meta: Meta) -> tuple[float, str]:
    """Tie-breaker across routes.

    "If ties still exist across multiple Routes, matching precedence MUST be determined
    in order of the following criteria, continuing on ties:
    * The oldest Route based on creation timestamp.
    * The Route appearing first in alphabetical order by "{namespace}/{name}"."
    """
    return (creation_order(meta.creation_timestamp), f"{meta.namespace}/{meta.name}")


# --------------------------------------------------------------------------- match precedence

KIND_HTTP = 0
KIND_GRPC = 1

# Path tiers (negated in the key so the larger tier sorts first).
#
# "Note: The precedence of RegularExpression path matches are implementation-specific."
# We rank them between the two core types, Exact > RegularExpression > PathPrefix (the
# order Envoy Gateway uses): a regex states an intent as precise as an exact path for the
# paths it matches, and a catch-all PathPrefix "/" must not shadow every regex route.
# Within a tier the longer value wins ("Prefix" path match with largest number of
# characters; for regexes the length of the pattern, for lack of anything better).
PATH_TIER = {
    PathMatchType.EXACT: 3,
    PathMatchType.REGULAR_EXPRESSION: 2,
    PathMatchType.PATH_PREFIX: 1,
}


def normalize_prefix(value: str) -> str:
    """PathPrefix value without its trailing '/': "When specified, a trailing `/` is
    ignored."  The root "/" becomes "" (it matches every path starting with '/')."""
    return value.rstrip("/")


def unique_header_names(names: list[str]) -> list[int]:
    """Indexes of the first entry of each case-insensitive header name.

    "If multiple entries specify equivalent header names, only the first entry with an
    equivalent name MUST be considered for a match. Subsequent entries with an
    equivalent header name MUST be ignored."
    """
    seen: set[str] = set()
    keep: list[int] = []
    for i, name in enumerate(names):
        low = name.lower()
        if low not in seen:
            seen.add(low)
            keep.append(i)
    return keep


def unique_query_names(names: list[str]) -> list[int]:
    """Same rule for query parameters, whose names are case-sensitive."""
    seen: set[str] = set()
    keep: list[int] = []
    for i, name in enumerate(names):
        if name not in seen:
            seen.add(name)
            keep.append(i)
    return keep


def http_match_key(
    meta: Meta, rule_index: int, match_index: int, match: HTTPRouteMatch
) -> PrecedenceKey:
    """HTTPRouteRule.matches precedence:

    "Across all rules specified on applicable Routes, precedence must be given to the
    match having:
    * "Exact" path match.
    * "Prefix" path match with largest number of characters.
    * Method match.
    * Largest number of header matches.
    * Largest number of query param matches."
    then the route tie-breakers (``route_order``), then "the FIRST matching rule (in
    list order)", then match order within the rule.
    """
    path = match.path
    tier = PATH_TIER[path.type]
    if path.type is PathMatchType.PATH_PREFIX:
        length = len(normalize_prefix(path.value))
    else:
        length = len(path.value)
    n_headers = len(unique_header_names([h.name for h in match.headers]))
    n_query = len(unique_query_names([q.name for q in match.query_params]))
    created, name = route_order(meta)
    return (
        KIND_HTTP,
        -tier,
        -length,
        -1 if match.method is not None else 0,
        -n_headers,
        -n_query,
        created,
        name,
        rule_index,
        match_index,
    )


def grpc_match_key(
    meta: Meta, rule_index: int, match_index: int, match: GRPCRouteMatch | None
) -> PrecedenceKey:
    """GRPCRouteRule.matches precedence:

    "Precedence MUST be given to the rule with the largest number of:
    * Characters in a matching non-wildcard hostname.
    * Characters in a matching hostname.
    * Characters in a matching service.
    * Characters in a matching method.
    * Header matches."
    (hostnames are settled by the host group before this key is used).

    GRPCRoutes sort after HTTPRoutes sharing a host group: "Merging MUST not be done
    between GRPCRoutes and HTTPRoutes", and for overlapping hostnames the status
    computation "MUST accept exactly one of these two routes"; should both still reach
    the compiler, the HTTPRoute is tried first.
    """
    service_len = method_len = n_headers = 0
    if match is not None:
        if match.method is not None:
            service_len = len(match.method.service or "")
            method_len = len(match.method.method or "")
        n_headers = len(unique_header_names([h.name for h in match.headers]))
    created, name = route_order(meta)
    return (
        KIND_GRPC,
        -service_len,
        -method_len,
        -n_headers,
        0,
        0,
        created,
        name,
        rule_index,
        match_index,
    )
