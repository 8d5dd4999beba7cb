"""The HTTP/1.1 client codec (``h1_client.UpstreamConnection``) without sockets: what
it writes for a ``RequestHead`` and a body, and what it reports for response bytes fed
to it, through a transport double."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from transport_double import TransportDouble, run_in_loop

from gatewayd.proxy.http.codec import (
    RD_UPSTREAM,
    ClientStream,
    Headers,
    RequestHead,
    ResponseHead,
    UpstreamHeadersTooLarge,
    UpstreamProtocolError,
    WireRequestHead,
)
from gatewayd.proxy.http.h1_client import BODY_READ_MIN, UpstreamConnection, serialize_request
from gatewayd.proxy.http.pool import UpstreamPool


class Recorder:
    """``ClientCallbacks`` that write down what the codec reports."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.head: ResponseHead | None = None
        self.body = b""
        self.trailers: Headers | None = None

    def on_response_head(self, stream: ClientStream, head: ResponseHead) -> None:
        self.head = head
        self.events.append(("head", head.status))

    def on_response_data(self, data: bytes) -> None:
        self.body += data

    def on_upgrade(self, stream: ClientStream, head: ResponseHead) -> None:
        self.events.append(("upgrade", head.status))

    def on_response_end(
        self, stream: ClientStream, trailers: Headers | None, reusable: bool
    ) -> None:
        self.trailers = trailers
        self.events.append(("end", reusable))

    def on_stream_lost(
        self, stream: ClientStream, exc: BaseException | None, got_bytes: bool
    ) -> None:
        self.events.append(("lost", type(exc), got_bytes))

    def on_flush(self) -> None:
        self.events.append(("flush",))

    def on_write_pause(self) -> None:
        self.events.append(("write_pause",))

    def on_write_resume(self) -> None:
        self.events.append(("write_resume",))

    def on_fatal(self) -> None:
        self.events.append(("fatal",))


def client(
    test: Callable[[UpstreamConnection, TransportDouble, Recorder], None],
    *,
    head_request: bool = False,
    **limits: int,
) -> None:
    async def main() -> None:
        pool = UpstreamPool(**limits)
        conn = UpstreamConnection(pool, ("127.0.0.1", 80, ""), "be")
        t = TransportDouble()
        conn.connection_made(t)  # type: ignore[arg-type]
        rec = Recorder()
        conn.bind(rec, head_request)
        test(conn, t, rec)
        await asyncio.sleep(0)
        pool.close()

    run_in_loop(main)


def head(
    method: bytes = b"GET",
    *,
    fields: Headers | None = None,
    body_length: int | None = 0,
    codings: bytes | None = None,
) -> RequestHead:
    return RequestHead(
        method,
        b"/p?q=1",
        fields if fields is not None else [(b"host", b"be.example")],
        authority=b"be.example",
        body_length=body_length,
        end_stream=body_length == 0,
        transfer_codings=codings,
    )


def test_request_with_length_passes_the_body_through() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        h = head(b"POST", fields=[(b"host", b"be"), (b"content-length", b"5")], body_length=5)
        conn.send_head(h, [b"ab"], end_stream=False)
        conn.send_data(b"cde")
        conn.send_end([(b"dropped", b"x")])  # no chunked framing: nowhere to put them
        assert t.take() == (b"POST /p?q=1 HTTP/1.1\r\nhost: be\r\ncontent-length: 5\r\n\r\nabcde")

    client(test)


def test_streamed_request_is_chunked_with_trailers() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        h = head(b"POST", body_length=None, codings=b"gzip, chunked")
        conn.send_head(h, [b"abc"], end_stream=False)
        conn.send_data(b"de")
        conn.send_end([(b"x-sum", b"5")])
        assert t.take() == (
            b"POST /p?q=1 HTTP/1.1\r\nhost: be.example\r\n"
            b"transfer-encoding: gzip, chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n"
        )

    client(test)


def wire_head(h: RequestHead, lead: int) -> WireRequestHead:
    """``h`` as the clean lane builds it: the same attributes, its first ``lead``
    fields as they are and the lines of the others, in two pieces when there are."""
    w = WireRequestHead(
        h.method,
        h.target,
        h.headers,
        authority=h.authority,
        body_length=h.body_length,
        end_stream=h.end_stream,
        transfer_codings=h.transfer_codings,
    )
    w.lead = h.headers[:lead]
    lines = b"".join(b"%s: %s\r\n" % f for f in h.headers[lead:])
    w.wire = (lines[:5], lines[5:])
    # ``headers`` is made from the two when read.
    assert w.headers == h.headers
    return w


def test_a_wire_head_is_written_as_its_fields_would_be() -> None:
    """``WireRequestHead.wire`` stands for its fields, in every framing: the bytes on
    the wire are those of the same head without it."""
    fields = [(b"host", b"be"), (b"x-a", b"1"), (b"x-request-id", b"r")]
    cases: list[tuple[RequestHead, list[bytes], bool]] = [
        (head(fields=fields), [], True),
        (head(b"POST", fields=[*fields, (b"content-length", b"3")], body_length=3), [b"ab"], False),
        (head(b"POST", fields=fields, body_length=None), [b"abc"], False),
        (head(b"POST", fields=fields, body_length=None, codings=b"gzip, chunked"), [], True),
        (head(b"POST", fields=fields, body_length=None), [b"x"], True),
    ]

    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        for h, body, end in cases:
            conn.bind(rec, False)
            conn.send_head(h, body, end_stream=end)
            conn.send_end()
            want = t.take()
            assert want.startswith(serialize_request(h)[:-2])
            for lead in range(len(h.headers) + 1):
                conn.bind(rec, False)
                conn.send_head(wire_head(h, lead), body, end_stream=end)
                conn.send_end()
                assert t.take() == want, (lead, h.method, body, end)

    client(test)


def test_complete_request_in_one_write() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.send_head(head(b"POST", body_length=None), [b"abc"], end_stream=True)
        assert t.take().endswith(b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        conn.bind(rec, False)
        conn.send_head(head(), (), end_stream=True)
        assert t.take() == b"GET /p?q=1 HTTP/1.1\r\nhost: be.example\r\n\r\n"

    client(test)


def test_response_head_body_and_trailers() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nwiki\r\n"
        )
        assert rec.head is not None and rec.head.body_length is None
        assert rec.head.headers == [
            (b"content-type", b"text/plain"),
            (b"transfer-encoding", b"chunked"),
        ]
        assert rec.body == b"wiki"
        conn.data_received(b"0\r\nGrpc-Status: 0\r\nGrpc-Message: fine\r\n\r\n")
        assert rec.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"fine")]
        # No flush after the end: the callbacks write what they relayed when the
        # response ends (codec.ClientCallbacks.on_flush).
        assert rec.events == [("head", 200), ("flush",), ("end", True)]

    client(test)


def test_content_length_response_reports_its_length() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        assert rec.head is not None and rec.head.body_length == 3
        assert rec.body == b"abc" and ("end", True) in rec.events

    client(test)


def test_interim_responses_are_consumed() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\n\r\n"
        )
        assert rec.events[0] == ("head", 204)
        assert rec.head is not None and rec.head.end_stream and rec.head.headers == []

    client(test)


def test_head_response_has_no_body_whatever_its_framing() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        assert rec.head is not None and rec.head.end_stream
        assert rec.events[:2] == [("head", 200), ("end", True)]

    client(test, head_request=True)


def test_a_byte_after_the_response_makes_it_unusable() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX")
        assert ("end", False) in rec.events
        assert t.aborted

    client(test)


def test_body_reads_after_the_head_are_relayed_as_they_are() -> None:
    # Reads after the head of a Content-Length response skip the parser: the very
    # objects read are relayed, the end is found by counting, keep-alive still holds,
    # and the next response on the connection is parsed by a fresh parser.
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        parts: list[bytes] = []
        rec.on_response_data = parts.append  # type: ignore[method-assign]
        n = BODY_READ_MIN
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nab" % (2 * n + 6))
        small, big, last = b"cdef", b"g" * n, b"h" * n
        conn.data_received(small)  # below BODY_READ_MIN: through the parser
        conn.data_received(big)
        assert rec.events[-1] == ("flush",) and conn.handler is rec
        conn.data_received(last)
        assert parts[:2] == [b"ab", small] and parts[2] is big and parts[3] is last
        assert rec.events[-1] == ("end", True) and conn.handler is None
        assert not t.aborted
        again = Recorder()
        conn.bind(again, False)
        conn.data_received(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        assert again.events == [("head", 201), ("end", True)] and again.body == b"ok"

    client(test)


def test_body_read_past_the_length_ends_the_response_and_the_connection() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        n = BODY_READ_MIN
        conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (n + 2))
        conn.data_received(b"a" * n)
        conn.data_received(b"bcHTTP/1.1 200 OK\r\n\r\n")
        assert rec.body == b"a" * n + b"bc"
        assert ("end", False) in rec.events and t.aborted

    client(test)


def test_body_reads_of_a_connection_close_response_do_not_make_it_reusable() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        n = BODY_READ_MIN
        conn.data_received(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % n
        )
        conn.data_received(b"a" * n)
        assert rec.body == b"a" * n and rec.events[-1] == ("end", False)

    client(test)


def test_chunked_and_eof_bodies_stay_with_the_parser() -> None:
    def chunked(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc")
        conn.data_received(b"\r\n0\r\nT: v\r\n\r\n")
        assert rec.body == b"abc" and rec.trailers == [(b"t", b"v")]
        assert rec.events[-1] == ("end", True)

    def until_eof(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 200 OK\r\n\r\nab")
        conn.data_received(b"c" * BODY_READ_MIN)
        conn.connection_lost(None)
        assert rec.body == b"ab" + b"c" * BODY_READ_MIN and ("end", False) in rec.events

    client(chunked)
    client(until_eof)


def test_trailer_section_over_the_limits_is_a_protocol_error() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
            + b"".join(b"T-%d: v\r\n" % i for i in range(5))
            + b"\r\n"
        )
        assert rec.events[-2] == ("lost", UpstreamHeadersTooLarge, True)
        assert t.aborted

    client(test, max_headers=4)


def test_endless_head_is_bounded() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(10):
            conn.data_received(b"a" * 200)
            if t.aborted:
                break
        assert ("lost", UpstreamHeadersTooLarge, True) in rec.events

    client(test, max_header_bytes=1024)


def test_malformed_response_is_a_protocol_error() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 abc OK\r\n\r\n")
        kind = rec.events[0]
        assert kind[0] == "lost" and t.aborted and kind[1] is not None
        # No head was read: what failed to parse may be stale bytes of a reused
        # connection, so the exchange may send the request again (got_bytes False).
        assert kind[2] is False

    client(test)


def test_101_without_upgrade_is_refused() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\n\r\nraw")
        # RFC 9110 15.2.2: a 101 names the protocol in Upgrade.
        assert rec.events[0] == ("lost", UpstreamProtocolError, False)
        assert t.aborted and t.protocol is None

    client(test)


def test_101_turns_the_connection_into_a_tunnel() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.send_head(
            RequestHead(
                b"GET",
                b"/chat",
                [(b"host", b"a"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")],
                body_length=0,
                end_stream=True,
            )
        )
        t.take()
        conn.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n\x81\x02hi"
        )
        assert rec.events[0] == ("upgrade", 101)
        assert rec.head is None  # not a response head: on_upgrade only
        # What followed the 101 in the same read is the tunnel's first bytes.
        assert rec.body == b"\x81\x02hi"
        tunnel = t.protocol
        assert tunnel is not None and conn.tunnel
        tunnel.data_received(b"\x81\x01!")
        assert rec.body == b"\x81\x02hi\x81\x01!"
        # Raw both ways: no chunk framing on what we send.
        conn.send_data(b"\x81\x85mask!")
        assert t.take() == b"\x81\x85mask!"
        conn.half_close()
        assert t.eof_written and not t.closed
        # The backend's FIN ends the tunnel, never reusable.
        assert tunnel.eof_received() is None
        assert rec.events[-2:] == [("end", False), ("flush",)]

    client(test)


def test_read_disable_per_reason() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.read_disable(RD_UPSTREAM)
        conn.read_disable(RD_UPSTREAM)
        assert t.paused and t.pause_calls == 1
        conn.read_enable(2)  # not a reason it was disabled for
        assert t.paused
        conn.read_enable(RD_UPSTREAM)
        assert not t.paused

    client(test)


def test_write_watermarks_reach_the_exchange() -> None:
    def test(conn: UpstreamConnection, t: TransportDouble, rec: Recorder) -> None:
        conn.pause_writing()
        conn.resume_writing()
        assert rec.events == [("write_pause",), ("write_resume",)]

    client(test)
