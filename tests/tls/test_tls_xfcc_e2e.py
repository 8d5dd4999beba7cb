"""X-Forwarded-Client-Cert through ``gatewayd run`` (issue 11 item 7): Envoy's
SANITIZE_SET at the edge.  A client's own XFCC never reaches the backend; a listener
that validates client certificates sets XFCC from the certificate it verified.

Listeners: ``mtls`` (frontendValidation, certificate required), ``fallback``
(AllowInsecureFallback: a certificate is asked for, not required) and ``tls`` (no client
certificates), all routed to one recording backend, and ``shared``, validating like
``mtls`` on a port it shares with a TLS Passthrough listener.  ``--xfcc sanitize`` (Envoy's own
default) never sends one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from e2e_kit import (
    LOCALHOST,
    Doc,
    Gatewayd,
    RecordingServer,
    backend_manifests,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
)
from tls_e2e_kit import tls_route_results

from gatewayd.tls.certs import load_keypair, secret_manifest, self_signed
from gatewayd.tls.context import load_chain_from_memory

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0
FORGED = 'Hash=0000;Subject="CN=admin";URI=spiffe://cluster.local/ns/admin'


@dataclass
class Setup:
    daemon: Gatewayd
    backend: RecordingServer
    ports: dict[str, int]
    client: Any  # an Issued (tests/tls/conftest.py) signed by the client CA


def _listener(name: str, port: int, validation: Doc | None) -> Doc:
    tls: Doc = {"mode": "Terminate", "certificateRefs": [{"name": "server"}]}
    if validation is not None:
        tls["frontendValidation"] = validation
    return {"name": name, "port": port, "protocol": "HTTPS", "tls": tls}


@contextlib.contextmanager
def serving(workdir: Path, pki: Any, args: Sequence[str] = ()) -> Iterator[Setup]:
    """A ``gatewayd run`` with the three listeners, a recording backend and a client
    certificate signed by the CA the validating listeners trust."""
    backend = RecordingServer()
    daemon: Gatewayd | None = None
    try:
        ports = {name: free_port() for name in ("mtls", "fallback", "tls", "shared")}
        ca = pki.ca("gatewayd xfcc client root")
        ca_ref = {"caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "client-ca"}]}
        fallback = {**ca_ref, "mode": "AllowInsecureFallback"}
        cert, key = self_signed(["gw.example"])
        docs: list[Doc] = [
            gateway_class(),
            gateway(
                "gw",
                [
                    _listener("mtls", ports["mtls"], ca_ref),
                    _listener("fallback", ports["fallback"], fallback),
                    _listener("tls", ports["tls"], None),
                    # HTTPS next to a TLS listener: the ClientHello is read first and the
                    # connection terminated by proxy/tlsroute.py, not by the socket.
                    {**_listener("shared", ports["shared"], ca_ref), "hostname": "gw.example"},
                    {
                        "name": "passthrough",
                        "port": ports["shared"],
                        "protocol": "TLS",
                        "hostname": "pass.example",
                        "tls": {"mode": "Passthrough"},
                    },
                ],
            ),
            yaml.safe_load(secret_manifest(cert, key, name="server", namespace="default")),
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "client-ca", "namespace": "default"},
                "data": {"ca.crt": ca.cert_pem.decode()},
            },
            *backend_manifests("recorder", backend.port),
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": "all", "namespace": "default"},
                "spec": {
                    "parentRefs": [{"name": "gw", "sectionName": s} for s in ports],
                    "rules": [{"backendRefs": [backend_ref("recorder")]}],
                },
            },
        ]
        daemon = Gatewayd(workdir, docs, args=args)
        client = pki.leaf(ca, ["client.example", "alt.client.example"], uris=["spiffe://td/ns/c"])
        yield Setup(daemon, backend, ports, client)
    finally:
        if daemon is not None:
            daemon.stop()
        backend.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Iterator[Setup]:
    with serving(tmp_path_factory.mktemp("xfcc"), pki) as s:
        yield s


def _context(client: Any | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if client is not None:
        load_chain_from_memory(
            ctx, load_keypair(client.cert_pem, client.key_pem, now=dt.datetime.now(dt.UTC))
        )
    return ctx


def _forwarded_xfcc(setup: Setup, listener: str, client: Any | None) -> str | None:
    """The XFCC the backend received for one request carrying a forged XFCC."""
    marker = f"/xfcc/{listener}/{client is not None}/{len(setup.backend.snapshot()[1])}"
    ctx = _context(client)
    raw = socket.create_connection((LOCALHOST, setup.ports[listener]), timeout=TIMEOUT)
    try:
        tls = ctx.wrap_socket(raw, server_hostname="gw.example")
    except BaseException:
        raw.close()
        raise
    conn = http.client.HTTPConnection(LOCALHOST, setup.ports[listener], timeout=TIMEOUT)
    conn.sock = tls
    try:
        conn.request(
            "GET", marker, headers={"Host": "gw.example", "X-Forwarded-Client-Cert": FORGED}
        )
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    finally:
        conn.close()
    rec = setup.backend.wait_for(lambda r: r.path == marker, TIMEOUT)
    assert rec is not None, setup.daemon.output()
    return rec.headers.get("x-forwarded-client-cert")


def _expected(client: Any) -> str:
    der = client.cert.public_bytes(serialization.Encoding.DER)
    return (
        f"Hash={hashlib.sha256(der).hexdigest()};"
        'Subject="CN=client.example";'
        "URI=spiffe://td/ns/c;DNS=client.example;DNS=alt.client.example"
    )


def test_mtls_listener_sets_xfcc_from_the_verified_certificate(setup: Setup) -> None:
    assert _forwarded_xfcc(setup, "mtls", setup.client) == _expected(setup.client)


def test_fallback_listener_sets_xfcc_only_with_a_certificate(setup: Setup) -> None:
    assert _forwarded_xfcc(setup, "fallback", setup.client) == _expected(setup.client)
    assert _forwarded_xfcc(setup, "fallback", None) is None


def test_https_listener_sharing_a_port_with_tls_sets_xfcc(setup: Setup) -> None:
    assert _forwarded_xfcc(setup, "shared", setup.client) == _expected(setup.client)
    # The port reads ClientHellos itself (tlsroute.py): a server name of the route-less
    # passthrough listener is refused there and counted by result.
    with (
        contextlib.suppress(OSError),
        socket.create_connection((LOCALHOST, setup.ports["shared"]), timeout=TIMEOUT) as raw,
        _context(None).wrap_socket(raw, server_hostname="pass.example") as tls,
    ):
        tls.recv(1)
    for _ in deadline_loop(TIMEOUT):
        if tls_route_results(setup.daemon, setup.ports["shared"]):
            break
    else:
        raise AssertionError("the shared port did not read the ClientHello itself")


def test_insecure_fallback_sets_the_gateway_condition(setup: Setup) -> None:
    # "This condition is true when the Gateway FrontendValidationModeType is configured
    # to allow insecure fallback behavior" (InsecureFrontendValidationMode).
    status = setup.daemon.status_of("Gateway", "gw")
    conds = {c["type"]: c for c in status["conditions"]}
    cond = conds["InsecureFrontendValidationMode"]
    assert (cond["status"], cond["reason"]) == ("True", "ConfigurationChanged"), cond
    assert str(setup.ports["fallback"]) in cond["message"]
    assert str(setup.ports["mtls"]) not in cond["message"]


def test_listener_without_client_validation_removes_xfcc(setup: Setup) -> None:
    assert _forwarded_xfcc(setup, "tls", None) is None


def test_xfcc_sanitize_never_sends_one(tmp_path: Path, pki: Any) -> None:
    with serving(tmp_path, pki, ["--xfcc", "sanitize"]) as plain:
        assert _forwarded_xfcc(plain, "mtls", plain.client) is None
