"""Admission validation and CRD defaults, one table row per rule.

Every invalid row asserts the exact field path and a message fragment of the Problem
and that the object was rejected; the matching valid rows show the rule is not
over-eager.  Objects are written as Python dicts and fed as JSON (which is YAML).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import LoadResult, load_documents
from gatewayd.routing.config.validate.reader import parse_duration

GW_API = "gateway.networking.k8s.io/v1"


def load(*objs: dict[str, Any]) -> LoadResult:
    return load_documents([("t.yaml", "\n---\n".join(json.dumps(o) for o in objs))])


def obj(kind: str, spec: dict[str, Any], *, api: str = GW_API, name: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
    }


def route(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"parentRefs": [{"name": "gw"}], **spec}
    if rules:
        body["rules"] = list(rules)
    return obj("HTTPRoute", body)


def backend(name: str = "svc", **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": 80, **extra}


def gateway(*listeners: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return obj("Gateway", {"gatewayClassName": "gc", "listeners": list(listeners), **spec})


def http_listener(name: str = "http", port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": "HTTP", **extra}


def https_listener(name: str = "https", port: int = 443, **extra: Any) -> dict[str, Any]:
    tls = {"certificateRefs": [{"name": "cert"}]}
    return {"name": name, "port": port, "protocol": "HTTPS", "tls": tls, **extra}


def grpc_route(*rules: dict[str, Any]) -> dict[str, Any]:
    return obj("GRPCRoute", {"parentRefs": [{"name": "gw"}], "rules": list(rules)})


def tls_route(spec: dict[str, Any], api: str = GW_API) -> dict[str, Any]:
    return obj("TLSRoute", {"parentRefs": [{"name": "gw"}], **spec}, api=api)


def tls_rule() -> dict[str, Any]:
    return {"backendRefs": [backend()]}


def only(result: LoadResult) -> object:
    """The single Gateway API object loaded (fails when it was rejected)."""
    c = result.config
    loaded = [
        *c.gateway_classes,
        *c.gateways,
        *c.http_routes,
        *c.grpc_routes,
        *c.tls_routes,
        *c.reference_grants,
        *c.services,
        *c.endpoint_slices,
        *c.secrets,
        *c.config_maps,
        *c.pods,
    ]
    assert result.problems == (), [str(p) for p in result.problems]
    assert len(loaded) == 1, loaded
    return loaded[0]


def assert_rejected(result: LoadResult, field: str, fragment: str) -> None:
    c = result.config
    assert not (
        c.gateway_classes
        or c.gateways
        or c.http_routes
        or c.grpc_routes
        or c.tls_routes
        or c.reference_grants
        or c.services
        or c.endpoint_slices
        or c.secrets
        or c.config_maps
        or c.pods
    ), "the invalid object was loaded"
    texts = [str(p) for p in result.problems]
    assert any(p.field == field and fragment in p.message for p in result.problems), texts
    for p in result.problems:
        assert p.source == m.Source(file="t.yaml", index=0)
        assert p.kind and p.name in ("x", "9x")
        assert str(p).startswith(f"t.yaml:0: {p.kind} ")


def match(path: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(extra)
    if path is not None:
        out["path"] = path
    return out


def rule_with_filters(*filters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"filters": list(filters), **extra}


HDR = {"set": [{"name": "x-a", "value": "1"}]}
REDIRECT = {"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}
REWRITE = {"type": "URLRewrite", "urlRewrite": {"hostname": "example.com"}}
PREFIX_REDIRECT = {
    "type": "RequestRedirect",
    "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
}
PREFIX_REWRITE = {
    "type": "URLRewrite",
    "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
}


def headers(n: int) -> list[dict[str, str]]:
    return [{"name": f"h{i}", "value": "v"} for i in range(n)]


def mirror(**extra: Any) -> dict[str, Any]:
    return {"type": "RequestMirror", "requestMirror": {"backendRef": backend("m"), **extra}}


def cors(**fields: Any) -> dict[str, Any]:
    return {"type": "CORS", "cors": fields}


R0 = "spec.rules[0]"
M0 = f"{R0}.matches[0]"
F0 = f"{R0}.filters[0]"

# (id, HTTPRoute rule, field path, message fragment)
HTTP_RULE_INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "path not absolute",
        {"matches": [match({"type": "Exact", "value": "foo"})]},
        f"{M0}.path.value",
        "must be an absolute path starting with '/'",
    ),
    (
        "path //",
        {"matches": [match({"value": "/a//b"})]},
        f"{M0}.path.value",
        "must not contain '//'",
    ),
    (
        "path /./",
        {"matches": [match({"value": "/a/./b"})]},
        f"{M0}.path.value",
        "must not contain '/./'",
    ),
    (
        "path /../",
        {"matches": [match({"value": "/a/../b"})]},
        f"{M0}.path.value",
        "must not contain '/../'",
    ),
    (
        "path %2f",
        {"matches": [match({"value": "/a%2fb"})]},
        f"{M0}.path.value",
        "must not contain '%2f'",
    ),
    (
        "path %2F",
        {"matches": [match({"value": "/a%2Fb"})]},
        f"{M0}.path.value",
        "must not contain '%2F'",
    ),
    ("path #", {"matches": [match({"value": "/a#b"})]}, f"{M0}.path.value", "must not contain '#'"),
    (
        "path /..",
        {"matches": [match({"type": "Exact", "value": "/a/.."})]},
        f"{M0}.path.value",
        "must not end with '/..'",
    ),
    (
        "path /.",
        {"matches": [match({"value": "/a/."})]},
        f"{M0}.path.value",
        "must not end with '/.'",
    ),
    (
        "path chars",
        {"matches": [match({"value": "/a b"})]},
        f"{M0}.path.value",
        "must only contain valid characters",
    ),
    (
        "path too long",
        {"matches": [match({"value": "/" + "a" * 1024})]},
        f"{M0}.path.value",
        "at most 1024 characters",
    ),
    (
        "path type",
        {"matches": [match({"type": "Glob", "value": "/"})]},
        f"{M0}.path.type",
        "must be one of Exact, PathPrefix, RegularExpression",
    ),
    (
        "header name",
        {"matches": [match(headers=[{"name": "bad name", "value": "v"}])]},
        f"{M0}.headers[0].name",
        "is not an HTTP header name",
    ),
    (
        "header value type",
        {"matches": [match(headers=[{"name": "a", "value": 1}])]},
        f"{M0}.headers[0].value",
        "must be a string, got integer 1 (quote the value",
    ),
    (
        "header value missing",
        {"matches": [match(headers=[{"name": "a"}])]},
        f"{M0}.headers[0].value",
        "is required",
    ),
    (
        "header dup",
        {"matches": [match(headers=[{"name": "a", "value": "1"}, {"name": "a", "value": "2"}])]},
        f"{M0}.headers[1]",
        'duplicate name "a"',
    ),
    (
        "header type",
        {"matches": [match(headers=[{"type": "Prefix", "name": "a", "value": "1"}])]},
        f"{M0}.headers[0].type",
        "must be one of Exact, RegularExpression",
    ),
    (
        "headers max",
        {"matches": [match(headers=headers(17))]},
        f"{M0}.headers",
        "at most 16 items, got 17",
    ),
    (
        "query max",
        {"matches": [match(queryParams=headers(17))]},
        f"{M0}.queryParams",
        "at most 16 items",
    ),
    (
        "query value long",
        {"matches": [match(queryParams=[{"name": "q", "value": "v" * 1025}])]},
        f"{M0}.queryParams[0].value",
        "at most 1024 characters",
    ),
    (
        "method",
        {"matches": [match(method="FETCH")]},
        f"{M0}.method",
        "must be one of GET, HEAD, POST",
    ),
    ("matches max", {"matches": [match() for _ in range(65)]}, f"{R0}.matches", "at most 64 items"),
    (
        "unknown match field",
        {"matches": [{"paht": {"value": "/"}}]},
        M0,
        'unknown field "paht" (did you mean "path"?)',
    ),
    (
        "unknown rule field",
        {"matchs": []},
        R0,
        'unknown field "matchs" (did you mean "matches"?); allowed: backendRefs, filters, matches',
    ),
    (
        "filters max",
        rule_with_filters(
            *[{"type": "RequestMirror", "requestMirror": {"backendRef": backend()}}] * 17
        ),
        f"{R0}.filters",
        "at most 16 items",
    ),
    (
        "filter type unknown",
        rule_with_filters({"type": "Foo"}),
        f"{F0}.type",
        'unsupported filter type "Foo"; allowed: RequestHeaderModifier',
    ),
    (
        "filter type missing",
        rule_with_filters({"requestHeaderModifier": HDR}),
        f"{F0}.type",
        "is required",
    ),
    (
        "filter field missing",
        rule_with_filters({"type": "RequestHeaderModifier"}),
        f"{F0}.requestHeaderModifier",
        "is required when type is RequestHeaderModifier",
    ),
    (
        "filter other field",
        rule_with_filters(
            {"type": "RequestHeaderModifier", "requestHeaderModifier": HDR, "requestRedirect": {}}
        ),
        f"{F0}.requestRedirect",
        "must not be set when type is RequestHeaderModifier",
    ),
    (
        "filter unknown field",
        rule_with_filters({"type": "ExternalAuth", "externalAuth": {}}),
        F0,
        'unknown field "externalAuth"',
    ),
    (
        "redirect + rewrite",
        rule_with_filters(REDIRECT, REWRITE),
        f"{R0}.filters",
        "RequestRedirect and URLRewrite filters must not be used together",
    ),
    (
        "repeat request header",
        rule_with_filters(*[{"type": "RequestHeaderModifier", "requestHeaderModifier": HDR}] * 2),
        f"{R0}.filters",
        "RequestHeaderModifier filter cannot be repeated",
    ),
    (
        "repeat response header",
        rule_with_filters(*[{"type": "ResponseHeaderModifier", "responseHeaderModifier": HDR}] * 2),
        f"{R0}.filters",
        "ResponseHeaderModifier filter cannot be repeated",
    ),
    (
        "repeat redirect",
        rule_with_filters(REDIRECT, REDIRECT),
        f"{R0}.filters",
        "RequestRedirect filter cannot be repeated",
    ),
    (
        "repeat rewrite",
        rule_with_filters(REWRITE, REWRITE),
        f"{R0}.filters",
        "URLRewrite filter cannot be repeated",
    ),
    (
        "repeat cors",
        rule_with_filters(cors(), cors()),
        f"{R0}.filters",
        "CORS filter cannot be repeated",
    ),
    (
        "redirect status",
        rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}),
        f"{F0}.requestRedirect.statusCode",
        "must be one of 301, 302, 303, 307, 308; got 304",
    ),
    (
        "redirect status string",
        rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"statusCode": "301"}}),
        f"{F0}.requestRedirect.statusCode",
        'must be an integer, got string "301"',
    ),
    (
        "redirect scheme",
        rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"scheme": "ftp"}}),
        f"{F0}.requestRedirect.scheme",
        "must be one of http, https",
    ),
    (
        "redirect hostname wildcard",
        rule_with_filters(
            {"type": "RequestRedirect", "requestRedirect": {"hostname": "*.example.com"}}
        ),
        f"{F0}.requestRedirect.hostname",
        "is not a precise hostname",
    ),
    (
        "redirect port 0",
        rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"port": 0}}),
        f"{F0}.requestRedirect.port",
        "must be between 1 and 65535, got 0",
    ),
    (
        "redirect port big",
        rule_with_filters({"type": "RequestRedirect", "requestRedirect": {"port": 65536}}),
        f"{F0}.requestRedirect.port",
        "must be between 1 and 65535, got 65536",
    ),
    (
        "full path missing",
        rule_with_filters(
            {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath"}}}
        ),
        f"{F0}.requestRedirect.path.replaceFullPath",
        "is required when type is ReplaceFullPath",
    ),
    (
        "full path with prefix",
        rule_with_filters(
            {
                "type": "URLRewrite",
                "urlRewrite": {
                    "path": {
                        "type": "ReplaceFullPath",
                        "replaceFullPath": "/a",
                        "replacePrefixMatch": "/b",
                    }
                },
            }
        ),
        f"{F0}.urlRewrite.path.replacePrefixMatch",
        "must not be set unless type is ReplacePrefixMatch",
    ),
    (
        "prefix missing",
        rule_with_filters(
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch"}}}
        ),
        f"{F0}.urlRewrite.path.replacePrefixMatch",
        "is required when type is ReplacePrefixMatch",
    ),
    (
        "path modifier type",
        rule_with_filters(
            {"type": "URLRewrite", "urlRewrite": {"path": {"replaceFullPath": "/a"}}}
        ),
        f"{F0}.urlRewrite.path.type",
        "is required",
    ),
    (
        "rewrite hostname",
        rule_with_filters({"type": "URLRewrite", "urlRewrite": {"hostname": "Bad.Host"}}),
        f"{F0}.urlRewrite.hostname",
        "is not a precise hostname",
    ),
    (
        "prefix redirect with exact match",
        rule_with_filters(PREFIX_REDIRECT, matches=[match({"type": "Exact", "value": "/a"})]),
        f"{R0}.filters",
        "RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match",
    ),
    (
        "prefix rewrite with two matches",
        rule_with_filters(PREFIX_REWRITE, matches=[match({"value": "/a"}), match({"value": "/b"})]),
        f"{R0}.filters",
        "URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match",
    ),
    (
        "prefix rewrite in backend filter",
        {
            "matches": [match({"type": "RegularExpression", "value": "/a.*"})],
            "backendRefs": [backend(filters=[PREFIX_REWRITE])],
        },
        f"{R0}.backendRefs[0].filters",
        "exactly one PathPrefix match",
    ),
    (
        "redirect with backends",
        rule_with_filters(REDIRECT, backendRefs=[backend()]),
        f"{R0}.filters",
        "RequestRedirect filter must not be used together with backendRefs",
    ),
    (
        "set max",
        rule_with_filters(
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": headers(17)}}
        ),
        f"{F0}.requestHeaderModifier.set",
        "at most 16 items",
    ),
    (
        "add max",
        rule_with_filters(
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": headers(17)}}
        ),
        f"{F0}.responseHeaderModifier.add",
        "at most 16 items",
    ),
    (
        "remove max",
        rule_with_filters(
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"remove": [f"h{i}" for i in range(17)]},
            }
        ),
        f"{F0}.requestHeaderModifier.remove",
        "at most 16 items",
    ),
    (
        "set dup",
        rule_with_filters(
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "a", "value": "1"}] * 2},
            }
        ),
        f"{F0}.requestHeaderModifier.set[1]",
        'duplicate header name "a"',
    ),
    (
        "set header name",
        rule_with_filters(
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "a:b", "value": "1"}]},
            }
        ),
        f"{F0}.requestHeaderModifier.set[0].name",
        "is not an HTTP header name",
    ),
    (
        "mirror percent",
        rule_with_filters(mirror(percent=101)),
        f"{F0}.requestMirror.percent",
        "must be between 0 and 100, got 101",
    ),
    (
        "mirror fraction",
        rule_with_filters(mirror(fraction={"numerator": 5, "denominator": 4})),
        f"{F0}.requestMirror.fraction.numerator",
        "must be less than or equal to denominator (4)",
    ),
    (
        "mirror fraction default denominator",
        rule_with_filters(mirror(fraction={"numerator": 101})),
        f"{F0}.requestMirror.fraction.numerator",
        "less than or equal to denominator (100)",
    ),
    (
        "mirror both",
        rule_with_filters(mirror(percent=5, fraction={"numerator": 1})),
        f"{F0}.requestMirror",
        "only one of percent or fraction",
    ),
    (
        "mirror no backend",
        rule_with_filters({"type": "RequestMirror", "requestMirror": {"percent": 5}}),
        f"{F0}.requestMirror.backendRef",
        "is required",
    ),
    (
        "mirror backend port",
        rule_with_filters(
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "m"}}}
        ),
        f"{F0}.requestMirror.backendRef.port",
        "is required when the reference is to a Service",
    ),
    (
        "cors star",
        rule_with_filters(cors(allowOrigins=["*", "https://a.example"])),
        f"{F0}.cors.allowOrigins",
        "cannot contain '*' alongside other origins",
    ),
    (
        "cors origin",
        rule_with_filters(cors(allowOrigins=["example.com"])),
        f"{F0}.cors.allowOrigins[0]",
        "is not an origin",
    ),
    (
        "cors method",
        rule_with_filters(cors(allowMethods=["FETCH"])),
        f"{F0}.cors.allowMethods[0]",
        "must be one of GET",
    ),
    (
        "cors max age",
        rule_with_filters(cors(maxAge=0)),
        f"{F0}.cors.maxAge",
        "must be at least 1, got 0",
    ),
    (
        "cors credentials",
        rule_with_filters(cors(allowCredentials="yes")),
        f"{F0}.cors.allowCredentials",
        "must be true or false",
    ),
    (
        "extension ref group",
        rule_with_filters({"type": "ExtensionRef", "extensionRef": {"kind": "Foo", "name": "f"}}),
        f"{F0}.extensionRef.group",
        "is required",
    ),
    (
        "backend weight negative",
        {"backendRefs": [backend(weight=-1)]},
        f"{R0}.backendRefs[0].weight",
        "must be between 0 and 1000000, got -1",
    ),
    (
        "backend weight big",
        {"backendRefs": [backend(weight=1000001)]},
        f"{R0}.backendRefs[0].weight",
        "between 0 and 1000000",
    ),
    (
        "backend port missing",
        {"backendRefs": [{"name": "svc"}]},
        f"{R0}.backendRefs[0].port",
        'is required when the reference is to a Service (group "", kind Service)',
    ),
    (
        "backend port 0",
        {"backendRefs": [backend(port=0)]},
        f"{R0}.backendRefs[0].port",
        "must be between 1 and 65535",
    ),
    ("backend name", {"backendRefs": [{"port": 80}]}, f"{R0}.backendRefs[0].name", "is required"),
    (
        "backend namespace",
        {"backendRefs": [backend(namespace="Bad_NS")]},
        f"{R0}.backendRefs[0].namespace",
        "is not a DNS label",
    ),
    (
        "backend kind",
        {"backendRefs": [backend(kind="9lives")]},
        f"{R0}.backendRefs[0].kind",
        "is not a kind",
    ),
    (
        "backends max",
        {"backendRefs": [backend(f"s{i}") for i in range(17)]},
        f"{R0}.backendRefs",
        "at most 16 items",
    ),
    (
        "backend filters repeat",
        {"backendRefs": [backend(filters=[REWRITE, REWRITE])]},
        f"{R0}.backendRefs[0].filters",
        "URLRewrite filter cannot be repeated",
    ),
    (
        "timeout format",
        {"timeouts": {"request": "1 s"}},
        f"{R0}.timeouts.request",
        "is not a Gateway API duration",
    ),
    (
        "timeout unit",
        {"timeouts": {"request": "1d"}},
        f"{R0}.timeouts.request",
        "is not a Gateway API duration",
    ),
    (
        "timeout order",
        {"timeouts": {"request": "1s", "backendRequest": "2s"}},
        f"{R0}.timeouts.backendRequest",
        "cannot be longer than the request timeout (2s > 1s)",
    ),
    (
        "retry code",
        {"retry": {"codes": [399]}},
        f"{R0}.retry.codes[0]",
        "must be between 400 and 599, got 399",
    ),
    ("retry attempts", {"retry": {"attempts": 0}}, f"{R0}.retry.attempts", "must be at least 1"),
    (
        "retry backoff",
        {"retry": {"backoff": "fast"}},
        f"{R0}.retry.backoff",
        "is not a Gateway API duration",
    ),
    (
        "session permanent",
        {"sessionPersistence": {"cookieConfig": {"lifetimeType": "Permanent"}}},
        f"{R0}.sessionPersistence.absoluteTimeout",
        "must be specified when the cookie lifetimeType is Permanent",
    ),
    (
        "session idle",
        {"sessionPersistence": {"idleTimeout": "soon"}},
        f"{R0}.sessionPersistence.idleTimeout",
        "not a Gateway API duration",
    ),
    ("rule name", {"name": "Bad_Name"}, f"{R0}.name", "is not a valid section name"),
]


@pytest.mark.parametrize(
    ("rule", "field", "fragment"),
    [c[1:] for c in HTTP_RULE_INVALID],
    ids=[c[0] for c in HTTP_RULE_INVALID],
)
def test_http_rule_invalid(rule: dict[str, Any], field: str, fragment: str) -> None:
    assert_rejected(load(route(rule)), field, fragment)


HTTP_RULE_VALID: list[tuple[str, dict[str, Any]]] = [
    # The CRD has no rule for RegularExpression values; RE2's verdict is reported on the
    # route's status (tests/routing/test_regex.py).
    (
        "regex path RE2 rejects",
        {"matches": [match({"type": "RegularExpression", "value": "/a(["})]},
    ),
    (
        "regex header RE2 rejects",
        {"matches": [match(headers=[{"type": "RegularExpression", "name": "a", "value": "*"}])]},
    ),
    ("regex path with //", {"matches": [match({"type": "RegularExpression", "value": "/a//b.*"})]}),
    ("path with %2e and encoded chars", {"matches": [match({"value": "/a%20b/~c@d"})]}),
    ("root exact", {"matches": [match({"type": "Exact", "value": "/"})]}),
    ("64 matches", {"matches": [match() for _ in range(64)]}),
    ("16 headers", {"matches": [match(headers=headers(16))]}),
    (
        "header names differ in case",
        {"matches": [match(headers=[{"name": "a", "value": "1"}, {"name": "A", "value": "2"}])]},
    ),
    ("16 filters", rule_with_filters(*[mirror()] * 16)),
    ("redirect alone", rule_with_filters(REDIRECT)),
    (
        "prefix redirect with one prefix match",
        rule_with_filters(PREFIX_REDIRECT, matches=[match({"value": "/old"})]),
    ),
    ("prefix rewrite with default match", rule_with_filters(PREFIX_REWRITE)),
    (
        "full path rewrite with exact",
        rule_with_filters(
            {
                "type": "URLRewrite",
                "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}},
            },
            matches=[match({"type": "Exact", "value": "/a"}), match({"value": "/b"})],
        ),
    ),
    ("mirror percent", rule_with_filters(mirror(percent=100))),
    ("mirror fraction", rule_with_filters(mirror(fraction={"numerator": 1, "denominator": 3}))),
    (
        "extension ref",
        rule_with_filters(
            {
                "type": "ExtensionRef",
                "extensionRef": {"group": "example.com", "kind": "Foo", "name": "f"},
            }
        ),
    ),
    (
        "cors star",
        rule_with_filters(cors(allowOrigins=["*"], allowMethods=["*"], allowHeaders=["*"])),
    ),
    (
        "cors origins",
        rule_with_filters(cors(allowOrigins=["https://a.example", "http://*.b.example:8080"])),
    ),
    ("weight bounds", {"backendRefs": [backend(weight=0), backend("b", weight=1000000)]}),
    (
        "non-service backend without port",
        {"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]},
    ),
    ("16 backends", {"backendRefs": [backend(f"s{i}") for i in range(16)]}),
    ("timeouts", {"timeouts": {"request": "10s", "backendRequest": "2s"}}),
    ("request timeout 0 disables", {"timeouts": {"request": "0s", "backendRequest": "10s"}}),
    ("retry", {"retry": {"codes": [500, 503], "attempts": 2, "backoff": "100ms"}}),
    (
        "session persistence",
        {
            "sessionPersistence": {
                "sessionName": "s",
                "absoluteTimeout": "1h",
                "cookieConfig": {"lifetimeType": "Permanent"},
            }
        },
    ),
    (
        "session header (newer shape)",
        {"sessionPersistence": {"type": "Header", "header": {"name": "x-session"}}},
    ),
    ("rule name", {"name": "my-rule.v1"}),
]


@pytest.mark.parametrize(
    "rule", [c[1] for c in HTTP_RULE_VALID], ids=[c[0] for c in HTTP_RULE_VALID]
)
def test_http_rule_valid(rule: dict[str, Any]) -> None:
    loaded = only(load(route(rule)))
    assert isinstance(loaded, m.HTTPRoute)


# (id, HTTPRoute spec (parentRefs default to one ref to gw), field, fragment)
HTTP_SPEC_INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("rules empty", {"rules": []}, "spec.rules", "must have at least 1 item"),
    ("rules max", {"rules": [{} for _ in range(17)]}, "spec.rules", "at most 16 items, got 17"),
    (
        "total matches",
        {"rules": [{"matches": [match() for _ in range(64)]} for _ in range(3)]},
        "spec.rules",
        "total number of matches across all rules must be at most 128, got 192",
    ),
    (
        "rule names unique",
        {"rules": [{"name": "a"}, {"name": "a"}]},
        "spec.rules[1].name",
        'duplicate rule name "a"',
    ),
    ("rules not a list", {"rules": {"matches": []}}, "spec.rules", "must be a list, got a mapping"),
    ("rule not a mapping", {"rules": ["x"]}, "spec.rules[0]", 'must be a mapping, got string "x"'),
    ("hostname", {"hostnames": ["Example.com"]}, "spec.hostnames[0]", "is not a hostname"),
    (
        "hostname wildcard inside",
        {"hostnames": ["a.*.com"]},
        "spec.hostnames[0]",
        "is not a hostname",
    ),
    (
        "hostnames max",
        {"hostnames": [f"h{i}.example" for i in range(17)]},
        "spec.hostnames",
        "at most 16 items",
    ),
    (
        "parentRefs max",
        {"parentRefs": [{"name": "gw", "sectionName": f"s{i}"} for i in range(33)]},
        "spec.parentRefs",
        "at most 32 items",
    ),
    (
        "parent sectionName",
        {"parentRefs": [{"name": "gw", "sectionName": "Bad"}]},
        "spec.parentRefs[0].sectionName",
        "is not a valid section name",
    ),
    (
        "parent port",
        {"parentRefs": [{"name": "gw", "port": 0}]},
        "spec.parentRefs[0].port",
        "between 1 and 65535",
    ),
    (
        "parent name",
        {"parentRefs": [{"sectionName": "a"}]},
        "spec.parentRefs[0].name",
        "is required",
    ),
    (
        "parent group",
        {"parentRefs": [{"name": "gw", "group": "Not A Group"}]},
        "spec.parentRefs[0].group",
        "is not an API group",
    ),
    (
        "parent duplicate",
        {"parentRefs": [{"name": "gw"}, {"name": "gw"}]},
        "spec.parentRefs[1]",
        "sectionName or port must be unique",
    ),
    (
        "parent mixed",
        {"parentRefs": [{"name": "gw"}, {"name": "gw", "sectionName": "a"}]},
        "spec.parentRefs",
        "sectionName or port must be specified when parentRefs includes 2 or more references to "
        "the same parent",
    ),
    (
        "unknown spec field",
        {"hostname": ["a.example"]},
        "spec",
        'unknown field "hostname" (did you mean "hostnames"?)',
    ),
]


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [c[1:] for c in HTTP_SPEC_INVALID],
    ids=[c[0] for c in HTTP_SPEC_INVALID],
)
def test_http_spec_invalid(spec: dict[str, Any], field: str, fragment: str) -> None:
    assert_rejected(load(route(**spec)), field, fragment)


def test_http_spec_valid_parent_refs() -> None:
    r = only(
        load(
            route(
                parentRefs=[
                    {"name": "gw", "sectionName": "a"},
                    {"name": "gw", "sectionName": "b"},
                    {"name": "gw", "namespace": "other", "port": 80},
                    {"name": "gw2"},
                ],
                hostnames=["*.example.com", "a.example.com"],
            )
        )
    )
    assert isinstance(r, m.HTTPRoute)
    assert [p.section_name for p in r.parent_refs] == ["a", "b", None, None]
    assert r.parent_refs[2] == m.ParentReference(name="gw", namespace="other", port=80)
    assert r.hostnames == ("*.example.com", "a.example.com")


def test_missing_spec_is_reported() -> None:
    doc = {"apiVersion": GW_API, "kind": "HTTPRoute", "metadata": {"name": "x"}}
    result = load(doc)
    assert [(p.field, p.message) for p in result.problems] == [("spec", "is required")]
    assert result.config.http_routes == ()


# --------------------------------------------------------------------------- defaults


def test_http_route_defaults() -> None:
    r = only(
        load(
            route(
                {"backendRefs": [{"name": "svc", "port": 80}]},
                {
                    "matches": [
                        {
                            "headers": [{"name": "a", "value": "1"}],
                            "queryParams": [{"name": "q", "value": "v"}],
                        },
                        {"path": {"type": "Exact"}},
                        {"path": {"value": "/p"}},
                    ],
                    "filters": [{"type": "RequestRedirect", "requestRedirect": {}}],
                },
            )
        )
    )
    assert isinstance(r, m.HTTPRoute)
    assert r.parent_refs == (
        m.ParentReference(group="gateway.networking.k8s.io", kind="Gateway", name="gw"),
    )
    first, second = r.rules
    # A rule without matches gets one PathPrefix "/" match.
    assert first.matches == (
        m.HTTPRouteMatch(path=m.HTTPPathMatch(type=m.PathMatchType.PATH_PREFIX, value="/")),
    )
    # backendRef: weight 1, group "", kind Service.
    assert first.backend_refs == (
        m.BackendRef(
            ref=m.BackendObjectReference(group="", kind="Service", name="svc", port=80), weight=1
        ),
    )
    # A match without a path gets PathPrefix "/"; header and query matches are Exact.
    assert second.matches[0].path == m.HTTPPathMatch(type=m.PathMatchType.PATH_PREFIX, value="/")
    assert second.matches[0].headers == (
        m.HTTPHeaderMatch(type=m.HeaderMatchType.EXACT, name="a", value="1"),
    )
    assert second.matches[0].query_params == (
        m.HTTPQueryParamMatch(type=m.HeaderMatchType.EXACT, name="q", value="v"),
    )
    # A path without a value gets "/", without a type PathPrefix.
    assert second.matches[1].path == m.HTTPPathMatch(type=m.PathMatchType.EXACT, value="/")
    assert second.matches[2].path == m.HTTPPathMatch(type=m.PathMatchType.PATH_PREFIX, value="/p")
    # Redirect status code 302.
    redirect = second.filters[0].request_redirect
    assert redirect == m.HTTPRequestRedirectFilter(status_code=302)


def test_http_route_without_rules_gets_default_rule() -> None:
    r = only(load(route()))
    assert isinstance(r, m.HTTPRoute)
    assert r.rules == (m.HTTPRouteRule(matches=(m.HTTPRouteMatch(),)),)


def test_empty_matches_list_gets_default_match() -> None:
    r = only(load(route({"matches": []})))
    assert isinstance(r, m.HTTPRoute)
    assert r.rules[0].matches == (m.HTTPRouteMatch(),)


def test_filter_values_are_read() -> None:
    r = only(
        load(
            route(
                {
                    "filters": [
                        {
                            "type": "RequestHeaderModifier",
                            "requestHeaderModifier": {
                                "set": [{"name": "X-A", "value": "1"}],
                                "add": [{"name": "x-b", "value": "2"}],
                                "remove": ["x-c"],
                            },
                        },
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {"remove": ["server"]},
                        },
                        mirror(fraction={"numerator": 1}),
                        cors(allowOrigins=["https://a.example"], allowCredentials=True),
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {
                                "hostname": "b.example",
                                "path": {"type": "ReplaceFullPath", "replaceFullPath": "/z"},
                            },
                        },
                    ]
                },
            )
        )
    )
    assert isinstance(r, m.HTTPRoute)
    f = r.rules[0].filters
    assert f[0] == m.HTTPRouteFilter(
        type=m.FilterType.REQUEST_HEADER_MODIFIER,
        request_header_modifier=m.HTTPHeaderFilter(
            set=(m.HTTPHeader(name="X-A", value="1"),),
            add=(m.HTTPHeader(name="x-b", value="2"),),
            remove=("x-c",),
        ),
    )
    assert f[1].response_header_modifier == m.HTTPHeaderFilter(remove=("server",))
    assert f[2].request_mirror == m.HTTPRequestMirrorFilter(
        backend_ref=m.BackendObjectReference(name="m", port=80),
        fraction=m.Fraction(numerator=1, denominator=100),
    )
    assert f[3].cors == m.HTTPCORSFilter(
        allow_origins=("https://a.example",), allow_credentials=True, max_age=5
    )
    assert f[4].url_rewrite == m.HTTPURLRewriteFilter(
        hostname="b.example",
        path=m.HTTPPathModifier(type=m.PathModifierType.REPLACE_FULL_PATH, replace_full_path="/z"),
    )


def test_extension_ref_filter_loads() -> None:
    r = only(
        load(
            route(
                rule_with_filters(
                    {
                        "type": "ExtensionRef",
                        "extensionRef": {"group": "", "kind": "ConfigMap", "name": "c"},
                    }
                )
            )
        )
    )
    assert isinstance(r, m.HTTPRoute)
    assert r.rules[0].filters[0].extension_ref == m.LocalObjectReference(
        group="", kind="ConfigMap", name="c"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("1s", 1.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("1h1m1s1ms", 3661.001),
        ("99999ms", 99.999),
    ],
)
def test_duration_valid(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "1d", "1.5s", "-1s", "100000s", "1h1m1s1ms1h", " 1s", "1s\n", "1S"]
)
def test_duration_invalid(text: str) -> None:
    assert parse_duration(text) is None


def test_durations_are_loaded_as_seconds() -> None:
    r = only(
        load(
            route(
                {
                    "timeouts": {"request": "1m", "backendRequest": "250ms"},
                    "retry": {"backoff": "2s"},
                    "sessionPersistence": {"absoluteTimeout": "1h", "idleTimeout": "10m"},
                }
            )
        )
    )
    assert isinstance(r, m.HTTPRoute)
    rule = r.rules[0]
    assert rule.timeouts == m.HTTPRouteTimeouts(request=60.0, backend_request=0.25)
    assert rule.retry == m.HTTPRouteRetry(backoff=2.0)
    assert rule.session_persistence == m.SessionPersistence(
        absolute_timeout=3600.0, idle_timeout=600.0
    )


# --------------------------------------------------------------------------- Gateway

L0 = "spec.listeners[0]"
L1 = "spec.listeners[1]"

GATEWAY_INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "listeners missing",
        obj("Gateway", {"gatewayClassName": "gc"}),
        "spec.listeners",
        "is required",
    ),
    ("listeners empty", gateway(), "spec.listeners", "must have at least 1 item"),
    (
        "listeners max",
        gateway(*[http_listener(f"l{i}", 1000 + i) for i in range(65)]),
        "spec.listeners",
        "at most 64 items",
    ),
    (
        "class missing",
        obj("Gateway", {"listeners": [http_listener()]}),
        "spec.gatewayClassName",
        "is required",
    ),
    ("name pattern", gateway(http_listener("Web_1")), f"{L0}.name", "is not a valid section name"),
    ("name missing", gateway({"port": 80, "protocol": "HTTP"}), f"{L0}.name", "is required"),
    (
        "names unique",
        gateway(http_listener("a", 80), http_listener("a", 81)),
        f"{L1}.name",
        'duplicate listener name "a"',
    ),
    ("port 0", gateway(http_listener(port=0)), f"{L0}.port", "must be between 1 and 65535, got 0"),
    (
        "port big",
        gateway(http_listener(port=65536)),
        f"{L0}.port",
        "must be between 1 and 65535, got 65536",
    ),
    (
        "port string",
        gateway({"name": "a", "port": "80", "protocol": "HTTP"}),
        f"{L0}.port",
        'must be an integer, got string "80"',
    ),
    ("port missing", gateway({"name": "a", "protocol": "HTTP"}), f"{L0}.port", "is required"),
    ("protocol missing", gateway({"name": "a", "port": 80}), f"{L0}.protocol", "is required"),
    (
        "protocol pattern",
        gateway({"name": "a", "port": 80, "protocol": "HTTP 2"}),
        f"{L0}.protocol",
        "is not a protocol name",
    ),
    (
        "hostname pattern",
        gateway(http_listener(hostname="-bad.example")),
        f"{L0}.hostname",
        "is not a hostname",
    ),
    (
        "hostname on TCP",
        gateway({"name": "t", "port": 9000, "protocol": "TCP", "hostname": "a.example"}),
        f"{L0}.hostname",
        "must not be specified for protocol TCP",
    ),
    (
        "tls on HTTP",
        gateway(http_listener(tls={"certificateRefs": [{"name": "c"}]})),
        f"{L0}.tls",
        "must not be specified for protocol HTTP",
    ),
    (
        "TLS without tls",
        gateway({"name": "t", "port": 443, "protocol": "TLS"}),
        f"{L0}.tls",
        "is required for protocol TLS",
    ),
    (
        "HTTPS passthrough",
        gateway({"name": "s", "port": 443, "protocol": "HTTPS", "tls": {"mode": "Passthrough"}}),
        f"{L0}.tls.mode",
        "must be Terminate for protocol HTTPS",
    ),
    (
        "terminate without certs",
        gateway({"name": "s", "port": 443, "protocol": "HTTPS", "tls": {}}),
        f"{L0}.tls.certificateRefs",
        "certificateRefs or options must be specified when mode is Terminate",
    ),
    (
        "tls mode",
        gateway({"name": "s", "port": 443, "protocol": "TLS", "tls": {"mode": "Reencrypt"}}),
        f"{L0}.tls.mode",
        "must be one of Terminate, Passthrough",
    ),
    (
        "cert ref name",
        gateway(
            {
                "name": "s",
                "port": 443,
                "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"kind": "Secret"}]},
            }
        ),
        f"{L0}.tls.certificateRefs[0].name",
        "is required",
    ),
    (
        "same port protocol hostname",
        gateway(http_listener("a"), http_listener("b")),
        L1,
        "the combination of port, protocol and hostname must be unique",
    ),
    (
        "allowedRoutes from",
        gateway(http_listener(allowedRoutes={"namespaces": {"from": "Any"}})),
        f"{L0}.allowedRoutes.namespaces.from",
        "must be one of All, Same, Selector",
    ),
    (
        "selector operator",
        gateway(
            http_listener(
                allowedRoutes={
                    "namespaces": {
                        "from": "Selector",
                        "selector": {
                            "matchExpressions": [
                                {"key": "a", "operator": "Equals", "values": ["b"]}
                            ]
                        },
                    }
                }
            )
        ),
        f"{L0}.allowedRoutes.namespaces.selector.matchExpressions[0].operator",
        "must be one of In, NotIn, Exists, DoesNotExist",
    ),
    (
        "selector In values",
        gateway(
            http_listener(
                allowedRoutes={
                    "namespaces": {
                        "from": "Selector",
                        "selector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                    }
                }
            )
        ),
        f"{L0}.allowedRoutes.namespaces.selector.matchExpressions[0].values",
        "must be non-empty when operator is In",
    ),
    (
        "kinds kind",
        gateway(http_listener(allowedRoutes={"kinds": [{"group": "gateway.networking.k8s.io"}]})),
        f"{L0}.allowedRoutes.kinds[0].kind",
        "is required",
    ),
    (
        "address ip",
        gateway(http_listener(), addresses=[{"value": "not-an-ip"}]),
        "spec.addresses[0].value",
        "is not an IPv4 or IPv6 address",
    ),
    (
        "address dup",
        gateway(
            http_listener(),
            addresses=[{"value": "10.0.0.1"}, {"type": "IPAddress", "value": "10.0.0.1"}],
        ),
        "spec.addresses[1].value",
        "IPAddress values must be unique",
    ),
    (
        "address type",
        gateway(http_listener(), addresses=[{"type": "ip", "value": "10.0.0.1"}]),
        "spec.addresses[0].type",
        "is not IPAddress, Hostname, NamedAddress or a domain-prefixed type",
    ),
    (
        "frontend ca refs",
        gateway(
            https_listener(),
            tls={"frontend": {"default": {"validation": {"caCertificateRefs": []}}}},
        ),
        "spec.tls.frontend.default.validation.caCertificateRefs",
        "must have at least 1 item",
    ),
    (
        "unknown listener field",
        gateway(http_listener(allowedroutes={})),
        L0,
        'unknown field "allowedroutes" (did you mean "allowedRoutes"?)',
    ),
]


@pytest.mark.parametrize(
    ("doc", "field", "fragment"),
    [c[1:] for c in GATEWAY_INVALID],
    ids=[c[0] for c in GATEWAY_INVALID],
)
def test_gateway_invalid(doc: dict[str, Any], field: str, fragment: str) -> None:
    assert_rejected(load(doc), field, fragment)


def test_gateway_defaults_and_values() -> None:
    gw = only(
        load(
            gateway(
                http_listener(),
                https_listener(hostname="*.example.com"),
                {"name": "pass", "port": 8443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
                {"name": "odd", "port": 9000, "protocol": "example.com/quic"},
                {
                    "name": "sel",
                    "port": 8080,
                    "protocol": "HTTP",
                    "allowedRoutes": {
                        "namespaces": {
                            "from": "Selector",
                            "selector": {
                                "matchLabels": {"team": "a"},
                                "matchExpressions": [{"key": "env", "operator": "Exists"}],
                            },
                        },
                        "kinds": [{"kind": "HTTPRoute"}],
                    },
                },
                addresses=[{"value": "127.0.0.1"}, {"type": "Hostname", "value": "gw.example"}],
                tls={"backend": {"clientCertificateRef": {"name": "client", "namespace": "certs"}}},
            )
        )
    )
    assert isinstance(gw, m.Gateway)
    http, https, passthrough, odd, sel = gw.listeners
    assert http.allowed_routes == m.AllowedRoutes(namespaces_from=m.FromNamespaces.SAME)
    assert http.tls is None and http.hostname is None
    assert https.tls == m.GatewayTLSConfig(
        mode=m.TLSModeType.TERMINATE,
        certificate_refs=(m.SecretObjectReference(group="", kind="Secret", name="cert"),),
    )
    assert https.hostname == "*.example.com"
    assert passthrough.tls is not None and passthrough.tls.mode is m.TLSModeType.PASSTHROUGH
    # An unknown protocol is admitted; status reports it as UnsupportedProtocol.
    assert odd.protocol == "example.com/quic"
    assert sel.allowed_routes == m.AllowedRoutes(
        namespaces_from=m.FromNamespaces.SELECTOR,
        selector=m.LabelSelector(
            match_labels=(("team", "a"),),
            match_expressions=(m.LabelSelectorRequirement(key="env", operator="Exists"),),
        ),
        kinds=(m.RouteGroupKind(group="gateway.networking.k8s.io", kind="HTTPRoute"),),
    )
    assert gw.addresses == (
        m.GatewayAddress(type="IPAddress", value="127.0.0.1"),
        m.GatewayAddress(type="Hostname", value="gw.example"),
    )
    assert gw.backend_client_certificate_ref == m.SecretObjectReference(
        name="client", namespace="certs"
    )


def test_gateway_https_without_tls_is_admitted() -> None:
    gw = only(load(gateway({"name": "s", "port": 443, "protocol": "HTTPS"})))
    assert isinstance(gw, m.Gateway)
    assert gw.listeners[0].tls is None


def test_gateway_frontend_validation_applies_to_tls_listeners() -> None:
    ca = {"group": "", "kind": "ConfigMap", "name": "ca"}
    other = {"group": "", "kind": "ConfigMap", "name": "ca-8443"}
    gw = only(
        load(
            gateway(
                https_listener(),
                https_listener("alt", 8443),
                http_listener(),
                https_listener(
                    "own",
                    9443,
                    tls={
                        "certificateRefs": [{"name": "c"}],
                        "frontendValidation": {"caCertificateRefs": [ca]},
                    },
                ),
                tls={
                    "frontend": {
                        "default": {
                            "validation": {
                                "caCertificateRefs": [ca],
                                "mode": "AllowInsecureFallback",
                            }
                        },
                        "perPort": [
                            {"port": 8443, "tls": {"validation": {"caCertificateRefs": [other]}}}
                        ],
                    }
                },
            )
        )
    )
    assert isinstance(gw, m.Gateway)
    https, alt, http, own = gw.listeners
    assert https.tls is not None and https.tls.frontend_validation == m.FrontendValidation(
        ca_certificate_refs=(m.ObjectReference(name="ca"),), mode="AllowInsecureFallback"
    )
    assert alt.tls is not None and alt.tls.frontend_validation == m.FrontendValidation(
        ca_certificate_refs=(m.ObjectReference(name="ca-8443"),)
    )
    assert http.tls is None
    assert own.tls is not None and own.tls.frontend_validation == m.FrontendValidation(
        ca_certificate_refs=(m.ObjectReference(name="ca"),)
    )


# --------------------------------------------------------------------------- GRPCRoute

GM0 = "spec.rules[0].matches[0]"

GRPC_INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "method empty",
        {"matches": [{"method": {}}]},
        f"{GM0}.method",
        "one or both of service or method must be specified",
    ),
    (
        "service pattern",
        {"matches": [{"method": {"service": "bad service"}}]},
        f"{GM0}.method.service",
        "is not a gRPC service name",
    ),
    (
        "method pattern",
        {"matches": [{"method": {"method": "Get-It"}}]},
        f"{GM0}.method.method",
        "is not a gRPC method name",
    ),
    (
        "method type",
        {"matches": [{"method": {"type": "Prefix", "service": "a"}}]},
        f"{GM0}.method.type",
        "must be one of Exact, RegularExpression",
    ),
    (
        "header name",
        {"matches": [{"headers": [{"name": "a b", "value": "1"}]}]},
        f"{GM0}.headers[0].name",
        "is not an HTTP header name",
    ),
    (
        "filter type",
        {"filters": [REDIRECT]},
        "spec.rules[0].filters[0]",
        'unknown field "requestRedirect"',
    ),
    (
        "filter type name",
        {"filters": [{"type": "URLRewrite"}]},
        "spec.rules[0].filters[0].type",
        'unsupported filter type "URLRewrite"; allowed: ResponseHeaderModifier, '
        "RequestHeaderModifier, RequestMirror, ExtensionRef",
    ),
    (
        "filter repeat",
        {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": HDR}] * 2},
        "spec.rules[0].filters",
        "RequestHeaderModifier filter cannot be repeated",
    ),
    (
        "backend port",
        {"backendRefs": [{"name": "svc"}]},
        "spec.rules[0].backendRefs[0].port",
        "is required",
    ),
    (
        "matches max",
        {"matches": [{"method": {"service": "a"}}] * 65},
        "spec.rules[0].matches",
        "at most 64 items",
    ),
]


@pytest.mark.parametrize(
    ("rule", "field", "fragment"), [c[1:] for c in GRPC_INVALID], ids=[c[0] for c in GRPC_INVALID]
)
def test_grpc_invalid(rule: dict[str, Any], field: str, fragment: str) -> None:
    assert_rejected(load(grpc_route(rule)), field, fragment)


def test_grpc_defaults_and_values() -> None:
    r = only(
        load(
            grpc_route(
                {
                    "matches": [
                        {"method": {"service": "pkg.Echo", "method": "Say"}},
                        {"method": {"method": "Ping"}},
                        {"method": {"type": "RegularExpression", "service": "pkg\\..*"}},
                        {"headers": [{"name": "x-a", "value": "1"}]},
                    ],
                    "filters": [
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": HDR},
                        mirror(),
                    ],
                    "backendRefs": [{"name": "svc", "port": 50051}],
                },
                {},
            )
        )
    )
    assert isinstance(r, m.GRPCRoute)
    first, empty = r.rules
    assert first.matches[0].method == m.GRPCMethodMatch(
        type=m.HeaderMatchType.EXACT, service="pkg.Echo", method="Say"
    )
    assert first.matches[1].method == m.GRPCMethodMatch(method="Ping")
    assert first.matches[2].method == m.GRPCMethodMatch(
        type=m.HeaderMatchType.REGULAR_EXPRESSION, service="pkg\\..*"
    )
    assert first.matches[3].headers == (m.HTTPHeaderMatch(name="x-a", value="1"),)
    assert first.backend_refs[0] == m.BackendRef(
        ref=m.BackendObjectReference(name="svc", port=50051)
    )
    assert [f.type for f in first.filters] == [
        m.FilterType.REQUEST_HEADER_MODIFIER,
        m.FilterType.REQUEST_MIRROR,
    ]
    assert empty == m.GRPCRouteRule()  # no default matches for GRPCRoute: matches everything


@pytest.mark.parametrize(
    "api", ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"]
)
def test_grpc_versions(api: str) -> None:
    assert isinstance(only(load(obj("GRPCRoute", {"rules": [{}]}, api=api))), m.GRPCRoute)


# --------------------------------------------------------------------------- TLSRoute

TLS_INVALID: list[tuple[str, dict[str, Any], str, str, str]] = [
    ("v1 hostnames required", {"rules": [tls_rule()]}, GW_API, "spec.hostnames", "is required"),
    (
        "v1 hostnames empty",
        {"hostnames": [], "rules": [tls_rule()]},
        GW_API,
        "spec.hostnames",
        "at least 1 item",
    ),
    (
        "v1 one rule",
        {"hostnames": ["a.example"], "rules": [tls_rule(), tls_rule()]},
        GW_API,
        "spec.rules",
        "at most 1 items",
    ),
    (
        "v1 ip hostname",
        {"hostnames": ["10.0.0.1"], "rules": [tls_rule()]},
        GW_API,
        "spec.hostnames[0]",
        "hostnames cannot contain an IP",
    ),
    ("rules required", {"hostnames": ["a.example"]}, GW_API, "spec.rules", "is required"),
    (
        "backendRefs required",
        {"hostnames": ["a.example"], "rules": [{}]},
        GW_API,
        "spec.rules[0].backendRefs",
        "is required",
    ),
    (
        "backend filters unknown",
        {"hostnames": ["a.example"], "rules": [{"backendRefs": [backend(filters=[])]}]},
        GW_API,
        "spec.rules[0].backendRefs[0]",
        'unknown field "filters"',
    ),
    (
        "v1alpha2 rules max",
        {"rules": [tls_rule()] * 17},
        "gateway.networking.k8s.io/v1alpha2",
        "spec.rules",
        "at most 16 items",
    ),
]


@pytest.mark.parametrize(
    ("spec", "api", "field", "fragment"),
    [c[1:] for c in TLS_INVALID],
    ids=[c[0] for c in TLS_INVALID],
)
def test_tls_route_invalid(spec: dict[str, Any], api: str, field: str, fragment: str) -> None:
    assert_rejected(load(tls_route(spec, api)), field, fragment)


def test_tls_route_versions() -> None:
    v1 = only(load(tls_route({"hostnames": ["a.example"], "rules": [tls_rule()]})))
    assert isinstance(v1, m.TLSRoute)
    assert v1.rules == (
        m.TLSRouteRule(
            backend_refs=(m.BackendRef(ref=m.BackendObjectReference(name="svc", port=80)),)
        ),
    )
    old = only(
        load(tls_route({"rules": [tls_rule(), tls_rule()]}, "gateway.networking.k8s.io/v1alpha2"))
    )
    assert isinstance(old, m.TLSRoute) and len(old.rules) == 2 and old.hostnames == ()


# --------------------------------------------------------------------------- others


def grant(spec: dict[str, Any], api: str = "gateway.networking.k8s.io/v1beta1") -> dict[str, Any]:
    return obj("ReferenceGrant", spec, api=api)


FROM = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "a"}
TO = {"group": "", "kind": "Service"}

OTHER_INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("grant from missing", grant({"to": [TO]}), "spec.from", "is required"),
    (
        "grant from namespace",
        grant({"from": [{"group": "", "kind": "HTTPRoute"}], "to": [TO]}),
        "spec.from[0].namespace",
        "is required",
    ),
    (
        "grant to kind",
        grant({"from": [FROM], "to": [{"group": ""}]}),
        "spec.to[0].kind",
        "is required",
    ),
    (
        "grant to group",
        grant({"from": [FROM], "to": [{"kind": "Service"}]}),
        "spec.to[0].group",
        "is required",
    ),
    ("grant max", grant({"from": [FROM] * 17, "to": [TO]}), "spec.from", "at most 16 items"),
    (
        "class controller",
        {
            "apiVersion": GW_API,
            "kind": "GatewayClass",
            "metadata": {"name": "x"},
            "spec": {"controllerName": "no-slash"},
        },
        "spec.controllerName",
        "is not a domain-prefixed path",
    ),
    (
        "class description",
        {
            "apiVersion": GW_API,
            "kind": "GatewayClass",
            "metadata": {"name": "x"},
            "spec": {"controllerName": "a.example/c", "description": "d" * 65},
        },
        "spec.description",
        "at most 64 characters",
    ),
    (
        "service port",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "x"},
            "spec": {"ports": [{"port": 0}]},
        },
        "spec.ports[0].port",
        "between 1 and 65535",
    ),
    (
        "service name",
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "9x"}},
        "metadata.name",
        "is not a DNS-1035 label",
    ),
    (
        "slice address type",
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "x"}},
        "addressType",
        "is required",
    ),
    (
        "slice address",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "x"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["::1"]}],
        },
        "endpoints[0].addresses[0]",
        '"::1" is not an IPv4 address',
    ),
    (
        "slice ready",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "x"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}],
        },
        "endpoints[0].conditions.ready",
        'must be true or false, got string "yes"',
    ),
    (
        "secret base64",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "x"},
            "data": {"tls.crt": "not base64!"},
        },
        "data.tls.crt",
        "is not valid base64",
    ),
    (
        "secret key",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "x"},
            "stringData": {"a/b": "v"},
        },
        "stringData",
        "is not a valid data key",
    ),
    (
        "configmap value",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 1}},
        "data.a",
        "must be a string, got integer 1",
    ),
    (
        "pod ip",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "status": {"podIP": "nope"}},
        "status.podIP",
        '"nope" is not an IP address',
    ),
]


@pytest.mark.parametrize(
    ("doc", "field", "fragment"), [c[1:] for c in OTHER_INVALID], ids=[c[0] for c in OTHER_INVALID]
)
def test_other_kinds_invalid(doc: dict[str, Any], field: str, fragment: str) -> None:
    assert_rejected(load(doc), field, fragment)


@pytest.mark.parametrize(
    "api", ["gateway.networking.k8s.io/v1beta1", "gateway.networking.k8s.io/v1"]
)
def test_reference_grant(api: str) -> None:
    g = only(
        load(grant({"from": [FROM], "to": [TO, {"group": "", "kind": "Secret", "name": "s"}]}, api))
    )
    assert isinstance(g, m.ReferenceGrant)
    assert g.from_ == (
        m.ReferenceGrantFrom(group="gateway.networking.k8s.io", kind="HTTPRoute", namespace="a"),
    )
    assert g.to == (
        m.ReferenceGrantTo(group="", kind="Service"),
        m.ReferenceGrantTo(group="", kind="Secret", name="s"),
    )


def test_service_defaults() -> None:
    def svc(spec: dict[str, Any]) -> m.Service:
        s = only(
            load({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": spec})
        )
        assert isinstance(s, m.Service)
        return s

    both = svc(
        {
            "clusterIP": "10.0.0.1",
            "clusterIPs": ["10.0.0.2", "fd00::2"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web", "appProtocol": "http"},
                {"port": 81, "targetPort": 8081, "protocol": "UDP"},
            ],
            "selector": {"app": "a"},
        }
    )
    assert both.cluster_ips == ("10.0.0.2", "fd00::2")
    assert both.ports == (
        m.ServicePort(name="http", port=80, target_port="web", app_protocol="http"),
        m.ServicePort(port=81, target_port=8081, protocol="UDP"),
    )
    assert both.selector == (("app", "a"),)
    assert both.type == "ClusterIP"
    assert svc({"clusterIP": "10.0.0.1"}).cluster_ips == ("10.0.0.1",)
    assert svc({"clusterIP": "None"}).cluster_ips == ()
    assert svc({"clusterIPs": ["None"]}).cluster_ips == ()


def test_endpoint_slice_defaults() -> None:
    s = only(
        load(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "x-1", "labels": {"kubernetes.io/service-name": "x"}},
                "addressType": "IPv4",
                "ports": [
                    {"name": "", "port": 8080},
                    {"name": "grpc", "port": 9090, "protocol": "TCP", "appProtocol": "h2c"},
                ],
                "endpoints": [
                    {"addresses": ["10.0.0.1"]},
                    {
                        "addresses": ["10.0.0.2"],
                        "conditions": {"ready": False, "terminating": True},
                        "targetRef": {"kind": "Pod", "name": "pod-2"},
                    },
                ],
            }
        )
    )
    assert isinstance(s, m.EndpointSlice)
    assert s.service_name == "x"
    assert s.ports == (
        m.EndpointPort(name=None, port=8080),
        m.EndpointPort(name="grpc", port=9090, app_protocol="h2c"),
    )
    assert s.endpoints == (
        m.Endpoint(addresses=("10.0.0.1",), ready=True, serving=True, terminating=False),
        m.Endpoint(addresses=("10.0.0.2",), ready=False, terminating=True, target_ref_name="pod-2"),
    )
    unlabeled = only(
        load(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "y"},
                "addressType": "IPv6",
                "endpoints": [{"addresses": ["fd00::1"]}],
            }
        )
    )
    assert isinstance(unlabeled, m.EndpointSlice) and unlabeled.service_name is None


@pytest.mark.parametrize(
    ("status", "ips"),
    [
        (
            {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
            ("10.0.0.1", "fd00::1"),
        ),
        ({"podIP": "10.0.0.1"}, ("10.0.0.1",)),
        ({}, ()),
    ],
)
def test_pod_ips(status: dict[str, Any], ips: tuple[str, ...]) -> None:
    p = only(
        load(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x"},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
                "status": status,
            }
        )
    )
    assert isinstance(p, m.Pod) and p.pod_ips == ips
