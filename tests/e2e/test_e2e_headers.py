"""Forwarding headers, X-Request-Id, hop-by-hop headers and the access log."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Client,
    Gatewayd,
    backend_ref,
    echo_header,
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


def one_echo_daemon(echoes, gatewayd, args: list[str]) -> Env:  # type: ignore[no-untyped-def]
    """A daemon with one HTTP listener routing everything to one echo backend."""
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs.append(http_route("all", [rule(backends=[backend_ref("echo-v1")])]))
    return Env(gatewayd(docs, args=args), port)


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    return one_echo_daemon(module_echoes, module_gatewayd, ["--access-log", "json"])


def is_uuid(value: str | None) -> bool:
    if not value:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def test_x_forwarded_for_is_the_client_address(env: Env) -> None:
    doc = request(env.port).echo()
    assert echo_header(doc, "x-forwarded-for") == ["127.0.0.1"]


def test_x_forwarded_for_appends_to_the_client_value(env: Env) -> None:
    doc = request(env.port, headers={"X-Forwarded-For": "203.0.113.9"}).echo()
    assert echo_header(doc, "x-forwarded-for") == ["203.0.113.9", "127.0.0.1"]


def test_external_address_and_proto(env: Env) -> None:
    # with --xff-trusted-hops 0 the downstream peer is the external address
    doc = request(env.port, headers={"X-Forwarded-For": "203.0.113.9"}).echo()
    assert echo_header(doc, "x-envoy-external-address") == ["127.0.0.1"]
    assert echo_header(doc, "x-forwarded-proto") == ["http"]


def test_request_id_generated_and_returned(env: Env) -> None:
    r = request(env.port)
    doc = r.echo()
    sent = echo_header(doc, "x-request-id")
    assert len(sent) == 1 and is_uuid(sent[0]), sent
    assert r.header("x-request-id") == sent[0]
    other = request(env.port).echo()
    assert echo_header(other, "x-request-id") != sent, "request ids must differ per request"


def test_client_request_id_is_replaced(env: Env) -> None:
    # Envoy's edge default (preserve_external_request_id: false): the id that
    # correlates logs and traces is never chosen by an external client.
    rid = str(uuid.uuid4())
    r = request(env.port, headers={"X-Request-Id": rid})
    sent = echo_header(r.echo(), "x-request-id")
    assert len(sent) == 1 and is_uuid(sent[0]) and sent[0] != rid, sent
    assert r.header("x-request-id") == sent[0]


def test_access_log_shows_the_request_id_sent_upstream(env: Env) -> None:
    marker = f"/rid-log-{uuid.uuid4().hex}"
    r = request(env.port, marker, headers={"X-Request-Id": "client-chosen"})
    (sent,) = echo_header(r.echo(), "x-request-id")
    line = env.daemon.child.stdout.wait_for(lambda s: marker in s, timeout=5)
    assert line is not None, env.daemon.output()
    assert json.loads(line)["request_id"] == sent != "client-chosen"


def test_request_id_preserved_with_the_option(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    kept = one_echo_daemon(echoes, gatewayd, ["--preserve-request-id", "--access-log", "json"])
    port = kept.port
    rid = str(uuid.uuid4())
    marker = f"/rid-kept-{uuid.uuid4().hex}"
    r = request(port, marker, headers={"X-Request-Id": rid})
    assert echo_header(r.echo(), "x-request-id") == [rid]
    assert r.header("x-request-id") == rid
    line = kept.daemon.child.stdout.wait_for(lambda s: marker in s, timeout=5)
    assert line is not None and json.loads(line)["request_id"] == rid
    # an unusable one is still replaced
    doc = request(port, headers={"X-Request-Id": "x" * 200}).echo()
    (sent,) = echo_header(doc, "x-request-id")
    assert is_uuid(sent)


def test_client_x_envoy_headers_are_stripped(env: Env) -> None:
    doc = request(
        env.port,
        headers=[
            ("X-Envoy-Retry-On", "5xx,reset"),
            ("X-Envoy-Upstream-Rq-Timeout-Ms", "1"),
            ("X-Envoy-Max-Retries", "50"),
            ("X-Envoy-Internal", "true"),
            ("X-Envoy-External-Address", "10.0.0.1"),
            ("X-Envoy-Original-Path", "/admin"),
            ("X-Envoyish", "kept"),
        ],
    ).echo()
    names = {k.lower() for k in doc["headers"]}
    assert {n for n in names if n.startswith("x-envoy-")} == {"x-envoy-external-address"}
    assert echo_header(doc, "x-envoy-external-address") == ["127.0.0.1"]
    assert echo_header(doc, "x-envoyish") == ["kept"]


def test_client_xfcc_is_removed_on_plain_http(env: Env) -> None:
    doc = request(
        env.port,
        headers=[
            ("X-Forwarded-Client-Cert", 'Hash=0000;Subject="CN=admin"'),
            ("X-Forwarded-Client-Cert", "By=spiffe://x"),
        ],
    ).echo()
    assert echo_header(doc, "x-forwarded-client-cert") == []


def test_hop_by_hop_request_headers_removed(env: Env) -> None:
    doc = request(
        env.port,
        headers=[
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "1"),
        ],
    ).echo()
    assert echo_header(doc, "x-hop") == []
    assert echo_header(doc, "keep-alive") == []
    assert echo_header(doc, "proxy-connection") == []
    assert echo_header(doc, "x-kept") == ["1"]


def test_host_and_method_and_body_forwarded(env: Env) -> None:
    body = b"0123456789" * 1000
    doc = request(env.port, "/a/b?c=d", method="PUT", host="my.example", body=body).echo()
    assert doc["host"] == "my.example"
    assert doc["method"] == "PUT"
    assert doc["path"] == "/a/b?c=d"
    assert doc["body_bytes"] == len(body)


def test_client_keep_alive(env: Env) -> None:
    with Client(env.port) as c:
        for i in range(20):
            assert c.request(f"/ka/{i}").echo()["path"] == f"/ka/{i}"


def test_chunked_upstream_response_relayed(env: Env) -> None:
    with Client(env.port) as c:
        r = c.request("/?size=100000&chunked=1")
        assert r.status == 200
        assert r.body == b"x" * 100000
        # the connection is still usable after a chunked body
        assert c.request("/after").echo()["path"] == "/after"


def test_one_json_access_log_line_per_request(env: Env) -> None:
    marker = f"/access-log-{uuid.uuid4().hex}"
    request(env.port, marker).echo()
    out = env.daemon.child.stdout
    line = out.wait_for(lambda s: marker in s, timeout=5)
    assert line is not None, "no access log line on stdout\n" + env.daemon.output()
    entry = json.loads(line)
    assert isinstance(entry, dict)
    assert any(v == 200 or v == "200" for v in entry.values()), entry
    assert out.count(lambda s: marker in s) == 1


def test_xff_trusted_hops(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    port = one_echo_daemon(
        echoes, gatewayd, ["--xff-trusted-hops", "1", "--access-log", "off"]
    ).port
    doc = request(port, headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}).echo()
    # one trusted hop: the address that hop appended is the external client
    assert echo_header(doc, "x-envoy-external-address") == ["203.0.113.9"]
    assert echo_header(doc, "x-forwarded-for") == ["198.51.100.1", "203.0.113.9", "127.0.0.1"]
