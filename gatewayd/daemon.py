"""`gatewayd run`: wire the config pipeline, the proxy and the admin server together."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
)

from gatewayd.pipeline import Built, ConfigPipeline
from gatewayd.proxy.admin import AdminState, start_admin
from gatewayd.proxy.metrics import ProxyMetrics, WorkerProcesses, render
from gatewayd.proxy.server import Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.proxy.udp import UDPOptions, UDPPlane
from gatewayd.routing.config.load import ConfigLimits, ConfigPathError
from gatewayd.routing.control.bindings import ObjectStatus, Resolution
from gatewayd.routing.control.gateways import with_listener_failures
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.table import SNITable
from gatewayd.runtime.listening import listening_lines, not_served_reason
from gatewayd.runtime.sinks import StatusSink
from gatewayd.runtime.sinks.admin import AdminStatusSink
from gatewayd.runtime.sources import SourceError
from gatewayd.runtime.sources.files import FileSource

if TYPE_CHECKING:
    from gatewayd.runtime.kube.leader import LeaderElectionSettings
    from gatewayd.runtime.kube.writeback import StatusWriteback
    from gatewayd.runtime.sources import ConfigSource
    from gatewayd.tproxy.rules import TproxySettings
    from gatewayd.tproxy.runtime import TproxyRuntime
    from gatewayd.workers import WorkerPool

log = logging.getLogger("gatewayd")


@dataclass(slots=True, kw_only=True)
class RunOptions:
    config: list[str] = field(default_factory=list)  # --config paths (file mode)
    source: ConfigSource | None = None  # another source (--kubernetes); None: the files
    admin_address: str = "127.0.0.1:9901"
    address_pool: str = "127.0.10.0/24"
    controller_name: str = "gatewayd.dev/gateway-controller"
    limits: ConfigLimits = field(default_factory=ConfigLimits)  # bounds on reading config
    proxy: ProxyOptions = field(default_factory=ProxyOptions)
    # UDP listeners (UDPRoute): served in this process whatever ``workers`` is.
    udp: UDPOptions = field(default_factory=UDPOptions)
    drain_timeout: float = 15.0
    watch: bool = True
    tproxy: TproxySettings | None = None  # node-local TPROXY + GAMMA mode (--tproxy)
    workers: int = 1  # 1: serve in this process; N > 1: a supervisor and N workers
    # Kubernetes mode: write status to the API server, the Lease holder only (None: the
    # defaults, client-go's timings).  File mode ignores it.
    leader_election: LeaderElectionSettings | None = None


class Daemon:
    """Owns the serving state: the current build, its statuses and the proxy."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.source: ConfigSource = options.source or FileSource(
            options.config, watch=options.watch
        )
        self.pipeline = ConfigPipeline(
            self.source,
            controller_name=options.controller_name,
            address_pool=options.address_pool,
            limits=options.limits,
            freeze=True,  # each build kept out of the collector's walks (pipeline.py)
        )
        self.metrics = ProxyMetrics()
        self.holder = SnapshotHolder(Snapshot(generation=0))
        # One worker serves in this process; several are processes of a WorkerPool that
        # this supervisor feeds with snapshots (gatewayd/workers.py).
        self.pool: WorkerPool | None = None
        self.proxy: Proxy | WorkerPool
        if options.workers > 1 and options.tproxy is None:
            # Imported here: a --workers 1 daemon never needs multiprocessing and ctypes
            # (~5 ms of its start-up, measured with -X importtime).
            from gatewayd.workers import WorkerPool

            self.pool = self.proxy = WorkerPool(options.workers, options.proxy)
        else:
            self.proxy = Proxy(self.holder, options.proxy, self.metrics)
        # UDP listeners live here, with one or several workers: each client flow must stay
        # in one process (proxy/udp.py).
        self.udp = UDPPlane(options.udp, self.metrics)
        # Every serving configuration's statuses go to each sink: the admin /status
        # always; the API server too in Kubernetes mode (``add_sink``).
        self.admin_sink = AdminStatusSink()
        self.sinks: list[StatusSink] = [self.admin_sink]
        self.writeback: StatusWriteback | None = None  # Kubernetes mode
        self.last_error: str | None = None
        self.known_problems: frozenset[str] = frozenset()
        self.is_ready = False
        self.loaded = False  # a configuration was applied (it may serve no listener)
        # Why /ready is 503 (a config loaded but serving no listener, or none loaded).
        self.not_ready = "no configuration loaded yet"
        self._listening: frozenset[str] = frozenset()  # the lines logged for the serving config
        self._reload_lock = asyncio.Lock()
        # A reload when the first served certificate expires, so status and serving
        # follow the certificate's validity as they would at a load (``_watch_expiry``).
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_task: asyncio.Task[bool] | None = None
        self.tproxy: TproxyRuntime | None = None
        if options.tproxy is not None:
            from gatewayd.tproxy.runtime import TproxyRuntime

            assert isinstance(self.proxy, Proxy)  # --tproxy always serves in-process
            self.tproxy = TproxyRuntime(options.tproxy, self.proxy)

    # -- admin callables -------------------------------------------------------------
    def ready(self) -> bool:
        return self.is_ready

    def not_ready_reason(self) -> str:
        return self.not_ready

    @property
    def statuses(self) -> tuple[ObjectStatus, ...]:
        """The statuses of the configuration serving now (what /status shows)."""
        return self.admin_sink.statuses

    def add_sink(self, sink: StatusSink) -> None:
        """Another sink; it is given the serving statuses at once, then every change."""
        self.sinks.append(sink)
        if self.loaded:
            sink.publish(self.admin_sink.statuses)

    def status_items(self) -> list[dict[str, object]]:
        return self.admin_sink.items()

    def _watch_expiry(self, snapshot: Snapshot) -> None:
        """Reload just after the first served certificate expires: the listener is then
        reported (ResolvedRefs False, InvalidCertificateRef: expired) and stops serving
        it, as when an expired certificate is loaded."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        expiry = first_certificate_expiry(snapshot)
        if expiry is None:
            return
        wait = (expiry - dt.datetime.now(dt.UTC)).total_seconds() + 1.0
        if wait <= 0:
            return  # already past (the load's own check saw it): nothing to wait for
        loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(min(wait, MAX_EXPIRY_WAIT), self._on_expiry)

    def _on_expiry(self) -> None:
        self._expiry_timer = None
        log.info("a served certificate expired (or a day passed): reloading to re-check")
        self._expiry_task = asyncio.get_running_loop().create_task(self.load(initial=False))

    def stop_expiry_watch(self) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None

    def config_state(self) -> dict[str, object]:
        """The serving generation and why the last reload was refused (None: it was not)."""
        state: dict[str, object] = {
            "generation": self.holder.current.generation,
            "lastReloadError": self.last_error,
            "controllerName": self.options.controller_name,
        }
        if not self.is_ready:
            state["notReady"] = self.not_ready
        if self.pool is not None:
            state["workerPids"] = self.pool.pids()
        if self.writeback is not None:
            # Every replica shows what it computed (items) and who writes it (here).
            state["statusWriteback"] = self.writeback.state()
        return state

    def config_dump(self) -> dict[str, object]:
        dump = self.holder.current.to_json()
        dump["last_reload_error"] = self.last_error
        if self.tproxy is not None:
            dump["tproxy"] = self.tproxy.to_json()
        return dump

    def explain(self, fields: Mapping[str, object]) -> dict[str, object]:
        """``POST /explain``: the request ``fields`` describe, against the serving
        snapshot, read as the workers read requests (the same path policy)."""
        from gatewayd.proxy.explain import explain_fields

        return explain_fields(
            self.holder.current, fields, self.options.proxy.path, self.status_items()
        )

    def render_metrics(self) -> tuple[bytes, str] | Awaitable[tuple[bytes, str]]:
        if self.pool is None:
            return render()
        return self._render_pool_metrics(self.pool)

    async def _render_pool_metrics(self, pool: WorkerPool) -> tuple[bytes, str]:
        # The sum of every worker's counters plus the supervisor's own (config reloads).
        registry = CollectorRegistry()
        # The supervisor's process and Python (as the default registry has them in one
        # process), and each worker's process.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        registry.register(WorkerProcesses(pool.pids()))
        total = ProxyMetrics(registry)
        total.absorb(self.metrics.export())
        total.copy_config(self.metrics)
        for exported in await pool.metrics_exports():
            total.absorb(exported)
        if self.writeback is not None and self.writeback.metrics is not None:
            registry.register(self.writeback.metrics)
        return render(registry)

    # -- status write-back (Kubernetes mode) -------------------------------------------
    def start_status_writeback(self) -> None:
        """With a connected Kubernetes source: a sink writing status to the API server
        while this replica holds the Lease.  Before the first load, so the first
        statuses reach it."""
        # A source read from files never writes back; the module of the Kubernetes
        # source is imported only by --kubernetes, so its absence says so without
        # importing the Kubernetes client (about 40 MB of RSS) into a file-mode daemon.
        kube = sys.modules.get("gatewayd.runtime.sources.kubernetes")
        if kube is None or not isinstance(self.source, kube.KubernetesSource):
            return
        from gatewayd.runtime.kube.leader import LeaderElectionSettings
        from gatewayd.runtime.kube.writeback import writeback_for

        writeback = writeback_for(
            self.source,
            controller_name=self.options.controller_name,
            election=self.options.leader_election or LeaderElectionSettings(),
        )
        if writeback is None:
            return
        self.writeback = writeback
        self.add_sink(writeback.sink)
        if writeback.metrics is not None and self.pool is None:
            REGISTRY.register(writeback.metrics)  # gatewayd_leader beside ProxyMetrics
        writeback.start()

    async def stop_status_writeback(self) -> None:
        """Stop writing and release the Lease (another replica takes over at once)."""
        writeback, self.writeback = self.writeback, None
        if writeback is None:
            return
        try:
            await writeback.close()
        finally:
            if writeback.metrics is not None and self.pool is None:
                REGISTRY.unregister(writeback.metrics)

    # -- config ----------------------------------------------------------------------
    async def load(self, *, initial: bool) -> bool:
        """Build and apply a snapshot.  A failed reload keeps the last good one serving."""
        async with self._reload_lock:
            log.info("loading the configuration")
            try:
                built, problems = await self._build_off_loop()
            except ConfigPathError as exc:
                return self._reject(str(exc), initial=initial)
            except Exception as exc:  # a bug must never take the daemon down
                log.exception("building the configuration failed")
                return self._reject(f"internal error while building config: {exc}", initial=initial)
            # A reload that brings a new problem (broken YAML, an invalid edit) keeps the
            # last good snapshot: serving the valid rest could silently drop routes.
            # Problems the serving config already had do not block later edits.  A source
            # whose objects were admitted elsewhere (an API server) skips each invalid
            # object instead: it is reported in its own status, the rest serves.
            fresh = problems - self.known_problems
            if fresh and not initial and not self.source.skips_invalid:
                return self._reject(
                    f"{len(fresh)} new problem(s) in the configuration; "
                    "keeping the last good configuration: " + "; ".join(sorted(fresh)),
                    initial=initial,
                )
            await self._apply(built)
            self.known_problems = problems
            return True

    def _build_off_loop(self) -> asyncio.Future[tuple[Built, frozenset[str]]]:
        """Run ``_build`` on a thread of its own; its outcome, as a future of this loop.

        Loading, validating and compiling never run on the event loop, which serves the
        data plane (one worker) or the admin server: a 50 MB file stalled it for 11.9 s.
        On a thread the build, Python code made of short steps, hands the GIL back every
        switch interval.  (A builder process would have to send the result back, and
        unpickling a large snapshot is one long C call on the loop: 0.1 s for 1,000
        routes.)  A daemon thread, so SIGTERM during a long build need not wait for it:
        a build only reads files.  One at a time: ``load`` holds ``_reload_lock``.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Built, frozenset[str]]] = loop.create_future()

        def settle(result: tuple[Built, frozenset[str]] | None, exc: BaseException | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                assert result is not None
                future.set_result(result)

        def target() -> None:
            result: tuple[Built, frozenset[str]] | None = None
            error: BaseException | None = None
            try:
                result = self._build()
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, result, error)

        threading.Thread(target=target, name="gatewayd-config", daemon=True).start()
        return future

    def _build(self) -> tuple[Built, frozenset[str]]:
        """On the builder thread: build, log what the load found, and the problems as
        text.  Logging is thread-safe and a config with thousands of problems writes
        thousands of lines, which is no work for the event loop either."""
        # No collection while building (``ConfigPipeline.build`` pauses the cyclic
        # collector): a full one walks every object the process holds, with the GIL, and
        # the build doubles them; for 500 routes such pauses stalled the loop 30-60 ms
        # each.  Cyclic garbage of serving meanwhile (a closed connection is a cycle)
        # waits for the end of the build, seconds at most.
        # The loop thread waits up to one switch interval for the GIL each time it
        # wakes; 1 ms instead of 5 ms while building cut the worst latency of a proxied
        # request during a 500-route reload from 41-47 ms to 15-28 ms in our runs.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(BUILD_SWITCH_INTERVAL)
        try:
            built = self.pipeline.build()
            for notice in built.load.notices:
                log.info("%s", notice)
            for problem in built.load.problems:
                log.error("config: %s", problem)
            return built, frozenset(str(p) for p in built.load.problems)
        finally:
            # The build was frozen (``BuiltOutOfCollections``): no collection walks it.
            sys.setswitchinterval(interval)

    def _reject(self, message: str, *, initial: bool) -> bool:
        self.last_error = message
        if not self.loaded:
            self.not_ready = f"the configuration could not be loaded: {message}"
        log.error("%s", message)
        self.metrics.config_loaded(self.pipeline.snapshot_generation, ok=False)
        return False

    async def _apply(self, built: Built) -> None:
        failures = await self.proxy.apply(built.snapshot)
        udp_failures = await self.udp.apply(built.snapshot)
        if self.pool is not None:
            # The workers serve it; the supervisor keeps it for /config_dump and /status.
            self.holder.swap(built.snapshot)
        if self.tproxy is not None:
            try:
                await self.tproxy.apply(built.snapshot)
            except Exception as exc:  # the previous ruleset stays; serving goes on
                log.error("tproxy: installing the diversion rules failed: %s", exc)
        resolution: Resolution = built.resolution
        bind_failures = {**failures, **udp_failures}
        if failures or udp_failures:
            listener_failures: dict[tuple[str, str, str], str] = {}
            both = [(built.snapshot.ports, failures), (built.snapshot.udp_ports, udp_failures)]
            for (address, port), reason, lp in (
                (key, reason, ports.get(key))
                for ports, failed in both
                for key, reason in failed.items()
            ):
                if lp is None:
                    continue
                for name in lp.listener_names:
                    message = f"cannot bind {host_port(address, port)}: {reason}"
                    listener_failures[(lp.gateway_namespace, lp.gateway_name, name)] = message
                    log.error(
                        "Gateway %s/%s listener %s: %s",
                        lp.gateway_namespace,
                        lp.gateway_name,
                        name,
                        message,
                    )
            resolution = with_listener_failures(resolution, listener_failures)
        self.pipeline.commit(built)
        self._watch_expiry(built.snapshot)
        for sink in self.sinks:
            sink.publish(resolution.statuses)
        self.last_error = None
        self.loaded = True
        self.metrics.name_ports(built.snapshot.ports.values())
        self.metrics.config_loaded(built.snapshot.generation, ok=True)
        self._report_serving(built, resolution, bind_failures)

    def _report_serving(
        self, built: Built, resolution: Resolution, bind_failures: dict[tuple[str, int], str]
    ) -> None:
        """Log each newly bound listener (where to send requests) and decide /ready: a
        configuration that serves no listener is loaded but not ready, and says why."""
        bound = len(self.proxy.bound()) + len(self.udp.bound())
        lines = listening_lines(
            built.snapshot,
            built.load.config.gateways,
            failed=bind_failures,
            address_pool=self.options.address_pool,
        )
        for line in lines:
            if line not in self._listening:
                log.info("%s", line)
        self._listening = frozenset(lines)
        log.info(
            "config generation %d serving %d listener socket(s)",
            built.snapshot.generation,
            bound,
        )
        # Node-local mode serves its transparent listener whatever the Gateways are.
        if bound or self.tproxy is not None:
            self.is_ready = True
            return
        self.not_ready = not_served_reason(
            built.load.config,
            resolution.statuses,
            controller_name=self.options.controller_name,
            bind_failures=bind_failures,
        )
        self.is_ready = False
        log.warning("%s (/ready answers 503)", self.not_ready)


def first_certificate_expiry(snapshot: Snapshot) -> dt.datetime | None:
    """When the first certificate the snapshot serves (HTTPS and TLS Terminate listeners)
    stops being valid; None without any."""
    times: list[dt.datetime] = []
    for lp in snapshot.ports.values():
        for t in lp.terminate:
            times.extend(c.not_after for c in t.certificates)
        for table in (lp.table, lp.tls_table):
            if isinstance(table, SNITable):
                for listener in table.listeners():
                    times.extend(c.not_after for c in listener.certificates)
    return min(times) if times else None


# How often (seconds) the builder thread offers the GIL to the serving loop.
BUILD_SWITCH_INTERVAL = 0.001

# Re-armed by every load, so a far expiry is simply looked at again a day later.
MAX_EXPIRY_WAIT = 86400.0


async def run(options: RunOptions) -> int:
    daemon = Daemon(options)
    # The admin address first, before any worker or listener exists: a second instance
    # on a busy admin address stops here with one line, and never gets to bind
    # listener ports or start workers.
    try:
        admin = await start_admin(
            options.admin_address,
            AdminState(
                ready=daemon.ready,
                not_ready_reason=daemon.not_ready_reason,
                status_items=daemon.status_items,
                config_dump=daemon.config_dump,
                metrics=daemon.render_metrics,
                config_state=daemon.config_state,
                explain=daemon.explain,
            ),
        )
    except OSError as exc:
        # asyncio words the error as "error while attempting to bind on address ...";
        # the line names the address once, with the system's reason.
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        log.error("cannot listen on the admin address %s: %s", options.admin_address, reason)
        return 1
    log.info("admin listening on %s", options.admin_address)
    try:
        return await _serve(daemon, options)
    finally:
        await admin.close()


async def _serve(daemon: Daemon, options: RunOptions) -> int:
    """Start the data plane, load the configuration and serve until SIGTERM/SIGINT (0)
    or until the workers cannot be kept serving (1)."""
    if daemon.tproxy is not None:
        try:
            await daemon.tproxy.start()
        except Exception as exc:
            log.error("tproxy: %s", exc)
            return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()
    tasks: list[asyncio.Task[None]] = []
    source = daemon.source
    try:
        if daemon.pool is not None:
            await daemon.pool.start()

        def on_hup() -> None:
            task = loop.create_task(daemon.load(initial=False))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        log.info("configuration source: %s", source.describe())
        daemon.not_ready = f"no configuration loaded yet (reading {source.describe()})"
        # Files are ready at once; an API server once every kind is listed (SIGTERM
        # meanwhile stops, with nothing served yet).
        sync = loop.create_task(source.ready())
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait([sync, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not sync.done():
            sync.cancel()
            return 0
        try:
            sync.result()
        except SourceError as exc:
            log.error("cannot read the configuration: %s", exc)
            return 1
        daemon.start_status_writeback()
        await daemon.load(initial=True)
        changes = asyncio.Event()
        watching = loop.create_task(source.run(changes.set))
        watching.add_done_callback(_log_watch_end)
        tasks.append(watching)
        tasks.append(loop.create_task(_reload_on_change(daemon, changes, source.settle)))
        waits = [loop.create_task(stop.wait())]
        if daemon.pool is not None:
            waits.append(loop.create_task(daemon.pool.fatal.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        if daemon.pool is not None and daemon.pool.fatal.is_set():
            log.error("stopping (exit status 1): %s", daemon.pool.fatal_reason)
            return 1
        return 0
    finally:
        for task in tasks:
            task.cancel()
        # Before the source closes its API client: releasing the Lease needs it.
        await daemon.stop_status_writeback()
        await source.close()
        daemon.stop_expiry_watch()
        log.info("shutting down: draining for up to %.0fs", options.drain_timeout)
        if daemon.tproxy is not None:
            await daemon.tproxy.close()  # stop diverting first, then drain
        await daemon.proxy.close(options.drain_timeout)
        await daemon.udp.close()


def _log_watch_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "watching the configuration source failed; no more reloads but SIGHUP's",
            exc_info=task.exception(),
        )


async def _reload_on_change(daemon: Daemon, changes: asyncio.Event, settle: float) -> None:
    """Reload after each change the source reports: changes that arrive during the
    ``settle`` seconds after the first one, or while a reload runs, make one reload."""
    while True:
        await changes.wait()
        if settle > 0:
            await asyncio.sleep(settle)
        changes.clear()
        await daemon.load(initial=False)


def configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
