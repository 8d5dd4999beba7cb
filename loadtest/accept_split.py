"""How ``gatewayd run --workers N`` shares connections between its workers, and how fast
it accepts them.  Loopback only; every process started here is stopped on the way out.

Two figures, neither asserted anywhere (the e2e test ``test_e2e_accept.py`` asserts the
fair share):

- split: ``--conns`` connections opened at once (non-blocking connects in a tight loop),
  one keep-alive request on each, then which worker holds each connection (read from
  /proc: the socket inodes of each worker's descriptors), over ``--rounds`` rounds, each
  starting once the workers have closed the last round's connections;
- accept rate: ``--short`` short connections (connect, one ``Connection: close``
  request, read to EOF) by ``--concurrency`` client threads, timed, with the CPU time
  the workers used per connection (from /proc; less noisy than the rate on a shared
  machine).

``PYTHONPATH=<an older checkout>`` measures that version (the daemon runs outside the
checkout, so PYTHONPATH decides what it imports).

The Gateway has a listener and no route: every request is answered 404 by gatewayd
itself, so no backend limits the rate.

    .venv/bin/python loadtest/accept_split.py --workers 2 --conns 64 100 --short 5000
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    free_port,
    gateway,
    gateway_class,
    listener,
    read_response_head,
)
from test_e2e_accept import wait_connected, wait_settled
from test_e2e_operations import owners, worker_pids

REQUEST = b"GET /accept HTTP/1.1\r\nHost: accept.test\r\n\r\n"
CLOSE_REQUEST = b"GET /accept HTTP/1.1\r\nHost: accept.test\r\nConnection: close\r\n\r\n"


def split(port: int, pids: list[int], count: int) -> list[int]:
    """Connections held by each worker after ``count`` were opened back to back."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.setblocking(False)
        for s in socks:
            s.connect_ex((LOCALHOST, port))
        wait_connected(socks)
        for s in socks:
            s.sendall(REQUEST)
        for s in socks:
            head, _ = read_response_head(s)
            assert head.startswith(b"HTTP/1.1 404"), head
        held = owners(port, pids)
        return [len(held[p]) for p in pids]
    finally:
        for s in socks:
            s.close()
        wait_settled(port)


def accept_rate(port: int, total: int, concurrency: int) -> float:
    """Short connections per second: ``total`` of them over ``concurrency`` threads."""
    left = [total]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        try:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                with socket.create_connection((LOCALHOST, port), timeout=10.0) as s:
                    s.sendall(CLOSE_REQUEST)
                    while s.recv(65536):
                        pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    took = time.perf_counter() - started
    if errors:
        raise errors[0]
    return total / took


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--conns", type=int, nargs="+", default=[64, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--short", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="accept-rate runs (median shown)")
    args = parser.parse_args()
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Gatewayd(
            Path(tmp), docs, args=["--workers", str(args.workers), "--access-log", "off"]
        )
        try:
            pids = worker_pids(daemon)
            for count in args.conns:
                rounds = [split(port, pids, count) for _ in range(args.rounds)]
                print(f"{count} connections at once, per worker, {args.rounds} rounds: {rounds}")
            rates = []
            for _ in range(args.runs):
                before = [cpu_seconds(p) for p in pids]
                rates.append(accept_rate(port, args.short, args.concurrency))
                used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
                print(
                    f"{args.short} short connections ({args.concurrency} clients): "
                    f"{rates[-1]:.0f}/s; worker CPU {sum(used) / args.short * 1e6:.0f} us per "
                    f"connection, split {' / '.join(f'{u / sum(used):.0%}' for u in used)}"
                )
            rates.sort()
            print(f"median {rates[len(rates) // 2]:.0f} connections/s")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
