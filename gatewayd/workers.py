"""`gatewayd run --workers N`: worker processes sharing each listener with SO_REUSEPORT.

The supervisor (the ``Daemon`` of ``daemon.py``) owns configuration loading, status,
the file watch and the admin server; it hands each compiled snapshot, pickled once, to
every worker over a pipe.  Each worker is a fresh (spawned) interpreter running uvloop
and one ``Proxy``: it binds every listener itself (``_bind`` sets SO_REUSEPORT, so the
kernel spreads new connections across the workers), swaps the snapshot atomically and
answers with the ports it could not bind.  A worker that dies is logged and restarted
with backoff and gets the current snapshot; its listeners never disappear meanwhile,
because the other workers still hold them.  Metrics: on each scrape the supervisor asks
every worker for its counters and sums them.

Pipe protocol (``multiprocessing.Connection``; one request, one answer):

    supervisor -> worker                 worker -> supervisor
    ("apply", <pickled Snapshot>)        ("applied", {(addr, port): reason}, [bound keys])
    ("metrics",)                         ("metrics", ProxyMetrics.export())
    ("drain", seconds)                   ("drained",)   then the worker exits 0

The supervisor's side runs each exchange in a thread (``run_in_executor``), so a large
snapshot never blocks its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.compiled import Snapshot

log = logging.getLogger("gatewayd")

ListenKey = tuple[str, int]
CALL_TIMEOUT = 30.0  # seconds a worker may take to answer one request
RESTART_BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0)


# --------------------------------------------------------------------------- worker


def worker_main(conn: Connection, options: ProxyOptions, index: int) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but the pipe)."""
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
        runner.run(_serve(conn, options))


async def _serve(conn: Connection, options: ProxyOptions) -> None:
    loop = asyncio.get_running_loop()
    metrics = ProxyMetrics(registry=_private_registry())
    proxy = Proxy(SnapshotHolder(Snapshot(generation=0)), options, metrics)
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    fd = conn.fileno()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            # The supervisor is gone: drain what is in flight and exit.
            loop.remove_reader(fd)
            inbox.put_nowait(("drain", 5.0, "orphaned"))

    loop.add_reader(fd, readable)
    # SIGTERM sent to a worker alone (not through the supervisor) also drains.
    loop.add_signal_handler(signal.SIGTERM, lambda: inbox.put_nowait(("drain", 5.0, "SIGTERM")))
    while True:
        msg = await inbox.get()
        kind = msg[0]
        if kind == "apply":
            snapshot: Snapshot = pickle.loads(msg[1])
            failures = await proxy.apply(snapshot)
            conn.send(("applied", failures, sorted(proxy.bound())))
        elif kind == "metrics":
            conn.send(("metrics", metrics.export()))
        elif kind == "drain":
            loop.remove_reader(fd)
            await proxy.close(float(msg[1]))
            with contextlib.suppress(OSError):
                conn.send(("drained",))
            return


def _private_registry() -> Any:
    # Each worker counts in its own registry; only the supervisor exposes metrics.
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


# --------------------------------------------------------------------------- supervisor


class _Worker:
    __slots__ = ("conn", "index", "lock", "process", "started")

    def __init__(self, index: int, process: BaseProcess, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.lock = threading.Lock()  # one request/answer at a time on the pipe
        self.started = time.monotonic()

    def call(self, message: tuple[Any, ...], timeout: float = CALL_TIMEOUT) -> tuple[Any, ...]:
        """Send one request and wait for its answer (runs in an executor thread)."""
        with self.lock:
            self.conn.send(message)
            if not self.conn.poll(timeout):
                raise TimeoutError(f"worker {self.index} did not answer {message[0]!r}")
            answer: tuple[Any, ...] = self.conn.recv()
            return answer


class WorkerPool:
    """The supervisor's data plane: N worker processes, each with a ``Proxy``.

    Offers what the daemon uses of ``Proxy``: ``apply``, ``bound`` and ``close``."""

    def __init__(self, count: int, options: ProxyOptions) -> None:
        self.count = count
        self.options = options
        self.ctx = multiprocessing.get_context("spawn")
        self.workers: list[_Worker | None] = [None] * count
        self.snapshot_bytes: bytes | None = None
        self.bound_keys: set[ListenKey] = set()
        self.restarts = 0
        self.closing = False
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
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=worker_main,
            args=(child, self.options, index),
            name=f"gatewayd-worker-{index}",
            daemon=False,
        )
        process.start()
        child.close()
        worker = _Worker(index, process, parent)
        self.workers[index] = worker
        task = asyncio.get_running_loop().create_task(self._monitor(worker))
        self._monitors.add(task)
        task.add_done_callback(self._monitors.discard)
        return worker

    async def _monitor(self, worker: _Worker) -> None:
        """Wait for the worker's exit; unless we are stopping, restart it."""
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
        if self.closing:
            return
        code = worker.process.exitcode
        self.restarts += 1
        delay = RESTART_BACKOFF[min(self.restarts - 1, len(RESTART_BACKOFF) - 1)]
        if time.monotonic() - worker.started > 60:
            delay = RESTART_BACKOFF[0]  # it ran for a while: not a crash loop
        log.error(
            "worker %d (pid %s) exited with %s; restarting in %.1fs",
            worker.index,
            worker.process.pid,
            _describe_exit(code),
            delay,
        )
        worker.conn.close()
        await asyncio.sleep(delay)
        if self.closing:
            return
        fresh = self._spawn(worker.index)
        if self.snapshot_bytes is not None:
            try:
                await self._call(fresh, ("apply", self.snapshot_bytes))
            except (OSError, EOFError, TimeoutError) as exc:
                log.error("worker %d: applying the configuration failed: %s", fresh.index, exc)
        log.info("worker %d restarted (pid %s)", fresh.index, fresh.process.pid)

    async def _call(self, worker: _Worker, message: tuple[Any, ...]) -> tuple[Any, ...]:
        return await asyncio.get_running_loop().run_in_executor(None, worker.call, message)

    # -- what the daemon uses ----------------------------------------------------------

    async def apply(self, snapshot: Snapshot) -> dict[ListenKey, str]:
        """Hand ``snapshot`` to every worker; ports that no worker could bind fail."""
        async with self._apply_lock:
            data = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
            self.snapshot_bytes = data
            live = [w for w in self.workers if w is not None]
            answers = await asyncio.gather(
                *(self._call(w, ("apply", data)) for w in live), return_exceptions=True
            )
            failures: dict[ListenKey, str] = {}
            bound: set[ListenKey] = set()
            for worker, answer in zip(live, answers, strict=True):
                if isinstance(answer, BaseException):
                    # A worker that died mid-way is restarted with this snapshot.
                    log.error("worker %d: apply failed: %s", worker.index, answer)
                    continue
                _, worker_failures, worker_bound = answer
                failures.update(worker_failures)
                bound.update(tuple(k) for k in worker_bound)
            self.bound_keys = bound
            return {k: v for k, v in failures.items() if k not in bound}

    def bound(self) -> set[ListenKey]:
        return set(self.bound_keys)

    async def metrics_exports(self) -> list[dict[str, Any]]:
        live = [w for w in self.workers if w is not None and w.process.is_alive()]
        answers = await asyncio.gather(
            *(self._call(w, ("metrics",)) for w in live), return_exceptions=True
        )
        return [a[1] for a in answers if not isinstance(a, BaseException)]

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w is not None and w.process.pid]

    async def close(self, drain_timeout: float = 0.0) -> None:
        """Drain every worker for up to ``drain_timeout`` seconds, then make sure each
        has exited."""
        self.closing = True
        live = [w for w in self.workers if w is not None and w.process.is_alive()]
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(None, w.call, ("drain", drain_timeout), drain_timeout + 5)
                for w in live
            ),
            return_exceptions=True,
        )
        for w in live:
            await loop.run_in_executor(None, w.process.join, 5.0)
            if w.process.is_alive():
                log.error("worker %d did not exit; killing it", w.index)
                w.process.kill()
                await loop.run_in_executor(None, w.process.join, 5.0)
            w.conn.close()
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
