"""`gatewayd run --workers N`: a supervisor binding every listener once, N workers serving.

The supervisor (the ``Daemon`` of ``daemon.py``) owns configuration loading, status,
the file watch, the admin server and every listening socket: it binds each listener
port once, without SO_REUSEPORT (``proxy/listeners.py``), so no other process can
join the port, and hands the socket to every worker (SCM_RIGHTS) with the compiled
snapshot.  Each worker is a fresh (spawned) interpreter running uvloop and one
``Proxy`` that accepts on the handed sockets; all workers accept on the same socket.
A port that stays in a new snapshot keeps its socket, and a worker that dies or is
restarted never closes a listening socket: the supervisor holds each one and queues
connections meanwhile.  Metrics: on each scrape the supervisor asks every worker for
its counters and sums them.

Pipe protocol: a Unix socket pair; one request, one answer.  Every message is a frame
(``frame``): a header (magic, payload length, descriptor count) and a pickled tuple.
Frames have no size limit but ``MAX_FRAME``, and the worker reads them incrementally
from its non-blocking end (``FrameDecoder``), so a snapshot of any size arrives whole.

    supervisor -> worker                           worker -> supervisor
    ("apply", generation, <pickled Snapshot>,      ("applied", generation,
        handed ports) + descriptors                    {(addr, port): reason}, [bound ports])
    ("metrics",)                                   ("metrics", ProxyMetrics.export())
    ("drain", seconds)                             ("drained",)   then the worker exits 0
    any request the worker could not carry out     ("error", request kind, cause)

"handed ports" are the ports whose descriptors ride with the frame, in order: those
of the snapshot the worker does not serve yet.  A worker keeps the sockets of the ports
it serves ("bound ports") and closes the others, so a port that left the snapshot or
that no worker can serve (its TLS failed) is closed once the supervisor closes its own
descriptor.  The supervisor checks the shape of every answer; any failed exchange (an
error answer, a wrong shape, a timeout, a closed pipe) is logged with its cause and the
worker is killed and restarted with the current snapshot.  A worker that fails to take the
current snapshot ``MAX_APPLY_ATTEMPTS`` times in a row ends the daemon (exit status 1).

The supervisor's side runs each exchange in a thread (``run_in_executor``) on a blocking
socket with a timeout, so a large snapshot never blocks its event loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, MutableSequence, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from gatewayd.collector import BuiltOutOfCollections, collection_paused
from gatewayd.proxy.acceptor import NOT_ACCEPTING, Balance
from gatewayd.proxy.listeners import ListeningSockets, ListenKey, bind_listener
from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.compiled import Snapshot

log = logging.getLogger("gatewayd")

CALL_TIMEOUT = 30.0  # seconds a worker may take to answer one request
RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)
# Failed attempts in a row at giving one worker the current snapshot before the daemon
# gives up (exit 1) rather than restarting workers forever.
MAX_APPLY_ATTEMPTS = 3


# --------------------------------------------------------------------------- framing

MAGIC = b"GWD1"
HEADER = struct.Struct("!4sII")  # magic, payload length, descriptors sent with the frame
# A frame's payload limit: far above any snapshot (10,000 routes pickle to a few MiB),
# low enough that a corrupt length is caught instead of allocated.
MAX_FRAME = 1 << 30
# Descriptors per sendmsg(): the kernel takes at most 253 (SCM_MAX_FD) at once.
FDS_PER_MESSAGE = 200
RECV_BYTES = 256 * 1024
_FD_SIZE = array.array("i").itemsize
ANCILLARY_BYTES = socket.CMSG_SPACE(FDS_PER_MESSAGE * _FD_SIZE)


class ProtocolError(Exception):
    """The supervisor/worker exchange broke: the pipe cannot be trusted any more."""


def _payload(message: tuple[Any, ...]) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(payload) > MAX_FRAME:
        raise ProtocolError(
            f"a {message[0]!r} message of {len(payload)} bytes exceeds the frame limit "
            f"of {MAX_FRAME} bytes"
        )
    return payload


def frame(message: tuple[Any, ...]) -> bytes:
    """``message`` as one frame without descriptors."""
    payload = _payload(message)
    return HEADER.pack(MAGIC, len(payload), 0) + payload


class FrameDecoder:
    """Sans-I/O reader of frames: bytes and received descriptors in, in arrival order;
    complete ``(message, descriptors)`` out.  Raises ``ProtocolError`` on a bad magic,
    an oversized frame, missing descriptors or an undecodable payload."""

    __slots__ = ("buffer", "fds", "limit")

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.buffer = bytearray()
        self.fds: deque[int] = deque()
        self.limit = limit

    def feed(self, data: bytes, fds: Iterable[int] = ()) -> list[tuple[tuple[Any, ...], list[int]]]:
        self.buffer += data
        self.fds.extend(fds)
        out: list[tuple[tuple[Any, ...], list[int]]] = []
        while len(self.buffer) >= HEADER.size:
            magic, length, count = HEADER.unpack_from(self.buffer)
            if magic != MAGIC:
                raise ProtocolError(
                    f"a frame starts with {bytes(self.buffer[:4])!r}, not {MAGIC!r}"
                )
            if length > self.limit:
                raise ProtocolError(f"a frame of {length} bytes exceeds the limit of {self.limit}")
            end = HEADER.size + length
            if len(self.buffer) < end:
                break
            # Descriptors ride with the frame's first bytes, so they are here by now.
            if len(self.fds) < count:
                raise ProtocolError(f"a frame carries {count} descriptor(s); {len(self.fds)} came")
            payload = bytes(self.buffer[HEADER.size : end])
            del self.buffer[:end]
            handed = [self.fds.popleft() for _ in range(count)]
            try:
                message = pickle.loads(payload)
            except Exception as exc:
                _close_fds(handed)
                raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
            if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
                _close_fds(handed)
                raise ProtocolError(f"not a message: {_brief(message)}")
            out.append((message, handed))
        return out

    def close(self) -> None:
        _close_fds(self.fds)
        self.fds.clear()


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def send_frame(sock: socket.socket, message: tuple[Any, ...], fds: Sequence[int] = ()) -> None:
    """Send ``message`` and ``fds`` on a blocking stream socket."""
    payload = _payload(message)
    batches = [fds[i : i + FDS_PER_MESSAGE] for i in range(0, len(fds), FDS_PER_MESSAGE)]
    # The first batch rides with the header, each further one with one payload byte.
    if len(batches) > 1 + len(payload):
        raise ProtocolError(f"{len(fds)} descriptors do not fit one {message[0]!r} frame")
    header = HEADER.pack(MAGIC, len(payload), len(fds))
    view = memoryview(payload)
    _sendmsg(sock, header, batches[0] if batches else ())
    sent = 0
    for batch in batches[1:]:
        _sendmsg(sock, view[sent : sent + 1], batch)
        sent += 1
    sock.sendall(view[sent:])


def _sendmsg(sock: socket.socket, data: bytes | memoryview, fds: Sequence[int]) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg([data], ancillary)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def recv_frame(sock: socket.socket) -> tuple[Any, ...]:
    """One descriptor-less message from a blocking stream socket."""
    magic, length, count = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    if magic != MAGIC or length > MAX_FRAME or count:
        raise ProtocolError(f"bad frame header: magic {magic!r}, {length} bytes, {count} fds")
    try:
        message = pickle.loads(_recv_exactly(sock, length))
    except Exception as exc:
        raise ProtocolError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
    if not isinstance(message, tuple) or not message:
        raise ProtocolError(f"not a message: {_brief(message)}")
    return message


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("the pipe was closed")
        got += n
    return data


def receive_frames(
    sock: socket.socket, decoder: FrameDecoder
) -> tuple[list[tuple[tuple[Any, ...], list[int]]], bool]:
    """Read what a non-blocking ``sock`` holds: (complete messages, end of stream)."""
    out: list[tuple[tuple[Any, ...], list[int]]] = []
    while True:
        try:
            data, ancillary, flags, _ = sock.recvmsg(
                RECV_BYTES, ANCILLARY_BYTES, socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return out, False
        fds: list[int] = []
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", raw[: len(raw) - len(raw) % _FD_SIZE]))
        if flags & socket.MSG_CTRUNC:
            _close_fds(fds)
            raise ProtocolError("descriptors were cut off (ancillary buffer too small)")
        if not data:
            return out, True
        out.extend(decoder.feed(data, fds))


# --------------------------------------------------------------------------- worker


def worker_main(
    sock: socket.socket, options: ProxyOptions, index: int, counts: MutableSequence[int]
) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but the pipe and
    ``counts``, every worker's open connections in shared memory: ``Balance``)."""
    import uvloop

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s",
    )
    # The supervisor decides when to stop (it sends "drain"); Ctrl-C on a terminal hits
    # the whole process group, so the worker ignores SIGINT and waits for the word.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(_serve(sock, options, Balance(counts, index)))
    sys.exit(code)


async def _serve(sock: socket.socket, options: ProxyOptions, balance: Balance | None = None) -> int:
    """Answer the supervisor's requests until told to drain; the exit status."""
    loop = asyncio.get_running_loop()
    metrics = ProxyMetrics(registry=_private_registry())
    sockets = ListeningSockets(binds=False)
    holder = SnapshotHolder(Snapshot(generation=0))
    proxy = Proxy(holder, options, metrics, sockets, balance=balance)
    frozen = BuiltOutOfCollections()
    inbox: asyncio.Queue[tuple[tuple[Any, ...], list[int]]] = asyncio.Queue()
    decoder = FrameDecoder()
    sock.setblocking(False)
    fd = sock.fileno()

    def stop(cause: str, code: int) -> None:
        loop.remove_reader(fd)
        inbox.put_nowait((("_stop", cause, code), []))

    def readable() -> None:
        try:
            messages, ended = receive_frames(sock, decoder)
        except (ProtocolError, OSError) as exc:
            log.error("reading from the supervisor failed: %s; stopping", exc)
            stop(f"protocol error: {exc}", 1)
            return
        for item in messages:
            inbox.put_nowait(item)
        if ended:
            stop("the supervisor is gone", 0)

    loop.add_reader(fd, readable)
    # SIGTERM sent to a worker alone (not through the supervisor) also drains.
    loop.add_signal_handler(signal.SIGTERM, lambda: stop("SIGTERM", 0))
    while True:
        message, fds = await inbox.get()
        kind = message[0]
        if kind == "_stop":
            log.info("draining: %s", message[1])
            await proxy.close(5.0)
            decoder.close()
            return int(message[2])
        if kind == "drain":
            loop.remove_reader(fd)
            await proxy.close(float(message[1]))
            decoder.close()
            with contextlib.suppress(OSError):
                await loop.sock_sendall(sock, frame(("drained",)))
            return 0
        try:
            if kind == "apply":
                answer = await _apply(proxy, sockets, message, fds, frozen)
            elif kind == "metrics":
                answer = ("metrics", metrics.export())
            else:
                _close_fds(fds)
                answer = ("error", kind, f"unknown request {kind!r}")
        except Exception as exc:  # answered with its cause; the supervisor restarts us
            log.exception("%s failed", kind)
            answer = ("error", kind, f"{type(exc).__name__}: {exc}")
        try:
            await loop.sock_sendall(sock, frame(answer))
        except OSError as exc:
            log.error("answering the supervisor failed: %s; stopping", exc)
            stop(f"cannot answer: {exc}", 1)


async def _apply(
    proxy: Proxy,
    sockets: ListeningSockets,
    message: tuple[Any, ...],
    fds: list[int],
    frozen: BuiltOutOfCollections,
) -> tuple[Any, ...]:
    try:
        _, generation, data, handed = message
        if len(handed) != len(fds):
            raise ProtocolError(f"{len(handed)} ports handed with {len(fds)} descriptors")
    except (ValueError, TypeError, ProtocolError):
        _close_fds(fds)
        raise
    for key, fd in zip(handed, fds, strict=True):
        sockets.put((key[0], key[1]), socket.socket(fileno=fd))
    loop = asyncio.get_running_loop()
    snapshot: Snapshot = await loop.run_in_executor(None, _unpickle_snapshot, data, frozen)
    failures = await proxy.apply(snapshot)
    bound = proxy.bound()
    sockets.retain(bound)  # the supervisor hands the others again if they come back
    return ("applied", generation, failures, sorted(bound))


# How often (seconds) the unpickling thread offers the GIL to the serving loop.
UNPICKLE_SWITCH_INTERVAL = 0.001


def _unpickle_snapshot(data: bytes, frozen: BuiltOutOfCollections) -> Snapshot:
    """On a thread: the snapshot from its pickle, frozen out of the collector's walks.

    Unpickling 10,000 HTTPRoutes on the event loop held it for 0.27 s (1.5 s with the
    collector walking the new objects meanwhile).  Each frozen dataclass is restored
    by a Python ``__setstate__``, so on a thread the loop gets the GIL back every switch
    interval: its longest wait measured 24 ms.  Then frozen as the supervisor's build
    is (``collector.py``), for the same reason."""
    if not isinstance(data, bytes):
        raise ProtocolError(f"a snapshot must be bytes, got {type(data).__name__}")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(UNPICKLE_SWITCH_INTERVAL)
    try:
        with collection_paused():
            snapshot = pickle.loads(data)
            if not isinstance(snapshot, Snapshot):
                raise ProtocolError(f"not a snapshot: {_brief(snapshot)}")
            frozen.end()
        return snapshot
    finally:
        sys.setswitchinterval(interval)


def _private_registry() -> Any:
    # Each worker counts in its own registry; only the supervisor exposes metrics.
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


# --------------------------------------------------------------------------- supervisor


class WorkerFailure(Exception):
    """One exchange with a worker failed; the message says why."""


def check_answer(request: str, answer: tuple[Any, ...], generation: int = 0) -> tuple[Any, ...]:
    """``answer`` if it has the shape ``request`` expects; WorkerFailure otherwise."""
    if answer[0] == "error" and len(answer) == 3:
        raise WorkerFailure(f"{request!r} failed in the worker: {answer[2]}")
    ok = False
    if request == "apply":
        ok = (
            len(answer) == 4
            and answer[0] == "applied"
            and answer[1] == generation
            and isinstance(answer[2], dict)
            and isinstance(answer[3], list)
        )
    elif request == "metrics":
        ok = len(answer) == 2 and answer[0] == "metrics" and isinstance(answer[1], dict)
    elif request == "drain":
        ok = answer == ("drained",)
    if not ok:
        raise WorkerFailure(f"unexpected answer to {request!r}: {_brief(answer)}")
    return answer


Held = dict[ListenKey, tuple[int, socket.socket]]  # port -> (serial, listening socket)


class _Worker:
    __slots__ = ("handed", "index", "lock", "process", "sock", "started")

    def __init__(self, index: int, process: BaseProcess, sock: socket.socket) -> None:
        self.index = index
        self.process = process
        self.sock = sock
        self.lock = threading.Lock()  # one request/answer at a time on the pipe
        self.started = time.monotonic()
        # Port -> serial of the socket this worker was given; a port bound again gets a
        # new serial and is handed again.
        self.handed: dict[ListenKey, int] = {}

    def call(
        self, message: tuple[Any, ...], fds: Sequence[int] = (), timeout: float = CALL_TIMEOUT
    ) -> tuple[Any, ...]:
        """Send one request and wait for its answer (runs in an executor thread)."""
        with self.lock:
            return self._exchange(message, fds, timeout)

    def _exchange(
        self, message: tuple[Any, ...], fds: Sequence[int], timeout: float
    ) -> tuple[Any, ...]:
        self.sock.settimeout(timeout)
        try:
            send_frame(self.sock, message, fds)
            return recv_frame(self.sock)
        except TimeoutError as exc:
            raise WorkerFailure(f"no answer to {message[0]!r} within {timeout:.0f}s") from exc
        except (OSError, EOFError, ProtocolError) as exc:
            raise WorkerFailure(f"{message[0]!r}: {type(exc).__name__}: {exc}") from exc

    def apply(self, generation: int, data: bytes, held: Held) -> tuple[Any, ...]:
        """Hand ``data`` (a pickled snapshot) and the sockets it lacks to the worker."""
        with self.lock:
            fresh = sorted(k for k, (serial, _) in held.items() if self.handed.get(k) != serial)
            message = ("apply", generation, data, tuple(fresh))
            answer = self._exchange(message, [held[k][1].fileno() for k in fresh], CALL_TIMEOUT)
            # The worker keeps the sockets of the ports it serves (a wrong answer kills
            # it: then this does not matter).
            bound = answer[3] if len(answer) == 4 and isinstance(answer[3], list) else []
            self.handed = {k: held[k][0] for k in map(tuple, bound) if k in held}
            return answer

    def close_pipe(self) -> None:
        """Close the pipe once no exchange uses it (one on a dead worker ends soon)."""
        with self.lock:
            self.sock.close()

    @property
    def name(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


class WorkerPool:
    """The supervisor's data plane: every listening socket and N worker processes, each
    with a ``Proxy``.

    Offers what the daemon uses of ``Proxy``: ``apply``, ``bound`` and ``close``; and
    ``fatal``, set when the workers cannot be kept serving (``fatal_reason`` says why)."""

    def __init__(self, count: int, options: ProxyOptions) -> None:
        self.count = count
        self.options = options
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[_Worker | None] = [None] * count
        # Open connections of each worker, shared with all of them so that they balance
        # their accepting (``gatewayd/proxy/acceptor.py``); NOT_ACCEPTING while a worker
        # does not serve.
        self.counts = self.ctx.RawArray(ctypes.c_int, [NOT_ACCEPTING] * count)
        self.listeners: Held = {}
        self._serials = itertools.count(1)
        self.generation = 0
        self.snapshot_bytes: bytes | None = None
        self.restarts = 0
        # Failed attempts in a row at giving each worker the current snapshot.
        self.apply_failures = [0] * count
        self.closing = False
        self.fatal = asyncio.Event()
        self.fatal_reason = ""
        self._monitors: set[asyncio.Task[None]] = set()
        self._apply_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        for index in range(self.count):
            self._spawn(index)
        log.info(
            "%d workers started (pids %s)",
            self.count,
            ", ".join(str(w.process.pid) for w in self.workers if w is not None),
        )

    def _spawn(self, index: int) -> _Worker:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self.ctx.Process(
            target=worker_main,
            args=(child, self.options, index, self.counts),
            name=f"gatewayd-worker-{index}",
            daemon=False,
        )
        try:
            process.start()
        finally:
            child.close()
        worker = _Worker(index, process, parent)
        self.workers[index] = worker
        task = asyncio.get_running_loop().create_task(self._monitor(worker))
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)
        return worker

    async def _monitor(self, worker: _Worker) -> None:
        """Wait for the worker's exit; unless we are stopping, restart it and hand it
        the current snapshot."""
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        sentinel = worker.process.sentinel

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(sentinel, on_exit)
        try:
            await exited
        finally:
            loop.remove_reader(sentinel)
        worker.process.join(timeout=1.0)
        self.counts[worker.index] = NOT_ACCEPTING  # the others stop leaving it a share
        if self._stopping():
            return
        code = worker.process.exitcode
        self.restarts += 1
        delay = RESTART_BACKOFF[min(self.restarts - 1, len(RESTART_BACKOFF) - 1)]
        if time.monotonic() - worker.started > 60:
            delay = RESTART_BACKOFF[0]  # it ran for a while: not a crash loop
        log.error(
            "%s exited with %s; restarting in %.1fs", worker.name, _describe_exit(code), delay
        )
        await asyncio.sleep(delay)
        # Under the apply lock the pipe is not in use any more (a failed exchange kills
        # the worker and returns), and no reload changes the snapshot or the sockets
        # while the new worker takes them.
        async with self._apply_lock:
            await loop.run_in_executor(None, worker.close_pipe)
            if self._stopping():
                return
            fresh = self._spawn(worker.index)
            if self.snapshot_bytes is None:
                log.info("worker %d restarted (pid %s)", fresh.index, fresh.process.pid)
                return
            if await self._apply_one(fresh, dict(self.listeners)) is not None:
                log.info(
                    "worker %d restarted (pid %s) serving configuration generation %d",
                    fresh.index,
                    fresh.process.pid,
                    self.generation,
                )

    def _stopping(self) -> bool:
        return self.closing or self.fatal.is_set()

    async def _apply_one(self, worker: _Worker, held: Held) -> tuple[Any, ...] | None:
        """Give ``worker`` the current snapshot: its valid answer, or None (the failure is
        logged and the worker restarted, or the daemon stops after too many attempts)."""
        generation, data = self.generation, self.snapshot_bytes
        assert data is not None
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(None, worker.apply, generation, data, held)
            check_answer("apply", answer, generation)
        except WorkerFailure as exc:
            self.apply_failures[worker.index] += 1
            attempts = self.apply_failures[worker.index]
            if attempts >= MAX_APPLY_ATTEMPTS:
                self._give_up(
                    f"{worker.name} could not take configuration generation {generation} "
                    f"in {attempts} attempts; last: {exc}"
                )
            self._restart(worker, f"applying configuration generation {generation}: {exc}")
            return None
        self.apply_failures[worker.index] = 0
        return answer

    def _restart(self, worker: _Worker, cause: str) -> None:
        """A failed exchange leaves the pipe in an unknown state: kill the worker; its
        monitor starts a new one with the current snapshot."""
        if not self._stopping():
            log.error("%s failed: %s; restarting it", worker.name, cause)
        if worker.process.is_alive():
            with contextlib.suppress(OSError):
                worker.process.kill()

    def _give_up(self, reason: str) -> None:
        if not self.fatal.is_set():
            self.fatal_reason = reason
            log.critical("giving up: %s", reason)
            self.fatal.set()

    # -- what the daemon uses ----------------------------------------------------------

    async def apply(self, snapshot: Snapshot) -> dict[ListenKey, str]:
        """Bind the snapshot's new ports, hand the snapshot and the sockets to every
        worker, close the sockets of ports that left it.  Returns the ports that could
        not be bound (or that no worker could serve) with the reason."""
        async with self._apply_lock:
            failures = self._bind_new(snapshot)
            # Pickling 10,000 routes takes ~0.6 s: in a thread, so the event loop (admin,
            # metrics) gets its share of the GIL meanwhile.  The snapshot is immutable.
            data = await asyncio.get_running_loop().run_in_executor(
                None, pickle.dumps, snapshot, pickle.HIGHEST_PROTOCOL
            )
            if len(data) > MAX_FRAME - 4096:
                self._give_up(
                    f"configuration generation {snapshot.generation} is {len(data)} bytes "
                    f"pickled, over the {MAX_FRAME}-byte limit of the worker pipe"
                )
                return failures
            self.generation, self.snapshot_bytes = snapshot.generation, data
            # The workers keep the sockets of this snapshot's ports and let go of the
            # others before the supervisor closes its own below.
            held = {k: v for k, v in self.listeners.items() if k in snapshot.ports}
            # A worker waiting for its restart gets this snapshot from its monitor.
            live = [w for w in self.workers if w is not None and w.process.is_alive()]
            answers = await asyncio.gather(*(self._apply_one(w, held) for w in live))
            reported: dict[ListenKey, str] = {}
            served: set[ListenKey] = set()
            for answer in answers:
                if answer is not None:
                    reported.update(answer[2])
                    served.update((k[0], k[1]) for k in answer[3])
            for key, reason in sorted(reported.items()):
                if key not in served and key not in failures:
                    # No worker serves it (its TLS failed): refuse connections rather
                    # than queue them on a socket nobody accepts from.
                    failures[key] = reason
                    self._unbind(key)
            for key in [k for k in self.listeners if k not in snapshot.ports]:
                self._unbind(key)  # the workers let go of it in this apply
            return failures

    def _bind_new(self, snapshot: Snapshot) -> dict[ListenKey, str]:
        failures: dict[ListenKey, str] = {}
        for key in sorted(set(snapshot.ports) - self.listeners.keys()):
            try:
                self.listeners[key] = (next(self._serials), bind_listener(*key))
            except OSError as exc:
                failures[key] = f"cannot bind {host_port(*key)}: {exc.strerror or exc}"
                log.error("%s", failures[key])
        return failures

    def _unbind(self, key: ListenKey) -> None:
        entry = self.listeners.pop(key, None)
        if entry is not None:
            entry[1].close()

    def bound(self) -> set[ListenKey]:
        return set(self.listeners)

    async def metrics_exports(self) -> list[dict[str, Any]]:
        live = [w for w in self.workers if w is not None and w.process.is_alive()]
        exports = await asyncio.gather(*(self._metrics(w) for w in live))
        return [e for e in exports if e is not None]

    async def _metrics(self, worker: _Worker) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(None, worker.call, ("metrics",))
            exported: dict[str, Any] = check_answer("metrics", answer)[1]
        except WorkerFailure as exc:
            self._restart(worker, str(exc))
            return None
        return exported

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w is not None and w.process.pid]

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Stop listening, drain every worker for up to ``drain_timeout`` seconds and
        make sure each has exited."""
        self.closing = True
        # New connections are refused from now on: the workers close their descriptors
        # of each listening socket when they start draining, the supervisor here.
        for key in list(self.listeners):
            self._unbind(key)
        live = [w for w in self.workers if w is not None and w.process.is_alive()]
        loop = asyncio.get_running_loop()

        async def drain(w: _Worker) -> None:
            try:
                answer = await loop.run_in_executor(
                    None, w.call, ("drain", drain_timeout), (), drain_timeout + 5
                )
                check_answer("drain", answer)
            except WorkerFailure as exc:
                log.warning("%s did not drain cleanly: %s", w.name, exc)

        await asyncio.gather(*(drain(w) for w in live))
        for w in live:
            await loop.run_in_executor(None, w.process.join, 5.0)
            if w.process.is_alive():
                log.error("%s did not exit; killing it", w.name)
                w.process.kill()
                await loop.run_in_executor(None, w.process.join, 5.0)
        for each in self.workers:
            if each is not None:
                each.sock.close()
        for task in list(self._monitors):
            task.cancel()
        await asyncio.gather(*self._monitors, return_exceptions=True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def default_workers() -> int:
    """Every CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
