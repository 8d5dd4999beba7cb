"""Per-request CPU cost of the HTTP/1.1 proxy path in one process, without sockets.

The client connection (``HttpConnection``) and one pooled upstream connection
(``UpstreamConnection``) run over in-memory transports: each request is fed to the
client side, its response to the upstream side, and the connection goes back to the
pool.  What is timed is gatewayd's own Python work per request (parsing, routing,
forwarding headers, framing, pooling), none of the kernel's or the event loop's I/O.
It reports the minimum over many short rounds, which is what a shared, noisy machine
still measures reliably.

Compare two trees in one sitting (it falls back to the
module paths from before the codec split and the routing stages, so it runs against
older trees too)::

    git archive <commit> gatewayd | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before .venv/bin/python loadtest/bench_h1_inproc.py
    .venv/bin/python loadtest/bench_h1_inproc.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any, TextIO

import uvloop

from gatewayd.proxy.accesslog import AccessLogger
from gatewayd.proxy.server import HttpConnection, Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder

try:
    from gatewayd.proxy.http.h1_client import UpstreamConnection, endpoint_key
    from gatewayd.routing.snapshot.backends import EndpointAddress
    from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
    from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, RouteHit
except ImportError:  # a tree from before the codec split and the routing stages
    from gatewayd.proxy.upstream import (  # type: ignore[no-redef]
        UpstreamConnection,
        endpoint_key,
    )
    from gatewayd.routing.bindings import EndpointAddress  # type: ignore[no-redef]
    from gatewayd.routing.compiled import (  # type: ignore[no-redef]
        CompiledBackend,
        CompiledRule,
        ListenerPort,
        RouteHit,
        Snapshot,
    )

LOCAL = "127.0.0.1"
REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
# What a browser sends on a keep-alive connection for a page's resource, after Host,
# User-Agent and Accept (``--fields N`` takes the first N - 3; without Connection,
# which HTTP/1.1 does not need and which sends a request down the forwarding walk).
BROWSER_FIELDS = (
    b"Accept-Language: en-US,en;q=0.9",
    b"Accept-Encoding: gzip, deflate, br",
    b"Referer: http://a/index.html",
    b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark",
    b"Cache-Control: no-cache",
    b"Pragma: no-cache",
    b"Sec-Fetch-Dest: script",
    b"Sec-Fetch-Mode: no-cors",
    b"Sec-Fetch-Site: same-origin",
    b'sec-ch-ua: "Chromium";v="131", "Not_A Brand";v="24"',
    b"sec-ch-ua-mobile: ?0",
    b'sec-ch-ua-platform: "Linux"',
    b"DNT: 1",
)


def request(fields: int) -> bytes:
    """The request: REQUEST's three fields, or ``fields`` (3 to 16) with a browser's."""
    if fields <= 3:
        return REQUEST
    extra = b"".join(f + b"\r\n" for f in BROWSER_FIELDS[: fields - 3])
    return REQUEST[:-2] + extra + b"\r\n"


RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"
)


class MemoryTransport:
    """What the protocols use of a transport; writes are counted, then dropped."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.written += len(p)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class OneRoute:
    """A route table with one rule for every request."""

    def __init__(self, hit: RouteHit) -> None:
        self.hit = hit

    def lookup(
        self, host: str, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> RouteHit | None:
        return self.hit

    def to_json(self) -> object:
        return []


# The fields nginx (the make bench backend) sends with a static file, Content-Length
# aside: each response field is parsed, filtered and written out again, so a head of
# two fields hides part of the response direction's cost.
NGINX_FIELDS = (
    b"Server: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 20:39:13 GMT\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Last-Modified: Wed, 02 Dec 2026 20:36:43 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6b10815b-10000"\r\nX-Seen-Bench: 1\r\nAccept-Ranges: bytes\r\n'
)


def response(body_size: int, nginx_head: bool = False) -> bytes:
    """The backend's answer: the 13-byte body of the small-request rows, or ``body_size``
    bytes (the 64 KiB row) in one piece, as one read of a fast backend delivers it;
    ``nginx_head``: with the fields nginx sends (NGINX_FIELDS)."""
    if not body_size and not nginx_head:
        return RESPONSE
    body = b"x" * body_size if body_size else b"hello, world\n"
    fields = NGINX_FIELDS if nginx_head else b""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), fields, body)


async def measure(
    requests: int,
    rounds: int,
    access_log: str = "off",
    log_to: TextIO | None = None,
    body_size: int = 0,
    nginx_head: bool = False,
    with_metrics: bool = False,
    tracing: dict[str, Any] | None = None,
    fields: int = 3,
    read_size: int = 0,
) -> float:
    be = CompiledBackend(name="be", endpoints=(EndpointAddress(address=LOCAL, port=9),))
    rule = CompiledRule(
        route_kind="HTTPRoute",
        route_namespace="default",
        route_name="r",
        rule_index=0,
        backends=(be,),
        cumulative_weights=(1,),
        total_weight=1,
    )
    table = OneRoute(RouteHit(rule=rule, prefix=None, listener_name="http"))
    port = ListenerPort(
        address=LOCAL,
        port=1,
        protocol="HTTP",
        gateway_namespace="default",
        gateway_name="gw",
        listener_names=("http",),
        table=table,  # type: ignore[arg-type]
    )
    holder = SnapshotHolder()
    holder.swap(Snapshot(generation=1, ports={(LOCAL, 1): port}))
    metrics = None
    if with_metrics:
        from prometheus_client import CollectorRegistry

        from gatewayd.proxy.metrics import ProxyMetrics

        metrics = ProxyMetrics(registry=CollectorRegistry())
    proxy = Proxy(holder, ProxyOptions(access_log=None, **(tracing or {})), metrics)
    if access_log != "off":
        # The access log's own work (a record, then its line), written to /dev/null.
        proxy.access = AccessLogger(access_log, log_to)
    conn = HttpConnection(proxy, (LOCAL, 1), "bench")
    down = MemoryTransport()
    conn.connection_made(down)  # type: ignore[arg-type]
    up = UpstreamConnection(proxy.pool, endpoint_key(LOCAL, 9, None), "be")
    up.connection_made(MemoryTransport())  # type: ignore[arg-type]
    proxy.pool.release(up, 0.0)
    answer = response(body_size, nginx_head)
    req = request(fields)
    # The reads the backend's answer arrives in: one, or (``read_size``) pieces of
    # that many bytes, as a socket hands a big answer over (a 64 KiB body behind
    # nginx's head: a read of 64 KiB, then the rest).
    reads = (
        [answer[i : i + read_size] for i in range(0, len(answer), read_size)]
        if read_size
        else [answer]
    )
    best = float("inf")
    for _ in range(rounds):
        before = down.written
        t = time.perf_counter()
        for _ in range(requests):
            conn.data_received(req)
            for data in reads:
                up.data_received(data)
        best = min(best, time.perf_counter() - t)
        assert down.written - before >= requests * (body_size or len(RESPONSE)), (
            "responses went missing"
        )
    return best / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--requests",
        type=int,
        default=512,
        help="requests per round (512: whole batches of the metrics (256) and access log (128))",
    )
    ap.add_argument(
        "--access-log", choices=("off", "text", "json"), default="off", help="access log format"
    )
    ap.add_argument(
        "--body-size", type=int, default=0, help="response body bytes (0: the 13-byte one)"
    )
    ap.add_argument(
        "--nginx-head",
        action="store_true",
        help="the response carries the nine fields nginx sends (make bench's backend)",
    )
    ap.add_argument(
        "--fields",
        type=int,
        default=3,
        choices=range(3, 3 + len(BROWSER_FIELDS) + 1),
        metavar="N",
        help="request fields: 3 (Host, User-Agent, Accept) or up to 16 with a browser's",
    )
    ap.add_argument(
        "--read-size",
        type=int,
        default=0,
        help="the answer arrives in reads of this many bytes (0: in one read)",
    )
    ap.add_argument("--rounds", type=int, default=800, help="rounds (the minimum is kept)")
    ap.add_argument(
        "--metrics", action="store_true", help="count in a ProxyMetrics, as `gatewayd run` does"
    )
    ap.add_argument(
        "--no-trace-context", action="store_true", help="as gatewayd run --no-trace-context"
    )
    ap.add_argument("--otlp", metavar="URL", help="export spans to URL (--otlp-endpoint)")
    args = ap.parse_args()
    tracing: dict[str, Any] = {}
    if args.no_trace_context:
        tracing["trace_context"] = False
    if args.otlp:
        tracing["otlp_endpoint"] = args.otlp
    with (
        open(os.devnull, "w") as devnull,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        us = runner.run(
            measure(
                args.requests,
                args.rounds,
                args.access_log,
                devnull,
                args.body_size,
                args.nginx_head,
                args.metrics,
                tracing,
                args.fields,
                args.read_size,
            )
        )
        if args.otlp:
            # What the batch processor still holds is sent before the loop closes.
            runner.run(asyncio.sleep(0))
    import gatewayd.proxy.server as server

    what = ", ".join(
        [
            "with metrics" if args.metrics else "no metrics",
            *(["no trace context"] if args.no_trace_context else []),
            *([f"spans to {args.otlp}"] if args.otlp else []),
            f"access log {args.access_log}",
            f"{args.fields} request fields",
            f"body {args.body_size or 13} B",
            *([f"reads of {args.read_size} B"] if args.read_size else []),
            *(["nginx's response fields"] if args.nginx_head else []),
        ]
    )
    print(f"{us:.2f} us per request (min over {args.rounds} rounds, {what}), {server.__file__}")


if __name__ == "__main__":
    main()
