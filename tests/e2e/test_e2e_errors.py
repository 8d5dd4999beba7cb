"""Local replies end to end: 404, 500, 502, 503, 504 as the contract lists them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Client,
    Gatewayd,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    request,
    rule,
)

pytestmark = pytest.mark.e2e


@dataclass
class Env:
    daemon: Gatewayd
    port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_recorders, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    closer = module_recorders("close")
    resetter = module_recorders("reset")
    port = free_port()
    refused_port = free_port()  # nothing listens there
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    docs += echo.manifests()
    docs += backend_manifests("not-ready", echo.port, ready=False)
    docs += backend_manifests("refused", refused_port)
    docs += backend_manifests("closer", closer.port)
    docs += backend_manifests("resetter", resetter.port)

    def route(name: str, rules: list[dict[str, object]]) -> dict[str, object]:
        return http_route(name, rules, hostnames=[f"{name}.example"])

    routes = [
        route("ok", [rule(backends=[backend_ref("echo-v1")])]),
        route("missing", [rule(backends=[backend_ref("does-not-exist")])]),
        route(
            "half-missing",
            [
                rule(
                    backends=[
                        backend_ref("echo-v1", weight=1),
                        backend_ref("does-not-exist", weight=1),
                    ]
                )
            ],
        ),
        route("wrong-kind", [rule(backends=[backend_ref("echo-v1", kind="Unknown")])]),
        route("no-backends", [rule()]),
        route("not-ready", [rule(backends=[backend_ref("not-ready")])]),
        route("refused", [rule(backends=[backend_ref("refused")])]),
        route("closer", [rule(backends=[backend_ref("closer")])]),
        route("resetter", [rule(backends=[backend_ref("resetter")])]),
        route(
            "backend-timeout",
            [rule(backends=[backend_ref("echo-v1")], timeouts={"backendRequest": "300ms"})],
        ),
        route(
            "request-timeout",
            [rule(backends=[backend_ref("echo-v1")], timeouts={"request": "300ms"})],
        ),
    ]
    return Env(module_gatewayd(docs + routes), port)


def status(env: Env, name: str, path: str = "/") -> int:
    return request(env.port, path, host=f"{name}.example").status


def test_sanity_ok(env: Env) -> None:
    assert status(env, "ok") == 200


def test_no_route_is_404(env: Env) -> None:
    assert status(env, "unknown-host") == 404


def test_missing_backend_is_500(env: Env) -> None:
    assert status(env, "missing") == 500


def test_invalid_kind_backend_is_500(env: Env) -> None:
    assert status(env, "wrong-kind") == 500


def test_invalid_backend_keeps_its_weight_share(env: Env) -> None:
    codes: dict[int, int] = {}
    for _ in range(200):
        code = status(env, "half-missing")
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) == {200, 500}, codes
    # 50/50 over 200 requests: 4 standard deviations is about +-28
    assert 60 <= codes[500] <= 140, codes


def test_rule_without_backends_is_500(env: Env) -> None:
    assert status(env, "no-backends") == 500


def test_no_ready_endpoint_is_503(env: Env) -> None:
    assert status(env, "not-ready") == 503


def test_connection_refused_is_503(env: Env) -> None:
    assert status(env, "refused") == 503


def test_upstream_close_before_response_is_502(env: Env) -> None:
    assert status(env, "closer") == 502


def test_upstream_reset_before_response_is_502(env: Env) -> None:
    assert status(env, "resetter") == 502


def test_backend_request_timeout_is_504(env: Env) -> None:
    start = time.monotonic()
    code = status(env, "backend-timeout", "/?delay_ms=3000")
    elapsed = time.monotonic() - start
    assert code == 504
    assert elapsed < 2.5, f"timed out after {elapsed:.2f}s, expected about 0.3s"
    # a fast request on the same rule is fine
    assert status(env, "backend-timeout", "/?delay_ms=10") == 200


def test_request_timeout_is_504(env: Env) -> None:
    start = time.monotonic()
    code = status(env, "request-timeout", "/?delay_ms=3000")
    elapsed = time.monotonic() - start
    assert code == 504
    assert elapsed < 2.5, f"timed out after {elapsed:.2f}s, expected about 0.3s"
    assert status(env, "request-timeout", "/?delay_ms=10") == 200


def test_upstream_status_codes_pass_through(env: Env) -> None:
    for code in (201, 404, 500, 502, 503):
        assert status(env, "ok", f"/?status={code}") == code


def test_connection_kept_alive_across_local_replies(env: Env) -> None:
    with Client(env.port) as c:
        assert c.request("/", host="unknown-host.example").status == 404
        assert c.request("/", host="missing.example").status == 500
        assert c.request("/", host="not-ready.example").status == 503
        assert c.request("/x", host="ok.example").echo()["path"] == "/x"


def test_connection_reused_after_bodiless_responses(env: Env) -> None:
    with Client(env.port) as c:
        head = c.request("/?size=1000", method="HEAD", host="ok.example")
        assert head.status == 200
        assert head.body == b""
        assert c.request("/?status=204", host="ok.example").status == 204
        assert c.request("/?status=304", host="ok.example").status == 304
        assert c.request("/after", host="ok.example").echo()["path"] == "/after"
