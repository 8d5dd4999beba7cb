"""BackendContexts: client contexts for BackendTLSPolicy backends, one per settings key,
built on first use in the serving process, failures remembered and logged once."""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization

from gatewayd.routing.snapshot.backends import BackendTLS, ClientCertificate
from gatewayd.tls.backend import BackendContexts, BackendTLSSetupError
from gatewayd.tls.certs import load_keypair
from gatewayd.tls.context import BackendSSLContext, load_chain_from_memory

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import PKI, Outcome

    Handshake = Callable[[ssl.SSLContext, ssl.SSLContext, str | None], Outcome]

NOW = dt.datetime.now(dt.UTC)


def settings(hostname: str = "backend.example", **kw: object) -> BackendTLS:
    return BackendTLS(policy="default/p", hostname=hostname, **kw)  # type: ignore[arg-type]


def test_one_context_per_settings_key(pki: PKI) -> None:
    ca = pki.ca()
    cache = BackendContexts()
    a = cache.get(settings(ca_pem=ca.cert_pem))
    assert isinstance(a, BackendSSLContext)
    assert a.backend_hostname == "backend.example"
    assert a.verify_mode == ssl.CERT_REQUIRED and a.check_hostname
    # Equal settings (a new snapshot with the same policy): the same context.
    assert cache.get(settings(ca_pem=ca.cert_pem)) is a
    sans = cache.get(settings(ca_pem=ca.cert_pem, subject_alt_names=("alt.example",)))
    assert sans is not a
    assert sans.subject_alt_names == ("alt.example",) and not sans.check_hostname
    system = cache.get(settings())  # wellKnownCACertificates: System
    assert system is not a and len(cache) == 3


def test_client_certificate_is_presented(pki: PKI, handshake: Handshake) -> None:
    ca = pki.ca()
    server_leaf = pki.leaf(ca, ("backend.example",))
    client_ca = pki.ca("client CA")
    leaf = pki.leaf(client_ca, ("gw-client",))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_chain_from_memory(server, load_keypair(server_leaf.cert_pem, server_leaf.key_pem, now=NOW))
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cadata=client_ca.cert_pem.decode())
    client = ClientCertificate(chain_pem=leaf.cert_pem, key_pem=leaf.key_pem)
    cache = BackendContexts()
    out = handshake(
        server, cache.get(settings(ca_pem=ca.cert_pem, client_certificate=client)), None
    )
    assert out.ok, out
    assert out.server_peer_der == leaf.cert.public_bytes(serialization.Encoding.DER)
    # Without the Gateway's certificate the backend refuses.
    out = handshake(server, cache.get(settings(ca_pem=ca.cert_pem)), None)
    assert not out.ok and out.server_error is not None


def test_unusable_client_certificate_fails_like_a_connect_error_and_is_logged_once(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    ca = pki.ca()
    expired = pki.leaf(
        ca,
        ("gw-client",),
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10),
        not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
    )
    tls = settings(
        ca_pem=ca.cert_pem,
        client_certificate=ClientCertificate(chain_pem=expired.cert_pem, key_pem=expired.key_pem),
    )
    cache = BackendContexts()
    caplog.set_level(logging.ERROR, logger="gatewayd.tls.backend")
    for _ in range(3):
        with pytest.raises(BackendTLSSetupError, match="expired") as info:
            cache.get(tls)
        assert isinstance(info.value, OSError)  # counted as upstream_cx_connect_fail
    assert len([r for r in caplog.records if "default/p" in r.getMessage()]) == 1


def test_least_recently_used_context_is_dropped(pki: PKI) -> None:
    ca = pki.ca()
    cache = BackendContexts(max_size=2)
    a = cache.get(settings("a.example", ca_pem=ca.cert_pem))
    cache.get(settings("b.example", ca_pem=ca.cert_pem))
    assert cache.get(settings("a.example", ca_pem=ca.cert_pem)) is a  # a is now recent
    cache.get(settings("c.example", ca_pem=ca.cert_pem))  # drops b
    assert len(cache) == 2
    assert cache.get(settings("a.example", ca_pem=ca.cert_pem)) is a


def test_alpn_is_part_of_the_cache_key(pki: PKI) -> None:
    ca = pki.ca()
    cache = BackendContexts()
    http = cache.get(settings(ca_pem=ca.cert_pem))
    # A TLSRoute splice offers no ALPN: another context for the same policy, kept too.
    l4 = cache.get(settings(ca_pem=ca.cert_pem), alpn=())
    assert l4 is not http and len(cache) == 2
    assert cache.get(settings(ca_pem=ca.cert_pem), alpn=()) is l4
    assert cache.get(settings(ca_pem=ca.cert_pem)) is http
