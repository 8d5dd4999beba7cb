"""Both HTTP/2 codecs over a real loopback socket: the client codec talks to the server
codec through uvloop transports (write buffers, pause/resume), with an echo exchange on
the server; and the `h2` package as a plain-socket client against the server codec."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loop_kit import LOCAL, opened, run

from gatewayd.proxy.http.codec import (
    RD_UPSTREAM,
    Headers,
    RequestHead,
    ResponseHead,
    ServerStream,
)
from gatewayd.proxy.http.h2_client import H2ClientConnection
from gatewayd.proxy.http.h2_limits import is_h2_preface
from gatewayd.proxy.http.h2_server import H2ServerConnection


class _Down:
    proxy: object = None
    loop: Any = None
    key = (LOCAL, 0)
    label = "0"
    peer_ip = LOCAL
    sni: str | None = None
    scheme = b"http"
    client_cert: bytes | None = None
    port_for = None


class Echo:
    """Server exchange: answers 200 at once and echoes the body back, with the request
    trailers as response trailers; a slow client stops the reading of the request."""

    def __init__(self, stream: ServerStream, head: RequestHead) -> None:
        self.stream = stream
        self.head = head

    def on_start(self) -> None:
        self.stream.send_head(ResponseHead(200, [(b"x-path", self.head.target)]), self.head.method)
        self.stream.flush()

    def on_data(self, data: bytes) -> None:
        self.stream.send_data(data)
        self.stream.flush()

    def on_end(self, trailers: Headers | None) -> None:
        self.stream.send_end(trailers or [(b"x-echo", b"done")])

    def on_reset(self) -> None:
        pass

    def on_down_write_pause(self) -> None:
        self.stream.read_disable(RD_UPSTREAM)

    def on_down_write_resume(self) -> None:
        self.stream.read_enable(RD_UPSTREAM)

    def on_tunnel_eof(self) -> None:
        pass


class Caller:
    """Client exchange: collects the response; `done` resolves at its end or loss."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.body = bytearray()
        self.trailers: Headers | None = None
        self.paused = 0

    def on_response_head(self, stream: Any, head: ResponseHead) -> None:
        self.status = head.status

    def on_response_data(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self, stream: Any, trailers: Headers | None, reusable: bool) -> None:
        self.trailers = trailers
        self.done.set_result(None)

    def on_stream_lost(self, stream: Any, exc: BaseException | None, got_bytes: bool) -> None:
        self.done.set_exception(exc or ConnectionError("lost"))

    def on_flush(self) -> None:
        pass

    def on_write_pause(self) -> None:
        self.paused += 1

    def on_write_resume(self) -> None:
        pass

    def on_fatal(self) -> None:
        pass


async def _listen() -> tuple[int, list[H2ServerConnection]]:
    """A loopback listener whose connections are server codecs with echo exchanges."""
    loop = asyncio.get_running_loop()
    servers: list[H2ServerConnection] = []

    def make() -> H2ServerConnection:
        conn = H2ServerConnection(_Down(), Echo, clock=loop.time)
        servers.append(conn)
        return conn

    server = await loop.create_server(make, LOCAL, 0)  # type: ignore[arg-type]
    opened.append(server.close)
    return int(server.sockets[0].getsockname()[1]), servers


async def _connect(port: int) -> H2ClientConnection:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(
        lambda: H2ClientConnection(clock=loop.time), LOCAL, port
    )
    opened.append(transport.close)
    return client


def _call(
    client: H2ClientConnection, path: bytes, body: bytes, trailers: Headers | None = None
) -> Caller:
    caller = Caller(asyncio.get_running_loop())
    stream = client.open_stream()
    stream.bind(caller, False)
    stream.send_head(RequestHead(b"POST", path, [], authority=b"echo.local"), (), False)
    stream.send_data(body)
    stream.send_end(trailers)
    return caller


def test_codec_to_codec_echo_with_trailers_and_many_streams() -> None:
    async def main() -> None:
        port, servers = await _listen()
        client = await _connect(port)
        calls = [_call(client, b"/s%d" % i, b"%d" % i * 1000) for i in range(50)]
        await asyncio.wait_for(asyncio.gather(*(c.done for c in calls)), 20)
        for i, c in enumerate(calls):
            assert c.status == 200
            assert bytes(c.body) == b"%d" % i * 1000
            assert c.trailers == [(b"x-echo", b"done")]
        big = _call(client, b"/big", b"B" * (3 * 1024 * 1024), [(b"x-sum", b"42")])
        await asyncio.wait_for(big.done, 20)
        assert len(big.body) == 3 * 1024 * 1024
        assert big.trailers == [(b"x-sum", b"42")]
        assert client.active_streams == 0
        assert len(servers) == 1  # every stream on one connection
        assert servers[0].streams == {}

    run(main())


def test_h2_package_client_over_a_plain_socket() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        port, _ = await _listen()
        sock = socket.create_connection((LOCAL, port))
        sock.setblocking(False)
        opened.append(sock.close)
        peer = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        peer.initiate_connection()
        sid = peer.get_next_available_stream_id()
        peer.send_headers(
            sid,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"echo.local"),
                (b":path", b"/raw"),
            ],
        )
        peer.send_data(sid, b"ping", end_stream=True)
        await loop.sock_sendall(sock, peer.data_to_send())
        body = b""
        ended = False
        for _ in range(200):
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
            assert data, "server closed"
            for ev in peer.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    body += ev.data or b""
                    peer.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended = True
            out = peer.data_to_send()
            if out:
                await loop.sock_sendall(sock, out)
            if ended:
                break
        assert body == b"ping"

    run(main())


class Sniffer(asyncio.Protocol):
    """Stands in for the HTTP/1.1 server: reads the first bytes and hands the
    connection to the HTTP/2 codec when they are the prior-knowledge preface."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: Any = None
        self.handed: H2ServerConnection | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        verdict = is_h2_preface(self.buf)
        if verdict is None:
            return  # not enough bytes to tell yet
        if verdict:
            loop = asyncio.get_running_loop()
            self.handed = H2ServerConnection(_Down(), Echo, clock=loop.time)
            self.handed.adopt(self.transport, self.buf)
        else:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nh1")
            self.transport.close()


def test_h2c_prior_knowledge_is_detected_and_handed_over_and_h1_is_not() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sniffers: list[Sniffer] = []

        def make() -> Sniffer:
            sniffers.append(Sniffer())
            return sniffers[-1]

        server = await loop.create_server(make, LOCAL, 0)
        opened.append(server.close)
        port = int(server.sockets[0].getsockname()[1])
        # HTTP/2 with prior knowledge: the client codec writes the preface in pieces
        # the sniffer has to wait for (TCP may deliver it whole or split).
        client = await _connect(port)
        call = _call(client, b"/h2c", b"over h2c")
        await asyncio.wait_for(call.done, 10)
        assert bytes(call.body) == b"over h2c"
        assert sniffers[0].handed is not None
        # HTTP/1.1 on the same port stays HTTP/1.1.
        reader, writer = await asyncio.open_connection(LOCAL, port)
        opened.append(writer.close)
        writer.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        assert answer.endswith(b"\r\n\r\nh1")
        assert sniffers[1].handed is None

    run(main())
