"""TLS listeners with TLSRoutes, end to end: ``gatewayd run`` as a subprocess, real
handshakes over loopback, TLS and plain echo backends (tls_e2e_kit.py).

One daemon serves the module, with three ports:

- pass_port: one Passthrough listener without hostname; routes by SNI to echo-a
  (a.example.com, pass-through hostname of the mixed port too), echo-b
  (*.wild.example.com) and 50/50 between them (w.example.com);
- term_port: one Terminate listener (tls.example.com) with gatewayd's certificate, routed
  to a plaintext echo backend (conformance TLSRouteTerminateSimpleSameNamespace);
- mix_port: a Terminate and a Passthrough listener on the same port
  (TLSRouteMixedTerminationSameNamespace).

The reload test runs its own daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    prometheus_samples,
    to_yaml,
)
from tls_e2e_kit import (
    EchoServer,
    bio_read_line,
    call,
    client_context,
    client_hello_bytes,
    finish_handshake,
    listening_inodes,
    make_cert,
    read_exactly,
    read_line,
    refused,
    split_records,
    tls_connection,
    tls_listener,
    tls_route,
    tls_route_results,
)

pytestmark = pytest.mark.e2e


class Env:
    def __init__(self, tmp: Path) -> None:
        self.cert_a = make_cert("a.example.com", "pass.example.com")
        self.cert_b = make_cert("*.wild.example.com")
        self.cert_gw = make_cert("tls.example.com", "term.example.com")
        self.a = EchoServer("echo-a", self.cert_a).start()
        self.b = EchoServer("echo-b", self.cert_b).start()
        self.plain = EchoServer("echo-plain").start()
        self.daemon: Gatewayd | None = None
        self.tmp = tmp
        self.pass_port = free_port()
        self.term_port = free_port()
        self.mix_port = free_port()

    def docs(self) -> str:
        gw = gateway(
            "gw",
            [
                tls_listener("pass", self.pass_port, mode="Passthrough"),
                tls_listener(
                    "term",
                    self.term_port,
                    mode="Terminate",
                    hostname="tls.example.com",
                    secret="gw-cert",
                ),
                tls_listener(
                    "mix-term",
                    self.mix_port,
                    mode="Terminate",
                    hostname="term.example.com",
                    secret="gw-cert",
                ),
                tls_listener(
                    "mix-pass", self.mix_port, mode="Passthrough", hostname="pass.example.com"
                ),
            ],
            address=LOCALHOST,
        )
        docs: list[dict[str, Any]] = [
            gateway_class(),
            gw,
            *self.a.manifests(),
            *self.b.manifests(),
            *self.plain.manifests(),
            tls_route("r-a", ["a.example.com"], [("echo-a", 1)], section="pass"),
            tls_route("r-wild", ["*.wild.example.com"], [("echo-b", 1)], section="pass"),
            tls_route("r-w", ["w.example.com"], [("echo-a", 1), ("echo-b", 1)], section="pass"),
            tls_route("r-term", ["tls.example.com"], [("echo-plain", 1)], section="term"),
            tls_route("r-mix-term", ["term.example.com"], [("echo-plain", 1)], section="mix-term"),
            tls_route("r-mix-pass", ["pass.example.com"], [("echo-a", 1)], section="mix-pass"),
        ]
        return to_yaml(docs) + "---\n" + self.cert_gw.secret_yaml("gw-cert")

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        for s in (self.a, self.b, self.plain):
            s.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("tls-e2e"))
    try:
        e.daemon = Gatewayd(e.tmp / "gatewayd", e.docs())
        yield e
    finally:
        e.close()


# --------------------------------------------------------------------------- access log


def test_each_connection_writes_one_access_log_line(env: Env) -> None:
    """The daemon runs with the default --access-log text: one line per TLS connection
    on stdout when it ends, refused ones included."""
    assert env.daemon is not None
    out = env.daemon.child.stdout
    payload = b"log this connection\n"
    with tls_connection(env.pass_port, "a.example.com") as tls:
        client = f"{LOCALHOST}:{tls.getsockname()[1]}"
        assert read_line(tls).startswith("echo-a ")
        tls.sendall(payload)
        assert read_exactly(tls, len(payload)) == payload
    line = out.wait_for(lambda s: f" {client} " in s, timeout=5)
    assert line is not None, "no access log line on stdout\n" + env.daemon.output()
    _, tail = line.split('] "- - -" 0 ', 1)
    flags, rx, tx, _, *rest = tail.split(" ")
    # The whole TLS stream both ways: handshake, greeting, payload, close_notify.
    assert flags == "-" and int(rx) > len(payload) and int(tx) > len(payload)
    assert rest[5:] == [
        f'"{LOCALHOST}:{env.a.port}"',
        client,
        '"a.example.com"',
        '"default/echo-a:443"',
        '"default/r-a/rule/0"',
        '"-"',
    ]
    assert out.count(lambda s: f" {client} " in s) == 1
    refused(env.pass_port, "nobody-logged.example.org")
    line = out.wait_for(lambda s: '"nobody-logged.example.org"' in s, timeout=5)
    assert line is not None, "no access log line on stdout\n" + env.daemon.output()
    assert ' "- - -" 0 NR ' in line and line.endswith('"no_route"')


# --------------------------------------------------------------------------- passthrough


def test_passthrough_client_sees_the_backend_certificate(env: Env) -> None:
    answer = call(env.pass_port, "a.example.com", b"hello through the splice\n")
    assert answer.greeting == "echo-a tls sni=a.example.com"
    assert answer.peer_der == env.cert_a.der
    assert answer.peer_der != env.cert_gw.der
    assert answer.echoed == b"hello through the splice\n"


def test_sni_routes_to_backends_by_hostname_and_wildcard(env: Env) -> None:
    assert call(env.pass_port, "A.Example.com").greeting.startswith("echo-a ")
    wild = call(env.pass_port, "x.wild.example.com")
    assert wild.greeting == "echo-b tls sni=x.wild.example.com"
    assert wild.peer_der == env.cert_b.der
    assert call(env.pass_port, "deep.x.wild.example.com").greeting.startswith("echo-b ")


def test_backend_weights_split_connections(env: Env) -> None:
    seen = {"echo-a": 0, "echo-b": 0}
    n = 40
    for _ in range(n):
        seen[call(env.pass_port, "w.example.com").greeting.split()[0]] += 1
    # 50/50 over 40 connections: each side within 8..32 fails with p < 1e-4.
    assert 8 <= seen["echo-a"] <= 32, seen
    assert seen["echo-a"] + seen["echo-b"] == n


def test_client_hello_in_one_byte_writes_and_several_records(env: Env) -> None:
    obj, incoming, outgoing, hello = client_hello_bytes("a.example.com")
    wire = split_records(hello, 3)
    with socket.create_connection((LOCALHOST, env.pass_port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(wire)):
            sock.sendall(wire[i : i + 1])
            time.sleep(0.0005)  # so that reads see the pieces, not one coalesced segment
        finish_handshake(sock, obj, incoming, outgoing)
        assert obj.getpeercert(binary_form=True) == env.cert_a.der
        assert bio_read_line(sock, obj, incoming) == "echo-a tls sni=a.example.com"


def test_no_sni_is_closed_and_no_backend_is_contacted(env: Env) -> None:
    assert env.daemon is not None
    before = (env.a.connections, env.b.connections, env.plain.connections)
    no_sni = tls_route_results(env.daemon, env.pass_port).get("no_sni", 0.0)
    refused(env.pass_port, None)
    for _ in deadline_loop(5):
        if tls_route_results(env.daemon, env.pass_port).get("no_sni", 0.0) == no_sni + 1:
            break
    assert tls_route_results(env.daemon, env.pass_port).get("no_sni", 0.0) == no_sni + 1
    assert (env.a.connections, env.b.connections, env.plain.connections) == before


def test_unknown_sni_is_closed_and_no_backend_is_contacted(env: Env) -> None:
    assert env.daemon is not None
    before = (env.a.connections, env.b.connections, env.plain.connections)
    refused(env.pass_port, "nobody.example.org")
    refused(env.mix_port, "other.example.com")  # matches neither listener of the mixed port
    for _ in deadline_loop(5):
        if tls_route_results(env.daemon, env.mix_port).get("no_route", 0.0) >= 1:
            break
    assert tls_route_results(env.daemon, env.pass_port).get("no_route", 0.0) >= 1
    assert tls_route_results(env.daemon, env.mix_port).get("no_route", 0.0) >= 1
    assert (env.a.connections, env.b.connections, env.plain.connections) == before


def test_plain_http_on_a_tls_port_is_closed(env: Env) -> None:
    with socket.create_connection((LOCALHOST, env.pass_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        assert sock.recv(100) == b""


def test_large_transfer_both_ways_is_intact(env: Env) -> None:
    size = 6 * 1024 * 1024
    payload = os.urandom(size)

    async def run() -> tuple[str, bytes]:
        reader, writer = await asyncio.open_connection(
            LOCALHOST, env.pass_port, ssl=client_context(), server_hostname="a.example.com"
        )
        try:
            greeting = (await reader.readline()).decode().strip()

            async def send() -> None:
                view = memoryview(payload)
                for i in range(0, size, 256 * 1024):
                    writer.write(view[i : i + 256 * 1024])
                    await writer.drain()

            sender = asyncio.create_task(send())
            got = await reader.readexactly(size)
            await sender
            return greeting, got
        finally:
            writer.close()
            await writer.wait_closed()

    greeting, got = asyncio.run(asyncio.wait_for(run(), 60))
    assert greeting == "echo-a tls sni=a.example.com"
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


# --------------------------------------------------------------------------- terminate


def test_terminate_presents_gatewayd_certificate_and_sends_plaintext(env: Env) -> None:
    answer = call(env.term_port, "tls.example.com", b"ping in the clear\n")
    assert answer.peer_der == env.cert_gw.der
    assert answer.greeting == "echo-plain plain"
    assert answer.echoed == b"ping in the clear\n"
    # The backend got the bytes the client encrypted, decrypted.
    assert b"ping in the clear\n" in env.plain.first_bytes


def test_terminate_large_transfer_is_intact(env: Env) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with tls_connection(env.term_port, "tls.example.com") as tls:
        assert read_line(tls).strip() == "echo-plain plain"
        # Interleave: send a slice, read it back, so neither buffer grows unbounded.
        got = bytearray()
        view = memoryview(payload)
        for i in range(0, len(payload), 128 * 1024):
            piece = view[i : i + 128 * 1024]
            tls.sendall(piece)
            while len(got) < i + len(piece):
                chunk = tls.recv(len(piece))
                assert chunk, "connection closed mid-transfer"
                got += chunk
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_terminate_with_unknown_sni_is_closed(env: Env) -> None:
    before = env.plain.connections
    refused(env.term_port, "other.example.com")
    assert env.plain.connections == before


# --------------------------------------------------------------------------- mixed


def test_mixed_port_serves_passthrough_and_terminate(env: Env) -> None:
    term = call(env.mix_port, "term.example.com")
    assert term.peer_der == env.cert_gw.der
    assert term.greeting == "echo-plain plain"
    passed = call(env.mix_port, "pass.example.com")
    assert passed.peer_der == env.cert_a.der
    assert passed.greeting == "echo-a tls sni=pass.example.com"


def test_metrics_count_tls_listener_connections(env: Env) -> None:
    assert env.daemon is not None
    call(env.pass_port, "a.example.com")
    call(env.term_port, "tls.example.com")
    text = env.daemon.metrics()
    assert tls_route_results(env.daemon, env.pass_port).get("passthrough", 0.0) >= 1
    assert tls_route_results(env.daemon, env.term_port).get("terminate", 0.0) >= 1
    accepted = {
        labels["listener"]: value
        for labels, value in prometheus_samples(text, "gatewayd_downstream_cx_total")
    }
    assert accepted.get(env.daemon.listener_label(env.pass_port), 0) >= 1
    assert accepted.get(env.daemon.listener_label(env.term_port), 0) >= 1


def test_status_reports_tls_routes_accepted(env: Env) -> None:
    assert env.daemon is not None
    for name in ("r-a", "r-term", "r-mix-term", "r-mix-pass"):
        parents = env.daemon.status_of("TLSRoute", name)["parents"]
        accepted = {c["type"]: c["status"] for c in parents[0]["conditions"]}
        assert accepted["Accepted"] == "True", (name, parents)


# --------------------------------------------------------------------------- reload


def test_route_change_applies_to_new_connections_and_open_splices_continue(
    tmp_path: Path,
) -> None:
    a = EchoServer("echo-a", make_cert("r.example.com")).start()
    b = EchoServer("echo-b", make_cert("r.example.com")).start()
    port = free_port()
    daemon: Gatewayd | None = None

    def docs(target: str) -> str:
        return to_yaml(
            [
                gateway_class(),
                gateway("gw", [tls_listener("pass", port, mode="Passthrough")]),
                *a.manifests(),
                *b.manifests(),
                tls_route("r", ["r.example.com"], [(target, 1)]),
            ]
        )

    try:
        daemon = Gatewayd(tmp_path / "gatewayd", docs("echo-a"))
        inode = listening_inodes(port)
        assert inode, "nothing listens"
        with tls_connection(port, "r.example.com") as open_splice:
            assert read_line(open_splice).startswith("echo-a ")
            daemon.config.write_text(docs("echo-b"))
            greeting = ""
            for _ in deadline_loop(10, interval=0.1):
                greeting = call(port, "r.example.com").greeting
                if greeting.startswith("echo-b "):
                    break
            assert greeting.startswith("echo-b "), "the reload was not applied\n" + daemon.output()
            # The connection opened before the reload still reaches echo-a.
            open_splice.sendall(b"still here\n")
            assert read_line(open_splice) == "still here\n"
        assert listening_inodes(port) == inode
        assert call(port, "r.example.com").greeting.startswith("echo-b ")
    finally:
        if daemon is not None:
            daemon.stop()
        a.stop()
        b.stop()
