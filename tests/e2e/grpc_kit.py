"""gRPC backends and clients for end-to-end tests: the real grpcio library, no protoc
code generation.  Messages are raw bytes (no serializers); one generic handler serves
every method name, so a test can route any ``/service/method`` to it.

What a backend answers (JSON bytes, so a test sees where a call landed and what
reached the backend):

- ``*/Unary`` and any other unary name: ``{"backend", "method", "metadata", "body"}``;
- ``*/ServerStream``: the request is a count N, the answer N messages ``chunk-i``;
- ``*/ClientStream``: one answer with the messages joined by ``|``;
- ``*/Bidi``: each message echoed back as it arrives;
- ``*/Sleep``: sleeps the number of seconds in the request, then answers;
- ``*/SlowStream``: one message, a pause of the seconds in the request, another;
- ``*/Fail``: aborts with the status code named in the request (e.g. ``NOT_FOUND``).

``initial_metadata`` of each answer carries ``x-backend: <name>``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events

LOCALHOST = "127.0.0.1"


def _method_kind(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, backend: GrpcBackend) -> None:
        self.backend = backend

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        kind = _method_kind(method)
        b = self.backend
        if kind in ("ServerStream", "SlowStream"):
            return grpc.unary_stream_rpc_method_handler(
                lambda req, ctx: b.server_stream(method, req, ctx)
            )
        if kind == "ClientStream":
            return grpc.stream_unary_rpc_method_handler(
                lambda reqs, ctx: b.client_stream(method, reqs, ctx)
            )
        if kind == "Bidi":
            return grpc.stream_stream_rpc_method_handler(
                lambda reqs, ctx: b.bidi(method, reqs, ctx)
            )
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: b.unary(method, req, ctx))


class GrpcBackend:
    """A grpcio server on 127.0.0.1 (h2c) answering every method (see the module)."""

    def __init__(
        self,
        name: str,
        *,
        max_concurrent_streams: int | None = None,
        tls: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``tls``: (certificate PEM, key PEM): serve TLS (grpcio offers ALPN h2)."""
        self.name = name
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        options: list[tuple[str, Any]] = []
        if max_concurrent_streams is not None:
            options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16),
            handlers=[_Handler(self)],
            options=options,
        )
        if tls is None:
            self.port = self.server.add_insecure_port(f"{LOCALHOST}:0")
        else:
            creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
            self.port = self.server.add_secure_port(f"{LOCALHOST}:0", creds)
        self.server.start()

    def close(self) -> None:
        self.server.stop(0).wait(5)

    def _record(self, method: str, ctx: grpc.ServicerContext) -> dict[str, Any]:
        meta: dict[str, str] = {}
        for k, v in ctx.invocation_metadata():
            if isinstance(v, str):
                meta[k] = meta[k] + "," + v if k in meta else v
        call = {"backend": self.name, "method": method, "metadata": meta}
        with self.lock:
            self.calls.append(call)
        ctx.send_initial_metadata((("x-backend", self.name),))
        return call

    def unary(self, method: str, req: bytes, ctx: grpc.ServicerContext) -> bytes:
        kind = _method_kind(method)
        if kind == "Sleep":
            time.sleep(float(req.decode()))  # before any response header
        call = self._record(method, ctx)
        if kind == "Fail":
            ctx.abort(getattr(grpc.StatusCode, req.decode()), "failed as asked")
        return json.dumps({**call, "body": req.decode("latin-1")}).encode()

    def server_stream(self, method: str, req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(method, ctx)
        if _method_kind(method) == "SlowStream":
            # One message, then a pause of the requested seconds, then another.
            yield b"first"
            time.sleep(float(req.decode()))
            yield b"second"
            return
        for i in range(int(req.decode())):
            yield b"chunk-%d" % i

    def client_stream(self, method: str, reqs: Iterator[bytes], ctx: grpc.ServicerContext) -> bytes:
        self._record(method, ctx)
        return b"|".join(reqs)

    def bidi(
        self, method: str, reqs: Iterator[bytes], ctx: grpc.ServicerContext
    ) -> Iterator[bytes]:
        self._record(method, ctx)
        for r in reqs:
            yield b"echo:" + r


def channel(port: int, authority: str | None = None) -> grpc.Channel:
    """An h2c channel to gatewayd; ``authority`` sets ``:authority`` (listener and route
    hostnames)."""
    options: list[tuple[str, Any]] = []
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    return grpc.insecure_channel(f"{LOCALHOST}:{port}", options=options)


def unary(
    ch: grpc.Channel,
    path: str,
    body: bytes = b"",
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 10.0,
) -> tuple[dict[str, Any], dict[str, str]]:
    """(decoded JSON answer, initial metadata) of a unary call."""
    resp, call = ch.unary_unary(path).with_call(body, metadata=metadata, timeout=timeout)
    initial = {k: v for k, v in call.initial_metadata() if isinstance(v, str)}
    answer: dict[str, Any] = json.loads(resp)
    return answer, initial


def failure(
    ch: grpc.Channel,
    path: str,
    body: bytes = b"",
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    timeout: float = 10.0,
) -> grpc.RpcError:
    """The error of a unary call that must fail."""
    try:
        ch.unary_unary(path)(body, metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{path} succeeded")


def grpc_route(
    name: str,
    rules: list[dict[str, Any]],
    *,
    hostnames: tuple[str, ...] = (),
    parent: str = "gw",
    namespace: str = "default",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentRefs": [{"name": parent}], "rules": rules}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def method_match(
    service: str | None = None,
    method: str | None = None,
    *,
    type: str = "Exact",
    headers: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """A GRPCRouteMatch."""
    doc: dict[str, Any] = {}
    if service is not None or method is not None:
        m: dict[str, Any] = {"type": type}
        if service is not None:
            m["service"] = service
        if method is not None:
            m["method"] = method
        doc["method"] = m
    if headers:
        doc["headers"] = [{"name": n, "value": v} for n, v in headers]
    return doc


@dataclass
class RawAnswer:
    """What came back on one stream, frame by frame."""

    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    # True when the first HEADERS frame also ended the stream (trailers-only).
    headers_ended: bool = False
    ended: bool = False
    reset: int | None = None
    elapsed: float = 0.0


def raw_grpc_call(
    port: int,
    path: str,
    *,
    authority: str,
    headers: tuple[tuple[str, str], ...] = (),
    message: bytes = b"",
    timeout: float = 10.0,
) -> RawAnswer:
    """One gRPC request with the `h2` package on a blocking socket (no client deadline
    of its own: what the proxy answers, and when, is what the test sees)."""
    sock = socket.create_connection((LOCALHOST, port), timeout=timeout)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *((n.encode(), v.encode()) for n, v in headers),
    ]
    conn.send_headers(sid, fields)
    # One length-prefixed message (uncompressed).
    conn.send_data(sid, b"\x00" + struct.pack(">I", len(message)) + message, end_stream=True)
    answer = RawAnswer()
    start = time.monotonic()
    try:
        sock.sendall(conn.data_to_send())
        while not (answer.ended or answer.reset is not None):
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if getattr(ev, "stream_id", None) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    answer.headers = {bytes(k).decode(): bytes(v).decode() for k, v in ev.headers}
                    answer.headers_ended = ev.stream_ended is not None
                elif isinstance(ev, h2.events.TrailersReceived):
                    answer.trailers = {bytes(k).decode(): bytes(v).decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    answer.data += ev.data or b""
                    conn.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    answer.ended = True
                elif isinstance(ev, h2.events.StreamReset):
                    answer.reset = ev.error_code
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    finally:
        answer.elapsed = time.monotonic() - start
        sock.close()
    return answer
