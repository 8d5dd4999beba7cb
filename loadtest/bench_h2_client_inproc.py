"""µs of Python per gRPC unary call in the upstream HTTP/2 client alone (issue 12).

No sockets, no event loop: an ``H2ClientConnection`` on an in-memory transport sends
a unary request (HEADERS, DATA with END_STREAM) and reads the response a backend sends
(HEADERS, DATA, trailers HEADERS with END_STREAM, in one read, as nginx does) from
bytes prepared once by an ``h2`` server.  An exchange double takes the callbacks.  The
minimum over rounds of the mean per call, so a shared machine disturbs it little.
Run it against an older tree with ``PYTHONPATH=/path/to/tree`` to compare:

    .venv/bin/python loadtest/bench_h2_client_inproc.py
    PYTHONPATH=/work/wt-base .venv/bin/python loadtest/bench_h2_client_inproc.py
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from gatewayd.proxy.http.codec import RequestHead
from gatewayd.proxy.http.h2_client import H2ClientConnection

REQUEST = b"\x00\x00\x00\x00\x04ping"
REPLY = b"\x00\x00\x00\x00\x0dHello, World!"


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class Exchange:
    """codec.ClientCallbacks, doing nothing but keeping what a real one keeps."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.done = False

    def on_response_head(self, stream: Any, head: Any) -> None:
        self.status = head.status

    def on_response_data(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self, stream: Any, trailers: Any, reusable: bool) -> None:
        self.done = True

    def on_stream_lost(self, stream: Any, exc: Any, got_bytes: bool) -> None:
        raise AssertionError(f"stream lost: {exc}")

    def on_flush(self) -> None:
        pass

    def on_write_pause(self) -> None:
        pass

    def on_write_resume(self) -> None:
        pass

    def on_fatal(self) -> None:
        raise AssertionError("fatal")


def responses(calls: int) -> tuple[bytes, list[bytes]]:
    """The backend's preface (SETTINGS) and, per stream id 1, 3, ..., its answer."""
    backend = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    backend.initiate_connection()
    preface = backend.data_to_send()
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    backend.receive_data(client.data_to_send())
    backend.data_to_send()
    out = []
    for i in range(calls):
        sid = 2 * i + 1
        request = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"b"),
                   (b":path", b"/s/m")]  # fmt: skip
        client.send_headers(sid, request, end_stream=True)
        backend.receive_data(client.data_to_send())
        backend.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        backend.send_data(sid, REPLY)
        backend.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"")], end_stream=True)
        out.append(backend.data_to_send())
        # The preparing client acknowledges the DATA, so the backend's window stays open.
        for ev in client.receive_data(out[-1]):
            if isinstance(ev, h2.events.DataReceived):
                client.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
        backend.receive_data(client.data_to_send())
        backend.data_to_send()
    return preface, out


def run(calls: int, preface: bytes, answers: list[bytes]) -> float:
    transport = Transport()
    codec = H2ClientConnection(clock=time.monotonic)
    codec.connection_made(transport)
    codec.data_received(preface)
    head = RequestHead(
        b"POST",
        b"/gatewayd.bench.Bench/Call",
        [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
        authority=b"backend",
    )
    start = time.perf_counter()
    for i in range(calls):
        ex = Exchange()
        stream = codec.open_stream()
        stream.bind(ex, False)
        stream.send_head(head, (REQUEST,), True)
        codec.data_received(answers[i])
        if not ex.done:
            raise AssertionError(f"call {i} did not end")
        if i % 100 == 99:
            transport.out.clear()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    preface, answers = responses(args.calls)
    best = min(run(args.calls, preface, answers) for _ in range(args.rounds))
    print(f"{best:.2f} us per unary call in the upstream client (min of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
