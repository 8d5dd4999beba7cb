"""What a chosen rule does to a request, for ``gatewayd explain``: its filters in the
order the data plane applies them (``proxy/http/exchange.py``), the backendRef weights
and which endpoints are eligible; and the Gateway API sentences behind each step.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.rules import CompiledBackend, HeaderOps, RouteHit

Doc = dict[str, object]

# The rule behind each step, as the Gateway API states it (short quotes of the spec's
# field documentation; a sentence not in quotes is gatewayd's own choice).
SPEC: dict[str, str] = {
    "port": 'Listener.port: "Port is the network port. Multiple listeners may use the '
    'same port, subject to the Listener compatibility rules."',
    "listener": 'Listener.hostname: "When unspecified, all hostnames are matched." '
    "Listeners sharing a port are isolated: the most specific hostname matching wins "
    "(exact, then the longest wildcard, then a listener without hostname) and only its "
    "routes are considered.",
    "route-hostname": '"In the event that multiple HTTPRoutes specify intersecting '
    "hostnames, precedence must be given to rules from the HTTPRoute with the largest "
    "number of: Characters in a matching non-wildcard hostname. Characters in a matching "
    'hostname."',
    "match-and": 'HTTPRouteMatch: "Multiple match types are ANDed together, i.e. the '
    'match will evaluate to true only if all conditions are satisfied."',
    "precedence-http": '"Across all rules specified on applicable Routes, precedence must '
    'be given to the match having: "Exact" path match. "Prefix" path match with largest '
    "number of characters. Method match. Largest number of header matches. Largest number "
    'of query param matches." (RegularExpression paths are implementation-specific: '
    "gatewayd ranks them between Exact and PathPrefix.)",
    "precedence-grpc": 'GRPCRoute: "Precedence MUST be given to the rule with the largest '
    "number of: Characters in a matching non-wildcard hostname. Characters in a matching "
    "hostname. Characters in a matching service. Characters in a matching method. Header "
    'matches."',
    "ties": '"If ties still exist across multiple Routes, matching precedence MUST be '
    "determined in order of the following criteria, continuing on ties: The oldest Route "
    "based on creation timestamp. The Route appearing first in alphabetical order by "
    '"{namespace}/{name}"." Then "the FIRST matching rule (in list order)".',
    "no-route": '"When no rules matching a request have been successfully attached to the '
    'parent a request is coming from, a HTTP 404 status code MUST be returned."',
    "misdirected": "An HTTPS request whose Host selects another listener than its TLS "
    'server name is answered 421: "the request was directed at a server that is unable '
    'or unwilling to produce an authoritative response for the target URI" (RFC 9110).',
    "tls-route": 'TLSRoute.hostnames: "Hostnames defines a set of SNI hostnames that '
    'should match against the SNI attribute of TLS ClientHello message in TLS handshake."'
    " The most specific matching hostname wins, then the oldest route, then "
    '"{namespace}/{name}".',
    "filters": 'HTTPRouteRule.filters: "Filters define the filters that are applied to '
    'requests that match this rule." gatewayd applies them in this order: CORS preflight, '
    "RequestRedirect, RequestHeaderModifier, URLRewrite, RequestMirror, then the "
    "backendRef's own filters; ResponseHeaderModifier on the way back.",
    "weights": 'BackendRef.weight: "Weight specifies the proportion of requests forwarded '
    "to the referenced backend. This is computed as weight/(sum of all weights in this "
    'BackendRefs list)." A weight of 0 is never chosen. Endpoints of one backend take '
    "turns (round robin).",
    "invalid": '"If a backendRef is invalid, 500 status MUST be returned for requests that '
    'would have otherwise been routed to an invalid backend."',
}


def _ops_effect(ops: HeaderOps) -> str:
    parts: list[str] = []
    if ops.remove:
        parts.append("remove " + ", ".join(ops.remove))
    if ops.set:
        parts.append("set " + ", ".join(f"{n}: {v}" for n, v in ops.set))
    if ops.add:
        parts.append("add " + ", ".join(f"{n}: {v}" for n, v in ops.add))
    return "; ".join(parts)


def _backend_json(b: CompiledBackend, weight: int, total: int) -> Doc:
    out: Doc = {
        "name": b.name,
        "weight": weight,
        "share": round(weight / total, 4) if total else 0.0,
        "endpoints": [host_port(e.address, e.port) for e in b.endpoints],
    }
    if b.invalid_status is not None:
        out["eligible"] = False
        out["why"] = f"invalid backendRef: requests that choose it get {b.invalid_status}"
    elif not b.endpoints:
        out["eligible"] = False
        out["why"] = "no ready endpoint: requests that choose it get 503"
    else:
        out["eligible"] = True
        out["why"] = f"{len(b.endpoints)} ready endpoint(s), taken in turn" + (
            " (resolved by DNS at connect time)" if b.fqdn else ""
        )
    if b.http2:
        out["protocol"] = "HTTP/2"
    if b.tls is not None:
        out["tls"] = f"BackendTLSPolicy {b.tls.policy}, SNI {b.tls.hostname}"
    filters: list[str] = []
    if b.request_headers is not None:
        filters.append("RequestHeaderModifier: " + _ops_effect(b.request_headers))
    if b.response_headers is not None:
        filters.append("ResponseHeaderModifier: " + _ops_effect(b.response_headers))
    if filters:
        out["filters"] = filters
    return out


def explain_rule(hit: RouteHit, *, req_method: str, req_headers: Mapping[str, str]) -> Doc:
    """Filters (in the data plane's order), backends and the outcome of ``hit``'s rule."""
    rule = hit.rule
    filters: list[Doc] = []
    outcome: Doc | None = None
    if rule.cors is not None:
        preflight = (
            req_method == "OPTIONS"
            and "origin" in req_headers
            and "access-control-request-method" in req_headers
        )
        filters.append(
            {
                "filter": "CORS",
                "effect": "preflight answered here (200 with Access-Control-Allow-*)"
                if preflight
                else "Access-Control-* response headers added for allowed origins",
            }
        )
        if preflight:
            outcome = {"status": 200, "reason": "CORS preflight answered by gatewayd"}
    if rule.redirect is not None and outcome is None:
        r = rule.redirect
        parts = [
            f"{k} {v}"
            for k, v in (("scheme", r.scheme), ("hostname", r.hostname), ("port", r.port))
            if v is not None
        ]
        if r.path is not None:
            prefix = f" of prefix {hit.prefix!r}" if r.path.type == "ReplacePrefixMatch" else ""
            parts.append(f"path {r.path.type} {r.path.value!r}{prefix}")
        filters.append(
            {
                "filter": "RequestRedirect",
                "effect": f"answer {r.status_code} with Location: "
                + (", ".join(parts) or "the request URL"),
            }
        )
        outcome = {"status": r.status_code, "reason": "RequestRedirect"}
    if rule.direct_status is not None and outcome is None:
        outcome = {
            "status": rule.direct_status,
            "reason": "the rule has no backendRef that can be forwarded to "
            "(none, all weight 0, or all invalid)",
            "spec": SPEC["invalid"],
        }
    if outcome is None:
        if rule.request_headers is not None:
            filters.append(
                {"filter": "RequestHeaderModifier", "effect": _ops_effect(rule.request_headers)}
            )
        if rule.rewrite is not None:
            w = rule.rewrite
            parts = []
            if w.hostname is not None:
                parts.append(f"Host {w.hostname}")
            if w.path is not None:
                prefix = (
                    f" (matched prefix {hit.prefix!r})"
                    if w.path.type == "ReplacePrefixMatch"
                    else ""
                )
                parts.append(f"path {w.path.type} {w.path.value!r}{prefix}")
            filters.append({"filter": "URLRewrite", "effect": ", ".join(parts)})
        filters.extend(
            {
                "filter": "RequestMirror",
                "effect": f"copy to {m.backend.name} ({m.fraction:.0%} of requests), "
                "response ignored",
            }
            for m in rule.mirrors
        )
    if rule.response_headers is not None:
        filters.append(
            {"filter": "ResponseHeaderModifier", "effect": _ops_effect(rule.response_headers)}
        )
    total = rule.total_weight
    weights = [
        cum - (rule.cumulative_weights[i - 1] if i else 0)
        for i, cum in enumerate(rule.cumulative_weights)
    ]
    backends = [_backend_json(b, w, total) for b, w in zip(rule.backends, weights, strict=True)]
    if outcome is None:
        eligible = [b for b in backends if b["eligible"]]
        outcome = {
            "status": None,
            "reason": "forwarded to a backend chosen by weight"
            if eligible
            else "every backend is ineligible: invalid (500) or without endpoints (503)",
        }
    out: Doc = {
        "route": f"{rule.route_kind} {rule.route_namespace}/{rule.route_name}",
        "rule": rule.rule_index,
        "filters": filters,
        "filtersSpec": SPEC["filters"],
        "backends": backends,
        "totalWeight": total,
        "backendsSpec": SPEC["weights"],
        "outcome": outcome,
    }
    if rule.rule_name is not None:
        out["ruleName"] = rule.rule_name
    if rule.request_timeout is not None:
        out["requestTimeout"] = rule.request_timeout
    if rule.backend_request_timeout is not None:
        out["backendRequestTimeout"] = rule.backend_request_timeout
    if rule.retry is not None:
        out["retry"] = {"attempts": rule.retry.attempts, "codes": sorted(rule.retry.codes)}
    return out
