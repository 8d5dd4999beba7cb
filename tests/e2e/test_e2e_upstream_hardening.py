"""Hostile backends through ``gatewayd run`` (issue 11 items 2 and 3).

Response queue poisoning: a backend that sends a response nobody asked for must never
have it delivered as the answer to a later request.  Unbounded upstream heads: a
response head over the request side's limits (60 KiB of fields, 100 fields) is a 502
with flag UPE, and a backend streaming an endless head cannot grow gatewayd's memory.

The backends are raw sockets on threads, written here, because every one of them
breaks HTTP/1.1 on purpose.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    MemorySampler,
    backend_manifests,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    read_response_head,
    request,
    rule,
)

pytestmark = pytest.mark.e2e

HOST = "hostile.example"
STRAY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY"


# --------------------------------------------------------------------------- backend

Serve = Callable[["HostileBackend", socket.socket], None]


class HostileBackend:
    """A TCP backend on 127.0.0.1 port 0 running ``serve(backend, sock)`` on a thread
    per accepted connection; ``close()`` closes the listener and every connection."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self._listener = socket.create_server((LOCALHOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self.cond = threading.Condition()
        self.socks: list[socket.socket] = []
        self.served: list[socket.socket] = []  # connections in the order they answer
        self.eofs = 0  # connections gatewayd closed (EOF or reset seen by the backend)
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, daemon=True)
        self._accept.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self.cond:
                self.socks.append(sock)
            t = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self._serve(self, sock)
        with self.cond:
            self.eofs += 1
            self.cond.notify_all()

    def answered(self, sock: socket.socket) -> None:
        with self.cond:
            self.served.append(sock)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    @property
    def connections(self) -> int:
        with self.cond:
            return len(self.socks)

    def close(self) -> None:
        self._listener.close()
        with self.cond:
            socks = list(self.socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def backends() -> Iterator[Callable[[Serve], HostileBackend]]:
    started: list[HostileBackend] = []

    def start(serve: Serve) -> HostileBackend:
        b = HostileBackend(serve)
        started.append(b)
        return b

    yield start
    for b in started:
        b.close()


def read_request_heads(sock: socket.socket) -> Iterator[bytes]:
    """The request heads arriving on ``sock`` (no bodies: the tests send GETs)."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        yield head


def path_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


def own_response(path: bytes) -> bytes:
    body = b"own:" + path
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def serve_own(backend: HostileBackend, sock: socket.socket) -> None:
    """Answer every request with its own path, noting first which connection answers
    (so a client that has its response can rely on ``served[-1]``)."""
    for head in read_request_heads(sock):
        backend.answered(sock)
        sock.sendall(own_response(path_of(head)))


def start_gatewayd(gatewayd, backend: HostileBackend, args: tuple[str, ...] = ()) -> int:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    docs += backend_manifests("hostile", backend.port)
    docs.append(http_route("hostile", [rule(backends=[backend_ref("hostile")])], hostnames=[HOST]))
    gatewayd(docs, args=["--access-log", "json", *args])
    return port


def rx_queued(local_port: int, remote_port: int) -> int:
    """Bytes waiting in the receive queue of the loopback TCP socket with these ports
    (from /proc/net/tcp, which lists every socket of the network namespace)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if int(local.split(":")[1], 16) == local_port and (
                int(remote.split(":")[1], 16) == remote_port
            ):
                return int(queues.split(":")[1], 16)
    return 0


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one Content-Length response."""
    head, rest = read_response_head(sock)
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(m.group(1)) if m else 0
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    return status, rest[:length]


# --------------------------------------------------------------------------- item 2


def test_stray_response_never_answers_a_later_request(gatewayd, backends) -> None:  # type: ignore[no-untyped-def]
    """The issue's scenario, made deterministic: a backend sends an extra response
    after each complete one, and it reaches gatewayd just after the next request from
    another client connection.  The worker is stopped (SIGSTOP) while both arrive, so
    when it runs again the client's request and the stray bytes are read in the same
    event-loop iteration, the request first: the pooled connection must be recognised
    as dirty before the request is written to it (on 587b9f3 the first such request
    already got the stray response as its answer)."""

    backend = backends(serve_own)
    port = start_gatewayd(gatewayd, backend)
    # One worker (the e2e default): the daemon process itself serves the traffic.
    worker = Gatewayd.live[-1].pid
    assert request(port, "/req0", host=HOST).body == b"own:/req0"
    for k in range(1, 21):
        with socket.create_connection((LOCALHOST, port), timeout=10) as client:
            # A request for an unknown host is answered 404 by gatewayd itself: after
            # it the client connection is accepted and being read by the worker.
            client.sendall(b"GET / HTTP/1.1\r\nHost: nowhere.example\r\n\r\n")
            assert read_response(client)[0] == 404
            with backend.cond:
                upstream = backend.served[-1]
            os.kill(worker, signal.SIGSTOP)
            try:
                client.sendall(b"GET /req%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (k, HOST.encode()))
                upstream.sendall(STRAY)  # after the complete answer to /req{k-1}
                client_port = client.getsockname()[1]
                gw_up_port = upstream.getpeername()[1]
                for _ in deadline_loop(5.0, 0.005):
                    if rx_queued(port, client_port) and rx_queued(gw_up_port, backend.port):
                        break
                else:
                    pytest.fail("the request and the stray response never reached gatewayd")
            finally:
                os.kill(worker, signal.SIGCONT)
            status, body = read_response(client)
            assert (status, body) == (200, b"own:/req%d" % k), f"request {k}"


def test_stray_response_on_idle_connection_closes_it(gatewayd, backends) -> None:  # type: ignore[no-untyped-def]
    """An extra response after each complete one while the connection sits idle in the
    pool, 20 requests each from a fresh client connection: every client gets its own
    response and the connection the stray bytes arrived on is closed, never reused."""

    backend = backends(serve_own)
    port = start_gatewayd(gatewayd, backend)
    for k in range(20):
        reply = request(port, f"/req{k}", host=HOST)
        assert (reply.status, reply.body) == (200, f"own:/req{k}".encode()), f"request {k}"
        with backend.cond:
            upstream = backend.served[-1]
        upstream.sendall(STRAY)
        # The next request only once gatewayd has dropped that connection (the backend
        # sees it closed), so the next one has to be a new connection.
        assert backend.wait(lambda n=k: backend.eofs >= n + 1), f"connection {k} kept"
    assert backend.connections == 20


# --------------------------------------------------------------------------- item 3


def head_response(n_fields: int, value_size: int) -> bytes:
    fields = b"".join(b"x-f%d: %s\r\n" % (i, b"v" * value_size) for i in range(n_fields))
    return b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"


@dataclass
class HeadCase:
    path: bytes
    response: bytes
    status: int


CASES = {
    # 100 KiB of fields: Envoy's limit is 60 KiB.
    b"/100k": HeadCase(b"/100k", head_response(100, 1024), 502),
    # 101 fields ("Content-Length" is the 101st): Envoy's limit is 100.
    b"/101": HeadCase(b"/101", head_response(100, 8), 502),
    # Within the limits: 90 fields + Content-Length, about 59 KiB (few enough fields
    # for http.client, which refuses more than 100 in what gatewayd relays).
    b"/90": HeadCase(b"/90", head_response(90, 660), 200),
    # A single 100 KiB field value.
    b"/long-line": HeadCase(b"/long-line", head_response(1, 100 * 1024), 502),
}


def test_response_head_over_the_limits_is_502_upe(gatewayd, backends) -> None:  # type: ignore[no-untyped-def]
    def serve(backend: HostileBackend, sock: socket.socket) -> None:
        for head in read_request_heads(sock):
            backend.answered(sock)
            sock.sendall(CASES[path_of(head)].response)

    backend = backends(serve)
    port = start_gatewayd(gatewayd, backend)
    daemon = Gatewayd.live[-1]
    for case in CASES.values():
        reply = request(port, case.path.decode(), host=HOST)
        assert reply.status == case.status, (case.path, reply.status, reply.body[:200])
        if case.status == 200:
            assert reply.body == b"ok"
            assert len(reply.headers) >= 90
        quoted = f'"{case.path.decode()}"'
        line = daemon.child.stdout.wait_for(
            lambda s, q=quoted: q in s and "response_flags" in s, 5.0
        )
        assert line is not None, daemon.output()
        entry = json.loads(line)
        assert entry["response_code"] == case.status
        assert entry["response_flags"] == ("UPE" if case.status == 502 else "-")
    # An oversized head is an answer: the request was not sent again elsewhere.
    assert len(backend.served) == len(CASES)
    samples = prometheus_samples(daemon.metrics(), "gatewayd_local_reply_total")
    assert ({"reason": "upstream_protocol_error"}, 3.0) in samples, samples


ENDLESS_CAP = 16 * 1024 * 1024  # bytes each hostile connection sends at most


def endless_lines(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    line = b"x-endless: " + b"a" * 200 + b"\r\n"
    chunk = line * 256
    for _ in range(ENDLESS_CAP // len(chunk)):
        sock.sendall(chunk)


def endless_value(sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nx-endless: ")
    chunk = b"a" * 65536
    for _ in range(ENDLESS_CAP // len(chunk)):
        sock.sendall(chunk)


@pytest.mark.parametrize("stream", [endless_lines, endless_value], ids=["lines", "one-line"])
def test_endless_response_heads_are_cut_with_bounded_memory(gatewayd, backends, stream) -> None:  # type: ignore[no-untyped-def]
    """Four backend connections at once stream a response head that never ends (on
    587b9f3 RSS grew by ~130 MiB per connection and no client ever got an answer)."""

    def serve(backend: HostileBackend, sock: socket.socket) -> None:
        for _head in read_request_heads(sock):
            stream(sock)  # OSError once gatewayd cuts the connection

    backend = backends(serve)
    port = start_gatewayd(gatewayd, backend)
    daemon = Gatewayd.live[-1]
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        start = time.monotonic()
        with socket.create_connection((LOCALHOST, port), timeout=10) as s:
            s.sendall(b"GET /endless%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, HOST.encode()))
            status, _ = read_response(s)
        with lock:
            results.append((status, time.monotonic() - start))

    with MemorySampler(daemon) as sampler:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    assert [s for s, _ in results] == [502] * 4, (results, daemon.output()[-3000:])
    assert max(d for _, d in results) < 3.0, results
    assert backend.wait(lambda: backend.eofs >= 4), "gatewayd kept a hostile connection"
    growth_mib = sampler.peak_growth_kb() / 1024
    assert growth_mib < 30, f"RSS grew by {growth_mib:.1f} MiB"


def test_early_response_before_the_request_body_is_relayed(gatewayd, backends) -> None:  # type: ignore[no-untyped-def]
    """A backend may answer before it has read the whole request (413 here): that
    response is the request's own, not stale bytes, and is relayed; the connection,
    in an unknown state, is not reused."""

    def serve(backend: HostileBackend, sock: socket.socket) -> None:
        for head in read_request_heads(sock):
            backend.answered(sock)
            if path_of(head) == b"/upload":
                sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
            else:
                sock.sendall(own_response(path_of(head)))

    backend = backends(serve)
    port = start_gatewayd(gatewayd, backend)
    with socket.create_connection((LOCALHOST, port), timeout=10) as client:
        client.sendall(
            b"POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 100000\r\n\r\n" % HOST.encode()
            + b"x" * 1000
        )
        assert read_response(client) == (413, b"big")
        client.sendall(b"x" * 99000)  # the rest of the body, which gatewayd drops
        client.sendall(b"GET /after HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST.encode())
        assert read_response(client) == (200, b"own:/after")
    assert backend.connections == 2
