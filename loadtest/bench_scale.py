"""``make bench``'s scale rows (issue 17): configuration size and worker count.

- **Config scale** (``config_scale``): for 10, 1,000 and 10,000 HTTPRoutes (one
  hostname each, written by ``write_routes``), gatewayd ``--workers 1`` is started on
  them: seconds to the admin ``/ready``, RSS once ready; then one more HTTPRoute is added
  and SIGHUP sent: seconds until ``gatewayd_config_generation`` shows the new snapshot,
  RSS after, and the longest request of a bounded keep-alive request loop that runs
  against the daemon from before the signal until the new snapshot serves.  The backend
  is ``gatewayd echo`` (any path answered 200), so this part needs no nginx or wrk.
- **Workers** (``workers_scale``): gatewayd ``--workers 1..N`` pinned to a core list
  (``--cores``), wrk and the nginx backend on the other CPUs; req/s, the CPU the
  gatewayd processes used, req/s per core used and per-core efficiency against one
  worker.

Nothing is asserted: the figures go in the bench's report and JSON.

What is measured is gatewayd as installed: its modules compiled to bytecode, as a wheel
install (pip compiles them) and ``make`` (``compileall``) leave them.  The bench's
environment may set PYTHONDONTWRITEBYTECODE (the image does), so a tree whose bytecode
is missing or stale would compile every module again at each start (~0.6 s of a
10,000-route start-up here); ``ensure_bytecode`` compiles what changed first.
"""

from __future__ import annotations

import compileall
import contextlib
import http.client
import importlib.util
import os
import signal
import statistics
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench as B

SCALE_STEP_TIMEOUT = 300.0  # seconds for one start-up or one reload
LOOP_MAX_REQUESTS = 200_000  # the request loop during a reload stops at this count...
LOOP_MAX_SECONDS = SCALE_STEP_TIMEOUT + 30  # ... or after this long, whichever first
SCALE_HOST = "r0.scale.test"
ROUTES_PER_FILE = 1000


# --------------------------------------------------------------------------- bytecode


def ensure_bytecode(tree: Path) -> int:
    """Compile the modules of ``tree``'s ``gatewayd`` package whose bytecode is missing
    or older than their source (what installing it does); the number compiled now.

    The files are written whatever PYTHONDONTWRITEBYTECODE says (py_compile does not
    read it), and every interpreter the bench starts reads them."""
    package = tree / "gatewayd"
    stale = sum(1 for _ in _stale_modules(package))
    if stale and not compileall.compile_dir(package, quiet=1, workers=0):
        raise RuntimeError(f"compiling {package} failed")
    return stale


def _stale_modules(package: Path) -> Iterator[Path]:
    """Modules whose bytecode the interpreter would not use: missing, or recorded for
    another source mtime or size (the check of a timestamp-based .pyc, PEP 552)."""
    for source in sorted(package.rglob("*.py")):
        cached = Path(importlib.util.cache_from_source(str(source)))
        try:
            st = source.stat()
            with open(cached, "rb") as f:
                header = f.read(16)
        except OSError:
            yield source
            continue
        flags = int.from_bytes(header[4:8], "little")
        mtime = int.from_bytes(header[8:12], "little")
        size = int.from_bytes(header[12:16], "little")
        if (
            header[:4] != importlib.util.MAGIC_NUMBER
            or flags != 0
            or mtime != int(st.st_mtime) & 0xFFFFFFFF
            or size != st.st_size & 0xFFFFFFFF
        ):
            yield source


# --------------------------------------------------------------------------- manifests


def write_routes(cfg: Path, count: int, port: int, backend_port: int, first: int = 0) -> None:
    """A GatewayClass, a Gateway with one HTTP listener on ``port``, the echo Service and
    ``count`` HTTPRoutes ``r{first}``..., each with hostname ``r{i}.scale.test``, a
    PathPrefix ``/`` rule and a RequestHeaderModifier, to the echo backend.  Written
    as ``base.yaml`` and ``routes-NNNNNN.yaml`` files; ``first`` > 0 adds routes only."""
    cfg.mkdir(parents=True, exist_ok=True)
    if first == 0:
        head = textwrap.dedent(
            f"""\
            apiVersion: gateway.networking.k8s.io/v1
            kind: GatewayClass
            metadata:
              name: scale
            spec:
              controllerName: gatewayd.dev/gateway-controller
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata:
              name: scale
              namespace: scale
            spec:
              gatewayClassName: scale
              addresses:
                - type: IPAddress
                  value: 127.0.0.1
              listeners:
                - name: http
                  protocol: HTTP
                  port: {port}
            ---
            """
        )
        svc = textwrap.dedent(B._service_yaml("echo", backend_port, "")).replace(
            "namespace: bench", "namespace: scale"
        )
        (cfg / "base.yaml").write_text(head + svc)
    route = textwrap.dedent(
        """\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          name: r{i}
          namespace: scale
        spec:
          parentRefs:
            - name: scale
          hostnames: ["r{i}.scale.test"]
          rules:
            - matches:
                - path:
                    type: PathPrefix
                    value: /
              filters:
                - type: RequestHeaderModifier
                  requestHeaderModifier:
                    add:
                      - name: X-Bench
                        value: "1"
              backendRefs:
                - name: echo
                  port: 80
        """
    )
    # Files of ROUTES_PER_FILE routes: each stays under gatewayd's 4 MiB per-file limit
    # (--max-config-file-size; 10,000 routes in one file are ~5 MB and are refused).
    for start in range(first, first + count, ROUTES_PER_FILE):
        end = min(first + count, start + ROUTES_PER_FILE)
        text = "---\n".join(route.format(i=i) for i in range(start, end))
        (cfg / f"routes-{start:06d}.yaml").write_text(text)


# --------------------------------------------------------------------------- request loop


@dataclass
class LoopResult:
    requests: int = 0
    errors: int = 0
    longest_ms: float = 0.0
    p99_ms: float | None = None


class RequestLoop:
    """GET / with Host ``SCALE_HOST`` on one keep-alive connection, back to back, in a
    thread, until ``stop()`` or ``LOOP_MAX_REQUESTS`` or ``LOOP_MAX_SECONDS``.  A failed
    request (error, non-200, timeout) counts as an error and the connection is renewed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.result = LoopResult()
        self._stop = threading.Event()
        self._durations: list[float] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> LoopResult:
        self._stop.set()
        self._thread.join(timeout=SCALE_STEP_TIMEOUT + 10)
        d = sorted(self._durations)
        self.result.requests = len(d)
        if d:
            self.result.longest_ms = d[-1] * 1e3
            self.result.p99_ms = d[min(len(d) - 1, int(0.99 * len(d)))] * 1e3
        return self.result

    def _run(self) -> None:
        deadline = time.monotonic() + LOOP_MAX_SECONDS
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and len(self._durations) < LOOP_MAX_REQUESTS:
            if time.monotonic() > deadline:
                break
            if conn is None:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=SCALE_STEP_TIMEOUT
                )
            t0 = time.monotonic()
            try:
                conn.request("GET", "/", headers={"Host": SCALE_HOST})
                resp = conn.getresponse()
                resp.read(1 << 20)
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
            self._durations.append(time.monotonic() - t0)
            if not ok:
                self.result.errors += 1
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------- config scale


def _metric(admin: int, name: str) -> float | None:
    status, _, body = B.http_get(f"http://127.0.0.1:{admin}/stats/prometheus", timeout=5)
    if status != 200:
        return None
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    return sum(B.rss_kib(p, key) for p in B.process_tree(pid)) / 1024


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (a supervisor's workers)."""
    return sum(B.cpu_times(B.process_tree(pid)))


def one_scale(procs: B.Processes, tmp: Path, count: int, echo_port: int) -> dict[str, Any]:
    """Start-up, reload and RSS of gatewayd --workers 1 on ``count`` HTTPRoutes."""
    cfg = tmp / f"scale-{count}"
    port, admin = B.free_port(), B.free_port()
    write_routes(cfg, count, port, echo_port)
    argv = [
        B.PYTHON, "-m", "gatewayd", "run",
        "--config", str(cfg),
        "--admin-address", f"127.0.0.1:{admin}",
        "--access-log", "off",
        "--workers", "1",
        "--no-watch",  # the reload is the SIGHUP below, at a known time
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = procs.start(f"gatewayd-scale-{count}", argv)

    def ready() -> bool:
        procs.check_alive(proc)
        return B.http_get(f"http://127.0.0.1:{admin}/ready", timeout=2)[0] == 200

    B.wait_until(ready, SCALE_STEP_TIMEOUT, f"gatewayd /ready with {count:,} HTTPRoutes")
    startup_s = time.monotonic() - t0
    # CPU seconds too: on a shared machine wall time measures the neighbours as well.
    startup_cpu = _cpu_s(proc.pid)
    rss_ready = _rss_mb(proc.pid)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": SCALE_HOST})
    try:
        with B._OPENER.open(req, timeout=10) as resp:
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    generation = _metric(admin, "gatewayd_config_generation")
    if status != 200 or generation is None:
        raise RuntimeError(
            f"gatewayd with {count:,} HTTPRoutes: GET / for {SCALE_HOST} answered {status} "
            f"(generation {generation}): the routes were not all loaded:\n{proc.tail()}"
        )

    loop = RequestLoop(port)
    loop.start()
    time.sleep(0.5)  # requests before the reload: the loop's baseline
    write_routes(cfg, 1, port, echo_port, first=count)  # one more HTTPRoute
    cpu1 = _cpu_s(proc.pid)
    t1 = time.monotonic()
    os.kill(proc.pid, signal.SIGHUP)

    def reloaded() -> bool:
        procs.check_alive(proc)
        g = _metric(admin, "gatewayd_config_generation")
        return g is not None and g > generation

    try:
        B.wait_until(reloaded, SCALE_STEP_TIMEOUT, f"the reload with {count:,} HTTPRoutes")
        reload_s = time.monotonic() - t1
        reload_cpu = _cpu_s(proc.pid) - cpu1  # serving the loop's requests included
        time.sleep(0.3)  # a few requests on the new snapshot
    finally:
        result = loop.stop()
    out = {
        "routes": count,
        "startup_s": round(startup_s, 3),
        "reload_s": round(reload_s, 3),
        "startup_cpu_s": round(startup_cpu, 2),
        "reload_cpu_s": round(reload_cpu, 2),
        "rss_ready_mb": round(rss_ready, 1),
        "rss_after_reload_mb": round(_rss_mb(proc.pid), 1),
        "rss_peak_mb": round(_rss_mb(proc.pid, "VmHWM"), 1),
        "loop_requests": result.requests,
        "loop_errors": result.errors,
        "longest_request_ms": round(result.longest_ms, 1),
        "loop_p99_ms": None if result.p99_ms is None else round(result.p99_ms, 2),
    }
    return out


def config_scale(tmp: Path, counts: list[int]) -> list[dict[str, Any]]:
    """``one_scale`` for each count, each with its own echo backend and gatewayd; a
    size that fails is reported with its error and the next one still runs."""
    rows: list[dict[str, Any]] = []
    for count in counts:
        procs = B.Processes(tmp)
        try:
            echo_port = B.free_port()
            echo = procs.start(
                "echo",
                [B.PYTHON, "-m", "gatewayd", "echo", "--listen", f"127.0.0.1:{echo_port}"],
            )
            B.wait_until(lambda: B.port_open(echo_port), 30, "gatewayd echo")  # noqa: B023
            procs.check_alive(echo)
            B.log(f"config scale: {count:,} HTTPRoutes")
            row = one_scale(procs, tmp, count, echo_port)
            B.log(f"  {row}")
        except (RuntimeError, OSError) as exc:
            row = {"routes": count, "error": str(exc).splitlines()[0]}
            B.log(f"  {count:,} routes failed: {exc}")
        finally:
            procs.stop_all()
        rows.append(row)
    return rows


def print_config_scale(rows: list[dict[str, Any]]) -> None:
    print(
        "config scale (gatewayd --workers 1; reload: one HTTPRoute added, then SIGHUP; "
        "longest: slowest request\n  of a keep-alive request loop running from 0.5 s "
        "before the SIGHUP until the new snapshot serves):"
    )
    cols = [
        "HTTPRoutes",
        "start-up",
        "(CPU)",
        "reload",
        "(CPU)",
        "RSS ready",
        "RSS after",
        "longest req",
        "loop reqs",
        "errors",
    ]
    out: list[list[str]] = []
    for r in rows:
        if "error" in r:
            out.append([f"{r['routes']:,}", f"n/a ({r['error']})", *[""] * (len(cols) - 2)])
            continue
        out.append(
            [
                f"{r['routes']:,}",
                f"{r['startup_s']:.2f} s",
                f"{r['startup_cpu_s']:.2f} s",
                f"{r['reload_s']:.2f} s",
                f"{r['reload_cpu_s']:.2f} s",
                f"{r['rss_ready_mb']:.0f} MB",
                f"{r['rss_after_reload_mb']:.0f} MB",
                f"{r['longest_request_ms']:,.0f} ms",
                f"{r['loop_requests']:,}",
                f"{r['loop_errors']}",
            ]
        )
    B.print_table(cols, out)


# --------------------------------------------------------------------------- workers


def parse_cores(text: str) -> list[int]:
    """``0-1``, ``0,2,3`` or ``0-3,6`` to a sorted list of CPU numbers."""
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    if not cores:
        raise ValueError(f"no CPU in {text!r}")
    return sorted(cores)


def workers_scale(bench: Any, cores: list[int]) -> dict[str, Any]:
    """gatewayd --workers 1..len(cores), all its processes pinned to ``cores``; wrk and
    the backend on the other CPUs (unpinned when there are none).  ``bench`` is the
    running ``bench.Bench`` (its backend is up)."""
    args = bench.args
    allowed = set(B._CPUS)
    if not set(cores) <= allowed:
        raise RuntimeError(f"--cores {cores}: this process may use CPUs {sorted(allowed)} only")
    sut = set(cores)
    load = allowed - sut or None
    rows: list[dict[str, Any]] = []
    for workers in range(1, len(cores) + 1):
        t = bench.start_gatewayd(f"gatewayd-w{workers}", workers, label=f"{workers} workers")
        B.verify(t)
        runs: list[B.WrkResult] = []
        # The supervisor's CPU while the workers serve: it should stay near 0 (it holds
        # the admin endpoint and the config; no request passes through it).
        sup0, sup_t0 = sum(B.cpu_times([t.proc.pid])), time.monotonic()
        for rnd in range(max(1, args.rounds)):
            B.pin(t.proc.pid, sut)
            assert bench.backend is not None
            B.pin(bench.backend.pid, load)
            r = B.run_wrk(
                t.url + "/small",
                connections=64,
                duration=args.duration,
                threads=args.threads,
                cpus=load,
                sut_pids=B.process_tree(t.proc.pid),
                sut_cpus=sut,
                load_cpus=load,
            )
            runs.append(r)
            B.log(
                f"workers {workers} round {rnd + 1}: {r.rps:,.0f} req/s, "
                f"cpu {r.sut_cpu_pct:.0f}%, load {B.fmt(r.load_cpu_pct, '.0f', '%')}"
            )
        sup_pct = 100 * (sum(B.cpu_times([t.proc.pid])) - sup0) / (time.monotonic() - sup_t0)
        rows.append(
            {
                "workers": workers,
                "rps": statistics.median(r.rps for r in runs),
                "cpu_pct": statistics.median(r.sut_cpu_pct or 0.0 for r in runs),
                "rps_per_core": statistics.median(r.rps_per_core or 0.0 for r in runs),
                "other_cpu_pct": _median(r.other_cpu_pct for r in runs),
                "load_cpu_pct": _median(r.load_cpu_pct for r in runs),
                "errors": sum(r.errors for r in runs),
                # --workers 1 is one process: its "supervisor" is the worker itself.
                "supervisor_cpu_pct": round(sup_pct, 1) if workers > 1 else None,
            }
        )
        proc = t.proc
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)
    one = rows[0]["rps"] if rows else 0.0
    for row in rows:
        row["efficiency"] = row["rps"] / (row["workers"] * one) if one else None
    return {"cores": cores, "load_cpus": sorted(load) if load else "unpinned", "rows": rows}


def _median(values: Any) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def print_workers(res: dict[str, Any]) -> None:
    if "error" in res:
        print(f"workers: n/a ({res['error']})")
        return
    print(
        f"workers (gatewayd --workers N pinned to CPUs {res['cores']}, wrk and the backend "
        f"on {res['load_cpus']}; 13-byte body, 64 connections;\n  efficiency: req/s / "
        "(N x req/s of 1 worker); load%: near 100 means wrk and the backend were the limit;\n"
        "  other%: CPU of the listed cores not used by gatewayd (with the load unpinned, "
        "wrk and the backend are in it)):"
    )
    cols = ["workers", "req/s", "cpu%", "req/s/core", "efficiency", "supervisor%"]
    cols += ["other%", "load%"]
    out = [
        [
            str(r["workers"]) + (f" (!{r['errors']} errors)" if r["errors"] else ""),
            f"{r['rps']:,.0f}",
            f"{r['cpu_pct']:.0f}",
            f"{r['rps_per_core']:,.0f}",
            B.fmt(r["efficiency"], ".2f"),
            B.fmt(r["supervisor_cpu_pct"], ".1f"),
            B.fmt(r["other_cpu_pct"], ".0f"),
            B.fmt(r["load_cpu_pct"], ".0f"),
        ]
        for r in res["rows"]
    ]
    B.print_table(cols, out)
