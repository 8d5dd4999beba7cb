"""Listener tls.options: the keys gatewayd implements, the problems it reports, and
the per-port rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
from status_builders import cond, config, gateway, listener, listener_status, terminate, tls_secret

from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.control.tlsoptions import TLS12_SUITES, parse_tls_options
from gatewayd.routing.snapshot.rules import TLSOptions
from gatewayd.tls.context import TLS12_CIPHERS

MIN = "gatewayd.io/min-tls-version"
MAX = "gatewayd.io/max-tls-version"
SUITES = "gatewayd.io/cipher-suites"


def test_the_suite_table_is_the_contexts_default() -> None:
    assert ":".join(TLS12_SUITES) == TLS12_CIPHERS


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ((), None),
        (((MIN, "1.3"),), TLSOptions(min_version="1.3")),
        (((MAX, "1.2"),), TLSOptions(max_version="1.2")),
        (
            ((SUITES, "ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-AES256-GCM-SHA384"),),
            TLSOptions(ciphers=("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384")),
        ),
    ],
)
def test_known_keys(options: tuple[tuple[str, str], ...], expected: TLSOptions | None) -> None:
    assert parse_tls_options(options) == (expected, [])


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ((("example.com/min-tls-version", "1.3"),), ["example.com/min-tls-version"]),
        (((MIN, "1.1"),), [MIN]),
        (((MIN, "1.3"), (MAX, "1.2")), [MIN]),
        (((SUITES, "AES128-SHA"),), [SUITES]),  # weaker than the defaults: refused
        (((SUITES, ""),), [SUITES]),
        (((SUITES, "ECDHE-RSA-AES128-GCM-SHA256"), (MIN, "1.3")), [SUITES]),
        ((("a.io/x", "1"), ("b.io/y", "2"), (MAX, "1.4")), ["a.io/x", "b.io/y", MAX]),
    ],
)
def test_every_key_it_cannot_honour_is_named(
    options: tuple[tuple[str, str], ...], named: list[str]
) -> None:
    got, problems = parse_tls_options(options)
    assert got is None
    assert len(problems) == len(named)
    for key, problem in zip(named, problems, strict=True):
        assert problem.startswith(key), problems


def _https(name: str, port: int, options: tuple[tuple[str, str], ...], host: str) -> object:
    return listener(
        name, port, "HTTPS", hostname=host, tls=replace(terminate("cert"), options=options)
    )


def test_listener_status_and_binding() -> None:
    res = resolve(
        config(
            gateway(
                "gw",
                _https("strict", 443, ((MIN, "1.3"),), "a.example"),  # type: ignore[arg-type]
                _https("odd", 8443, (("example.com/x", "1"),), "b.example"),  # type: ignore[arg-type]
            ),
            tls_secret("cert"),
        )
    )
    assert cond(listener_status(res, "gw", "strict"), "Accepted") == ("True", "Accepted")
    odd = listener_status(res, "gw", "odd")
    assert cond(odd, "Accepted") == ("False", "UnsupportedValue")
    (binding,) = res.listeners
    assert binding.listener_name == "strict"
    assert binding.tls_options == TLSOptions(min_version="1.3")


def test_listeners_of_one_port_must_agree() -> None:
    res = resolve(
        config(
            gateway(
                "gw",
                _https("first", 443, ((MIN, "1.3"),), "a.example"),  # type: ignore[arg-type]
                _https("same", 443, ((MIN, "1.3"),), "b.example"),  # type: ignore[arg-type]
                _https("other", 443, (), "c.example"),  # type: ignore[arg-type]
            ),
            tls_secret("cert"),
        )
    )
    assert cond(listener_status(res, "gw", "same"), "Accepted") == ("True", "Accepted")
    other = listener_status(res, "gw", "other")
    assert cond(other, "Accepted") == ("False", "UnsupportedValue")
    message = next(c["message"] for c in other["conditions"] if c["type"] == "Accepted")
    assert "listener first's" in message and "port 443" in message
    assert {b.listener_name for b in res.listeners} == {"first", "same"}
