from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gatewayd.tls.certs import CertificateInfo, load_keypair, self_signed
from gatewayd.tls.context import (
    BackendSSLContext,
    SNISelector,
    client_context,
    server_context,
)

if TYPE_CHECKING:
    from conftest import PKI, Issued, Outcome

    Handshake = Callable[[ssl.SSLContext, ssl.SSLContext, str | None], Outcome]


def now() -> dt.datetime:
    """The current instant, read when used: a value taken at import is minutes old by
    the time a long suite reaches these tests, older than a fresh certificate's
    notBefore (now - 5 min)."""
    return dt.datetime.now(dt.UTC)


def keypair(*hosts: str, key_type: str = "ec") -> CertificateInfo:
    cert, key = self_signed(hosts, key_type=key_type)
    return load_keypair(cert, key, now=now())


def issued(leaf: Issued, *chain: Issued) -> CertificateInfo:
    pem = leaf.cert_pem + b"".join(c.cert_pem for c in chain)
    return load_keypair(pem, leaf.key_pem, now=now())


def trusting(*infos: CertificateInfo, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A plain client context trusting the given (self-signed) certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata="".join(i.pem_chain.decode() for i in infos))
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def fingerprint(der: bytes | None) -> str:
    assert der is not None
    return hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------- server


@pytest.mark.parametrize("key_type", ["ec", "rsa", "ed25519"])
def test_server_context_handshake(handshake: Handshake, key_type: str) -> None:
    info = keypair("www.example.com", key_type=key_type)
    out = handshake(server_context(info), trusting(info), "www.example.com")
    assert out.ok, out
    assert fingerprint(out.peer_der) == info.fingerprint_sha256
    assert out.client_version == "TLSv1.3"


def test_server_context_settings() -> None:
    ctx = server_context(keypair("a.example"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12, "no TLS 1.2 suites"
    for name in tls12:
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name), name


def test_tls12_client_gets_an_aead_suite(handshake: Handshake) -> None:
    info = keypair("a.example", key_type="rsa")
    client = trusting(info)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = handshake(server_context(info), client, "a.example")
    assert out.ok, out
    assert out.client_version == "TLSv1.2"


def test_tls11_is_refused(handshake: Handshake) -> None:
    info = keypair("a.example", key_type="rsa")
    old = trusting(info)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this OpenSSL speak TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    out = handshake(server_context(info), old, "a.example")
    assert not out.ok
    assert isinstance(out.server_error, ssl.SSLError)
    assert "UNSUPPORTED_PROTOCOL" in str(out.server_error).upper()
    assert isinstance(out.client_error, ssl.SSLError)


def test_alpn_negotiated(handshake: Handshake) -> None:
    info = keypair("a.example")
    server = server_context(info, alpn=("h2", "http/1.1"))
    out = handshake(server, trusting(info, alpn=("http/1.1",)), "a.example")
    assert out.ok, out
    assert out.client_alpn == out.server_alpn == "http/1.1"
    out = handshake(server, trusting(info, alpn=("h2", "http/1.1")), "a.example")
    assert out.client_alpn == "h2"


def test_no_common_alpn_proceeds_without_alpn(handshake: Handshake) -> None:
    # Python's ALPN callback answers "no overlap" with NOACK rather than the
    # no_application_protocol alert: the connection goes on without ALPN, which an
    # HTTP/1.1 listener serves as HTTP/1.1 (an h2-only client gives up by itself).
    info = keypair("a.example")
    out = handshake(server_context(info), trusting(info, alpn=("h2",)), "a.example")
    assert out.ok, out
    assert out.client_alpn is None
    assert out.server_alpn is None


# --------------------------------------------------------------------------- client certs


@pytest.fixture
def mtls(pki: PKI) -> tuple[CertificateInfo, bytes, CertificateInfo, CertificateInfo]:
    """(server cert, client CA PEM, good client cert, client cert from another CA)."""
    server = keypair("gw.example")
    client_ca = pki.ca("client ca")
    good = issued(pki.leaf(client_ca, ["client.example"]))
    stranger = issued(pki.leaf(pki.ca("other ca"), ["client.example"]))
    return server, client_ca.cert_pem, good, stranger


def _client(server: CertificateInfo, cert: CertificateInfo | None) -> ssl.SSLContext:
    ctx = trusting(server)
    if cert is not None:
        from gatewayd.tls.context import load_chain_from_memory

        load_chain_from_memory(ctx, cert)
    return ctx


def test_client_cert_required(
    handshake: Handshake, mtls: tuple[CertificateInfo, bytes, CertificateInfo, CertificateInfo]
) -> None:
    server, ca_pem, good, stranger = mtls
    ctx = server_context(server, client_ca_pem=ca_pem, client_auth="require")
    out = handshake(ctx, _client(server, good), "gw.example")
    assert out.ok, out
    assert fingerprint(out.server_peer_der) == good.fingerprint_sha256

    out = handshake(ctx, _client(server, None), "gw.example")
    assert not out.ok
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(out.server_error).upper()
    assert out.received == b""  # nothing was served

    out = handshake(ctx, _client(server, stranger), "gw.example")
    assert not out.ok
    assert "CERTIFICATE_VERIFY_FAILED" in str(out.server_error).upper()


def test_client_cert_optional(
    handshake: Handshake, mtls: tuple[CertificateInfo, bytes, CertificateInfo, CertificateInfo]
) -> None:
    server, ca_pem, good, stranger = mtls
    ctx = server_context(server, client_ca_pem=ca_pem, client_auth="optional")
    out = handshake(ctx, _client(server, None), "gw.example")
    assert out.ok, out
    assert out.server_peer_der is None
    out = handshake(ctx, _client(server, good), "gw.example")
    assert fingerprint(out.server_peer_der) == good.fingerprint_sha256
    # optional still verifies a certificate that is sent
    out = handshake(ctx, _client(server, stranger), "gw.example")
    assert not out.ok


def test_server_context_argument_errors() -> None:
    info = keypair("a.example")
    with pytest.raises(ValueError, match="client_auth 'maybe'"):
        server_context(info, client_auth="maybe")
    with pytest.raises(ValueError, match="needs client_ca_pem"):
        server_context(info, client_auth="require")
    with pytest.raises(ValueError, match="with client_auth 'none'"):
        server_context(info, client_ca_pem=info.pem_chain)


# --------------------------------------------------------------------------- SNI


@pytest.fixture(scope="module")
def sni_certs() -> dict[str, CertificateInfo]:
    return {
        "default": keypair("default.example"),
        "exact": keypair("www.example.com"),
        "wild": keypair("*.example.com"),
        "deeper": keypair("*.api.example.com"),
    }


def _selector(certs: dict[str, CertificateInfo]) -> tuple[SNISelector, ssl.SSLContext]:
    ctxs = {k: server_context(v) for k, v in certs.items()}
    selector = SNISelector(
        [
            ("*.example.com", ctxs["wild"]),
            ("www.example.com", ctxs["exact"]),
            (None, ctxs["default"]),
            ("*.api.example.com", ctxs["deeper"]),
        ]
    )
    base = selector.default
    assert base is ctxs["default"]
    selector.install(base)
    return selector, base


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("www.example.com", "exact"),
        ("WWW.EXAMPLE.COM", "exact"),
        ("shop.example.com", "wild"),
        ("a.b.example.com", "wild"),  # Gateway API wildcards cover several labels
        ("v1.api.example.com", "deeper"),  # the longest wildcard wins
        ("example.com", "default"),
        ("other.test", "default"),
        (None, "default"),
    ],
)
def test_sni_selection_over_real_handshakes(
    handshake: Handshake,
    sni_certs: dict[str, CertificateInfo],
    server_name: str | None,
    expected: str,
) -> None:
    _, base = _selector(sni_certs)
    client = trusting(*sni_certs.values())
    client.check_hostname = False  # the point is which certificate was served
    out = handshake(base, client, server_name)
    assert out.ok, out
    assert fingerprint(out.peer_der) == sni_certs[expected].fingerprint_sha256


def test_sni_select_without_default() -> None:
    a = server_context(keypair("a.example"))
    b = server_context(keypair("b.example"))
    first = SNISelector([("a.example", a), ("b.example", b)])
    assert first.select("b.example") is b
    assert first.select("c.example") is a  # the first certificate
    assert first.select(None) is a
    strict = SNISelector([("a.example", a)], default_to_first=False)
    assert strict.select("c.example") is None
    assert SNISelector([]).select("a.example") is None
    # earlier entries win for the same hostname
    assert SNISelector([("a.example", a), ("A.example.", b)]).select("a.example") is a


def test_unknown_name_without_default_is_refused(handshake: Handshake) -> None:
    info = keypair("a.example")
    ctx = server_context(info)
    SNISelector([("a.example", ctx)], default_to_first=False).install(ctx)
    assert handshake(ctx, trusting(info), "a.example").ok
    out = handshake(ctx, trusting(info), "z.example")
    assert "UNRECOGNIZED_NAME" in str(out.client_error).upper()


def test_selected_context_alpn_applies(handshake: Handshake) -> None:
    h1 = keypair("h1.example")
    both = keypair("both.example")
    base = server_context(h1, alpn=("http/1.1",))
    other = server_context(both, alpn=("h2", "http/1.1"))
    SNISelector([(None, base), ("both.example", other)]).install(base)
    out = handshake(base, trusting(h1, both, alpn=("h2", "http/1.1")), "both.example")
    assert out.ok, out
    assert fingerprint(out.peer_der) == both.fingerprint_sha256
    assert out.client_alpn == "h2"


def test_install_refuses_mixed_client_auth(pki: PKI) -> None:
    ca = pki.ca()
    plain = server_context(keypair("a.example"))
    mtls = server_context(keypair("b.example"), client_ca_pem=ca.cert_pem, client_auth="require")
    with pytest.raises(ValueError, match="same client certificate mode"):
        SNISelector([(None, plain), ("b.example", mtls)]).install(plain)


def test_client_auth_through_selector(
    handshake: Handshake, mtls: tuple[CertificateInfo, bytes, CertificateInfo, CertificateInfo]
) -> None:
    server, ca_pem, good, _ = mtls
    other = keypair("other.example")
    a = server_context(server, client_ca_pem=ca_pem, client_auth="require")
    b = server_context(other, client_ca_pem=ca_pem, client_auth="require")
    SNISelector([(None, a), ("other.example", b)]).install(a)
    out = handshake(a, _client(other, good), "other.example")
    assert out.ok, out
    assert fingerprint(out.peer_der) == other.fingerprint_sha256
    out = handshake(a, _client(other, None), "other.example")
    assert not out.ok


# --------------------------------------------------------------------------- backends


@pytest.fixture
def backend(pki: PKI) -> tuple[bytes, ssl.SSLContext, CertificateInfo]:
    """(CA PEM, backend server context, backend cert) for backend.ns.svc."""
    root = pki.ca("backend root")
    inter = pki.ca("backend intermediate", parent=root)
    leaf = pki.leaf(inter, ["backend.ns.svc", "*.pods.example"], uris=["spiffe://cluster/ns/x"])
    info = issued(leaf, inter)
    return root.cert_pem, server_context(info), info


def test_backend_verified_by_ca_and_hostname(
    handshake: Handshake, backend: tuple[bytes, ssl.SSLContext, CertificateInfo]
) -> None:
    ca_pem, server, info = backend
    client = client_context(ca_pem=ca_pem, verify_hostname="backend.ns.svc")
    assert isinstance(client, BackendSSLContext)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    # the caller passes the endpoint IP; the policy hostname is what is sent and checked
    out = handshake(server, client, "127.0.0.1")
    assert out.ok, out
    assert fingerprint(out.peer_der) == info.fingerprint_sha256
    assert out.client_alpn == "http/1.1"


def test_backend_wrong_hostname_refused(
    handshake: Handshake, backend: tuple[bytes, ssl.SSLContext, CertificateInfo]
) -> None:
    ca_pem, server, _ = backend
    out = handshake(server, client_context(ca_pem=ca_pem, verify_hostname="evil.ns.svc"), None)
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(out.client_error)


def test_backend_unknown_ca_refused(
    pki: PKI, handshake: Handshake, backend: tuple[bytes, ssl.SSLContext, CertificateInfo]
) -> None:
    _, server, _ = backend
    stranger = pki.ca("stranger").cert_pem
    out = handshake(server, client_context(ca_pem=stranger, verify_hostname="backend.ns.svc"), None)
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer" in str(out.client_error)


def test_backend_system_cas_do_not_trust_a_private_ca(
    handshake: Handshake, backend: tuple[bytes, ssl.SSLContext, CertificateInfo]
) -> None:
    _, server, _ = backend
    out = handshake(server, client_context(ca_pem=None, verify_hostname="backend.ns.svc"), None)
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)


@pytest.mark.parametrize(
    ("sans", "ok"),
    [
        (("backend.ns.svc",), True),
        (("nope.example", "x.pods.example"), True),  # wildcard in the certificate
        (("spiffe://cluster/ns/x",), True),
        (("spiffe://cluster/ns/y",), False),
        (("x.y.pods.example",), False),
        (("127.0.0.1",), False),
    ],
)
def test_backend_subject_alt_names(
    handshake: Handshake,
    backend: tuple[bytes, ssl.SSLContext, CertificateInfo],
    sans: tuple[str, ...],
    ok: bool,
) -> None:
    ca_pem, server, _ = backend
    # with subjectAltNames the hostname is only the SNI; the names decide
    client = client_context(ca_pem=ca_pem, verify_hostname="sni.only", subject_alt_names=sans)
    out = handshake(server, client, None)
    assert out.ok is ok, out
    if not ok:
        assert isinstance(out.client_error, ssl.SSLCertVerificationError)
        assert "no subjectAltName matches" in str(out.client_error)


def test_backend_client_certificate(
    pki: PKI, handshake: Handshake, backend: tuple[bytes, ssl.SSLContext, CertificateInfo]
) -> None:
    ca_pem, _, info = backend
    gw_ca = pki.ca("gateway client ca")
    gw_cert = issued(pki.leaf(gw_ca, ["gateway.example"]))
    server = server_context(info, client_ca_pem=gw_ca.cert_pem, client_auth="require")
    client = client_context(ca_pem=ca_pem, verify_hostname="backend.ns.svc", client_cert=gw_cert)
    out = handshake(server, client, None)
    assert out.ok, out
    assert fingerprint(out.server_peer_der) == gw_cert.fingerprint_sha256


async def _asyncio_exchange(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[bytes | None, BaseException | None]:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            except ssl.SSLError as exc:
                return None, exc
            data = await reader.read()
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
            return data, None
    finally:
        srv.close()
        await srv.wait_closed()


def test_backend_checks_apply_on_asyncio_transports(
    backend: tuple[bytes, ssl.SSLContext, CertificateInfo],
) -> None:
    """asyncio (and uvloop) wrap through wrap_bio: hostname and SAN checks hold there."""
    ca_pem, server, _ = backend
    good = client_context(ca_pem=ca_pem, verify_hostname="backend.ns.svc")
    assert asyncio.run(_asyncio_exchange(server, good)) == (b"ok", None)
    bad_san = client_context(ca_pem=ca_pem, verify_hostname="x", subject_alt_names=["a.b"])
    data, err = asyncio.run(_asyncio_exchange(server, bad_san))
    assert data is None
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert "no subjectAltName matches a.b" in str(err)
    wrong_host = client_context(ca_pem=ca_pem, verify_hostname="wrong.ns.svc")
    data, err = asyncio.run(_asyncio_exchange(server, wrong_host))
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(err)


def test_uvloop_wrap_bio_path(backend: tuple[bytes, ssl.SSLContext, CertificateInfo]) -> None:
    uvloop = pytest.importorskip("uvloop")
    ca_pem, server, _ = backend
    bad = client_context(ca_pem=ca_pem, verify_hostname="x", subject_alt_names=["a.b"])
    good = client_context(ca_pem=ca_pem, verify_hostname="backend.ns.svc")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_asyncio_exchange(server, good)) == (b"ok", None)
        data, err = runner.run(_asyncio_exchange(server, bad))
    assert data is None
    assert isinstance(err, ssl.SSLCertVerificationError)
    assert "no subjectAltName matches a.b" in str(err)


def test_key_material_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without memfd_create the fallback writes to a private temporary directory and
    # removes it afterwards.
    import tempfile

    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ctx = server_context(keypair("a.example"))
    assert ctx.cert_store_stats() is not None
    assert os.listdir(str(tmp_path)) == []
