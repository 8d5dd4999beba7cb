"""HTTPS listeners: certificate content in the listener status, TLS material in the snapshot,
and the listener comparison behind 421 Misdirected Request."""

from __future__ import annotations

import datetime as dt
import pickle
from pathlib import Path
from typing import Any

import pytest
from status_builders import (
    ca_pem,
    config,
    gateway,
    http_route,
    listener,
    listener_status,
    parent,
    terminate,
    tls_secret,
)

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import load_paths
from gatewayd.routing.config.model import (
    ConfigMap,
    FrontendValidation,
    GatewayTLSConfig,
    Meta,
    ObjectReference,
    Secret,
    SecretObjectReference,
)
from gatewayd.routing.control.listeners import keypair_from_secret
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.rules import TerminateTLS
from gatewayd.routing.snapshot.table import HTTPRouteTable
from gatewayd.tls.certs import InvalidCertificate, self_signed

NOW = "2030-06-01T12:00:00Z"
NOW_DT = dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)


def conditions_by_type(obj: Any) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in obj["conditions"]}


def _secret(name: str, cert: bytes, key: bytes, namespace: str = "default") -> Secret:
    return Secret(
        meta=Meta(namespace=namespace, name=name),
        type="kubernetes.io/tls",
        data=(("tls.crt", cert), ("tls.key", key)),
    )


def _pair(
    host: str = "www.example.com", *, start: dt.datetime = NOW_DT, days: int = 30
) -> tuple[bytes, bytes]:
    return self_signed([host], days=days, now=start)


def _status(*objects: Any, listeners: tuple[Any, ...]) -> Any:
    return resolve(config(gateway("gw", *listeners), http_route("r"), *objects), now=NOW)


def test_valid_pair_is_resolved_and_carried_to_the_snapshot() -> None:
    cert, key = _pair()
    res = _status(
        _secret("good", cert, key),
        listeners=(listener("https", 443, "HTTPS", "www.example.com", tls=terminate("good")),),
    )
    c = conditions_by_type(listener_status(res, "gw", "https"))
    assert c["ResolvedRefs"] == ("True", "ResolvedRefs")
    (binding,) = res.listeners
    assert [info.dns_names for info in binding.certificates] == [("www.example.com",)]
    snap = compile_snapshot(res, generation=1)
    (lp,) = snap.ports.values()
    assert lp.protocol == "HTTPS"
    (t,) = lp.terminate
    assert isinstance(t, TerminateTLS)
    assert (t.listener_name, t.hostname, t.client_auth) == ("https", "www.example.com", "none")
    assert t.certificates[0].pem_key.startswith(b"-----BEGIN PRIVATE KEY-----")
    # Workers get the snapshot pickled: the TLS material must survive it.
    again = pickle.loads(pickle.dumps(snap))
    assert again.ports[("127.0.10.1", 443)].terminate == lp.terminate
    # /config_dump shows fingerprints, never key material.
    dumped = str(snap.to_json())
    assert t.certificates[0].fingerprint_sha256 in dumped
    assert "PRIVATE KEY" not in dumped


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: _pair(start=NOW_DT - dt.timedelta(days=60), days=30), "expired on"),
        (lambda: (_pair()[0], _pair()[1]), "private key does not match the certificate"),
        (lambda: (b"-----BEGIN CERTIFICATE-----\nnot base64\n", _pair()[1]), "malformed PEM"),
        (lambda: (b"just text", _pair()[1]), "tls.crt is not a PEM certificate"),
        (lambda: (_pair()[0], b"garbage"), "tls.key is not a PEM private key"),
    ],
    ids=["expired", "key-mismatch", "malformed-pem", "not-pem", "bad-key"],
)
def test_invalid_certificate_content_is_reported_and_others_keep_serving(
    make: object, words: str
) -> None:
    cert, key = make()  # type: ignore[operator]
    good_cert, good_key = _pair("ok.example.com")
    res = _status(
        _secret("bad", cert, key),
        _secret("good", good_cert, good_key),
        listeners=(
            listener("broken", 443, "HTTPS", "broken.example.com", tls=terminate("bad")),
            listener("fine", 443, "HTTPS", "ok.example.com", tls=terminate("good")),
        ),
    )
    broken = conditions_by_type(listener_status(res, "gw", "broken"))
    assert broken["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert broken["Programmed"] == ("False", "Invalid")
    message = next(
        c["message"]
        for c in listener_status(res, "gw", "broken")["conditions"]
        if c["type"] == "ResolvedRefs"
    )
    assert "tls.certificateRefs[0]" in message and "default/bad" in message
    assert words in message
    fine = conditions_by_type(listener_status(res, "gw", "fine"))
    assert fine["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert [b.listener_name for b in res.listeners] == ["fine"]


def test_cross_namespace_secret_needs_a_grant() -> None:
    cert, key = _pair()
    ref = SecretObjectReference(name="c", namespace="certs")
    res = _status(
        _secret("c", cert, key, "certs"),
        listeners=(listener("https", 443, "HTTPS", tls=terminate(ref)),),
    )
    c = conditions_by_type(listener_status(res, "gw", "https"))
    assert c["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert res.listeners == ()


def test_several_certificates_per_listener_keep_their_order() -> None:
    rsa_cert, rsa_key = self_signed(["a.example.com"], key_type="rsa", now=NOW_DT)
    ec_cert, ec_key = self_signed(["b.example.com"], now=NOW_DT)
    res = _status(
        _secret("one", rsa_cert, rsa_key),
        _secret("two", ec_cert, ec_key),
        listeners=(listener("https", 443, "HTTPS", tls=terminate("one", "two")),),
    )
    (binding,) = res.listeners
    assert [i.dns_names for i in binding.certificates] == [("a.example.com",), ("b.example.com",)]


def _validated(mode: str, *refs: ObjectReference) -> GatewayTLSConfig:
    return GatewayTLSConfig(
        certificate_refs=(SecretObjectReference(name="cert"),),
        frontend_validation=FrontendValidation(ca_certificate_refs=refs, mode=mode),
    )


@pytest.mark.parametrize(
    ("mode", "auth"), [("AllowValidOnly", "require"), ("AllowInsecureFallback", "optional")]
)
def test_frontend_validation_carries_the_ca_bundle(mode: str, auth: str) -> None:
    ca = ConfigMap(meta=Meta(namespace="default", name="ca"), data=(("ca.crt", ca_pem()),))
    res = resolve(
        config(
            gateway(
                "gw",
                listener("https", 443, "HTTPS", tls=_validated(mode, ObjectReference(name="ca"))),
            ),
            ca,
            tls_secret("cert"),
        )
    )
    (binding,) = res.listeners
    assert binding.client_auth == auth
    assert binding.client_ca_pem == ca_pem().encode()


def test_malformed_ca_bundle_is_reported() -> None:
    bad = ConfigMap(meta=Meta(namespace="default", name="ca"), data=(("ca.crt", "nope"),))
    res = resolve(
        config(
            gateway(
                "gw",
                listener(
                    "https",
                    443,
                    "HTTPS",
                    tls=_validated("AllowValidOnly", ObjectReference(name="ca")),
                ),
            ),
            bad,
            tls_secret("cert"),
        )
    )
    ls = listener_status(res, "gw", "https")
    c = conditions_by_type(ls)
    assert c["ResolvedRefs"] == ("False", "InvalidCACertificateRef")
    # No valid CA at all: the listener is not accepted, so it never serves unvalidated.
    assert c["Accepted"] == ("False", "NoValidCACertificate")
    assert res.listeners == ()


# --------------------------------------------------------------------------- 421


def test_misdirected_matches_the_conformance_cases() -> None:
    """GatewayHTTPSListenerDetectMisdirectedRequests: four HTTPS listeners on one port;
    (SNI, Host) -> 421 exactly when they select different listeners."""
    res = resolve(
        config(
            gateway(
                "gw",
                listener("https", 443, "HTTPS", tls=terminate("cert")),
                listener("second", 443, "HTTPS", "second-example.org", tls=terminate("cert")),
                listener("wild", 443, "HTTPS", "*.wildcard.org", tls=terminate("cert")),
                listener(
                    "fourth", 443, "HTTPS", "fourth-example.wildcard.org", tls=terminate("cert")
                ),
            ),
            http_route("r", parent()),
            tls_secret("cert"),
        )
    )
    (lp,) = compile_snapshot(res, generation=1).ports.values()
    assert {t.listener_name for t in lp.terminate} == {"https", "second", "wild", "fourth"}
    table = lp.table
    assert isinstance(table, HTTPRouteTable)
    cases = [
        ("example.org", "example.org", False),
        ("example.org", "second-example.org", True),
        ("example.org", "unknown-example.org", False),
        ("second-example.org", "second-example.org", False),
        ("second-example.org", "example.org", True),
        ("second-example.org", "unknown-example.org", True),
        ("third-example.wildcard.org", "third-example.wildcard.org", False),
        ("third-example.wildcard.org", "fith-example.wildcard.org", False),
        ("third-example.wildcard.org", "fourth-example.wildcard.org", True),
        ("third-example.wildcard.org", "second-example.org", True),
        ("third-example.wildcard.org", "unknown-example.org", True),
        ("fourth-example.wildcard.org", "fourth-example.wildcard.org", False),
        ("fourth-example.wildcard.org", "fith-example.wildcard.org", True),
        ("unknown-example.org", "example.org", False),
        ("unknown-example.org", "unknown-example.org", False),
        ("", "example.org", False),  # no SNI: the listener without hostname
        ("", "second-example.org", True),
    ]
    got = [(sni, host, table.misdirected(sni, host)) for sni, host, _ in cases]
    assert got == cases


def test_example_https_listener_is_programmed() -> None:
    """The demo's committed certificate (examples/05-demo-tls-secret.yaml) still serves."""
    examples = Path(__file__).parents[2] / "examples"
    loaded = load_paths([examples])
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    res = resolve(loaded.config, now=now)
    c = conditions_by_type(listener_status(res, "edge", "https", "demo"))
    assert c["ResolvedRefs"] == ("True", "ResolvedRefs"), "regenerate the demo certificate"
    assert c["Programmed"] == ("True", "Programmed")


def test_one_broken_ca_ref_keeps_validation_with_the_others() -> None:
    ca = ConfigMap(meta=Meta(namespace="default", name="ca"), data=(("ca.crt", ca_pem()),))
    tls = _validated("AllowValidOnly", ObjectReference(name="ca"), ObjectReference(name="gone"))
    res = resolve(config(gateway("gw", listener("https", 443, "HTTPS", tls=tls)), ca, tls_secret()))
    c = conditions_by_type(listener_status(res, "gw", "https"))
    assert c["ResolvedRefs"] == ("False", "InvalidCACertificateRef")
    (binding,) = res.listeners
    # Never serve without client validation because one reference broke.
    assert (binding.client_auth, binding.client_ca_pem) == ("require", ca_pem().encode())


def test_keypair_from_secret() -> None:
    cert_pem, key_pem = self_signed(["a.example"])
    now = dt.datetime.now(dt.UTC)  # self_signed() certificates start now
    secret = Secret(
        meta=Meta(namespace="default", name="s"),
        type="kubernetes.io/tls",
        data=(("tls.crt", cert_pem), ("tls.key", key_pem)),
    )
    assert keypair_from_secret(secret, now=now).dns_names == ("a.example",)
    empty = Secret(meta=Meta(namespace="default", name="s"), data=(("tls.crt", cert_pem),))
    with pytest.raises(InvalidCertificate, match=r"Secret has no tls.key"):
        keypair_from_secret(empty, now=now)
