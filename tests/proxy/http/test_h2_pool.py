"""The pool's HTTP/2 side over real loopback sockets: an `h2` package server in the same
loop announces its SETTINGS_MAX_CONCURRENT_STREAMS; the pool hands out streams of
multiplexed connections under it, opens another connection when all are full, waits
for a connection being opened, closes idle and retired connections with GOAWAY, and
counts them in the metrics."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loop_kit import LOCAL, opened, run

from gatewayd.proxy.http.codec import Headers, RequestHead, ResponseHead
from gatewayd.proxy.http.h1_client import endpoint_key
from gatewayd.proxy.http.h2_client import H2ClientStream
from gatewayd.proxy.http.pool import UpstreamPool
from gatewayd.proxy.metrics import ProxyMetrics


class Server:
    """h2 server: answers each request 200 when its stream ends; records GOAWAYs."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self.connections = 0
        self.closed = 0
        self.goaways = 0
        self.open_now = 0
        self.peak = 0

    async def start(self) -> int:
        server = await asyncio.start_server(self.serve, LOCAL, 0)
        opened.append(server.close)
        return int(server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams},
        )
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: set[int] = set()
        try:
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams.add(ev.stream_id or 0)
                        self.peak = max(self.peak, len(streams))
                    elif isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id or 0
                        streams.discard(sid)
                        conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        self.goaways += 1
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed += 1
            writer.close()


class Exchange:
    """ClientCallbacks double."""

    def __init__(self) -> None:
        self.status = 0
        self.done = asyncio.get_running_loop().create_future()

    def on_response_head(self, stream: Any, head: ResponseHead) -> None:
        self.status = head.status

    def on_response_data(self, data: bytes) -> None:
        pass

    def on_response_end(self, stream: Any, trailers: Headers | None, reusable: bool) -> None:
        self.done.set_result(reusable)

    def on_stream_lost(self, stream: Any, exc: BaseException | None, got_bytes: bool) -> None:
        self.done.set_exception(exc or ConnectionError("lost"))

    def on_flush(self) -> None:
        pass

    def on_write_pause(self) -> None:
        pass

    def on_write_resume(self) -> None:
        pass

    def on_fatal(self) -> None:
        pass


def start_request(stream: H2ClientStream, *, end: bool) -> Exchange:
    ex = Exchange()
    stream.bind(ex, False)
    head = RequestHead(b"POST", b"/", [(b"host", b"svc")], end_stream=end)
    stream.send_head(head, (), end_stream=end)
    return ex


def make_pool() -> tuple[UpstreamPool, ProxyMetrics]:
    metrics = ProxyMetrics(registry=CollectorRegistry())
    pool = UpstreamPool(connect_timeout=5.0, metrics=metrics)
    opened.append(pool.close)
    return pool, metrics


def active(metrics: ProxyMetrics, label: str) -> float:
    return float(metrics._us_cx.get(label, 0))


def test_streams_share_a_connection_under_the_backend_limit() -> None:
    async def main() -> None:
        server = Server(max_streams=3)
        port = await server.start()
        pool, metrics = make_pool()
        key = endpoint_key(LOCAL, port, None)
        first = await pool.connect_h2(LOCAL, port, "b")
        more = [pool.acquire_h2(key) for _ in range(2)]
        assert all(s is not None for s in more)
        assert pool.acquire_h2(key) is None  # 3 streams taken: the backend's limit
        exchanges = [start_request(s, end=False) for s in [first, *more] if s is not None]
        # A 4th request opens a second connection.
        fourth = await pool.connect_h2(LOCAL, port, "b")
        exchanges.append(start_request(fourth, end=True))
        for s in [first, *more]:
            assert s is not None
            s.send_end()
        assert await asyncio.gather(*(e.done for e in exchanges)) == [True] * 4
        assert server.connections == 2 and server.peak <= 3
        assert pool.h2_count(key) == 2
        assert active(metrics, "b") == 2
        # Released streams give their room back.
        again = pool.acquire_h2(key)
        assert again is not None
        ex = start_request(again, end=True)
        assert await ex.done is True
        pool.release(again, 0.0)  # a no-op for an ended HTTP/2 stream

    run(main())


def test_concurrent_connects_wait_for_the_connection_being_opened() -> None:
    async def main() -> None:
        server = Server(max_streams=100)
        port = await server.start()
        pool, _ = make_pool()
        streams = await asyncio.gather(*(pool.connect_h2(LOCAL, port, "b") for _ in range(10)))
        exchanges = [start_request(s, end=True) for s in streams]
        assert await asyncio.gather(*(e.done for e in exchanges)) == [True] * 10
        assert server.connections == 1  # the other nine waited for the first one

    run(main())


def test_backend_allowing_one_stream_gets_one_connection_per_stream() -> None:
    async def main() -> None:
        server = Server(max_streams=1)
        port = await server.start()
        pool, _ = make_pool()
        streams = await asyncio.gather(*(pool.connect_h2(LOCAL, port, "b") for _ in range(5)))
        exchanges = [start_request(s, end=True) for s in streams]
        assert await asyncio.gather(*(e.done for e in exchanges)) == [True] * 5
        assert server.peak == 1
        assert server.connections == 5

    run(main())


def test_idle_connections_close_with_goaway_and_leave_the_metrics() -> None:
    async def main() -> None:
        server = Server(max_streams=10)
        port = await server.start()
        pool, metrics = make_pool()
        key = endpoint_key(LOCAL, port, None)
        s = await pool.connect_h2(LOCAL, port, "b")
        ex = start_request(s, end=True)
        assert await ex.done is True
        loop = asyncio.get_running_loop()
        pool.sweep(loop.time() - 1.0, 60.0)  # not idle long enough
        assert pool.h2_count(key) == 1
        pool.sweep(loop.time() + 120.0, 60.0)
        for _ in range(200):
            if server.closed and not pool.h2_count(key):
                break
            await asyncio.sleep(0.01)
        assert server.goaways == 1 and server.closed == 1
        assert pool.h2_count(key) == 0
        assert active(metrics, "b") == 0

    run(main())


def test_retain_closes_connections_to_endpoints_that_left() -> None:
    async def main() -> None:
        server = Server(max_streams=10)
        port = await server.start()
        pool, _ = make_pool()
        key = endpoint_key(LOCAL, port, None)
        busy = await pool.connect_h2(LOCAL, port, "b")
        ex = start_request(busy, end=False)
        await asyncio.sleep(0.05)
        pool.retain(frozenset())
        assert pool.acquire_h2(key) is None  # retired: no new streams
        busy.send_end()
        assert await ex.done is True  # the stream under way finishes
        pool.sweep(asyncio.get_running_loop().time(), 60.0)
        for _ in range(200):
            if not pool.h2_count(key):
                break
            await asyncio.sleep(0.01)
        assert pool.h2_count(key) == 0

    run(main())


def test_connect_to_nothing_fails_fast() -> None:
    async def main() -> None:
        pool, _ = make_pool()
        with socket_closed_port() as port:
            try:
                await pool.connect_h2(LOCAL, port, "b")
            except OSError:
                pass
            else:
                raise AssertionError("connected to a closed port")
        assert pool.h2_count() == 0

    run(main())


class socket_closed_port:
    """A port nothing listens on (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind((LOCAL, 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
