"""The upstream HTTP/2 codec without sockets: an `h2` server connection is the backend,
a transport double carries the bytes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from h2.settings import SettingCodes
from h2_kit import ClientRig, Upstream
from hyperframe.frame import GoAwayFrame

from gatewayd.proxy.http.codec import (
    RD_UPSTREAM,
    RequestHead,
    UpstreamHeadersTooLarge,
    UpstreamProtocolError,
)
from gatewayd.proxy.http.h2_client import StreamRefused


def test_request_head_is_translated_from_http1_fields() -> None:
    rig = ClientRig()
    stream, _ = rig.send(
        b"GET",
        b"/a?b",
        [
            (b"Host", b"backend.example"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"X-Hop", b"gone"),
            (b"TE", b"trailers, deflate"),
            (b"X-Kept", b"yes"),
        ],
    )
    got = rig.requests[stream.stream_id]["headers"]
    assert got == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"backend.example"),
        (b":path", b"/a?b"),
        (b"te", b"trailers"),
        (b"x-kept", b"yes"),
    ]
    assert stream.http2 is True


def test_te_other_than_trailers_is_dropped() -> None:
    rig = ClientRig()
    stream, _ = rig.send(headers=[(b"te", b"gzip")])
    names = [n for n, _ in rig.requests[stream.stream_id]["headers"]]
    assert b"te" not in names


def test_response_head_body_trailers_and_end() -> None:
    rig = ClientRig()
    stream, up = rig.send(b"POST", b"/rpc", body=(b"req",), end=False)
    stream.send_end([(b"x-req-trailer", b"1")])
    rig.pump()
    req = rig.requests[stream.stream_id]
    assert req["body"] == b"req"
    assert req["trailers"] == [(b"x-req-trailer", b"1")]
    rig.respond(
        stream.stream_id,
        200,
        [(b"content-type", b"application/grpc"), (b"content-length", b"2")],
        b"ok",
        trailers=[(b"grpc-status", b"0")],
    )
    assert up.names() == ["head", "data", "end"]
    assert up.head.status == 200
    assert up.head.body_length == 2
    assert up.head.headers == [(b"content-type", b"application/grpc"), (b"content-length", b"2")]
    assert bytes(up.body) == b"ok"
    assert up.trailers == [(b"grpc-status", b"0")]
    assert up.reusable is True
    assert ("flush", None) in up.events
    assert stream.closed
    assert rig.codec.active_streams == 0


def test_streams_honour_the_backends_max_concurrent_streams() -> None:
    rig = ClientRig(settings={SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    assert rig.codec.h2.remote_settings.max_concurrent_streams == 2
    a, up_a = rig.send()
    assert rig.codec.can_open()
    b, _ = rig.send()
    assert not rig.codec.can_open()
    # A stream asked for anyway is lost as never processed (retryable).
    _c, up_c = rig.send()
    assert up_c.lost is not None
    assert isinstance(up_c.lost[0], StreamRefused)
    assert up_c.lost[1] is False
    rig.respond(a.stream_id)
    assert up_a.names() == ["head", "end"]
    assert rig.codec.can_open()
    assert {a.stream_id, b.stream_id} == {1, 3}


def test_goaway_loses_streams_above_its_last_id_as_retryable_and_keeps_the_rest() -> None:
    rig = ClientRig()
    s1, up1 = rig.send()
    s3, up3 = rig.send()
    _s5, up5 = rig.send()
    # Written by hand: h2 as the backend would stop after its own GOAWAY.
    frame = GoAwayFrame(0)
    frame.last_stream_id = 3
    frame.error_code = 0
    rig.codec.data_received(frame.serialize())
    assert up5.lost is not None
    assert isinstance(up5.lost[0], StreamRefused)
    assert up5.lost[1] is False  # never processed: the exchange may retry it
    assert up1.lost is None
    assert up3.lost is None
    assert not rig.codec.can_open()
    rig.respond(s1.stream_id, body=b"one")
    assert bytes(up1.body) == b"one"
    assert up1.reusable is False  # the connection takes no new stream
    assert not rig.transport.closed
    rig.respond(s3.stream_id, body=b"three")
    assert bytes(up3.body) == b"three"
    assert rig.transport.closed  # the last kept stream ended: the connection retires


def test_refused_stream_is_retryable_and_a_reset_after_the_head_is_not() -> None:
    rig = ClientRig()
    s1, up1 = rig.send()
    rig.backend.reset_stream(s1.stream_id, 7)  # REFUSED_STREAM
    rig.pump()
    assert up1.lost is not None
    assert isinstance(up1.lost[0], StreamRefused)
    assert up1.lost[1] is False
    s3, up3 = rig.send()
    rig.backend.send_headers(s3.stream_id, [(b":status", b"200")])
    rig.backend.reset_stream(s3.stream_id, 2)
    rig.pump()
    assert up3.names() == ["head", "lost"]
    assert up3.lost is not None
    assert up3.lost[1] is True
    assert not isinstance(up3.lost[0], StreamRefused)
    assert rig.codec.can_open()


def test_a_response_head_over_100_fields_is_a_502_and_the_connection_goes_on() -> None:
    rig = ClientRig()
    s1, up1 = rig.send()
    fields = [(b":status", b"200")] + [(b"x-f%d" % i, b"v") for i in range(101)]
    rig.backend.send_headers(s1.stream_id, fields)  # the body would follow
    rig.pump()
    assert up1.lost is not None
    assert isinstance(up1.lost[0], UpstreamHeadersTooLarge)
    assert rig.requests[s1.stream_id]["reset"] == 8  # CANCEL
    s3, up3 = rig.send()
    rig.respond(s3.stream_id, 200, [(b"x-f%d" % i, b"v") for i in range(100)], b"ok")
    assert up3.names() == ["head", "data", "end"]


def test_a_response_head_over_60_kib_decoded_loses_the_connection() -> None:
    rig = ClientRig()
    s1, up1 = rig.send()
    _s3, up3 = rig.send()
    rig.backend.send_headers(
        s1.stream_id, [(b":status", b"200"), (b"x-big", b"b" * (61 * 1024))], end_stream=True
    )
    rig.pump()
    for up in (up1, up3):
        assert up.lost is not None
        assert isinstance(up.lost[0], UpstreamProtocolError)
    assert up1.lost is not None and up1.lost[1] is False
    assert rig.transport.closed
    assert not rig.codec.can_open()


def test_a_read_disabled_stream_withholds_its_window() -> None:
    rig = ClientRig()
    s1, up1 = rig.send()
    s3, up3 = rig.send()
    s1.read_disable(RD_UPSTREAM)
    rig.backend.send_headers(s1.stream_id, [(b":status", b"200")])
    rig.backend.send_headers(s3.stream_id, [(b":status", b"200")])
    window = rig.backend.local_flow_control_window(s1.stream_id)
    assert window == 64 * 1024
    for sid in (s1.stream_id, s3.stream_id):
        for _i in range(0, window, 16384):
            rig.backend.send_data(sid, b"d" * 16384)
    rig.pump()
    assert bytes(up1.body) == b""
    assert len(up3.body) == window
    assert rig.backend.local_flow_control_window(s1.stream_id) == 0
    assert rig.backend.local_flow_control_window(s3.stream_id) > 0
    rig.backend.end_stream(s1.stream_id)
    rig.pump()
    assert up1.names() == ["head"]  # the end waits behind the held data
    s1.read_enable(RD_UPSTREAM)
    rig.pump()
    assert len(up1.body) == window
    assert up1.names()[-1] == "end"


def test_a_request_body_over_the_window_waits_and_pauses_the_exchange() -> None:
    rig = ClientRig()
    stream, up = rig.send(b"POST", b"/up", end=False)
    # The backend reads but does not give window back (rig.pump acknowledges; here not).
    stream.send_data(b"u" * 200_000)
    data = rig.transport.take()
    rig.backend.receive_data(data)
    assert up.names() == ["write_pause"]
    # Window comes back: the rest flows and the exchange may read its client again.
    rig.backend.acknowledge_received_data(65535, stream.stream_id)
    rig.codec.data_received(rig.backend.data_to_send())
    for _ in range(20):
        rig.pump()
    stream.send_end(None)
    rig.pump()
    assert len(rig.requests[stream.stream_id]["body"]) == 200_000 - 65535
    assert rig.requests[stream.stream_id]["ended"]
    assert "write_resume" in up.names()


def test_head_response_has_no_body() -> None:
    rig = ClientRig()
    stream, up = rig.send(b"HEAD", head_request=True)
    rig.backend.send_headers(stream.stream_id, [(b":status", b"200"), (b"content-length", b"9")])
    rig.backend.end_stream(stream.stream_id)
    rig.pump()
    assert up.head.end_stream is True
    assert up.names() == ["head", "end"]


def test_connect_carries_only_method_and_authority() -> None:
    rig = ClientRig()
    up = Upstream()
    stream = rig.codec.open_stream()
    stream.bind(up, False)
    stream.send_head(
        RequestHead(b"CONNECT", b"db.example:5432", [], authority=b"db.example:5432"), (), False
    )
    rig.pump()
    assert rig.requests[stream.stream_id]["headers"] == [
        (b":method", b"CONNECT"),
        (b":authority", b"db.example:5432"),
    ]


def test_interim_responses_do_not_reach_the_exchange() -> None:
    rig = ClientRig()
    stream, up = rig.send(b"POST", end=False)
    rig.backend.send_headers(stream.stream_id, [(b":status", b"100")])
    rig.pump()
    assert up.names() == []
    stream.send_end(None)
    rig.pump()
    rig.respond(stream.stream_id, 201)
    assert up.names() == ["head", "end"]
    assert up.head.status == 201


def test_connection_lost_loses_every_stream() -> None:
    rig = ClientRig()
    _, up1 = rig.send()
    _, up3 = rig.send()
    rig.codec.connection_lost(None)
    assert up1.lost is not None and up3.lost is not None
    assert not rig.codec.can_open()


def test_the_client_refuses_server_push() -> None:
    rig = ClientRig()
    assert rig.backend.remote_settings.enable_push == 0
    assert rig.backend.remote_settings.initial_window_size == 64 * 1024
    assert rig.backend.outbound_flow_control_window == 1024 * 1024


def test_a_ping_flood_from_the_backend_closes_the_connection() -> None:
    rig = ClientRig()
    _, up = rig.send()
    for i in range(101):
        rig.backend.ping(i.to_bytes(8, "big"))
    rig.pump()
    assert rig.transport.closed
    assert up.lost is not None
    assert "PING flood" in str(up.lost[0])


def test_ping_liveness_answered_keeps_the_connection() -> None:
    rig = ClientRig()
    rig.codec.ping()
    rig.pump()  # the backend (h2) answers PINGs by itself
    assert rig.codec.ping_sent == -1.0
    rig.codec.tick(rig.clock.now + 100, ping_timeout=5)
    assert not rig.transport.closed


def test_ping_unanswered_loses_the_connection() -> None:
    rig = ClientRig()
    _, up = rig.send()
    rig.codec.ping()
    rig.transport.take()  # the backend never gets it
    rig.codec.tick(rig.clock.now + 4.9, ping_timeout=5)
    assert not rig.transport.closed
    rig.codec.tick(rig.clock.now + 5, ping_timeout=5)
    assert rig.transport.closed
    assert up.lost is not None
    assert "PING" in str(up.lost[0])


def test_our_hpack_encoder_table_stays_bounded_whatever_the_backend_allows() -> None:
    rig = ClientRig(settings={SettingCodes.HEADER_TABLE_SIZE: 2**31})
    assert rig.codec.h2.encoder.header_table_size == 4096
    stream, up = rig.send(headers=[(b"x-a", b"1")])
    rig.respond(stream.stream_id)
    assert up.names() == ["head", "end"]


def test_an_exchange_that_raises_gets_on_fatal_and_a_reset(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = ClientRig()
    stream, up = rig.send()

    def broken(stream: object, head: object) -> None:
        raise RuntimeError("bug")

    up.on_response_head = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="gatewayd.h2"):
        rig.backend.send_headers(stream.stream_id, [(b":status", b"200")])
        rig.pump()
    assert up.names() == ["fatal"]
    assert rig.requests[stream.stream_id]["reset"] == 8
    assert "exchange callback failed" in caplog.text
    s3, up3 = rig.send()
    rig.respond(s3.stream_id)
    assert up3.names() == ["head", "end"]


def test_streams_handed_out_count_before_their_head_is_sent() -> None:
    rig = ClientRig(settings={SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    first = rig.codec.open_stream()
    second = rig.codec.open_stream()
    assert not rig.codec.can_open()
    second.reset()  # abandoned before sending: its place comes back
    assert rig.codec.can_open()
    up = Upstream()
    first.bind(up, False)
    first.send_head(RequestHead(b"GET", b"/", [], authority=b"b"), (), True)
    rig.pump()
    assert first.stream_id == 1
    assert rig.codec.can_open()
    assert rig.codec.reserved == 0


def test_close_ends_an_open_stream_without_error_and_is_a_no_op_after_the_end() -> None:
    rig = ClientRig()
    done_stream, up = rig.send()
    rig.respond(done_stream.stream_id)
    done_stream.close()
    open_stream, _ = rig.send(b"POST", end=False)
    open_stream.close()
    rig.pump()
    assert rig.requests[open_stream.stream_id]["reset"] == 0  # NO_ERROR
    assert rig.requests[done_stream.stream_id]["reset"] is None
    assert up.names() == ["head", "end"]


def test_a_request_head_body_and_end_leave_in_one_write_per_loop_turn() -> None:
    from h2_kit import Upstream

    from gatewayd.proxy.http.codec import RequestHead

    rig = ClientRig()
    pending: list[Callable[[], None]] = []
    rig.codec.defer = pending.append
    writes = rig.transport.writes
    streams = []
    for path in (b"/a", b"/b"):
        stream = rig.codec.open_stream()
        stream.bind(Upstream(), False)
        stream.send_head(RequestHead(b"POST", path, [(b"host", b"b")], authority=b"b"), (), False)
        stream.send_data(b"body")
        stream.send_end(None)
        streams.append(stream)
    assert rig.transport.writes == writes  # nothing written yet
    assert len(pending) == 1  # one flush scheduled for both requests
    pending.pop()()
    assert rig.transport.writes == writes + 1
    rig.pump()
    for stream in streams:
        got = rig.requests[stream.stream_id]
        assert got["body"] == b"body" and got["ended"]


def test_our_stream_cap_applies_under_the_backends_limit() -> None:
    from dataclasses import replace

    from gatewayd.proxy.http.h2_limits import UPSTREAM_H2_LIMITS

    rig = ClientRig(limits=replace(UPSTREAM_H2_LIMITS, max_concurrent_streams=1))
    assert rig.codec.h2.remote_settings.max_concurrent_streams > 1
    a, up_a = rig.send()
    assert not rig.codec.can_open()
    rig.respond(a.stream_id)
    assert up_a.names() == ["head", "end"]
    assert rig.codec.can_open()
    # The backend's lower limit wins over ours.
    rig = ClientRig(
        limits=replace(UPSTREAM_H2_LIMITS, max_concurrent_streams=5),
        settings={SettingCodes.MAX_CONCURRENT_STREAMS: 1},
    )
    rig.send()
    assert not rig.codec.can_open()


def test_the_windows_and_table_we_announce_to_the_backend_follow_the_limits() -> None:
    from dataclasses import replace

    from gatewayd.proxy.http.h2_limits import UPSTREAM_H2_LIMITS

    limits = replace(
        UPSTREAM_H2_LIMITS,
        initial_stream_window=256 * 1024,
        connection_window=4 * 1024 * 1024,
        header_table_size=0,
    )
    rig = ClientRig(limits=limits)
    remote = rig.backend.remote_settings
    assert remote.initial_window_size == 256 * 1024
    assert remote.header_table_size == 0
    assert rig.backend.outbound_flow_control_window == 4 * 1024 * 1024
