"""TCP splice row of ``make bench``: MB/s through gatewayd (a TCPRoute) against a direct
connection and HAProxy in TCP mode.

One run, on loopback: a sink backend (its own process) reads everything a client sends
until the client's FIN, then answers the byte count and closes; the client (this
process) sends ``--mib`` MiB per connection on ``1`` and on ``--parallel`` connections
at once and times each run from the first byte to the backend's answer (so the half-close
travels through the proxy too).  MB/s is 10**6 bytes per second over all connections.

- direct: the client connects to the sink itself;
- gatewayd: ``gatewayd run --workers 1``, a Gateway TCP listener and a TCPRoute to the sink
  (the splice path of proxy/splice.py);
- haproxy: ``mode tcp``, one thread, default buffers (no kernel splicing: ``option
  splice-*`` is off by default).

Placement as in bench.py: the proxy on CPU 0, the sink and the client on the other CPU.
Standalone: ``python loadtest/bench_tcp.py [--mib N] [--parallel N]``; bench.py calls
``run()`` for its TCP table.  Every process started here is stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CHUNK = 1 << 20
_CPUS = sorted(os.sched_getaffinity(0))
SUT_CPUS = set(_CPUS[:1])
LOAD_CPUS = set(_CPUS[1:]) or SUT_CPUS
STEP_TIMEOUT = 120.0  # seconds for one measured run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- sink


def serve_sink(port: int) -> None:
    """The backend: per connection, read until FIN, answer the count, close."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)

    def handle(conn: socket.socket) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        total = 0
        with conn:
            conn.settimeout(STEP_TIMEOUT)
            while True:
                n = conn.recv_into(view)
                if not n:
                    break
                total += n
            conn.sendall(f"{total}\n".encode())

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# --------------------------------------------------------------------------- client


def _send(port: int, nbytes: int, results: list[int], errors: list[str]) -> None:
    payload = b"\x5a" * CHUNK
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT) as s:
            left = nbytes
            while left > 0:
                n = min(left, CHUNK)
                s.sendall(payload[:n] if n < CHUNK else payload)
                left -= n
            s.shutdown(socket.SHUT_WR)
            answer = b""
            for _ in range(64):
                part = s.recv(64)
                if not part:
                    break
                answer += part
            results.append(int(answer.strip() or b"-1"))
    except (OSError, ValueError) as exc:
        errors.append(f"{type(exc).__name__}: {exc}")


def measure(port: int, mib: int, parallel: int) -> dict[str, Any]:
    """MB/s of ``parallel`` connections each sending ``mib`` MiB through ``port``."""
    nbytes = mib * CHUNK
    results: list[int] = []
    errors: list[str] = []
    threads = [
        threading.Thread(target=_send, args=(port, nbytes, results, errors), daemon=True)
        for _ in range(parallel)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(STEP_TIMEOUT)
    elapsed = time.perf_counter() - started
    ok = not errors and len(results) == parallel and all(r == nbytes for r in results)
    return {
        "connections": parallel,
        "bytes": nbytes * parallel,
        "seconds": round(elapsed, 3),
        "mb_s": round(nbytes * parallel / elapsed / 1e6, 1) if ok else None,
        "errors": errors or ([] if ok else [f"backend counted {results}, sent {nbytes} each"]),
    }


# --------------------------------------------------------------------------- targets


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout:.0f}s")


def _pin(pid: int, cpus: set[int]) -> None:
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def gatewayd_config(tmp: Path, port: int, sink_port: int) -> Path:
    path = tmp / "tcp-bench.yaml"
    path.write_text(
        f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: gatewayd}}
spec: {{controllerName: gatewayd.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: bench, namespace: default}}
spec:
  gatewayClassName: gatewayd
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: tcp, port: {port}, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata: {{name: sink, namespace: default}}
spec: {{ports: [{{name: tcp, port: 9000, protocol: TCP}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sink-1
  namespace: default
  labels: {{kubernetes.io/service-name: sink}}
addressType: IPv4
ports: [{{name: tcp, port: {sink_port}, protocol: TCP}}]
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: sink, namespace: default}}
spec:
  parentRefs: [{{name: bench}}]
  rules: [{{backendRefs: [{{name: sink, port: 9000}}]}}]
"""
    )
    return path


def haproxy_config(tmp: Path, port: int, sink_port: int) -> Path:
    path = tmp / "haproxy-tcp.cfg"
    path.write_text(
        f"""\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
listen splice
    bind 127.0.0.1:{port}
    server sink 127.0.0.1:{sink_port}
"""
    )
    return path


def run(
    mib: int = 256,
    parallel: int = 8,
    gatewayd_cmd: list[str] | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Measure every target once; ``{target: {"single": ..., "parallel": ...} | note}``."""
    tmp = Path(tempfile.mkdtemp(prefix="gatewayd-bench-tcp-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, Any] = {}
    pinned = len(_CPUS) > 1
    old_affinity = os.sched_getaffinity(0)

    def start(name: str, argv: list[str], cpus: set[int]) -> subprocess.Popen[bytes]:
        out = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
        )
        out.close()
        procs.append(proc)
        if pinned:
            _pin(proc.pid, cpus)
        return proc

    try:
        if pinned:
            os.sched_setaffinity(0, LOAD_CPUS)  # the client threads: with the sink
        sink_port = free_port()
        sink = start("sink", [PYTHON, __file__, "--serve", str(sink_port)], LOAD_CPUS)
        _wait_port(sink_port, 10, sink)
        targets: list[tuple[str, int | None, str]] = [("direct", sink_port, "")]

        gw_port = free_port()
        cmd = gatewayd_cmd or [PYTHON, "-m", "gatewayd"]
        gw = start(
            "gatewayd",
            [
                *cmd,
                "run",
                "--workers",
                "1",
                "--access-log",
                "off",
                "--no-watch",
                "--admin-address",
                f"127.0.0.1:{free_port()}",
                "--config",
                str(gatewayd_config(tmp, gw_port, sink_port)),
            ],
            SUT_CPUS,
        )
        try:
            _wait_port(gw_port, 30, gw)
            if pinned:
                _pin(gw.pid, SUT_CPUS)
            targets.append(("gatewayd", gw_port, ""))
        except RuntimeError as exc:
            targets.append(("gatewayd", None, f"not started: {exc}"))

        haproxy = shutil.which("haproxy")
        if haproxy is None:
            targets.append(("haproxy", None, "haproxy not installed (make bench installs it)"))
        else:
            hp_port = free_port()
            hp = start(
                "haproxy",
                [haproxy, "-db", "-f", str(haproxy_config(tmp, hp_port, sink_port))],
                SUT_CPUS,
            )
            try:
                _wait_port(hp_port, 10, hp)
                targets.append(("haproxy", hp_port, ""))
            except RuntimeError as exc:
                targets.append(("haproxy", None, f"not started: {exc}"))

        for name, port, note in targets:
            if port is None:
                results[name] = {"note": note}
                log(f"tcp splice {name}: skipped ({note})")
                continue
            measure(port, 8, 1)  # warm-up: connect paths, the sink's threads
            single = measure(port, mib, 1)
            multi = measure(port, max(1, mib // parallel), parallel)
            results[name] = {"single": single, "parallel": multi}
            log(
                f"tcp splice {name}: {single['mb_s']} MB/s on 1 connection, "
                f"{multi['mb_s']} MB/s on {parallel}"
            )
    finally:
        if pinned:
            os.sched_setaffinity(0, old_affinity)
        for proc in reversed(procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def print_table(results: dict[str, Any], mib: int, parallel: int) -> None:
    direct = results.get("direct", {}).get("single", {}).get("mb_s")
    print(f"\nTCP splice (MB/s, {mib} MiB on 1 connection; {mib // parallel} MiB x {parallel})")
    print(f"{'target':<10} {'1 conn':>10} {f'{parallel} conns':>10} {'vs direct':>10}  note")
    for name, row in results.items():
        if "note" in row:
            print(f"{name:<10} {'-':>10} {'-':>10} {'-':>10}  {row['note']}")
            continue
        one, many = row["single"]["mb_s"], row["parallel"]["mb_s"]
        vs = f"{one / direct:.2f}x" if one and direct else "-"
        errors = "; ".join(row["single"]["errors"] + row["parallel"]["errors"])
        print(f"{name:<10} {one or '-':>10} {many or '-':>10} {vs:>10}  {errors}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="TCP splice MB/s: gatewayd, direct, haproxy")
    ap.add_argument("--mib", type=int, default=256, help="MiB per run (256)")
    ap.add_argument("--parallel", type=int, default=8, help="connections of the 2nd run (8)")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.serve:
        serve_sink(args.serve)
        return 0
    results = run(args.mib, args.parallel)
    print_table(results, args.mib, args.parallel)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
