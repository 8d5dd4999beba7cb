"""WebSocket through ``gatewayd run`` (issue 12): HTTP/1.1 ``Upgrade: websocket`` through
HTTPRoutes to a real aiohttp WebSocket backend, with a real aiohttp client, and RFC 8441
extended CONNECT from an ``h2`` client over a real socket.

Also the upstream conformance scenario HTTPRouteBackendProtocolWebSocket, reproduced:
a route whose backend Service port says ``appProtocol: kubernetes.io/ws``, dialled at
``/ws`` with an Origin, a text and a binary message echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import aiohttp.abc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import yaml
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    MemorySampler,
    backend_ref,
    backend_tls_policy,
    ca_config_map,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    header_filter,
    http_route,
    listener,
    prometheus_samples,
    rule,
)
from ws_kit import (
    HANDSHAKE,
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    WebSocketBackend,
    client_frame,
    manifests_ws_service,
    parse_frames,
    unmasked_client_frame,
)

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

IDLE = 1.5  # --stream-idle-timeout of the daemon


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    backend: WebSocketBackend


@pytest.fixture(scope="module")
def ws_backend() -> Iterator[WebSocketBackend]:
    backend = WebSocketBackend()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def env(ws_backend: WebSocketBackend, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *manifests_ws_service("plain", ws_backend.port, None),
        *manifests_ws_service("wsapp", ws_backend.port, "kubernetes.io/ws"),
        http_route(
            "plain",
            [
                rule(
                    backends=[backend_ref("plain")],
                    filters=[
                        header_filter(set=[("x-gw-filter", "handshake")]),
                        header_filter("ResponseHeaderModifier", add=[("x-gw-resp", "yes")]),
                    ],
                )
            ],
            hostnames=["ws.example"],
        ),
        # HTTPRouteBackendProtocolWebSocket: a backend whose port says kubernetes.io/ws.
        http_route("backend-protocol-ws", [rule(backends=[backend_ref("wsapp")])]),
    ]
    daemon = module_gatewayd(
        docs, args=["--stream-idle-timeout", str(IDLE), "--access-log", "json"]
    )
    return Env(daemon, port, ws_backend)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def url(env: Env, path: str) -> str:
    return f"http://{LOCALHOST}:{env.port}{path}"


PLAIN = {"Host": "ws.example"}


def metric(daemon: Gatewayd, name: str, **labels: str) -> float:
    samples = prometheus_samples(daemon.metrics(), name)
    return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))


# ------------------------------------------------------------------ HTTP/1.1 Upgrade


def test_conformance_backend_protocol_websocket(env: Env) -> None:
    status = env.daemon.status_of("HTTPRoute", "backend-protocol-ws")["parents"][0]
    resolved = {c["type"]: c for c in status["conditions"]}["ResolvedRefs"]
    assert resolved["status"] == "True", resolved
    gc = env.daemon.status_of("GatewayClass", "gatewayd", namespace=None)
    assert "HTTPRouteBackendProtocolWebSocket" in {f["name"] for f in gc["supportedFeatures"]}

    async def main() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(url(env, "/ws"), origin="ws://gateway/conformance") as ws,
        ):
            await ws.send_str("Websocket Support!")
            assert await ws.receive_str(timeout=10) == "Websocket Support!"
            await ws.send_bytes(bytes([1, 2, 3, 4, 5, 6, 7]))
            assert await ws.receive_bytes(timeout=10) == bytes([1, 2, 3, 4, 5, 6, 7])

    run(main())


def test_plain_backend_echoes_text_binary_and_a_mebibyte(env: Env) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB

    async def main() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(url(env, "/echo"), headers=PLAIN, max_msg_size=4 << 20) as ws,
        ):
            assert ws._response.status == 101
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=10) == "hello"
            await ws.send_bytes(b"\x00\xff" * 10)
            assert await ws.receive_bytes(timeout=10) == b"\x00\xff" * 10
            await ws.send_bytes(big)
            assert await ws.receive_bytes(timeout=20) == big

    run(main())
    # One access log line when the tunnel closed, with the bytes each way.
    line = env.daemon.child.stdout.wait_for(
        lambda s: '"path":"/echo"' in s and '"response_code":101' in s, 10.0
    )
    assert line is not None
    entry = json.loads(line[line.index("{") :])
    assert entry["bytes_received"] > len(big)
    assert entry["bytes_sent"] > len(big)


def test_filters_apply_to_the_handshake(env: Env) -> None:
    async def main() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(url(env, "/headers"), headers=PLAIN) as ws,
        ):
            assert ws._response.headers.get("x-gw-resp") == "yes"
            seen = json.loads(await ws.receive_str(timeout=10))
            assert seen["x-gw-filter"] == "handshake"
            assert seen["upgrade"].lower() == "websocket"
            assert "upgrade" in seen["connection"].lower()
            assert seen["x-forwarded-proto"] == "http"

    run(main())


def test_fifty_concurrent_tunnels(env: Env) -> None:
    async def one(s: aiohttp.ClientSession, i: int) -> None:
        async with s.ws_connect(url(env, "/echo"), headers=PLAIN) as ws:
            for j in range(5):
                await ws.send_str(f"{i}-{j}")
                assert await ws.receive_str(timeout=20) == f"{i}-{j}"

    async def main() -> None:
        conn = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=conn) as s:
            await asyncio.gather(*(one(s, i) for i in range(50)))

    opened = metric(env.daemon, "gatewayd_upstream_tunnels_total")
    run(main())
    assert metric(env.daemon, "gatewayd_upstream_tunnels_total") >= opened + 50
    # Every tunnel closed: none left open, no upstream connection of theirs pooled.
    for _ in deadline_loop(10.0):
        if metric(env.daemon, "gatewayd_upstream_tunnels_active") == 0:
            break
    else:
        raise AssertionError(env.daemon.metrics())
    assert metric(env.daemon, "gatewayd_upstream_cx_active", backend="default/plain:80") == 0


def _open_raw(env: Env, path: str) -> tuple[socket.socket, bytes]:
    """A tunnel over a raw socket with a small receive buffer: (socket, bytes read
    after the 101 head)."""
    sock = socket.create_connection((LOCALHOST, env.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(HANDSHAKE.format(path=path).encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


FLOOD_MIB = 48


def test_a_client_that_does_not_read_stops_the_backend(env: Env) -> None:
    daemon = env.daemon
    sock, got = _open_raw(env, f"/flood?mib={FLOOD_MIB}")
    with sock, MemorySampler(daemon) as sampler:
        time.sleep(1.0)  # not reading (under --stream-idle-timeout)
        received = len(got)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    assert received >= FLOOD_MIB << 20  # everything arrived, once read
    assert sampler.peak_growth_kb() < 16 * 1024, "gatewayd buffered the flood"


def test_a_backend_that_does_not_read_stops_the_client(env: Env) -> None:
    daemon = env.daemon
    n = len(env.backend.sunk)
    frame = unmasked_client_frame(b"u" * 65536)
    total = FLOOD_MIB * 16
    sock, _ = _open_raw(env, "/sink?wait=1.0")
    with sock, MemorySampler(daemon) as sampler:
        sock.setblocking(False)
        sent_frames = 0
        pending = memoryview(frame)
        t0 = time.monotonic()
        while sent_frames < total:
            try:
                k = sock.send(pending)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            pending = pending[k:]
            if not pending:
                sent_frames += 1
                pending = memoryview(frame)
            if time.monotonic() - t0 > 30:
                raise AssertionError("upload did not finish")
        sock.setblocking(True)
        sock.sendall(client_frame(OP_CLOSE, b"\x03\xe8"))
        for _ in deadline_loop(10.0):
            if len(env.backend.sunk) > n:
                break
        else:
            raise AssertionError("the backend never saw the end")
    assert env.backend.sunk[n] == total * 65536
    # What the sockets hold is the kernel's (loopback buffers grow to several MiB per
    # socket); gatewayd itself held about a write buffer.
    assert sampler.peak_growth_kb() < 16 * 1024, "gatewayd buffered the upload"


def test_handshake_head_obeys_the_header_limits(env: Env) -> None:
    with socket.create_connection((LOCALHOST, env.port), timeout=10) as sock:
        many = b"".join(b"X-F%d: v\r\n" % i for i in range(150))  # over 100 fields
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\n" + many + b"\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 431")


def test_backend_close_reaches_the_client(env: Env) -> None:
    async def main() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(url(env, "/close"), headers=PLAIN) as ws,
        ):
            msg = await ws.receive(timeout=10)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            assert msg.data == 4001

    run(main())


def test_client_close_reaches_the_backend(env: Env) -> None:
    backend = env.backend
    backend.closed.clear()
    n = len(backend.closes)

    async def main() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(url(env, "/watch"), headers=PLAIN)
            await ws.send_str("x")
            assert await ws.receive_str(timeout=10) == "x"
            await ws.close(code=4002)

    run(main())
    assert backend.closed.wait(10)
    assert backend.closes[n:] == ["close 4002"]


def test_idle_tunnel_is_closed_after_the_stream_idle_timeout(env: Env) -> None:
    before = metric(env.daemon, "gatewayd_local_reply_total", reason="stream_idle_timeout")

    async def main() -> float:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(url(env, "/echo"), headers=PLAIN, autoping=False, heartbeat=None) as ws,
        ):
            await ws.send_str("once")
            assert await ws.receive_str(timeout=10) == "once"
            t0 = time.monotonic()
            msg = await ws.receive(timeout=IDLE * 6)
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
            return time.monotonic() - t0

    elapsed = run(main())
    assert IDLE * 0.9 <= elapsed < IDLE * 4, elapsed
    after = metric(env.daemon, "gatewayd_local_reply_total", reason="stream_idle_timeout")
    assert after == before + 1


def test_non_101_answer_is_relayed(env: Env) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(url(env, "/refuse"), headers=PLAIN)
            assert info.value.status == 403

    run(main())
    # The body too, over a raw socket.
    with socket.create_connection((LOCALHOST, env.port), timeout=10) as sock:
        sock.sendall(
            b"GET /refuse HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 403")
    assert data.endswith(b"no websocket here")


def test_other_upgrades_are_served_as_plain_requests(env: Env) -> None:
    # h2c upgrade and unknown tokens: the Upgrade is dropped, the backend answers the
    # plain GET (aiohttp's route only accepts WebSocket, so it says 400/426 ...).
    with socket.create_connection((LOCALHOST, env.port), timeout=10) as sock:
        sock.sendall(
            b"GET /refuse HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 403"), data[:100]


# ------------------------------------------------------------------ RFC 8441 over HTTP/2


def _h2_connect(env: Env, path: str) -> tuple[socket.socket, h2.connection.H2Connection, int]:
    sock = socket.create_connection((LOCALHOST, env.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    # The server's SETTINGS must allow extended CONNECT before we use it.
    enabled = None
    while enabled is None:
        for ev in conn.receive_data(sock.recv(65536)):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                setting = ev.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                enabled = setting.new_value if setting is not None else 0
        sock.sendall(conn.data_to_send())
    assert enabled == 1
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "ws.example"),
            ("sec-websocket-version", "13"),
        ],
    )
    sock.sendall(conn.data_to_send())
    return sock, conn, sid


def _h2_read(
    sock: socket.socket, conn: h2.connection.H2Connection, sid: int, buf: bytearray
) -> tuple[list[h2.events.Event], bool]:
    events = conn.receive_data(sock.recv(65536))
    ended = False
    for ev in events:
        if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
            buf += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
            ended = True
    sock.sendall(conn.data_to_send())
    return events, ended


def test_rfc8441_extended_connect_to_an_http1_backend(env: Env) -> None:
    sock, conn, sid = _h2_connect(env, "/echo")
    with sock:
        status = None
        buf = bytearray()
        while status is None:
            events, _ = _h2_read(sock, conn, sid, buf)
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"]
        assert status == b"200"
        big = bytes(range(256)) * 1024  # 256 KiB: several stream windows
        messages = [(OP_TEXT, b"hello over h2"), (OP_BINARY, b"\x01\x02\x03"), (OP_BINARY, big)]
        for opcode, payload in messages:
            frame = client_frame(opcode, payload)
            got: list[tuple[int, bytes]] = []
            pos = 0
            while pos < len(frame) or not got:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if pos < len(frame) and room > 0:
                    conn.send_data(sid, frame[pos : pos + room])
                    pos += room
                    sock.sendall(conn.data_to_send())
                    continue
                _h2_read(sock, conn, sid, buf)
                got += parse_frames(buf)
            assert got == [(opcode, payload)]
        # A close frame, echoed by the backend, then the stream ends.
        conn.send_data(sid, client_frame(OP_CLOSE, b"\x03\xe8"))
        sock.sendall(conn.data_to_send())
        ended = False
        frames: list[tuple[int, bytes]] = []
        for _ in deadline_loop(10.0, 0.0):
            _, ended = _h2_read(sock, conn, sid, buf)
            frames += parse_frames(buf)
            if ended:
                break
        assert frames and frames[0][0] == OP_CLOSE
        assert ended


def test_rfc8441_non_websocket_protocol_is_refused(env: Env) -> None:
    sock = socket.create_connection((LOCALHOST, env.port), timeout=10)
    with sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "CONNECT"),
                (":protocol", "connect-udp"),
                (":scheme", "http"),
                (":path", "/echo"),
                (":authority", "ws.example"),
            ],
            end_stream=True,
        )
        sock.sendall(conn.data_to_send())
        status = None
        for _ in deadline_loop(10.0, 0.0):
            for ev in conn.receive_data(sock.recv(65536)):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[b":status"]
            sock.sendall(conn.data_to_send())
            if status is not None:
                break
        assert status == b"501"


def test_websocket_over_an_https_listener(
    ws_backend: WebSocketBackend,
    gatewayd,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    cert, key = self_signed(["secure.example"])
    (tmp_path / "ca.pem").write_bytes(cert)
    https = {
        "name": "https",
        "port": port,
        "protocol": "HTTPS",
        "hostname": "secure.example",
        "tls": {"certificateRefs": [{"name": "secure"}]},
    }
    docs = [
        gateway_class(),
        gateway("gw", [https]),
        yaml.safe_load(secret_manifest(cert, key, name="secure", namespace="default")),
        *manifests_ws_service("wsapp", ws_backend.port, "kubernetes.io/ws"),
        http_route("wss", [rule(backends=[backend_ref("wsapp")])]),
    ]
    gatewayd(docs)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.set_alpn_protocols(["http/1.1"])

    async def main() -> None:
        conn = aiohttp.TCPConnector(ssl=ctx, resolver=_Localhost())
        async with (
            aiohttp.ClientSession(connector=conn) as s,
            s.ws_connect(f"https://secure.example:{port}/headers") as ws,
        ):
            seen = json.loads(await ws.receive_str(timeout=10))
            assert seen["x-forwarded-proto"] == "https"
            await ws.send_bytes(b"\x00" * 100_000)
            assert await ws.receive_bytes(timeout=10) == b"\x00" * 100_000
        # aiohttp's documented wait for the TLS transports to finish closing before the
        # loop ends (else they are collected unclosed).
        await asyncio.sleep(0.25)

    run(main())


class _Localhost(aiohttp.abc.AbstractResolver):
    """secure.example -> 127.0.0.1 (SNI and certificate checks use the name)."""

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):  # type: ignore[no-untyped-def,override]
        return [
            {
                "hostname": host,
                "host": LOCALHOST,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


def test_wss_backend_under_a_backend_tls_policy(
    gatewayd,  # type: ignore[no-untyped-def]
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    cert, key = self_signed(["ws.backend.example"])
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    backend = WebSocketBackend(ssl_context=ctx)
    try:
        port = free_port()
        docs = [
            gateway_class(),
            gateway("gw", [listener("http", port)]),
            *manifests_ws_service("secure-ws", backend.port, "kubernetes.io/wss"),
            *manifests_ws_service("bare-wss", backend.port, "kubernetes.io/wss"),
            ca_config_map("ca", cert),
            backend_tls_policy("secure-ws", "secure-ws", hostname="ws.backend.example", ca="ca"),
            http_route(
                "secure", [rule(backends=[backend_ref("secure-ws")])], hostnames=["wss.example"]
            ),
            http_route(
                "bare", [rule(backends=[backend_ref("bare-wss")])], hostnames=["bare.example"]
            ),
        ]
        daemon = gatewayd(docs)

        def resolved(route: str) -> dict[str, str]:
            parent = daemon.status_of("HTTPRoute", route)["parents"][0]
            return {c["type"]: c for c in parent["conditions"]}["ResolvedRefs"]

        assert resolved("secure")["status"] == "True"
        bare = resolved("bare")
        assert (bare["status"], bare["reason"]) == ("False", "UnsupportedProtocol")
        assert "BackendTLSPolicy" in bare["message"]

        async def main() -> None:
            async with (
                aiohttp.ClientSession() as s,
                s.ws_connect(
                    f"http://{LOCALHOST}:{port}/headers", headers={"Host": "wss.example"}
                ) as ws,
            ):
                seen = json.loads(await ws.receive_str(timeout=10))
                assert seen["upgrade"].lower() == "websocket"
                await ws.send_str("over TLS")
                assert await ws.receive_str(timeout=10) == "over TLS"
                await ws.send_bytes(b"z" * 300_000)
                assert await ws.receive_bytes(timeout=10) == b"z" * 300_000

        run(main())
    finally:
        backend.close()


def test_shutdown_closes_tunnels_after_the_drain_timeout(
    ws_backend: WebSocketBackend,
    gatewayd,  # type: ignore[no-untyped-def]
) -> None:
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *manifests_ws_service("plain", ws_backend.port, None),
        http_route("plain", [rule(backends=[backend_ref("plain")])]),
    ]
    daemon = gatewayd(docs, args=["--drain-timeout", "1"])

    async def main() -> float:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"http://{LOCALHOST}:{port}/echo") as ws,
        ):
            await ws.send_str("before")
            assert await ws.receive_str(timeout=10) == "before"
            t0 = time.monotonic()
            os.kill(daemon.pid, signal.SIGTERM)
            await asyncio.sleep(0.3)
            # Draining: the open tunnel still works ...
            await ws.send_str("during")
            assert await ws.receive_str(timeout=10) == "during"
            # ... until the drain timeout closes it.
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
            return time.monotonic() - t0

    elapsed = run(main())
    assert 0.8 <= elapsed < 5.0, elapsed


def test_rfc8441_stream_window_is_the_backpressure(env: Env) -> None:
    sock, conn, sid = _h2_connect(env, "/flood?mib=16")
    unacked = 0  # DATA received and not acknowledged: what the window let through
    total = 0
    ended = False

    def take(data: bytes, ack: bool) -> None:
        nonlocal unacked, total, ended
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                total += len(ev.data)
                unacked += ev.flow_controlled_length
            elif isinstance(ev, h2.events.StreamEnded):
                ended = True
            elif isinstance(ev, h2.events.StreamReset) and not (ended and ev.error_code == 0):
                # After our END_STREAM, RST_STREAM(NO_ERROR) says "stop sending" (RFC
                # 9113 8.1): the backend closed the tunnel.  Any other reset is a failure.
                raise AssertionError(f"stream reset: {ev}")
        if ack and unacked:
            conn.acknowledge_received_data(unacked, sid)
            unacked = 0
        sock.sendall(conn.data_to_send())

    with sock, MemorySampler(env.daemon) as sampler:
        # Read without acknowledging for a second: the stream window (64 KiB) closes
        # and gatewayd stops reading the backend.
        sock.settimeout(0.2)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            with contextlib.suppress(TimeoutError):
                take(sock.recv(1 << 20), ack=False)
        assert 0 < total <= 64 * 1024
        sock.settimeout(10)
        take(b"", ack=True)
        for _ in deadline_loop(30.0, 0.0):
            data = sock.recv(1 << 20)
            if not data:
                break
            take(data, ack=True)
            if ended:
                break
    assert ended and total >= 16 << 20
    assert sampler.peak_growth_kb() < 16 * 1024, "gatewayd buffered past the window"
