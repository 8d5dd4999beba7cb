"""CPU seconds of gatewayd per 100,000 gRPC unary calls (or, with ``--small``, HTTP/2 GET
/small requests), trees alternated (issue 12).

Wall-clock rates are unreliable on a shared machine; CPU time per call is not (much).
Starts the bench's nginx backend (h2c, the gRPC method), then for each round and each
tree given (``--tree PATH``: a checkout whose ``gatewayd`` package is imported through
PYTHONPATH, run with this venv's python) a ``gatewayd run --workers 1`` on the bench's
configuration, h2load ``-n CALLS`` unary calls on its gRPC listener, and the CPU time
(utime + stime, /proc) of the gatewayd process tree during the h2load run.  Prints the
median per tree.

    .venv/bin/python loadtest/grpc_cpu.py --tree /work/wt-base --tree . --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # loadtest/bench.py: configs and helpers


def measure(
    tree: Path,
    tmp: Path,
    bport: int,
    bh2port: int,
    calls: int,
    conns: int,
    streams: int,
    profile: Path | None = None,
    small: bool = False,
) -> float:
    port, admin, grpc_port = bench.free_port(), bench.free_port(), bench.free_port()
    config = bench.gatewayd_config(tmp, port, bport, grpc_port, bh2port)
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    argv = [
        sys.executable, "-m", "gatewayd", "run", "--config", str(config),
        "--admin-address", f"127.0.0.1:{admin}", "--access-log", "off",
        "--no-watch", "--workers", "1",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=tree, env=env, stdout=subprocess.DEVNULL)
    try:
        bench.wait_until(
            lambda: bench.http_get(f"http://127.0.0.1:{admin}/ready", timeout=1)[0] == 200,
            30,
            "gatewayd /ready",
        )
        if small:  # HTTP/2 GET /small on the HTTP listener (h2c), HTTP/1.1 upstream
            url = f"http://127.0.0.1:{port}/small"
            h2load = ["h2load", f"-c{conns}", f"-m{streams}"]
        else:
            body = tmp / "grpc-request"
            body.write_bytes(bench.grpc_frame(bench.GRPC_REQUEST))
            url = f"http://127.0.0.1:{grpc_port}{bench.GRPC_PATH}"
            h2load = ["h2load", f"-c{conns}", f"-m{streams}", "-d", str(body)]
            for h in bench.GRPC_HEADERS:
                h2load += ["-H", h]
        # Warm-up: connections, caches.
        subprocess.run([*h2load, "-n", str(max(calls // 20, 1000)), url], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        pids = bench.process_tree(proc.pid)
        spy = None
        if profile is not None:
            # py-spy on the worker (the last process of the tree), collapsed stacks.
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking",
                 "--format", "raw", "-r", "250", "-o", str(profile), "-p", str(pids[-1])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)
        u0, s0 = bench.cpu_times(pids)
        out = subprocess.run([*h2load, "-n", str(calls), url], check=True,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        u1, s1 = bench.cpu_times(pids)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        if f"{calls} succeeded" not in out.stdout and f"{calls} 2xx" not in out.stdout:
            status = [ln for ln in out.stdout.splitlines() if "requests:" in ln or "status" in ln]
            raise RuntimeError(f"h2load: not every call succeeded: {status}")
        return (u1 - u0 + s1 - s0) * 100_000 / calls
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--profile", type=Path, help="py-spy collapsed stacks (last tree, round)")
    ap.add_argument(
        "--small",
        action="store_true",
        help="HTTP/2 GET /small (h2c down, HTTP/1.1 up) instead of gRPC calls",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="grpc-cpu-") as t:
        tmp = Path(t)
        bport, bh2port = bench.free_port(), bench.free_port()
        conf = bench.nginx_backend_conf(tmp, bport, bh2port)
        nginx = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp)])
        try:
            bench.wait_until(lambda: bench.port_open(bh2port), 10, "nginx backend")
            results: dict[Path, list[float]] = {tree: [] for tree in args.tree}
            for r in range(args.rounds):
                for tree in args.tree:
                    cpu = measure(
                        tree, tmp, bport, bh2port, args.calls, args.conns, args.streams,
                        args.profile if tree == args.tree[-1] else None, args.small,
                    )  # fmt: skip
                    results[tree].append(cpu)
                    print(f"round {r + 1} {tree}: {cpu:.2f} CPU s / 100k calls", flush=True)
            for tree, values in results.items():
                print(f"median {tree}: {statistics.median(values):.2f} CPU s / 100k calls "
                      f"({', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
        finally:
            nginx.terminate()
            nginx.wait(timeout=30)
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
