"""Hypothesis-driven mutations of request heads through the HTTP/1.1 path: byte flips,
insertions, deletions, truncation, duplicated header lines, huge values and bad chunking,
sent over a real loopback socket to an in-process proxy.  Whatever arrives, no handler
raises, every reply is a valid HTTP/1.1 status line (a 4xx/5xx of the proxy's own or the
backend's 200), an error ends in a clean close (FIN, not a reset) and the proxy's
connection count returns to zero.  Bounded: ``MAX_EXAMPLES`` examples, each under a
``DEADLINE_MS`` deadline, about 10 s in all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loop_kit import LOCAL, free_port
from test_server import Proxy, ProxyOptions, Table, backend, hit, rule, snapshot

from gatewayd.proxy.snapshot import SnapshotHolder

MAX_EXAMPLES = 250
DEADLINE_MS = 5000
EXAMPLE_TIMEOUT = 3.0  # seconds one exchange may take before the test fails

BASE_REQUESTS = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: fuzz.example\r\nUser-Agent: f/1\r\nAccept: */*\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: fuzz.example\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: fuzz.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: fuzz.example\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    b"abc",
    b"GET http://fuzz.example/abs HTTP/1.1\r\nHost: other.example\r\n\r\n",
    b"GET /u HTTP/1.1\r\nHost: fuzz.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
)
TOKENS = (
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"Host: dup.example\r\n",
    b"Content-Length: 3\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Connection: close\r\n",
    b" folded\r\n",
)
BAD_CHUNKS = (
    b"zz\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    b"5;ext=\x00\r\nhello\r\n0\r\n\r\n",
    b"-1\r\nx\r\n0\r\n\r\n",
    b"5\r\nhel",
    b"0\r\nTrailer: x\r\n\r\n",
    b"3\r\nabc\r\n0\r\n",
)


# --------------------------------------------------------------------------- mutations


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE_REQUESTS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(("flip", "insert", "delete", "truncate", "dup", "huge", "chunks"))
        )
        pos = draw(st.integers(0, 1 << 16)) % (len(data) + 1)
        if kind == "flip" and data:
            data[pos % len(data)] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
        elif kind == "dup":
            lines = bytes(data).split(b"\r\n")
            i = pos % len(lines)
            lines.insert(i, lines[i])
            data = bytearray(b"\r\n".join(lines))
        elif kind == "huge":
            # Over and under --max-header-bytes (60 KiB) in one value.
            size = draw(st.sampled_from((8 * 1024, 59 * 1024, 70 * 1024)))
            end = data.find(b"\r\n")
            data[end + 2 : end + 2] = b"X-Big: " + b"v" * size + b"\r\n"
        elif kind == "chunks":
            head, _, _ = bytes(data).partition(b"\r\n\r\n")
            if b"chunked" not in head.lower():
                head += b"\r\nTransfer-Encoding: chunked"
            data = bytearray(head + b"\r\n\r\n" + draw(st.sampled_from(BAD_CHUNKS)))
    return bytes(data)


# --------------------------------------------------------------------------- harness


class Errors(logging.Handler):
    """Everything logged at ERROR (a handler failing) and every loop exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.records.append(repr(context))


@dataclass
class Harness:
    runner: asyncio.Runner
    proxy: Proxy
    port: int
    errors: Errors


# Every request head the backend received, in order.
BACKEND_HEADS: list[bytes] = []


async def _backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers 200 once a request head is in, then closes."""
    with contextlib.suppress(
        ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError
    ):
        BACKEND_HEADS.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\nx-fuzz-backend: 1\r\ncontent-length: 2\r\n"
            b"connection: close\r\n\r\nok"
        )
        await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    errors = Errors()
    logger = logging.getLogger("gatewayd")
    logger.addHandler(errors)
    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    runner.get_loop().set_exception_handler(errors.loop_exception)

    async def start() -> tuple[Proxy, asyncio.AbstractServer, int]:
        server = await asyncio.start_server(_backend, LOCAL, 0)
        bport = server.sockets[0].getsockname()[1]
        port = free_port()
        options = ProxyOptions(
            access_log=None,
            # Short: a truncated head or body ends in a timeout, which must be quick.
            header_timeout=0.1,
            idle_timeout=0.1,
            stream_idle_timeout=0.2,
            route_timeout=1.0,
        )
        proxy = Proxy(SnapshotHolder(), options)
        assert (
            await proxy.apply(snapshot({port: Table({"": hit(rule(backend("b", bport)))})})) == {}
        )
        return proxy, server, port

    proxy, server, port = runner.run(start())
    try:
        yield Harness(runner, proxy, port, errors)
    finally:
        runner.run(proxy.close())
        server.close()
        runner.close()
        logger.removeHandler(errors)


# --------------------------------------------------------------------------- replies

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\Z")


@dataclass
class Outcome:
    responses: list[tuple[int, dict[bytes, bytes]]]
    eof: bool = False  # the proxy closed with a FIN
    reset: bool = False  # ... or with a reset


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    m = STATUS_LINE.match(first)
    assert m is not None, f"not an HTTP/1.1 status line: {first!r}"
    headers = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        assert sep, f"bad response header line {line!r}"
        headers[name.strip().lower()] = value.strip()
    return int(m.group(1)), headers


async def exchange(port: int, data: bytes) -> Outcome:
    """Send ``data``, read what comes back: until the proxy closes, or until a complete
    keep-alive response (the client then closes)."""
    reader, writer = await asyncio.open_connection(LOCAL, port)
    out = Outcome([])
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()
        while True:
            try:
                status, headers = await _read_head(reader)
            except asyncio.IncompleteReadError as exc:
                assert exc.partial == b"", f"cut response head {exc.partial!r}"
                out.eof = True
                return out
            except ConnectionResetError:
                out.reset = True
                return out
            out.responses.append((status, headers))
            if status == 100:
                continue
            length = int(headers.get(b"content-length", b"0"))
            with contextlib.suppress(asyncio.IncompleteReadError):
                # A HEAD response has no body (a cut body would end in a reset).
                await reader.readexactly(length)
            if headers.get(b"connection") != b"close":
                return out
    finally:
        writer.transport.abort() if out.reset else writer.close()


def check(outcome: Outcome, data: bytes) -> None:
    finals = [(s, h) for s, h in outcome.responses if s != 100]
    for status, headers in finals:
        proxied_ok = status == 200 and headers.get(b"x-fuzz-backend") == b"1"
        assert proxied_ok or 400 <= status <= 599, (status, headers, data)
    if finals and finals[-1][0] >= 400 and finals[-1][1].get(b"connection") == b"close":
        # An error that closes the connection closes it cleanly.
        assert outcome.eof and not outcome.reset, (outcome, data)
    if not finals:
        # Nothing answered (e.g. no complete request line before the head timeout):
        # a silent close, never a reset.
        assert not outcome.reset, (outcome, data)


async def _settled(proxy: Proxy) -> None:
    """Until the proxy has let go of every connection (bounded: 2 s)."""
    for _ in range(400):
        if proxy.n_conns == 0 and not proxy.conns:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{proxy.n_conns} connection(s) still counted")


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=DEADLINE_MS,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=mutated_requests())
def test_mutated_request_heads_never_crash_the_connection_handler(
    harness: Harness, data: bytes
) -> None:
    harness.errors.records.clear()

    async def one() -> None:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            outcome = await exchange(harness.port, data)
            check(outcome, data)
            await _settled(harness.proxy)
            # ... and of every byte it held for them (bodies, write buffers, pool).
            assert harness.proxy.buffered_bytes() == 0

    harness.runner.run(one())
    assert harness.errors.records == [], (harness.errors.records, data)


# A request answered with a closing local reply while the rest of the same read is
# still being parsed, then more bytes in that read: a valid request (which must not
# reach the backend: RFC 9112 9.6) or bytes that fail to parse (which must not be
# answered after the close began).  Both once wrote after the write side was shut,
# failing the transport: a reset under the 400 (seen under load, when the client read
# after the reset arrived), an error logged, and the second request proxied.
AFTER_CLOSE = (
    b"GET http://[bad HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: y\r\n\r\n",
    b"GET http://[bad HTTP/1.1\r\nHost: x\r\n\r\n\x00garbage\r\n\r\n",
)


@pytest.mark.parametrize("data", AFTER_CLOSE, ids=("request", "garbage"))
def test_bytes_after_a_closing_local_reply_in_the_same_read_are_dropped(
    harness: Harness, data: bytes
) -> None:
    harness.errors.records.clear()
    BACKEND_HEADS.clear()

    async def one() -> None:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            reader, writer = await asyncio.open_connection(LOCAL, harness.port)
            writer.write(data)
            # Everything the proxy sends, up to its FIN; a reset raises here.
            got = await reader.read(1 << 16)
            rest = got
            while rest:
                rest = await reader.read(1 << 16)
                got += rest
            writer.close()
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), got
            assert b"\r\nconnection: close" in head, got
            assert body == b"Bad Request", got  # one reply, nothing after it
            await _settled(harness.proxy)

    harness.runner.run(one())
    assert harness.errors.records == []
    assert BACKEND_HEADS == []
