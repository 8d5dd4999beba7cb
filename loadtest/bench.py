"""``make bench``: gatewayd against nginx, a direct connection and a naive aiohttp proxy.

One run starts, on loopback only, with every process's files in one temporary directory:

- nginx as the backend (1 worker): ``/small`` answers a 13-byte body, ``/64k`` serves a
  64 KiB file; it also echoes the ``X-Bench`` request header back as ``X-Seen-Bench`` so
  every proxy is checked to really add its request header;
- nginx as a reverse proxy (1 worker, upstream keep-alive 64, HTTP/1.1 upstream, 64 KiB
  proxy buffers), adding ``X-Bench: 1``;
- gatewayd with one worker (and with every worker if ``gatewayd run`` has ``--workers``):
  a generated Gateway/HTTPRoute whose RequestHeaderModifier adds ``X-Bench: 1``;
- ``loadtest/naive_proxy.py`` (aiohttp server + one ClientSession), adding ``X-Bench: 1``.

wrk then measures, in ``--rounds`` interleaved rounds (each round visits every target
once, so a slow drift of the machine spreads over all of them), for each target: the
13-byte body at 64 connections (req/s, p50, p99), the same at 8 connections (p99: the
"latency added over direct" figure) and the 64 KiB body at 64 connections (MB/s).  The
tables show the medians over the rounds.  A second table holds the RSS of the gatewayd
process holding ``--idle-conns`` idle keep-alive connections (nginx's and the naive
proxy's for scale) and the route-lookup micro-benchmark (``loadtest/bench_lookup.py``).

CPU placement (2 cores): the system under test gets a core of its own (CPU 0) and wrk
shares the other (CPU 1) with the nginx backend; for the "direct" row the backend itself
is the system under test and moves to CPU 0.  Without that, the proxy, the backend and
wrk fight over both cores and the numbers say more about the scheduler than about the
proxy.  The ``cpu%`` column is the CPU time the system under test used during the 64-
connection run: near 100% means it was the bottleneck, well below means the load side
was (``load%``, the busy share of wrk's core, says the same from the other side), and
``other%`` is what other processes took from the target's core (noise).  Rows that use
more than one core (gatewayd all workers) run unpinned.  With one CPU nothing is pinned.

Everything is written as JSON under ``loadtest/results/`` (git-ignored).  Every process
started here is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import grp
import importlib.metadata
import json
import os
import platform
import pwd
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results"
PYTHON = sys.executable
SMALL_BODY = b"hello, world\n"  # 13 bytes
BIG_SIZE = 64 * 1024
ADDED_HEADER = ("X-Bench", "1")
_CPUS = sorted(os.sched_getaffinity(0))
SUT_CPUS = set(_CPUS[:1])  # the system under test
LOAD_CPUS = set(_CPUS[1:])  # wrk (and the backend when it is not the system under test)

# Issue targets.
T_RPS_VS_NGINX = 0.35
T_RPS_VS_NAIVE = 3.0
T_P99_ADDED_MS = 1.0
T_MBPS_VS_NGINX = 0.50
T_IDLE_RSS_MB = 200.0
T_LOOKUP_US = 20.0
NOISY_OTHER_PCT = 5.0  # other processes' share of the target's core that spoils a p99

IDLE_REQUEST = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
IDLE_STEP_TIMEOUT = 120.0  # seconds to open (or re-use) all idle connections
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Loopback only: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return int(resp.status), headers, resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (through /proc/*/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    todo.extend(
                        int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                    )
    return out


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of every process of pid's tree (sched_setaffinity is per thread)."""
    if cpus is None:
        cpus = set(range(os.cpu_count() or 1))
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pids`` (all their threads) from /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            user += int(fields[11]) / tick  # utime
            system += int(fields[12]) / tick  # stime
    return user, system


def core_ticks(cpus: set[int] | None) -> tuple[int, int]:
    """(busy, total) jiffies of ``cpus`` from /proc/stat; steal counts as busy."""
    busy = total = 0
    if not cpus:
        return 0, 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            ticks = [int(v) for v in vals[:8]]
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Every process started by the bench; ``stop_all`` ends exactly those (by group id)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], cpus: set[int] | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,  # its own process group: stopped with its children
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        if cpus is not None:
            pin(proc.pid, cpus)
        return proc

    def check_alive(self, proc: Proc) -> None:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.popen.wait(timeout=5)
            # Children left in the group (nginx workers, gatewayd workers).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


# --------------------------------------------------------------------------- configs


def nginx_common(tmp: Path, name: str) -> tuple[str, str]:
    """(main-context directives, http-context directives) shared by both nginx instances."""
    t = tmp / f"{name}-temp"
    t.mkdir(exist_ok=True)
    # As many descriptors as this process may have (a worker over its hard limit fails).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 40000 if hard == resource.RLIM_INFINITY else min(hard, 40000)
    user = ""
    if os.geteuid() == 0:
        # As root, nginx's workers drop to an unprivileged user: they must be able to
        # read the served file and write the temp dirs (a 64 KiB proxied body can spill).
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"
        os.chmod(tmp, 0o755)
        os.chown(t, nobody.pw_uid, nobody.pw_gid)
    return (
        user
        + f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections {nofile - 256}; }}
"""[1:],
        f"""
    access_log off;
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
""",
    )


def nginx_backend_conf(tmp: Path, port: int) -> Path:
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "64k").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
    top, http = nginx_common(tmp, "backend")
    body = SMALL_BODY.decode().replace("\n", "\\n")
    conf = tmp / "backend.conf"
    conf.write_text(
        top
        + f"""http {{
{http}
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        # Echo the proxies' added request header back so each proxy is checked.
        add_header X-Seen-Bench $http_x_bench always;
        location = /small {{ default_type text/plain; return 200 "{body}"; }}
        location = /64k {{ root {www}; default_type application/octet-stream; }}
    }}
}}
"""
    )
    return conf


def nginx_proxy_conf(tmp: Path, port: int, backend_port: int) -> Path:
    top, http = nginx_common(tmp, "nginxproxy")
    conf = tmp / "nginxproxy.conf"
    conf.write_text(
        top
        + f"""http {{
{http}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # nginx reads an upstream response into proxy_buffer_size + proxy_buffers
            # (4 KiB pages by default): at 64 KiB that is ~16 small reads and ~1,000 MB/s
            # here; 64 KiB buffers make it ~1,550 MB/s.  The baseline is the stronger one.
            proxy_buffer_size 16k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_set_header Host $host;
            proxy_set_header {ADDED_HEADER[0]} "{ADDED_HEADER[1]}";
        }}
    }}
}}
"""
    )
    return conf


def gatewayd_config(tmp: Path, port: int, backend_port: int) -> Path:
    cfg = tmp / "gatewayd-config"
    cfg.mkdir(exist_ok=True)
    (cfg / "bench.yaml").write_text(
        textwrap.dedent(
            f"""\
            apiVersion: gateway.networking.k8s.io/v1
            kind: GatewayClass
            metadata:
              name: bench
            spec:
              controllerName: gatewayd.dev/gateway-controller
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata:
              name: bench
              namespace: bench
            spec:
              gatewayClassName: bench
              addresses:
                - type: IPAddress
                  value: 127.0.0.1
              listeners:
                - name: http
                  protocol: HTTP
                  port: {port}
            ---
            apiVersion: v1
            kind: Service
            metadata:
              name: nginx
              namespace: bench
            spec:
              ports:
                - name: http
                  port: 80
                  targetPort: {backend_port}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata:
              name: nginx-1
              namespace: bench
              labels:
                kubernetes.io/service-name: nginx
            addressType: IPv4
            ports:
              - name: http
                port: {backend_port}
            endpoints:
              - addresses: ["127.0.0.1"]
                conditions:
                  ready: true
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata:
              name: bench
              namespace: bench
            spec:
              parentRefs:
                - name: bench
              rules:
                - matches:
                    - path:
                        type: PathPrefix
                        value: /
                  filters:
                    - type: RequestHeaderModifier
                      requestHeaderModifier:
                        add:
                          - name: {ADDED_HEADER[0]}
                            value: "{ADDED_HEADER[1]}"
                  backendRefs:
                    - name: nginx
                      port: 80
            """
        )
    )
    return cfg


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    transfer_mb_s: float  # decimal MB (10^6 bytes) per second, as read by wrk
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses
    sut_cpu_pct: float | None = None  # CPU time of the target's processes / wall time
    rps_per_core: float | None = None  # req/s divided by the cores the target used
    # CPU the target's own core(s) spent on anything else (other processes, VM steal):
    # the target's numbers are only clean when this stays near 0.
    other_cpu_pct: float | None = None
    sut_sys_pct: float | None = None  # the kernel's share of sut_cpu_pct
    # Busy share of the load core(s) (wrk and, for proxies, the backend): near 100 means
    # the load side, not the target, was the limit.
    load_cpu_pct: float | None = None


_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"wrk time {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.M)
        if not m:
            raise RuntimeError(f"unexpected wrk output (no {pattern!r}):\n{out}")
        return m

    rps = float(find(r"^Requests/sec:\s+([\d.]+)").group(1))
    p50 = _ms(find(r"^\s+50%\s+(\S+)").group(1))
    p99 = _ms(find(r"^\s+99%\s+(\S+)").group(1))
    tm = find(r"^Transfer/sec:\s+([\d.]+)(\w+)")
    transfer = float(tm.group(1)) * _SIZE_UNITS[tm.group(2)] / 1e6
    requests = int(find(r"^\s+(\d+) requests in").group(1))
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return WrkResult(rps, p50, p99, transfer, requests, errors)


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int,
    cpus: set[int] | None,
    sut_pids: list[int],
    sut_cpus: set[int] | None,
    load_cpus: set[int] | None,
) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    cpu0, t0 = cpu_times(sut_pids), time.monotonic()
    core0, load0 = core_ticks(sut_cpus), core_ticks(load_cpus)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    cpu1, t1 = cpu_times(sut_pids), time.monotonic()
    core1, load1 = core_ticks(sut_cpus), core_ticks(load_cpus)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    result = parse_wrk(done.stdout)
    result.sut_cpu_pct = 100.0 * (sum(cpu1) - sum(cpu0)) / (t1 - t0)
    result.sut_sys_pct = 100.0 * (cpu1[1] - cpu0[1]) / (t1 - t0)
    if result.sut_cpu_pct > 1:
        result.rps_per_core = result.rps * 100.0 / result.sut_cpu_pct
    if sut_cpus and core1[1] > core0[1]:
        busy_pct = 100.0 * len(sut_cpus) * (core1[0] - core0[0]) / (core1[1] - core0[1])
        result.other_cpu_pct = max(0.0, busy_pct - result.sut_cpu_pct)
    if load_cpus and load1[1] > load0[1]:
        result.load_cpu_pct = 100.0 * (load1[0] - load0[0]) / (load1[1] - load0[1])
    return result


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    key: str
    label: str
    url: str = ""  # base URL without a trailing slash; "" when not available
    proc: Proc | None = None  # the system under test; None: the nginx backend itself
    # "split": target on SUT_CPUS, backend and wrk on LOAD_CPUS; "direct": backend on
    # SUT_CPUS, wrk on LOAD_CPUS; "all": nothing pinned (multi-worker rows).
    placement: str = "split"
    proxied: bool = True
    note: str = ""  # why it is not available
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.url)


def verify(target: Target) -> None:
    try:
        _verify(target)
    except OSError as exc:
        raise RuntimeError(f"{target.label} ({target.url}): {exc!r}") from exc


def _verify(target: Target) -> None:
    status, headers, body = http_get(target.url + "/small")
    if status != 200 or body != SMALL_BODY:
        raise RuntimeError(f"{target.label}: GET /small -> {status} {body[:200]!r}")
    if target.proxied and headers.get("x-seen-bench") != ADDED_HEADER[1]:
        raise RuntimeError(f"{target.label}: the backend did not see X-Bench: {headers}")
    status, _, body = http_get(target.url + "/64k")
    if status != 200 or len(body) != BIG_SIZE:
        raise RuntimeError(f"{target.label}: GET /64k -> {status}, {len(body)} bytes")


# --------------------------------------------------------------------------- idle connections


async def _open_idle(port: int, count: int, concurrency: int) -> list[Conn]:
    """Open ``count`` keep-alive connections, one request each, ``concurrency`` at a time."""
    sem = asyncio.Semaphore(concurrency)
    conns: list[Conn] = []

    async def one() -> None:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                ok = await _exchange(reader, writer)
            except BaseException:
                writer.close()
                raise
            if not ok:
                writer.close()
                raise RuntimeError("idle connection: the first request was not answered 200")
            conns.append((reader, writer))

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        log(f"  {len(failures)} of {count} connections failed, e.g. {failures[0]!r}")
    return conns


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """One GET /small on a kept-alive connection; True when answered 200 (body read)."""
    writer.write(IDLE_REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    await reader.readexactly(int(m.group(1)) if m else 0)
    return head.startswith(b"HTTP/1.1 200")


async def _still_open(conns: list[Conn]) -> int:
    """Send a second request on every connection; count the ones answered 200."""
    sem = asyncio.Semaphore(256)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        async with sem:
            try:
                return await _exchange(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return False

    return sum(await asyncio.gather(*(one(r, w) for r, w in conns)))


def idle_rss(url: str, pids: list[int], count: int) -> dict[str, Any]:
    """RSS of ``pids`` before and while ``count`` idle keep-alive connections are held."""
    port = int(url.rsplit(":", 1)[1])
    before = sum(rss_kib(p) for p in pids)

    async def scenario() -> dict[str, Any]:
        t0 = time.monotonic()
        conns: list[Conn] = []
        try:
            async with asyncio.timeout(IDLE_STEP_TIMEOUT):
                conns = await _open_idle(port, count, concurrency=200)
            opened_s = time.monotonic() - t0
            # Nothing signals "the server is done allocating": give it a moment.
            await asyncio.sleep(1.0)
            held = sum(rss_kib(p) for p in pids)
            hwm = sum(rss_kib(p, "VmHWM") for p in pids)
            async with asyncio.timeout(IDLE_STEP_TIMEOUT):
                alive = await _still_open(conns)
        finally:
            for _, writer in conns:
                writer.close()
        return {
            "connections": len(conns),
            "open_seconds": round(opened_s, 2),
            "still_answering": alive,
            "rss_held_mb": held / 1024,
            "rss_peak_mb": hwm / 1024,
        }

    out = asyncio.run(scenario())
    out["rss_before_mb"] = before / 1024
    out["rss_per_conn_kb"] = (out["rss_held_mb"] - out["rss_before_mb"]) * 1024 / max(1, count)
    return out


# --------------------------------------------------------------------------- lookup bench


def lookup_bench() -> dict[str, Any]:
    """Run loadtest/bench_lookup.py (another helper's) and read its µs at 1,000 routes.

    Its lines are kept verbatim.  Each line naming 1,000 routes gives one figure: a
    number with a unit (ns, us, µs, ms), else the µs column of its table (the last
    decimal number before a parenthesised compile time); the check uses the worst one.
    """
    path = ROOT / "loadtest" / "bench_lookup.py"
    if not path.exists():
        return {"available": False, "note": "loadtest/bench_lookup.py does not exist yet"}
    try:
        done = subprocess.run(
            [PYTHON, str(path)], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"available": False, "note": "bench_lookup.py took over 300 s"}
    res: dict[str, Any] = {"available": done.returncode == 0, "output": done.stdout.splitlines()}
    if done.returncode != 0:
        res["note"] = f"bench_lookup.py exited {done.returncode}: {done.stderr[-500:]}"
        return res
    scale = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "μs": 1.0, "ms": 1e3}
    figures: list[tuple[float, str]] = []
    for line in res["output"]:
        if not re.search(r"\b1,?000 routes\b", line):
            continue
        if m := re.search(r"(\d+\.\d+|\d+)\s*(ns|us|µs|μs|ms)\b", line):
            figures.append((float(m.group(1)) * scale[m.group(2)], line.strip()))
        elif m := re.search(r"(\d+\.\d+)\s+\(\d+\)\s*$", line):
            figures.append((float(m.group(1)), line.strip()))
    if figures:
        worst = max(figures)
        res["us_at_1000"], res["line_at_1000"] = worst
    else:
        res["note"] = "no figure at 1,000 routes found in its output"
    return res


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(argv: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            d = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
            return (d.stdout + d.stderr).strip().splitlines()[0]
        return "unknown"

    def pkg(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
        "packages": {n: pkg(n) for n in ("gatewayd", "uvloop", "httptools", "aiohttp")},
    }


# --------------------------------------------------------------------------- tables


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def summarise(target: Target) -> dict[str, Any]:
    def med(kind: str, attr: str) -> float | None:
        return median([r[attr] for r in target.runs.get(kind, []) if r.get(attr) is not None])

    return {
        "rps": med("small64", "rps"),
        "p50_ms": med("small64", "p50_ms"),
        "p99_ms": med("small64", "p99_ms"),
        "cpu_pct": med("small64", "sut_cpu_pct"),
        "rps_per_core": med("small64", "rps_per_core"),
        "other_cpu_pct": med("small64", "other_cpu_pct"),
        "sys_pct": med("small64", "sut_sys_pct"),
        "load_cpu_pct": med("small64", "load_cpu_pct"),
        "p99_8conn_ms": med("small8", "p99_ms"),
        "p99_8conn_best_ms": min(
            (r["p99_ms"] for r in target.runs.get("small8", [])), default=None
        ),
        "other_8conn_min_pct": min(
            (r.get("other_cpu_pct") or 0.0 for r in target.runs.get("small8", [])), default=None
        ),
        "mb_s_64k": med("big64", "transfer_mb_s"),
        "errors": sum(r["errors"] for runs in target.runs.values() for r in runs),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def print_main_table(targets: list[Target], summary: dict[str, dict[str, Any]]) -> None:
    nginx = summary.get("nginx", {}).get("rps")
    direct = summary.get("direct", {}).get("rps")
    cols = [
        "target",
        "req/s",
        "p50",
        "p99",
        "p99@8conn",
        "MB/s@64KiB",
        "vs nginx",
        "vs direct",
        "cpu%",
        "req/s/core",
        "other%",
        "load%",
    ]
    rows: list[list[str]] = []
    for t in targets:
        if not t.available:
            rows.append([t.label, f"n/a ({t.note})", *[""] * (len(cols) - 2)])
            continue
        s = summary[t.key]
        label = t.label + (f" (!{s['errors']} errors)" if s["errors"] else "")
        rows.append(
            [
                label,
                fmt(s["rps"], ",.0f"),
                fmt(s["p50_ms"], ".3f", "ms"),
                fmt(s["p99_ms"], ".3f", "ms"),
                fmt(s["p99_8conn_ms"], ".3f", "ms"),
                fmt(s["mb_s_64k"], ",.0f"),
                fmt(ratio(s["rps"], nginx), ".2f", "x"),
                fmt(ratio(s["rps"], direct), ".2f", "x"),
                fmt(s["cpu_pct"], ".0f"),
                fmt(s["rps_per_core"], ",.0f"),
                fmt(s["other_cpu_pct"], ".0f"),
                fmt(s["load_cpu_pct"], ".0f"),
            ]
        )
    print_table(cols, rows)


def print_table(cols: list[str], rows: list[list[str]]) -> None:
    # A row whose second cell starts with "n/a" is printed as "label  note": its note
    # spans the other columns and does not widen them.
    full = [r for r in rows if not r[1].startswith("n/a")]
    widths = [
        max([len(c), *(len(r[i]) for r in (rows if i == 0 else full))]) for i, c in enumerate(cols)
    ]
    line = "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for r in rows:
        if r[1].startswith("n/a"):
            print(r[0].ljust(widths[0]) + "  " + r[1])
            continue
        print(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def checks(
    summary: dict[str, dict[str, Any]], idle: dict[str, Any], lookup: dict[str, Any]
) -> list[dict[str, Any]]:
    g = summary.get("gatewayd1", {})
    n = summary.get("nginx", {})
    nv = summary.get("naive", {})
    d = summary.get("direct", {})
    out: list[dict[str, Any]] = []

    def check(name: str, value: float | None, target: float, *, below: bool, detail: str) -> None:
        if value is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if (value < target if below else value >= target) else "MISS"
        out.append(
            {"check": name, "value": value, "target": target, "verdict": verdict, "detail": detail}
        )

    r = ratio(g.get("rps"), n.get("rps"))
    check(
        "gatewayd 1 worker req/s >= 35% of nginx",
        r,
        T_RPS_VS_NGINX,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of nginx",
    )
    r = ratio(g.get("rps"), nv.get("rps"))
    check(
        "gatewayd 1 worker req/s >= 3x naive aiohttp",
        r,
        T_RPS_VS_NAIVE,
        below=False,
        detail=f"{fmt(r, '.2f', 'x')} naive",
    )
    # Other processes only ever add latency, so the check compares the best (lowest) p99
    # of the rounds of each target; the medians' difference is shown next to it.
    added = None
    detail = "-"
    if g.get("p99_8conn_best_ms") is not None and d.get("p99_8conn_best_ms") is not None:
        added = g["p99_8conn_best_ms"] - d["p99_8conn_best_ms"]
        detail = (
            f"{added:+.3f} ms (best of the rounds: gatewayd {g['p99_8conn_best_ms']:.3f} ms, "
            f"direct {d['p99_8conn_best_ms']:.3f} ms; medians: "
            f"{g['p99_8conn_ms'] - d['p99_8conn_ms']:+.3f} ms)"
        )
    check(
        "p99 added over direct at 8 connections < 1 ms",
        added,
        T_P99_ADDED_MS,
        below=True,
        detail=detail,
    )
    # A p99 of a few ms is one scheduler time slice lost to another process: when even
    # the quietest 8-connection run of either row had others on its core, say so.
    noise = max(g.get("other_8conn_min_pct") or 0.0, d.get("other_8conn_min_pct") or 0.0)
    if added is not None and (added < 0 or noise > NOISY_OTHER_PCT):
        out[-1]["verdict"] = "NOISY"
        out[-1]["detail"] += (
            f"; other processes took {noise:.0f}% of the target's core in the quietest run: "
            "rerun on a quiet machine"
        )
    r = ratio(g.get("mb_s_64k"), n.get("mb_s_64k"))
    check(
        "64 KiB MB/s >= 50% of nginx",
        r,
        T_MBPS_VS_NGINX,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of nginx",
    )
    gi = idle.get("gatewayd1", {})
    held = gi.get("rss_held_mb") if gi.get("connections") else None
    check(
        f"{idle.get('count', 10000):,} idle conns RSS < 200 MB",
        held,
        T_IDLE_RSS_MB,
        below=True,
        detail=f"{fmt(held, '.1f', ' MB')} with {gi.get('connections', 0):,} connections",
    )
    us = lookup.get("us_at_1000")
    check(
        "route lookup at 1,000 routes < 20 µs",
        us,
        T_LOOKUP_US,
        below=True,
        detail=f"{fmt(us, '.2f', ' µs')}" if us is not None else lookup.get("note", "skipped"),
    )
    return out


# --------------------------------------------------------------------------- main


def require_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    if missing:
        sys.exit(
            f"bench: {' and '.join(missing)} not found. `make bench` installs them with apt-get "
            "(packages nginx-light or nginx, and wrk); or run: apt-get install -y nginx-light wrk"
        )


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = max(soft, want) if hard == resource.RLIM_INFINITY else min(hard, max(soft, want))
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def gatewayd_run_help(cmd: list[str]) -> str:
    done = subprocess.run(
        [*cmd, "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return done.stdout


KINDS = {"small64": ("/small", 64), "small8": ("/small", 8), "big64": ("/64k", 64)}


class Bench:
    """The processes of one run and how they are placed on CPUs."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.procs = Processes(tmp)
        self.ncpu = len(_CPUS)
        self.pinned = self.ncpu >= 2
        self.gatewayd_cmd = (
            shlex.split(args.gatewayd) if args.gatewayd else [PYTHON, "-m", "gatewayd"]
        )
        self.run_help = gatewayd_run_help(self.gatewayd_cmd)
        self.has_workers = "--workers" in self.run_help
        self.backend: Proc | None = None
        self.bport = 0

    # ---- processes of a target

    def sut_proc(self, t: Target) -> Proc:
        proc = t.proc or self.backend
        assert proc is not None
        return proc

    def cpu_pids(self, t: Target) -> list[int]:
        """Every process of the system under test (master and workers alike)."""
        return process_tree(self.sut_proc(t).pid)

    def worker_pids(self, t: Target) -> list[int]:
        """The processes that hold connections: the workers if there are any."""
        tree = process_tree(self.sut_proc(t).pid)
        return tree[1:] if len(tree) > 1 else tree

    def place(self, t: Target) -> set[int] | None:
        """Pin the target and the backend for one measurement; return wrk's CPUs."""
        assert self.backend is not None
        if not self.pinned or t.placement == "all":
            pin(self.sut_proc(t).pid, None)
            pin(self.backend.pid, None)
            return None
        if t.placement == "direct":
            pin(self.backend.pid, SUT_CPUS)
        else:
            pin(self.sut_proc(t).pid, SUT_CPUS)
            pin(self.backend.pid, LOAD_CPUS)
        return LOAD_CPUS

    # ---- starting targets

    def start_backend(self) -> Target:
        self.bport = free_port()
        conf = nginx_backend_conf(self.tmp, self.bport)
        self.backend = self.start_nginx("backend", conf, self.bport)
        return Target(
            "direct",
            "direct (wrk -> nginx backend)",
            f"http://127.0.0.1:{self.bport}",
            placement="direct",
            proxied=False,
        )

    def start_nginx(self, name: str, conf: Path, port: int) -> Proc:
        err = self.tmp / f"{name}-error.log"
        proc = self.procs.start(
            name, ["nginx", "-p", str(self.tmp), "-e", str(err), "-c", str(conf)]
        )
        wait_until(lambda: self.listening(proc, port), 10, name)
        return proc

    def listening(self, proc: Proc, port: int) -> bool:
        self.procs.check_alive(proc)
        return port_open(port)

    def start_nginx_proxy(self) -> Target:
        port = free_port()
        proc = self.start_nginx("nginxproxy", nginx_proxy_conf(self.tmp, port, self.bport), port)
        return Target("nginx", "nginx proxy (1 worker)", f"http://127.0.0.1:{port}", proc=proc)

    def start_gatewayd(self, key: str, workers: int | None) -> Target:
        port, admin = free_port(), free_port()
        argv = [
            *self.gatewayd_cmd, "run",
            "--config", str(gatewayd_config(self.tmp, port, self.bport)),
            "--admin-address", f"127.0.0.1:{admin}",
            "--access-log", "off",
            # The idle-connection test holds --idle-conns connections at once.
            "--max-connections", str(self.args.idle_conns + 10000),
            "--idle-timeout", "600",
        ]  # fmt: skip
        if "--no-watch" in self.run_help:
            argv.append("--no-watch")
        if workers is not None:
            argv += ["--workers", str(workers)]
        proc = self.procs.start(key, argv)

        def ready() -> bool:
            self.procs.check_alive(proc)
            return http_get(f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200

        wait_until(ready, 30, f"{key} /ready")
        if workers is None or workers == 1:
            label, placement = "gatewayd 1 worker", "split"
        else:
            label, placement = f"gatewayd all workers ({workers})", "all"
        return Target(key, label, f"http://127.0.0.1:{port}", proc=proc, placement=placement)

    def start_naive(self) -> Target:
        port = free_port()
        argv = [
            PYTHON, str(ROOT / "loadtest" / "naive_proxy.py"),
            "--listen", f"127.0.0.1:{port}",
            "--upstream", f"http://127.0.0.1:{self.bport}",
        ]  # fmt: skip
        proc = self.procs.start("naive", argv)
        wait_until(lambda: self.listening(proc, port), 20, "naive proxy")
        return Target("naive", "naive aiohttp proxy", f"http://127.0.0.1:{port}", proc=proc)

    def start_targets(self, wanted: list[str]) -> list[Target]:
        targets = [self.start_backend()]
        if "nginx" in wanted:
            targets.append(self.start_nginx_proxy())
        if "gatewayd1" in wanted:
            targets.append(
                self.start_or_note(
                    "gatewayd1",
                    "gatewayd 1 worker",
                    lambda: self.start_gatewayd("gatewayd1", 1 if self.has_workers else None),
                )
            )
        if "gatewayd-all" in wanted:
            if self.has_workers:
                targets.append(
                    self.start_or_note(
                        "gatewayd-all",
                        "gatewayd all workers",
                        lambda: self.start_gatewayd("gatewayd-all", self.ncpu),
                    )
                )
            else:
                targets.append(
                    Target("gatewayd-all", "gatewayd all workers", note="no --workers yet")
                )
        if "naive" in wanted:
            targets.append(self.start_naive())
        if "direct" not in wanted:
            targets = targets[1:]
        return targets

    def start_or_note(self, key: str, label: str, start: Callable[[], Target]) -> Target:
        """A target that fails to start becomes an n/a row instead of ending the bench."""
        try:
            return start()
        except RuntimeError as exc:
            log(f"{label} did not start: {exc}")
            return Target(key, label, note=f"did not start: {str(exc).splitlines()[0]}")

    def verify_or_drop(self, t: Target) -> None:
        """A target that fails the functional check becomes an n/a row (its log is shown)."""
        try:
            verify(t)
        except RuntimeError as exc:
            log(f"{t.label} is left out: {exc}")
            if t.proc is not None and t.proc.tail(40):
                print(
                    f"--- last lines of {t.proc.name}'s output:\n{t.proc.tail(40)}", file=sys.stderr
                )
            t.note = f"failed the check: {str(exc).splitlines()[0][len(t.label) :].strip(' :')}"
            t.url = ""

    # ---- measuring

    def measure(self, t: Target, kind: str, duration: float) -> WrkResult:
        assert self.backend is not None
        self.procs.check_alive(self.backend)
        self.procs.check_alive(self.sut_proc(t))
        wrk_cpus = self.place(t)
        sut_cpus = SUT_CPUS if wrk_cpus is not None else None
        path, conns = KINDS[kind]
        return run_wrk(
            t.url + path,
            connections=conns,
            duration=duration,
            threads=self.args.threads,
            cpus=wrk_cpus,
            sut_pids=self.cpu_pids(t),
            sut_cpus=sut_cpus,
            load_cpus=wrk_cpus,
        )

    def rounds(self, live: list[Target]) -> None:
        warm = min(2.0, self.args.duration)
        for t in live:
            self.measure(t, "small64", warm)
        log(f"warmed up ({warm:g}s each)")
        for rnd in range(self.args.rounds):
            for t in live:
                for kind in KINDS:
                    r = self.measure(t, kind, self.args.duration)
                    t.runs.setdefault(kind, []).append(asdict(r))
                    log(
                        f"round {rnd + 1}/{self.args.rounds} {t.key:<12} {kind:<7} "
                        f"{r.rps:>9,.0f} req/s p50 {r.p50_ms:.3f}ms p99 {r.p99_ms:.3f}ms "
                        f"{r.transfer_mb_s:,.1f} MB/s cpu {r.sut_cpu_pct:.0f}%"
                        + (f" ERRORS {r.errors}" if r.errors else "")
                    )

    def idle(self, live: list[Target]) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.args.idle_conns}
        for t in live:
            if t.key not in ("gatewayd1", "nginx", "naive"):
                continue
            pin(self.sut_proc(t).pid, None)
            log(f"idle: opening {self.args.idle_conns:,} keep-alive connections to {t.key}")
            try:
                out[t.key] = idle_rss(t.url, self.worker_pids(t), self.args.idle_conns)
            except (TimeoutError, OSError, RuntimeError) as exc:
                out[t.key] = {"error": repr(exc)}
            log(f"  {out[t.key]}")
        return out

    def profile(self, t: Target) -> dict[str, Any]:
        """py-spy record (raw collapsed stacks) on gatewayd during one wrk run."""
        spy = Path(PYTHON).parent / "py-spy"
        if not spy.exists():
            return {"note": "py-spy not installed (.venv/bin/pip install py-spy)"}
        pid = self.worker_pids(t)[0]
        raw = self.tmp / "profile.txt"
        dur = max(3, int(self.args.duration))
        log(f"profile: py-spy record on pid {pid} for {dur}s under wrk (64 conns, /small)")
        argv = [str(spy), "record", "-p", str(pid), "-d", str(dur), "-r", "200", "-f", "raw"]
        spy_proc = self.procs.start("py-spy", [*argv, "-o", str(raw)])
        time.sleep(1.0)  # py-spy attaching: it has no readiness signal to wait on
        result = self.measure(t, "small64", dur)
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy_proc.popen.wait(timeout=30)
        if not raw.exists():
            return {"note": f"py-spy failed: {spy_proc.tail()}"}
        selfs: dict[str, int] = {}
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if count.isdigit():
                total += int(count)
                # "func (file.py:line)" -> "func (file.py)": one row per function.
                leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])
                selfs[leaf] = selfs.get(leaf, 0) + int(count)
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept = RESULTS / "profile-gatewayd1.txt"
        shutil.copy(raw, kept)
        top = sorted(selfs.items(), key=lambda kv: -kv[1])[:20]
        return {
            "samples": total,
            "rps_while_profiled": result.rps,
            "collapsed_stacks": str(kept.relative_to(ROOT)),
            "top": [{"frame": f, "self_pct": 100 * c / max(1, total)} for f, c in top],
        }


def print_report(
    args: argparse.Namespace,
    targets: list[Target],
    summary: dict[str, dict[str, Any]],
    verdicts: list[dict[str, Any]],
    idle: dict[str, Any],
    lookup: dict[str, Any],
    profile: dict[str, Any],
) -> None:
    print()
    print(
        f"gatewayd bench: median of {args.rounds} round(s) of {args.duration:g}s wrk runs, "
        f"{args.threads} wrk thread(s).\n"
        "  req/s, p50, p99: 13-byte body, 64 connections; p99@8conn: the same at 8 "
        "connections;\n  MB/s@64KiB: 64 KiB body, 64 connections (10^6 bytes/s); "
        "vs: req/s ratios;\n  cpu%: CPU the target used during the 64-connection run "
        "(100 = one core);\n  req/s/core: req/s per core used; other%: CPU taken on the "
        "target's core by other processes (noise);\n  load%: busy share of the core of wrk "
        "(and the backend): near 100 means the load side was the limit"
    )
    print_main_table(targets, summary)
    print()
    for v in verdicts:
        print(f"{v['verdict']:<5}  {v['check']}: {v['detail']}")
    print()
    rows = []
    labels = {
        "gatewayd1": "gatewayd 1 worker",
        "nginx": "nginx proxy worker",
        "naive": "naive aiohttp",
    }
    for key, label in labels.items():
        i = idle.get(key)
        if not i:
            continue
        if "error" in i:
            rows.append([label, f"n/a (error: {i['error']})", "", "", "", ""])
            continue
        rows.append(
            [
                label,
                f"{i['connections']:,}",
                f"{i['still_answering']:,}",
                f"{i['rss_before_mb']:.1f} MB",
                f"{i['rss_held_mb']:.1f} MB",
                f"{i['rss_per_conn_kb']:.1f} KB",
            ]
        )
    if rows:
        print(
            "idle keep-alive connections: each sent one request and is then held open; "
            "'answering': answered a second request afterwards; RSS from /proc/PID/status"
        )
        cols = ["process", "idle conns", "answering", "RSS before", "RSS held", "per conn"]
        print_table(cols, rows)
        print()
    if lookup.get("output"):
        print("route lookup (loadtest/bench_lookup.py):")
        for line in lookup["output"]:
            print("  " + line)
    elif lookup:
        print(f"route lookup: n/a ({lookup.get('note')})")
    if profile.get("top"):
        print()
        print(
            f"py-spy on gatewayd 1 worker under wrk (64 conns, /small): self time, "
            f"{profile['samples']} samples, {profile['rps_while_profiled']:,.0f} req/s while "
            f"sampled; stacks in {profile['collapsed_stacks']}"
        )
        for row in profile["top"]:
            print(f"  {row['self_pct']:5.1f}%  {row['frame']}")
    elif profile:
        print(f"profile: {profile.get('note')}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gatewayd vs nginx, direct and naive aiohttp (wrk)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians (3)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (1: wrk has one core)")
    ap.add_argument(
        "--idle-conns", type=int, default=10000, help="idle keep-alive connections (0: skip)"
    )
    ap.add_argument("--no-lookup", action="store_true", help="skip bench_lookup.py")
    ap.add_argument(
        "--targets",
        default="direct,nginx,gatewayd1,gatewayd-all,naive",
        help="comma-separated subset of direct,nginx,gatewayd1,gatewayd-all,naive",
    )
    ap.add_argument(
        "--profile", action="store_true", help="py-spy on gatewayd 1 worker under one extra run"
    )
    ap.add_argument(
        "--gatewayd",
        metavar="CMD",
        help="command that runs gatewayd (default: this python -m gatewayd)",
    )
    ap.add_argument("--output", type=Path, help="JSON path (loadtest/results/bench-DATE.json)")
    args = ap.parse_args(argv)
    require_tools()
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    nofile = raise_nofile(args.idle_conns + 4096)

    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="gatewayd-bench-"))
    bench = Bench(args, tmp)
    n = len([w for w in wanted if w != "gatewayd-all" or bench.has_workers])
    expected = (
        15
        + n * min(2.0, args.duration)
        + args.rounds * n * len(KINDS) * (args.duration + 0.3)
        + (30 * 3 if args.idle_conns else 0)
        + (0 if args.no_lookup else 10)
        + (args.duration + 5 if args.profile else 0)
    )
    log(
        f"{n} targets x {len(KINDS)} wrk runs x {args.rounds} rounds x {args.duration:g}s: "
        f"expect about {expected / 60:.1f} min in all (every step has a time limit)"
    )
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(
            f"warning: the machine is busy before the bench starts (load average "
            f"{load_before[0]:.2f}): other processes compete for both CPUs, expect noise"
        )
    if bench.pinned:
        log(
            f"placement: target on CPU {sorted(SUT_CPUS)}; wrk and the backend on CPU "
            f"{sorted(LOAD_CPUS)} (direct: the backend on CPU {sorted(SUT_CPUS)})"
        )
    else:
        log("one CPU: nothing pinned")

    targets: list[Target] = []
    idle: dict[str, Any] = {}
    lookup: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    try:
        targets = bench.start_targets(wanted)
        for t in targets:
            if t.available:
                bench.verify_or_drop(t)
        live = [t for t in targets if t.available]
        log("targets answer /small and /64k; the backend sees each proxy's X-Bench")
        bench.rounds(live)
        g1 = next((t for t in live if t.key == "gatewayd1"), None)
        if args.profile and g1 is not None:
            profile = bench.profile(g1)
        if args.idle_conns:
            idle = bench.idle(live)
        if not args.no_lookup:
            log("route lookup micro-benchmark (loadtest/bench_lookup.py)")
            lookup = lookup_bench()
    except BaseException:
        for p in bench.procs.procs:
            if p.tail():
                print(f"--- last lines of {p.name}'s output:\n{p.tail()}", file=sys.stderr)
        raise
    finally:
        bench.procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {t.key: summarise(t) for t in targets if t.available}
    verdicts = checks(summary, idle, lookup)
    print_report(args, targets, summary, verdicts, idle, lookup, profile)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = args.output or RESULTS / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    result = {
        "date": started.isoformat(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "wrk_threads": args.threads,
        "placement": (
            f"target on CPUs {sorted(SUT_CPUS)}; wrk and backend on CPUs {sorted(LOAD_CPUS)}"
            if bench.pinned
            else "unpinned"
        ),
        "nofile": nofile,
        "loadavg_before": load_before,
        "machine": machine_info(),
        "targets": {
            t.key: {
                "label": t.label,
                "available": t.available,
                "note": t.note,
                "runs": t.runs,
                "median": summary.get(t.key),
            }
            for t in targets
        },
        "checks": verdicts,
        "idle": idle,
        "lookup": lookup,
        "profile": profile,
    }
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {out_path}")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (make being stopped, a timeout) unwinds through main's cleanup ``finally``."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    with _sigterm_as_interrupt():
        sys.exit(main())
