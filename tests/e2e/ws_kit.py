"""A real WebSocket backend (aiohttp.web) for the end-to-end suite, on its own event
loop thread, and hand-made WebSocket frames for the HTTP/2 (RFC 8441) client.

Paths of the backend:
- ``/ws`` and ``/echo``: echo every text and binary message back;
- ``/headers``: first a JSON text message with the handshake's request headers, then echo;
- ``/close``: close at once with code 4001;
- ``/watch``: echo, and record how the client's side ended (``closes``);
- ``/refuse``: a plain ``403`` (no upgrade);
- ``/flood?mib=N``: N MiB as 64 KiB binary messages, as fast as the tunnel takes them;
- ``/sink?wait=S``: read nothing for S seconds, then count what arrives (``sunk``).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import struct
import threading
from typing import Any

from aiohttp import WSMsgType, web


class WebSocketBackend:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context  # TLS (wss) when given
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.closes: list[str] = []  # how /watch tunnels ended, as seen by the backend
        self.closed = threading.Event()
        self.sunk: list[int] = []  # bytes /sink received, per tunnel
        self._runner: web.AppRunner | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("WebSocket backend did not start")

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self._echo)
        app.router.add_get("/echo", self._echo)
        app.router.add_get("/headers", self._headers)
        app.router.add_get("/close", self._close)
        app.router.add_get("/watch", self._watch)
        app.router.add_get("/refuse", self._refuse)
        app.router.add_get("/flood", self._flood)
        app.router.add_get("/sink", self._sink)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _pump(self, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        await self._pump(ws)
        return ws

    async def _headers(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({k.lower(): v for k, v in request.headers.items()}))
        await self._pump(ws)
        return ws

    async def _close(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close(code=4001, message=b"bye")
        return ws

    async def _watch(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        ended = "eof"
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.ERROR:
                ended = "error"
        if ws.close_code is not None:
            ended = f"close {ws.close_code}"
        self.closes.append(ended)
        self.closed.set()
        return ws

    async def _flood(self, request: web.Request) -> web.WebSocketResponse:
        # Its closing handshake waits 0.5 s at most for the client's answer.
        ws = web.WebSocketResponse(timeout=0.5)
        await ws.prepare(request)
        chunk = b"f" * 65536
        for _ in range(int(request.query["mib"]) * 16):
            await ws.send_bytes(chunk)  # waits while the tunnel is full
        await ws.close()
        return ws

    async def _sink(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        await asyncio.sleep(float(request.query["wait"]))
        total = 0
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                total += len(msg.data)
        self.sunk.append(total)
        return ws

    async def _refuse(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no websocket here")

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------- RFC 6455 frames by hand

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked frame (RFC 6455 5.3: "a client MUST mask all frames")."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def unmasked_client_frame(payload: bytes) -> bytes:
    """A final binary frame with the all-zero mask key (valid, and the payload needs no
    XOR: fast for megabytes)."""
    n = len(payload)
    if n < 126:
        head = bytes([0x82, 0x80 | n])
    elif n < 65536:
        head = bytes([0x82, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", n)
    return head + b"\x00\x00\x00\x00" + payload


HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: ws.example\r\nConnection: Upgrade\r\n"
    "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Complete server frames (unmasked) taken off the front of ``buf``."""
    out: list[tuple[int, bytes]] = []
    while len(buf) >= 2:
        opcode = buf[0] & 0x0F
        n = buf[1] & 0x7F
        pos = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", bytes(buf[2:4]))[0]
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", bytes(buf[2:10]))[0]
            pos = 10
        if len(buf) < pos + n:
            break
        out.append((opcode, bytes(buf[pos : pos + n])))
        del buf[: pos + n]
    return out


def manifests_ws_service(name: str, port: int, app_protocol: str | None) -> list[dict[str, Any]]:
    """A Service (port 80) whose port may declare ``appProtocol``, and its slice."""
    svc_port: dict[str, Any] = {"name": "http", "port": 80, "protocol": "TCP"}
    if app_protocol is not None:
        svc_port["appProtocol"] = app_protocol
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [svc_port]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        },
    ]
