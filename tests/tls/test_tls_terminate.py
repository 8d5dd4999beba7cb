"""PortTLS: SNI selection, certificate swap, client certificates and handshake errors, with
real handshakes over 127.0.0.1 against a uvloop server (the data plane's event loop)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import warnings
from collections.abc import Coroutine, Sequence
from typing import Any

import pytest
import uvloop
from cryptography import x509

from gatewayd.routing.snapshot.rules import TerminateTLS
from gatewayd.tls.certs import load_keypair
from gatewayd.tls.context import load_chain_from_memory
from gatewayd.tls.terminate import PortTLS, TerminatedSSLObject

NOW = dt.datetime.now(dt.UTC)
# conftest's PKI and Issued (test modules do not import conftest: several exist).
PKI = Any
Issued = Any


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


def listener(
    name: str,
    hostname: str | None,
    *pairs: Issued,
    ca: bytes | None = None,
    auth: str = "none",
) -> TerminateTLS:
    return TerminateTLS(
        listener_name=name,
        hostname=hostname,
        certificates=tuple(load_keypair(p.cert_pem, p.key_pem, now=NOW) for p in pairs),
        client_ca_pem=ca,
        client_auth=auth,
    )


class _Answer(asyncio.Protocol):
    """Writes the listener the SNI callback chose, then waits for more lines."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        obj = transport.get_extra_info("ssl_object")
        assert isinstance(obj, TerminatedSSLObject)
        transport.write(f"{obj.listener_name}|{obj.server_name}\n".encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def serving(
    listeners: Sequence[TerminateTLS], errors: list[tuple[str, str]] | None = None
) -> tuple[PortTLS, asyncio.AbstractServer, int]:
    hook = (lambda label, reason: errors.append((label, reason))) if errors is not None else None
    tls = PortTLS("test:443", hook)
    assert tls.update(listeners) == []
    server = await asyncio.get_running_loop().create_server(
        _Answer, "127.0.0.1", 0, ssl=tls.base, ssl_handshake_timeout=5
    )
    port = server.sockets[0].getsockname()[1]
    return tls, server, port


def client_ctx(
    *,
    client: Issued | None = None,
    max_version: ssl.TLSVersion | None = None,
    alpn: Sequence[str] = ("h2", "http/1.1"),
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version is not None:
        # An old client: TLS 1.1 is deprecated in ssl and OpenSSL 3 only offers it at
        # security level 0.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = max_version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    if client is not None:
        load_chain_from_memory(ctx, load_keypair(client.cert_pem, client.key_pem, now=NOW))
    return ctx


class Conn:
    """A blocking client connection (run in a thread)."""

    def __init__(self, port: int, sni: str | None, ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            self.tls = ctx.wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise
        self.file = self.tls.makefile("rb")
        self.hello = self.file.readline().decode().strip()

    @property
    def names(self) -> list[str]:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)

    def echo(self, line: bytes) -> bytes:
        self.tls.sendall(line)
        return self.file.readline()

    def close(self) -> None:
        self.file.close()
        self.tls.close()


async def connect(port: int, sni: str | None, ctx: ssl.SSLContext | None = None) -> Conn:
    return await asyncio.to_thread(Conn, port, sni, ctx or client_ctx())


async def refused(port: int, sni: str | None, ctx: ssl.SSLContext) -> BaseException:
    """Connect, expect the handshake (or the first read after it) to fail."""

    def attempt() -> BaseException:
        try:
            c = Conn(port, sni, ctx)
        except (ssl.SSLError, OSError) as exc:
            return exc
        try:
            line = c.echo(b"ping\n")
        except (ssl.SSLError, OSError) as exc:
            return exc
        finally:
            c.close()
        raise AssertionError(f"connection was accepted: {c.hello!r} {line!r}")

    return await asyncio.to_thread(attempt)


# --------------------------------------------------------------------------- SNI


def test_sni_selects_exact_then_longest_wildcard_then_default(pki: PKI) -> None:
    ca = pki.ca()
    default = pki.leaf(ca, ["default.example"])
    exact = pki.leaf(ca, ["a.example.com"])
    wide = pki.leaf(ca, ["*.example.com"])
    narrow = pki.leaf(ca, ["*.deep.example.com"])

    async def main() -> None:
        _, server, port = await serving(
            [
                listener("wide", "*.example.com", wide),
                listener("narrow", "*.deep.example.com", narrow),
                listener("exact", "a.example.com", exact),
                listener("default", None, default),
            ]
        )
        async with server:
            for sni, want, names in [
                ("a.example.com", "exact", ["a.example.com"]),
                ("A.Example.COM.", "exact", ["a.example.com"]),
                ("b.example.com", "wide", ["*.example.com"]),
                ("x.y.example.com", "wide", ["*.example.com"]),  # Gateway API: any depth
                ("x.deep.example.com", "narrow", ["*.deep.example.com"]),
                ("example.com", "default", ["default.example"]),
                (None, "default", ["default.example"]),
            ]:
                c = await connect(port, sni)
                try:
                    assert c.hello.split("|")[0] == want, sni
                    assert c.names == names, sni
                    assert c.tls.selected_alpn_protocol() == "h2"  # offered first (ALPN)
                finally:
                    c.close()

    run(main())


def test_several_certificates_in_one_listener_are_chosen_by_name(pki: PKI) -> None:
    ca = pki.ca()
    first = pki.leaf(ca, ["one.example"])
    second = pki.leaf(ca, ["two.example", "*.two.example"])

    async def main() -> None:
        _, server, port = await serving([listener("any", None, first, second)])
        async with server:
            for sni, names in [
                ("two.example", ["two.example", "*.two.example"]),
                ("x.two.example", ["two.example", "*.two.example"]),
                ("one.example", ["one.example"]),
                ("elsewhere.example", ["one.example"]),  # no name matches: the first
            ]:
                c = await connect(port, sni)
                try:
                    assert c.names == names, sni
                finally:
                    c.close()

    run(main())


def test_unknown_name_without_default_listener_is_refused(pki: PKI) -> None:
    ca = pki.ca()
    errors: list[tuple[str, str]] = []

    async def main() -> None:
        _, server, port = await serving(
            [listener("a", "a.example.com", pki.leaf(ca, ["a.example.com"]))], errors
        )
        async with server:
            # uvloop closes at once: the client sees the alert or the connection end.
            exc = await refused(port, "b.example.com", client_ctx())
            assert isinstance(exc, ssl.SSLError)
            await asyncio.sleep(0.05)

    run(main())
    assert errors == [("test:443", "unknown_sni")]


# --------------------------------------------------------------------------- versions


def test_tls12_and_13_accepted_tls11_refused_and_counted(pki: PKI) -> None:
    ca = pki.ca()
    errors: list[tuple[str, str]] = []

    async def main() -> None:
        _, server, port = await serving([listener("d", None, pki.leaf(ca, ["d.example"]))], errors)
        async with server:
            c = await connect(port, "d.example")
            assert c.tls.version() == "TLSv1.3"
            c.close()
            c = await connect(port, "d.example", client_ctx(max_version=ssl.TLSVersion.TLSv1_2))
            assert c.tls.version() == "TLSv1.2"
            # Forward secrecy and AEAD only.
            name = c.tls.cipher()[0]
            assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
            c.close()
            exc = await refused(port, "d.example", client_ctx(max_version=ssl.TLSVersion.TLSv1_1))
            assert isinstance(exc, ssl.SSLError)
            await asyncio.sleep(0.05)

    run(main())
    assert errors == [("test:443", "protocol_version")]


# --------------------------------------------------------------------------- reload


def test_update_swaps_certificates_for_new_handshakes_only(pki: PKI) -> None:
    ca = pki.ca()
    old = pki.leaf(ca, ["old.example"])
    new = pki.leaf(ca, ["new.example"])

    async def main() -> None:
        tls, server, port = await serving([listener("l", None, old)])
        base = tls.base
        async with server:
            before = await connect(port, "x.example")
            assert before.names == ["old.example"]
            assert tls.update([listener("l", None, new)]) == []
            assert tls.base is base  # the socket's context is unchanged
            after = await connect(port, "x.example")
            assert after.names == ["new.example"]
            # The open connection still works and still holds the old certificate.
            assert await asyncio.to_thread(before.echo, b"still here\n") == b"still here\n"
            assert before.names == ["old.example"]
            before.close()
            after.close()

    run(main())


# --------------------------------------------------------------------------- client certs


def test_required_client_certificate(pki: PKI) -> None:
    ca = pki.ca("client root")
    other = pki.ca("other root")
    server_cert = pki.leaf(pki.ca(), ["m.example"])
    errors: list[tuple[str, str]] = []

    async def main() -> None:
        _, server, port = await serving(
            [listener("m", None, server_cert, ca=ca.cert_pem, auth="require")], errors
        )
        async with server:
            good = await connect(port, "m.example", client_ctx(client=pki.leaf(ca, ["c"])))
            assert await asyncio.to_thread(good.echo, b"hi\n") == b"hi\n"
            good.close()
            await refused(port, "m.example", client_ctx())
            await refused(port, "m.example", client_ctx(client=pki.leaf(other, ["c"])))
            await asyncio.sleep(0.05)

    run(main())
    assert sorted(errors) == [("test:443", "bad_client_cert"), ("test:443", "no_client_cert")]


def test_mixed_port_requires_a_certificate_only_where_configured(pki: PKI) -> None:
    ca = pki.ca("client root")
    srv = pki.ca()
    errors: list[tuple[str, str]] = []

    async def main() -> None:
        _, server, port = await serving(
            [
                listener(
                    "strict",
                    "strict.example",
                    pki.leaf(srv, ["strict.example"]),
                    ca=ca.cert_pem,
                    auth="require",
                ),
                listener("open", "open.example", pki.leaf(srv, ["open.example"])),
            ],
            errors,
        )
        async with server:
            c = await connect(port, "open.example")
            assert c.hello.startswith("open|")
            c.close()
            c = await connect(port, "strict.example", client_ctx(client=pki.leaf(ca, ["c"])))
            assert c.hello.startswith("strict|")
            c.close()
            await refused(port, "strict.example", client_ctx())
            await asyncio.sleep(0.05)

    run(main())
    assert errors == [("test:443", "no_client_cert")]


def test_listener_that_cannot_build_a_context_is_left_out(pki: PKI) -> None:
    ca = pki.ca()
    good = listener("good", "good.example", pki.leaf(ca, ["good.example"]))
    bad = listener("bad", "bad.example", pki.leaf(ca, ["bad.example"]), auth="optional")
    tls = PortTLS("x:1")
    problems = tls.update([good, bad])
    assert len(problems) == 1 and problems[0].startswith("listener bad:")
    assert tls.serving


@pytest.mark.parametrize("mode", ["require", "optional"])
def test_verify_mode_follows_the_listeners(pki: PKI, mode: str) -> None:
    ca = pki.ca()
    pair = pki.leaf(ca, ["v.example"])
    tls = PortTLS("x:1")
    tls.update([listener("v", None, pair, ca=ca.cert_pem, auth=mode)])
    want = ssl.CERT_REQUIRED if mode == "require" else ssl.CERT_OPTIONAL
    assert tls.base.verify_mode == want
    tls.update([listener("v", None, pair)])
    assert tls.base.verify_mode == ssl.CERT_NONE
