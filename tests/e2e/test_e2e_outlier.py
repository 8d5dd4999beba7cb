"""Endpoints and balancing through ``gatewayd run``: passive outlier detection, the
share of a down backendRef, least request against round robin."""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_kit import (
    LOCALHOST,
    Client,
    Doc,
    backend_ref,
    endpoint_slice,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    rule,
    service,
)

pytestmark = pytest.mark.e2e

KILL_WINDOW = 5.0  # failures must stop this long after the endpoint dies
OBSERVE = 0.7  # and none for this long after that


def two_endpoint_service(name: str, ports: tuple[int, int]) -> list[Doc]:
    """A Service whose two endpoints are 127.0.0.1 on two ports (one EndpointSlice
    each: a slice has one port list)."""
    return [
        service(name, [("http", 80)]),
        endpoint_slice(name, [("http", ports[0])], slice_name=f"{name}-a", pod=f"{name}-a"),
        endpoint_slice(name, [("http", ports[1])], slice_name=f"{name}-b", pod=f"{name}-b"),
    ]


def base_docs(port: int) -> list[Doc]:
    return [gateway_class(), gateway("gw", [listener("http", port)])]


def test_killed_endpoint_stops_failing_within_5s_without_retries(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    a, b = echoes.start("echo-a", "echo-b")
    port = free_port()
    docs = base_docs(port) + two_endpoint_service("svc", (a.port, b.port))
    docs.append(http_route("r", [rule(backends=[backend_ref("svc")])]))
    daemon = gatewayd(docs)

    results: list[tuple[float, int]] = []  # (time, status; 0: the connection failed)
    lock = threading.Lock()
    stop = threading.Event()
    killed_at: list[float] = []

    def load() -> None:
        c = Client(port, allow_reconnect=True, timeout=5.0)
        try:
            for _ in range(100_000):  # bounded; ends on ``stop``
                if stop.is_set():
                    return
                try:
                    status = c.request("/").status
                except OSError:
                    c.close()
                    c = Client(port, allow_reconnect=True, timeout=5.0)
                    status = 0
                with lock:
                    results.append((time.monotonic(), status))
        finally:
            c.close()

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load) for _ in range(4)]
        time.sleep(0.3)  # keep-alive load on both endpoints
        with lock:
            before = list(results)
        os.kill(a.child.pid, signal.SIGKILL)  # the process, its sockets with it
        killed_at.append(time.monotonic())
        time.sleep(KILL_WINDOW + OBSERVE)
        stop.set()
        for f in futures:
            f.result(timeout=10)
    kill = killed_at[0]
    assert before and all(s == 200 for _, s in before), before[:20]
    failures = [(t - kill, s) for t, s in results if s != 200]
    late = [(t - kill, s) for t, s in results if t - kill >= KILL_WINDOW]
    assert all(dt < KILL_WINDOW for dt, _ in failures), failures
    assert len(late) >= 20 and all(s == 200 for _, s in late), late[:20]
    # Failures seen by clients: a handful (the threshold), not half of all requests.
    assert len(failures) <= 10, failures
    metrics = daemon.metrics()
    ejections = prometheus_samples(metrics, "gatewayd_outlier_ejections_total")
    assert ejections == [({"backend": "default/svc:80"}, 1.0)], ejections
    ejected = prometheus_samples(metrics, "gatewayd_outlier_ejected")
    assert ejected == [({"backend": "default/svc:80"}, 1.0)], ejected
    # The request whose failure ejected the endpoint says so in the access log.
    flagged = daemon.child.stdout.count(lambda line: ",OE " in line or " OE " in line)
    assert flagged == 1, daemon.output()[-3000:]
    print(f"failures after the kill: {len(failures)}, the last at {failures[-1][0]:.3f}s")


@pytest.mark.parametrize("threshold", [5, 0])
def test_share_of_a_down_backend_ref_goes_to_the_other(echoes, gatewayd, threshold: int) -> None:  # type: ignore[no-untyped-def]
    """``threshold`` is --outlier-consecutive-5xx (5: the default; 0: detection off)."""
    (live,) = echoes.start("echo-live")
    dead = free_port()  # nothing listens there
    port = free_port()
    docs = base_docs(port) + live.manifests("live")
    docs += [
        service("dead", [("http", 80)]),
        endpoint_slice("dead", [("http", dead)], slice_name="dead-1"),
        service("empty", [("http", 80)]),  # no EndpointSlice at all
    ]
    docs.append(
        http_route(
            "split",
            [
                rule(
                    backends=[
                        backend_ref("live", weight=40),
                        backend_ref("dead", weight=40),
                        backend_ref("empty", weight=20),
                    ]
                )
            ],
        )
    )
    args = [] if threshold == 5 else ["--outlier-consecutive-5xx", str(threshold)]
    gatewayd(docs, args=args)
    statuses: list[int] = []
    with Client(port, allow_reconnect=True) as c:
        for _ in range(150):
            reply = c.request("/")
            statuses.append(reply.status)
            if reply.status == 200:
                assert reply.echo()["pod"] == "echo-live"
    assert set(statuses) <= {200, 503}, statuses
    failures = [i for i, s in enumerate(statuses) if s != 200]
    if not threshold:
        # No outlier detection: the dead backendRef keeps its share of 503s (half, once
        # the empty one's share is split between the two), the empty one still gives its
        # share away (no endpoint at all needs no detection).
        assert 0.3 <= len(failures) / len(statuses) <= 0.7, statuses
        return
    # The dead endpoint fails (503 UF) until its ``threshold``-th failure ejects it; the
    # empty Service never answers 503: its share always went to the others.
    assert len(failures) == threshold, statuses
    assert statuses[failures[-1] + 1 :] == [200] * (len(statuses) - failures[-1] - 1)
    assert statuses[-100:] == [200] * 100


class _Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body are two writes
    delay = 0.0
    name = b""

    def do_GET(self) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.send_response(200)
        self.send_header("content-length", str(len(self.name)))
        self.end_headers()
        self.wfile.write(self.name)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _server(name: str, delay: float) -> http.server.ThreadingHTTPServer:
    handler = type(f"H_{name}", (_Slow,), {"delay": delay, "name": name.encode()})
    srv = http.server.ThreadingHTTPServer((LOCALHOST, 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def fast_and_slow() -> Iterator[tuple[int, int]]:
    fast, slow = _server("fast", 0.0), _server("slow", 0.2)
    yield fast.server_address[1], slow.server_address[1]
    for s in (fast, slow):
        s.shutdown()
        s.server_close()


def _spread(port: int, clients: int, seconds: float) -> dict[str, int]:
    """Closed-loop keep-alive clients, all sending until the same deadline (a fixed
    count per client would end with one client alone, where any policy is a coin
    toss)."""
    end = time.monotonic() + seconds

    def one() -> list[str]:
        names: list[str] = []
        with Client(port) as c:
            for _ in range(10_000):  # bounded; ends at the deadline
                if time.monotonic() >= end:
                    break
                names.append(c.request("/").body.decode())
        return names

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(clients) as pool:
        for names in pool.map(lambda _: one(), range(clients)):
            for n in names:
                counts[n] = counts.get(n, 0) + 1
    return counts


@pytest.mark.parametrize("policy", ["least-request", "round-robin"])
def test_slow_endpoint_gets_fewer_requests_under_least_request(
    fast_and_slow: tuple[int, int],
    gatewayd,  # type: ignore[no-untyped-def]
    policy: str,
) -> None:
    port = free_port()
    docs = base_docs(port) + two_endpoint_service("svc", fast_and_slow)
    docs.append(http_route("r", [rule(backends=[backend_ref("svc")])]))
    gatewayd(docs, args=["--lb-policy", policy])
    counts = _spread(port, clients=4, seconds=2.0)
    total = sum(counts.values())
    print(f"{policy}: {counts}")
    assert total >= 20 and set(counts) <= {"fast", "slow"}, counts
    slow_share = counts.get("slow", 0) / total
    if policy == "least-request":
        # Requests pile up at the slow endpoint, so it loses most comparisons.
        assert slow_share < 0.1, counts
    else:
        assert 0.4 <= slow_share <= 0.6, counts
