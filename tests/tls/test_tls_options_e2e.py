"""Listener ``tls.options`` through ``gatewayd run``: the keys gatewayd implements
(gatewayd.io/min-tls-version, max-tls-version, cipher-suites) change what real
handshakes negotiate; any other key keeps the listener unserved, named in its status.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from e2e_kit import (
    LOCALHOST,
    Doc,
    EchoFactory,
    Gatewayd,
    backend_ref,
    conditions,
    free_port,
    gateway,
    gateway_class,
    http_route,
    rule,
)

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0
SUITE = "ECDHE-ECDSA-AES256-GCM-SHA384"  # the certificate is an EC (P-256) one


@dataclass
class Env:
    daemon: Gatewayd
    ports: dict[str, int]


def https(name: str, port: int, options: dict[str, str]) -> Doc:
    tls: Doc = {"mode": "Terminate", "certificateRefs": [{"name": "server"}]}
    if options:
        tls["options"] = options
    return {"name": name, "port": port, "protocol": "HTTPS", "tls": tls}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    echoes = EchoFactory()
    daemon: Gatewayd | None = None
    try:
        (echo,) = echoes.start("echo-v1")
        ports = {name: free_port() for name in ("tls13", "tls12", "odd")}
        cert, key = self_signed(["gw.example"])
        docs: list[Doc] = [
            gateway_class(),
            gateway(
                "gw",
                [
                    https("tls13", ports["tls13"], {"gatewayd.io/min-tls-version": "1.3"}),
                    https(
                        "tls12",
                        ports["tls12"],
                        {"gatewayd.io/max-tls-version": "1.2", "gatewayd.io/cipher-suites": SUITE},
                    ),
                    https("odd", ports["odd"], {"example.com/session-tickets": "off"}),
                ],
            ),
            yaml.safe_load(secret_manifest(cert, key, name="server", namespace="default")),
            *echo.manifests(),
            http_route("all", [rule(backends=[backend_ref("echo-v1")])]),
        ]
        daemon = Gatewayd(Path(tmp_path_factory.mktemp("tlsoptions")), docs)
        yield Env(daemon, ports)
    finally:
        if daemon is not None:
            daemon.stop()
        echoes.close()


def client(
    low: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2, high: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = low
    ctx.maximum_version = high
    return ctx


def handshake(port: int, ctx: ssl.SSLContext) -> tuple[str | None, str | None, int]:
    """(TLS version, cipher, HTTP status of a GET) over one connection."""
    raw = socket.create_connection((LOCALHOST, port), timeout=TIMEOUT)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="gw.example")
    except BaseException:
        raw.close()
        raise
    conn = http.client.HTTPConnection(LOCALHOST, port, timeout=TIMEOUT)
    conn.sock = tls
    try:
        cipher = tls.cipher()
        conn.request("GET", "/", headers={"Host": "gw.example"})
        resp = conn.getresponse()
        resp.read()
        return tls.version(), cipher[0] if cipher else None, resp.status
    finally:
        conn.close()


def test_min_tls_version_13(env: Env) -> None:
    assert handshake(env.ports["tls13"], client())[0::2] == ("TLSv1.3", 200)
    with pytest.raises(ssl.SSLError):
        handshake(env.ports["tls13"], client(high=ssl.TLSVersion.TLSv1_2))


def test_max_tls_version_12_with_one_suite(env: Env) -> None:
    assert handshake(env.ports["tls12"], client()) == ("TLSv1.2", SUITE, 200)
    with pytest.raises(ssl.SSLError):
        handshake(env.ports["tls12"], client(low=ssl.TLSVersion.TLSv1_3))
    narrow = client(high=ssl.TLSVersion.TLSv1_2)
    narrow.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # a suite the listener left out
    with pytest.raises(ssl.SSLError):
        handshake(env.ports["tls12"], narrow)


def test_listener_statuses(env: Env) -> None:
    listeners = {
        ls["name"]: conditions(ls) for ls in env.daemon.status_of("Gateway", "gw")["listeners"]
    }
    assert listeners["tls13"]["Accepted"]["status"] == "True"
    assert listeners["tls12"]["Accepted"]["status"] == "True"
    odd = listeners["odd"]["Accepted"]
    assert (odd["status"], odd["reason"]) == ("False", "UnsupportedValue")
    assert "example.com/session-tickets: not a key gatewayd implements" in odd["message"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOCALHOST, env.ports["odd"]), timeout=TIMEOUT).close()
