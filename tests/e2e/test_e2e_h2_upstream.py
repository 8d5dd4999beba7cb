"""Upstream HTTP/2 end to end: `gatewayd run` in front of HTTP/2 backends.

- an HTTPRoute backend with ``appProtocol: kubernetes.io/h2c`` (conformance
  HTTPRouteBackendProtocolH2C) reached from an HTTP/1.1 client (h1 -> h2) and from an
  HTTP/2 client (h2 -> h2), on pooled multiplexed connections;
- the backend's SETTINGS_MAX_CONCURRENT_STREAMS honoured (1 stream, 10 parallel
  requests: all answered, never two streams at once on a connection);
- a GRPCRoute backend whose HTTP answer is not 200 -> the gRPC status of the spec's
  HTTP-to-gRPC table, trailers-only;
- TLS with ALPN h2 under a BackendTLSPolicy, with a grpcio TLS server;
- ``gatewayd_upstream_cx_active`` counts the HTTP/2 connections.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from e2e_kit import (
    Gatewayd,
    backend_manifests,
    backend_ref,
    backend_tls_policy,
    ca_config_map,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    request,
    rule,
)
from grpc_kit import GrpcBackend, channel, grpc_route, raw_grpc_call, unary
from h2_backend_kit import H2Backend
from test_e2e_h2c import H2cClient

from gatewayd.tls.certs import self_signed

pytestmark = pytest.mark.e2e

TLS_HOST = "grpc-tls.backend.example"


def h2c_backend_manifests(name: str, port: int) -> list[dict[str, Any]]:
    docs = backend_manifests(name, port)
    docs[0]["spec"]["ports"][0]["appProtocol"] = "kubernetes.io/h2c"
    return docs


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    plain: H2Backend
    one: H2Backend
    tls_grpc: GrpcBackend


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[H2Backend, H2Backend, GrpcBackend, bytes]]:
    cert, key = self_signed([TLS_HOST], days=30)
    plain = H2Backend("h2-plain")
    one = H2Backend("h2-one", max_concurrent_streams=1)
    tls_grpc = GrpcBackend("grpc-tls", tls=(cert, key))
    yield plain, one, tls_grpc, cert
    for b in (plain, one):
        b.close()
    tls_grpc.close()


@pytest.fixture(scope="module")
def env(backends, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    plain, one, tls_grpc, ca = backends
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *h2c_backend_manifests("h2-plain", plain.port),
        *h2c_backend_manifests("h2-one", one.port),
        *backend_manifests("grpc-tls", tls_grpc.port, port_name="grpc"),
        ca_config_map("grpc-tls-ca", ca),
        backend_tls_policy("grpc-tls", "grpc-tls", hostname=TLS_HOST, ca="grpc-tls-ca"),
        http_route("plain", [rule(backends=[backend_ref("h2-plain")])], hostnames=["h2c.example"]),
        http_route("one", [rule(backends=[backend_ref("h2-one")])], hostnames=["one.example"]),
        grpc_route(
            "grpc-on-h2",
            [{"backendRefs": [backend_ref("h2-plain")]}],
            hostnames=("status.example",),
        ),
        grpc_route(
            "grpc-tls", [{"backendRefs": [backend_ref("grpc-tls")]}], hostnames=("tls.example",)
        ),
    ]
    return Env(module_gatewayd(docs), port, plain, one, tls_grpc)


def test_route_status_accepts_the_h2c_backend(env: Env) -> None:
    parents = env.daemon.status_of("HTTPRoute", "plain")["parents"]
    conds = {c["type"]: c for c in parents[0]["conditions"]}
    assert conds["ResolvedRefs"]["status"] == "True", conds
    assert conds["Accepted"]["status"] == "True", conds


def test_http1_client_to_h2c_backend(env: Env) -> None:
    reply = request(
        env.port,
        "/h1?x=1",
        method="POST",
        host="h2c.example",
        headers=[("Connection", "keep-alive"), ("X-Test", "yes"), ("TE", "gzip")],
        body=b"y" * 100_000,
    )
    assert reply.status == 200, reply.body
    doc = reply.json()
    assert doc["backend"] == "h2-plain"
    assert doc["proto"] == "HTTP/2"
    assert doc["method"] == "POST"
    assert doc["path"] == "/h1?x=1"
    assert doc["authority"] == "h2c.example"  # Host became :authority (RFC 9113 8.3.1)
    assert doc["scheme"] == "http"
    assert doc["body_bytes"] == 100_000
    headers = doc["headers"]
    assert headers["x-test"] == "yes"
    # Connection-specific fields never reach HTTP/2 (RFC 9113 8.2.2); te only "trailers".
    assert "connection" not in headers and "host" not in headers and "te" not in headers
    assert reply.header("x-backend") == "h2-plain"


def test_te_trailers_reaches_the_h2_backend(env: Env) -> None:
    """RFC 9113 8.2.2: "TE ... MUST NOT contain any value other than trailers": of
    "gzip, trailers" the backend gets "trailers"; the fields Connection names do not
    cross."""
    reply = request(
        env.port,
        "/te",
        host="h2c.example",
        headers=[("TE", "gzip, trailers"), ("Connection", "keep-alive, x-hop"), ("X-Hop", "1")],
    )
    headers = reply.json()["headers"]
    assert headers["te"] == "trailers"
    assert "x-hop" not in headers and "connection" not in headers


def test_http2_client_to_h2c_backend(env: Env) -> None:
    client = H2cClient(env.port)
    try:
        sids = [client.send(f"/h2-{i}", authority="h2c.example") for i in range(8)]
        answers = client.wait(sids)
    finally:
        client.close()
    for i, sid in enumerate(sids):
        a = answers[sid]
        assert a.status == 200, a
        doc = json.loads(a.body)
        assert (doc["path"], doc["proto"], doc["authority"]) == (
            f"/h2-{i}",
            "HTTP/2",
            "h2c.example",
        )
        assert doc["headers"]["cookie"] == "a=1; b=2"


def test_backend_max_concurrent_streams_is_honoured(env: Env) -> None:
    """The backend takes 1 stream per connection: 10 parallel slow requests all succeed
    and the backend never sees two streams at once on one connection."""
    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(
            pool.map(lambda i: request(env.port, "/delay/0.3", host="one.example"), range(10))
        )
    assert [r.status for r in replies] == [200] * 10
    assert env.one.peak == 1
    assert env.one.requests >= 10
    assert env.one.connections >= 2  # more streams than one connection takes: more connections


def test_h2_connections_are_reused_and_counted(env: Env) -> None:
    before = env.plain.connections
    for i in range(5):
        assert request(env.port, f"/again-{i}", host="h2c.example").status == 200
    assert env.plain.connections == before  # the pooled connection carried them all
    active = {
        labels["backend"]: value
        for labels, value in prometheus_samples(env.daemon.metrics(), "gatewayd_upstream_cx_active")
    }
    assert active.get("default/h2-plain:80", 0) >= 1, active


@pytest.mark.parametrize(
    ("http_status", "grpc_status"),
    [("503", "14"), ("404", "12"), ("401", "16"), ("403", "7"), ("400", "13"), ("418", "2")],
)
def test_non_200_answer_to_a_grpc_route_maps_to_grpc_status(
    env: Env, http_status: str, grpc_status: str
) -> None:
    a = raw_grpc_call(
        env.port,
        "/pkg.S/M",
        authority="status.example",
        headers=(("x-want-status", http_status),),
    )
    assert a.headers[":status"] == "200"
    assert a.headers["content-type"] == "application/grpc"
    assert a.headers["grpc-status"] == grpc_status
    assert a.headers_ended and not a.data


def test_grpc_over_tls_with_alpn_h2_under_backend_tls_policy(env: Env) -> None:
    with channel(env.port, "tls.example") as ch:
        answer, meta = unary(ch, "/pkg.Tls/Unary", b"secret")
    assert answer["backend"] == "grpc-tls"
    assert answer["body"] == "secret"
    assert meta["x-backend"] == "grpc-tls"
    parents = env.daemon.status_of("GRPCRoute", "grpc-tls")["parents"]
    conds = {c["type"]: c["status"] for c in parents[0]["conditions"]}
    assert conds == {"Accepted": "True", "ResolvedRefs": "True"}, conds


def test_grpc_streaming_over_tls(env: Env) -> None:
    with channel(env.port, "tls.example") as ch:
        got = list(ch.unary_stream("/pkg.Tls/ServerStream")(b"20", timeout=10))
    assert got == [b"chunk-%d" % i for i in range(20)]


def test_grpc_status_from_a_tls_backend_is_relayed(env: Env) -> None:
    with channel(env.port, "tls.example") as ch, pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/pkg.Tls/Fail")(b"PERMISSION_DENIED", timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
