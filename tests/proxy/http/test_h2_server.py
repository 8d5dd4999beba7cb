"""The downstream HTTP/2 codec without sockets: an `h2` client connection is the peer,
a transport double carries the bytes, a fake clock drives the timeouts."""

from __future__ import annotations

from collections.abc import Callable

import h2.events
import h2.settings
import pytest
from h2_kit import Clock, FakeDownstream, FakeTransport, ServerRig, responses
from hyperframe.frame import GoAwayFrame

from gatewayd.proxy.http.codec import (
    HTTP_2,
    RD_UPSTREAM,
    RequestHead,
    ResponseHead,
    ServerStream,
    StreamCallbacks,
)
from gatewayd.proxy.http.h2_limits import PREFACE, H2Limits, is_h2_preface
from gatewayd.proxy.http.h2_server import H2ServerConnection


def _never(stream: ServerStream, head: RequestHead) -> StreamCallbacks:
    raise AssertionError("no request expected")


def test_get_maps_pseudo_headers_to_the_head_and_answers() -> None:
    rig = ServerRig()
    sid = rig.request(b"/a?b=1", extra=[(b"user-agent", b"t")])
    got = responses(rig.pump())
    ex = rig.exchanges[0]
    assert ex.head.method == b"GET"
    assert ex.head.target == b"/a?b=1"
    assert ex.head.authority == b"example.com"
    assert ex.head.scheme == b"https"
    assert ex.head.version == HTTP_2
    assert ex.head.end_stream is True
    assert ex.head.body_length == 0
    # :authority is also the Host field an HTTP/1.1 hop needs (RFC 9113 8.3.1).
    assert ex.head.headers == [(b"host", b"example.com"), (b"user-agent", b"t")]
    assert ex.names() == ["start", "end"]
    assert got[sid]["status"] == 200
    assert got[sid]["body"] == b"hello"
    assert got[sid]["ended"]
    assert (b"content-length", b"5") in got[sid]["headers"]
    assert rig.server.streams == {}


def test_post_body_is_delivered_and_the_window_given_back() -> None:
    rig = ServerRig()
    body = b"x" * 40000
    sid = rig.request(
        b"/p", method=b"POST", body=body, extra=[(b"content-length", b"%d" % len(body))]
    )
    got = responses(rig.pump())
    ex = rig.exchanges[0]
    assert ex.head.body_length == len(body)
    assert ex.head.end_stream is False
    assert bytes(ex.body) == body
    assert got[sid]["body"] == body
    # Everything the client sent was acknowledged: its connection window is whole again
    # (h2 sends WINDOW_UPDATE once half a window is consumed).
    assert rig.client.outbound_flow_control_window > 1024 * 1024 - 65536


def test_settings_and_windows_advertised_are_the_edge_limits() -> None:
    rig = ServerRig()
    remote = rig.client.remote_settings
    assert remote.max_concurrent_streams == 100
    assert remote.initial_window_size == 64 * 1024
    assert remote.max_header_list_size == 60 * 1024
    assert remote.header_table_size == 4096
    assert remote.max_frame_size == 16384
    # 1 MiB connection window (65,535 by default plus our WINDOW_UPDATE on stream 0).
    assert rig.client.outbound_flow_control_window == 1024 * 1024


def test_cookies_are_joined_and_host_stands_in_for_a_missing_authority() -> None:
    rig = ServerRig()
    sid = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        sid,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b"host", b"h.example"),
            (b"cookie", b"a=1"),
            (b"accept", b"*/*"),
            (b"cookie", b"b=2"),
        ],
        end_stream=True,
    )
    rig.pump()
    head = rig.exchanges[0].head
    assert head.authority == b"h.example"
    # One cookie field, the values in order (RFC 9113 8.2.3), before an HTTP/1.1 hop.
    assert [v for n, v in head.headers if n == b"cookie"] == [b"a=1; b=2"]
    assert (b"accept", b"*/*") in head.headers


def test_a_host_beside_authority_is_kept_and_a_single_cookie_stays_as_it_is() -> None:
    rig = ServerRig()
    sid = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        sid,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":authority", b"a.example"),
            (b":path", b"/"),
            (b"cookie", b"a=1"),
            (b"host", b"a.example"),
        ],
        end_stream=True,
    )
    rig.pump()
    head = rig.exchanges[0].head
    # A Host is there already: none is added from :authority (RFC 9113 8.3.1 asks for
    # one only when it is missing); one cookie is passed as it came.
    assert head.authority == b"a.example"
    assert [v for n, v in head.headers if n == b"host"] == [b"a.example"]
    assert [v for n, v in head.headers if n == b"cookie"] == [b"a=1"]
    assert len(head.headers) == 2


def test_without_authority_a_later_host_is_the_authority_and_is_not_repeated() -> None:
    rig = ServerRig()
    sid = rig.client.get_next_available_stream_id()
    rig.client.send_headers(
        sid,
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b"accept", b"*/*"),
            (b"user-agent", b"t"),
            (b"host", b"h.example"),
        ],
        end_stream=True,
    )
    rig.pump()
    head = rig.exchanges[0].head
    assert head.authority == b"h.example"
    assert [v for n, v in head.headers if n == b"host"] == [b"h.example"]
    assert len(head.headers) == 3


def test_a_read_disabled_stream_withholds_its_window_and_the_others_go_on() -> None:
    rig = ServerRig(respond=False)
    a = rig.request(b"/a", method=b"POST", end=False)
    b = rig.request(b"/b", method=b"POST", end=False)
    rig.pump()
    ex_a, ex_b = rig.exchanges
    ex_a.stream.read_disable(RD_UPSTREAM)
    window = rig.client.local_flow_control_window(a)
    assert window == 64 * 1024
    rig.send_body(a, b"a" * window, end=False)
    rig.send_body(b, b"b" * window, end=False)
    rig.pump()
    assert bytes(ex_a.body) == b""  # held in the codec, not delivered
    assert bytes(ex_b.body) == b"b" * window
    assert rig.client.local_flow_control_window(a) == 0  # no WINDOW_UPDATE for a
    assert rig.client.local_flow_control_window(b) > 0  # b's window came back
    rig.client.send_data(b, b"more", end_stream=True)
    rig.pump()
    assert ex_b.names()[-1] == "end"
    # Enabling a again delivers what was held, then gives the window back.
    ex_a.stream.read_enable(RD_UPSTREAM)
    rig.pump()
    assert bytes(ex_a.body) == b"a" * window
    assert rig.client.local_flow_control_window(a) > 0


def test_the_end_of_a_held_request_waits_behind_its_data() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/a", method=b"POST", end=False)
    rig.pump()
    ex = rig.exchanges[0]
    ex.stream.read_disable(RD_UPSTREAM)
    rig.client.send_data(sid, b"abc")
    rig.client.send_headers(sid, [(b"x-checksum", b"1")], end_stream=True)
    rig.pump()
    assert ex.names() == ["start"]
    ex.stream.read_enable(RD_UPSTREAM)
    assert ex.names() == ["start", "data", "end"]
    assert ex.events[-1][1] == [(b"x-checksum", b"1")]


def test_response_trailers_and_connection_fields_dropped() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/t")
    rig.pump()
    stream = rig.exchanges[0].stream
    stream.send_head(
        ResponseHead(
            200,
            [
                (b"Content-Type", b"application/grpc"),
                (b"connection", b"keep-alive, x-hop"),
                (b"keep-alive", b"timeout=5"),
                (b"transfer-encoding", b"chunked"),
                (b"x-hop", b"1"),
            ],
        ),
        b"POST",
    )
    stream.send_data(b"\x00\x00\x00\x00\x00")
    stream.send_end([(b"grpc-status", b"0")])
    got = responses(rig.pump())[sid]
    names = [n for n, _ in got["headers"]]
    assert names == [b":status", b"content-type"]
    assert got["body"] == b"\x00" * 5
    assert got["trailers"] == [(b"grpc-status", b"0")]
    assert got["ended"]


def test_local_reply_renders_status_date_server_and_length() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/nope")
    head_sid = rig.request(b"/nope", method=b"HEAD")
    rig.pump()
    get_ex, head_ex = rig.exchanges
    assert get_ex.stream.local_reply(404, [(b"x-why", b"nr")], b"no route", close=True) == 8
    assert head_ex.stream.local_reply(404, (), b"no route", close=False) == 0
    got = responses(rig.pump())
    hdrs = dict(got[sid]["headers"])
    assert hdrs[b":status"] == b"404"
    assert hdrs[b"content-length"] == b"8"
    assert hdrs[b"server"] == b"gatewayd"
    assert hdrs[b"x-why"] == b"nr"
    assert b"date" in hdrs
    assert got[sid]["body"] == b"no route"
    assert got[head_sid]["body"] == b""
    assert dict(got[head_sid]["headers"])[b"content-length"] == b"8"
    # close=True ends the stream only: the connection serves the next request.
    rig.respond = True
    nxt = rig.request(b"/again")
    assert responses(rig.pump())[nxt]["status"] == 200
    assert not rig.transport.closed


def test_an_answer_before_the_request_ends_resets_it_with_no_error() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/up", method=b"POST", body=b"part", end=False)
    rig.pump()
    rig.exchanges[0].stream.local_reply(413, (), b"too big", close=True)
    got = responses(rig.pump())[sid]
    assert got["status"] == 413
    assert got["reset"] == 0  # RST_STREAM(NO_ERROR), RFC 9113 8.1
    assert rig.server.streams == {}
    assert rig.server.resets.premature == 0


def test_continue_is_an_interim_response() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/c", method=b"POST", end=False, extra=[(b"expect", b"100-continue")])
    rig.pump()
    rig.exchanges[0].stream.send_continue()
    events = rig.pump()
    assert any(
        isinstance(e, h2.events.InformationalResponseReceived) and e.stream_id == sid
        for e in events
    )


def test_a_response_over_the_window_waits_and_pauses_the_exchange() -> None:
    rig = ServerRig(respond=False)
    # The client grants only the default 65,535-byte windows and reads nothing back.
    sid = rig.request(b"/big")
    rig.pump()
    ex = rig.exchanges[0]
    stream = ex.stream
    stream.send_head(ResponseHead(200, [], body_length=300_000), b"GET")
    stream.send_data(b"z" * 300_000)
    stream.flush()
    data = rig.transport.take()
    events = rig.client.receive_data(data)
    got = responses(events)[sid]
    assert len(got["body"]) == 65535  # the client's initial stream window
    assert stream.write_buffer_size() == 300_000 - 65535
    assert "write_pause" in ex.names()
    # The client reads: windows open, the rest flows, the exchange may read again.
    body = got["body"]
    for _ in range(40):
        rig.client.acknowledge_received_data(len(got["body"]), sid)
        got = responses(rig.pump()).get(sid, {"body": b""})
        body += got["body"]
        if len(body) >= 300_000:
            break
    assert len(body) == 300_000
    assert "write_resume" in ex.names()
    stream.send_end(None)
    assert responses(rig.pump())[sid]["ended"]


def test_reset_by_the_exchange_is_rst_stream_internal_error() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/r")
    rig.pump()
    rig.exchanges[0].stream.reset()
    got = responses(rig.pump())[sid]
    assert got["reset"] == 2
    assert rig.server.resets.premature == 0  # our own choice: not the client's doing


def test_client_reset_tells_the_exchange() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/r")
    rig.pump()
    rig.client.reset_stream(sid, 8)
    rig.pump()
    assert rig.exchanges[0].names() == ["start", "end", "reset"]
    assert rig.server.resets.premature == 1


def test_graceful_drain_finishes_open_streams_and_refuses_new_ones() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/slow")
    rig.pump()
    rig.server.drain()
    rig.pump()
    assert rig.goaways == [(sid, 0)]
    assert rig.exchanges[0].stream.closing
    assert not rig.transport.closed
    # A stream opened after the GOAWAY (a client that had not read it yet) is refused.
    late = rig.request(b"/late")
    got = responses(rig.pump())
    assert got[late]["reset"] == 7  # REFUSED_STREAM: safe to retry elsewhere
    assert len(rig.exchanges) == 1
    stream = rig.exchanges[0].stream
    stream.send_head(ResponseHead(200, [], body_length=2), b"GET")
    stream.send_data(b"ok")
    stream.send_end(None)
    got = responses(rig.pump())
    assert got[sid]["body"] == b"ok"
    assert rig.transport.closed


def test_idle_connection_gets_goaway_and_closes() -> None:
    rig = ServerRig()
    rig.request(b"/")
    rig.pump()
    start = rig.clock.now
    rig.server.tick(start + 59)
    assert not rig.transport.closed
    rig.server.tick(start + 60)
    rig.pump()
    assert rig.goaways == [(1, 0)]
    assert rig.transport.closed


def test_an_open_stream_keeps_the_connection_from_idling_out() -> None:
    rig = ServerRig(respond=False)
    rig.request(b"/")
    rig.pump()
    rig.server.tick(rig.clock.now + 3600)
    assert not rig.transport.closed


def test_zero_window_stall_is_reset_after_the_stream_idle_timeout() -> None:
    rig = ServerRig(respond=False)
    rig.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    sid = rig.request(b"/stuck")
    rig.pump()
    ex = rig.exchanges[0]
    ex.stream.send_head(ResponseHead(200, [], body_length=10), b"GET")
    ex.stream.send_data(b"0123456789")
    ex.stream.flush()
    rig.pump()
    assert ex.stream.write_buffer_size() == 10
    rig.clock.now += 299
    rig.server.tick(rig.clock.now)
    assert "reset" not in ex.names()
    rig.clock.now += 1
    rig.server.tick(rig.clock.now)
    assert ex.names()[-1] == "reset"
    got = responses(rig.pump())[sid]
    assert got["reset"] == 2
    assert not rig.transport.closed  # the stream ends, not the connection
    assert rig.server.resets.premature == 0


def test_more_than_100_headers_get_431_and_the_connection_stays() -> None:
    rig = ServerRig()
    extra = [(b"x-h%d" % i, b"v") for i in range(101)]
    sid = rig.request(b"/", extra=extra)
    got = responses(rig.pump())
    assert got[sid]["status"] == 431
    assert rig.exchanges == []
    nxt = rig.request(b"/", extra=extra[:100])
    assert responses(rig.pump())[nxt]["status"] == 200


def test_write_pause_and_resume_reach_every_stream() -> None:
    rig = ServerRig(respond=False)
    rig.request(b"/1")
    rig.request(b"/2")
    rig.pump()
    rig.server.pause_writing()
    assert [e.names()[-1] for e in rig.exchanges] == ["write_pause", "write_pause"]
    rig.server.resume_writing()
    assert [e.names()[-1] for e in rig.exchanges] == ["write_resume", "write_resume"]


def test_connection_lost_resets_open_streams() -> None:
    rig = ServerRig(respond=False)
    rig.request(b"/1")
    rig.pump()
    rig.server.connection_lost(None)
    assert rig.exchanges[0].names()[-1] == "reset"
    assert rig.server.streams == {}


def test_client_goaway_with_an_error_ends_everything() -> None:
    rig = ServerRig(respond=False)
    rig.request(b"/1")
    rig.pump()
    rig.client.close_connection(error_code=2)
    rig.pump()
    assert rig.exchanges[0].names()[-1] == "reset"
    assert rig.transport.closed


def test_h2c_prior_knowledge_preface_detection() -> None:
    assert is_h2_preface(PREFACE) is True
    assert is_h2_preface(PREFACE + b"\x00\x00") is True
    assert is_h2_preface(PREFACE[:10]) is None
    assert is_h2_preface(b"") is None
    assert is_h2_preface(b"GET / HTTP/1.1\r\n") is False
    assert is_h2_preface(b"PRI * HTTP/1.1\r\n") is False


def test_a_bad_preface_closes_the_connection() -> None:
    transport = FakeTransport()
    server = H2ServerConnection(FakeDownstream(), _never, clock=Clock())
    server.connection_made(transport)
    server.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.closed
    assert server.violation is not None
    assert server.streams == {}


def test_limits_are_configurable() -> None:
    rig = ServerRig(H2Limits(max_concurrent_streams=7, initial_stream_window=1000))
    assert rig.client.remote_settings.max_concurrent_streams == 7
    assert rig.client.remote_settings.initial_window_size == 1000


def test_client_graceful_goaway_lets_open_streams_finish() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/1")
    rig.pump()
    # Written by hand: h2 as the client would stop reading after its own GOAWAY.
    frame = GoAwayFrame(0)
    frame.last_stream_id = 0
    frame.error_code = 0
    rig.send_raw(frame.serialize())
    assert not rig.transport.closed
    stream = rig.exchanges[0].stream
    assert stream.closing
    stream.send_head(ResponseHead(200, [], body_length=2), b"GET")
    stream.send_data(b"ok")
    stream.send_end(None)
    got = responses(rig.pump())
    assert got[sid]["body"] == b"ok"
    assert got[sid]["ended"]
    assert rig.transport.closed


def test_closed_stream_memory_is_bounded() -> None:
    rig = ServerRig()
    for _ in range(60):
        rig.request(b"/")
        rig.pump()
    closed = rig.server.h2._closed_streams
    assert len(closed) >= 59  # h2 forgets a closed stream when the next one opens
    assert closed._size_limit == 4096  # h2's own default is 65,536


def test_an_end_without_a_head_resets_the_stream_instead_of_raising() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/")
    rig.pump()
    ex = rig.exchanges[0]
    ex.stream.send_data(b"body before any head")
    ex.stream.send_end(None)
    got = responses(rig.pump())[sid]
    assert got["reset"] == 2
    assert ex.names()[-1] == "reset"
    assert not rig.transport.closed


def test_a_slow_reader_that_makes_progress_is_not_a_stall() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/slow")
    rig.pump()
    stream = rig.exchanges[0].stream
    stream.send_head(ResponseHead(200, [], body_length=200_000), b"GET")
    stream.send_data(b"s" * 200_000)
    stream.flush()
    received = len(responses(rig.pump())[sid]["body"])
    for _ in range(10):  # 250 s apart, each time a little window: never 300 s stuck
        rig.clock.now += 250
        rig.server.tick(rig.clock.now)
        rig.client.acknowledge_received_data(received, sid)
        received = len(responses(rig.pump()).get(sid, {"body": b""})["body"])
    assert "reset" not in rig.exchanges[0].names()


def test_an_exchange_that_raises_gets_a_500_and_other_streams_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = ServerRig()
    boom = rig.request(b"/boom")
    orig = rig.server.factory

    def broken(stream: ServerStream, head: RequestHead) -> StreamCallbacks:
        rec = orig(stream, head)
        if head.target == b"/boom":
            rec.on_start = lambda: 1 / 0  # type: ignore[attr-defined]
        return rec

    rig.server.factory = broken
    with caplog.at_level("ERROR", logger="gatewayd.h2"):
        got = responses(rig.pump())
    assert got[boom]["status"] == 500
    assert "exchange callback failed" in caplog.text
    ok = rig.request(b"/fine")
    assert responses(rig.pump())[ok]["status"] == 200


def test_bytes_the_exchange_holds_keep_their_window_shut_until_released() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/held", method=b"POST", end=False)
    rig.pump()
    ex = rig.exchanges[0]
    held: list[int] = []

    def holding(data: bytes) -> None:  # the exchange has no upstream yet: it holds
        ex.body += data
        ex.stream.hold(len(data))
        held.append(len(data))

    ex.on_data = holding  # type: ignore[method-assign]
    rig.send_body(sid, b"h" * 65536, end=False)
    rig.pump()
    assert len(ex.body) == 65536
    assert rig.client.local_flow_control_window(sid) == 0  # nothing given back
    ex.stream.release_held(sum(held))  # sent upstream
    rig.pump()
    assert rig.client.local_flow_control_window(sid) == 65536


def test_done_before_the_response_ended_resets_the_stream() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/x")
    rig.pump()
    stream = rig.exchanges[0].stream
    stream.send_head(ResponseHead(200, [], body_length=10), b"GET")
    stream.send_data(b"12345")
    stream.flush()
    assert stream.drain_request() is False
    stream.done(close=True)
    stream.reset()  # the exchange's abort path: done, then reset (a no-op now)
    got = responses(rig.pump())[sid]
    assert got["body"] == b"12345"
    assert got["reset"] == 2
    assert not got["ended"]
    assert rig.server.streams == {}


def test_done_after_the_response_lets_it_finish_through_the_window() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/x", method=b"POST", end=False)
    rig.pump()
    ex = rig.exchanges[0]
    ex.stream.send_head(ResponseHead(200, [], body_length=100_000), b"POST")
    ex.stream.send_data(b"r" * 100_000)
    ex.stream.send_end(None)
    ex.stream.done()
    body = responses(rig.pump())[sid]["body"]
    for _ in range(10):
        rig.client.acknowledge_received_data(len(body), sid)
        got = responses(rig.pump()).get(sid)
        if got is None:
            break
        body += got["body"]
        if got["ended"]:
            break
    assert len(body) == 100_000
    assert rig.server.streams == {}
    assert "reset" not in ex.names()


# --------------------------------------------------------------------------- RFC 8441


def test_extended_connect_is_advertised_and_becomes_a_tunnel() -> None:
    rig = ServerRig(respond=False)
    # RFC 8441 3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 in our SETTINGS.
    assert rig.client.remote_settings.enable_connect_protocol == 1
    sid = rig.request(
        b"/chat",
        method=b"CONNECT",
        extra=[(b":protocol", b"websocket"), (b"sec-websocket-version", b"13")],
        end=False,
    )
    rig.pump()
    ex = rig.exchanges[0]
    head = ex.head
    assert (head.method, head.protocol, head.target, head.scheme) == (
        b"CONNECT",
        b"websocket",
        b"/chat",
        b"https",
    )
    assert head.end_stream is False and head.body_length is None
    assert ex.names() == ["start"]
    # The backend's 101 -> ":status 200", handshake-only fields dropped, stream open.
    ex.stream.send_tunnel_head(
        ResponseHead(
            101,
            [
                (b"upgrade", b"websocket"),
                (b"connection", b"upgrade"),
                (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                (b"x-b", b"1"),
            ],
        )
    )
    ex.stream.send_data(b"\x81\x02hi")
    ex.stream.flush()
    got = responses(rig.pump())[sid]
    assert got["status"] == 200
    assert got["headers"][1:] == [(b"x-b", b"1")]
    assert got["body"] == b"\x81\x02hi" and not got["ended"]
    # Client bytes both ways as DATA; END_STREAM closes the client's direction.
    rig.send_body(sid, b"\x81\x82abcdxx", end=True)
    rig.pump()
    assert bytes(ex.body) == b"\x81\x82abcdxx"
    assert ex.names()[-1] == "end"
    ex.stream.send_end(None)
    ex.stream.done()
    got = responses(rig.pump())[sid]
    assert got["ended"]
    assert rig.server.streams == {}


def test_extended_connect_goes_to_the_tunnel_factory() -> None:
    rig = ServerRig(respond=False)
    tunnels: list[RequestHead] = []

    def tunnel(stream: ServerStream, head: RequestHead) -> StreamCallbacks:
        tunnels.append(head)
        return rig._factory(stream, head)

    rig.server.tunnel_factory = tunnel
    rig.request(b"/", end=True)
    rig.request(b"/chat", method=b"CONNECT", extra=[(b":protocol", b"websocket")], end=False)
    rig.pump()
    assert [h.method for h in tunnels] == [b"CONNECT"]
    assert len(rig.exchanges) == 2


def test_responses_finished_in_one_loop_turn_go_out_in_one_write() -> None:
    rig = ServerRig(respond=False)
    pending: list[Callable[[], None]] = []
    rig.server.defer = pending.append
    sids = [rig.request(b"/a"), rig.request(b"/b")]
    rig.pump()
    writes = rig.transport.writes
    for ex in rig.exchanges:
        ex.stream.send_head(ResponseHead(200, [], body_length=2), b"GET")
        ex.stream.send_data(b"ok")
        ex.stream.send_end(None)
    # Nothing written yet; one callback scheduled for both streams.
    assert rig.transport.writes == writes
    assert len(pending) == 1
    pending.pop()()
    assert rig.transport.writes == writes + 1
    events = rig.client.receive_data(rig.read_back())
    ended = {e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)}
    assert ended == set(sids)
    # The next flush schedules again.
    rig.request(b"/c")
    rig.pump()
    ex = rig.exchanges[-1]
    ex.stream.send_head(ResponseHead(204, []), b"GET")
    ex.stream.send_end(None)
    assert len(pending) == 1
