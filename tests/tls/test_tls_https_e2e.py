"""HTTPS listeners end to end: ``gatewayd run`` subprocesses, real handshakes on 127.0.0.1.

One daemon serves the module: the four listeners of the conformance test
GatewayHTTPSListenerDetectMisdirectedRequests on one port, listeners with broken
certificates beside them, a plain HTTP listener that redirects to HTTPS and a listener
validating client certificates.  Certificate reload runs on daemons of its own.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from e2e_kit import (
    LOCALHOST,
    Doc,
    EchoBackend,
    EchoFactory,
    Gatewayd,
    Reply,
    backend_ref,
    conditions,
    deadline_loop,
    echo_header,
    free_port,
    gateway,
    gateway_class,
    prometheus_samples,
    raw_exchange,
    reference_grant,
    request,
    to_yaml,
)
from tls_e2e_kit import HttpsClient, listening_inodes

from gatewayd.tls.certs import secret_manifest, self_signed
from gatewayd.tls.context import load_chain_from_memory

NOW = dt.datetime.now(dt.UTC)
TIMEOUT = 5.0


# --------------------------------------------------------------------------- builders


@dataclass(frozen=True)
class Pair:
    cert: bytes
    key: bytes

    @property
    def sha256(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert).fingerprint(hashes.SHA256())


def pair(*hosts: str, start: dt.datetime | None = None, days: int = 30) -> Pair:
    cert, key = self_signed(list(hosts), days=days, now=start or NOW)
    return Pair(cert, key)


def secret(name: str, p: Pair, namespace: str = "default") -> Doc:
    doc: Doc = yaml.safe_load(secret_manifest(p.cert, p.key, name=name, namespace=namespace))
    return doc


def https_listener(
    name: str, port: int, hostname: str | None, *secrets: str | Doc, **tls: Any
) -> Doc:
    refs = [{"name": s} if isinstance(s, str) else s for s in secrets]
    doc: Doc = {
        "name": name,
        "port": port,
        "protocol": "HTTPS",
        "tls": {"mode": "Terminate", "certificateRefs": refs, **tls},
    }
    if hostname is not None:
        doc["hostname"] = hostname
    return doc


def route(name: str, sections: list[str], rule: Doc) -> Doc:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "gw", "sectionName": s} for s in sections],
            "rules": [rule],
        },
    }


def service_docs(echo: EchoBackend) -> list[Doc]:
    return echo.manifests()


# --------------------------------------------------------------------------- clients


def client_ctx(
    *,
    trust: Pair | None = None,
    client: Any = None,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trust is not None:
        ctx.load_verify_locations(cadata=trust.cert.decode())
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    if client is not None:
        load_chain_from_memory(ctx, client)
    return ctx


class TlsClient(HttpsClient):
    """An ``HttpsClient`` with this module's default context (ALPN http/1.1) and
    the SHA-256 fingerprint of the certificate the server presented."""

    def __init__(self, port: int, sni: str | None, ctx: ssl.SSLContext | None = None) -> None:
        super().__init__(port, sni, ctx or client_ctx(), timeout=TIMEOUT)

    @property
    def sha256(self) -> bytes:
        return x509.load_der_x509_certificate(self.peer_der).fingerprint(hashes.SHA256())


def https_get(port: int, sni: str | None, host: str, path: str = "/") -> tuple[bytes, Reply]:
    """(certificate fingerprint, reply) of one request on a fresh connection."""
    with TlsClient(port, sni) as c:
        return c.sha256, c.get(host, path)


def refused(port: int, sni: str | None, ctx: ssl.SSLContext) -> BaseException:
    """The error of a connection the gateway must refuse (handshake or first request)."""
    try:
        with TlsClient(port, sni, ctx) as c:
            reply = c.get(sni or "x")
    except (OSError, http.client.HTTPException) as exc:
        return exc
    raise AssertionError(f"connection was accepted: {reply.status}")


def handshake_errors(daemon: Gatewayd, port: int) -> dict[str, float]:
    samples = prometheus_samples(daemon.metrics(), "gatewayd_tls_handshake_error_total")
    label = daemon.listener_label(port)
    return {s["reason"]: v for s, v in samples if s.get("listener") == label}


def listener_conditions(daemon: Gatewayd, name: str) -> dict[str, dict[str, object]]:
    status = daemon.status_of("Gateway", "gw")
    for ls in status["listeners"]:
        if ls["name"] == name:
            return conditions(ls)
    raise AssertionError(f"no listener {name} in {status}")


# --------------------------------------------------------------------------- the daemon


@dataclass
class Setup:
    daemon: Gatewayd
    http_port: int
    https_port: int
    mtls_port: int
    certs: dict[str, Pair]
    client_ca: Any
    client_ok: Any
    client_other: Any


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, pki: Any) -> Iterator[Setup]:
    echoes = EchoFactory()
    daemon: Gatewayd | None = None
    try:
        (echo,) = echoes.start("echo")
        http_port, https_port, mtls_port = free_port(), free_port(), free_port()
        certs = {
            "default": pair("default.example"),
            "second": pair("second-example.org"),
            "wild": pair("*.wildcard.org"),
            "fourth": pair("fourth-example.wildcard.org"),
            "granted": pair("granted.example"),
        }
        expired = pair("expired.example", start=NOW - dt.timedelta(days=40), days=30)
        mismatch = Pair(pair("mismatch.example").cert, pair("mismatch.example").key)
        client_ca = pki.ca("gatewayd test client root")
        mtls_server = pair("mtls.example")
        docs: list[Doc] = [
            gateway_class(),
            gateway(
                "gw",
                [
                    {"name": "http", "port": http_port, "protocol": "HTTP"},
                    https_listener("https", https_port, None, "default"),
                    https_listener("second", https_port, "second-example.org", "second"),
                    https_listener("wild", https_port, "*.wildcard.org", "wild"),
                    https_listener("fourth", https_port, "fourth-example.wildcard.org", "fourth"),
                    https_listener("missing", https_port, "missing.example", "nope"),
                    https_listener("expired", https_port, "expired.example", "expired"),
                    https_listener("mismatch", https_port, "mismatch.example", "mismatch"),
                    https_listener("malformed", https_port, "malformed.example", "malformed"),
                    https_listener(
                        "granted",
                        https_port,
                        "granted.example",
                        {"name": "granted", "namespace": "certs"},
                    ),
                    https_listener(
                        "foreign",
                        https_port,
                        "foreign.example",
                        {"name": "foreign", "namespace": "certs"},
                    ),
                    https_listener(
                        "mtls",
                        mtls_port,
                        None,
                        "mtls",
                        frontendValidation={
                            "caCertificateRefs": [
                                {"group": "", "kind": "ConfigMap", "name": "client-ca"}
                            ]
                        },
                    ),
                ],
            ),
            *[secret(name, p) for name, p in certs.items() if name != "granted"],
            secret("granted", certs["granted"], namespace="certs"),
            reference_grant(
                "gateways-read-granted",
                "certs",
                from_namespace="default",
                from_kind="Gateway",
                to_kind="Secret",
                to_name="granted",
            ),
            secret("expired", expired),
            secret("mismatch", mismatch),
            secret("mtls", mtls_server),
            secret("foreign", pair("foreign.example"), namespace="certs"),
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "malformed", "namespace": "default"},
                "type": "kubernetes.io/tls",
                "stringData": {
                    "tls.crt": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n"
                    "-----END CERTIFICATE-----\n",
                    "tls.key": pair("malformed.example").key.decode(),
                },
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "client-ca", "namespace": "default"},
                "data": {"ca.crt": client_ca.cert_pem.decode()},
            },
            *service_docs(echo),
            route(
                "app",
                ["https", "second", "wild", "fourth", "granted", "mtls"],
                {"backendRefs": [backend_ref("echo")]},
            ),
            route(
                "to-https",
                ["http"],
                {
                    "filters": [
                        {
                            "type": "RequestRedirect",
                            "requestRedirect": {
                                "scheme": "https",
                                "port": https_port,
                                "statusCode": 301,
                            },
                        }
                    ]
                },
            ),
        ]
        daemon = Gatewayd(tmp_path_factory.mktemp("https"), docs)
        yield Setup(
            daemon=daemon,
            http_port=http_port,
            https_port=https_port,
            mtls_port=mtls_port,
            certs=certs,
            client_ca=client_ca,
            client_ok=pki.leaf(client_ca, ["client.example"]),
            client_other=pki.leaf(pki.ca("someone else's root"), ["client.example"]),
        )
    finally:
        if daemon is not None:
            daemon.stop()
        echoes.close()


# --------------------------------------------------------------------------- SNI and 421


@pytest.mark.parametrize(
    ("sni", "cert"),
    [
        ("second-example.org", "second"),
        ("third-example.wildcard.org", "wild"),
        ("a.b.wildcard.org", "wild"),
        ("fourth-example.wildcard.org", "fourth"),
        ("granted.example", "granted"),  # another namespace, allowed by a ReferenceGrant
        ("unknown-example.org", "default"),
        (None, "default"),
    ],
)
def test_sni_selects_the_listener_and_its_certificate(
    setup: Setup, sni: str | None, cert: str
) -> None:
    fingerprint, reply = https_get(setup.https_port, sni, sni or "example.org", "/hello")
    assert fingerprint == setup.certs[cert].sha256
    doc = reply.echo()
    assert doc["path"] == "/hello"
    # "X-Forwarded-Proto" is the scheme the client used with the gateway.
    assert echo_header(doc, "x-forwarded-proto") == ["https"]


def test_certificate_verifies_and_alpn_is_http11(setup: Setup) -> None:
    ctx = client_ctx(trust=setup.certs["second"])
    with TlsClient(setup.https_port, "second-example.org", ctx) as c:
        assert c.tls.selected_alpn_protocol() == "http/1.1"
        assert c.tls.version() in ("TLSv1.3", "TLSv1.2")
        assert c.get("second-example.org").status == 200


def test_alpn_prefers_h2_when_the_client_offers_it(setup: Setup) -> None:
    # HTTP/2 itself over this listener: tests/e2e/test_e2e_h2c.py.
    ctx = client_ctx(trust=setup.certs["second"], alpn=("h2", "http/1.1"))
    with TlsClient(setup.https_port, "second-example.org", ctx) as c:
        assert c.tls.selected_alpn_protocol() == "h2"


@pytest.mark.parametrize(
    ("sni", "host", "status"),
    [
        ("example.org", "example.org", 200),
        ("example.org", "second-example.org", 421),
        ("second-example.org", "example.org", 421),
        ("second-example.org", "second-example.org:443", 200),
        ("third-example.wildcard.org", "fith-example.wildcard.org", 200),
        ("third-example.wildcard.org", "fourth-example.wildcard.org", 421),
        ("fourth-example.wildcard.org", "fith-example.wildcard.org", 421),
        ("unknown-example.org", "example.org", 200),
    ],
)
def test_host_of_another_listener_is_misdirected(
    setup: Setup, sni: str, host: str, status: int
) -> None:
    _, reply = https_get(setup.https_port, sni, host)
    assert reply.status == status, reply.body
    if status == 421:
        assert reply.body == b"misdirected request"


def test_misdirected_request_keeps_the_connection(setup: Setup) -> None:
    with TlsClient(setup.https_port, "second-example.org") as c:
        assert c.get("example.org").status == 421
        assert c.get("second-example.org").status == 200


# --------------------------------------------------------------------------- bad certificates


@pytest.mark.parametrize(
    ("name", "reason", "words"),
    [
        ("missing", "InvalidCertificateRef", "Secret default/nope not found"),
        ("expired", "InvalidCertificateRef", "certificate expired on"),
        ("mismatch", "InvalidCertificateRef", "private key does not match the certificate"),
        ("malformed", "InvalidCertificateRef", "malformed PEM certificate"),
        ("foreign", "RefNotPermitted", "no ReferenceGrant"),
    ],
)
def test_invalid_certificate_is_reported_and_other_listeners_serve(
    setup: Setup, name: str, reason: str, words: str
) -> None:
    c = listener_conditions(setup.daemon, name)
    assert c["ResolvedRefs"]["status"] == "False"
    assert c["ResolvedRefs"]["reason"] == reason
    assert words in str(c["ResolvedRefs"]["message"])
    assert c["Programmed"]["status"] == "False"
    # The broken listener is not served: its name falls to the listener without
    # hostname (and its certificate), the others keep serving.
    fingerprint, reply = https_get(setup.https_port, f"{name}.example", f"{name}.example")
    assert fingerprint == setup.certs["default"].sha256
    assert reply.status == 200
    _, reply = https_get(setup.https_port, "second-example.org", "second-example.org")
    assert reply.status == 200
    assert listener_conditions(setup.daemon, "second")["Programmed"]["status"] == "True"


# --------------------------------------------------------------------------- redirect


def test_http_redirects_to_https_and_the_redirect_can_be_followed(setup: Setup) -> None:
    conn = http.client.HTTPConnection(LOCALHOST, setup.http_port, timeout=TIMEOUT)
    try:
        conn.request("GET", "/shop?item=1", headers={"Host": "second-example.org"})
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 301
    location = resp.getheader("location")
    assert location == f"https://second-example.org:{setup.https_port}/shop?item=1"
    # Follow it: the name in the URL is the SNI and the Host, the port is the HTTPS one.
    target = location.removeprefix("https://")
    authority, _, path = target.partition("/")
    hostname, _, port = authority.partition(":")
    ctx = client_ctx(trust=setup.certs["second"])
    with TlsClient(int(port), hostname, ctx) as c:
        doc = c.get(authority, "/" + path).echo()
    assert doc["path"] == "/shop?item=1"
    assert echo_header(doc, "x-forwarded-proto") == ["https"]


# --------------------------------------------------------------------------- versions


def test_tls11_is_refused_and_counted(setup: Setup) -> None:
    ctx = client_ctx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    before = handshake_errors(setup.daemon, setup.https_port).get("protocol_version", 0)
    exc = refused(setup.https_port, "second-example.org", ctx)
    assert isinstance(exc, ssl.SSLError)
    for _ in deadline_loop(TIMEOUT):
        if handshake_errors(setup.daemon, setup.https_port).get("protocol_version", 0) > before:
            break
    else:
        raise AssertionError("tls_handshake_error{reason=protocol_version} did not grow")


# --------------------------------------------------------------------------- client certificates


def _keypair(issued: Any) -> Any:
    from gatewayd.tls.certs import load_keypair

    return load_keypair(issued.cert_pem, issued.key_pem, now=NOW)


def test_frontend_validation_accepts_a_valid_client_certificate(setup: Setup) -> None:
    ctx = client_ctx(client=_keypair(setup.client_ok))
    with TlsClient(setup.mtls_port, "mtls.example", ctx) as c:
        assert c.get("mtls.example").echo()["path"] == "/"


@pytest.mark.parametrize("who", ["none", "other"])
def test_frontend_validation_refuses_clients_without_a_valid_certificate(
    setup: Setup, who: str
) -> None:
    reason = "no_client_cert" if who == "none" else "bad_client_cert"
    client = None if who == "none" else _keypair(setup.client_other)
    before = handshake_errors(setup.daemon, setup.mtls_port).get(reason, 0)
    refused(setup.mtls_port, "mtls.example", client_ctx(client=client))
    for _ in deadline_loop(TIMEOUT):
        if handshake_errors(setup.daemon, setup.mtls_port).get(reason, 0) > before:
            break
    else:
        raise AssertionError(f"tls_handshake_error{{reason={reason}}} did not grow")


# --------------------------------------------------------------------------- reload


@pytest.mark.parametrize("workers", ["1", "2"])
def test_certificate_swap_keeps_open_connections_and_the_socket(
    tmp_path: Path, workers: str
) -> None:
    echoes = EchoFactory()
    daemon: Gatewayd | None = None
    try:
        (echo,) = echoes.start("echo")
        port = free_port()
        old, new = pair("swap.example"), pair("swap.example")

        def manifests(p: Pair) -> str:
            return to_yaml(
                [
                    gateway_class(),
                    gateway("gw", [https_listener("https", port, "swap.example", "cert")]),
                    secret("cert", p),
                    *service_docs(echo),
                    route("app", ["https"], {"backendRefs": [backend_ref("echo")]}),
                ]
            )

        daemon = Gatewayd(tmp_path / "d", manifests(old), args=("--workers", workers))
        sockets = listening_inodes(port)
        assert len(sockets) == 1  # bound once; several workers share the socket
        with TlsClient(port, "swap.example") as kept:
            assert kept.sha256 == old.sha256
            assert kept.get("swap.example").status == 200
            daemon.config.write_text(manifests(new))
            # New handshakes see the new certificate once the change is picked up; every
            # worker must have it, so several fresh connections must all agree.
            seen = b""
            for _ in deadline_loop(15.0, 0.1):
                seen = https_get(port, "swap.example", "swap.example")[0]
                if seen == new.sha256:
                    break
            assert seen == new.sha256, daemon.output()
            for _ in range(6):
                fingerprint, reply = https_get(port, "swap.example", "swap.example")
                assert (fingerprint, reply.status) == (new.sha256, 200)
            # The connection opened before keeps working with the certificate it got.
            assert kept.get("swap.example").status == 200
            assert kept.sha256 == old.sha256
        # Same listening socket(s): nothing was closed and bound again.
        assert listening_inodes(port) == sockets
    finally:
        if daemon is not None:
            daemon.stop()
        echoes.close()


def test_port_turning_from_http_to_https_is_served_with_tls(tmp_path: Path) -> None:
    echoes = EchoFactory()
    daemon: Gatewayd | None = None
    try:
        (echo,) = echoes.start("echo")
        port = free_port()
        cert = pair("flip.example")

        def manifests(listener: Doc) -> str:
            return to_yaml(
                [
                    gateway_class(),
                    gateway("gw", [listener]),
                    secret("cert", cert),
                    *service_docs(echo),
                    route("app", ["web"], {"backendRefs": [backend_ref("echo")]}),
                ]
            )

        daemon = Gatewayd(
            tmp_path / "d", manifests({"name": "web", "port": port, "protocol": "HTTP"})
        )
        assert request(port, host="flip.example").status == 200
        daemon.config.write_text(manifests(https_listener("web", port, None, "cert")))
        fingerprint = b""
        for _ in deadline_loop(15.0, 0.1):
            try:
                fingerprint, reply = https_get(port, "flip.example", "flip.example")
            except (OSError, http.client.HTTPException):
                continue
            break
        assert fingerprint == cert.sha256, daemon.output()
        assert echo_header(reply.echo(), "x-forwarded-proto") == ["https"]
        # Cleartext on the TLS socket is refused and counted.
        result = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: flip.example\r\n\r\n")
        assert result.closed and result.status is None
        for _ in deadline_loop(TIMEOUT):
            if handshake_errors(daemon, port).get("not_tls", 0) >= 1:
                break
        else:
            raise AssertionError(f"no not_tls handshake error: {daemon.metrics()}")
    finally:
        if daemon is not None:
            daemon.stop()
        echoes.close()


def test_certificate_expiring_while_serving_is_reported_and_no_longer_served(
    tmp_path: Path,
) -> None:
    echoes = EchoFactory()
    daemon: Gatewayd | None = None
    try:
        (echo,) = echoes.start("echo")
        port = free_port()
        # Valid for about 5 more seconds (self_signed: validity = start + days).
        soon = pair(
            "short.example",
            start=dt.datetime.now(dt.UTC) - dt.timedelta(days=1, seconds=-5),
            days=1,
        )
        lasting = pair("long.example")
        docs = [
            gateway_class(),
            gateway(
                "gw",
                [
                    https_listener("short", port, "short.example", "short"),
                    https_listener("long", port, "long.example", "long"),
                ],
            ),
            secret("short", soon),
            secret("long", lasting),
            *service_docs(echo),
            route("app", ["short", "long"], {"backendRefs": [backend_ref("echo")]}),
        ]
        daemon = Gatewayd(tmp_path / "d", to_yaml(docs), args=("--no-watch",))
        assert https_get(port, "short.example", "short.example")[1].status == 200
        assert listener_conditions(daemon, "short")["ResolvedRefs"]["status"] == "True"
        # No file changes: the daemon reloads by itself just after the expiry.
        cond: dict[str, object] = {}
        for _ in deadline_loop(15.0, 0.2):
            cond = listener_conditions(daemon, "short")["ResolvedRefs"]
            if cond["status"] == "False":
                break
        assert cond["status"] == "False" and cond["reason"] == "InvalidCertificateRef", cond
        assert "expired" in str(cond["message"]), cond
        assert "a served certificate expired" in daemon.child.stderr.text()
        # The expired certificate is no longer presented; the other listener serves on.
        refused(port, "short.example", client_ctx())
        assert https_get(port, "long.example", "long.example")[1].status == 200
    finally:
        if daemon is not None:
            daemon.stop()
        echoes.close()
