"""PROXY protocol end to end through ``gatewayd run --proxy-protocol``.

One daemon, one Gateway on 127.0.0.1 with:
- ``trusted`` (HTTP): loopback trusted: a v1 or v2 header's source becomes the client
  (X-Forwarded-For, X-Envoy-External-Address, access log); no header: refused;
- ``untrusted`` (HTTP): only 192.0.2.0/24 trusted: loopback clients are served as they
  are, and a header from them is refused;
- ``secure`` (HTTPS): the header comes before the TLS handshake;
- ``pass-v1``/``pass-v2`` (TLS Passthrough): TLSRoutes to Services annotated
  ``gatewayd.io/upstream-proxy-protocol``: the backend gets a header naming the client,
  then the client's ClientHello untouched;
- ``tcp`` (TCP, TCPRoute): a trusted balancer's header in, the Service's header out,
  naming the balancer's client.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_kit import (
    LOCALHOST,
    EchoFactory,
    Gatewayd,
    backend_manifests,
    backend_ref,
    deadline_loop,
    echo_header,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    rule,
    to_yaml,
)
from l4_kit import l4_backend, l4_route
from tls_e2e_kit import client_hello_bytes, make_cert, tls_listener, tls_route

pytestmark = pytest.mark.e2e

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
CLIENT = "203.0.113.7"


def v1(source: str = CLIENT, sport: int = 51234, dport: int = 80) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {sport} {dport}\r\n".encode()


def v2(source: str = CLIENT, sport: int = 40000, dport: int = 80) -> bytes:
    block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    block += struct.pack("!HH", sport, dport)
    return V2_SIG + b"\x21\x11" + struct.pack("!H", len(block)) + block


class Capture:
    """A TCP backend that records the first bytes of each connection, then closes."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while len(data) < 64:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
            with self.lock:
                self.seen.append(data)

    def wait(self, count: int, timeout: float = 5.0) -> list[bytes]:
        for _ in deadline_loop(timeout):
            with self.lock:
                if len(self.seen) >= count:
                    return list(self.seen)
        raise AssertionError(f"backend saw {len(self.seen)} connections, wanted {count}")

    def close(self) -> None:
        self.sock.close()


class Env:
    def __init__(self, tmp: Path, echoes: EchoFactory) -> None:
        self.tmp = tmp
        (self.echo,) = echoes.start("echo")
        self.cap_v1 = Capture()
        self.cap_v2 = Capture()
        self.cap_tcp = Capture()
        self.cert = make_cert("secure.example.com")
        self.trusted = free_port()
        self.untrusted = free_port()
        self.secure = free_port()
        self.pass_v1 = free_port()
        self.pass_v2 = free_port()
        self.tcp = free_port()
        self.daemon: Gatewayd | None = None

    def docs(self) -> str:
        https = listener("secure", self.secure, protocol="HTTPS")
        https["tls"] = {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]}
        gw = gateway(
            "gw",
            [
                listener("trusted", self.trusted),
                listener("untrusted", self.untrusted),
                https,
                tls_listener("pass-v1", self.pass_v1, mode="Passthrough"),
                tls_listener("pass-v2", self.pass_v2, mode="Passthrough"),
                listener("tcp", self.tcp, protocol="TCP"),
            ],
        )
        services: list[dict[str, Any]] = []
        for name, cap, version in (("cap-v1", self.cap_v1, "v1"), ("cap-v2", self.cap_v2, "v2")):
            docs = backend_manifests(name, cap.port, service_port=443, port_name="tls")
            docs[0]["metadata"]["annotations"] = {"gatewayd.io/upstream-proxy-protocol": version}
            services += docs
        tcp_docs = l4_backend("cap-tcp", self.cap_tcp.port)
        tcp_docs[0]["metadata"]["annotations"] = {"gatewayd.io/upstream-proxy-protocol": "v2"}
        services += tcp_docs
        docs = [
            gateway_class(),
            gw,
            *self.echo.manifests(),
            *services,
            http_route("web", [rule(backends=[backend_ref("echo")])]),
            tls_route("p1", ["pass.example.com"], [("cap-v1", 1)], section="pass-v1"),
            tls_route("p2", ["pass.example.com"], [("cap-v2", 1)], section="pass-v2"),
            l4_route("TCPRoute", "db", [("cap-tcp", None)], section="tcp"),
        ]
        return to_yaml(docs) + "---\n" + self.cert.secret_yaml("cert")

    def args(self) -> tuple[str, ...]:
        return (
            "--proxy-protocol",
            f"{self.trusted}=127.0.0.0/8",
            "--proxy-protocol",
            f"{self.secure}=127.0.0.1",
            "--proxy-protocol",
            f"{self.untrusted}=192.0.2.0/24",
            "--proxy-protocol",
            f"{self.tcp}=127.0.0.1",
            "--proxy-protocol-timeout",
            "0.5",
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    echoes = EchoFactory()
    e = Env(tmp_path_factory.mktemp("proxy-protocol"), echoes)
    try:
        e.daemon = Gatewayd(e.tmp / "gatewayd", e.docs(), args=e.args())
        yield e
    finally:
        if e.daemon is not None:
            e.daemon.stop()
        e.cap_v1.close()
        e.cap_v2.close()
        e.cap_tcp.close()
        echoes.close()


def exchange(sock: socket.socket | ssl.SSLSocket, host: str) -> tuple[int, bytes]:
    """Send one GET (Connection: close) on ``sock``; (status, body), (0, b"") if the
    connection was closed without an answer."""
    data = b""
    try:
        # A refused connection may be reset before the request is even sent.
        sock.sendall(f"GET /who HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def get(port: int, first: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection((LOCALHOST, port), timeout=5) as s:
        if first:
            s.sendall(first)
        return exchange(s, f"{LOCALHOST}:{port}")


def test_v1_and_v2_headers_name_the_client(env: Env) -> None:
    for header in (v1(), v2()):
        status, body = get(env.trusted, header)
        assert status == 200, body
        doc = json.loads(body)
        assert echo_header(doc, "x-forwarded-for") == [CLIENT]
        assert echo_header(doc, "x-envoy-external-address") == [CLIENT]
    assert env.daemon is not None
    assert env.daemon.child.stdout.wait_for(lambda line: f'"{CLIENT}"' in line, 5.0), (
        "the access log line shows the PROXY header's client in X-Forwarded-For"
    )


def test_local_and_unknown_keep_the_peer(env: Env) -> None:
    local = V2_SIG + b"\x20\x00\x00\x00"
    for header in (b"PROXY UNKNOWN\r\n", local):
        status, body = get(env.trusted, header)
        assert status == 200
        assert echo_header(json.loads(body), "x-forwarded-for") == ["127.0.0.1"]


def refused_count(daemon: Gatewayd, reason: str) -> float:
    samples = prometheus_samples(daemon.metrics(), "gatewayd_proxy_protocol_refused_total")
    return sum(v for labels, v in samples if labels.get("reason") == reason)


def test_trusted_source_without_header_is_refused(env: Env) -> None:
    assert env.daemon is not None
    before = refused_count(env.daemon, "invalid")
    assert get(env.trusted) == (0, b"")  # a plain GET is not a PROXY header: closed
    started = time.monotonic()
    with socket.create_connection((LOCALHOST, env.trusted), timeout=5) as s:
        s.sendall(b"PROXY TCP4 203.0.")  # never finished: closed at the timeout
        assert s.recv(10) == b""
    assert 0.3 < time.monotonic() - started < 3.0
    assert refused_count(env.daemon, "invalid") == before + 1
    assert refused_count(env.daemon, "timeout") >= 1
    # One log line a second per port: the first refusal is logged, the second counted.
    assert "connection from 127.0.0.1 refused: not a PROXY protocol header" in (env.daemon.output())


def test_untrusted_source_is_served_but_cannot_claim_an_address(env: Env) -> None:
    assert env.daemon is not None
    status, body = get(env.untrusted)
    assert status == 200
    assert echo_header(json.loads(body), "x-forwarded-for") == ["127.0.0.1"]
    for header in (v1(), v2()):
        assert get(env.untrusted, header) == (0, b"")
    assert refused_count(env.daemon, "untrusted") >= 2
    assert "PROXY header from an untrusted source" in env.daemon.output()


def test_header_before_tls_handshake(env: Env) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((LOCALHOST, env.secure), timeout=5) as raw:
        raw.sendall(v2(sport=1111, dport=443))
        with ctx.wrap_socket(raw, server_hostname="secure.example.com") as tls:
            status, body = exchange(tls, "secure.example.com")
    assert status == 200
    doc = json.loads(body)
    assert echo_header(doc, "x-forwarded-for") == [CLIENT]
    assert echo_header(doc, "x-forwarded-proto") == ["https"]


def test_passthrough_backends_get_a_header_then_the_client_hello(env: Env) -> None:
    *_, hello = client_hello_bytes("pass.example.com")
    for port in (env.pass_v1, env.pass_v2):
        with socket.create_connection((LOCALHOST, port), timeout=5) as s:
            s.sendall(hello)
            s.settimeout(3)
            with contextlib.suppress(OSError):
                s.recv(10)  # the capture closes after reading
    first_v1 = env.cap_v1.wait(1)[0]
    line, _, rest = first_v1.partition(b"\r\n")
    fields = line.split(b" ")
    assert fields[:3] == [b"PROXY", b"TCP4", b"127.0.0.1"]
    assert fields[3] == b"127.0.0.1" and int(fields[5]) == env.pass_v1
    assert rest.startswith(hello[: len(rest)]) and rest[:1] == b"\x16"
    first_v2 = env.cap_v2.wait(1)[0]
    assert first_v2.startswith(V2_SIG + b"\x21\x11\x00\x0c")
    src, dst = socket.inet_ntoa(first_v2[16:20]), socket.inet_ntoa(first_v2[20:24])
    sport, dport = struct.unpack("!HH", first_v2[24:28])
    assert (src, dst, dport) == ("127.0.0.1", "127.0.0.1", env.pass_v2) and sport > 0
    assert first_v2[28:29] == b"\x16"


def test_bad_upstream_annotation_is_reported(tmp_path: Path) -> None:
    """An annotation value gatewayd does not know makes the backendRef unusable, said in
    the route's ResolvedRefs condition."""
    cap = Capture()
    port = free_port()
    try:
        docs = backend_manifests("cap", cap.port, service_port=443, port_name="tls")
        docs[0]["metadata"]["annotations"] = {"gatewayd.io/upstream-proxy-protocol": "v3"}
        manifest = to_yaml(
            [
                gateway_class(),
                gateway("gw", [tls_listener("pass", port, mode="Passthrough")]),
                *docs,
                tls_route("p", ["pass.example.com"], [("cap", 1)]),
            ]
        )
        daemon = Gatewayd(tmp_path, manifest)
        try:
            status = daemon.status_of("TLSRoute", "p")
            conditions = status["parents"][0]["conditions"]
            resolved = next(c for c in conditions if c["type"] == "ResolvedRefs")
            assert resolved["status"] == "False"
            assert resolved["reason"] == "UnsupportedProtocol"
            assert "gatewayd.io/upstream-proxy-protocol='v3'" in resolved["message"]
        finally:
            daemon.stop()
    finally:
        cap.close()


def test_flag_is_checked(tmp_path: Path) -> None:
    from e2e_kit import run_cli

    for bad in ("10.0.0.300/8", "70000=10.0.0.0/8", "80="):
        result = run_cli("run", "--config", str(tmp_path), "--proxy-protocol", bad)
        assert result.returncode == 2
        assert "--proxy-protocol" in result.stderr


def test_tcp_route_passes_the_balancers_client_on(env: Env) -> None:
    """A balancer's header in (v1), the Service's header out (v2) naming that client."""
    with socket.create_connection((LOCALHOST, env.tcp), timeout=5) as s:
        s.sendall(v1(sport=4242, dport=5432) + b"SELECT 1;")
        s.settimeout(3)
        with contextlib.suppress(OSError):
            s.recv(10)
    first = env.cap_tcp.wait(1)[0]
    assert first.startswith(V2_SIG + b"\x21\x11\x00\x0c")
    assert socket.inet_ntoa(first[16:20]) == CLIENT
    assert struct.unpack("!H", first[24:26])[0] == 4242
    assert first[28:] == b"SELECT 1;"
