"""The pure and in-process parts of ``gatewayd/workers.py`` and ``proxy/listeners.py``:
frames, descriptor passing over a real socket pair, answer checks, listening sockets
that nobody can join, the worker's side of the protocol, and a pool that gives up."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import re
import select
import socket
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from gatewayd import workers
from gatewayd.proxy.listeners import ListeningSockets, NotHanded, bind_listener
from gatewayd.proxy.server import ProxyOptions
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.workers import (
    HEADER,
    MAGIC,
    FrameDecoder,
    ProtocolError,
    WorkerFailure,
    WorkerPool,
    check_answer,
    frame,
    receive_frames,
    recv_frame,
    send_frame,
)

LOCAL = "127.0.0.1"


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await coro

    asyncio.run(bounded())


def read_all(sock: socket.socket, decoder: FrameDecoder, want: int) -> list[Any]:
    """``want`` messages from a non-blocking socket, waiting (bounded) with select."""
    got: list[Any] = []
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        select.select([sock], [], [], 1.0)
        messages, ended = receive_frames(sock, decoder)
        got.extend(messages)
        if ended:
            break
    return got


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


# --------------------------------------------------------------------------- frames


def test_a_frame_fed_byte_by_byte_decodes_once_complete() -> None:
    data = frame(("apply", 7, b"x" * 1000))
    decoder = FrameDecoder()
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
    assert decoder.feed(data[-1:]) == [(("apply", 7, b"x" * 1000), [])]
    assert decoder.buffer == bytearray()


def test_two_frames_in_one_chunk_and_a_large_one_in_pieces() -> None:
    big = os.urandom(3 * 1024 * 1024)  # larger than any socket buffer
    data = frame(("metrics",)) + frame(("drain", 1.5)) + frame(("apply", 1, big))
    decoder = FrameDecoder()
    out = []
    for start in range(0, len(data), 65536):
        out += decoder.feed(data[start : start + 65536])
    assert [m for m, _ in out] == [("metrics",), ("drain", 1.5), ("apply", 1, big)]


TRUNCATED = pickle.dumps(("apply", 1, b"snapshot"))[:-3]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"HTTP/1.1 200 OK\r\n", "a frame starts with b'HTTP', not b'GWD1'"),
        (HEADER.pack(MAGIC, 2048, 0), "a frame of 2048 bytes exceeds the limit of 1024"),
        (HEADER.pack(MAGIC, 4, 1) + b"abcd", "a frame carries 1 descriptor(s); 0 came"),
        (HEADER.pack(MAGIC, 4, 0) + b"abcd", "undecodable message"),
        (HEADER.pack(MAGIC, len(TRUNCATED), 0) + TRUNCATED, "undecodable message"),
    ],
    ids=["magic", "size", "descriptors", "garbage", "truncated"],
)
def test_broken_frames_are_protocol_errors(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(error)):
        FrameDecoder(limit=1024).feed(data)


def test_a_payload_that_is_not_a_message_is_a_protocol_error() -> None:
    payload = pickle.dumps(["apply"])
    with pytest.raises(ProtocolError, match="not a message"):
        FrameDecoder().feed(HEADER.pack(MAGIC, len(payload), 0) + payload)


def test_a_frame_over_the_limit_is_refused_before_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "MAX_FRAME", 100)
    with pytest.raises(ProtocolError, match="exceeds the frame limit of 100 bytes"):
        frame(("apply", 1, b"x" * 200))


# --------------------------------------------------------------------------- the pipe


def test_descriptors_and_a_large_snapshot_cross_a_socket_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two descriptors per sendmsg, so five listeners take three batches.
    monkeypatch.setattr(workers, "FDS_PER_MESSAGE", 2)
    listeners = [bind_listener(LOCAL, 0) for _ in range(5)]
    parent, child = socket.socketpair()
    child.setblocking(False)
    decoder = FrameDecoder()
    received: list[int] = []
    try:
        big = os.urandom(2 * 1024 * 1024)
        fds = [s.fileno() for s in listeners]
        sender = asyncio.new_event_loop()
        try:
            # The sender blocks until the reader drains the pipe: send from a thread.
            future = sender.run_in_executor(None, send_frame, parent, ("apply", 3, big), fds)
            (message, received), *rest = read_all(child, decoder, 1)
            sender.run_until_complete(future)
        finally:
            sender.close()
        assert rest == []
        assert message == ("apply", 3, big)
        assert [inode(fd) for fd in received] == [inode(fd) for fd in fds]
        # Answers travel back without descriptors.
        child.sendall(frame(("applied", 3, {}, [])))
        assert recv_frame(parent) == ("applied", 3, {}, [])
    finally:
        for fd in received:
            os.close(fd)
        for s in (*listeners, parent, child):
            s.close()


def test_recv_frame_reports_a_closed_pipe_and_garbage() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"garbage!garbage!")
        with pytest.raises(ProtocolError, match="bad frame header"):
            recv_frame(a)
        b.close()
        with pytest.raises(EOFError):
            recv_frame(a)


def test_receive_frames_sees_the_end_of_the_stream() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.sendall(frame(("metrics",)))
        b.close()
        assert read_all(a, FrameDecoder(), 2) == [(("metrics",), [])]


# --------------------------------------------------------------------------- answers


def test_check_answer_accepts_the_expected_shapes() -> None:
    applied = ("applied", 4, {(LOCAL, 80): "cannot bind"}, [(LOCAL, 81)])
    assert check_answer("apply", applied, 4) == applied
    assert check_answer("metrics", ("metrics", {})) == ("metrics", {})
    assert check_answer("drain", ("drained",)) == ("drained",)


@pytest.mark.parametrize(
    ("request_kind", "answer", "error"),
    [
        # The crash of the report: a draining worker answered an apply.
        ("apply", ("drained",), "unexpected answer to 'apply': ('drained',)"),
        ("apply", ("applied", 3, {}, []), "unexpected answer to 'apply'"),  # stale generation
        ("apply", ("applied", 4, [], []), "unexpected answer"),
        ("metrics", ("applied", 4, {}, []), "unexpected answer to 'metrics'"),
        ("apply", ("error", "apply", "KeyError: 'x'"), "'apply' failed in the worker: KeyError"),
    ],
)
def test_check_answer_names_what_was_wrong(
    request_kind: str, answer: tuple[Any, ...], error: str
) -> None:
    with pytest.raises(WorkerFailure) as caught:
        check_answer(request_kind, answer, 4)
    assert error in str(caught.value)


# --------------------------------------------------------------------------- listeners


def test_a_listener_port_cannot_be_joined() -> None:
    sock = bind_listener(LOCAL, 0)
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        port = sock.getsockname()[1]
        # Neither a second gatewayd nor a stranger asking for SO_REUSEPORT gets in.
        with pytest.raises(OSError) as second:
            bind_listener(LOCAL, port)
        assert second.value.errno == errno.EADDRINUSE
        with socket.socket() as stranger:
            stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError) as joined:
                stranger.bind((LOCAL, port))
            assert joined.value.errno == errno.EADDRINUSE


def test_listening_sockets_bind_once_and_hand_out_descriptors() -> None:
    port = bind_listener(LOCAL, 0)
    key = (LOCAL, port.getsockname()[1])
    port.close()
    held = ListeningSockets()
    try:
        first, second = held.open(key), held.open(key)
        with first, second:
            assert first.fileno() != second.fileno()
            assert inode(first.fileno()) == inode(second.fileno())
        # The servers' descriptors are gone; the port still listens.
        with socket.create_connection(key, timeout=5):
            pass
        held.retain([])
        assert held.keys() == set()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(key, timeout=5).close()
    finally:
        held.close()


def test_a_worker_opens_only_handed_sockets() -> None:
    worker_side = ListeningSockets(binds=False)
    with pytest.raises(NotHanded):
        worker_side.open((LOCAL, 1))
    sock = bind_listener(LOCAL, 0)
    key = (LOCAL, sock.getsockname()[1])
    worker_side.put(key, sock)
    with worker_side.open(key) as dup:
        assert inode(dup.fileno()) == inode(sock.fileno())
    worker_side.close()
    assert sock.fileno() == -1


# --------------------------------------------------------------------------- worker side


def test_the_worker_answers_each_request_and_stops_on_garbage() -> None:
    async def main() -> None:
        supervisor, worker = socket.socketpair()
        listener = bind_listener(LOCAL, 0)
        key = (LOCAL, listener.getsockname()[1])
        served = asyncio.get_running_loop().create_task(
            workers._serve(worker, ProxyOptions(access_log=None))
        )
        loop = asyncio.get_running_loop()

        async def call(message: tuple[Any, ...], fds: list[int] | None = None) -> Any:
            await loop.run_in_executor(None, send_frame, supervisor, message, fds or [])
            return await loop.run_in_executor(None, recv_frame, supervisor)

        try:
            snapshot = pickle.dumps(Snapshot(generation=5))
            apply = ("apply", 5, snapshot, (key,))
            assert await call(apply, [listener.fileno()]) == ("applied", 5, {}, [])
            metrics = await call(("metrics",))
            assert metrics[0] == "metrics" and isinstance(metrics[1], dict)
            unknown = await call(("reboot",))
            assert unknown == ("error", "reboot", "unknown request 'reboot'")
            broken = await call(("apply", 6, b"not a pickle", ()))
            assert broken[:2] == ("error", "apply") and "UnpicklingError" in broken[2]
            # A stream that is not frames: the worker stops with status 1.
            await loop.run_in_executor(None, supervisor.sendall, b"\0" * 64)
            assert await served == 1
        finally:
            served.cancel()
            for s in (supervisor, worker, listener):
                s.close()

    run(main())


# --------------------------------------------------------------------------- pool


def test_a_pool_whose_workers_cannot_start_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    # A format the access logger refuses makes every worker die before it answers.
    monkeypatch.setattr(workers, "RESTART_BACKOFF", (0.05,))

    async def main() -> None:
        pool = WorkerPool(1, ProxyOptions(access_log="bogus"))
        await pool.start()
        try:
            await pool.apply(Snapshot(generation=1))
            async with asyncio.timeout(15):
                await pool.fatal.wait()
            assert "could not take configuration generation 1 in 3 attempts" in (pool.fatal_reason)
            assert pool.apply_failures == [workers.MAX_APPLY_ATTEMPTS]
        finally:
            await pool.close()

    run(main(), timeout=30)
