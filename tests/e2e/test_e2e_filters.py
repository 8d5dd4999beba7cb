"""HTTPRoute filters end to end: header modifiers, redirects, rewrites, mirrors, CORS,
backendRef-level filters.  One daemon for the module, one hostname per scenario."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from e2e_kit import (
    Gatewayd,
    RecordingServer,
    backend_manifests,
    backend_ref,
    echo_header,
    free_port,
    gateway,
    gateway_class,
    header_filter,
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
    port: int
    mirror: RecordingServer


def redirect(**fields: object) -> dict[str, object]:
    return {"type": "RequestRedirect", "requestRedirect": fields}


def rewrite(**fields: object) -> dict[str, object]:
    return {"type": "URLRewrite", "urlRewrite": fields}


def prefix_path(value: str) -> dict[str, str]:
    return {"type": "ReplacePrefixMatch", "replacePrefixMatch": value}


def full_path(value: str) -> dict[str, str]:
    return {"type": "ReplaceFullPath", "replaceFullPath": value}


@pytest.fixture(scope="module")
def env(module_echoes, module_recorders, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    mirror = module_recorders("ok")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    docs += echo.manifests()
    docs += backend_manifests("mirror", mirror.port)
    e = [backend_ref("echo-v1")]
    routes = [
        http_route(
            "req-headers",
            [
                rule(
                    filters=[
                        header_filter(
                            set=[("X-Set", "set-value")],
                            add=[("X-Add", "added")],
                            remove=["X-Remove"],
                        )
                    ],
                    backends=e,
                )
            ],
            hostnames=["reqheaders.example"],
        ),
        http_route(
            "resp-headers",
            [
                rule(
                    filters=[
                        header_filter(
                            "ResponseHeaderModifier",
                            set=[("X-Resp-Set", "new")],
                            add=[("X-Resp-Add", "added")],
                            remove=["X-Resp-Remove"],
                        )
                    ],
                    backends=e,
                )
            ],
            hostnames=["respheaders.example"],
        ),
        http_route(
            "redirects",
            [
                rule(
                    matches=[match("/scheme")],
                    filters=[redirect(scheme="https")],
                ),
                rule(
                    matches=[match("/hostname")],
                    filters=[redirect(hostname="new.example")],
                ),
                rule(
                    matches=[match("/port")],
                    filters=[redirect(port=8443)],
                ),
                rule(
                    matches=[match("/full")],
                    filters=[redirect(path=full_path("/replaced"))],
                ),
                rule(
                    matches=[match("/old")],
                    filters=[redirect(path=prefix_path("/new"))],
                ),
                rule(
                    matches=[match("/moved")],
                    filters=[redirect(statusCode=301, hostname="moved.example")],
                ),
                rule(
                    matches=[match("/all")],
                    filters=[
                        redirect(
                            scheme="https",
                            hostname="all.example",
                            port=8443,
                            path=full_path("/x"),
                            statusCode=302,
                        )
                    ],
                ),
            ],
            hostnames=["redir.example"],
        ),
        http_route(
            "rewrites",
            [
                rule(
                    matches=[match("/api")],
                    filters=[rewrite(path=prefix_path("/v2"))],
                    backends=e,
                ),
                rule(
                    matches=[match("/strip")],
                    filters=[rewrite(path=prefix_path("/"))],
                    backends=e,
                ),
                rule(
                    matches=[match("/whole")],
                    filters=[rewrite(path=full_path("/fixed"))],
                    backends=e,
                ),
                rule(
                    matches=[match("/host")],
                    filters=[rewrite(hostname="rewritten.example")],
                    backends=e,
                ),
            ],
            hostnames=["rewrite.example"],
        ),
        http_route(
            "mirror",
            [
                rule(
                    filters=[
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "mirror", "port": 80}},
                        }
                    ],
                    backends=e,
                )
            ],
            hostnames=["mirror.example"],
        ),
        http_route(
            "cors",
            [
                rule(
                    filters=[
                        {
                            "type": "CORS",
                            "cors": {
                                "allowOrigins": ["https://app.example"],
                                "allowMethods": ["GET", "PUT"],
                                "allowHeaders": ["x-custom"],
                                "exposeHeaders": ["x-exposed"],
                                "allowCredentials": True,
                                "maxAge": 600,
                            },
                        }
                    ],
                    backends=e,
                )
            ],
            hostnames=["cors.example"],
        ),
        http_route(
            "backend-filters",
            [
                rule(
                    backends=[
                        backend_ref(
                            "echo-v1",
                            filters=[
                                header_filter(set=[("X-Backend", "echo-v1")]),
                                header_filter(
                                    "ResponseHeaderModifier", add=[("X-From-Backend", "yes")]
                                ),
                            ],
                        )
                    ]
                )
            ],
            hostnames=["backendfilter.example"],
        ),
        # HTTPRouteBackendRequestRedirect and HTTPRouteBackendURLRewrite: the filters
        # sit on the backendRef, not on the rule.
        http_route(
            "backend-redirect",
            [
                rule(
                    matches=[match("/full")],
                    backends=[
                        backend_ref(
                            "echo-v1", filters=[redirect(path=full_path("/redirected-full"))]
                        )
                    ],
                ),
                rule(
                    matches=[match("/prefix")],
                    backends=[
                        backend_ref(
                            "echo-v1",
                            filters=[redirect(path=prefix_path("/redirected-prefix"))],
                        )
                    ],
                ),
            ],
            hostnames=["backendredirect.example"],
        ),
        http_route(
            "backend-rewrite",
            [
                rule(
                    matches=[match("/full")],
                    backends=[
                        backend_ref("echo-v1", filters=[rewrite(path=full_path("/rewritten-full"))])
                    ],
                ),
                rule(
                    matches=[match("/prefix")],
                    backends=[
                        backend_ref(
                            "echo-v1",
                            filters=[
                                rewrite(
                                    path=prefix_path("/rewritten-prefix"),
                                    hostname="rewritten.example",
                                )
                            ],
                        )
                    ],
                ),
            ],
            hostnames=["backendrewrite.example"],
        ),
        # RequestMirror on a backendRef: copies only of the requests sent to it.
        http_route(
            "backend-mirror",
            [
                rule(
                    backends=[
                        backend_ref(
                            "echo-v1",
                            weight=1,
                            filters=[
                                {
                                    "type": "RequestMirror",
                                    "requestMirror": {"backendRef": {"name": "mirror", "port": 80}},
                                }
                            ],
                        ),
                        backend_ref(
                            "echo-v1", weight=1, filters=[rewrite(path=full_path("/plain"))]
                        ),
                    ]
                )
            ],
            hostnames=["backendmirror.example"],
        ),
    ]
    return Env(module_gatewayd(docs + routes), port, mirror)


# --------------------------------------------------------------------------- header modifiers


def test_request_header_modifier(env: Env) -> None:
    r = request(
        env.port,
        host="reqheaders.example",
        headers=[("X-Set", "client"), ("X-Add", "client"), ("X-Remove", "gone")],
    )
    doc = r.echo()
    assert echo_header(doc, "x-set") == ["set-value"]
    assert sorted(echo_header(doc, "x-add")) == ["added", "client"]
    assert echo_header(doc, "x-remove") == []


def test_request_header_modifier_without_client_headers(env: Env) -> None:
    doc = request(env.port, host="reqheaders.example").echo()
    assert echo_header(doc, "x-set") == ["set-value"]
    assert echo_header(doc, "x-add") == ["added"]


def test_response_header_modifier(env: Env) -> None:
    r = request(
        env.port,
        host="respheaders.example",
        headers=[
            ("x-echo-set-x-resp-set", "original"),
            ("x-echo-set-x-resp-add", "from-backend"),
            ("x-echo-set-x-resp-remove", "should-go"),
            ("x-echo-set-x-untouched", "kept"),
        ],
    )
    assert r.status == 200
    assert r.header_all("x-resp-set") == ["new"]
    added = [v.strip() for value in r.header_all("x-resp-add") for v in value.split(",")]
    assert sorted(added) == ["added", "from-backend"]
    assert r.header("x-resp-remove") is None
    assert r.header("x-untouched") == "kept"


# --------------------------------------------------------------------------- redirects


def _redirect(env: Env, path: str) -> tuple[int, str | None]:
    r = request(env.port, path, host="redir.example")
    return r.status, r.header("location")


def test_redirect_scheme_uses_well_known_port(env: Env) -> None:
    # "If redirect scheme is not-empty, the redirect port MUST be the well-known port
    # associated with the redirect scheme" and 443 is left out of Location for https.
    assert _redirect(env, "/scheme/a") == (302, "https://redir.example/scheme/a")


def test_redirect_hostname_keeps_listener_port(env: Env) -> None:
    # "If redirect scheme is empty, the redirect port MUST be the Gateway Listener port."
    assert _redirect(env, "/hostname") == (302, f"http://new.example:{env.port}/hostname")


def test_redirect_port(env: Env) -> None:
    assert _redirect(env, "/port/x") == (302, "http://redir.example:8443/port/x")


def test_redirect_replace_full_path(env: Env) -> None:
    assert _redirect(env, "/full/deep/path") == (
        302,
        f"http://redir.example:{env.port}/replaced",
    )


def test_redirect_replace_prefix_match(env: Env) -> None:
    base = f"http://redir.example:{env.port}"
    assert _redirect(env, "/old/x/y") == (302, f"{base}/new/x/y")
    assert _redirect(env, "/old") == (302, f"{base}/new")


def test_redirect_status_code_301(env: Env) -> None:
    assert _redirect(env, "/moved") == (301, f"http://moved.example:{env.port}/moved")


def test_redirect_everything(env: Env) -> None:
    assert _redirect(env, "/all/of/it") == (302, "https://all.example:8443/x")


# --------------------------------------------------------------------------- rewrites


def test_rewrite_prefix(env: Env) -> None:
    doc = request(env.port, "/api/users?id=7", host="rewrite.example").echo()
    assert doc["path"] == "/v2/users?id=7"
    doc = request(env.port, "/api", host="rewrite.example").echo()
    assert doc["path"] == "/v2"


def test_rewrite_prefix_to_root(env: Env) -> None:
    doc = request(env.port, "/strip/x", host="rewrite.example").echo()
    assert doc["path"] == "/x"
    doc = request(env.port, "/strip", host="rewrite.example").echo()
    assert doc["path"] == "/"


def test_rewrite_full_path(env: Env) -> None:
    doc = request(env.port, "/whole/a/b", host="rewrite.example").echo()
    assert doc["path"].split("?")[0] == "/fixed"


def test_rewrite_hostname(env: Env) -> None:
    doc = request(env.port, "/host/x", host="rewrite.example").echo()
    assert doc["host"] == "rewritten.example"
    assert doc["path"] == "/host/x"


# --------------------------------------------------------------------------- mirror


def test_request_mirror_sends_a_copy(env: Env) -> None:
    r = request(env.port, "/mirrored/123?q=1", host="mirror.example", headers={"x-trace": "m1"})
    doc = r.echo()
    assert doc["pod"] == "echo-v1"  # the primary answers
    copy = env.mirror.wait_for(lambda rec: rec.path.startswith("/mirrored/123"), timeout=5)
    assert copy is not None, f"mirror backend never received the copy: {env.mirror.requests}"
    assert copy.method == "GET"
    assert copy.path == "/mirrored/123?q=1"
    assert copy.headers.get("x-trace") == "m1"


def test_request_mirror_with_body(env: Env) -> None:
    body = b"mirror-me" * 100
    r = request(env.port, "/mirrored-body", method="POST", host="mirror.example", body=body)
    assert r.echo()["body_bytes"] == len(body)
    copy = env.mirror.wait_for(lambda rec: rec.path == "/mirrored-body", timeout=5)
    assert copy is not None, "mirror backend never received the POST copy"
    assert copy.method == "POST"
    assert copy.body == body


# --------------------------------------------------------------------------- CORS


def test_cors_preflight_allowed_origin(env: Env) -> None:
    r = request(
        env.port,
        "/resource",
        method="OPTIONS",
        host="cors.example",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-custom",
        },
    )
    assert r.status in (200, 204), r
    assert r.header("access-control-allow-origin") == "https://app.example"
    methods = {
        m.strip().upper() for m in (r.header("access-control-allow-methods") or "").split(",")
    }
    assert {"GET", "PUT"} <= methods
    headers = {
        h.strip().lower() for h in (r.header("access-control-allow-headers") or "").split(",")
    }
    assert "x-custom" in headers
    assert r.header("access-control-allow-credentials") == "true"
    assert r.header("access-control-max-age") == "600"
    # a preflight is answered by the gateway, not forwarded
    assert b'"pod"' not in r.body


def test_cors_preflight_unknown_origin_gets_no_cors_headers(env: Env) -> None:
    r = request(
        env.port,
        "/resource",
        method="OPTIONS",
        host="cors.example",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"},
    )
    # HTTPRouteCORS "non-matching origin": answered by gatewayd (200), not forwarded to
    # the backend, without any CORS field.
    assert r.status == 200, r
    assert b'"pod"' not in r.body
    assert not [k for k, _ in r.headers if k.lower().startswith("access-control-")], r.headers


def test_cors_simple_request(env: Env) -> None:
    r = request(
        env.port, "/resource", host="cors.example", headers={"Origin": "https://app.example"}
    )
    assert r.echo()["pod"] == "echo-v1"
    assert r.header("access-control-allow-origin") == "https://app.example"
    exposed = {
        h.strip().lower() for h in (r.header("access-control-expose-headers") or "").split(",")
    }
    assert "x-exposed" in exposed


# --------------------------------------------------------------------------- backendRef filters


def test_backend_ref_level_filters(env: Env) -> None:
    r = request(env.port, "/", host="backendfilter.example")
    doc = r.echo()
    assert echo_header(doc, "x-backend") == ["echo-v1"]
    assert r.header("x-from-backend") == "yes"


def test_backend_ref_request_redirect(env: Env) -> None:
    base = f"http://backendredirect.example:{env.port}"
    r = request(env.port, "/full/original", host="backendredirect.example")
    assert (r.status, r.header("location")) == (302, f"{base}/redirected-full")
    r = request(env.port, "/prefix/original?q=1", host="backendredirect.example")
    assert (r.status, r.header("location")) == (302, f"{base}/redirected-prefix/original?q=1")
    assert b'"pod"' not in r.body  # answered by gatewayd


def test_backend_ref_url_rewrite(env: Env) -> None:
    doc = request(env.port, "/full/original", host="backendrewrite.example").echo()
    assert doc["path"] == "/rewritten-full"
    assert doc["host"].startswith("backendrewrite.example")
    doc = request(env.port, "/prefix/original?q=1", host="backendrewrite.example").echo()
    assert doc["path"] == "/rewritten-prefix/original?q=1"
    assert doc["host"] == "rewritten.example"


def test_backend_ref_request_mirror_copies_only_its_share(env: Env) -> None:
    seen: dict[str, int] = {}
    for i in range(40):
        doc = request(env.port, f"/bm/{i}", host="backendmirror.example").echo()
        mirrored = doc["path"] != "/plain"  # the other backendRef rewrites the path
        seen[f"/bm/{i}"] = mirrored
    copies = {p for p, m in seen.items() if m}
    assert 0 < len(copies) < 40, seen  # weights 1:1 over 40 requests
    for path in copies:
        assert env.mirror.wait_for(lambda rec, p=path: rec.path == p, timeout=5) is not None, path
    _, recorded = env.mirror.snapshot()
    got = {rec.path for rec in recorded if rec.path.startswith("/bm/")}
    assert got == copies  # never a copy of a request the other backendRef served
