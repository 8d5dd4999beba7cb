"""TLS listener ports in-process (proxy/tlsroute.py): the proxy, backends and clients
share one uvloop event loop over real loopback sockets.

What the subprocess end-to-end tests (tests/tls/test_tls_passthrough_e2e.py) cannot
reach quickly: the ClientHello time and size bounds, backpressure through the splice,
handshake and connect failures, bad certificates, and the pure helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import ssl
from collections.abc import Callable

import pytest
from loop_kit import LOCAL, free_port, run
from loop_kit import opened as _opened
from prometheus_client import CollectorRegistry

from gatewayd.proxy import tlsroute
from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.proxy.tlsroute import TLSContexts
from gatewayd.routing.snapshot.backends import BackendTLS, ClientCertificate, EndpointAddress
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, RouteHit, TerminateTLS
from gatewayd.routing.snapshot.table import SNIRoute, SNITable, TLSListener
from gatewayd.tls.certs import CertificateInfo, load_keypair, self_signed
from gatewayd.tls.context import load_chain_from_memory

CERT, KEY = self_signed(["term.example.com"])
GW_CERT = load_keypair(CERT, KEY, now=dt.datetime.now(dt.UTC))
# A pair that passed no check: its key is not the certificate's.
BAD_CERT = dataclasses.replace(GW_CERT, pem_key=self_signed(["x.example.com"])[1])


def tls_snapshot(
    port: int,
    backend_port: int,
    *,
    mode: str,
    certs: tuple[CertificateInfo, ...] = (),
    backend: CompiledBackend | None = None,
    client_ca_pem: bytes | None = None,
) -> Snapshot:
    backend = backend or CompiledBackend(
        name="default/b:443", endpoints=(EndpointAddress(address=LOCAL, port=backend_port),)
    )
    rule = CompiledRule(
        route_kind="TLSRoute",
        route_namespace="default",
        route_name="r",
        rule_index=0,
        backends=(backend,),
        cumulative_weights=(1,),
        total_weight=1,
    )
    listener = TLSListener(
        name="tls",
        hostname=None,
        mode=mode,
        certificates=certs,
        client_ca_pem=client_ca_pem,
        client_auth="require" if client_ca_pem else "none",
        routes=(
            SNIRoute(
                hit=RouteHit(rule=rule, listener_name="tls"),
                order=(0.0, "default/r"),
                hostnames=("term.example.com",),
            ),
        ),
    )
    return Snapshot(
        generation=1,
        ports={
            (LOCAL, port): ListenerPort(
                address=LOCAL,
                port=port,
                protocol="TLS",
                gateway_namespace="default",
                gateway_name="gw",
                listener_names=("tls",),
                table=SNITable([listener]),
            )
        },
    )


class Backend:
    """A plain TCP server: counts connections, optionally never reads."""

    def __init__(self, *, read: bool = True) -> None:
        self.read = read
        self.connections = 0
        self.received = bytearray()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._handle, LOCAL, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        _opened.append(self.server.close)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _opened.append(writer.close)
        if not self.read:
            writer.transport.pause_reading()
            return
        while data := await reader.read(65536):
            self.received += data
            writer.write(data)
            await writer.drain()
        writer.close()


async def start(snapshot_for: Callable[[int], Snapshot]) -> tuple[Proxy, int, ProxyMetrics]:
    port = free_port()
    metrics = ProxyMetrics(registry=CollectorRegistry())
    proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None), metrics)
    _opened.append(proxy.close)
    assert await proxy.apply(snapshot_for(port)) == {}
    return proxy, port, metrics


def results(metrics: ProxyMetrics) -> dict[str, int]:
    return {result: n for (_, result), n in metrics._tls_cx.items()}


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(5):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def refused_after(port: int, first_bytes: bytes) -> bytes:
    """Connect, send ``first_bytes`` and check that gatewayd closes the connection;
    returns the bytes sent."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    _opened.append(writer.close)
    writer.write(first_bytes)
    assert await closed_by_peer(reader)
    return first_bytes


def client_hello(sni: str) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# --------------------------------------------------------------------------- pure helpers


def _listener(snap: Snapshot) -> TLSListener:
    table = next(iter(snap.ports.values())).table
    assert isinstance(table, SNITable)
    return table.listeners()[0]


def test_contexts_are_built_once_and_forgotten_when_unused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    contexts = TLSContexts()
    snap = tls_snapshot(1, 2, mode="Terminate", certs=(GW_CERT,))
    contexts.refresh(snap)
    ctx = contexts.get(_listener(snap))
    assert isinstance(ctx, ssl.SSLContext)
    again = tls_snapshot(1, 3, mode="Terminate", certs=(GW_CERT,))  # other routes
    contexts.refresh(again)
    assert contexts.get(_listener(again)) is ctx  # routes-only reload: same context
    contexts.refresh(tls_snapshot(1, 2, mode="Passthrough"))
    assert contexts._by_key == {}
    bad = _listener(tls_snapshot(1, 2, mode="Terminate", certs=(BAD_CERT,)))
    with caplog.at_level(logging.ERROR, logger="gatewayd.proxy.tlsroute"):
        assert contexts.get(bad) is None
    assert "term.example.com" in caplog.text and GW_CERT.fingerprint_sha256[:16] in caplog.text


def test_two_certificates_of_different_key_types_share_a_context() -> None:
    rsa_cert, rsa_key = self_signed(["term.example.com"], key_type="rsa")
    rsa = load_keypair(rsa_cert, rsa_key, now=dt.datetime.now(dt.UTC))
    ctx = tlsroute._build_context(((GW_CERT, rsa), None, "none", None), "test")
    assert isinstance(ctx, ssl.SSLContext)
    assert tlsroute._build_context(((), None, "none", None), "test") is None


# --------------------------------------------------------------------------- bounds


def test_slow_client_hello_is_closed_after_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsroute, "HANDSHAKE_TIMEOUT", 0.2)

    async def go() -> None:
        backend = await Backend().start()
        proxy, port, metrics = await start(
            lambda p: tls_snapshot(p, backend.port, mode="Passthrough")
        )
        await refused_after(port, client_hello("term.example.com")[:20])
        assert results(metrics) == {"timeout": 1}
        assert backend.connections == 0
        assert proxy.n_conns == 0 and not proxy.tls_routes.conns

    run(go())


def test_client_hello_over_16_kib_is_refused() -> None:
    async def go() -> None:
        backend = await Backend().start()
        _, port, metrics = await start(lambda p: tls_snapshot(p, backend.port, mode="Passthrough"))
        reader, writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(writer.close)
        # A ClientHello announcing 40 000 bytes, sent as full records: valid so far,
        # but it would make gatewayd hold more than 16 KiB.
        body = b"\x01" + (40000).to_bytes(3, "big") + b"\x00" * 40000
        records = b"".join(
            b"\x16\x03\x01" + len(body[i : i + 16384]).to_bytes(2, "big") + body[i : i + 16384]
            for i in range(0, len(body), 16384)
        )
        writer.write(records)
        assert await closed_by_peer(reader)
        assert results(metrics) == {"bad_client_hello": 1}
        assert backend.connections == 0

    run(go())


# --------------------------------------------------------------------------- splice


def test_passthrough_pauses_the_client_when_the_backend_does_not_read() -> None:
    async def go() -> None:
        backend = await Backend(read=False).start()
        proxy, port, _ = await start(lambda p: tls_snapshot(p, backend.port, mode="Passthrough"))
        _, writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(writer.close)
        writer.write(client_hello("term.example.com"))
        chunk = b"z" * 65536
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

        task = asyncio.get_running_loop().create_task(flood())
        _opened.append(task.cancel)
        # Let the kernel buffers fill; then the proxy must have stopped reading.
        await asyncio.sleep(0.5)
        before = sent
        await asyncio.sleep(0.3)
        assert sent == before, "the client kept writing: nothing pushed back"
        assert backend.connections == 1
        # gatewayd holds at most about one high-water mark plus one read.
        assert proxy.buffered_bytes() < 1024 * 1024, proxy.buffered_bytes()
        task.cancel()

    run(go())


def test_upstream_connect_failure_closes_the_client() -> None:
    async def go() -> None:
        dead = free_port()  # nothing listens there
        _, port, metrics = await start(lambda p: tls_snapshot(p, dead, mode="Passthrough"))
        await refused_after(port, client_hello("term.example.com"))
        for _ in range(50):
            if "upstream_connect_failure" in results(metrics):
                break
            await asyncio.sleep(0.01)
        assert results(metrics) == {"passthrough": 1, "upstream_connect_failure": 1}
        assert metrics._us_fail == {"default/b:443": 1}

    run(go())


@pytest.mark.parametrize(
    ("backend", "result"),
    [
        (CompiledBackend(name="default/gone:443", invalid_status=500), "invalid_backend"),
        (CompiledBackend(name="default/empty:443"), "no_healthy_upstream"),
    ],
)
def test_unusable_backend_rejects_the_connection(backend: CompiledBackend, result: str) -> None:
    async def go() -> None:
        _, port, metrics = await start(
            lambda p: tls_snapshot(p, 1, mode="Passthrough", backend=backend)
        )
        await refused_after(port, client_hello("term.example.com"))
        assert results(metrics) == {result: 1}

    run(go())


# --------------------------------------------------------------------------- terminate


def test_terminate_handshake_failure_is_counted_and_backend_untouched() -> None:
    async def go() -> None:
        backend = await Backend().start()
        _, port, metrics = await start(
            lambda p: tls_snapshot(p, backend.port, mode="Terminate", certs=(GW_CERT,))
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_ciphers("AES128-SHA256")  # no forward secrecy: gatewayd refuses it
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection(LOCAL, port, ssl=ctx, server_hostname="term.example.com")
        for _ in range(50):
            if metrics._tls_err:
                break
            await asyncio.sleep(0.01)
        assert results(metrics) == {"handshake_error": 1}
        assert metrics._tls_err == {(f"{LOCAL}:{port}", "no_shared_cipher"): 1}
        assert backend.connections == 0

    run(go())


def test_terminate_with_unusable_certificate_closes(caplog: pytest.LogCaptureFixture) -> None:
    bad = BAD_CERT

    async def go() -> None:
        backend = await Backend().start()
        _, port, metrics = await start(
            lambda p: tls_snapshot(p, backend.port, mode="Terminate", certs=(bad,))
        )
        await refused_after(port, client_hello("term.example.com"))
        assert results(metrics) == {"bad_certificate": 1}
        assert backend.connections == 0

    with caplog.at_level(logging.ERROR, logger="gatewayd.proxy.tlsroute"):
        run(go())
    assert "cannot terminate TLS" in caplog.text


def test_terminate_half_close_from_the_client_reaches_the_backend() -> None:
    async def go() -> None:
        backend = await Backend().start()
        proxy, port, metrics = await start(
            lambda p: tls_snapshot(p, backend.port, mode="Terminate", certs=(GW_CERT,))
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=ctx, server_hostname="term.example.com"
        )
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        writer.close()  # close_notify, then FIN
        await writer.wait_closed()
        for _ in range(100):
            if not proxy.tls_routes.splices:
                break
            await asyncio.sleep(0.01)
        assert not proxy.tls_routes.splices
        assert backend.received == b"abc"
        assert results(metrics) == {"terminate": 1}
        assert metrics._ds_cx == {f"{LOCAL}:{port}": 0}
        assert metrics._us_cx == {"default/b:443": 0}

    run(go())


def test_terminate_with_frontend_validation_requires_a_client_certificate() -> None:
    client_cert, client_key = self_signed(["client.example.com"])

    async def go() -> None:
        backend = await Backend().start()
        _, port, metrics = await start(
            lambda p: tls_snapshot(
                p, backend.port, mode="Terminate", certs=(GW_CERT,), client_ca_pem=client_cert
            )
        )

        def client(with_cert: bool) -> ssl.SSLContext:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the refusal comes in the handshake
            if with_cert:
                info = load_keypair(client_cert, client_key, now=dt.datetime.now(dt.UTC))
                load_chain_from_memory(ctx, info)
            return ctx

        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection(
                LOCAL, port, ssl=client(False), server_hostname="term.example.com"
            )
        assert backend.connections == 0
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=client(True), server_hostname="term.example.com"
        )
        _opened.append(writer.close)
        writer.write(b"mtls")
        assert await reader.readexactly(4) == b"mtls"
        assert results(metrics) == {"handshake_error": 1, "terminate": 1}
        assert list(metrics._tls_err.values()) == [1]

    run(go())


# --------------------------------------------------------------------------- Proxy.apply


def http_snapshot(port: int, *, https: bool = False) -> Snapshot:
    table = SNITable([])  # any table: no HTTP request is sent in these tests
    terminate = (TerminateTLS(listener_name="https", hostname=None, certificates=(GW_CERT,)),)
    return Snapshot(
        generation=1,
        ports={
            (LOCAL, port): ListenerPort(
                address=LOCAL,
                port=port,
                protocol="HTTPS" if https else "HTTP",
                gateway_namespace="default",
                gateway_name="gw",
                listener_names=("http",),
                table=table,
                terminate=terminate if https else (),
            )
        },
    )


def test_a_port_that_turns_from_http_to_tls_keeps_its_socket() -> None:
    async def go() -> None:
        backend = await Backend().start()
        port = free_port()
        metrics = ProxyMetrics(registry=CollectorRegistry())
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None), metrics)
        _opened.append(proxy.close)
        assert await proxy.apply(http_snapshot(port)) == {}
        server = proxy.servers[(LOCAL, port)]
        assert await proxy.apply(tls_snapshot(port, backend.port, mode="Passthrough")) == {}
        # The listener's mode and routes change too: the socket stays.
        terminate = tls_snapshot(port, backend.port, mode="Terminate", certs=(GW_CERT,))
        assert await proxy.apply(terminate) == {}
        assert await proxy.apply(tls_snapshot(port, backend.port, mode="Passthrough")) == {}
        assert proxy.servers[(LOCAL, port)] is server
        _, writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(writer.close)
        writer.write(client_hello("term.example.com"))
        for _ in range(100):
            if backend.received:
                break
            await asyncio.sleep(0.01)
        assert backend.received[:1] == b"\x16"  # the ClientHello, passed through
        assert results(metrics) == {"passthrough": 1}
        writer.close()

    run(go())


def test_https_and_tls_ports_swap_sockets_both_ways() -> None:
    async def go() -> None:
        backend = await Backend().start()
        port = free_port()
        proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=None))
        _opened.append(proxy.close)
        assert await proxy.apply(http_snapshot(port, https=True)) == {}
        https_server = proxy.servers[(LOCAL, port)]
        assert await proxy.apply(tls_snapshot(port, backend.port, mode="Passthrough")) == {}
        tls_server = proxy.servers[(LOCAL, port)]
        assert tls_server is not https_server  # the HTTPS socket wraps TLS itself
        _, writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(writer.close)
        writer.write(client_hello("term.example.com"))
        for _ in range(100):
            if backend.received:
                break
            await asyncio.sleep(0.01)
        assert backend.received[:1] == b"\x16"  # passed through, not terminated
        assert await proxy.apply(http_snapshot(port, https=True)) == {}
        assert proxy.servers[(LOCAL, port)] is not tls_server
        for _ in range(100):
            if not proxy.tls_routes.splices:
                break
            await asyncio.sleep(0.01)
        assert proxy.tls_routes.splices == set()  # the spliced connection was closed

    run(go())


def test_close_lets_open_splices_finish_within_the_drain_timeout() -> None:
    async def go() -> None:
        backend = await Backend().start()
        proxy, port, _ = await start(lambda p: tls_snapshot(p, backend.port, mode="Passthrough"))
        reader, writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(writer.close)
        hello = client_hello("term.example.com")
        writer.write(hello)
        assert await reader.readexactly(len(hello)) == hello  # echoed through the splice
        idle_reader, idle_writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(idle_writer.close)
        idle_writer.write(hello[:10])  # still in its ClientHello
        loop = asyncio.get_running_loop()
        started = loop.time()
        closing = loop.create_task(proxy.close(drain_timeout=5.0))
        _opened.append(closing.cancel)
        assert await closed_by_peer(idle_reader)  # not spliced yet: closed at once
        writer.write(b"more")
        assert await reader.readexactly(4) == b"more"  # the splice still works
        assert not closing.done()
        writer.close()
        await closing
        assert loop.time() - started < 4.0  # ended with the splice, not the timeout
        assert proxy.n_conns == 0

    run(go())


def test_idle_splice_is_closed_after_the_tcp_idle_timeout() -> None:
    async def go() -> None:
        backend = await Backend().start()
        port = free_port()
        options = ProxyOptions(access_log=None, tcp_idle_timeout=0.4)
        proxy = Proxy(SnapshotHolder(), options, ProxyMetrics(registry=CollectorRegistry()))
        _opened.append(proxy.close)
        assert await proxy.apply(tls_snapshot(port, backend.port, mode="Passthrough")) == {}
        reader, writer = await asyncio.open_connection(LOCAL, port)
        _opened.append(writer.close)
        hello = client_hello("term.example.com")
        writer.write(hello)
        assert await reader.readexactly(len(hello)) == hello  # the backend echoes
        # Bytes every 0.15 s keep the splice alive past the timeout ...
        for n in range(8):
            writer.write(b"ping %d" % n)
            assert await reader.readexactly(6) == b"ping %d" % n
            await asyncio.sleep(0.15)
        assert len(proxy.tls_routes.splices) == 1
        # ... silence closes it: within the timeout plus one sweep (1 s).
        start = asyncio.get_running_loop().time()
        assert await closed_by_peer(reader)
        waited = asyncio.get_running_loop().time() - start
        assert 0.3 <= waited < 2.5, waited
        assert not proxy.tls_routes.splices
        assert proxy.n_conns == 0

    run(go())


# --------------------------------------------------------------------------- access log

# What every TLS listener line shares, whatever became of the connection.
L4_PREFIX = ' "- - -" 0 '


async def logged_start(
    snapshot_for: Callable[[int], Snapshot], fmt: str = "text"
) -> tuple[Proxy, int, io.StringIO]:
    proxy, port, _ = await start(snapshot_for)
    out = io.StringIO()
    proxy.access = AccessLogger(fmt, out)
    return proxy, port, out


async def one_line(out: io.StringIO) -> str:
    """The single line logged once the connection has ended."""
    for _ in range(250):
        if out.getvalue():
            break
        await asyncio.sleep(0.02)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def fields(line: str) -> list[str]:
    """The text line after its timestamp and request line, split on spaces."""
    assert line.startswith("[") and L4_PREFIX in line, line
    return line.split(L4_PREFIX, 1)[1].split(" ")


def test_passthrough_connection_logs_bytes_both_ways_sni_and_upstream() -> None:
    async def go() -> None:
        backend = await Backend().start()
        _, port, out = await logged_start(
            lambda p: tls_snapshot(p, backend.port, mode="Passthrough")
        )
        reader, writer = await asyncio.open_connection(LOCAL, port)
        client = writer.get_extra_info("sockname")
        hello = client_hello("term.example.com")
        writer.write(hello)
        writer.write(b"x" * 1000)
        assert await reader.readexactly(len(hello) + 1000) == hello + b"x" * 1000
        writer.write_eof()  # the backend echoes, sees EOF, closes: the splice ends
        assert await reader.read() == b""
        writer.close()
        line = await one_line(out)
        flags, rx, tx, duration, *rest = fields(line)
        n = str(len(hello) + 1000)
        assert (flags, rx, tx) == ("-", n, n)
        assert int(duration) < 5000
        assert rest == [
            "-",
            '"-"',
            '"-"',
            '"-"',
            '"-"',
            f'"{LOCAL}:{backend.port}"',
            f"{LOCAL}:{client[1]}",
            '"term.example.com"',
            '"default/b:443"',
            '"default/r/rule/0"',
            '"-"',
        ]

    run(go())


def test_unknown_sni_is_logged_as_no_route_without_upstream() -> None:
    async def go() -> None:
        backend = await Backend().start()
        _, port, out = await logged_start(
            lambda p: tls_snapshot(p, backend.port, mode="Passthrough")
        )
        hello = await refused_after(port, client_hello("other.example.com"))
        flags, rx, tx, _, *rest = fields(await one_line(out))
        assert (flags, rx, tx) == ("NR", str(len(hello)), "0")
        # No upstream, cluster or route; the SNI the client asked for; why it was closed.
        assert rest[5] == '"-"'
        assert rest[7:] == ['"other.example.com"', '"-"', '"-"', '"no_route"']
        assert backend.connections == 0

    run(go())


def test_upstream_connect_failure_is_logged_with_uf() -> None:
    async def go() -> None:
        dead = free_port()  # nothing listens there
        _, port, out = await logged_start(lambda p: tls_snapshot(p, dead, mode="Passthrough"))
        hello = await refused_after(port, client_hello("term.example.com"))
        flags, rx, tx, _, *rest = fields(await one_line(out))
        assert (flags, rx, tx) == ("UF", str(len(hello)), "0")
        assert rest[5] == f'"{LOCAL}:{dead}"'  # the endpoint it tried
        assert rest[7:] == [
            '"term.example.com"',
            '"default/b:443"',
            '"default/r/rule/0"',
            '"upstream_connect_failure"',
        ]

    run(go())


def test_no_ready_endpoint_is_logged_with_uh() -> None:
    async def go() -> None:
        empty = CompiledBackend(name="default/empty:443")
        _, port, out = await logged_start(
            lambda p: tls_snapshot(p, 1, mode="Passthrough", backend=empty)
        )
        await refused_after(port, client_hello("term.example.com"))
        flags, *_, details = fields(await one_line(out))
        assert (flags, details) == ("UH", '"no_healthy_upstream"')

    run(go())


def test_terminate_connection_logs_plaintext_bytes_in_json() -> None:
    async def go() -> None:
        backend = await Backend().start()
        _, port, out = await logged_start(
            lambda p: tls_snapshot(p, backend.port, mode="Terminate", certs=(GW_CERT,)), "json"
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=ctx, server_hostname="term.example.com"
        )
        client = writer.get_extra_info("sockname")
        writer.write(b"hello, backend")
        assert await reader.readexactly(14) == b"hello, backend"
        writer.close()
        await writer.wait_closed()
        line = json.loads(await one_line(out))
        assert isinstance(line.pop("duration"), int)
        assert isinstance(line.pop("start_time"), str)
        assert line == {
            "method": "-",
            "path": "-",
            "protocol": "-",
            "response_code": 0,
            "response_flags": "-",
            "bytes_received": 14,  # decrypted bytes, as the splice carries them
            "bytes_sent": 14,
            "upstream_service_time": None,
            "x_forwarded_for": "-",
            "user_agent": "-",
            "request_id": "-",
            "authority": "-",
            "upstream_host": f"{LOCAL}:{backend.port}",
            "route_name": "default/r/rule/0",
            "downstream_remote_address": f"{LOCAL}:{client[1]}",
            "requested_server_name": "term.example.com",
            "upstream_cluster": "default/b:443",
            "connection_termination_details": "-",
        }

    run(go())


def test_refused_connection_in_json() -> None:
    async def go() -> None:
        _, port, out = await logged_start(lambda p: tls_snapshot(p, 1, mode="Passthrough"), "json")
        await refused_after(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
        line = json.loads(await one_line(out))
        assert line["response_flags"] == "DPE"
        assert line["connection_termination_details"] == "bad_client_hello"
        assert line["bytes_received"] == 27 and line["bytes_sent"] == 0
        assert line["requested_server_name"] == "-" and line["upstream_host"] == "-"

    run(go())


def test_access_log_off_writes_no_line(capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> None:
        # Two proxies, the same refused connection to each: only the one with
        # --access-log text writes (to stdout).
        for access_log in ("text", None):
            port = free_port()
            proxy = Proxy(SnapshotHolder(), ProxyOptions(access_log=access_log))
            _opened.append(proxy.close)
            assert await proxy.apply(tls_snapshot(port, 1, mode="Passthrough")) == {}
            await refused_after(port, client_hello("other.example.com"))
            for _ in range(100):
                if proxy.n_conns == 0:
                    break
                await asyncio.sleep(0.01)
            assert proxy.n_conns == 0
            if proxy.access is not None:
                proxy.access.flush()

    run(go())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and " NR " in lines[0] and '"other.example.com"' in lines[0]


# --------------------------------------------------------------------------- re-encryption

# A BackendTLSPolicy's backend: its certificate is its own trust anchor (the policy CA).
BACKEND_CERT, BACKEND_KEY = self_signed(["backend.example"])
OTHER_CA, _ = self_signed(["backend.example"])  # same name, another key: untrusted
CLIENT_CERT, CLIENT_KEY = self_signed(["gw-client.example"])


class TLSBackend:
    """A TLS server that speaks first (a greeting naming the SNI and ALPN it got), then
    echoes; records the SNI of every handshake attempt (failed ones included), the
    client certificates and the application bytes received."""

    def __init__(self, *, require_client_cert: bool = False, echo: bool = True) -> None:
        self.echo = echo  # False: close right after the greeting
        info = load_keypair(BACKEND_CERT, BACKEND_KEY, now=dt.datetime.now(dt.UTC))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_chain_from_memory(self.ctx, info)
        if require_client_cert:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(cadata=CLIENT_CERT.decode())
        self.snis: list[str | None] = []  # one per ClientHello received
        self.ctx.sni_callback = lambda _obj, name, _ctx: self.snis.append(name)
        self.client_cns: list[str | None] = []
        self.received = bytearray()
        self.port = 0

    async def start(self) -> TLSBackend:
        server = await asyncio.start_server(self._handle, LOCAL, 0, ssl=self.ctx)
        self.port = server.sockets[0].getsockname()[1]
        _opened.append(server.close)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _opened.append(writer.close)
        sslobj = writer.get_extra_info("ssl_object")
        peer = sslobj.getpeercert()
        subject = dict(x[0] for x in peer.get("subject", ())) if peer else {}
        self.client_cns.append(subject.get("commonName"))
        alpn = sslobj.selected_alpn_protocol()
        writer.write(f"hello sni={self.snis[-1]} alpn={alpn}\n".encode())
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while self.echo and (data := await reader.read(65536)):
                self.received += data
                writer.write(data)
                await writer.drain()
        writer.close()


def reencrypt_snapshot(port: int, backend: TLSBackend, tls: BackendTLS) -> Snapshot:
    compiled = CompiledBackend(
        name="default/b:443",
        endpoints=(EndpointAddress(address=LOCAL, port=backend.port),),
        tls=tls,
    )
    return tls_snapshot(port, backend.port, mode="Terminate", certs=(GW_CERT,), backend=compiled)


def gateway_client_ctx() -> ssl.SSLContext:
    """The client verifies gatewayd's certificate: it talks TLS with gatewayd."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=CERT.decode())
    return ctx


def test_terminate_reencrypts_to_a_tls_backend_with_the_policy_hostname_as_sni() -> None:
    client = ClientCertificate(chain_pem=CLIENT_CERT, key_pem=CLIENT_KEY)
    tls = BackendTLS(
        policy="default/p",
        hostname="backend.example",
        ca_pem=BACKEND_CERT,
        client_certificate=client,
    )

    async def go() -> None:
        backend = await TLSBackend(require_client_cert=True).start()
        proxy, port, metrics = await start(lambda p: reencrypt_snapshot(p, backend, tls))
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=gateway_client_ctx(), server_hostname="term.example.com"
        )
        _opened.append(writer.close)
        # The client's peer is gatewayd (verified against gatewayd's certificate).
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert peer == ssl.PEM_cert_to_DER_cert(CERT.decode())
        # The backend speaks first over its own TLS connection: the policy hostname was
        # the SNI, no ALPN was offered (a splice does not know its protocol).
        assert await reader.readline() == b"hello sni=backend.example alpn=None\n"
        writer.write(b"through two TLS connections")
        assert await reader.readexactly(27) == b"through two TLS connections"
        assert bytes(backend.received) == b"through two TLS connections"
        # The Gateway's client certificate was presented (the backend requires one).
        assert backend.client_cns == ["gw-client.example"]
        assert results(metrics) == {"terminate": 1}
        assert metrics._us_cx == {"default/b:443": 1}
        writer.close()
        await writer.wait_closed()
        for _ in range(100):
            if not proxy.tls_routes.splices:
                break
            await asyncio.sleep(0.01)
        assert not proxy.tls_routes.splices and proxy.n_conns == 0
        assert metrics._us_cx == {"default/b:443": 0}

    run(go())


@pytest.mark.parametrize(
    "tls",
    [
        # A CA that did not sign the backend's certificate.
        BackendTLS(policy="default/p", hostname="backend.example", ca_pem=OTHER_CA),
        # The right CA, a hostname the certificate does not carry.
        BackendTLS(policy="default/p", hostname="elsewhere.example", ca_pem=BACKEND_CERT),
        # subjectAltNames replace the hostname check: none of them is on the certificate.
        BackendTLS(
            policy="default/p",
            hostname="backend.example",
            ca_pem=BACKEND_CERT,
            subject_alt_names=("other.example",),
        ),
    ],
    ids=["wrong-ca", "wrong-hostname", "wrong-san"],
)
def test_reencrypt_verification_failure_closes_the_client_and_sends_nothing(
    tls: BackendTLS,
) -> None:
    async def go() -> None:
        backend = await TLSBackend().start()
        proxy, port, out = await logged_start(lambda p: reencrypt_snapshot(p, backend, tls))
        metrics = proxy.metrics
        assert metrics is not None
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=gateway_client_ctx(), server_hostname="term.example.com"
        )
        _opened.append(writer.close)
        writer.write(b"secret that must not reach the backend")
        assert await closed_by_peer(reader)
        assert backend.snis == [tls.hostname]  # gatewayd did try its handshake ...
        assert backend.received == b""  # ... but sent no application byte
        flags, *rest = fields(await one_line(out))
        assert flags == "UF"
        assert rest[-1] == '"upstream_connect_failure"'
        assert results(metrics) == {"terminate": 1, "upstream_connect_failure": 1}
        assert metrics._us_fail == {"default/b:443": 1}
        assert proxy.n_conns == 0

    run(go())


def test_reencrypt_with_an_unusable_client_certificate_fails_like_a_connect() -> None:
    # The Gateway's client certificate does not load (its key is another one's): as
    # for an HTTP backend, a failed connect; the backend is not contacted.
    wrong = ClientCertificate(chain_pem=CLIENT_CERT, key_pem=BACKEND_KEY)
    tls = BackendTLS(
        policy="default/p",
        hostname="backend.example",
        ca_pem=BACKEND_CERT,
        client_certificate=wrong,
    )

    async def go() -> None:
        backend = await TLSBackend().start()
        proxy, port, out = await logged_start(lambda p: reencrypt_snapshot(p, backend, tls))
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=gateway_client_ctx(), server_hostname="term.example.com"
        )
        _opened.append(writer.close)
        assert await closed_by_peer(reader)
        assert fields(await one_line(out))[0] == "UF"
        assert backend.snis == []
        assert proxy.metrics is not None and proxy.metrics._us_fail == {"default/b:443": 1}

    run(go())


def test_reencrypted_backend_closing_first_closes_the_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = BackendTLS(policy="default/p", hostname="backend.example", ca_pem=BACKEND_CERT)

    async def go() -> None:
        backend = await TLSBackend(echo=False).start()
        proxy, port, metrics = await start(lambda p: reencrypt_snapshot(p, backend, tls))
        reader, writer = await asyncio.open_connection(
            LOCAL, port, ssl=gateway_client_ctx(), server_hostname="term.example.com"
        )
        _opened.append(writer.close)
        assert await reader.readline() == b"hello sni=backend.example alpn=None\n"
        # The backend's close_notify ends the splice: the client gets gatewayd's.
        assert await closed_by_peer(reader)
        for _ in range(100):
            if not proxy.tls_routes.splices:
                break
            await asyncio.sleep(0.01)
        assert not proxy.tls_routes.splices and proxy.n_conns == 0
        assert results(metrics) == {"terminate": 1}

    with caplog.at_level(logging.WARNING):
        run(go())
    # The splice does not ask the loop's TLS transport to stay half-open.
    assert "eof_received" not in caplog.text
