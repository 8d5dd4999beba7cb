"""The end of an exchange over HTTP/1.1, driven end to end without sockets: a client
connection (``HttpConnection``) and one pooled upstream connection
(``UpstreamConnection``) over transport doubles, the real ``Exchange`` between them.

What happens after the response's last byte has a lean lane for the common request
(one try, Content-Length, keep-alive, nothing held, no timer) and the general
``_finish`` for everything else; these tests pin what both must do: the response's
framing end, the upstream connection back in the pool (or closed), reading resumed,
the request counted once, the connection idle again or serving the next request."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry
from transport_double import TransportDouble, one_rule_snapshot, run_in_loop

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.http.codec import RD_UPSTREAM
from gatewayd.proxy.http.exchange import Exchange
from gatewayd.proxy.http.h1_client import UpstreamConnection, endpoint_key
from gatewayd.proxy.http.h1_server import D_IDLE, D_LINGER, R_UPSTREAM, HttpConnection
from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.server import Proxy, ProxyOptions

LOCAL = "127.0.0.1"
GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
CL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Rig:
    """A proxy with one plain route to one endpoint, one client connection and one
    idle upstream connection in the pool."""

    def __init__(self, *, access: bool = False, **rule_kw: Any) -> None:
        holder, self.rule = one_rule_snapshot(LOCAL, **rule_kw)
        self.registry = CollectorRegistry()
        self.metrics = ProxyMetrics(registry=self.registry)
        self.proxy = Proxy(holder, ProxyOptions(access_log=None), self.metrics)
        self.log = io.StringIO()
        if access:
            self.proxy.access = AccessLogger("text", self.log)
        self.conn = HttpConnection(self.proxy, (LOCAL, 1), "t")
        self.down = TransportDouble()
        self.conn.connection_made(self.down)  # type: ignore[arg-type]
        self.key = endpoint_key(LOCAL, 9, None)
        self.up = self.new_upstream()

    def new_upstream(self) -> UpstreamConnection:
        up = UpstreamConnection(self.proxy.pool, self.key, "be")
        up_t = TransportDouble()
        up.connection_made(up_t)  # type: ignore[arg-type]
        self.proxy.pool.release(up, 0.0)
        return up

    def up_transport(self, up: UpstreamConnection | None = None) -> TransportDouble:
        return (up or self.up).transport  # type: ignore[return-value]

    def idle(self) -> list[UpstreamConnection]:
        return self.proxy.pool.idle.get(self.key, [])

    def counted(self, code: str = "200", name: str = "gatewayd_downstream_rq_total") -> float:
        """Requests (or, by ``name``, upstream responses) counted with ``code``."""
        total = 0.0
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == name and s.labels.get("code") == code:
                    total += s.value
        return total

    def state(self) -> Any:
        be = self.rule.backends[0]
        assert be.lb is not None and be.lb.single is not None
        return be.lb.single


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    run_in_loop(main)


def test_content_length_response_ends_the_exchange_and_pools_the_upstream() -> None:
    async def main() -> None:
        rig = Rig()
        for i in range(3):
            rig.conn.data_received(GET)
            assert rig.up_transport().take().startswith(b"GET /x HTTP/1.1\r\n")
            assert rig.conn.active is not None
            rig.up.data_received(CL_RESPONSE)
            out = rig.down.take()
            assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")
            assert b"transfer-encoding" not in out.lower()
            # Idle again: the keep-alive deadline armed, the upstream back in the pool,
            # the endpoint's in-flight count back to zero, the request counted once.
            assert rig.conn.active is None
            assert rig.conn.deadline_kind == D_IDLE
            assert rig.conn.deadline > 0
            assert rig.idle() == [rig.up]
            assert rig.up.reuses == i + 1
            assert rig.state().active == 0
            assert rig.metrics.rq_active == 0
            rig.metrics.count_pending()
            assert rig.counted() == i + 1
            assert rig.counted(name="gatewayd_upstream_rq_total") == i + 1
        assert not rig.down.closed

    run(main)


def test_chunked_response_gets_its_last_chunk() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET)
        rig.up.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        out = rig.down.take()
        assert b"transfer-encoding: chunked" in out.lower()
        assert out.endswith(b"5\r\nhello\r\n0\r\n\r\n")
        assert rig.conn.active is None and rig.conn.deadline_kind == D_IDLE
        assert rig.idle() == [rig.up]

    run(main)


def test_trailers_follow_the_last_chunk() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET)
        rig.up.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n"
        )
        out = rig.down.take()
        assert out.endswith(b"5\r\nhello\r\n0\r\nx-checksum: 1\r\n\r\n")
        assert rig.conn.active is None
        assert rig.idle() == [rig.up]

    run(main)


def test_http10_client_unknown_length_is_close_delimited() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(b"GET /x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        rig.up.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        out = rig.down.take()
        assert b"connection: close" in out.lower()
        assert out.endswith(b"\r\n\r\nhello")
        # The body ends with the connection: closed after the flush.
        assert rig.conn.deadline_kind == D_LINGER
        assert rig.down.eof_written
        assert rig.idle() == [rig.up]

    run(main)


def test_upstream_that_closes_is_not_pooled() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET)
        rig.up.data_received(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        assert rig.down.take().endswith(b"hello")
        assert rig.idle() == []
        assert rig.up_transport().closed
        assert rig.conn.active is None and rig.conn.deadline_kind == D_IDLE
        assert rig.state().active == 0

    run(main)


def test_reading_paused_for_the_upstream_resumes_at_the_end() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET)
        ex = rig.conn.active
        assert isinstance(ex, Exchange)
        ex.on_write_pause()  # the backend is slow to read the request
        assert rig.down.paused and rig.conn.read_mask & R_UPSTREAM
        rig.up.data_received(CL_RESPONSE)
        assert rig.conn.read_mask == 0
        assert not rig.down.paused
        assert rig.conn.active is None

    run(main)


def test_reading_paused_for_another_reason_stays_paused() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET)
        rig.conn.read_disable(RD_UPSTREAM)
        rig.conn.pause(4)  # too many pipelined requests (R_QUEUE), say
        rig.up.data_received(CL_RESPONSE)
        assert rig.conn.read_mask == 4
        assert rig.down.paused

    run(main)


def test_pipelined_request_is_served_after_the_first_response() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET + b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
        assert rig.up_transport().take().startswith(b"GET /x ")
        assert len(rig.conn.queue) == 1
        rig.up.data_received(CL_RESPONSE)
        # The second request took the connection the first gave back.
        assert rig.down.take().endswith(b"hello")
        assert rig.up_transport().take().startswith(b"GET /y ")
        assert rig.conn.active is not None and not rig.conn.queue
        assert rig.idle() == []
        rig.up.data_received(CL_RESPONSE)
        assert rig.down.take().endswith(b"hello")
        assert rig.conn.active is None and rig.conn.deadline_kind == D_IDLE
        assert rig.idle() == [rig.up]
        rig.metrics.count_pending()
        assert rig.counted() == 2

    run(main)


def test_head_of_a_pipelined_request_in_progress_arms_the_head_deadline() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(GET + b"GET /y HTTP/1.1\r\nHo")
        rig.up.data_received(CL_RESPONSE)
        assert rig.conn.active is None
        assert rig.conn.deadline_kind != D_IDLE  # D_HEAD: a head must complete in time
        assert rig.conn.deadline > 0

    run(main)


def test_client_asking_to_close_gets_the_connection_closed() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        rig.up.data_received(CL_RESPONSE)
        out = rig.down.take()
        assert b"connection: close" in out.lower() and out.endswith(b"hello")
        assert rig.conn.deadline_kind == D_LINGER
        assert rig.idle() == [rig.up]

    run(main)


def test_access_log_line_written_once_per_request() -> None:
    async def main() -> None:
        rig = Rig(access=True)
        for _ in range(2):
            rig.conn.data_received(GET)
            rig.up.data_received(CL_RESPONSE)
        await asyncio.sleep(0)
        lines = [line for line in rig.log.getvalue().splitlines() if line]
        assert len(lines) == 2
        assert all('"GET /x HTTP/1.1" 200' in line for line in lines)

    run(main)


def test_response_before_the_whole_body_keeps_draining() -> None:
    async def main() -> None:
        rig = Rig()
        rig.conn.data_received(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234")
        rig.up.data_received(CL_RESPONSE)
        # The backend answered before reading the whole body: not reused.
        assert rig.idle() == []
        assert rig.up_transport().closed
        assert rig.down.take().endswith(b"hello")
        ex = rig.conn.active
        assert ex is not None and not ex.finished
        rig.conn.data_received(b"56789")
        assert ex.finished and rig.conn.active is None
        assert rig.conn.deadline_kind == D_IDLE
        rig.metrics.count_pending()
        assert rig.counted() == 1

    run(main)


def test_try_timer_and_route_timer_are_cancelled() -> None:
    async def main() -> None:
        rig = Rig(request_timeout=30.0, backend_request_timeout=20.0)
        rig.conn.data_received(GET)
        ex = rig.conn.active
        assert isinstance(ex, Exchange)
        assert ex.timer_total is not None and ex.timer_try is not None
        total, per_try = ex.timer_total, ex.timer_try
        rig.up.data_received(CL_RESPONSE)
        assert rig.down.take().endswith(b"hello")
        assert ex.timer_total is None and ex.timer_try is None
        assert total.cancelled() and per_try.cancelled()
        assert rig.idle() == [rig.up]
        assert rig.conn.active is None and rig.conn.deadline_kind == D_IDLE

    run(main)
