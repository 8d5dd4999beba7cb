"""The Python-ceiling proxy of ``make bench`` (loadtest/ceiling_proxy.py) is a correct
proxy: its row measures the wire work gatewayd does, not a shortcut.

A real subprocess of the proxy sits between ``http.client`` and a backend on a raw
socket that records the exact bytes it receives and answers with a length-delimited,
a chunked and a close-delimited response.  Every read and loop here is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "loadtest" / "ceiling_proxy.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """A raw-socket HTTP/1.1 backend: records each request's head and body bytes and the
    number of connections; answers from a fixed script, one answer per request."""

    ANSWERS = (
        # Length-delimited, with hop-by-hop fields the proxy must drop.
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\n"
        b"Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-End: kept\r\n\r\nhello",
        # Chunked: the proxy re-chunks it.
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n",
        # Neither: it ends when the backend closes; the proxy re-chunks it.
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close",
    )

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = int(self.sock.getsockname()[1])
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        answers = iter(self.ANSWERS)
        for _ in range(len(self.ANSWERS)):  # at most one connection per answer
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(10)
                buf = b""
                for _ in range(len(self.ANSWERS)):
                    head, buf = self._read_until(conn, buf, b"\r\n\r\n")
                    if head is None:
                        break
                    if b"transfer-encoding: chunked" in head.lower():
                        body, buf = self._read_until(conn, buf, b"\r\n0\r\n\r\n")
                    else:
                        body = b""
                    self.requests.append((head, body or b""))
                    answer = next(answers)
                    conn.sendall(answer)
                    if b"Connection: close" in answer:
                        break

    @staticmethod
    def _read_until(conn: socket.socket, buf: bytes, end: bytes) -> tuple[bytes | None, bytes]:
        while end not in buf:
            if len(buf) > 1 << 20:
                raise AssertionError("backend: request over 1 MiB")
            data = conn.recv(65536)
            if not data:
                return None, buf
            buf += data
        i = buf.index(end) + len(end)
        return buf[:i], buf[i:]


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Backend, int]]:
    backend = Backend()
    port = _free_port()
    log = tmp_path / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROXY),
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"127.0.0.1:{backend.port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the ceiling proxy did not start listening"
            time.sleep(0.05)
    try:
        yield backend, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        backend.sock.close()
        # The proxy logs nothing when all goes well: a traceback here is a bug.
        assert "Traceback" not in log.read_text(), log.read_text()


def _fields(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode().split("\r\n")[1:]
    return [
        (k.strip().lower(), v.strip())
        for k, _, v in (line.partition(":") for line in lines if line)
    ]


def test_forwards_rewrites_the_head_rechunks_and_keeps_alive(
    proxied: tuple[Backend, int],
) -> None:
    backend, port = proxied
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    # 1: a GET with hop-by-hop fields, an X-Forwarded-For to append to and an X-Bench to
    # replace.
    client.request(
        "GET",
        "/a?q=1",
        headers={
            "Connection": "keep-alive, X-Drop",
            "X-Drop": "secret",
            "Keep-Alive": "timeout=9",
            "TE": "trailers",
            "X-Forwarded-For": "192.0.2.7",
            "X-Bench": "client-value",
            "X-Keep": "yes",
        },
    )
    r1 = client.getresponse()
    assert (r1.status, r1.read()) == (200, b"hello")
    names = {k.lower() for k in r1.headers}
    assert "x-hop" not in names and "keep-alive" not in names
    assert r1.headers["X-End"] == "kept"
    sock1 = client.sock
    # 2: a POST with a chunked body on the same client connection.
    client.request("POST", "/b", body=iter([b"hello ", b"world"]), encode_chunked=True)
    r2 = client.getresponse()
    assert (r2.status, r2.read()) == (201, b"abcdefg")
    assert r2.headers["Transfer-Encoding"] == "chunked"
    assert client.sock is sock1, "the client connection was not kept alive"
    # 3: the backend ends its answer by closing; the proxy re-chunks it.
    client.request("GET", "/c")
    r3 = client.getresponse()
    assert (r3.status, r3.read()) == (200, b"until-close")
    client.close()

    assert len(backend.requests) == 3
    assert backend.connections == 1, "the upstream connection was not reused"
    head1, _ = backend.requests[0]
    assert head1.startswith(b"GET /a?q=1 HTTP/1.1\r\n")
    f1 = _fields(head1)
    names1 = [k for k, _ in f1]
    for dropped in ("connection", "x-drop", "keep-alive", "te"):
        assert dropped not in names1, head1
    assert ("x-keep", "yes") in f1
    assert ("x-forwarded-for", "192.0.2.7, 127.0.0.1") in f1
    assert [v for k, v in f1 if k == "x-bench"] == ["1"]
    head2, body2 = backend.requests[1]
    assert head2.startswith(b"POST /b HTTP/1.1\r\n")
    assert ("transfer-encoding", "chunked") in _fields(head2)
    assert ("x-forwarded-for", "127.0.0.1") in _fields(head2)
    # Re-chunked: the decoded body is the client's, whatever the chunk sizes.
    assert _dechunk(body2) == b"hello world"


def _dechunk(data: bytes) -> bytes:
    out = b""
    for _ in range(1000):
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return out
        out, data = out + data[:size], data[size + 2 :]
    raise AssertionError("more than 1,000 chunks")


def test_a_request_head_over_the_bound_is_refused(proxied: tuple[Backend, int]) -> None:
    backend, port = proxied
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (80 * 1024) + b"\r\n\r\n")
        answer = b""
        for _ in range(100):
            data = s.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert backend.requests == []


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_slow_client_pauses_the_backend_instead_of_filling_memory(tmp_path: Path) -> None:
    """Flow control: 64 MiB from the backend to a client that does not read stays in the
    kernel's socket buffers and the backend's send, not in the proxy's memory."""
    size = 64 * 1024 * 1024
    backend = socket.create_server(("127.0.0.1", 0))
    backend.settimeout(20)
    sent = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = backend.accept()
            with conn:
                conn.settimeout(30)
                head = b""
                for _ in range(100):
                    if b"\r\n\r\n" in head:
                        break
                    head += conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                chunk = b"x" * (1 << 20)
                for _ in range(size // len(chunk)):
                    conn.sendall(chunk)  # blocks while the proxy has paused reading
                sent.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = _free_port()
    with open(tmp_path / "proxy.log", "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROXY),
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                f"127.0.0.1:{backend.getsockname()[1]}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        before = _rss_kib(proc.pid)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            client.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(1.5)  # the client reads nothing meanwhile
            held = _rss_kib(proc.pid) - before
            assert not sent.is_set(), "the whole body went through a client that read nothing"
            assert held < 16 * 1024, f"the proxy holds {held} KiB for a client that reads nothing"
            got = 0
            for _ in range(100_000):
                data = client.recv(1 << 20)
                if not data:
                    break
                got += len(data)
                if got >= size:  # head + body: the body's last byte has come
                    break
            assert got >= size
        assert sent.wait(10)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        backend.close()
