"""The HTTP/1.1 server codec (``h1_server.HttpConnection``) without sockets: bytes are
fed to the protocol, a recording exchange stands in for the request logic, and what
the codec writes back is read from a transport double."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools
from transport_double import TransportDouble, run_in_loop

from gatewayd.proxy.http.codec import RD_UPSTREAM, Headers, RequestHead, ResponseHead
from gatewayd.proxy.http.h1_server import FEED_SLICE, MAX_HELD, MAX_QUEUED, HttpConnection
from gatewayd.proxy.server import ProxyOptions


class FakeProxy:
    """What a connection reads of its ``Proxy``."""

    def __init__(self, options: ProxyOptions) -> None:
        self.options = options
        self.metrics = None
        self.access = None
        self.n_conns = 0
        self.conns: set[HttpConnection] = set()
        self.no_idle_until = 0.0

    def make_room(self) -> bool:
        return False

    def connection_gone(self) -> None:
        pass


class Recorder:
    """A ``StreamCallbacks`` that writes down what the codec tells it."""

    def __init__(self, stream: HttpConnection, head: RequestHead) -> None:
        self.stream = stream
        self.head = head
        self.method = head.method
        self.events: list[tuple[object, ...]] = []
        self.body = b""
        self.trailers: Headers | None = None
        self.finished = False
        RECORDED.append(self)

    def on_start(self) -> None:
        self.events.append(("start",))

    def on_data(self, data: bytes) -> None:
        self.body += data

    def on_end(self, trailers: Headers | None) -> None:
        self.trailers = trailers
        self.events.append(("end",))

    def on_reset(self) -> None:
        self.events.append(("reset",))

    def on_tunnel_eof(self) -> None:
        self.events.append(("tunnel_eof",))

    def on_error(self, status: int) -> None:
        self.events.append(("error", status))

    def on_down_write_pause(self) -> None:
        self.events.append(("write_pause",))

    def on_down_write_resume(self) -> None:
        self.events.append(("write_resume",))

    def check_deadlines(self, now: float, idle_timeout: float) -> None:
        pass


RECORDED: list[Recorder] = []


class UpgradeRecorder(Recorder):
    """Stands for upgrade.UpgradeExchange (a WebSocket handshake)."""


class RecordingConnection(HttpConnection):
    new_exchange = Recorder  # type: ignore[assignment]
    new_upgrade = UpgradeRecorder  # type: ignore[assignment]


async def _serve_async(
    test: Callable[[HttpConnection, TransportDouble], None], **options: object
) -> None:
    RECORDED.clear()
    proxy = FakeProxy(ProxyOptions(access_log=None, **options))  # type: ignore[arg-type]
    conn = RecordingConnection(proxy, ("127.0.0.1", 8080), "127.0.0.1:8080")  # type: ignore[arg-type]
    t = TransportDouble()
    conn.connection_made(t)  # type: ignore[arg-type]
    test(conn, t)
    await asyncio.sleep(0)


def serve(test: Callable[[HttpConnection, TransportDouble], None], **options: object) -> None:
    run_in_loop(lambda: _serve_async(test, **options))


def respond(conn: HttpConnection, body: bytes = b"ok", *, length: bool = True) -> None:
    headers: Headers = [(b"content-length", b"%d" % len(body))] if length else []
    conn.send_head(ResponseHead(200, headers, body_length=len(body) if length else None), b"GET")
    if body:
        conn.send_data(body)
    conn.send_end()
    conn.flush()
    conn.done()


def test_simple_get_head_and_response() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n")
        [ex] = RECORDED
        head = ex.head
        assert (head.method, head.target, head.authority, head.version) == (
            b"GET",
            b"/a?b=1",
            b"example.com",
            "1.1",
        )
        assert head.headers == [(b"host", b"example.com"), (b"x-a", b"1")]
        assert head.end_stream and head.body_length == 0 and head.keep_alive
        assert ex.events == [("start",), ("end",)]
        respond(conn)
        out = t.take()
        assert out.startswith(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert b"connection" not in out  # kept alive: nothing to say
        assert not t.eof_written

    serve(test)


def test_pipelined_requests_start_in_order() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        first, second, third = RECORDED
        assert first.events == [("start",), ("end",)]
        # Parsed ahead (the body is delivered and held by the exchange), not started.
        assert second.events == [("end",)] and second.body == b"abc"
        assert third.events == [("end",)]
        respond(conn, b"1")
        assert second.events == [("end",), ("start",)]
        assert third.events == [("end",)]
        respond(conn, b"2")
        assert third.events == [("end",), ("start",)]
        respond(conn, b"3")
        out = t.take()
        assert out.count(b"HTTP/1.1 200 OK") == 3
        assert out.index(b"\r\n\r\n1") < out.index(b"\r\n\r\n2") < out.index(b"\r\n\r\n3")

    serve(test)


def test_chunked_request_with_trailers() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n"
        )
        [ex] = RECORDED
        assert ex.head.body_length is None and not ex.head.end_stream
        assert ex.head.transfer_codings == b"gzip, chunked"
        assert ex.body == b"abc" and ex.events == [("start",)]
        conn.data_received(b"2\r\nde\r\n0\r\nGrpc-Status: 0\r\nX-Sum: 5\r\n\r\n")
        assert ex.body == b"abcde"
        assert ex.trailers == [(b"grpc-status", b"0"), (b"x-sum", b"5")]
        assert ex.events == [("start",), ("end",)]

    serve(test)


def test_chunked_response_with_trailers() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.send_head(ResponseHead(200, [(b"x", b"1")]), b"GET")
        conn.send_data(b"hello")
        conn.send_data(b"!")
        conn.send_end([(b"grpc-status", b"0")])
        conn.flush()
        assert t.take() == (
            b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1\r\n!\r\n0\r\ngrpc-status: 0\r\n\r\n"
        )
        assert conn.drain_request()

    serve(test)


def test_response_heads_with_and_without_fields() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        # No field at all (a 204 with none, no request id): status line, empty line.
        conn.send_head(ResponseHead(204, [], body_length=0), b"GET")
        conn.send_end()
        conn.flush()
        conn.done()
        assert t.take() == b"HTTP/1.1 204 No Content\r\n\r\n"
        conn.data_received(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        fields = [(b"server", b"s"), (b"content-length", b"2"), (b"x-e", b"")]
        conn.send_head(ResponseHead(200, fields, body_length=2), b"GET")
        conn.send_data(b"ok")
        conn.send_end()
        conn.flush()
        conn.done()
        assert t.take() == (b"HTTP/1.1 200 OK\r\nserver: s\r\ncontent-length: 2\r\nx-e: \r\n\r\nok")

    serve(test)


def test_http10_client_gets_a_close_delimited_body() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET / HTTP/1.0\r\n\r\n")
        [ex] = RECORDED
        assert ex.head.authority is None and ex.head.version == "1.0"
        conn.send_head(ResponseHead(200, []), b"GET")
        conn.send_data(b"body")
        conn.send_end([(b"dropped", b"1")])  # no framing can carry trailers here
        conn.flush()
        conn.done()
        out = t.take()
        assert out == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nbody"
        assert t.eof_written  # the body ends with the connection

    serve(test)


def test_expect_100_continue_is_sent_once_on_request() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        [ex] = RECORDED
        assert ex.head.expect_continue
        assert t.take() == b""  # never before the exchange asks
        conn.send_continue()
        conn.send_continue()
        assert t.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
        conn.data_received(b"ok")
        assert ex.body == b"ok"

    serve(test)


def test_final_reply_without_continue_closes() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        sent = conn.local_reply(404, [], b"nope", close=False)
        assert sent == 4
        conn.flush()
        out = t.take()
        # The client may or may not send the body now: the connection is not reused.
        assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
        assert b"connection: close\r\n" in out and out.endswith(b"\r\n\r\nnope")
        assert not conn.drain_request()

    serve(test)


def test_local_reply_to_head_has_no_body() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert conn.local_reply(503, [(b"x-request-id", b"r1")], b"down", close=False) == 0
        conn.flush()
        out = t.take()
        assert b"content-length: 4\r\n" in out and b"x-request-id: r1\r\n" in out
        assert out.endswith(b"\r\n\r\n") and b"content-type: text/plain\r\n" in out
        assert b"date: " in out and b"server: gatewayd\r\n" in out

    serve(test)


def test_too_many_header_fields_is_431_and_close() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        fields = b"".join(b"X-%d: v\r\n" % i for i in range(5))
        conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n")
        assert RECORDED == []
        out = t.take()
        assert out.startswith(b"HTTP/1.1 431 ") and b"connection: close" in out
        assert t.eof_written

    serve(test, max_headers=4)


def test_header_bytes_over_limit_in_pieces_is_431() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: ")
        for _ in range(5):  # an endless field line, fed in pieces
            conn.data_received(b"a" * 300)
            if t.written:
                break
        out = t.take()
        assert out.startswith(b"HTTP/1.1 431 ")
        assert t.eof_written

    serve(test, max_header_bytes=1024)


def test_trailer_section_shares_the_head_limits() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
        )
        [ex] = RECORDED
        trailers = b"".join(b"T-%d: v\r\n" % i for i in range(4))
        conn.data_received(b"0\r\n" + trailers + b"\r\n")
        assert ex.events == [("start",), ("error", 431)]

    serve(test, max_headers=4)


def test_malformed_and_ambiguous_requests_are_400() -> None:
    cases = [
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    for case in cases:

        def test(conn: HttpConnection, t: TransportDouble, case: bytes = case) -> None:
            conn.data_received(case)
            if RECORDED:  # the head was fine, the body broke: the exchange answers
                assert RECORDED[0].events[-1] == ("error", 400), case
                return
            out = t.take()
            assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n"), case
            assert b"connection: close" in out and t.eof_written, case

        serve(test)


def test_read_disable_is_per_reason_and_idempotent() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        conn.read_disable(RD_UPSTREAM)
        conn.read_disable(RD_UPSTREAM)
        assert t.paused and t.pause_calls == 1
        conn.hold(MAX_HELD + 1)  # a second reason
        conn.read_enable(RD_UPSTREAM)
        assert t.paused  # still held
        conn.release_held(MAX_HELD + 1)
        assert not t.paused

    serve(test)


def test_slow_client_pauses_the_active_exchange_only() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        first, second = RECORDED
        conn.pause_writing()
        assert first.events[-1] == ("write_pause",)
        assert ("write_pause",) not in second.events
        respond(conn)
        # The next exchange starts knowing the client is still slow.
        assert second.events[-2:] == [("write_pause",), ("start",)]
        conn.resume_writing()
        assert second.events[-1] == ("write_resume",)

    serve(test)


def test_pipelining_ahead_is_bounded() -> None:
    req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"

    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(req * 2000)
        # Parsing stops within one slice of the queue filling up; the rest of the read
        # waits unparsed until the queue drains.
        assert t.paused
        assert MAX_QUEUED < len(RECORDED) <= MAX_QUEUED + 1 + FEED_SLICE // len(req) + 1
        parsed = len(RECORDED)
        while conn.active is not None:
            respond(conn)
        # Every parsed request answered: reading resumes, the unparsed rest is fed on
        # the next loop iteration.
        total = 2000 * len(req)
        assert not t.paused and parsed < 2000
        assert conn.backlog and (total - len(conn.backlog)) % FEED_SLICE == 0

    run_in_loop(lambda: _serve_async(test))


def test_client_gone_resets_the_active_exchange() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        conn.connection_lost(None)
        assert RECORDED[0].events[-1] == ("reset",)

    serve(test)


# --------------------------------------------------------------------------- upgrades

WS_HEAD = (
    b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_websocket_handshake_then_raw_bytes_both_ways() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(WS_HEAD + b"early")
        [ex] = RECORDED
        assert type(ex) is UpgradeRecorder
        assert ex.head.protocol == b"websocket"
        assert ex.events == [("start",), ("end",)]
        # Bytes after the head are the tunnel's, given to the exchange (which holds
        # them until the backend's 101); the transport's protocol is the tunnel now.
        assert ex.body == b"early"
        tunnel = t.protocol
        assert tunnel is not None
        conn.send_tunnel_head(
            ResponseHead(101, [(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
        )
        conn.flush()
        assert t.take() == (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        )
        tunnel.data_received(b"\x81\x82abcd\x00\x00")
        assert ex.body == b"early\x81\x82abcd\x00\x00"
        conn.send_data(b"\x81\x02hi")  # no chunk framing in a tunnel
        conn.flush()
        assert t.take() == b"\x81\x02hi"
        # The client's FIN is a half-close passed on; the connection stays writable.
        assert tunnel.eof_received() is True
        assert ex.events[-1] == ("tunnel_eof",)
        conn.send_data(b"last")
        conn.send_end()
        conn.flush()
        conn.done()
        assert t.take() == b"last"
        assert t.eof_written  # closed after the tunnel, never kept alive

    serve(test)


def test_websocket_head_and_tunnel_in_one_big_read() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        tail = b"x" * (FEED_SLICE * 3)
        conn.data_received(WS_HEAD + tail)
        [ex] = RECORDED
        assert ex.body == tail  # every byte after the head, across the parse slices

    serve(test)


def test_other_upgrade_tokens_are_plain_requests() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\n"
            b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
            b"ignored"
        )
        [ex] = RECORDED
        assert type(ex) is Recorder
        assert ex.head.protocol is None
        assert t.protocol is None and ex.body == b""
        respond(conn)
        out = t.take()
        assert out.startswith(b"HTTP/1.1 200") and b"connection: close" in out

    serve(test)


def test_websocket_upgrade_with_a_body_is_not_upgraded() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(
            b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Content-Length: 2\r\n\r\nok"
        )
        [ex] = RECORDED
        assert type(ex) is Recorder and ex.head.protocol is None

    serve(test)


def test_forward_clean_says_whether_forwarding_must_walk_the_fields() -> None:
    """``RequestHead.forward_clean``: True only when no field is one the forwarding
    walk drops, keeps a copy of or replaces (forwarded.FORWARD_WALKED, x-envoy-*)."""
    cases = [
        (b"Host: a\r\nUser-Agent: u\r\nAccept: */*\r\nX-Custom: 1\r\n", True),
        (b"Host: a\r\nContent-Length: 0\r\n", True),
        (b"Host: a\r\nConnection: keep-alive\r\n", False),
        (b"Host: a\r\nX-Forwarded-For: 192.0.2.1\r\n", False),
        (b"Host: a\r\nX-Request-Id: r\r\n", False),
        (b"Host: a\r\nTraceparent: t\r\n", False),
        (b"Host: a\r\nTracestate: t\r\n", False),
        (b"Host: a\r\nX-Envoy-Retry-On: 5xx\r\n", False),
        (b"Host: a\r\nX-Envoy: 1\r\n", True),  # not the x-envoy- prefix
        (b"Host: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n", False),
        (b"Host: a\r\nTE: trailers\r\n", False),
    ]
    for fields, clean in cases:

        def test(
            conn: HttpConnection, t: TransportDouble, fields: bytes = fields, clean: bool = clean
        ) -> None:
            conn.data_received(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
            [ex] = RECORDED
            assert ex.head.forward_clean is clean, fields

        serve(test)

    # Chunked: transfer-encoding is hop-by-hop.
    def chunked(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        [ex] = RECORDED
        assert not ex.head.forward_clean
        assert ex.head.transfer_codings == b"chunked"

    serve(chunked)


def test_version_and_keep_alive_agree_with_the_parser_for_every_version() -> None:
    """``head.version`` is taken without asking the parser when a request is kept
    alive and has no Connection field: for each version llhttp accepts, with and
    without Connection fields, version and keep-alive are still the parser's."""

    class Asker:
        version = ""
        keep = False
        parser: httptools.HttpRequestParser

        def on_headers_complete(self) -> None:
            self.version = self.parser.get_http_version()
            self.keep = self.parser.should_keep_alive()

    for version in (b"0.9", b"1.0", b"1.1", b"2.0"):
        for fields in (
            b"",
            b"Connection: keep-alive\r\n",
            b"Proxy-Connection: keep-alive\r\n",
            b"Connection: close\r\n",
            b"X-Forwarded-For: 192.0.2.1\r\n",
        ):
            request = b"GET / HTTP/" + version + b"\r\nHost: a\r\n" + fields + b"\r\n"
            asker = Asker()
            asker.parser = httptools.HttpRequestParser(asker)
            asker.parser.feed_data(request)
            assert asker.version == version.decode()

            def test(
                conn: HttpConnection,
                t: TransportDouble,
                request: bytes = request,
                asker: Asker = asker,
            ) -> None:
                conn.data_received(request)
                [ex] = RECORDED
                assert ex.head.version == asker.version, request
                assert ex.head.keep_alive is asker.keep, request

            serve(test)


def test_a_head_incomplete_at_the_end_of_a_read_gets_the_head_deadline() -> None:
    """Between keep-alive requests the idle deadline runs; a head left incomplete by a
    read switches it to the head deadline (408 when it passes), a head complete within
    its read goes straight to being served."""
    from gatewayd.proxy.http.h1_server import D_HEAD, D_IDLE, D_NONE

    def test(conn: HttpConnection, t: TransportDouble) -> None:
        conn.data_received(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.deadline_kind == D_NONE
        respond(conn)
        assert conn.deadline_kind == D_IDLE
        conn.data_received(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        assert conn.deadline_kind == D_NONE
        respond(conn)
        assert conn.deadline_kind == D_IDLE
        conn.data_received(b"GE")
        assert conn.deadline_kind == D_HEAD and conn.deadline > 0.0
        conn.data_received(b"T /c HTTP/1.1\r\nHo")
        assert conn.deadline_kind == D_HEAD
        conn.data_received(b"st: a\r\n\r\n")
        assert conn.deadline_kind == D_NONE
        respond(conn)
        conn.data_received(b"GET /d HTTP/1.1\r\n")
        t.take()
        conn.on_deadline()
        assert t.take().startswith(b"HTTP/1.1 408 ")
        assert [ex.head.target for ex in RECORDED] == [b"/a", b"/b", b"/c"]

    serve(test, header_timeout=5.0)


def test_field_name_cache_is_bounded_and_agrees_with_lower() -> None:
    from gatewayd.proxy.http import h1_server as h1

    for i in range(3 * h1.NAME_CACHE_SIZE):
        raw = b"X-Field-%d" % i
        assert h1._name_info(raw) == (raw.lower(), h1.K_PLAIN)
        assert len(h1._name_cache) <= h1.NAME_CACHE_SIZE
    long_name = b"A" * (h1.NAME_CACHE_LEN + 1)
    assert h1._name_info(long_name) == (b"a" * (h1.NAME_CACHE_LEN + 1), h1.K_PLAIN)
    assert long_name not in h1._name_cache  # long names are never kept
    assert h1._name_info(b"HoSt") == (b"host", h1.K_HOST)
    assert h1._name_info(b"X-ENVOY-Retry-On") == (b"x-envoy-retry-on", h1.K_WALKED)
    assert h1._name_info(b"Content-Length") == (b"content-length", h1.K_LENGTH)
    assert h1._name_info(b"X-Forwarded-For") == (b"x-forwarded-for", h1.K_WALKED)


def test_field_names_in_any_spelling_are_read_the_same() -> None:
    def test(conn: HttpConnection, t: TransportDouble) -> None:
        for host, length in ((b"Host", b"Content-Length"), (b"HOST", b"content-LENGTH")):
            conn.data_received(
                b"POST / HTTP/1.1\r\n%s: a\r\n%s: 2\r\nX-Envoy-Upstream-Rq-Timeout-Ms: 1"
                b"\r\n\r\nok" % (host, length)
            )
            ex = RECORDED[-1]
            assert ex.head.authority == b"a" and ex.head.body_length == 2
            assert [n for n, _ in ex.head.headers] == [
                b"host",
                b"content-length",
                b"x-envoy-upstream-rq-timeout-ms",
            ]
            assert not ex.head.forward_clean
            respond(conn)

    serve(test)
