"""Per-request CPU cost of ``make bench``'s HTTP/1.1 row in one process, without sockets.

``bench_h1_inproc.py`` times the proxy path with a one-rule stand-in table and no
filter.  The live bench (``bench.py``) runs something else: its HTTPRoute (PathPrefix
``/`` with a RequestHeaderModifier adding ``X-Bench: 1``) compiled into a real route
table, wrk's request (``GET /small`` with only a Host field) and nginx's answer (Server,
Date, Content-Type, Content-Length, Connection, X-Seen-Bench).  This tool compiles
bench.py's own configuration and replays that exchange over in-memory transports, so
what the route table, the header filter and the forwarding of a Host-only request
cost shows up as it does live.

It prints the minimum over ``--rounds`` of the µs per request, and the same split into
the request direction (the client's bytes in, the upstream request out) and the
response direction (the backend's bytes in, the response out, the request's end);
the split times each half separately, so its sum is a little above the total.

Compare two trees alternately in one sitting::

    PYTHONPATH=/path/to/old .venv/bin/python loadtest/bench_h1_route_inproc.py
    .venv/bin/python loadtest/bench_h1_route_inproc.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import gatewayd_config
from bench_h1_inproc import MemoryTransport

from gatewayd.proxy.http.h1_client import UpstreamConnection, endpoint_key
from gatewayd.proxy.server import HttpConnection, Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import load_documents
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.compiled import Snapshot

PORT = 18080  # the listener and backend ports only name things here: nothing listens
BACKEND_PORT = 18081
# wrk's request (it sends only Host) and the backend's answer to it (bench.py's nginx).
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % PORT
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 20:39:13 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 13\r\n"
    b"Connection: keep-alive\r\nX-Seen-Bench: 1\r\n\r\nhello, world\n"
)


def bench_snapshot() -> Snapshot:
    """bench.py's gatewayd configuration, loaded, resolved and compiled."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = gatewayd_config(Path(tmp), PORT, BACKEND_PORT)
        docs = [(str(p), p.read_text()) for p in sorted(cfg.rglob("*.yaml"))]
    loaded = load_documents(docs)
    return compile_snapshot(resolve(loaded.config), generation=1)


async def measure(
    requests: int, rounds: int, with_metrics: bool, tracing: dict[str, Any]
) -> tuple[float, float, float]:
    """(total, request direction, response direction), µs per request, minima."""
    snap = bench_snapshot()
    (key,) = snap.ports
    holder = SnapshotHolder()
    holder.swap(snap)
    metrics = None
    if with_metrics:
        from prometheus_client import CollectorRegistry

        from gatewayd.proxy.metrics import ProxyMetrics

        metrics = ProxyMetrics(registry=CollectorRegistry())
    proxy = Proxy(holder, ProxyOptions(access_log=None, **tracing), metrics)
    conn = HttpConnection(proxy, key, "bench")
    down = MemoryTransport()
    conn.connection_made(down)  # type: ignore[arg-type]
    # One pooled connection to the backend, as after the first request of a live run.
    up = UpstreamConnection(proxy.pool, endpoint_key("127.0.0.1", BACKEND_PORT, None), "be")
    up.connection_made(MemoryTransport())  # type: ignore[arg-type]
    proxy.pool.release(up, 0.0)
    perf = time.perf_counter
    total = req = resp = float("inf")
    for _ in range(rounds):
        before = down.written
        t = perf()
        for _ in range(requests):
            conn.data_received(REQUEST)
            up.data_received(ANSWER)
        total = min(total, perf() - t)
        assert down.written - before >= requests * 13, "responses went missing"
        in_req = in_resp = 0.0
        for _ in range(requests):
            t0 = perf()
            conn.data_received(REQUEST)
            t1 = perf()
            up.data_received(ANSWER)
            t2 = perf()
            in_req += t1 - t0
            in_resp += t2 - t1
        req = min(req, in_req)
        resp = min(resp, in_resp)
    return total / requests * 1e6, req / requests * 1e6, resp / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per round")
    ap.add_argument("--rounds", type=int, default=300, help="rounds (the minimum is kept)")
    ap.add_argument(
        "--metrics", action="store_true", help="count in a ProxyMetrics, as `gatewayd run` does"
    )
    ap.add_argument(
        "--no-trace-context", action="store_true", help="as gatewayd run --no-trace-context"
    )
    args = ap.parse_args()
    tracing: dict[str, Any] = {"trace_context": False} if args.no_trace_context else {}
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        total, req, resp = runner.run(measure(args.requests, args.rounds, args.metrics, tracing))
    import gatewayd.proxy.server as server

    what = ", ".join(
        [
            "with metrics" if args.metrics else "no metrics",
            *(["no trace context"] if args.no_trace_context else []),
        ]
    )
    print(
        f"{total:.2f} us per request (request {req:.2f} + response {resp:.2f}; min over "
        f"{args.rounds} rounds, {what}), {server.__file__}"
    )


if __name__ == "__main__":
    main()
