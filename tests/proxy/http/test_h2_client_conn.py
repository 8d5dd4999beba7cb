"""Our own reading of response HEADERS and DATA frames (h2_client_conn) against h2's:
the same backend bytes, valid and hostile, fed to a client codec with the fast path
and to one without it must give the same bytes out, the same events to each exchange,
the same verdict on the connection.  No sockets: the codec with a transport double and
a fake clock (h2_kit)."""

from __future__ import annotations

import re
from typing import Any

import hpack
import pytest
from h2_kit import Clock, FakeTransport, Upstream
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.http.codec import RequestHead
from gatewayd.proxy.http.h2_client import H2ClientConnection
from gatewayd.proxy.http.h2_client_conn import RequestScanner, ResponseScanner, fast_frame
from gatewayd.proxy.http.h2_conn import SWEEP_STREAMS
from gatewayd.proxy.http.h2_limits import FrameScanner, H2Limits, Violation


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = frame(0x4, 0, 0, b"")
SETTINGS_ACK = frame(0x4, 0x1, 0, b"")
PING = frame(0x6, 0, 0, b"12345678")
OK = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def data(sid: int, payload: bytes, end: bool = False) -> bytes:
    return frame(0x0, 0x1 if end else 0, sid, payload)


def rst(sid: int, code: int = 8) -> bytes:
    return frame(0x3, 0, sid, code.to_bytes(4, "big"))


class Backend:
    """Hand-built backend frames, HPACK-encoded by one encoder (the codec's decoder
    state follows it, whatever the fields)."""

    def __init__(self) -> None:
        self.enc = hpack.Encoder()

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], flags: int = 0x4) -> bytes:
        return frame(0x1, flags, sid, self.enc.encode(fields))


def run(
    chunks: list[bytes],
    *,
    fast: bool,
    streams: int = 3,
    ended: bool = True,
    limits: H2Limits | None = None,
) -> tuple[Any, ...]:
    """What a client codec with ``streams`` requests sent (ids 1, 3, ...) does with the
    backend's ``chunks`` (one data_received each)."""
    clock = Clock()
    transport = FakeTransport()
    codec = H2ClientConnection(clock=clock, limits=limits or H2Limits())
    codec.h2.fast_response = fast
    codec.connection_made(transport)
    codec.data_received(SETTINGS)
    ups = []
    for _ in range(streams):
        up = Upstream()
        stream = codec.open_stream()
        stream.bind(up, False)
        head = RequestHead(b"POST", b"/svc/m", [(b"te", b"trailers")], authority=b"b")
        stream.send_head(head, (b"\x00\x00\x00\x00\x00",), ended)
        ups.append(up)
    for chunk in chunks:
        codec.data_received(chunk)
    seen = [[(name, _plain(v)) for name, v in u.events] for u in ups]
    heads = [(u.head.status, u.head.headers, u.head.body_length) if u.head else None for u in ups]
    bodies = [bytes(u.body) for u in ups]
    return (
        transport.take(),
        seen,
        heads,
        bodies,
        codec.closed,
        _plain_text(codec.error),
        transport.closed,
        sorted(codec.h2.streams),
    ), codec.h2.fast_frames


def _plain(v: Any) -> Any:
    """An exception as (type, message): comparable across two runs (hpack names the
    memoryview it could not decode by its address)."""
    if isinstance(v, BaseException):
        return type(v).__name__, _plain_text(str(v))
    return v


def _plain_text(text: str | None) -> str | None:
    return None if text is None else re.sub(r"0x[0-9a-f]+", "0x?", text)


def same(chunks: list[bytes], **kw: Any) -> tuple[tuple[Any, ...], int]:
    fast, n_fast = run(chunks, fast=True, **kw)
    slow, n_slow = run(chunks, fast=False, **kw)
    assert n_slow == 0
    assert fast == slow
    return fast, n_fast


def last(seen: list[tuple[str, Any]]) -> str:
    """The last event an exchange heard, flushes aside."""
    return [name for name, _ in seen if name != "flush"][-1]


def unary(b: Backend, sid: int, body: bytes = b"\x00\x00\x00\x00\x02hi") -> bytes:
    return b.headers(sid, OK) + data(sid, body) + b.headers(sid, TRAILERS, flags=0x5)


# ------------------------------------------------------------------ valid input


def test_which_frames_are_fast() -> None:
    assert fast_frame(0x0, 0x0)
    assert fast_frame(0x0, 0x1)
    assert not fast_frame(0x0, 0x8)  # padded DATA
    assert fast_frame(0x1, 0x4)
    assert fast_frame(0x1, 0x5)
    assert not fast_frame(0x1, 0x1)  # CONTINUATION follows
    assert not fast_frame(0x1, 0xC)  # padded
    assert not fast_frame(0x1, 0x24)  # priority
    assert not fast_frame(0x3, 0x0)
    assert not fast_frame(0x9, 0x4)


def test_unary_responses_in_one_read_are_read_by_our_path() -> None:
    b = Backend()
    out, n = same([b"".join(unary(b, sid) for sid in (1, 3, 5))])
    _wire, seen, heads, bodies, closed, error, _tclosed, left = out
    assert n == 9
    assert [h[0] for h in heads if h] == [200, 200, 200]
    assert bodies == [b"\x00\x00\x00\x00\x02hi"] * 3
    assert all([e[0] for e in s if e[0] != "flush"] == ["head", "data", "end"] for s in seen)
    assert not closed and error is None
    assert left == []  # ended streams forgotten, not kept until h2's sweep


def test_control_frames_between_fast_frames_keep_their_order() -> None:
    b = Backend()
    chunk = (
        b.headers(1, OK)
        + PING
        + data(1, b"ab")
        + frame(0x8, 0, 0, (1000).to_bytes(4, "big"))
        + SETTINGS_ACK
        + b.headers(3, OK, flags=0x5)
        + rst(5)
        + b.headers(1, TRAILERS, flags=0x5)
    )
    out, n = same([chunk])
    assert n == 4
    assert out[0].count(frame(0x6, 0x1, 0, b"12345678")) == 1  # the PING answered


def test_frames_cut_anywhere_match_h2() -> None:
    b = Backend()
    stream = b"".join(unary(b, sid) for sid in (1, 3, 5))
    for cut in range(1, len(stream), 7):
        same([stream[:cut], stream[cut:]])


def test_streams_still_sending_their_request_get_their_response() -> None:
    b = Backend()
    out, n = same([unary(b, 1)], streams=1, ended=False)
    assert n == 3
    assert rst(1, 0) in out[0]  # the response ended first: RST_STREAM(NO_ERROR)


def test_content_length_and_padded_or_continued_frames() -> None:
    b = Backend()
    head = b.headers(1, [(b":status", b"200"), (b"content-length", b"3")])
    padded = frame(0x0, 0x9, 1, b"\x02abc\x00\x00")
    block = b.enc.encode([(b":status", b"204")])
    continued = frame(0x1, 0x1, 3, block[:1]) + frame(0x9, 0x4, 3, block[1:])
    out, n = same([head + padded + continued + unary(b, 5)])
    assert out[3][0] == b"abc"
    assert n == 4


def test_the_validated_response_heads_are_remembered() -> None:
    b = Backend()
    clock = Clock()
    codec = H2ClientConnection(clock=clock)
    codec.connection_made(FakeTransport())
    codec.data_received(SETTINGS)
    for sid in (1, 3, 5, 7):
        stream = codec.open_stream()
        stream.bind(Upstream(), False)
        stream.send_head(RequestHead(b"GET", b"/", [], authority=b"b"), (), True)
        codec.data_received(unary(b, sid))
    assert codec.h2.validated.hits >= 6
    assert codec.h2.decoder.hits >= 4  # from the third call: the table is set by then


def test_h2_streams_stay_bounded_without_the_sweep() -> None:
    b = Backend()
    codec = H2ClientConnection(clock=Clock())
    codec.connection_made(FakeTransport())
    codec.data_received(SETTINGS)
    for i in range(SWEEP_STREAMS * 2):
        stream = codec.open_stream()
        stream.bind(Upstream(), False)
        stream.send_head(RequestHead(b"GET", b"/", [], authority=b"b"), (), True)
        if i % 2:
            codec.data_received(unary(b, stream.stream_id))
        else:
            codec.data_received(rst(stream.stream_id))
        assert len(codec.h2.streams) <= 1
    assert codec.active_streams == 0


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "fields",
    [
        [(b"content-type", b"x")],  # no :status
        [(b":status", b"200"), (b"Upper", b"x")],
        [(b":status", b"200"), (b"connection", b"close")],
        [(b":status", b"200"), (b":path", b"/")],  # a request pseudo-header
        [(b":status", b"200"), (b":status", b"200")],
        [(b":status", b"200"), (b"x", b"a\x00b")],
    ],
)
def test_invalid_response_heads_get_the_same_verdict(fields: list[tuple[bytes, bytes]]) -> None:
    b = Backend()
    out, _ = same([unary(b, 1), b.headers(3, fields) + data(3, b"x")])
    assert out[4]  # the connection is closed
    assert last(out[1][0]) == "end"  # the first stream had ended before
    assert last(out[1][1]) == "lost"


def test_hpack_garbage_and_bombs_end_the_connection() -> None:
    table_update = frame(0x1, 0x5, 1, b"\x3f\xe1\xff\x03")  # table size over ours
    garbage = frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff")
    big = hpack.Encoder()
    bomb_fields = [(b":status", b"200")] + [(b"x-bomb", b"v" * 4000)] * 20
    bomb = frame(0x1, 0x5, 1, big.encode(bomb_fields)[:16000])
    for chunk in (table_update, garbage, bomb):
        out, _ = same([chunk])
        assert out[4] and out[6]
        assert last(out[1][0]) == "lost"


def test_an_hpack_bomb_of_indexed_repeats_is_refused_by_the_decoded_bound() -> None:
    b = Backend()
    # One 4 KiB entry inserted, then referenced by index: a small block, a huge list.
    prime = b.headers(1, [(b":status", b"200"), (b"x-big", b"v" * 4000)])
    repeat = frame(0x1, 0x5, 3, b"\x88" + b"\xbe" * 200)
    out, _ = same([prime + repeat], streams=2)
    assert out[4]
    assert last(out[1][1]) == "lost"


def test_over_100_fields_is_a_lost_stream_and_the_connection_goes_on() -> None:
    b = Backend()
    many = [(b":status", b"200")] + [(b"x-%d" % i, b"") for i in range(101)]
    out, n = same([b.headers(1, many, flags=0x5) + unary(b, 3)])
    assert last(out[1][0]) == "lost"
    assert last(out[1][1]) == "end"
    assert not out[4]
    assert n >= 3


@pytest.mark.parametrize(
    "bad",
    [
        data(1, b"x"),  # DATA before the response head
        data(2, b"x"),  # an even stream: never ours
        data(9, b"x"),  # a stream never opened
        data(0, b"x"),  # the connection itself
        frame(0x1, 0x4, 1, b"\x88") + frame(0x1, 0x4, 1, b"\x88"),  # trailers without END_STREAM
        frame(0x1, 0x5, 1, b"\x88") + data(1, b"late"),  # DATA after END_STREAM
        frame(0x1, 0x4, 1, b"\x88") + rst(1) + data(1, b"after reset"),
        frame(0x1, 0x4, 1, b"\x88") + data(1, b"x" * 16384) * 5,  # over the 64 KiB window
        frame(0x1, 0x4, 1, b"\x88") + frame(0x0, 0x1, 1, b""),
        frame(0x1, 0x4, 1, b"\x88") + frame(0x0, 0x0, 1, b"") * 3,  # empty DATA flood
        frame(0x1, 0x4, 1, b"\x88") + frame(0x0, 0x0, 1, b"x" * 16385),  # over the frame size
        frame(0x1, 0x0, 1, b"\x88") + data(1, b"x"),  # DATA inside a header block
        frame(0x1, 0x4, 1, b"\x88") + frame(0xFA, 0, 1, b"ext") + data(1, b"x", end=True),
    ],
)
def test_bad_frames_get_the_same_verdict(bad: bytes) -> None:
    same([bad])
    same([bad[:5], bad[5:]])


def test_a_content_length_lie_is_a_lost_stream() -> None:
    b = Backend()
    head = b.headers(1, [(b":status", b"200"), (b"content-length", b"1")])
    out, _ = same([head + data(1, b"toolong", end=True)])
    assert last(out[1][0]) == "lost"


@given(
    st.lists(
        st.sampled_from(
            ["head", "head_end", "data", "data_end", "trailers", "ping", "wu", "rst", "junk"]
        ),
        max_size=14,
    ),
    st.lists(st.sampled_from([1, 3, 5, 7]), min_size=14, max_size=14),
    st.integers(min_value=1, max_value=80),
)
@settings(max_examples=80, deadline=None)
def test_random_frame_sequences_and_cuts_match_h2(
    kinds: list[str], sids: list[int], cut: int
) -> None:
    b = Backend()
    parts = []
    for kind, sid in zip(kinds, sids, strict=False):
        if kind == "head":
            parts.append(b.headers(sid, OK))
        elif kind == "head_end":
            parts.append(b.headers(sid, OK, flags=0x5))
        elif kind == "data":
            parts.append(data(sid, b"xy"))
        elif kind == "data_end":
            parts.append(data(sid, b"z", end=True))
        elif kind == "trailers":
            parts.append(b.headers(sid, TRAILERS, flags=0x5))
        elif kind == "ping":
            parts.append(PING)
        elif kind == "wu":
            parts.append(frame(0x8, 0, sid, (100).to_bytes(4, "big")))
        elif kind == "rst":
            parts.append(rst(sid))
        else:
            parts.append(frame(0x1, 0x5, sid, b"\x00\x01"))
    chunk = b"".join(parts)
    same([chunk], streams=4)
    cut = min(cut * 3, len(chunk))
    same([chunk[:cut], chunk[cut:]], streams=4)


# ------------------------------------------------ the response scanner == FrameScanner

_SCANNER_STATE = (
    "_block_bytes",
    "_empty_run",
    "_flood_start",
    "_goaway",
    "_head",
    "_pings",
    "_priority_frames",
    "_settings",
    "_skip",
    "_window_updates",
    "data_frames",
    "goaways",
    "rst_streams",
    "streams_opened",
)


def scan_all(scanner: FrameScanner, reads: list[tuple[bytes, float]]) -> list[Any]:
    """Each read's output (or the violation), and the scanner's state after each."""
    out: list[Any] = []
    for chunk, now in reads:
        try:
            out.append(bytes(scanner.scan(chunk, now)))
        except Violation as v:
            out.append(("violation", v.error_code, v.reason))
            break
        finally:
            out.append(tuple(_plain_state(getattr(scanner, n)) for n in _SCANNER_STATE))
    return out


def _plain_state(v: Any) -> Any:
    return bytes(v) if isinstance(v, (bytearray, memoryview)) else v


def same_scan(reads: list[tuple[bytes, float]], limits: H2Limits | None = None) -> list[Any]:
    lim = limits or H2Limits()
    ours = scan_all(ResponseScanner(lim, inbound=True, strip_goaway=True), reads)
    theirs = scan_all(FrameScanner(lim, inbound=True, strip_goaway=True), reads)
    assert ours == theirs
    return ours


_SCAN_FRAMES = {
    "head": frame(0x1, 0x4, 1, b"\x88"),
    "head_even": frame(0x1, 0x4, 2, b"\x88"),
    "head_open": frame(0x1, 0x0, 3, b"\x88"),  # no END_HEADERS: a block begins
    "cont": frame(0x9, 0x4, 3, b"\x88"),
    "trailers": frame(0x1, 0x5, 1, b"\x40\x01a\x01b"),
    "data": data(1, b"abc"),
    "data_end": data(1, b"", end=True),
    "data_empty": frame(0x0, 0x0, 1, b""),
    "data_padded": frame(0x0, 0x8, 1, b"\x01x\x00"),
    "data_big": frame(0x0, 0x0, 1, b"x" * 16385),
    "head_big": frame(0x1, 0x4, 5, b"\x00" * 5000),
    "ping": PING,
    "settings": SETTINGS,
    "goaway": frame(0x7, 0, 0, (1).to_bytes(4, "big") + (0).to_bytes(4, "big")),
    "wu": frame(0x8, 0, 0, (100).to_bytes(4, "big")),
    "rst": rst(1),
}


def test_response_reads_take_the_quick_pass_with_the_same_state() -> None:
    b = Backend()
    reads = [(unary(b, sid), 1.0 + sid) for sid in (1, 3, 5)]
    reads.append((data(7, b"x") + frame(0x1, 0x4, 7, b"\x88"), 30.0))  # the flood window moves
    result = same_scan(reads)
    assert not any(isinstance(r, tuple) and r[:1] == ("violation",) for r in result)
    assert result[0] == reads[0][0]


def test_a_goaway_is_still_stripped_and_violations_are_the_same() -> None:
    goaway = _SCAN_FRAMES["goaway"]
    result = same_scan([(_SCAN_FRAMES["head"] + goaway + _SCAN_FRAMES["data"], 0.0)])
    assert result[0] == _SCAN_FRAMES["head"] + _SCAN_FRAMES["data"]
    same_scan([(_SCAN_FRAMES["data_empty"] * 3, 0.0)])
    same_scan([(_SCAN_FRAMES["head_big"], 0.0)], H2Limits(max_header_block_bytes=4096))
    same_scan([(_SCAN_FRAMES["data_big"], 0.0)])


@given(
    st.lists(st.sampled_from(sorted(_SCAN_FRAMES)), max_size=12),
    st.lists(st.integers(min_value=0, max_value=200), max_size=3),
    st.sampled_from([0.0, 5.0, 11.0]),
)
@settings(max_examples=150, deadline=None)
def test_random_reads_scan_the_same(names: list[str], cuts: list[int], step: float) -> None:
    stream = b"".join(_SCAN_FRAMES[n] for n in names)
    points = sorted({min(c, len(stream)) for c in cuts})
    reads, start = [], 0
    for i, p in enumerate([*points, len(stream)]):
        reads.append((stream[start:p], step * i))
        start = p
    same_scan(reads, H2Limits(max_header_block_bytes=4096))


_OUT_STATE = ("_head", "_skip", "_preface_left", "data_frames", "rst_streams", "frames_paused")


@given(
    st.lists(st.sampled_from(sorted(_SCAN_FRAMES)), max_size=12),
    st.lists(st.integers(min_value=0, max_value=200), max_size=3),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
@settings(max_examples=150, deadline=None)
def test_request_writes_are_counted_the_same(
    names: list[str], cuts: list[int], paused: list[bool]
) -> None:
    stream = PREFACE + b"".join(_SCAN_FRAMES[n] for n in names)
    points = sorted({min(c, len(stream)) for c in cuts})
    ours = RequestScanner(H2Limits(), inbound=False, preface=True)
    theirs = FrameScanner(H2Limits(), inbound=False, preface=True)
    start = 0
    for i, p in enumerate([*points, len(stream)]):
        for scanner in (ours, theirs):
            scanner.writes_paused(paused[i])
            assert scanner.scan(stream[start:p], 0.0) == stream[start:p]
        start = p
        assert [getattr(ours, n) for n in _OUT_STATE] == [getattr(theirs, n) for n in _OUT_STATE]
        assert ours.control_frames_paused == theirs.control_frames_paused
