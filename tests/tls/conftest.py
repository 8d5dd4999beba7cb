"""Test PKI for tests/tls: a root CA, intermediates and leaves made with cryptography."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The TLS listener end-to-end tests reuse the e2e suite's helpers (tests/e2e/e2e_kit.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

NOW = dt.datetime.now(dt.UTC)

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: Key

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class PKI:
    """Factory for CA and leaf certificates."""

    def ca(
        self,
        cn: str = "gatewayd test root",
        *,
        parent: Issued | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        signer = parent.key if parent is not None else key
        issuer = parent.cert.subject if parent is not None else _name(cn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(days=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(signer, hashes.SHA256())
        )
        return Issued(cert, key)

    def leaf(
        self,
        issuer: Issued,
        hosts: Sequence[str] = ("www.example.com",),
        *,
        cn: str | None = None,
        san: bool = True,
        uris: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key: Key | None = None,
    ) -> Issued:
        key = key or ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or (hosts[0] if hosts else "leaf")))
            .issuer_name(issuer.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - dt.timedelta(days=1))
            .not_valid_after(not_after or NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if san:
            names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
            names += [x509.UniformResourceIdentifier(u) for u in uris]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


@pytest.fixture(scope="session")
def pki() -> PKI:
    return PKI()


# --------------------------------------------------------------------------- handshakes


@dataclass
class Outcome:
    """What each side of one loopback TLS connection saw."""

    client_error: BaseException | None = None
    server_error: BaseException | None = None
    peer_der: bytes | None = None  # the server certificate the client received
    client_alpn: str | None = None
    server_alpn: str | None = None
    client_version: str | None = None
    server_peer_der: bytes | None = None  # the client certificate the server received
    received: bytes = b""

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None and self.received == b"ok"


def run_handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    server_hostname: str | None,
) -> Outcome:
    """One TLS connection over 127.0.0.1: the server answers b"ok" after its handshake."""
    out = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:  # pragma: no cover - only when the client never came
            out.server_error = exc
            return
        conn.settimeout(5)
        shook = False
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                shook = True
                out.server_alpn = tls.selected_alpn_protocol()
                out.server_peer_der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
                tls.unwrap()
        except (OSError, ValueError) as exc:
            # Only handshake failures count; the client may drop the connection after
            # reading b"ok" without waiting for our close_notify.
            if not shook:
                out.server_error = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            try:
                with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    out.peer_der = tls.getpeercert(binary_form=True)
                    out.client_alpn = tls.selected_alpn_protocol()
                    out.client_version = tls.version()
                    data = b""
                    while len(data) < 2:
                        chunk = tls.recv(2 - len(data))
                        if not chunk:
                            break
                        data += chunk
                    out.received = data
                    if data == b"ok":
                        tls.unwrap()
            except (OSError, ValueError) as exc:
                out.client_error = exc
    finally:
        thread.join(10)
        listener.close()
    assert not thread.is_alive(), "server thread did not finish"
    return out


@pytest.fixture
def handshake() -> Callable[[ssl.SSLContext, ssl.SSLContext, str | None], Outcome]:
    return run_handshake


# --------------------------------------------------------------------------- e2e kit

# The end-to-end kit (gatewayd subprocesses, manifests, echo backends) lives with the e2e
# suite; the HTTPS end-to-end tests here reuse it.
_E2E = str(Path(__file__).resolve().parent.parent / "e2e")
if _E2E not in sys.path:
    sys.path.append(_E2E)
