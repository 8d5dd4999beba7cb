"""The server codec's quick paths for small exchanges (issue 12, third step), each
against the general path it replaces, without sockets:

- ``response_fields``: a response head's fields and HPACK bytes in one cached pass,
  against ``to_h2_fields`` then ``StaticEncoder.encode``;
- ``BoundedH2Connection.send_response``: a whole response written by hand, against
  h2's ``send_headers`` / ``send_data`` / end (same bytes, same h2 state after, the
  same answers to frames that follow on the closed stream);
- ``FrameScanner.scan_outbound`` and ``scan_inbound``: against ``scan``, the same
  counts, bytes and verdicts whatever the cuts.
"""

from __future__ import annotations

import itertools

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from h2_kit import ServerRig
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.http import h2_server
from gatewayd.proxy.http.codec import ResponseHead
from gatewayd.proxy.http.h2_conn import BoundedH2Connection, h2_config
from gatewayd.proxy.http.h2_fields import to_h2_fields
from gatewayd.proxy.http.h2_hpack import StaticEncoder
from gatewayd.proxy.http.h2_limits import (
    EDGE_H2_LIMITS,
    GOAWAY,
    PREFACE,
    FrameScanner,
    H2Limits,
    Violation,
)
from gatewayd.proxy.http.h2_server import (
    RESPONSE_FIELD_ENTRIES,
    RESPONSE_FIELD_MAX_BYTES,
    RESPONSE_HEAD_ENTRIES,
    RESPONSE_HEAD_MAX_BYTES,
    RESPONSE_HEAD_MAX_FIELDS,
    response_fields,
)

NAMES = [
    b"server",
    b"Server",
    b"content-type",
    b"Content-Length",
    b"content-length",
    b"x-request-id",
    b"traceparent",
    b"date",
    b"connection",
    b"Keep-Alive",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"te",
    b"cookie",
    b"authorization",
    b"set-cookie",
    b"x-a",
]
VALUES = [b"1", b" v ", b"\tx", b"keep-alive, x-a", b"trailers", b"0", b"13", b"a" * 300]


def general(
    status: int, headers: list[tuple[bytes, bytes]], body_length: int | None
) -> list[tuple[bytes, bytes]]:
    """``H2ServerStream.send_head``'s general path."""
    fields = [(b":status", b"%d" % status), *to_h2_fields(headers, request=False)]
    if body_length is not None and status not in (204, 304) and status >= 200:
        fields = [f for f in fields if f[0] != b"content-length"]
        fields.append((b"content-length", b"%d" % body_length))
    return fields


@given(
    st.sampled_from([100, 200, 204, 304, 404, 503]),
    st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=12),
    st.one_of(st.none(), st.integers(min_value=0, max_value=10**12)),
)
@settings(max_examples=300, deadline=None)
def test_response_fields_agree_with_the_general_path(
    status: int, headers: list[tuple[bytes, bytes]], body_length: int | None
) -> None:
    # Twice: the second pass reads the cache the first one filled.
    for _ in range(2):
        got = response_fields(status, headers, body_length)
        lowered = {n.lower() for n, _ in headers}
        if got is None:
            assert lowered & {b"connection", b"cookie", b"authorization"}
            continue
        fields, encoded = got
        want = general(status, headers, body_length)
        assert fields == want
        # The same HPACK bytes as the encoder (less its one-time table size update).
        assert b"".join(encoded) == StaticEncoder().encode(want)[1:]
        assert hpack.Decoder().decode(b"".join(encoded), raw=True) == want


def test_unhashable_fields_take_the_general_path() -> None:
    headers = [[b"x-a", b"1"], (b"x-b", bytearray(b"2"))]
    assert response_fields(200, headers, None) is None  # type: ignore[arg-type]
    assert response_fields(200, [(b"x-b", bytearray(b"2"))], None) is None  # type: ignore[list-item]


def test_the_response_field_cache_is_bounded() -> None:
    for i in range(3 * RESPONSE_FIELD_ENTRIES):
        response_fields(200, [(b"x-n", b"%d" % i)], i)
        assert len(h2_server._response_fields) <= RESPONSE_FIELD_ENTRIES
        assert len(h2_server._length_fields) <= RESPONSE_FIELD_ENTRIES
    # Long fields and values new on every response are never kept.
    h2_server._response_fields.clear()
    long_value = b"v" * RESPONSE_FIELD_MAX_BYTES
    response_fields(200, [(b"x-long", long_value), (b"x-request-id", b"abc")], 5)
    response_fields(200, [(b"content-length", b"7")], None)
    assert h2_server._response_fields == {}


def test_whole_heads_are_kept_less_their_request_id_and_bounded() -> None:
    h2_server._response_heads.clear()
    head = [(b"server", b"up"), (b"date", b"now"), (b"x-request-id", b"1")]
    first = response_fields(200, head, 5)
    second = response_fields(200, [*head[:2], (b"x-request-id", b" 2 ")], 5)
    assert len(h2_server._response_heads) == 1  # one head, whatever the request id
    assert first is not None and second is not None
    want = general(200, head[:2], 5)
    assert second[0] == [*want[:-1], (b"x-request-id", b"2"), want[-1]]
    assert b"".join(second[1]) == StaticEncoder().encode(second[0])[1:]
    for i in range(3 * RESPONSE_HEAD_ENTRIES):
        response_fields(200, [(b"x-n", b"%d" % i)], None)
        assert len(h2_server._response_heads) <= RESPONSE_HEAD_ENTRIES
    # Heads with many fields or many bytes are not kept.
    h2_server._response_heads.clear()
    response_fields(200, [(b"x-%d" % i, b"1") for i in range(RESPONSE_HEAD_MAX_FIELDS + 1)], 1)
    # "~" has a 13-bit Huffman code: the values go out as they are.
    response_fields(200, [(b"x-a", b"~" * 200)] * (RESPONSE_HEAD_MAX_BYTES // 200 + 1), 1)
    assert h2_server._response_heads == {}


def test_a_response_through_the_codec_reads_back_as_sent() -> None:
    rig = ServerRig(respond=False)
    rig.client.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")],
        end_stream=True,
    )
    rig.pump()
    stream = rig.exchanges[0].stream
    stream.send_head(
        ResponseHead(
            200,
            [(b"Server", b"up"), (b"Connection", b"close"), (b"x-a", b" 1 ")],
            body_length=5,
        ),
        b"GET",
    )
    stream.send_data(b"hello")
    stream.send_end(None)
    events = rig.pump()
    got = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert got[0].headers == [
        (b":status", b"200"),
        (b"server", b"up"),
        (b"x-a", b"1"),
        (b"content-length", b"5"),
    ]
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == b"hello"
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


# ---------------------------------------------------------------- send_response


def _pair(fast: bool) -> tuple[BoundedH2Connection, h2.connection.H2Connection]:
    server = BoundedH2Connection(config=h2_config(client_side=False))
    server.fast_inbound = True
    server.fast_outbound = fast
    server.open(1 << 20)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    server.data_to_send()
    return server, client


REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
RESPONSE = [(b":status", b"200"), (b"content-length", b"5")]


def _respond(
    server: BoundedH2Connection,
    sid: int,
    body: bytes,
    trailers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    fields = [(b":status", b"200"), (b"content-length", b"%d" % len(body))]
    if server.send_response(sid, fields, body, trailers=trailers):
        return
    server.send_headers(sid, fields, end_stream=not body and not trailers)
    if body:
        server.send_data(sid, body, end_stream=not trailers)
    if trailers:
        server.send_headers(sid, trailers, end_stream=True)


def _state(server: BoundedH2Connection) -> tuple[object, ...]:
    return (
        server.state_machine.state,
        server.outbound_flow_control_window,
        server.open_inbound_streams,
        sorted(server.streams),
        dict(server._closed_streams),
        server.highest_inbound_stream_id,
    )


def test_send_response_leaves_h2_as_its_own_path_does() -> None:
    results = []
    clients = []
    for fast in (True, False):
        server, client = _pair(fast)
        clients.append(client)
        grpc = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
        for sid, body, trailers in (
            (1, b"hello", None),
            (3, b"", None),
            (5, b"x" * 100, None),
            (7, b"\x00\x00\x00\x00\x02hi", grpc),  # a gRPC answer: trailers end it
            (9, b"", grpc),  # trailers only
        ):
            client.send_headers(sid, REQUEST, end_stream=True)
            server.receive_data(client.data_to_send())
            _respond(server, sid, body, trailers)
        out = server.data_to_send()
        state = _state(server)
        # Frames on the closed streams afterwards: WINDOW_UPDATE, RST_STREAM, DATA,
        # each answered as h2 answers them.
        after = []
        for raw in (
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x00\x10",
            b"\x00\x00\x04\x03\x00\x00\x00\x00\x03\x00\x00\x00\x08",
            b"\x00\x00\x01\x00\x01\x00\x00\x00\x05x",
        ):
            try:
                events = server.receive_data(raw)
                after.append(([type(e).__name__ for e in events], server.data_to_send()))
            except h2.exceptions.ProtocolError as e:
                after.append(([type(e).__name__], server.data_to_send()))
        results.append((out, state, after))
    assert results[0] == results[1]
    events = clients[0].receive_data(results[0][0])
    assert [e.stream_id for e in events if isinstance(e, h2.events.ResponseReceived)] == [
        1,
        3,
        5,
        7,
        9,
    ]
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)] == [1, 3, 5, 7, 9]
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert [(e.stream_id, e.headers) for e in trailers] == [(7, grpc), (9, grpc)]


def test_send_response_declines_what_it_does_not_cover() -> None:
    server, client = _pair(True)
    client.send_headers(1, REQUEST, end_stream=False)  # the request goes on
    client.send_headers(3, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    assert not server.send_response(1, list(RESPONSE), b"hello")  # not half-closed
    assert not server.send_response(3, [(b":status", b"103")], b"")  # informational
    big = b"x" * (server.max_outbound_frame_size + 1)
    assert not server.send_response(3, list(RESPONSE), big)  # over one frame
    assert not server.send_response(9, list(RESPONSE), b"")  # no such stream
    assert server.data_to_send() == b""  # nothing was written by the refusals
    assert server.send_response(3, list(RESPONSE), b"hello")
    assert not server.send_response(3, list(RESPONSE), b"hello")  # already answered


def test_send_response_respects_the_peers_windows() -> None:
    server, client = _pair(True)
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4})
    server.receive_data(client.data_to_send())
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    assert not server.send_response(1, list(RESPONSE), b"hello")  # window of 4
    assert server.send_response(1, list(RESPONSE), b"hell")


def test_many_answered_streams_never_count_against_max_concurrent() -> None:
    # The open-stream count is skipped below the limit; answered streams are closed
    # and forgotten at once, so 50 sequential requests pass a limit of 2.
    rig = ServerRig(H2Limits(max_concurrent_streams=2))
    for i in range(50):
        rig.request(b"/%d" % i)
        rig.pump()
    assert len(rig.exchanges) == 50
    assert not rig.server.closed
    assert len(rig.server.h2.streams) <= 2


# --------------------------------------------------------------- scan_outbound


def _frame(ftype: int, payload: bytes, sid: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, 0)) + sid.to_bytes(4, "big") + payload


@given(
    st.lists(
        st.tuples(st.sampled_from([0x0, 0x1, 0x3, 0x4, 0x6, 0x8, 0x9]), st.binary(max_size=40)),
        max_size=20,
    ),
    st.lists(st.integers(min_value=0, max_value=600), max_size=4),
    st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_scan_outbound_counts_as_scan(
    frames: list[tuple[int, bytes]], cuts: list[int], paused: bool
) -> None:
    data = b"".join(_frame(t, p) for t, p in frames)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    general, quick = (FrameScanner(EDGE_H2_LIMITS, inbound=False) for _ in range(2))
    for scanner in (general, quick):
        scanner.writes_paused(paused)
    for chunk in chunks:
        general.scan(chunk, 0.0)
        quick.scan_outbound(chunk)
    assert (quick.data_frames, quick.rst_streams) == (general.data_frames, general.rst_streams)
    assert (quick.frames_paused, quick.control_frames_paused) == (
        general.frames_paused,
        general.control_frames_paused,
    )
    assert quick.data_frames == sum(1 for t, _ in frames if t == 0x0)


# ---------------------------------------------------------------- scan_inbound

_INBOUND_LIMITS = H2Limits(
    max_settings_per_window=3,
    max_pings_per_window=3,
    max_consecutive_empty_frames=2,
    max_priority_frames_per_stream=1,
    max_header_block_bytes=64,
)


def _run_inbound(chunks: list[bytes], quick: bool) -> tuple[object, ...]:
    scanner = FrameScanner(_INBOUND_LIMITS, inbound=True, preface=True, strip_goaway=True)
    sent = FrameScanner(_INBOUND_LIMITS, inbound=False)
    scanner.sent = sent
    out = b""
    verdict = None
    try:
        for chunk in chunks:
            out += scanner.scan_inbound(chunk, 0.0) if quick else scanner.scan(chunk, 0.0)
    except Violation as v:
        verdict = (v.error_code, v.reason)
    return (
        out,
        verdict,
        scanner.goaways,
        scanner.data_frames,
        scanner.rst_streams,
        scanner.streams_opened,
        scanner._settings,
        scanner._pings,
        scanner._empty_run,
        scanner._block_bytes,
    )


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x4, 0x6, GOAWAY, 0x8, 0x9]),
            st.sampled_from([0x0, 0x1, 0x4, 0x5, 0x8, 0x9, 0x20]),
            st.integers(min_value=0, max_value=7),
            st.binary(max_size=40),
        ),
        max_size=16,
    ),
    st.lists(st.integers(min_value=0, max_value=700), max_size=4),
)
@settings(max_examples=300, deadline=None)
def test_scan_inbound_agrees_with_scan(
    frames: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    data = PREFACE + b"".join(
        len(p).to_bytes(3, "big") + bytes((t, f)) + s.to_bytes(4, "big") + p
        for t, f, s, p in frames
    )
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert _run_inbound(chunks, True) == _run_inbound(chunks, False)


def test_scan_inbound_returns_the_bytes_themselves_without_goaway() -> None:
    scanner = FrameScanner(_INBOUND_LIMITS, inbound=True, strip_goaway=True)
    data = _frame(0x1, b"\x82", 1) + _frame(0x8, b"\x00\x00\x00\x01", 0)
    assert scanner.scan_inbound(data, 0.0) is data
