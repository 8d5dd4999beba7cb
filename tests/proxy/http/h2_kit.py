"""Sans-socket harness for the HTTP/2 codecs: a transport double, a fake clock, an
exchange double that records what the codec tells it, and the `h2` package as the
peer (a client connection against the server codec, a server connection against the
client codec)."""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events

from gatewayd.proxy.http.codec import Headers, RequestHead, ServerStream
from gatewayd.proxy.http.h2_limits import EDGE_H2_LIMITS, FrameScanner, H2Limits
from gatewayd.proxy.http.h2_server import H2ServerConnection


class FakeTransport:
    """Collects writes; records close/abort like an asyncio transport would."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.aborted = False
        self.writes = 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def take(self) -> bytes:
        data = bytes(self.out)
        self.out.clear()
        return data


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeDownstream:
    """The facts of a client connection (codec.DownstreamConnection)."""

    proxy: object = None
    loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
    key = ("127.0.0.1", 8443)
    label = "8443"
    peer_ip = "127.0.0.1"
    sni: str | None = "example.com"
    scheme = b"https"
    client_cert: bytes | None = None
    port_for = None


class Recorder:
    """An exchange double: records every callback; ``respond`` makes it answer in
    ``on_end`` (status 200, the request body echoed)."""

    def __init__(self, stream: ServerStream, head: RequestHead, respond: bool) -> None:
        self.stream = stream
        self.head = head
        self.respond = respond
        self.events: list[tuple[str, Any]] = []
        self.body = bytearray()

    def on_start(self) -> None:
        self.events.append(("start", None))

    def on_data(self, data: bytes) -> None:
        self.events.append(("data", data))
        self.body += data

    def on_end(self, trailers: Headers | None) -> None:
        self.events.append(("end", trailers))
        if self.respond:
            from gatewayd.proxy.http.codec import ResponseHead

            body = bytes(self.body) or b"hello"
            self.stream.send_head(
                ResponseHead(200, [(b"content-type", b"text/plain")], body_length=len(body)),
                self.head.method,
            )
            self.stream.send_data(body)
            self.stream.send_end(None)

    def on_reset(self) -> None:
        self.events.append(("reset", None))

    def on_down_write_pause(self) -> None:
        self.events.append(("write_pause", None))

    def on_down_write_resume(self) -> None:
        self.events.append(("write_resume", None))

    def on_tunnel_eof(self) -> None:
        self.events.append(("tunnel_eof", None))

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class ServerRig:
    """The server codec under test, an h2 client as its peer, and the exchanges."""

    def __init__(self, limits: H2Limits = EDGE_H2_LIMITS, *, respond: bool = True) -> None:
        self.clock = Clock()
        self.transport = FakeTransport()
        self.exchanges: list[Recorder] = []
        self.respond = respond
        self.server = H2ServerConnection(
            FakeDownstream(), self._factory, clock=self.clock, limits=limits
        )
        self.goaways: list[tuple[int, int]] = []
        self.peer_scanner = FrameScanner(limits, inbound=False, strip_goaway=True)
        self.server.connection_made(self.transport)
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.pump()

    def _factory(self, stream: ServerStream, head: RequestHead) -> Recorder:
        rec = Recorder(stream, head, self.respond)
        self.exchanges.append(rec)
        return rec

    def read_back(self) -> bytes:
        """What the server wrote, less its GOAWAY frames (kept in ``goaways`` as
        (last stream id, error code)): h2 as a peer stops at a GOAWAY and would not
        read the streams a graceful GOAWAY lets finish."""
        data = self.peer_scanner.scan(self.transport.take(), 0.0)
        self.goaways += self.peer_scanner.goaways
        self.peer_scanner.goaways.clear()
        return data

    def send_raw(self, data: bytes) -> None:
        self.server.data_received(data)

    def pump(self) -> list[h2.events.Event]:
        """Move bytes both ways until quiet (bounded); the client's events."""
        events: list[h2.events.Event] = []
        for _ in range(50):
            moved = False
            data = self.client.data_to_send()
            if data:
                moved = True
                self.server.data_received(data)
            back = self.read_back()
            if back:
                moved = True
                events += self.client.receive_data(back)
            if not moved:
                break
        return events

    def request(
        self,
        path: bytes = b"/",
        *,
        method: bytes = b"GET",
        body: bytes | None = None,
        extra: Headers = (),  # type: ignore[assignment]
        end: bool = True,
    ) -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"example.com"),
            (b":path", path),
            *extra,
        ]
        self.client.send_headers(sid, headers, end_stream=end and body is None)
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def send_body(self, sid: int, body: bytes, *, end: bool) -> None:
        """DATA frames of at most the peer's frame size (windows are the test's care)."""
        size = self.client.max_outbound_frame_size
        for i in range(0, len(body), size):
            last = i + size >= len(body)
            self.client.send_data(sid, body[i : i + size], end_stream=end and last)
        if not body and end:
            self.client.end_stream(sid)


def responses(events: list[h2.events.Event]) -> dict[int, dict[str, Any]]:
    """Client events folded per stream: status, headers, body, ended, reset."""
    out: dict[int, dict[str, Any]] = {}
    for ev in events:
        sid = getattr(ev, "stream_id", None)
        if not sid:
            continue
        r = out.setdefault(
            sid,
            {
                "status": None,
                "headers": [],
                "body": b"",
                "ended": False,
                "reset": None,
                "trailers": None,
            },
        )
        if isinstance(ev, h2.events.ResponseReceived):
            hdrs = list(ev.headers or ())
            r["headers"] = hdrs
            r["status"] = int(dict(hdrs)[b":status"])
        elif isinstance(ev, h2.events.DataReceived):
            r["body"] += ev.data or b""
        elif isinstance(ev, h2.events.TrailersReceived):
            r["trailers"] = list(ev.headers or ())
        elif isinstance(ev, h2.events.StreamEnded):
            r["ended"] = True
        elif isinstance(ev, h2.events.StreamReset):
            r["reset"] = ev.error_code
    return out


class Upstream:
    """An exchange double on the client side (codec.ClientCallbacks)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.head: Any = None
        self.body = bytearray()
        self.trailers: Headers | None = None
        self.lost: tuple[BaseException | None, bool] | None = None
        self.reusable: bool | None = None

    def on_response_head(self, stream: Any, head: Any) -> None:
        self.events.append(("head", head.status))
        self.head = head

    def on_response_data(self, data: bytes) -> None:
        self.events.append(("data", len(data)))
        self.body += data

    def on_response_end(self, stream: Any, trailers: Headers | None, reusable: bool) -> None:
        self.events.append(("end", trailers))
        self.trailers = trailers
        self.reusable = reusable

    def on_stream_lost(self, stream: Any, exc: BaseException | None, got_bytes: bool) -> None:
        self.events.append(("lost", exc))
        self.lost = (exc, got_bytes)

    def on_flush(self) -> None:
        self.events.append(("flush", None))

    def on_write_pause(self) -> None:
        self.events.append(("write_pause", None))

    def on_write_resume(self) -> None:
        self.events.append(("write_resume", None))

    def on_fatal(self) -> None:
        self.events.append(("fatal", None))

    def names(self) -> list[str]:
        return [e[0] for e in self.events if e[0] != "flush"]


class ClientRig:
    """The client codec under test and an `h2` server connection as the backend."""

    def __init__(
        self, limits: H2Limits = EDGE_H2_LIMITS, settings: dict[int, int] | None = None
    ) -> None:
        from gatewayd.proxy.http.h2_client import H2ClientConnection

        self.clock = Clock()
        self.transport = FakeTransport()
        self.codec = H2ClientConnection(clock=self.clock, limits=limits)
        self.codec.connection_made(self.transport)
        self.backend = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.backend.initiate_connection()
        if settings:
            self.backend.update_settings(settings)  # type: ignore[arg-type]
        self.requests: dict[int, dict[str, Any]] = {}
        self.pump()

    def pump(self) -> list[h2.events.Event]:
        """Move bytes both ways until quiet (bounded); the backend's events, also
        folded into ``requests``."""
        events: list[h2.events.Event] = []
        for _ in range(50):
            moved = False
            data = self.transport.take()
            if data:
                moved = True
                evs = self.backend.receive_data(data)
                events += evs
                self._fold(evs)
            back = self.backend.data_to_send()
            if back:
                moved = True
                self.codec.data_received(back)
            if not moved:
                break
        return events

    def _fold(self, events: list[h2.events.Event]) -> None:
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            if not sid:
                continue
            r = self.requests.setdefault(
                sid, {"headers": None, "body": b"", "ended": False, "reset": None, "trailers": None}
            )
            if isinstance(ev, h2.events.RequestReceived):
                r["headers"] = list(ev.headers or ())
                r["ended"] = bool(ev.stream_ended)
            elif isinstance(ev, h2.events.DataReceived):
                r["body"] += ev.data or b""
                self.backend.acknowledge_received_data(ev.flow_controlled_length or 0, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                r["trailers"] = list(ev.headers or ())
            elif isinstance(ev, h2.events.StreamEnded):
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                r["reset"] = ev.error_code

    def send(
        self,
        method: bytes = b"GET",
        target: bytes = b"/",
        headers: Headers | None = None,
        *,
        body: tuple[bytes, ...] = (),
        end: bool = True,
        head_request: bool = False,
    ) -> tuple[Any, Upstream]:
        up = Upstream()
        stream = self.codec.open_stream()
        stream.bind(up, head_request)
        hdrs = headers if headers is not None else [(b"host", b"backend.example")]
        stream.send_head(RequestHead(method, target, hdrs, authority=b"backend.example"), body, end)
        self.pump()
        return stream, up

    def respond(
        self,
        sid: int,
        status: int = 200,
        headers: Headers = (),  # type: ignore[assignment]
        body: bytes = b"",
        *,
        trailers: Headers | None = None,
    ) -> None:
        fields = [(b":status", b"%d" % status), *headers]
        self.backend.send_headers(sid, fields, end_stream=not body and not trailers)
        if body:
            self.backend.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.backend.send_headers(sid, trailers, end_stream=True)
        self.pump()
