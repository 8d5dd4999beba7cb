"""Per-request CPU cost of the HTTP/2 proxy path (h2c down, HTTP/1.1 up) in one process.

The HTTP/2 twin of ``bench_h1_inproc.py`` (issue 12): a client connection
(``HttpConnection``, handing itself over to ``H2ServerConnection`` on the h2c preface)
and ``--streams`` pooled upstream connections (``UpstreamConnection``) run over
in-memory transports.  Each batch is what ``h2load -m STREAMS`` does: one read carrying
STREAMS requests (HEADERS with END_STREAM, as an ``h2`` client encodes them, the HPACK
dynamic table warmed as nghttp2's is), then the backend's answer to each upstream
connection in its own read (nginx's response head for ``/small``), then the flush the
codec deferred to the end of the loop's turn.  A connection WINDOW_UPDATE goes with a
batch whenever the client has taken half its window of response bytes, as nghttp2
does.  The request frames are prepared before anything is timed.

What is timed is gatewayd's own Python work per request, no kernel, no event loop; the
minimum over many short rounds, which a shared, noisy machine still measures reliably.
Compare two trees with ``PYTHONPATH``::

    PYTHONPATH=/work/main .venv/bin/python loadtest/bench_h2_inproc.py
    PYTHONPATH=. .venv/bin/python loadtest/bench_h2_inproc.py
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable, Mapping
from typing import Any

import h2.config
import h2.connection
import h2.events
import uvloop

from gatewayd.proxy.http.h1_client import UpstreamConnection, endpoint_key
from gatewayd.proxy.http.h2_server import H2ServerConnection
from gatewayd.proxy.server import HttpConnection, Proxy, ProxyOptions
from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, RouteHit

LOCAL = "127.0.0.1"
BODY = b"hello, world\n"
# nginx 1.22's answer to the bench's GET /small (make bench's backend).
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 20:39:13 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n"
    b"X-Seen-Bench: 1\r\n\r\n" + BODY
)
# What h2load 1.52 sends for GET /small.
REQUEST_FIELDS = [
    (b":method", b"GET"),
    (b":path", b"/small"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8080"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


class MemoryTransport:
    """What the protocols use of a transport; writes are kept (downstream) or
    counted (upstream)."""

    def __init__(self, keep: bool = False) -> None:
        self.written = 0
        self.writes = 0
        self.keep = keep
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1
        if self.keep:
            self.out += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.write(p)

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

    def set_protocol(self, protocol: Any) -> None:
        pass

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


def client_batches(
    client: h2.connection.H2Connection, batches: int, streams: int, forget: bool = True
) -> list[bytes]:
    """The bytes of ``batches`` reads of ``streams`` requests each, with the
    connection WINDOW_UPDATEs nghttp2 would send for the responses' DATA."""
    out: list[bytes] = []
    taken = 0
    for _ in range(batches):
        for _ in range(streams):
            client.send_headers(client.get_next_available_stream_id(), REQUEST_FIELDS, True)
        taken += streams * len(BODY)
        if taken >= 32768:
            client.increment_flow_control_window(taken)
            taken = 0
        out.append(client.data_to_send())
        if forget:
            client.streams.clear()  # answered when replayed: no stream limit to meet here
    return out


async def measure(rounds: int, batches: int, streams: int, profile: str) -> float:
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
    from prometheus_client import CollectorRegistry

    from gatewayd.proxy.metrics import ProxyMetrics

    proxy = Proxy(
        holder, ProxyOptions(access_log=None, h2c=True), ProxyMetrics(registry=CollectorRegistry())
    )
    conn = HttpConnection(proxy, (LOCAL, 1), "bench")
    down = MemoryTransport(keep=True)
    conn.connection_made(down)  # type: ignore[arg-type]
    ups: list[tuple[UpstreamConnection, MemoryTransport]] = []
    for _ in range(streams):
        up = UpstreamConnection(proxy.pool, endpoint_key(LOCAL, 9, None), "be")
        t = MemoryTransport()
        up.connection_made(t)  # type: ignore[arg-type]
        proxy.pool.release(up, 0.0)
        ups.append((up, t))

    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    conn.data_received(client.data_to_send())
    h2s = conn.h2
    assert h2s is not None, "no HTTP/2 hand-over"
    # The deferred flush (the loop's call_soon in `gatewayd run`) runs where the loop
    # would run it: after the batch's reads.
    deferred: list[Callable[[], None]] = []
    h2s.defer = deferred.append  # type: ignore[assignment]
    client.receive_data(bytes(down.out))  # our SETTINGS: the client ACKs them
    down.out.clear()
    h2s.data_received(client.data_to_send())  # the transport's protocol now
    # One batch checked: every stream answered 200 with the body.
    for data in client_batches(client, 1, streams, forget=False):
        run_batch(h2s, data, ups, deferred)
    events = client.receive_data(bytes(down.out))
    ok = sum(1 for e in events if isinstance(e, h2.events.StreamEnded))
    bodies = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert ok == streams and bodies == BODY * streams, (ok, events)
    down.keep = False
    every = client_batches(client, rounds * batches, streams)
    data_rounds = [every[i : i + batches] for i in range(0, len(every), batches)]
    prof = cProfile.Profile() if profile else None
    best = float("inf")
    writes = down.writes
    for batch in data_rounds:
        before = down.written
        if prof is not None:
            prof.enable()
        t = time.perf_counter()
        for data in batch:
            run_batch(h2s, data, ups, deferred)
        elapsed = time.perf_counter() - t
        if prof is not None:
            prof.disable()
        best = min(best, elapsed)
        assert down.written - before >= batches * streams * len(BODY), (
            "responses missing",
            down.written - before,
            h2s.violation,
            h2s.streams,
            h2s.closed,
        )
    assert not h2s.closed, h2s.violation
    if prof is not None:
        pstats.Stats(prof).sort_stats(profile).print_stats(40)
    print(f"{(down.writes - writes) / (rounds * batches):.2f} downstream writes per batch")
    return best / (batches * streams) * 1e6


def run_batch(
    conn: H2ServerConnection,
    data: bytes,
    ups: list[tuple[UpstreamConnection, MemoryTransport]],
    deferred: list[Callable[[], None]],
) -> None:
    conn.data_received(data)
    for up, t in ups:
        if t.writes:
            t.writes = 0
            up.data_received(ANSWER)
    while deferred:
        deferred.pop(0)()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200, help="rounds (the minimum is kept)")
    ap.add_argument("--batches", type=int, default=50, help="batches per round")
    ap.add_argument("--streams", type=int, default=4, help="requests per batch (h2load -m)")
    ap.add_argument("--profile", metavar="SORT", default="", help="cProfile, sorted by SORT")
    args = ap.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        us = runner.run(measure(args.rounds, args.batches, args.streams, args.profile))
    import gatewayd.proxy.http.h2_server as h2_server

    print(
        f"{us:.2f} us per request (min over {args.rounds} rounds of {args.batches} "
        f"batches of {args.streams} streams), {h2_server.__file__}"
    )


if __name__ == "__main__":
    main()
