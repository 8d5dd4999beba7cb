"""UpstreamConnection and UpstreamPool against a loopback backend that is a plain
blocking socket in the test: bytes it sends are in gatewayd's kernel buffer at once,
before the event loop has had a chance to read them, which is exactly the window in
which a stray response used to be taken for the answer to the next request."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
from loop_kit import LOCAL, opened, run

from gatewayd.proxy.http.codec import ClientStream, Headers, ResponseHead
from gatewayd.proxy.upstream import (
    UpstreamConnection,
    UpstreamHeadersTooLarge,
    UpstreamPool,
    endpoint_key,
)

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"


class Recorder:
    """ClientCallbacks that write down what they are told."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.body = b""
        self.ended = asyncio.Event()

    def on_response_head(self, conn: ClientStream, head: ResponseHead) -> None:
        self.events.append(("head", head.status, len(head.headers)))

    def on_response_data(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self, conn: ClientStream, trailers: Headers | None, reusable: bool) -> None:
        self.events.append(("complete", reusable))
        self.ended.set()

    def on_stream_lost(
        self, conn: ClientStream, exc: BaseException | None, got_bytes: bool
    ) -> None:
        self.events.append(("lost", type(exc), got_bytes))
        self.ended.set()

    def on_flush(self) -> None:
        pass

    def on_write_pause(self) -> None:
        pass

    def on_write_resume(self) -> None:
        pass

    def on_fatal(self) -> None:
        self.events.append(("fatal",))
        self.ended.set()

    async def wait(self) -> list[tuple[object, ...]]:
        async with asyncio.timeout(5):
            await self.ended.wait()
        self.ended.clear()
        return self.events


class Backend:
    """A listening socket; ``accept()`` returns the blocking server side of the
    connection the pool just opened (it waits in the backlog until then)."""

    def __init__(self) -> None:
        self.listener = socket.create_server((LOCAL, 0))
        self.port = int(self.listener.getsockname()[1])
        self.socks: list[socket.socket] = [self.listener]
        opened.append(self.close)

    def accept(self) -> socket.socket:
        self.listener.settimeout(5)
        sock, _ = self.listener.accept()
        self.socks.append(sock)
        return sock

    def close(self) -> None:
        for s in self.socks:
            s.close()


def new_pool(**limits: int) -> UpstreamPool:
    pool = UpstreamPool(connect_timeout=2.0, **limits)
    opened.append(pool.close)
    return pool


async def exchange(
    pool: UpstreamPool, backend: Backend, response: bytes
) -> tuple[UpstreamConnection, socket.socket, Recorder]:
    """A fresh connection, a request bound to it, ``response`` sent in one write and
    the handler's verdict awaited."""
    conn = await pool.connect(LOCAL, backend.port, "be")
    server = backend.accept()
    rec = Recorder()
    conn.bind(rec, False)
    conn.write(b"GET / HTTP/1.1\r\nHost: be\r\n\r\n")
    # From a thread: a big response would block this (the loop's) thread.
    await asyncio.to_thread(server.sendall, response)
    await rec.wait()
    return conn, server, rec


def key(backend: Backend) -> tuple[str, int, str]:
    return endpoint_key(LOCAL, backend.port, None)


async def wait_until(cond: Callable[[], bool]) -> None:
    """A few loop iterations until ``cond()`` (the loop has to read a socket)."""
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached within 1 s")


# --------------------------------------------------------------------------- reuse


def test_clean_connection_is_reused() -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool()
        conn, _, rec = await exchange(pool, backend, RESPONSE)
        assert rec.events == [("head", 200, 1), ("complete", True)]
        pool.release(conn, 0.0)
        assert pool.acquire(key(backend)) is conn

    run(main())


def test_bytes_waiting_in_the_kernel_make_acquire_skip_the_connection() -> None:
    """The stray response is sent while the connection is idle, and ``acquire`` runs
    before the loop reads it: the poll(2) check has to see it."""

    async def main() -> None:
        backend, pool = Backend(), new_pool()
        conn, server, _ = await exchange(pool, backend, RESPONSE)
        pool.release(conn, 0.0)
        server.sendall(STRAY)  # no await since: the loop has not read it
        assert pool.acquire(key(backend)) is None
        assert conn.closed
        assert pool.idle_count() == 0

    run(main())


def test_eof_while_idle_makes_acquire_skip_the_connection() -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool()
        conn, server, _ = await exchange(pool, backend, RESPONSE)
        pool.release(conn, 0.0)
        server.shutdown(socket.SHUT_WR)
        assert pool.acquire(key(backend)) is None

    run(main())


def test_bytes_read_while_idle_close_the_connection_and_leave_the_pool() -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool()
        conn, server, _ = await exchange(pool, backend, RESPONSE)
        pool.release(conn, 0.0)
        assert pool.idle_count() == 1
        server.sendall(b"H")
        await wait_until(lambda: conn.closed)
        assert pool.idle_count() == 0
        assert pool.acquire(key(backend)) is None

    run(main())


@pytest.mark.parametrize("extra", [STRAY, b"H"], ids=["response", "one-byte"])
def test_bytes_after_the_response_in_the_same_read_make_it_not_reusable(extra: bytes) -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool()
        conn, _, rec = await exchange(pool, backend, RESPONSE + extra)
        # The response itself stands; the connection is not given back.
        assert rec.events == [("head", 200, 1), ("complete", False)]
        assert rec.body == b"ok"
        assert conn.closed

    run(main())


def test_head_response_followed_by_a_body_in_the_same_read_is_not_reusable() -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool()
        conn = await pool.connect(LOCAL, backend.port, "be")
        server = backend.accept()
        rec = Recorder()
        conn.bind(rec, True)
        conn.write(b"HEAD / HTTP/1.1\r\nHost: be\r\n\r\n")
        server.sendall(RESPONSE)  # "ok": a body a HEAD response must not have
        assert await rec.wait() == [("head", 200, 1), ("complete", False)]
        assert rec.body == b""

    run(main())


# --------------------------------------------------------------------------- head limits


def fields(n: int, size: int = 8) -> bytes:
    return b"".join(b"x-f%d: %s\r\n" % (i, b"v" * size) for i in range(n))


LIMITS = {"max_header_bytes": 1024, "max_headers": 5}


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        (b"HTTP/1.1 200 OK\r\n" + fields(4) + b"Content-Length: 2\r\n\r\nok", "complete"),
        (b"HTTP/1.1 200 OK\r\n" + fields(5) + b"Content-Length: 2\r\n\r\nok", "too-large"),
        (b"HTTP/1.1 200 OK\r\n" + fields(2, 1100) + b"Content-Length: 0\r\n\r\n", "too-large"),
        (b"HTTP/1.1 200 " + b"R" * 1100 + b"\r\nContent-Length: 0\r\n\r\n", "too-large"),
        # Unterminated: no field line ends, so no callback ever counts it.
        (b"HTTP/1.1 200 OK\r\nx-endless: " + b"a" * 1100, "too-large"),
        (b"HTTP/1.1 200 OK\r\n" + b"a" * 1100, "too-large"),
        # Each response head, interim ones included, gets the limits afresh.
        (
            b"HTTP/1.1 103 Early Hints\r\n"
            + fields(4, 200)
            + b"\r\nHTTP/1.1 200 OK\r\n"
            + fields(3, 200)
            + b"Content-Length: 2\r\n\r\nok",
            "complete",
        ),
        # Trailer fields are held by the parser just like head fields.
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
            + fields(6)
            + b"\r\n",
            "too-large",
        ),
    ],
    ids=[
        "5-fields",
        "6-fields",
        "bytes",
        "status-line",
        "endless-value",
        "endless-name",
        "interim",
        "trailer-count",
    ],
)
def test_response_head_limits(response: bytes, verdict: str) -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool(**LIMITS)
        conn, _, rec = await exchange(pool, backend, response)
        last = rec.events[-1]
        if verdict == "complete":
            assert last == ("complete", True), rec.events
        else:
            # An answer, if a bad one: not to be sent again on a new connection.
            assert last == ("lost", UpstreamHeadersTooLarge, True), rec.events
            assert conn.closed

    run(main())


@pytest.mark.parametrize(
    ("prefix", "piece"),
    [
        (b"HTTP/1.1 200 OK\r\nx-endless: ", b"a" * 100),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-endless: ",
            b"a" * 100,
        ),
        # Interim responses count towards the final head: no endless stream of them.
        (b"", b"HTTP/1.1 100 Continue\r\nx-n: 1\r\n\r\n"),
    ],
    ids=["head", "trailer", "interim"],
)
def test_endless_line_arriving_in_pieces_is_cut_past_the_limit(prefix: bytes, piece: bytes) -> None:
    """Each piece is small; the parser holds them all: the per-read count stops it."""

    async def main() -> None:
        backend, pool = Backend(), new_pool(**LIMITS)
        conn = await pool.connect(LOCAL, backend.port, "be")
        server = backend.accept()
        rec = Recorder()
        conn.bind(rec, False)
        conn.write(b"GET / HTTP/1.1\r\nHost: be\r\n\r\n")
        if prefix:
            server.sendall(prefix)
        sent = 0
        while not rec.ended.is_set() and sent < 64 * 1024:
            server.sendall(piece)
            sent += len(piece)
            await asyncio.sleep(0)  # let the loop read each piece on its own
        events = await rec.wait()
        assert events[-1][:2] == ("lost", UpstreamHeadersTooLarge)
        assert sent <= 4096, sent

    run(main())


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_big_bodies_are_not_counted_as_head(chunked: bool) -> None:
    async def main() -> None:
        backend, pool = Backend(), new_pool(**LIMITS)
        body = b"b" * 300_000
        if chunked:
            framed = b"".join(
                b"%x\r\n%s\r\n" % (65536, body[i : i + 65536]) for i in range(0, 262144, 65536)
            )
            framed += b"%x\r\n%s\r\n0\r\nx-t: 1\r\n\r\n" % (len(body) - 262144, body[262144:])
            head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        else:
            framed = body
            head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
        _, _, rec = await exchange(pool, backend, head + framed)
        assert rec.events[-1] == ("complete", True), rec.events
        assert rec.body == body

    run(main())
