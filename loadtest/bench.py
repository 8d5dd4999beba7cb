"""``make bench``: gatewayd against nginx, a direct connection and a naive aiohttp proxy.

One run starts, on loopback only, with every process's files in one temporary directory:

- nginx as the backend (1 worker): ``/small`` answers a 13-byte body, ``/64k`` serves a
  64 KiB file; it also echoes the ``X-Bench`` request header back as ``X-Seen-Bench`` so
  every proxy is checked to really add its request header;
- nginx as a reverse proxy (1 worker, upstream keep-alive 64, HTTP/1.1 upstream, 64 KiB
  proxy buffers), adding ``X-Bench: 1``;
- gatewayd with one worker (and with every worker if ``gatewayd run`` has ``--workers``):
  a generated Gateway/HTTPRoute whose RequestHeaderModifier adds ``X-Bench: 1``, access
  log off; and gatewayd one worker with its default text access log, written to a file
  (the ``gatewayd1-log`` row);
- ``loadtest/naive_proxy.py`` (aiohttp server + one ClientSession), adding ``X-Bench: 1``;
- HTTP/2 and gRPC rows, measured with h2load over cleartext HTTP/2 (prior knowledge):
  the backend's h2c listener (``/small``, and a unary gRPC answer to ``GRPC_PATH``), the
  nginx proxy's h2c listener (HTTP/1.1 keep-alive upstream; ``grpc_pass`` for gRPC) and
  gatewayd's (h2c on its HTTP listener; a GRPCRoute on a second listener);
- with ``--baseline REF``, gatewayd 1 worker from an older commit, for "no worse than
  before".

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

# loadtest/bench_scale.py imports this module as ``bench``: the same module when this
# file runs as the script, not a second copy.
sys.modules.setdefault("bench", sys.modules[__name__])
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # noqa: E402  (after the alias it imports)

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
# Issue 17, small requests, gatewayd one worker: >= 50% of nginx one worker and >= 65%
# of the Python ceiling with the access log off; >= 45% of nginx with the default text
# access log (to a file: the process's stdout, which the bench writes to its log file).
T_RPS_VS_NGINX = 0.50
T_RPS_LOG_VS_NGINX = 0.45
T_H2_RPS_VS_NGINX = 0.35  # HTTP/2 rows (h2c downstream, HTTP/1.1 upstream)
T_RPS_VS_NAIVE = 3.0
# Issue 17: added over the direct path at 8 connections.
T_P50_ADDED_MS = 0.12
T_P99_ADDED_MS = 0.5
T_MBPS_VS_NGINX = 0.80  # issue 17: 64 KiB responses
T_IDLE_RSS_MB = 80.0  # issue 17 (it was 200 MB before)
T_RPS_VS_CEILING = 0.65  # issue 17: gatewayd 1 worker against the Python ceiling
T_SCALE_S = 2.0  # issue 17: start-up and reload at 10,000 HTTPRoutes
T_RELOAD_STALL_MS = 100.0  # issue 17: the longest request during a reload
T_LOOKUP_US = 20.0
# "HTTP/1.1 rows no worse than before": within the noise of one interleaved run.
T_VS_BASELINE = 0.95
NOISY_OTHER_PCT = 5.0  # other processes' share of the target's core that spoils a p99

# HTTP/2 and gRPC rows (h2load).  A gRPC unary call is a POST of one length-prefixed
# message (1 flag byte, 4 bytes of length, the bytes) with content-type application/grpc
# and te: trailers; the answer is one such message and a grpc-status trailer.
GRPC_SERVICE = "gatewayd.bench.Bench"
GRPC_METHOD = "Call"
GRPC_PATH = f"/{GRPC_SERVICE}/{GRPC_METHOD}"
GRPC_REQUEST = b"ping"
GRPC_REPLY = SMALL_BODY  # the backend's answer: the same 13 bytes as /small
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message as it travels in DATA frames."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


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

    def start(
        self, name: str, argv: list[str], cpus: set[int] | None = None, cwd: Path = ROOT
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
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


def nginx_backend_conf(tmp: Path, port: int, h2_port: int = 0) -> Path:
    """The backend: HTTP/1.1 on ``port``; with ``h2_port``, also h2c there (prior knowledge).

    On the h2c port it serves the same ``/small`` (the HTTP/2 "direct" row) and answers
    the gRPC method ``GRPC_PATH`` like a unary gRPC server: ``application/grpc``, one
    length-prefixed message (a file: nginx's config strings cannot hold its zero bytes)
    and the trailers ``grpc-status: 0``, ``grpc-message``.  nginx serves no file to a
    POST, so the method's location answers 405 and ``error_page 405 =200`` turns that
    into the file, served as to a GET (the request body is read and dropped).  A real
    grpcio client checks this answer before anything is measured.
    """
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / "64k").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
    (www / "grpc-reply").write_bytes(grpc_frame(GRPC_REPLY))
    top, http = nginx_common(tmp, "backend")
    body = SMALL_BODY.decode().replace("\n", "\\n")
    locations = f"""
        # Echo the proxies' added request header back so each proxy is checked.
        add_header X-Seen-Bench $http_x_bench always;
        location = /small {{ default_type text/plain; return 200 "{body}"; }}
        location = /64k {{ root {www}; default_type application/octet-stream; }}"""
    h2 = ""
    if h2_port:
        h2 = f"""
    server {{
        listen 127.0.0.1:{h2_port} http2 backlog=4096;{locations}
        location = {GRPC_PATH} {{ error_page 405 =200 /grpc-reply; return 405; }}
        location = /grpc-reply {{
            internal;
            root {www};
            default_type application/grpc;
            # The head of a gRPC server's answer, not a file's: no validators, no ranges.
            etag off;
            max_ranges 0;
            add_header Last-Modified "";
            add_header X-Seen-Bench $http_x_bench always;  # add_header here stops inheritance
            add_trailer grpc-status 0 always;
            add_trailer grpc-message "" always;
        }}
    }}"""
    conf = tmp / "backend.conf"
    conf.write_text(
        top
        + f"""http {{
{http}
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;{locations}
    }}{h2}
}}
"""
    )
    return conf


def nginx_proxy_conf(
    tmp: Path, port: int, backend_port: int, h2_port: int = 0, backend_h2_port: int = 0
) -> Path:
    """nginx as the reference proxy: HTTP/1.1 on ``port``; with ``h2_port``, h2c there.

    Both listeners proxy to the backend's HTTP/1.1 port over kept-alive HTTP/1.1
    connections (as gatewayd does), so the HTTP/2 row differs from the HTTP/1.1 one only
    by its downstream protocol.  On the h2c listener ``GRPC_PATH`` goes to the backend's
    h2c port with ``grpc_pass`` (nginx's gRPC proxy: HTTP/2 upstream, kept alive).
    """
    top, http = nginx_common(tmp, "nginxproxy")
    location = f"""
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
            proxy_set_header {ADDED_HEADER[0]} "{ADDED_HEADER[1]}";"""
    h2 = ""
    if h2_port:
        grpc = ""
        if backend_h2_port:
            grpc = f"""
        location = {GRPC_PATH} {{
            grpc_pass grpc://grpcbackend;
            grpc_set_header {ADDED_HEADER[0]} "{ADDED_HEADER[1]}";
        }}"""
        h2 = f"""
    server {{
        listen 127.0.0.1:{h2_port} http2 backlog=4096;
        location / {{{location}
        }}{grpc}
    }}"""
    upstreams = f"""
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}"""
    if h2_port and backend_h2_port:
        upstreams += f"""
    upstream grpcbackend {{
        server 127.0.0.1:{backend_h2_port};
        keepalive 64;
        keepalive_requests 10000000;
    }}"""
    conf = tmp / "nginxproxy.conf"
    conf.write_text(
        top
        + f"""http {{
{http}{upstreams}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{{location}
        }}
    }}{h2}
}}
"""
    )
    return conf


def gatewayd_config(
    tmp: Path, port: int, backend_port: int, grpc_port: int = 0, backend_h2_port: int = 0
) -> Path:
    """gatewayd's configuration: a Gateway whose HTTP listener ``http`` on ``port`` carries
    an HTTPRoute to the backend's HTTP/1.1 port (HTTP/1.1 and h2c downstream alike).

    With ``grpc_port``, a second HTTP listener ``grpc`` carries a GRPCRoute matching the
    bench method (Exact service and method) to the backend's h2c port (a Service port with
    ``appProtocol: kubernetes.io/h2c``).  A listener of its own: Gateway API does not let
    an HTTPRoute and a GRPCRoute share a listener's hostname.  Both routes add X-Bench.
    """
    cfg = tmp / "gatewayd-config"
    cfg.mkdir(exist_ok=True)
    grpc_listener = ""
    if grpc_port:
        grpc_listener = f"""
            - name: grpc
              protocol: HTTP
              port: {grpc_port}"""
    docs = [
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
              port: {port}{grpc_listener}
        """,
        _service_yaml("nginx", backend_port, ""),
        f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          name: bench
          namespace: bench
        spec:
          parentRefs:
            - name: bench
              sectionName: http
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
        """,
    ]
    if grpc_port:
        docs += [
            _service_yaml("grpc", backend_h2_port, "kubernetes.io/h2c"),
            f"""\
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata:
          name: bench
          namespace: bench
        spec:
          parentRefs:
            - name: bench
              sectionName: grpc
          rules:
            - matches:
                - method:
                    type: Exact
                    service: {GRPC_SERVICE}
                    method: {GRPC_METHOD}
              filters:
                - type: RequestHeaderModifier
                  requestHeaderModifier:
                    add:
                      - name: {ADDED_HEADER[0]}
                        value: "{ADDED_HEADER[1]}"
              backendRefs:
                - name: grpc
                  port: 80
        """,
        ]
    (cfg / "bench.yaml").write_text("---\n".join(textwrap.dedent(d) for d in docs))
    return cfg


def _service_yaml(name: str, target_port: int, app_protocol: str) -> str:
    """A Service and its EndpointSlice: port 80 -> 127.0.0.1:``target_port``."""
    proto = f"\n              appProtocol: {app_protocol}" if app_protocol else ""
    slice_proto = f"\n            appProtocol: {app_protocol}" if app_protocol else ""
    return f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
          namespace: bench
        spec:
          ports:
            - name: http
              port: 80
              targetPort: {target_port}{proto}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: {name}-1
          namespace: bench
          labels:
            kubernetes.io/service-name: {name}
        addressType: IPv4
        ports:
          - name: http
            port: {target_port}{slice_proto}
        endpoints:
          - addresses: ["127.0.0.1"]
            conditions:
              ready: true
        """


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
    # h2load rows: what ``errors`` is made of (failed streams, non-2xx, short bodies).
    error_detail: dict[str, int] | None = None


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
    with _cpu_meter(sut_pids, sut_cpus, load_cpus) as meter:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}{done.stdout}")
    result = parse_wrk(done.stdout)
    meter.fill(result)
    return result


class _CpuMeter:
    """CPU used by the target's processes, its core(s) and the load core(s) over a run."""

    def __init__(self, sut_pids: list[int], sut_cpus: set[int] | None, load_cpus: set[int] | None):
        self.sut_pids, self.sut_cpus, self.load_cpus = sut_pids, sut_cpus, load_cpus
        self.cpu0, self.t0 = cpu_times(sut_pids), time.monotonic()
        self.core0, self.load0 = core_ticks(sut_cpus), core_ticks(load_cpus)
        self.cpu1, self.t1 = self.cpu0, self.t0
        self.core1, self.load1 = self.core0, self.load0

    def stop(self) -> None:
        self.cpu1, self.t1 = cpu_times(self.sut_pids), time.monotonic()
        self.core1, self.load1 = core_ticks(self.sut_cpus), core_ticks(self.load_cpus)

    def fill(self, result: WrkResult) -> None:
        wall = max(self.t1 - self.t0, 1e-9)
        result.sut_cpu_pct = 100.0 * (sum(self.cpu1) - sum(self.cpu0)) / wall
        result.sut_sys_pct = 100.0 * (self.cpu1[1] - self.cpu0[1]) / wall
        if result.sut_cpu_pct > 1:
            result.rps_per_core = result.rps * 100.0 / result.sut_cpu_pct
        core0, core1, load0, load1 = self.core0, self.core1, self.load0, self.load1
        if self.sut_cpus and core1[1] > core0[1]:
            busy = 100.0 * len(self.sut_cpus) * (core1[0] - core0[0]) / (core1[1] - core0[1])
            result.other_cpu_pct = max(0.0, busy - result.sut_cpu_pct)
        if self.load_cpus and load1[1] > load0[1]:
            result.load_cpu_pct = 100.0 * (load1[0] - load0[0]) / (load1[1] - load0[1])


@contextlib.contextmanager
def _cpu_meter(
    sut_pids: list[int], sut_cpus: set[int] | None, load_cpus: set[int] | None
) -> Iterator[_CpuMeter]:
    meter = _CpuMeter(sut_pids, sut_cpus, load_cpus)
    yield meter
    meter.stop()


# --------------------------------------------------------------------------- h2load


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"([\d.]+)(B|KB|MB|GB|TB)", text)
    if not m:
        raise ValueError(f"h2load size {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


@dataclass
class H2loadSummary:
    """h2load's end-of-run summary (its latency figures are mean/sd only: see parse_h2load_log)."""

    seconds: float
    rps: float
    done: int
    succeeded: int
    failed: int  # failed includes errored and timed out
    status_2xx: int
    traffic_bytes: int
    data_bytes: int  # DATA frame payload: response bodies (gRPC: framed messages)


def parse_h2load(out: str) -> H2loadSummary:
    def find(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.M)
        if not m:
            raise RuntimeError(f"unexpected h2load output (no {pattern!r}):\n{out}")
        return m

    fin = find(r"^finished in ([\d.]+)(us|ms|s|m|h), ([\d.]+) req/s")
    req = find(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout"
    )
    codes = find(r"^status codes: (\d+) 2xx")
    traffic = find(r"^traffic: \S+ \((\d+)\) total, .* (\S+) \((\d+)\) data")
    return H2loadSummary(
        seconds=_ms(fin.group(1) + fin.group(2)) / 1e3,
        rps=float(fin.group(3)),
        done=int(req.group(3)),
        succeeded=int(req.group(4)),
        failed=int(req.group(5)),
        status_2xx=int(codes.group(1)),
        traffic_bytes=int(traffic.group(1)),
        data_bytes=int(traffic.group(3)),
    )


def parse_h2load_log(lines: Iterator[str] | list[str]) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, count) of h2load's ``--log-file``: one request per line, tab-
    separated: start (µs since the epoch), status, µs until the end of the response."""
    durations = sorted(int(line.split("\t")[2]) for line in lines if line.strip())
    if not durations:
        raise RuntimeError("h2load's log holds no request")

    def pct(q: float) -> float:
        return durations[min(len(durations) - 1, int(q * len(durations)))] / 1e3

    return pct(0.50), pct(0.99), len(durations)


def h2load_result(
    summary: H2loadSummary, log_lines: list[str], body_len: int, connections: int = 0
) -> WrkResult:
    """A WrkResult from h2load's summary and log.  ``errors`` counts failed requests,
    non-2xx answers and 2xx answers that lack their body: h2load counts a 200 as a
    success whatever it holds, and a gRPC error is a 200 with no message (trailers only),
    so the DATA bytes must be ``body_len`` per answer for the run to be clean.

    h2load counts bytes and statuses only inside its measuring phase, each when it sees
    them, so an answer whose DATA came just before the phase began and its end just
    after is a 2xx without its bytes (seen: exactly 1 in some runs of the nginx rows).
    Up to one such answer per connection is tolerated; a failing gRPC backend gives
    thousands."""
    p50, p99, _ = parse_h2load_log(log_lines)
    bodies = summary.data_bytes // body_len if body_len else summary.status_2xx
    short = max(0, summary.status_2xx - bodies)
    detail = {
        "failed": summary.failed,
        # h2load's "succeeded" are the streams that completed, whatever their status.
        "non_2xx": max(0, summary.succeeded - summary.status_2xx),
        "short_bodies": short if short > connections else 0,
    }
    errors = sum(detail.values())
    detail["short_bodies_seen"] = short
    return WrkResult(
        rps=summary.rps,
        p50_ms=p50,
        p99_ms=p99,
        transfer_mb_s=summary.traffic_bytes / max(summary.seconds, 1e-9) / 1e6,
        requests=summary.done,
        errors=errors,
        error_detail=detail,
    )


def h2load_argv(
    url: str,
    *,
    connections: int,
    streams: int,
    duration: float,
    threads: int,
    log_file: Path,
    data_file: Path | None = None,
    headers: tuple[str, ...] = (),
) -> list[str]:
    """h2load over cleartext HTTP/2 with prior knowledge (its default for http:// URLs)."""
    argv = [
        "h2load",
        f"-t{threads}",
        f"-c{connections}",
        f"-m{streams}",
        f"-D{duration:g}",
        f"--log-file={log_file}",
    ]
    for h in headers:
        argv += ["-H", h]
    if data_file is not None:
        argv += ["-d", str(data_file)]  # a POST with this file as its body
    return [*argv, url]


def run_h2load(
    argv: list[str],
    *,
    log_file: Path,
    body_len: int,
    connections: int,
    duration: float,
    cpus: set[int] | None,
    sut_pids: list[int],
    sut_cpus: set[int] | None,
    load_cpus: set[int] | None,
) -> WrkResult:
    if cpus is not None:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    log_file.unlink(missing_ok=True)
    with _cpu_meter(sut_pids, sut_cpus, load_cpus) as meter:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + 30, check=False
        )
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr}{done.stdout}")
    summary = parse_h2load(done.stdout)
    if summary.done == 0:
        raise RuntimeError(f"h2load: no request completed:\n{done.stdout}")
    with open(log_file) as f:
        result = h2load_result(summary, f.readlines(), body_len, connections)
    log_file.unlink(missing_ok=True)
    meter.fill(result)
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
    # What is measured: wrk KINDS (HTTP/1.1) or one of H2_KINDS (h2load).
    kinds: tuple[str, ...] = ("small64", "small8", "big64")
    # Other listeners of the same process: "h2" (h2c, HTTP routes), "grpc" (h2c, gRPC).
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return bool(self.url)

    @property
    def protocol(self) -> str:
        """Which table the row belongs to: "h1", "h2" or "grpc"."""
        return H2_KINDS[self.kinds[0]].protocol if self.kinds[0] in H2_KINDS else "h1"


def verify(target: Target) -> None:
    try:
        if target.protocol == "grpc":
            verify_grpc(target)
        elif target.protocol == "h2":
            verify_h2(target)
        else:
            _verify(target)
    except OSError as exc:
        raise RuntimeError(f"{target.label} ({target.url}): {exc!r}") from exc


def h2c_request(
    url: str, path: str, timeout: float = 5.0
) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """One GET over cleartext HTTP/2 with prior knowledge (the h2 package, one socket):
    (response headers, body, trailers)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(":method", "GET"), (":scheme", "http"), (":authority", "bench"), (":path", path)],
        end_stream=True,
    )
    headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    body = bytearray()
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"h2c {url}{path}: connection closed before the answer")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    headers = {_s(k): _s(v) for k, v in ev.headers}
                elif isinstance(ev, h2.events.TrailersReceived) and ev.stream_id == sid:
                    trailers = {_s(k): _s(v) for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    if len(body) > 4 * BIG_SIZE:
                        raise RuntimeError(f"h2c {url}{path}: answer over {4 * BIG_SIZE} bytes")
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    raise RuntimeError(f"h2c {url}{path}: stream reset ({ev.error_code!r})")
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    return headers, bytes(body), trailers
            sock.sendall(conn.data_to_send())


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def verify_h2(target: Target) -> None:
    headers, body, _ = h2c_request(target.url, "/small")
    if headers.get(":status") != "200" or body != SMALL_BODY:
        raise RuntimeError(
            f"{target.label}: h2c GET /small -> {headers.get(':status')} {body[:200]!r}"
        )
    if target.proxied and headers.get("x-seen-bench") != ADDED_HEADER[1]:
        raise RuntimeError(f"{target.label}: the backend did not see X-Bench: {headers}")


def grpc_call(url: str, timeout: float = 5.0) -> tuple[str, bytes, dict[str, str], str]:
    """One unary call of the bench method with the real grpcio client (raw bytes, no
    codegen): (status code name, reply, initial metadata, details)."""
    try:
        import grpc
    except ImportError as exc:
        raise RuntimeError("grpcio is not installed (the dev extra has it)") from exc
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        call = channel.unary_unary(GRPC_PATH)
        try:
            reply, info = call.with_call(GRPC_REQUEST, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name, b"", {}, str(exc.details())
        meta = {k: str(v) for k, v in info.initial_metadata()}
        return info.code().name, reply, meta, ""


def verify_grpc(target: Target) -> None:
    code, reply, meta, details = grpc_call(target.url)
    if code != "OK" or reply != GRPC_REPLY:
        raise RuntimeError(f"{target.label}: gRPC {GRPC_PATH} -> {code} {details!r} {reply!r}")
    if target.proxied and meta.get("x-seen-bench") != ADDED_HEADER[1]:
        raise RuntimeError(f"{target.label}: the backend did not see X-Bench: {meta}")


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

    main = target.kinds[0]  # small64 (wrk), h2small or grpc (h2load)
    return {
        "rps": med(main, "rps"),
        "p50_ms": med(main, "p50_ms"),
        "p99_ms": med(main, "p99_ms"),
        "cpu_pct": med(main, "sut_cpu_pct"),
        "rps_per_core": med(main, "rps_per_core"),
        "other_cpu_pct": med(main, "other_cpu_pct"),
        "sys_pct": med(main, "sut_sys_pct"),
        "load_cpu_pct": med(main, "load_cpu_pct"),
        "p50_8conn_ms": med("small8", "p50_ms"),
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
        if t.protocol != "h1":
            continue
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


def print_h2_table(
    protocol: str, targets: list[Target], summary: dict[str, dict[str, Any]]
) -> None:
    """The HTTP/2 ("h2") or gRPC ("grpc") rows: one h2load run per round each."""
    nginx = summary.get(f"{protocol}-nginx", {}).get("rps")
    direct = summary.get(f"{protocol}-direct", {}).get("rps")
    cols = [
        "target",
        "req/s",
        "p50",
        "p99",
        "vs nginx",
        "vs direct",
        "cpu%",
        "req/s/core",
        "other%",
        "load%",
    ]
    rows: list[list[str]] = []
    for t in targets:
        if t.protocol != protocol:
            continue
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
                fmt(ratio(s["rps"], nginx), ".2f", "x"),
                fmt(ratio(s["rps"], direct), ".2f", "x"),
                fmt(s["cpu_pct"], ".0f"),
                fmt(s["rps_per_core"], ",.0f"),
                fmt(s["other_cpu_pct"], ".0f"),
                fmt(s["load_cpu_pct"], ".0f"),
            ]
        )
    if rows:
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
    summary: dict[str, dict[str, Any]],
    idle: dict[str, Any],
    lookup: dict[str, Any],
    scale: list[dict[str, Any]] | None = None,
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
        f"gatewayd 1 worker req/s >= {T_RPS_VS_NGINX:.0%} of nginx (access log off)",
        r,
        T_RPS_VS_NGINX,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of nginx",
    )
    gl = summary.get("gatewayd1-log", {})
    r = ratio(gl.get("rps"), n.get("rps"))
    kept = ratio(gl.get("rps"), g.get("rps"))
    check(
        f"gatewayd 1 worker, default text access log, req/s >= {T_RPS_LOG_VS_NGINX:.0%} of nginx",
        r,
        T_RPS_LOG_VS_NGINX,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of nginx; the log costs "
        f"{fmt(None if kept is None else (1 - kept) * 100, '.0f', '%')} of the log-off req/s",
    )
    g2, n2 = summary.get("h2-gatewayd1", {}), summary.get("h2-nginx", {})
    r = ratio(g2.get("rps"), n2.get("rps"))
    check(
        f"HTTP/2: gatewayd 1 worker req/s >= {T_H2_RPS_VS_NGINX:.0%} of nginx",
        r,
        T_H2_RPS_VS_NGINX,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of nginx (h2c downstream, HTTP/1.1 upstream)",
    )
    base = summary.get("gatewayd1-base")
    if base is not None:
        for attr, what in (("rps", "req/s"), ("mb_s_64k", "64 KiB MB/s")):
            r = ratio(g.get(attr), base.get(attr))
            check(
                f"HTTP/1.1: gatewayd 1 worker {what} >= {T_VS_BASELINE:.0%} of the baseline",
                r,
                T_VS_BASELINE,
                below=False,
                detail=f"{fmt(r and r * 100, '.0f', '%')} of the baseline's "
                f"{fmt(base.get(attr), ',.0f')}",
            )
    c = summary.get("ceiling", {})
    r = ratio(g.get("rps"), c.get("rps"))
    check(
        f"gatewayd 1 worker req/s >= {T_RPS_VS_CEILING:.0%} of the Python ceiling",
        r,
        T_RPS_VS_CEILING,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of the ceiling's {fmt(c.get('rps'), ',.0f')} "
        f"req/s; per core used {fmt(ratio(g.get('rps_per_core'), c.get('rps_per_core')), '.0%')}",
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
        f"p99 added over direct at 8 connections <= {T_P99_ADDED_MS:g} ms",
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
    p50_added = None
    if g.get("p50_8conn_ms") is not None and d.get("p50_8conn_ms") is not None:
        p50_added = g["p50_8conn_ms"] - d["p50_8conn_ms"]
    # wrk keeps 8 requests in flight and the proxy's core is busy all the time, so p50
    # there is about 8 times the proxy's CPU per request (Little's law): the ceiling's
    # own figure, measured in the same run, is what Python allows for this wire work.
    ceiling_added = ""
    if p50_added is not None and c.get("p50_8conn_ms") is not None:
        ceiling_added = f"; the Python ceiling adds {c['p50_8conn_ms'] - d['p50_8conn_ms']:+.3f} ms"
    check(
        f"p50 added over direct at 8 connections <= {T_P50_ADDED_MS:g} ms",
        p50_added,
        T_P50_ADDED_MS,
        below=True,
        detail="-"
        if p50_added is None
        else f"{p50_added:+.3f} ms (medians: gatewayd {g['p50_8conn_ms']:.3f} ms, "
        f"direct {d['p50_8conn_ms']:.3f} ms{ceiling_added})",
    )
    r = ratio(g.get("mb_s_64k"), n.get("mb_s_64k"))
    check(
        f"64 KiB MB/s >= {T_MBPS_VS_NGINX:.0%} of nginx",
        r,
        T_MBPS_VS_NGINX,
        below=False,
        detail=f"{fmt(r and r * 100, '.0f', '%')} of nginx",
    )
    gi = idle.get("gatewayd1", {})
    held = gi.get("rss_held_mb") if gi.get("connections") else None
    check(
        f"{idle.get('count', 10000):,} idle conns RSS <= {T_IDLE_RSS_MB:.0f} MB",
        held,
        T_IDLE_RSS_MB,
        below=True,
        detail=f"{fmt(held, '.1f', ' MB')} with {gi.get('connections', 0):,} connections",
    )
    big = max((r for r in scale or [] if "error" not in r), key=lambda r: r["routes"], default=None)
    if big is not None:
        size = f"{big['routes']:,}"
        for key, what in (("startup_s", "start-up to /ready"), ("reload_s", "reload")):
            check(
                f"{size} HTTPRoutes: {what} <= {T_SCALE_S:g} s",
                big[key],
                T_SCALE_S + 1e-9,
                below=True,
                detail=f"{big[key]:.2f} s",
            )
        check(
            f"{size} HTTPRoutes: no request slower than {T_RELOAD_STALL_MS:g} ms during a reload",
            big["longest_request_ms"],
            T_RELOAD_STALL_MS + 1e-9,
            below=True,
            detail=f"longest {big['longest_request_ms']:,.0f} ms of {big['loop_requests']:,} "
            f"requests ({big['loop_errors']} errors)",
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


def export_gatewayd(ref: str, tree: Path) -> Path:
    """``gatewayd/`` of commit ``ref`` in ``tree`` (``git archive``), checked to be the
    package ``python -m gatewayd`` imports when run from ``tree``."""
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "gatewayd"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if archive.returncode != 0:
        raise RuntimeError(f"git archive {ref}: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    # The current directory comes first on sys.path with -m: check that it wins over
    # this checkout's (editable) install.
    where = subprocess.run(
        [PYTHON, "-c", "import gatewayd; print(gatewayd.__file__)"],
        capture_output=True,
        text=True,
        cwd=tree,
        timeout=60,
        check=False,
    ).stdout.strip()
    if not where.startswith(str(tree)):
        raise RuntimeError(f"the baseline imports gatewayd from {where!r}, not {tree}")
    return tree


# --------------------------------------------------------------------------- main


def require_tools(h2: bool) -> None:
    missing = [t for t in ("nginx", "wrk", *(["h2load"] if h2 else [])) if shutil.which(t) is None]
    if missing:
        sys.exit(
            f"bench: {' and '.join(missing)} not found. `make bench` installs them with apt-get "
            "(packages nginx-light or nginx, wrk, and nghttp2-client for h2load); or run: "
            "apt-get install -y nginx-light wrk nghttp2-client"
        )


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = max(soft, want) if hard == resource.RLIM_INFINITY else min(hard, max(soft, want))
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def gatewayd_run_help(cmd: list[str], cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [*cmd, "run", "--help"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return done.stdout


ALL_TARGETS = (
    "direct",
    "nginx",
    "gatewayd1",
    "gatewayd1-log",
    "gatewayd-all",
    "ceiling",
    "ceiling-asyncio",
    "naive",
    "h2-direct",
    "h2-nginx",
    "h2-gatewayd1",
    "grpc-direct",
    "grpc-nginx",
    "grpc-gatewayd1",
)
# Not measured unless named in --targets: what uvloop adds to the ceiling.
DEFAULT_TARGETS = tuple(t for t in ALL_TARGETS if t != "ceiling-asyncio")
KINDS = {"small64": ("/small", 64), "small8": ("/small", 8), "big64": ("/64k", 64)}


@dataclass(frozen=True)
class H2Kind:
    """One h2load measurement: the path, the request and the body each answer must hold."""

    protocol: str  # "h2" or "grpc"
    path: str
    body_len: int  # bytes of DATA per answer (checked: a 200 without them is an error)
    headers: tuple[str, ...] = ()
    grpc: bool = False  # POST the framed GRPC_REQUEST


H2_KINDS = {
    "h2small": H2Kind("h2", "/small", len(SMALL_BODY)),
    "grpc": H2Kind("grpc", GRPC_PATH, len(grpc_frame(GRPC_REPLY)), GRPC_HEADERS, grpc=True),
}


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
        self.bh2port = 0  # the backend's h2c port (HTTP/2 and gRPC "direct" rows)

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
        self.bport, self.bh2port = free_port(), free_port()
        conf = nginx_backend_conf(self.tmp, self.bport, self.bh2port)
        backend = self.backend = self.start_nginx("backend", conf, self.bport)
        wait_until(lambda: self.listening(backend, self.bh2port), 10, "backend h2c")
        h2 = f"http://127.0.0.1:{self.bh2port}"
        return Target(
            "direct",
            "direct (wrk -> nginx backend)",
            f"http://127.0.0.1:{self.bport}",
            placement="direct",
            proxied=False,
            urls={"h2": h2, "grpc": h2},
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
        port, h2port = free_port(), free_port()
        conf = nginx_proxy_conf(self.tmp, port, self.bport, h2port, self.bh2port)
        proc = self.start_nginx("nginxproxy", conf, port)
        wait_until(lambda: self.listening(proc, h2port), 10, "nginx proxy h2c")
        h2 = f"http://127.0.0.1:{h2port}"
        return Target(
            "nginx",
            "nginx proxy (1 worker)",
            f"http://127.0.0.1:{port}",
            proc=proc,
            urls={"h2": h2, "grpc": h2},
        )

    def start_gatewayd(
        self,
        key: str,
        workers: int | None,
        tree: Path | None = None,
        label: str = "",
        access_log: str = "off",
    ) -> Target:
        """gatewayd on a generated config; ``tree``: the package exported from an older
        commit (``--baseline``), run from that directory so its ``gatewayd`` is imported.
        ``access_log``: ``--access-log`` (the log goes to stdout, which ``Processes``
        writes to the row's log file)."""
        port, admin, grpc_port = free_port(), free_port(), free_port()
        config = gatewayd_config(self.tmp, port, self.bport, grpc_port, self.bh2port)
        cmd = [PYTHON, "-m", "gatewayd"] if tree is not None else self.gatewayd_cmd
        run_help = gatewayd_run_help(cmd, tree or ROOT) if tree is not None else self.run_help
        argv = [
            *cmd, "run",
            "--config", str(config),
            "--admin-address", f"127.0.0.1:{admin}",
            "--access-log", access_log,
            # The idle-connection test holds --idle-conns connections at once.
            "--max-connections", str(self.args.idle_conns + 10000),
            "--idle-timeout", "600",
        ]  # fmt: skip
        if "--no-watch" in run_help:
            argv.append("--no-watch")
        if workers is not None and "--workers" in run_help:
            argv += ["--workers", str(workers)]
        proc = self.procs.start(key, argv, cwd=tree or ROOT)

        def ready() -> bool:
            self.procs.check_alive(proc)
            return http_get(f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200

        wait_until(ready, 30, f"{key} /ready")
        if workers is None or workers == 1:
            label, placement = label or "gatewayd 1 worker", "split"
        else:
            label, placement = label or f"gatewayd all workers ({workers})", "all"
        url = f"http://127.0.0.1:{port}"
        # h2c shares the HTTP listener (prior knowledge); gRPC has a listener of its own.
        urls = {"h2": url, "grpc": f"http://127.0.0.1:{grpc_port}"}
        return Target(key, label, url, proc=proc, placement=placement, urls=urls)

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

    def start_ceiling(self, plain_asyncio: bool = False) -> Target:
        """loadtest/ceiling_proxy.py: the smallest uvloop + httptools proxy doing the
        same wire work (the "Python ceiling" row); on asyncio's own loop if asked."""
        port = free_port()
        argv = [
            PYTHON, str(ROOT / "loadtest" / "ceiling_proxy.py"),
            "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{self.bport}",
            "--set-header", f"{ADDED_HEADER[0]}: {ADDED_HEADER[1]}",
        ]  # fmt: skip
        key, label = "ceiling", "Python ceiling (uvloop + httptools)"
        if plain_asyncio:
            argv.append("--asyncio")
            key, label = "ceiling-asyncio", "Python ceiling on plain asyncio"
        proc = self.procs.start(key, argv)
        wait_until(lambda: self.listening(proc, port), 20, label)
        return Target(key, label, f"http://127.0.0.1:{port}", proc=proc)

    def start_targets(self, wanted: list[str]) -> list[Target]:
        """Start what the wanted rows need; rows of one process share it (the HTTP/2 and
        gRPC rows of nginx and gatewayd 1 worker are other listeners of the same process)."""
        direct = self.start_backend()
        rows: dict[str, Target] = {"direct": direct}
        if {"nginx", "h2-nginx", "grpc-nginx"} & set(wanted):
            rows["nginx"] = self.start_nginx_proxy()
        if {"gatewayd1", "h2-gatewayd1", "grpc-gatewayd1"} & set(wanted):
            rows["gatewayd1"] = self.start_or_note(
                "gatewayd1",
                "gatewayd 1 worker",
                lambda: self.start_gatewayd("gatewayd1", 1 if self.has_workers else None),
            )
        if "gatewayd1-log" in wanted:
            rows["gatewayd1-log"] = self.start_or_note(
                "gatewayd1-log",
                "gatewayd 1 worker, text access log",
                lambda: self.start_gatewayd(
                    "gatewayd1-log",
                    1 if self.has_workers else None,
                    label="gatewayd 1 worker, text access log",
                    access_log="text",
                ),
            )
        if "gatewayd-all" in wanted:
            if self.has_workers:
                rows["gatewayd-all"] = self.start_or_note(
                    "gatewayd-all",
                    "gatewayd all workers",
                    lambda: self.start_gatewayd("gatewayd-all", self.ncpu),
                )
            else:
                rows["gatewayd-all"] = Target(
                    "gatewayd-all", "gatewayd all workers", note="no --workers yet"
                )
        if "ceiling" in wanted:
            rows["ceiling"] = self.start_ceiling()
        if "ceiling-asyncio" in wanted:
            rows["ceiling-asyncio"] = self.start_ceiling(plain_asyncio=True)
        if "naive" in wanted:
            rows["naive"] = self.start_naive()
        if self.args.baseline:
            rows["gatewayd1-base"] = self.start_or_note(
                "gatewayd1-base",
                f"gatewayd 1 worker @{self.args.baseline}",
                self.start_baseline,
            )
        for proto, kind in (("h2", "h2small"), ("grpc", "grpc")):
            for base in ("direct", "nginx", "gatewayd1"):
                key = f"{proto}-{base}"
                if key in wanted:
                    rows[key] = self.derive(rows[base], key, proto, kind)
        order = [*wanted, "gatewayd1-base"]
        if "gatewayd1" in order:  # the baseline row next to the row it is compared with
            order.insert(order.index("gatewayd1") + 1, order.pop())
        return [rows[k] for k in order if k in rows]

    def start_baseline(self) -> Target:
        """gatewayd 1 worker from the commit ``--baseline`` (``git archive`` of gatewayd/,
        run with this venv's packages) for the "no worse than before" check."""
        ref = self.args.baseline
        tree = export_gatewayd(ref, self.tmp / "baseline")
        return self.start_gatewayd(
            "gatewayd1-base", 1, tree=tree, label=f"gatewayd 1 worker @{ref}"
        )

    def derive(self, base: Target, key: str, proto: str, kind: str) -> Target:
        """The row of another listener of ``base``'s process, measured with h2load."""
        label = {
            "direct": "direct (h2load -> nginx backend)",
            "nginx": "nginx proxy (1 worker)",
            "gatewayd1": "gatewayd 1 worker",
        }[base.key]
        return Target(
            key,
            label,
            base.urls.get(proto, "") if base.available else "",
            proc=base.proc,
            placement=base.placement,
            proxied=base.proxied,
            note=base.note,
            kinds=(kind,),
        )

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
            reason = str(exc).splitlines()[0][len(t.label) :].strip(" :")
            t.note = f"failed the check: {reason}"
            if t.key == "grpc-gatewayd1":
                # The probe is the answer: a gatewayd that does not serve GRPCRoutes yet
                # (or not this one) answers the call with an error status.
                t.note = f"skipped: GRPCRoute not served (probe: {reason})"
            t.url = ""

    # ---- measuring

    def measure(self, t: Target, kind: str, duration: float) -> WrkResult:
        assert self.backend is not None
        self.procs.check_alive(self.backend)
        self.procs.check_alive(self.sut_proc(t))
        wrk_cpus = self.place(t)
        sut_cpus = SUT_CPUS if wrk_cpus is not None else None
        if kind in H2_KINDS:
            return self.measure_h2(t, H2_KINDS[kind], duration, wrk_cpus, sut_cpus)
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

    def measure_h2(
        self,
        t: Target,
        kind: H2Kind,
        duration: float,
        load_cpus: set[int] | None,
        sut_cpus: set[int] | None,
    ) -> WrkResult:
        data = None
        if kind.grpc:
            data = self.tmp / "grpc-request"
            data.write_bytes(grpc_frame(GRPC_REQUEST))
        log_file = self.tmp / "h2load.log"
        argv = h2load_argv(
            t.url + kind.path,
            connections=self.args.h2_conns,
            streams=self.args.h2_streams,
            duration=duration,
            threads=self.args.threads,
            log_file=log_file,
            data_file=data,
            headers=kind.headers,
        )
        return run_h2load(
            argv,
            log_file=log_file,
            body_len=kind.body_len,
            connections=self.args.h2_conns,
            duration=duration,
            cpus=load_cpus,
            sut_pids=self.cpu_pids(t),
            sut_cpus=sut_cpus,
            load_cpus=load_cpus,
        )

    def rounds(self, live: list[Target]) -> None:
        warm = min(2.0, self.args.duration)
        for t in live:
            self.measure(t, t.kinds[0], warm)
        log(f"warmed up ({warm:g}s each)")
        for rnd in range(self.args.rounds):
            for t in live:
                for kind in t.kinds:
                    r = self.measure(t, kind, self.args.duration)
                    t.runs.setdefault(kind, []).append(asdict(r))
                    log(
                        f"round {rnd + 1}/{self.args.rounds} {t.key:<14} {kind:<7} "
                        f"{r.rps:>9,.0f} req/s p50 {r.p50_ms:.3f}ms p99 {r.p99_ms:.3f}ms "
                        f"{r.transfer_mb_s:,.1f} MB/s cpu {r.sut_cpu_pct:.0f}%"
                        + (f" ERRORS {r.errors}" if r.errors else "")
                        + (f" {r.error_detail}" if r.errors and r.error_detail else "")
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
        """py-spy record (raw collapsed stacks) on gatewayd during one run of the row's
        first kind (wrk /small at 64 connections, or its h2load run)."""
        spy = Path(PYTHON).parent / "py-spy"
        if not spy.exists():
            return {"note": "py-spy not installed (.venv/bin/pip install py-spy)"}
        pid = self.worker_pids(t)[0]
        raw = self.tmp / "profile.txt"
        raw.unlink(missing_ok=True)
        dur = max(3, int(self.args.duration))
        log(f"profile: py-spy record on pid {pid} for {dur}s under {t.key} {t.kinds[0]}")
        argv = [str(spy), "record", "-p", str(pid), "-d", str(dur), "-r", "200", "-f", "raw"]
        spy_proc = self.procs.start("py-spy", [*argv, "-o", str(raw)])
        time.sleep(1.0)  # py-spy attaching: it has no readiness signal to wait on
        result = self.measure(t, t.kinds[0], dur)
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
        kept = RESULTS / f"profile-{t.key}.txt"
        shutil.copy(raw, kept)
        top = sorted(selfs.items(), key=lambda kv: -kv[1])[:20]
        return {
            "label": f"{t.label} ({t.key}, {t.kinds[0]})",
            "samples": total,
            "rps_while_profiled": result.rps,
            "collapsed_stacks": str(kept.relative_to(ROOT)),
            "top": [{"frame": f, "self_pct": 100 * c / max(1, total)} for f, c in top],
        }


def print_idle(idle: dict[str, Any]) -> None:
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
    streams = f"{args.h2_conns} connections x {args.h2_streams} streams"
    if any(t.protocol == "h2" for t in targets):
        print(
            f"HTTP/2 downstream (h2load, h2c prior knowledge, {streams}, GET /small; "
            "proxies reach the backend over kept-alive HTTP/1.1):"
        )
        print_h2_table("h2", targets, summary)
        print()
    if any(t.protocol == "grpc" for t in targets):
        print(
            f"gRPC unary (h2load, {streams}, POST {GRPC_PATH}, {len(GRPC_REQUEST)}-byte "
            f"message, answered with {len(GRPC_REPLY)} bytes and grpc-status 0; proxies "
            "reach the backend over HTTP/2: nginx grpc_pass, gatewayd GRPCRoute):"
        )
        print_h2_table("grpc", targets, summary)
        print()
    for v in verdicts:
        print(f"{v['verdict']:<5}  {v['check']}: {v['detail']}")
    print()
    print_idle(idle)
    if lookup.get("output"):
        print("route lookup (loadtest/bench_lookup.py):")
        for line in lookup["output"]:
            print("  " + line)
    elif lookup:
        print(f"route lookup: n/a ({lookup.get('note')})")
    for prof in profile.values():
        print()
        if not prof.get("top"):
            print(f"profile: {prof.get('note')}")
            continue
        print(
            f"py-spy on {prof['label']}: self time, {prof['samples']} samples, "
            f"{prof['rps_while_profiled']:,.0f} req/s while sampled; stacks in "
            f"{prof['collapsed_stacks']}"
        )
        for row in prof["top"]:
            print(f"  {row['self_pct']:5.1f}%  {row['frame']}")


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
        "--tcp-mib",
        type=int,
        default=256,
        help="TCP splice row (loadtest/bench_tcp.py): MiB per run, 0 skips it (256)",
    )
    ap.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated subset of {','.join(ALL_TARGETS)} (all but ceiling-asyncio)",
    )
    ap.add_argument(
        "--h2-conns", type=int, default=16, help="h2load connections (HTTP/2 and gRPC rows, 16)"
    )
    ap.add_argument(
        "--h2-streams",
        type=int,
        default=4,
        help="h2load concurrent streams per connection (-m, 4: 64 in flight like wrk's 64)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on gatewayd 1 worker under one extra run of each of its rows",
    )
    ap.add_argument(
        "--gatewayd",
        metavar="CMD",
        help="command that runs gatewayd (default: this python -m gatewayd)",
    )
    ap.add_argument(
        "--baseline",
        metavar="REF",
        help="also measure gatewayd 1 worker from this git commit (HTTP/1.1 rows), e.g. the "
        "tree before a change",
    )
    ap.add_argument(
        "--routes",
        default="10,1000,10000",
        help="HTTPRoute counts of the config-scale rows (10,1000,10000)",
    )
    ap.add_argument("--no-config-scale", action="store_true", help="skip the config-scale rows")
    ap.add_argument(
        "--cores",
        metavar="LIST",
        help="also the workers table: gatewayd --workers 1..N pinned to these CPUs "
        "(e.g. 0-1 or 2-5), wrk and the backend on the others",
    )
    ap.add_argument(
        "--only",
        choices=("config-scale", "workers", "idle"),
        help="run one part alone: the config-scale rows (no nginx or wrk needed), the "
        "workers table (needs --cores), or the idle-connection RSS of gatewayd 1 worker",
    )
    ap.add_argument("--output", type=Path, help="JSON path (loadtest/results/bench-DATE.json)")
    args = ap.parse_args(argv)
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(wanted) - set(ALL_TARGETS))
    if unknown:
        ap.error(f"unknown targets {unknown}: choose among {','.join(ALL_TARGETS)}")
    try:
        cores = bench_scale.parse_cores(args.cores) if args.cores else []
        route_counts = [int(n) for n in args.routes.split(",") if n.strip()]
    except ValueError as exc:
        ap.error(str(exc))
    if args.only == "workers" and not cores:
        ap.error("--only workers needs --cores")
    if args.only:
        wanted = ["gatewayd1"] if args.only == "idle" else []
    if args.only != "config-scale":
        require_tools(h2=any(w.startswith(("h2-", "grpc-")) for w in wanted))
    nofile = raise_nofile(args.idle_conns + 4096)
    scale_on = args.only == "config-scale" or (not args.only and not args.no_config_scale)
    workers_on = bool(cores) and args.only in (None, "workers")

    started = datetime.datetime.now(datetime.UTC)
    tmp = Path(tempfile.mkdtemp(prefix="gatewayd-bench-"))
    # gatewayd as installed, with its modules' bytecode (bench_scale.ensure_bytecode):
    # else each start-up would include compiling them, which no installed copy does.
    compiled = bench_scale.ensure_bytecode(ROOT)
    log(
        f"gatewayd's bytecode: {compiled} stale or missing module(s) compiled"
        if compiled
        else "gatewayd's bytecode: current"
    )
    bench = Bench(args, tmp)
    counted = [w for w in wanted if w != "gatewayd-all" or bench.has_workers]
    counted += ["gatewayd1-base"] if args.baseline else []
    n = len(counted)
    runs_per_round = sum(1 if w.startswith(("h2-", "grpc-")) else len(KINDS) for w in counted)
    measured = not args.only
    expected = (
        15
        + (n * min(2.0, args.duration) if measured else 0)
        + (args.rounds * runs_per_round * (args.duration + 0.3) if measured else 0)
        + (30 * 3 if args.idle_conns and args.only in (None, "idle") else 0)
        + (0 if args.no_lookup or not measured else 10)
        + (3 * (max(3, args.duration) + 5) if args.profile and measured else 0)
        # Start-up and reload were ~1.1 s per 1,000 HTTPRoutes each (issue 17), + spawns.
        + (sum(5 + 3 * c / 1000 for c in route_counts) if scale_on else 0)
        + (len(cores) * (5 + max(1, args.rounds) * (args.duration + 1)) if workers_on else 0)
    )
    what = (
        f"{n} targets, {runs_per_round} wrk/h2load runs x {args.rounds} rounds x {args.duration:g}s"
        if measured
        else f"--only {args.only}"
    )
    log(f"{what}: expect about {expected / 60:.1f} min in all (every step has a time limit)")
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        log(
            f"warning: the machine is busy before the bench starts (load average "
            f"{load_before[0]:.2f}): other processes compete for both CPUs, expect noise"
        )
    if bench.pinned and args.only != "config-scale":
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
    tcp: dict[str, Any] = {}
    scale: list[dict[str, Any]] = []
    workers: dict[str, Any] = {}
    try:
        targets = bench.start_targets(wanted) if wanted or workers_on else []
        for t in targets:
            if t.available:
                bench.verify_or_drop(t)
        live = [t for t in targets if t.available]
        if live:
            log(
                "targets answer (HTTP/1.1: /small and /64k; h2c: /small; gRPC: a grpcio call); "
                "the backend sees each proxy's X-Bench"
            )
        if measured:
            bench.rounds(live)
        if args.profile:
            for t in live:
                if t.key in ("gatewayd1", "h2-gatewayd1", "grpc-gatewayd1"):
                    profile[t.key] = bench.profile(t)
        if args.idle_conns and args.only in (None, "idle"):
            idle = bench.idle(live)
        if not args.no_lookup and measured:
            log("route lookup micro-benchmark (loadtest/bench_lookup.py)")
            lookup = lookup_bench()
        if args.tcp_mib > 0 and not args.only:
            import bench_tcp  # loadtest/ is this script's directory

            log("TCP splice row: gatewayd (TCPRoute), direct, haproxy (loadtest/bench_tcp.py)")
            tcp = bench_tcp.run(args.tcp_mib, 8, bench.gatewayd_cmd, log=log)

        if workers_on:
            try:
                workers = bench_scale.workers_scale(bench, cores)
            except RuntimeError as exc:
                log(f"workers table failed: {exc}")
                workers = {"error": str(exc).splitlines()[0]}
        if scale_on:
            scale = bench_scale.config_scale(tmp, route_counts)
    except BaseException:
        for p in bench.procs.procs:
            if p.tail():
                print(f"--- last lines of {p.name}'s output:\n{p.tail()}", file=sys.stderr)
        raise
    finally:
        bench.procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {t.key: summarise(t) for t in targets if t.available}
    verdicts = checks(summary, idle, lookup, scale) if measured else []
    if measured:
        print_report(args, targets, summary, verdicts, idle, lookup, profile)
    elif idle:
        print()
        print_idle(idle)
    if tcp:
        import bench_tcp

        bench_tcp.print_table(tcp, args.tcp_mib, 8)
    if workers:
        print()
        bench_scale.print_workers(workers)
    if scale:
        print()
        bench_scale.print_config_scale(scale)
        if not measured:  # the full report printed these checks with the others
            verdicts = [v for v in checks({}, {}, {}, scale) if "HTTPRoutes" in v["check"]]
            print()
            for v in verdicts:
                print(f"{v['verdict']:<5}  {v['check']}: {v['detail']}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = args.output or RESULTS / f"bench-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    result = {
        "date": started.isoformat(),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "wrk_threads": args.threads,
        "h2load": {"connections": args.h2_conns, "streams_per_connection": args.h2_streams},
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
        "tcp_splice": tcp,
        "config_scale": scale,
        "workers": workers,
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
