"""``SharedAcceptor`` and ``Balance``: accepting on a listening socket other workers share.

Real sockets on loopback, one uvloop per test (``loop_kit.run``).  "Another worker" is a
second descriptor of the same listening socket, as the supervisor's workers have.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import tempfile
import time
from pathlib import Path

import pytest
from loop_kit import LOCAL, opened, run

from gatewayd.proxy.acceptor import (
    ACCEPT_BATCH,
    MAX_WAIT,
    NOT_ACCEPTING,
    RESOURCE_PAUSE,
    SLACK,
    Balance,
    SharedAcceptor,
)
from gatewayd.proxy.listeners import bind_listener
from gatewayd.tls.certs import self_signed


class Made(list[asyncio.BaseTransport]):
    """The connections made through ``Counting`` protocols; ``reach(n)`` waits for n."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def add(self, transport: asyncio.BaseTransport) -> None:
        self.append(transport)
        self.changed.set()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self) < count:
                self.changed.clear()
                await self.changed.wait()


class Counting(asyncio.Protocol):
    """Adds each connection made to every one of ``made`` and keeps it open."""

    def __init__(self, *made: Made) -> None:
        self.made = made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        for m in self.made:
            m.add(transport)


async def turns(n: int = 10) -> None:
    """Give the loop ``n`` turns (each polls the sockets once)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def finished(tasks: set[asyncio.Task[None]]) -> None:
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks)


def listening() -> tuple[socket.socket, int]:
    sock = bind_listener(LOCAL, 0)
    opened.append(sock.close)
    return sock, sock.getsockname()[1]


def connect(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, all queued on the listening socket (the kernel completes
    the handshake before anyone accepts)."""
    out = []
    for _ in range(count):
        c = socket.create_connection((LOCAL, port), timeout=5)
        opened.append(c.close)
        out.append(c)
    return out


def drain_queue(sock: socket.socket) -> int:
    """What is left in the accept queue, taken through another descriptor."""
    other = sock.dup()
    other.setblocking(False)
    taken = 0
    try:
        while True:
            try:
                conn, _ = other.accept()
            except BlockingIOError:
                return taken
            conn.close()
            taken += 1
    finally:
        other.close()


def acceptor_on(
    sock: socket.socket,
    made: Made | tuple[Made, ...],
    tasks: set[asyncio.Task[None]],
    **kw: object,
) -> SharedAcceptor:
    sinks = made if isinstance(made, tuple) else (made,)
    acc = SharedAcceptor(
        asyncio.get_running_loop(),
        sock.dup(),
        lambda: Counting(*sinks),
        tasks,
        **kw,  # type: ignore[arg-type]
    )
    opened.append(acc.close)
    return acc


# --------------------------------------------------------------------------- Balance


def test_balance_takes_its_turn_while_within_slack_of_the_least_loaded() -> None:
    counts = [0, 0, NOT_ACCEPTING]
    b = Balance(counts, 0)
    assert b.my_turn(SLACK - 1, now=0.0)
    assert counts[0] == SLACK - 1  # published
    # SLACK ahead of worker 1: leave it the queue while worker 1 is taking connections.
    assert not b.my_turn(SLACK, now=1.0)
    counts[1] = 1
    assert not b.my_turn(SLACK + 1, now=1.005)
    # The other worker stops moving for MAX_WAIT: busy or stuck, take the queue.
    assert not b.my_turn(SLACK + 1, now=1.005 + MAX_WAIT / 2)
    assert b.my_turn(SLACK + 1, now=1.005 + MAX_WAIT)
    assert b.my_turn(SLACK + 2, now=1.005 + MAX_WAIT * 3)
    # A worker not accepting (exited, draining: NOT_ACCEPTING) is never waited for.
    counts[1] = NOT_ACCEPTING
    assert b.my_turn(1000, now=9.0)
    b.stop()
    assert counts[0] == NOT_ACCEPTING


# --------------------------------------------------------------------------- accepting


def test_one_wake_up_accepts_one_connection_and_leaves_the_rest_queued() -> None:
    async def main() -> None:
        sock, port = listening()
        made = Made()
        tasks: set[asyncio.Task[None]] = set()
        acc = acceptor_on(sock, made, tasks)
        connect(port, 5)
        acc._readable()  # one wake-up, without giving the loop a turn
        assert len(tasks) == ACCEPT_BATCH == 1
        assert drain_queue(sock) == 5 - ACCEPT_BATCH  # the rest: for the other workers
        await made.reach(1)
        await finished(tasks)

    run(main())


def test_two_acceptors_on_one_socket_share_a_burst() -> None:
    """Two "workers" (one loop here, so their turns alternate) with a shared Balance:
    20 connections queued at once split 10/10."""

    async def main() -> None:
        sock, port = listening()
        counts = [0, 0]
        made, both = [Made(), Made()], Made()
        tasks: set[asyncio.Task[None]] = set()
        for i in (0, 1):
            acceptor_on(
                sock,
                (made[i], both),
                tasks,
                balance=Balance(counts, i),
                load=lambda i=i: len(made[i]),
            )
        connect(port, 20)
        await both.reach(20)
        assert abs(len(made[0]) - len(made[1])) <= SLACK, [len(m) for m in made]

    run(main())


def test_a_worker_ahead_waits_for_a_moving_one_and_not_for_a_stuck_one() -> None:
    async def main() -> None:
        sock, port = listening()
        counts = [0, 0]  # worker 1 is started, holds nothing and never accepts (stuck)
        made = Made()
        tasks: set[asyncio.Task[None]] = set()
        acceptor_on(sock, made, tasks, balance=Balance(counts, 0), load=lambda: len(made))
        connect(port, 3 * SLACK)
        started = time.monotonic()
        await made.reach(3 * SLACK)
        # It stopped at SLACK ahead, waited MAX_WAIT for the other, then took the rest.
        assert time.monotonic() - started >= MAX_WAIT
        assert counts[0] >= 2 * SLACK

    run(main())


def test_out_of_descriptors_pauses_accepting_then_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class OutOfDescriptors(socket.socket):
        failures = 0

        def accept(self) -> tuple[socket.socket, object]:
            if OutOfDescriptors.failures < 1:
                OutOfDescriptors.failures += 1
                raise OSError(errno.EMFILE, "Too many open files")
            return super().accept()

    async def main() -> None:
        sock, port = listening()
        flaky = OutOfDescriptors(sock.family, sock.type, fileno=sock.dup().detach())
        made = Made()
        tasks: set[asyncio.Task[None]] = set()
        acc = SharedAcceptor(asyncio.get_running_loop(), flaky, lambda: Counting(made), tasks)
        opened.append(acc.close)
        connect(port, 1)
        started = time.monotonic()
        # Not watching the socket (it would spin on the same error) until the pause ends.
        await made.reach(1)
        assert time.monotonic() - started >= RESOURCE_PAUSE * 0.9
        assert OutOfDescriptors.failures == 1
        acc.close()
        acc.close()  # twice is fine

    with caplog.at_level(logging.ERROR, logger="gatewayd.proxy.acceptor"):
        run(main())
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "Too many open files; retrying in 0.1s" in errors[0], errors


def test_close_stops_accepting_at_once_and_cancels_a_pause() -> None:
    async def main() -> None:
        sock, port = listening()
        made = Made()
        tasks: set[asyncio.Task[None]] = set()
        acc = acceptor_on(sock, made, tasks)
        acc.close()
        connect(port, 2)
        await turns()
        assert made == []
        assert drain_queue(sock) == 2  # still listening: the other descriptors serve
        paused = acceptor_on(sock, made, tasks)
        paused._pause(10.0)
        handle = paused.paused
        paused.close()
        assert handle is not None and handle.cancelled()

    run(main())


def test_tls_handshakes_fail_and_time_out_quietly_and_leave_no_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert, key = self_signed(["accept.test"])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c.pem").write_bytes(cert)
        (Path(tmp) / "k.pem").write_bytes(key)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(Path(tmp) / "c.pem", Path(tmp) / "k.pem")
    client_ctx = ssl.create_default_context(cadata=cert.decode())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock, port = listening()
        made = Made()
        tasks: set[asyncio.Task[None]] = set()
        acceptor_on(sock, made, tasks, ssl_context=server_ctx, handshake_timeout=0.2)
        # A good handshake makes the connection.
        _, writer = await asyncio.open_connection(
            LOCAL, port, ssl=client_ctx, server_hostname="accept.test"
        )
        await made.reach(1)
        writer.close()
        # Not TLS: the handshake fails, the connection is closed.
        bad_reader, bad_writer = await asyncio.open_connection(LOCAL, port)
        bad_writer.write(b"GET / HTTP/1.1\r\nHost: accept.test\r\n\r\n")
        assert await asyncio.wait_for(bad_reader.read(), 5) == b""
        bad_writer.close()
        # Silent client: closed once the handshake timeout passes.
        started = loop.time()
        silent_reader, silent_writer = await asyncio.open_connection(LOCAL, port)
        assert await asyncio.wait_for(silent_reader.read(), 5) == b""
        assert loop.time() - started >= 0.15
        silent_writer.close()
        await finished(tasks)
        assert len(made) == 1

    with caplog.at_level(logging.DEBUG):
        run(main())
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
