"""Certificates: load and check key pairs and CA bundles before they reach ``ssl``.

``ssl.SSLContext.load_cert_chain`` reports every problem as an opaque OpenSSL error
("[SSL] PEM lib"), so everything that can be wrong with a Secret is checked here first
with ``cryptography`` and reported in words that name the key (``tls.crt``/``tls.key``)
and the problem, for the Listener's ``ResolvedRefs=False / InvalidCertificateRef``
condition.

Also: a self-signed certificate generator for ``gatewayd cert`` and tests, and the
``kubernetes.io/tls`` Secret manifest that wraps it.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

# ``cryptography`` is imported by the functions that parse or build certificates, not
# here: a daemon without TLS listeners or BackendTLSPolicies never loads it (about 8 MB
# of RSS), and routing imports this module for its names and ``dns_name_matches``.
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

__all__ = [
    "CA_BUNDLE_KEY",
    "TLS_CERT_KEY",
    "TLS_PRIVATE_KEY_KEY",
    "CertificateInfo",
    "InvalidCertificate",
    "dns_name_matches",
    "load_ca_bundle",
    "load_keypair",
    "matches_hostname",
    "secret_manifest",
    "self_signed",
]

TLS_CERT_KEY: Final = "tls.crt"
TLS_PRIVATE_KEY_KEY: Final = "tls.key"
CA_BUNDLE_KEY: Final = "ca.crt"  # the key BackendTLSPolicy / frontend validation read

# OpenSSL 3's default security level (2) refuses RSA keys under 2048 bits with an opaque
# "ee key too small"; say it in words instead.
_MIN_RSA_BITS: Final = 2048


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """A checked key pair, normalised for ``ssl``: ready for ``load_cert_chain``."""

    pem_chain: bytes  # leaf first, then the intermediates, re-encoded as clean PEM
    pem_key: bytes  # unencrypted PKCS#8 PEM
    dns_names: tuple[str, ...]  # SAN dNSNames (lower-case); the subject CN when no SAN
    not_before: dt.datetime  # aware, UTC
    not_after: dt.datetime  # aware, UTC
    fingerprint_sha256: str  # lower-case hex of SHA-256 over the leaf's DER, no colons


class InvalidCertificate(ValueError):
    """A certificate, key or bundle that cannot be used; the message says why."""


# --------------------------------------------------------------------------- loading


def load_keypair(
    cert_pem: bytes | None, key_pem: bytes | None, *, now: dt.datetime
) -> CertificateInfo:
    """Check a ``tls.crt`` / ``tls.key`` pair and return it normalised.

    Checks: both present; ``tls.crt`` holds PEM certificates (leaf first); ``tls.key`` is
    an unencrypted RSA (>= 2048 bits), EC or Ed25519 key matching the leaf; every
    certificate is valid at ``now``; each certificate is issued by the next one.
    """
    from cryptography.hazmat.primitives import hashes, serialization

    if not cert_pem or not cert_pem.strip():
        raise InvalidCertificate(f"Secret has no {TLS_CERT_KEY}")
    if not key_pem or not key_pem.strip():
        raise InvalidCertificate(f"Secret has no {TLS_PRIVATE_KEY_KEY}")
    chain = _load_certificates(cert_pem, TLS_CERT_KEY)
    key = _load_private_key(key_pem)

    key_spki = _spki(key.public_key())
    if _spki(chain[0].public_key()) != key_spki:
        for i, cert in enumerate(chain[1:], start=2):
            if _spki(cert.public_key()) == key_spki:
                raise InvalidCertificate(
                    f"{TLS_CERT_KEY} lists its chain out of order: the certificate matching "
                    f"{TLS_PRIVATE_KEY_KEY} ({_name(cert)}) is number {i}; the leaf must "
                    "come first"
                )
        raise InvalidCertificate("private key does not match the certificate")

    when = _aware(now)
    for i, cert in enumerate(chain):
        what = "certificate" if i == 0 else f"certificate {i + 1} in {TLS_CERT_KEY} ({_name(cert)})"
        if when > cert.not_valid_after_utc:
            raise InvalidCertificate(f"{what} expired on {_day(cert.not_valid_after_utc)}")
        if when < cert.not_valid_before_utc:
            raise InvalidCertificate(
                f"{what} is not valid before {_day(cert.not_valid_before_utc)}"
            )

    # RFC 8446 4.4.2: "The sender's certificate MUST come in the first CertificateEntry
    # in the list.  Each following certificate SHOULD directly certify the one
    # immediately preceding it."  Clients reject chains that do not, so refuse early.
    for i in range(len(chain) - 1):
        if not _issued_by(chain[i], chain[i + 1]):
            raise InvalidCertificate(
                f"{TLS_CERT_KEY} chain is out of order: certificate {i + 1} "
                f"({_name(chain[i])}) is not issued by certificate {i + 2} "
                f"({_name(chain[i + 1])})"
            )

    leaf = chain[0]
    return CertificateInfo(
        pem_chain=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        pem_key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        dns_names=_dns_names(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def load_ca_bundle(pem: bytes | str) -> bytes:
    """Validate a PEM CA bundle and return it normalised (clean PEM, one cert after another).

    At least one certificate must be usable as a trust anchor: a CA (basicConstraints
    CA:TRUE) or a self-signed certificate (pinning a backend's own certificate).
    """
    from cryptography.hazmat.primitives import serialization

    raw = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    if not raw.strip():
        raise InvalidCertificate("CA bundle is empty")
    certs = _load_certificates(raw, "CA bundle")
    if not any(_is_ca(c) or _self_signed(c) for c in certs):
        raise InvalidCertificate(
            "CA bundle holds no CA certificate (none has basicConstraints CA:TRUE or is "
            "self-signed)"
        )
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def matches_hostname(info: CertificateInfo, hostname: str) -> bool:
    """Whether the certificate's names cover ``hostname`` (RFC 6125 6.4).

    A wildcard is only a whole left-most label and matches exactly one label:
    ``*.example.com`` covers ``a.example.com``, not ``example.com`` nor
    ``a.b.example.com``.  A wildcard ``hostname`` (a Listener's) is covered only by the
    identical wildcard name.  Case and a trailing dot are ignored.
    """
    return any(dns_name_matches(name, hostname) for name in info.dns_names)


def dns_name_matches(pattern: str, hostname: str) -> bool:
    """Whether one certificate DNS name ``pattern`` covers ``hostname`` (RFC 6125 6.4)."""
    host = _norm(hostname)
    pat = _norm(pattern)
    if not host or not pat:
        return False
    if pat == host:
        return True
    # RFC 6125 6.4.3: "the client SHOULD NOT attempt to match a presented identifier in
    # which the wildcard character comprises a label other than the left-most label" and
    # "If the wildcard character is the only character of the left-most label in the
    # presented identifier, the client SHOULD NOT compare against anything but the
    # left-most label of the reference identifier".  Partial-label wildcards (f*.x) are
    # not honoured, as browsers do not; nor is a wildcard directly over a TLD (*.com).
    if pat.startswith("*.") and "*" not in pat[2:] and "." in pat[2:]:
        first, _, rest = host.partition(".")
        return bool(first) and first != "*" and rest == pat[2:]
    return False


# --------------------------------------------------------------------------- generation


def self_signed(
    hosts: Sequence[str],
    *,
    days: int = 365,
    key_type: str = "ec",
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A self-signed server/client certificate for ``hosts``: ``(cert_pem, key_pem)``.

    ``hosts`` become the subjectAltName (DNS names, or IP addresses for IP literals); the
    first one is also the subject CN.  ``key_type``: ``ec`` (P-256), ``rsa`` (2048) or
    ``ed25519``.  Validity starts five minutes before ``now`` (clock skew) and lasts
    ``days``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hosts:
        raise ValueError("at least one host is needed")
    if days < 1:
        raise ValueError("days must be at least 1")
    key = _new_key(key_type)
    start = _aware(now) if now is not None else dt.datetime.now(dt.UTC)
    cn = _norm(hosts[0]) if len(hosts[0]) <= 64 else "gatewayd"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - dt.timedelta(minutes=5))
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


# RFC 1123 DNS subdomain (metadata.name of a Secret) and DNS label (a namespace).
_LABEL_RE: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN: Final = re.compile(rf"{_LABEL_RE}(\.{_LABEL_RE})*")
_DNS_LABEL: Final = re.compile(_LABEL_RE)


def secret_manifest(cert_pem: bytes, key_pem: bytes, *, name: str, namespace: str) -> str:
    """A ``kubernetes.io/tls`` Secret manifest (YAML) holding the pair, base64-encoded."""
    import yaml

    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(
            f"Secret name {name!r} is not a valid DNS subdomain (lower-case letters, digits, "
            "'-' and '.', at most 253 characters)"
        )
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a valid DNS label (lower-case letters, digits "
            "and '-', at most 63 characters)"
        )
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            TLS_CERT_KEY: base64.b64encode(cert_pem).decode("ascii"),
            TLS_PRIVATE_KEY_KEY: base64.b64encode(key_pem).decode("ascii"),
        },
    }
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 20)


# --------------------------------------------------------------------------- helpers


def _load_certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" not in pem:
        hint = ""
        if b"PRIVATE KEY-----" in pem:
            hint = " (it holds a private key: are tls.crt and tls.key swapped?)"
        elif pem[:1] == b"\x30":
            hint = " (it looks like DER: PEM is required)"
        raise InvalidCertificate(f"{what} is not a PEM certificate{hint}")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise InvalidCertificate(f"{what} holds a malformed PEM certificate ({exc})") from None
    if not certs:
        raise InvalidCertificate(f"{what} is not a PEM certificate")
    return certs


def _load_private_key(pem: bytes) -> PrivateKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    what = TLS_PRIVATE_KEY_KEY
    if b"-----BEGIN" not in pem or b"PRIVATE KEY-----" not in pem:
        hint = ""
        if b"-----BEGIN CERTIFICATE-----" in pem:
            hint = " (it holds a certificate: are tls.crt and tls.key swapped?)"
        raise InvalidCertificate(f"{what} is not a PEM private key{hint}")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        # cryptography: "Password was not given but private key is encrypted"
        raise InvalidCertificate(
            f"{what} is encrypted; an unencrypted private key is required"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidCertificate(f"{what} is not a usable private key ({exc})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise InvalidCertificate(
                f"{what} is a {key.key_size}-bit RSA key; at least {_MIN_RSA_BITS} bits are "
                "required"
            )
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise InvalidCertificate(
        f"{what} is a {type(key).__name__.removeprefix('_')} key; RSA, EC or Ed25519 is required"
    )


def _spki(public_key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public_bytes = getattr(public_key, "public_bytes", None)
    if public_bytes is None:  # pragma: no cover - every cryptography key type has it
        return b""
    out = public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bytes(out)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def _self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject and _issued_by(cert, cert)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        return tuple(_norm(n) for n in san.get_values_for_type(x509.DNSName))
    # RFC 6125 6.4.4: the CN is only a fallback when there is no subjectAltName.
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    out: list[str] = []
    for attr in cns:
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
        out.append(_norm(value))
    return tuple(out)


def _name(cert: x509.Certificate) -> str:
    from cryptography.x509.oid import NameOID

    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return "CN=" + (value if isinstance(value, str) else value.decode("latin-1"))
    return cert.subject.rfc4514_string() or "no subject"


def _norm(name: str) -> str:
    return name.strip().lower().removesuffix(".")


def _aware(when: dt.datetime) -> dt.datetime:
    # A naive datetime is taken as UTC (what the Kubernetes API and x509 speak).
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def _day(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d")


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    out: list[x509.GeneralName] = []
    for host in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            out.append(x509.DNSName(_norm(host)))
    return out


def _new_key(key_type: str) -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"key_type {key_type!r}: expected 'ec', 'rsa' or 'ed25519'")
