"""EndpointSlices of addressType FQDN end to end: the names are resolved when gatewayd
connects; a name that does not resolve is a 503, counted as a failed connect."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Doc,
    Gatewayd,
    backend_ref,
    endpoint_slice,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    prometheus_samples,
    request,
    rule,
    service,
)

pytestmark = pytest.mark.e2e


def fqdn_backend(name: str, address: str, port: int) -> list[Doc]:
    es = endpoint_slice(name, [("http", port)], addresses=[address], pod=name)
    es["addressType"] = "FQDN"
    return [service(name, [("http", 80)]), es]


@dataclass
class Env:
    daemon: Gatewayd
    port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    docs += fqdn_backend("by-name", "localhost", echo.port)
    # RFC 6761 6.4: names under "invalid." never resolve.
    docs += fqdn_backend("nowhere", "no-such-host.invalid", echo.port)
    docs.append(
        http_route(
            "r",
            [
                rule(matches=[match("/nowhere")], backends=[backend_ref("nowhere")]),
                rule(matches=[match("/")], backends=[backend_ref("by-name")]),
            ],
        )
    )
    return Env(module_gatewayd(docs), port)


def test_fqdn_endpoint_is_resolved_at_connect_time(env: Env) -> None:
    for _ in range(3):  # a fresh connection each time: the pool, then the cache
        reply = request(env.port, "/hello")
        assert reply.status == 200, reply.body
        assert reply.echo()["pod"] == "echo-v1"
        assert reply.echo()["path"] == "/hello"
    # The compiled snapshot keeps the name; nothing resolved it at load time.
    code, dump = env.daemon.admin_get("/config_dump")
    assert code == 200
    assert re.search(r'"fqdn":\s*true', dump)
    assert '"localhost:' in dump


def test_unresolvable_name_is_503_and_a_connect_failure(env: Env) -> None:
    for _ in range(2):  # the second answer comes from the negative cache
        reply = request(env.port, "/nowhere")
        assert reply.status == 503
        assert b"dns resolution failure" in reply.body
    metrics = env.daemon.metrics()
    fails = {
        labels["backend"]: value
        for labels, value in prometheus_samples(metrics, "gatewayd_upstream_cx_connect_fail_total")
    }
    assert fails.get("default/nowhere:80") == 2
    assert "default/by-name:80" not in fails
    replies = {
        labels["reason"]: value
        for labels, value in prometheus_samples(metrics, "gatewayd_local_reply_total")
    }
    assert replies.get("dns_resolution_failure") == 2
    # The daemon is still serving.
    assert request(env.port, "/ok").status == 200
