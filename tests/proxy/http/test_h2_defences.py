"""HTTP/2 flood defences of the downstream codec, each proven with a hostile peer.

Frames the `h2` client would refuse to send are built with hyperframe (the frame layer
h2 itself uses) and HPACK-encoded with the client's own encoder, so the server's
decoder state stays in step."""

from __future__ import annotations

import hpack
from h2.settings import SettingCodes
from h2_kit import ServerRig, responses
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from gatewayd.proxy.http.codec import RD_UPSTREAM
from gatewayd.proxy.http.h2_limits import (
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    H2Limits,
)

_REQ = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")]


def _closed_with(rig: ServerRig, code: int) -> None:
    rig.pump()
    assert rig.transport.closed
    assert rig.goaways, "no GOAWAY before the close"
    assert rig.goaways[-1][1] == code


def test_an_oversized_frame_is_refused_at_its_header_without_buffering() -> None:
    rig = ServerRig()
    # A DATA frame header announcing 16 MiB - 1: h2 alone would buffer it all first.
    header = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    rig.send_raw(header)
    assert rig.transport.closed
    assert "SETTINGS_MAX_FRAME_SIZE" in (rig.server.violation or "")
    assert len(rig.server.h2.incoming_buffer._data) == 0
    rig.read_back()
    assert rig.goaways[-1][1] == FRAME_SIZE_ERROR
    # Whatever else arrives is ignored, not buffered.
    rig.send_raw(b"\x00" * 65536)
    assert len(rig.server.h2.incoming_buffer._data) == 0


def test_continuation_flood_is_cut_before_hpack_decoding() -> None:
    rig = ServerRig()
    block = rig.client.encoder.encode([*_REQ, (b"x-big", b"v" * 100)])
    first = HeadersFrame(1)
    first.data = block
    rig.send_raw(first.serialize())
    sent = 0
    for _ in range(10):  # 10 x 16 KiB: over the 64 KiB header block bound at the 4th
        cont = ContinuationFrame(1)
        cont.data = b"\x00" * 16384
        rig.send_raw(cont.serialize())
        sent += 1
        if rig.transport.closed:
            break
    assert sent == 4
    assert "header block" in (rig.server.violation or "")
    assert rig.exchanges == []
    _closed_with(rig, ENHANCE_YOUR_CALM)


def test_many_empty_continuation_frames_are_cut_too() -> None:
    rig = ServerRig()
    first = HeadersFrame(1)
    first.data = rig.client.encoder.encode(_REQ)
    rig.send_raw(first.serialize())
    for _ in range(200):
        if rig.transport.closed:
            break
        rig.send_raw(ContinuationFrame(1).serialize())
    assert rig.transport.closed  # h2 allows 64 frames in one header block
    assert rig.exchanges == []


def test_hpack_bomb_is_refused_by_the_decoded_size() -> None:
    rig = ServerRig()
    # One 4 KiB field enters the dynamic table, then 20 one-byte references to it:
    # ~82 KiB decoded from ~4 KiB on the wire.
    enc = hpack.Encoder()
    enc.header_table_size = 4096
    big = (b"x-bomb", b"b" * 4000)
    first = enc.encode([*_REQ, big])
    index_ref = enc.encode([big])  # now an indexed field: one byte
    assert len(index_ref) <= 2
    frame = HeadersFrame(1)
    frame.data = first + index_ref * 20
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    assert len(frame.data) < 4200
    rig.send_raw(frame.serialize())
    assert rig.transport.closed
    assert rig.exchanges == []
    _closed_with(rig, ENHANCE_YOUR_CALM)


def test_settings_flood_within_a_window_gets_enhance_your_calm() -> None:
    rig = ServerRig()
    for _ in range(99):  # the client's first SETTINGS is the 100th
        rig.send_raw(SettingsFrame(0).serialize())
    assert not rig.transport.closed
    # A new window starts the count again.
    rig.clock.now += 10
    for _ in range(100):
        rig.send_raw(SettingsFrame(0).serialize())
    assert not rig.transport.closed
    rig.send_raw(SettingsFrame(0).serialize())
    assert rig.server.violation == "SETTINGS flood"
    _closed_with(rig, ENHANCE_YOUR_CALM)


def test_ping_flood_within_a_window_gets_enhance_your_calm() -> None:
    rig = ServerRig()
    for i in range(101):
        rig.send_raw(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())
    assert rig.server.violation == "PING flood"
    _closed_with(rig, ENHANCE_YOUR_CALM)


def test_acks_the_peer_does_not_read_are_bounded_then_the_connection_is_aborted() -> None:
    # Generous PING budget so that the outbound queue bound is what trips.
    rig = ServerRig(H2Limits(max_pings_per_window=100_000))
    rig.server.pause_writing()  # the transport is over its high-water mark
    before = len(rig.transport.out)
    n = 0
    for n in range(1, 2001):  # noqa: B007 - n is read after the loop
        rig.send_raw(PingFrame(0).serialize())
        if rig.transport.closed:
            break
    assert rig.transport.aborted
    assert n == 1001  # max_outbound_control_frames
    assert "control frames" in (rig.server.violation or "")
    # Queued ACKs: 17 bytes each, at most the budget.
    assert len(rig.transport.out) - before <= 1000 * 17


def test_acks_under_the_budget_are_fine_once_the_peer_reads_again() -> None:
    rig = ServerRig(H2Limits(max_pings_per_window=100_000))
    for _ in range(3):
        rig.server.pause_writing()
        for _ in range(900):
            rig.send_raw(PingFrame(0).serialize())
        rig.server.resume_writing()
    assert not rig.transport.closed


def test_consecutive_empty_data_frames_are_refused() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/", method=b"POST", end=False)
    rig.pump()
    rig.send_raw(DataFrame(sid).serialize())  # one empty frame is tolerated (Envoy: 1)
    assert not rig.transport.closed
    rig.send_raw(DataFrame(sid).serialize())
    assert "no payload" in (rig.server.violation or "")
    assert rig.exchanges[0].names()[-1] == "reset"
    _closed_with(rig, ENHANCE_YOUR_CALM)


def test_padded_empty_data_frames_count_as_empty() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/", method=b"POST", end=False)
    rig.pump()
    for _ in range(2):
        frame = DataFrame(sid)
        frame.flags.add("PADDED")
        frame.pad_length = 10
        rig.send_raw(frame.serialize())
    assert "no payload" in (rig.server.violation or "")


def test_data_frames_with_payload_reset_the_empty_run() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/", method=b"POST", end=False)
    rig.pump()
    for _ in range(20):
        rig.send_raw(DataFrame(sid).serialize())
        rig.client.send_data(sid, b"x")
        rig.pump()
    assert not rig.transport.closed
    assert bytes(rig.exchanges[0].body) == b"x" * 20


def test_priority_flood_is_refused() -> None:
    rig = ServerRig()
    budget = 5 + 2 * 100 * 1  # no stream opened yet
    for i in range(budget + 1):
        frame = PriorityFrame(1 + 2 * (i % 50))
        frame.depends_on = 0
        rig.send_raw(frame.serialize())
    assert rig.server.violation == "PRIORITY flood"


def test_window_update_flood_is_refused() -> None:
    rig = ServerRig()
    for _ in range(6):  # budget: 5 + 2 * (streams + 10 * DATA frames sent) = 5
        frame = WindowUpdateFrame(0)
        frame.window_increment = 1
        rig.send_raw(frame.serialize())
    assert rig.server.violation == "WINDOW_UPDATE flood"
    _closed_with(rig, ENHANCE_YOUR_CALM)


def test_window_updates_in_step_with_our_data_are_fine() -> None:
    rig = ServerRig()
    for _ in range(30):
        sid = rig.request(b"/")
        rig.pump()
        rig.client.acknowledge_received_data(5, sid)
        frame = WindowUpdateFrame(0)
        frame.window_increment = 100
        rig.send_raw(frame.serialize())
    assert not rig.transport.closed


def test_rapid_reset_closes_the_connection() -> None:
    # CVE-2023-44487: open a stream, reset it at once, repeat.
    rig = ServerRig(respond=False)
    n = 0
    for n in range(1, 400):  # noqa: B007 - n is read after the loop
        sid = rig.request(b"/")
        rig.client.reset_stream(sid, 8)
        rig.pump()
        if rig.transport.closed:
            break
    assert n == 201  # more than 200 premature resets in the window
    assert "rapid reset" in (rig.server.violation or "")
    assert rig.goaways[-1][1] == ENHANCE_YOUR_CALM
    assert all(ex.names()[-1] == "reset" for ex in rig.exchanges)


def test_cancels_among_completed_streams_are_tolerated() -> None:
    # A client that cancels a third of its requests (gRPC deadlines) stays connected.
    slow = ServerRig(respond=False)
    for i in range(600):
        sid = slow.request(b"/")
        slow.pump()
        if i % 3 == 0:
            slow.client.reset_stream(sid, 8)
        else:
            stream = slow.exchanges[-1].stream
            stream.local_reply(200, (), b"", close=False)
        slow.pump()
    assert not slow.transport.closed
    assert slow.server.resets.premature == 200


def test_half_of_all_streams_reset_early_closes_as_envoy_does() -> None:
    # Slow enough for the window rule never to trip: 150 resets per 10 s.
    rig = ServerRig(H2Limits(max_premature_resets=10_000), respond=False)
    closed_at = 0
    for i in range(1, 700):
        sid = rig.request(b"/")
        rig.pump()
        if i % 2:
            rig.client.reset_stream(sid, 8)
        else:
            rig.exchanges[-1].stream.local_reply(200, (), b"", close=False)
        rig.pump()
        if rig.transport.closed:
            closed_at = i
            break
    assert closed_at == 500  # premature_reset_min_streams, with 250 of them reset
    assert "half the streams" in (rig.server.violation or "")


def test_made_you_reset_counts_resets_the_client_provoked() -> None:
    # CVE-2025-8671: the client never sends RST_STREAM; it makes the server reset live
    # streams, here with a WINDOW_UPDATE that overflows the stream window.
    rig = ServerRig(respond=False)
    n = 0
    for n in range(1, 400):  # noqa: B007 - n is read after the loop
        sid = rig.request(b"/", method=b"POST", end=False)
        rig.pump()
        frame = WindowUpdateFrame(sid)
        frame.window_increment = 2**31 - 1
        rig.send_raw(frame.serialize())
        rig.pump()
        if rig.transport.closed:
            break
    assert n == 201
    assert "rapid reset" in (rig.server.violation or "")
    assert rig.exchanges[0].names()[-1] == "reset"


def test_data_beyond_the_window_of_a_held_stream_is_a_flow_control_error() -> None:
    # Memory: a read-disabled stream holds at most its window (64 KiB).
    rig = ServerRig(respond=False)
    sid = rig.request(b"/", method=b"POST", end=False)
    rig.pump()
    ex = rig.exchanges[0]
    ex.stream.read_disable(RD_UPSTREAM)
    rig.send_body(sid, b"h" * 65536, end=False)
    rig.pump()
    assert rig.server.streams[sid].held == 65536
    frame = DataFrame(sid)
    frame.data = b"over"
    rig.send_raw(frame.serialize())
    assert rig.transport.closed
    rig.read_back()
    assert rig.goaways[-1][1] == FLOW_CONTROL_ERROR


def test_a_flooded_connection_leaves_another_one_serving() -> None:
    victim = ServerRig()
    attacker = ServerRig()
    for _ in range(101):
        attacker.send_raw(PingFrame(0).serialize())
    assert attacker.transport.closed
    sid = victim.request(b"/still")
    got = responses(victim.pump())
    assert got[sid]["status"] == 200
    assert not victim.transport.closed


def test_long_lived_streams_cancelled_by_the_client_are_not_premature() -> None:
    # gRPC watches: open, live for a while, cancelled; 600 of them on one connection.
    rig = ServerRig(respond=False)
    for _ in range(600):
        sid = rig.request(b"/watch")
        rig.pump()
        rig.clock.now += 1.0  # Envoy's premature_reset_min_stream_lifetime_seconds
        rig.client.reset_stream(sid, 8)
        rig.pump()
    assert not rig.transport.closed
    assert rig.server.resets.premature == 0
    assert rig.server.resets.closed == 600


def test_more_than_100_concurrent_streams_end_the_connection() -> None:
    # h2 treats a stream over SETTINGS_MAX_CONCURRENT_STREAMS as a connection error
    # (RFC 9113 5.1.2 would allow refusing the stream alone); frames are built by hand
    # because the h2 client would respect the setting.
    rig = ServerRig(respond=False)
    for _sid in range(1, 201, 2):
        rig.request(b"/")
    rig.pump()
    assert len(rig.server.streams) == 100
    frame = HeadersFrame(201)
    frame.data = rig.client.encoder.encode(_REQ)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    rig.send_raw(frame.serialize())
    assert rig.transport.closed
    assert all(ex.names()[-1] == "reset" for ex in rig.exchanges)
    rig.read_back()
    assert rig.goaways[-1][1] == 0x1  # PROTOCOL_ERROR


def test_our_hpack_encoder_table_stays_bounded_whatever_the_peer_allows() -> None:
    rig = ServerRig()
    rig.client.update_settings({SettingCodes.HEADER_TABLE_SIZE: 2**31})
    rig.pump()
    assert rig.server.h2.encoder.header_table_size == 4096
    # Responses still decode on the client: the table-size update reached it.
    for i in range(20):
        sid = rig.request(b"/%d" % i)
        assert responses(rig.pump())[sid]["status"] == 200


def test_connection_specific_fields_in_a_request_end_the_connection() -> None:
    # RFC 9113 8.2.2: such a request is malformed; h2 makes that a connection error.
    for field in [(b"connection", b"keep-alive"), (b"te", b"gzip"), (b"upgrade", b"h2c")]:
        rig = ServerRig()
        frame = HeadersFrame(1)
        frame.data = rig.client.encoder.encode([*_REQ, field])
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        rig.send_raw(frame.serialize())
        assert rig.transport.closed, field
        assert rig.exchanges == []
        rig.read_back()
        assert rig.goaways[-1][1] == 0x1  # PROTOCOL_ERROR
