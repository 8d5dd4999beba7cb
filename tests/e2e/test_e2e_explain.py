"""``gatewayd explain`` against a running daemon: the rule it names is the rule that
serves.

One daemon serves a set of routes whose every rule stamps its id on the response
(ResponseHeaderModifier ``x-rule``).  Many requests are sent for real; for each, the
admin endpoint ``POST /explain`` (what ``gatewayd explain`` asks) must name the rule
that answered, or say "not routed" when the answer was a 404.  The command itself runs
a few times as a user would run it, and the endpoint's bounds are checked.
"""

from __future__ import annotations

import http.client
import json
import random
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    header_filter,
    http_route,
    listener,
    match,
    request,
    rule,
    run_cli,
)
from grpc_kit import GrpcBackend, channel, grpc_route, method_match, unary

pytestmark = pytest.mark.e2e


def _route(name: str, *matches: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """One rule per match, each stamping "default/<name>/rule/<i>" on its responses."""
    rules = [
        rule(
            matches=[m],
            backends=[backend_ref("echo")],
            filters=[
                header_filter(
                    "ResponseHeaderModifier", set=[("x-rule", f"default/{name}/rule/{i}")]
                )
            ],
        )
        for i, m in enumerate(matches)
    ]
    return http_route(name, rules, **kw)


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    admin: str  # host:port


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo")
    port = free_port()
    docs = [
        gateway_class(),
        gateway(
            "gw",
            [
                listener("http", port),
                listener("wild", port, hostname="*.wild.test"),
            ],
        ),
        *echo.manifests("echo"),
        _route("r-exact", match("/api/v1/users", type="Exact")),
        _route("r-prefix", match("/api"), match("/api", query=[("q", "1")])),
        _route("r-post", match("/api/v1", method="POST")),
        _route("r-header", match("/api/v1", headers=[("x-env", "canary")])),
        _route("r-regex", match("/files/[0-9]+", type="RegularExpression")),
        _route("r-old", match("/dup"), created="2024-01-01T00:00:00Z"),
        _route("r-new", match("/dup"), created="2025-01-01T00:00:00Z"),
        _route("r-host", match("/"), hostnames=["a.wild.test"], section="wild"),
        _route("r-wild", match("/w"), hostnames=["*.wild.test"], section="wild"),
        _route("r-stray", match("/stray"), section="nosuch"),  # not attached
    ]
    daemon = module_gatewayd(docs)
    return Env(daemon, port, f"{LOCALHOST}:{daemon.admin_port}")


def _explain(env: Env, fields: dict[str, Any]) -> dict[str, Any]:
    return _explain_at(env.daemon.admin_port, fields)


def _explain_at(admin_port: int, fields: dict[str, Any]) -> dict[str, Any]:
    conn = http.client.HTTPConnection(LOCALHOST, admin_port, timeout=10)
    try:
        conn.request("POST", "/explain", json.dumps(fields), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


HOSTS = ["example.test", "a.wild.test", "b.wild.test"]
PATHS = ["/api/v1/users", "/api/v1/items", "/api", "/apix", "/files/12", "/files/ab",
         "/dup/x", "/w/1", "/", "/api/v1"]  # fmt: skip
METHODS = ["GET", "POST"]
HEADERS: list[dict[str, str]] = [{}, {"x-env": "canary"}]
QUERIES = ["", "?q=1", "?q=2"]


def test_explain_names_the_rule_that_serves(env: Env) -> None:
    combos = [
        (h, p, m, hd, q)
        for h in HOSTS
        for p in PATHS
        for m in METHODS
        for hd in HEADERS
        for q in QUERIES
    ]
    sample = random.Random(16).sample(combos, 150)
    routed = not_routed = 0
    for host, path, method, headers, query in sample:
        reply = request(env.port, path + query, method=method, host=host, headers=headers)
        served = reply.header("x-rule") if reply.status == 200 else None
        assert reply.status in (200, 404), (host, path, reply.status)
        doc = _explain(
            env,
            {
                "port": env.port,
                "host": host,
                "address": LOCALHOST,
                "method": method,
                "target": path + query,
                "headers": [[k, v] for k, v in headers.items()],
            },
        )
        case = f"{method} {host}{path}{query} {headers}"
        assert doc["dataPlane"]["agrees"] is True, case
        if served is None:
            assert doc["routed"] is False, case
            assert doc["outcome"]["status"] == 404, case
            not_routed += 1
        else:
            assert doc["routed"] is True, case
            assert doc["chosen"]["routeId"] == served, case
            routed += 1
    # The sample exercises both answers.
    assert routed > 50 and not_routed > 10, (routed, not_routed)


def test_cli_against_the_daemon(env: Env) -> None:
    url = f"http://{LOCALHOST}:{env.port}/api/v1/items"
    out = run_cli("explain", url, "-H", "x-env: canary", "--admin", env.admin)
    assert out.returncode == 0, out.stderr
    assert "[chosen] HTTPRoute default/r-header rule 0 match 0" in out.stdout
    # r-prefix's /api matches too but is shorter; r-post wants POST.
    assert "matched, but loses on path length (more characters wins)" in out.stdout
    assert "method failed: method is GET, not POST" in out.stdout
    assert "Result: routed to HTTPRoute default/r-header rule 0" in out.stdout
    # The conflict: identical matches, the older route wins.
    out = run_cli(
        "explain", f"http://{LOCALHOST}:{env.port}/dup", "--admin", env.admin, "-o", "json"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["chosen"]["routeId"] == "default/r-old/rule/0"
    (lost,) = [c for c in doc["rules"]["candidates"] if c["route"] == "HTTPRoute default/r-new"]
    assert lost["result"] == "lost"
    assert lost["decidedBy"] == "route creation time (oldest wins)"
    # No route: exit 1 and why.
    out = run_cli("explain", f"http://{LOCALHOST}:{env.port}/nothing", "--admin", env.admin)
    assert out.returncode == 1
    assert "Result: not routed: 404" in out.stdout
    # A route that is not attached: the daemon's status says why.
    out = run_cli("explain", f"http://{LOCALHOST}:{env.port}/stray", "--admin", env.admin)
    assert out.returncode == 1
    assert "HTTPRoute default/r-stray -> Gateway default/gw (sectionName nosuch): " in out.stdout
    # No listener on that port: exit 1.
    out = run_cli("explain", f"http://{LOCALHOST}:{free_port()}/", "--admin", env.admin)
    assert out.returncode == 1
    assert "no Gateway listens on 127.0.0.1 port" in out.stdout


def _post(env: Env, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(LOCALHOST, env.daemon.admin_port, timeout=10)
    try:
        conn.request("POST", "/explain", body, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_admin_endpoint_bounds(env: Env) -> None:
    ok = json.dumps({"port": env.port, "target": "/api"}).encode()
    assert _post(env, ok, {"Content-Type": "application/json"})[0] == 200
    # DNS rebinding: a Host naming something else is refused, as on every admin path.
    status, doc = _post(env, ok, {"Content-Type": "application/json", "Host": "evil.test"})
    assert status == 421, doc
    # A cross-site form cannot send JSON without a preflight: other types are refused.
    assert _post(env, ok, {"Content-Type": "text/plain"})[0] == 415
    # Bounded body, declared or not.
    big = json.dumps({"port": env.port, "target": "/" + "a" * 70_000}).encode()
    assert _post(env, big, {"Content-Type": "application/json"})[0] == 413
    # Chunked (no Content-Length): cut off at the bound all the same.
    conn = http.client.HTTPConnection(LOCALHOST, env.daemon.admin_port, timeout=10)
    try:
        chunks = iter([b'{"port": 1, "target": "/', b"a" * 40_000, b"a" * 40_000, b'"}'])
        conn.request(
            "POST",
            "/explain",
            chunks,
            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    status, doc = _post(env, b"{nope", {"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in doc["error"]
    many = json.dumps({"port": env.port, "headers": [["x", "y"]] * 101}).encode()
    status, doc = _post(env, many, {"Content-Type": "application/json"})
    assert status == 400 and "more than 100" in doc["error"]
    status, doc = _post(env, b'{"port": 0}', {"Content-Type": "application/json"})
    assert status == 400 and "port" in doc["error"]


# --------------------------------------------------------------------------- gRPC


@pytest.fixture(scope="module")
def grpc_backends() -> Any:
    backends = {name: GrpcBackend(name) for name in ("g1", "g2", "g3")}
    yield backends
    for b in backends.values():
        b.close()


def test_grpc_calls_land_where_explain_says(grpc_backends, module_gatewayd) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    for name, b in grpc_backends.items():
        docs += backend_manifests(name, b.port, port_name="grpc")
    docs.append(
        grpc_route(
            "svc",
            [
                {"matches": [method_match("pkg.Svc", "Unary")], "backendRefs": [backend_ref("g1")]},
                {"matches": [method_match("pkg.Svc")], "backendRefs": [backend_ref("g2")]},
                {"matches": [method_match(None, "Unary")], "backendRefs": [backend_ref("g3")]},
                {
                    "matches": [method_match("pkg.Other", headers=(("x-b", "1"),))],
                    "backendRefs": [backend_ref("g1")],
                },
            ],
        )
    )
    daemon = module_gatewayd(docs)
    ch = channel(port)
    checked = 0
    try:
        for path in ("/pkg.Svc/Unary", "/pkg.Svc/Other", "/pkg.Other/Unary", "/zzz.X/Unary",
                     "/pkg.Other/Foo", "/pkg.Svcx/Foo"):  # fmt: skip
            for metadata in ((), (("x-b", "1"),)):
                try:
                    answer, _ = unary(ch, path, b"", metadata=metadata)
                    served: str | None = f"default/{answer['backend']}:80"
                except grpc.RpcError:
                    served = None
                headers = [["content-type", "application/grpc"], ["te", "trailers"]]
                headers += [[k, v] for k, v in metadata]
                doc = _explain_at(
                    daemon.admin_port,
                    {"port": port, "host": f"{LOCALHOST}:{port}", "method": "POST",
                     "target": path, "headers": headers},
                )  # fmt: skip
                case = f"{path} {metadata}"
                assert doc["dataPlane"]["agrees"] is True, case
                if served is None:
                    assert doc["routed"] is False, case
                else:
                    backends = [b["name"] for b in doc["chosen"]["rule"]["backends"]]
                    assert backends == [served], case
                checked += 1
    finally:
        ch.close()
    assert checked == 12
    # The command, as a user runs it: the service+method rule wins over service-only.
    out = run_cli(
        "explain",
        f"http://{LOCALHOST}:{port}/pkg.Svc/Unary",
        "--grpc",
        "--admin",
        f"{LOCALHOST}:{daemon.admin_port}",
    )
    assert out.returncode == 0, out.stderr
    assert "[chosen] GRPCRoute default/svc rule 0 match 0" in out.stdout
    assert "matched, but loses on characters in the method match" in out.stdout
