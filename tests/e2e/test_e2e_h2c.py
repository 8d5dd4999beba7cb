"""Cleartext HTTP/2 with prior knowledge on an HTTP listener, end to end: the `h2`
package as the client over a real socket, gatewayd in front of an HTTP/1.1 echo
backend (h2 -> h1 translation), and HTTP/1.1 still served on the same port."""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import pytest
import yaml
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    request,
    rule,
)

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None


class H2cClient:
    """A prior-knowledge HTTP/2 client on a blocking socket (bounded reads)."""

    def __init__(
        self,
        port: int,
        tls: ssl.SSLContext | None = None,
        sni: str = "",
        *,
        streams: int = 100,
        stream_window: int = 64 * 1024,
        connection_window: int = 1024 * 1024,
    ) -> None:
        raw = socket.create_connection((LOCALHOST, port), timeout=10)
        self.sock: socket.socket = raw
        if tls is not None:
            self.sock = tls.wrap_socket(raw, server_hostname=sni)
            assert self.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        self.scheme = b"https" if tls is not None else b"http"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.goaway: h2.events.ConnectionTerminated | None = None
        # The server's preface: its SETTINGS and the connection window (1 MiB default).
        for _ in range(100):
            if (
                self.conn.outbound_flow_control_window == connection_window
                and self.conn.remote_settings.initial_window_size == stream_window
            ):
                break
            data = self.sock.recv(65536)
            assert data, "gatewayd closed the connection"
            self.conn.receive_data(data)
            self.sock.sendall(self.conn.data_to_send())
        assert self.conn.remote_settings.max_concurrent_streams == streams
        assert self.conn.remote_settings.initial_window_size == stream_window
        assert self.conn.outbound_flow_control_window == connection_window

    def close(self) -> None:
        self.sock.close()

    def send(
        self, path: str, *, method: str = "GET", authority: str = "h2c.example", body: bytes = b""
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", self.scheme),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ]
        self.conn.send_headers(sid, headers, end_stream=not body)
        size = self.conn.max_outbound_frame_size
        for i in range(0, len(body), size):
            self.conn.send_data(sid, body[i : i + size], end_stream=i + size >= len(body))
        self.sock.sendall(self.conn.data_to_send())
        return sid

    def wait(self, sids: list[int]) -> dict[int, Answer]:
        answers = {sid: Answer() for sid in sids}
        for _ in range(1000):
            if all(a.ended or a.reset is not None for a in answers.values()):
                break
            data = self.sock.recv(65536)
            assert data, "gatewayd closed the connection"
            for ev in self.conn.receive_data(data):
                a = answers.get(getattr(ev, "stream_id", 0) or 0)
                if isinstance(ev, h2.events.ConnectionTerminated):
                    self.goaway = ev
                elif a is None:
                    continue
                elif isinstance(ev, h2.events.ResponseReceived):
                    a.headers = dict(ev.headers or ())
                    a.status = int(a.headers[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    a.body += ev.data or b""
                    self.conn.acknowledge_received_data(
                        ev.flow_controlled_length or 0, ev.stream_id or 0
                    )
                elif isinstance(ev, h2.events.StreamEnded):
                    a.ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    a.reset = ev.error_code
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
        return answers


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    https_port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (backend,) = module_echoes.start("h2c-echo")
    port, https_port = free_port(), free_port()
    cert, key = self_signed(["h2c.example"], days=30)
    https = {
        "name": "https",
        "port": https_port,
        "protocol": "HTTPS",
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "h2-cert"}]},
    }
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port), https]),
        yaml.safe_load(secret_manifest(cert, key, name="h2-cert", namespace="default")),
        *backend.manifests(),
        http_route("r", [rule(backends=[backend_ref("h2c-echo")])], hostnames=["h2c.example"]),
    ]
    return Env(module_gatewayd(docs), port, https_port)


def test_h2c_prior_knowledge_reaches_an_http1_backend(env: Env) -> None:
    client = H2cClient(env.port)
    try:
        sid = client.send("/hello?x=1")
        answer = client.wait([sid])[sid]
    finally:
        client.close()
    assert answer.status == 200
    assert answer.ended
    doc = json.loads(answer.body)
    assert doc["pod"] == "h2c-echo"
    assert doc["path"] == "/hello?x=1"
    assert doc["host"] == "h2c.example"  # :authority became Host (RFC 9113 8.3.1)
    assert doc["proto"] == "HTTP/1.1"
    assert doc["headers"]["Cookie"] == ["a=1; b=2"]  # joined for the HTTP/1.1 hop
    assert doc["headers"]["X-Forwarded-Proto"] == ["http"]
    # No connection-specific field comes back over HTTP/2 (h2 would refuse it anyway).
    assert b"connection" not in answer.headers
    assert b"transfer-encoding" not in answer.headers


def test_many_streams_on_one_connection_with_bodies(env: Env) -> None:
    client = H2cClient(env.port)
    try:
        sids = [client.send(f"/s{i}", method="POST", body=b"x" * (3000 * i + 1)) for i in range(20)]
        answers = client.wait(sids)
    finally:
        client.close()
    for i, sid in enumerate(sids):
        a = answers[sid]
        assert a.status == 200, (i, a)
        doc = json.loads(a.body)
        assert doc["path"] == f"/s{i}"
        assert doc["body_bytes"] == 3000 * i + 1


def test_unknown_host_is_a_404_stream_not_a_closed_connection(env: Env) -> None:
    client = H2cClient(env.port)
    try:
        miss = client.send("/", authority="other.example")
        hit = client.send("/")
        answers = client.wait([miss, hit])
    finally:
        client.close()
    assert answers[miss].status == 404
    assert answers[hit].status == 200


def test_http1_is_still_served_on_the_same_port(env: Env) -> None:
    r = request(env.port, "/plain", host="h2c.example")
    assert r.status == 200
    assert r.json()["path"] == "/plain"


def test_https_listener_serves_h2_after_alpn(env: Env) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    client = H2cClient(env.https_port, ctx, "h2c.example")
    try:
        sids = [client.send(f"/tls{i}") for i in range(5)]
        answers = client.wait(sids)
    finally:
        client.close()
    for i, sid in enumerate(sids):
        assert answers[sid].status == 200
        doc = json.loads(answers[sid].body)
        assert doc["path"] == f"/tls{i}"
        assert doc["headers"]["X-Forwarded-Proto"] == ["https"]


def test_h2_limit_flags_are_advertised(gatewayd, module_echoes) -> None:  # type: ignore[no-untyped-def]
    """--h2-max-concurrent-streams, --h2-initial-stream-window and
    --h2-initial-connection-window reach the client's SETTINGS and windows (checked by
    H2cClient), and a body the larger stream window allows goes through."""
    (backend,) = module_echoes.start("h2c-flags")
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *backend.manifests(),
        http_route("r", [rule(backends=[backend_ref("h2c-flags")])], hostnames=["h2c.example"]),
    ]
    gatewayd(
        docs,
        args=[
            "--h2-max-concurrent-streams", "2",
            "--h2-initial-stream-window", "128KiB",
            "--h2-initial-connection-window", "4MiB",
        ],
    )  # fmt: skip
    c = H2cClient(port, streams=2, stream_window=128 * 1024, connection_window=4 * 1024 * 1024)
    try:
        # A 100 KiB body fits the 128 KiB stream window (the default 64 KiB would not).
        sid = c.send("/big", method="POST", body=b"x" * (100 * 1024))
        answer = c.wait([sid])[sid]
        assert answer.status == 200
        assert json.loads(answer.body)["body_bytes"] == 100 * 1024
    finally:
        c.close()
