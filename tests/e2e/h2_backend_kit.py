"""A tiny HTTP/2 backend for end-to-end tests, on the `h2` package (asyncio in a
thread): cleartext with prior knowledge (h2c), or TLS offering ALPN ``h2`` only.

Every request is answered with JSON ``{"backend", "method", "path", "authority",
"scheme", "headers", "body_bytes", "proto": "HTTP/2"}``, except:

- ``/status/<n>``: status n (same JSON body);
- ``/delay/<seconds>``: the answer comes after that long (other streams go on);
- a request with ``x-want-status: <n>``: status n;
- ``/fields/<n>``: n extra response header fields;
- ``/hostile/<kind>``: hand-written hostile bytes instead of an answer (`HOSTILE`).

``settings`` holds the client's SETTINGS (initial window, header table size, header
list size) and ``connection_window`` its connection window, as the last connection
announced them.

``max_concurrent_streams`` is announced in SETTINGS; ``peak`` is the most streams
that were open at once on any one connection (the test checks the proxy kept under
the limit), ``connections`` how many connections were accepted.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

from gatewayd.proxy.http.h2_hpack import _integer  # RFC 7541 5.1 integers

LOCALHOST = "127.0.0.1"
MAX_BODY = 1 << 20  # bytes of request body kept per stream (bounded)


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


def _literal(name: bytes, value: bytes) -> bytes:
    """RFC 7541 6.2.2: a literal field without indexing, new name, no Huffman."""
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


# Hostile answers (stream id -> bytes): what a broken or malicious backend may send.
HOSTILE = {
    # HPACK that does not decode (an index far past the tables).
    "hpack-garbage": lambda sid: _frame(0x1, 0x5, sid, b"\xff\xff\xff\xff\xff"),
    # A header list whose one field is 8,000 bytes decoded (an HPACK bomb's payload).
    "big-list": lambda sid: _frame(0x1, 0x5, sid, b"\x88" + _literal(b"x-big", b"v" * 8000)),
    # DATA before the response head.
    "data-first": lambda sid: _frame(0x0, 0x1, sid, b"early"),
    # A frame header announcing 1 MiB (over SETTINGS_MAX_FRAME_SIZE).
    "huge-frame": lambda sid: (1 << 20).to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big"),
    # A header block that never ends: CONTINUATION frames past the block bound.
    "continuation-flood": lambda sid: (
        _frame(0x1, 0x0, sid, b"\x88") + _frame(0x9, 0x0, sid, b"\x00" * 16384) * 8
    ),
    # PINGs past the flood budget.
    "ping-flood": lambda sid: _frame(0x6, 0x0, 0, b"12345678") * 200,
}


class H2Backend:
    def __init__(
        self,
        name: str,
        *,
        max_concurrent_streams: int = 100,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.max_streams = max_concurrent_streams
        self.tls = tls
        self.peak = 0
        self.connections = 0
        self.requests = 0
        self.settings: dict[str, int] = {}
        self.connection_window = 0
        self.lock = threading.Lock()
        # Every connection's transport, for ``close`` (only the loop's thread touches it).
        self.transports: list[asyncio.BaseTransport] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, LOCALHOST, 0, ssl=tls)
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()

        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()
        assert started.wait(10), "h2 backend did not start"

    def _run(self, start: Any) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # The connections' ``finally`` closes their writers; a transport's close
            # completes on a later loop turn, which must come before the loop stops,
            # else the transport is left open until the collector finds it (a
            # ResourceWarning in whatever test runs then).
            await asyncio.gather(*tasks, return_exceptions=True)
            # A TLS transport's close waits for the peer's close_notify, which a loaded
            # machine may not bring within these turns: abort every transport (a no-op on
            # one already closed) so none is left for the collector.
            for transport in self.transports:
                transport.abort()
            for _ in range(3):
                await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.transports.append(writer.transport)
        with self.lock:
            self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
            },
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        tasks: set[asyncio.Task[None]] = set()

        def flush() -> None:
            data = conn.data_to_send()
            if data:
                writer.write(data)

        async def answer(sid: int, st: dict[str, Any]) -> None:
            path: str = st["path"]
            status = 200
            if path.startswith("/status/"):
                status = int(path.split("/")[2])
            if "x-want-status" in st["headers"]:
                status = int(st["headers"]["x-want-status"])
            if path.startswith("/delay/"):
                await asyncio.sleep(float(path.split("/")[2]))
            if path.startswith("/hostile/"):
                streams.pop(sid, None)
                writer.write(HOSTILE[path.split("/")[2]](sid))
                return
            extra = []
            if path.startswith("/fields/"):
                extra = [(b"x-f%d" % i, b"v") for i in range(int(path.split("/")[2]))]
            body = json.dumps(
                {
                    "backend": self.name,
                    "method": st["method"],
                    "path": path,
                    "authority": st["authority"],
                    "scheme": st["scheme"],
                    "headers": st["headers"],
                    "body_bytes": st["body_bytes"],
                    "proto": "HTTP/2",
                }
            ).encode()
            try:
                conn.send_headers(
                    sid,
                    [
                        (b":status", b"%d" % status),
                        (b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(body)),
                        (b"x-backend", self.name.encode()),
                        *extra,
                    ],
                )
                # Small answers: within the default windows.
                conn.send_data(sid, body, end_stream=True)
            except h2.exceptions.ProtocolError:
                return  # reset meanwhile
            streams.pop(sid, None)
            flush()

        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    flush()
                    break
                for ev in events:
                    if isinstance(ev, h2.events.RemoteSettingsChanged):
                        remote = conn.remote_settings
                        self.settings = {
                            "initial_window_size": remote.initial_window_size,
                            "header_table_size": remote.header_table_size,
                            "max_header_list_size": remote.max_header_list_size or 0,
                        }
                    if isinstance(ev, h2.events.RequestReceived):
                        self.connection_window = conn.outbound_flow_control_window
                        fields = {bytes(k).decode(): bytes(v).decode() for k, v in ev.headers or ()}
                        sid = ev.stream_id or 0
                        streams[sid] = {
                            "method": fields.get(":method", ""),
                            "path": fields.get(":path", ""),
                            "authority": fields.get(":authority", ""),
                            "scheme": fields.get(":scheme", ""),
                            "headers": {k: v for k, v in fields.items() if k[:1] != ":"},
                            "body_bytes": 0,
                        }
                        with self.lock:
                            self.requests += 1
                            self.peak = max(self.peak, len(streams))
                    elif isinstance(ev, h2.events.DataReceived):
                        sid = ev.stream_id or 0
                        st = streams.get(sid)
                        if st is not None:
                            st["body_bytes"] += len(ev.data or b"")
                        conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                    elif isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id or 0
                        st = streams.get(sid)
                        if st is not None:
                            task = asyncio.ensure_future(answer(sid, st))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                    elif isinstance(ev, h2.events.StreamReset):
                        streams.pop(ev.stream_id or 0, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        break
                flush()
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in list(tasks):
                task.cancel()
            writer.close()
