from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
from typing import TYPE_CHECKING

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa

from gatewayd.routing.model import ConfigMap, Meta, Secret
from gatewayd.tls.certs import (
    CertificateInfo,
    InvalidCertificate,
    ca_bundle_from_config_map,
    dns_name_matches,
    keypair_from_secret,
    load_ca_bundle,
    load_keypair,
    matches_hostname,
    secret_manifest,
    self_signed,
)

if TYPE_CHECKING:
    from conftest import PKI


def now() -> dt.datetime:
    """The current instant, read when used: a value taken at import is minutes old by
    the time a long suite reaches these tests, older than a fresh certificate's
    notBefore (now - 5 min)."""
    return dt.datetime.now(dt.UTC)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


# --------------------------------------------------------------------------- self_signed


@pytest.mark.parametrize("key_type", ["ec", "rsa", "ed25519"])
def test_self_signed_loads_and_ssl_accepts_it(key_type: str) -> None:
    cert_pem, key_pem = self_signed(["www.example.com", "*.api.example.com"], key_type=key_type)
    info = load_keypair(cert_pem, key_pem, now=now())
    assert info.dns_names == ("www.example.com", "*.api.example.com")
    assert info.fingerprint_sha256 == hashlib.sha256(_der(cert_pem)).hexdigest()
    assert info.not_before <= now() < info.not_after
    assert dt.timedelta(days=364) < info.not_after - info.not_before < dt.timedelta(days=366)
    # what load_keypair returns is what ssl wants
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_verify_locations(cadata=info.pem_chain.decode())
    assert ctx.cert_store_stats()["x509"] == 1


def test_self_signed_ip_hosts_go_to_ip_san() -> None:
    cert_pem, key_pem = self_signed(["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert load_keypair(cert_pem, key_pem, now=now()).dns_names == ("localhost",)


def test_self_signed_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"at least one host"):
        self_signed([])
    with pytest.raises(ValueError, match=r"key_type 'dsa'"):
        self_signed(["a.example"], key_type="dsa")


# --------------------------------------------------------------------------- load_keypair


def test_ca_signed_chain_leaf_first(pki: PKI) -> None:
    root = pki.ca()
    inter = pki.ca("intermediate", parent=root)
    leaf = pki.leaf(inter, ["shop.example.com"])
    chain = leaf.cert_pem + inter.cert_pem + root.cert_pem
    info = load_keypair(b"junk before\n" + chain, leaf.key_pem, now=now())
    assert info.pem_chain == chain  # normalised: the junk is gone, order kept
    assert info.pem_key.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert info.dns_names == ("shop.example.com",)
    assert info.fingerprint_sha256 == hashlib.sha256(_der(leaf.cert_pem)).hexdigest()


def test_cn_is_the_fallback_without_san(pki: PKI) -> None:
    root = pki.ca()
    leaf = pki.leaf(root, [], cn="Legacy.Example.com", san=False)
    assert load_keypair(leaf.cert_pem, leaf.key_pem, now=now()).dns_names == ("legacy.example.com",)


def test_expired(pki: PKI) -> None:
    root = pki.ca()
    leaf = pki.leaf(
        root,
        not_before=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(InvalidCertificate, match=r"^certificate expired on 2026-01-01$"):
        load_keypair(leaf.cert_pem, leaf.key_pem, now=dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    # valid the day before, also with a naive (UTC) datetime
    load_keypair(leaf.cert_pem, leaf.key_pem, now=dt.datetime(2025, 12, 31))


def test_not_yet_valid() -> None:
    future = now() + dt.timedelta(days=10)
    cert_pem, key_pem = self_signed(["a.example"], now=future)
    day = (future - dt.timedelta(minutes=5)).strftime("%Y-%m-%d")
    with pytest.raises(InvalidCertificate, match=f"^certificate is not valid before {day}$"):
        load_keypair(cert_pem, key_pem, now=now())


def test_expired_intermediate_is_named(pki: PKI) -> None:
    root = pki.ca()
    inter = pki.ca(
        "old intermediate",
        parent=root,
        not_before=now() - dt.timedelta(days=9),
        not_after=now() - dt.timedelta(days=2),
    )
    leaf = pki.leaf(inter)
    with pytest.raises(InvalidCertificate, match=r"certificate 2 in tls.crt \(CN=old interm"):
        load_keypair(leaf.cert_pem + inter.cert_pem, leaf.key_pem, now=now())


def test_key_mismatch() -> None:
    cert_pem, _ = self_signed(["a.example"])
    _, other_key = self_signed(["a.example"])
    with pytest.raises(InvalidCertificate, match=r"^private key does not match the certificate$"):
        load_keypair(cert_pem, other_key, now=now())


def test_wrong_chain_order_key_matches_a_later_cert(pki: PKI) -> None:
    root = pki.ca()
    leaf = pki.leaf(root)
    with pytest.raises(InvalidCertificate, match=r"out of order.*number 2; the leaf must"):
        load_keypair(root.cert_pem + leaf.cert_pem, leaf.key_pem, now=now())


def test_wrong_chain_order_intermediates_swapped(pki: PKI) -> None:
    root = pki.ca()
    inter = pki.ca("intermediate", parent=root)
    leaf = pki.leaf(inter)
    with pytest.raises(
        InvalidCertificate, match=r"certificate 1 \(CN=www.example.com\) is not issued by "
    ):
        load_keypair(leaf.cert_pem + root.cert_pem + inter.cert_pem, leaf.key_pem, now=now())


def test_unrelated_second_certificate(pki: PKI) -> None:
    leaf = pki.leaf(pki.ca("one"))
    with pytest.raises(InvalidCertificate, match="not issued by certificate 2 \\(CN=two\\)"):
        load_keypair(leaf.cert_pem + pki.ca("two").cert_pem, leaf.key_pem, now=now())


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        (None, b"k", "^Secret has no tls.crt$"),
        (b"", b"k", "^Secret has no tls.crt$"),
        (b"C", None, "^Secret has no tls.key$"),
        (b"C", b"  \n", "^Secret has no tls.key$"),
        (b"hello world", b"k", "^tls.crt is not a PEM certificate$"),
        (b"\x30\x82\x01\x00", b"k", "looks like DER"),
        (b"-----BEGIN PRIVATE KEY-----\nx\n", b"k", "are tls.crt and tls.key swapped"),
        (
            b"-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
            b"k",
            "tls.crt holds a malformed PEM certificate",
        ),
    ],
)
def test_garbage_inputs(cert: bytes | None, key: bytes | None, message: str) -> None:
    with pytest.raises(InvalidCertificate, match=message):
        load_keypair(cert, key, now=now())


def test_garbage_keys() -> None:
    cert_pem, key_pem = self_signed(["a.example"])
    with pytest.raises(InvalidCertificate, match=r"^tls.key is not a PEM private key$"):
        load_keypair(cert_pem, b"not a key", now=now())
    with pytest.raises(InvalidCertificate, match=r"holds a certificate: are tls.crt and tls.key"):
        load_keypair(cert_pem, cert_pem, now=now())
    broken = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(InvalidCertificate, match=r"tls.key is not a usable private key"):
        load_keypair(cert_pem, broken, now=now())
    key = serialization.load_pem_private_key(key_pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(InvalidCertificate, match=r"tls.key is encrypted"):
        load_keypair(cert_pem, encrypted, now=now())


def test_weak_or_unsupported_keys(pki: PKI) -> None:
    root = pki.ca()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    leaf = pki.leaf(root, key=weak)
    with pytest.raises(InvalidCertificate, match=r"1024-bit RSA key; at least 2048"):
        load_keypair(leaf.cert_pem, leaf.key_pem, now=now())
    dsa_key = dsa.generate_private_key(2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(InvalidCertificate, match=r"DSAPrivateKey key; RSA, EC or Ed25519"):
        load_keypair(leaf.cert_pem, dsa_key, now=now())


def test_keypair_from_secret() -> None:
    cert_pem, key_pem = self_signed(["a.example"])
    secret = Secret(
        meta=Meta(namespace="default", name="s"),
        type="kubernetes.io/tls",
        data=(("tls.crt", cert_pem), ("tls.key", key_pem)),
    )
    assert keypair_from_secret(secret, now=now()).dns_names == ("a.example",)
    empty = Secret(meta=Meta(namespace="default", name="s"), data=(("tls.crt", cert_pem),))
    with pytest.raises(InvalidCertificate, match=r"Secret has no tls.key"):
        keypair_from_secret(empty, now=now())


# --------------------------------------------------------------------------- CA bundles


def test_ca_bundle_normalised(pki: PKI) -> None:
    root = pki.ca()
    other = pki.ca("other root")
    bundle = load_ca_bundle("# comment\n" + (root.cert_pem + other.cert_pem).decode())
    assert bundle == root.cert_pem + other.cert_pem
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=bundle.decode())
    assert ctx.cert_store_stats()["x509_ca"] == 2


def test_ca_bundle_accepts_a_pinned_self_signed_cert() -> None:
    cert_pem, _ = self_signed(["backend.example"])
    assert load_ca_bundle(cert_pem) == cert_pem


def test_ca_bundle_rejects(pki: PKI) -> None:
    with pytest.raises(InvalidCertificate, match=r"CA bundle is empty"):
        load_ca_bundle("")
    with pytest.raises(InvalidCertificate, match=r"CA bundle is not a PEM certificate"):
        load_ca_bundle(b"nonsense")
    leaf = pki.leaf(pki.ca())
    with pytest.raises(InvalidCertificate, match=r"holds no CA certificate"):
        load_ca_bundle(leaf.cert_pem)


def test_ca_bundle_from_config_map(pki: PKI) -> None:
    root = pki.ca()
    cm = ConfigMap(meta=Meta(namespace="ns", name="ca"), data=(("ca.crt", root.cert_pem.decode()),))
    assert ca_bundle_from_config_map(cm) == root.cert_pem
    with pytest.raises(InvalidCertificate, match=r"ConfigMap has no ca.crt"):
        ca_bundle_from_config_map(ConfigMap(meta=Meta(namespace="ns", name="ca")))


# --------------------------------------------------------------------------- hostnames


def _info(*names: str) -> CertificateInfo:
    return CertificateInfo(
        pem_chain=b"",
        pem_key=b"",
        dns_names=names,
        not_before=now(),
        not_after=now(),
        fingerprint_sha256="",
    )


@pytest.mark.parametrize(
    ("names", "host", "expected"),
    [
        (("www.example.com",), "www.example.com", True),
        (("www.example.com",), "WWW.Example.COM.", True),
        (("www.example.com",), "example.com", False),
        (("*.example.com",), "a.example.com", True),
        (("*.example.com",), "A.EXAMPLE.COM", True),
        (("*.example.com",), "example.com", False),
        (("*.example.com",), "a.b.example.com", False),  # one label only
        (("*.example.com",), "*.example.com", True),  # the identical wildcard
        (("*.example.com",), "*.b.example.com", False),
        (("*.com",), "example.com", False),  # no wildcard straight over a TLD
        (("f*.example.com",), "foo.example.com", False),  # no partial-label wildcards
        (("a.*.example.com",), "a.b.example.com", False),
        (("x.example", "*.example.com"), "b.example.com", True),
        ((), "a.example", False),
        (("a.example",), "", False),
    ],
)
def test_matches_hostname(names: tuple[str, ...], host: str, expected: bool) -> None:
    assert matches_hostname(_info(*names), host) is expected


def test_dns_name_matches_is_the_per_name_rule() -> None:
    assert dns_name_matches("*.Example.com", "x.example.com")
    assert not dns_name_matches("*.example.com", ".example.com")


# --------------------------------------------------------------------------- manifest


def test_secret_manifest_round_trip() -> None:
    cert_pem, key_pem = self_signed(["a.example"])
    doc = yaml.safe_load(secret_manifest(cert_pem, key_pem, name="a-example-tls", namespace="ns"))
    assert doc["apiVersion"] == "v1"
    assert doc["kind"] == "Secret"
    assert doc["type"] == "kubernetes.io/tls"
    assert doc["metadata"] == {"name": "a-example-tls", "namespace": "ns"}
    assert base64.b64decode(doc["data"]["tls.crt"]) == cert_pem
    assert base64.b64decode(doc["data"]["tls.key"]) == key_pem


@pytest.mark.parametrize(
    ("name", "namespace", "message"),
    [
        ("Bad_Name", "ns", "Secret name 'Bad_Name'"),
        ("ok", "a.b", "namespace 'a.b'"),
        ("x" * 254, "ns", "at most 253"),
        ("ok", "", "namespace ''"),
    ],
)
def test_secret_manifest_rejects_bad_names(name: str, namespace: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        secret_manifest(b"c", b"k", name=name, namespace=namespace)


def test_ec_key_in_sec1_and_pkcs8_forms_both_load(pki: PKI) -> None:
    root = pki.ca()
    leaf = pki.leaf(root)
    assert isinstance(leaf.key, ec.EllipticCurvePrivateKey)
    sec1 = leaf.key_pem  # "BEGIN EC PRIVATE KEY"
    assert b"EC PRIVATE KEY" in sec1
    info = load_keypair(leaf.cert_pem, sec1, now=now())
    assert load_keypair(leaf.cert_pem, info.pem_key, now=now()) == info
