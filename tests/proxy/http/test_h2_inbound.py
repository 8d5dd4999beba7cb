"""Our own reading of request HEADERS frames (h2_inbound, BoundedH2Connection) and our
own sending of whole responses (``send_response``) against h2's: the same bytes, valid
and hostile, fed to a server codec with the fast paths and to one without them must
produce the same bytes out, the same requests, the same verdict.  No sockets: the codec
with a transport double and a fake clock (h2_kit)."""

from __future__ import annotations

import hpack
import pytest
from h2_kit import ServerRig
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.http.h2_inbound import (
    CACHE_ENTRIES,
    ValidatedFields,
    fast_headers,
    split_frames,
)
from gatewayd.proxy.http.h2_limits import H2Limits

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQ = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/x")]


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload
    )


SETTINGS = frame(0x4, 0, 0, b"")
SETTINGS_ACK = frame(0x4, 0x1, 0, b"")
PING = frame(0x6, 0, 0, b"12345678")


class Peer:
    """Hand-built client frames, HPACK-encoded by one encoder (the server's decoder
    state follows it, whatever the fields)."""

    def __init__(self) -> None:
        self.enc = hpack.Encoder()

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], flags: int = 0x5) -> bytes:
        return frame(0x1, flags, sid, self.enc.encode(fields))


def serve(chunks: list[bytes], *, fast: bool, limits: H2Limits | None = None) -> tuple[object, ...]:
    """What a server codec does with ``chunks`` (one data_received each)."""
    rig = ServerRig(limits) if limits is not None else ServerRig()
    # ServerRig speaks to the codec through an h2 client first; start from a fresh
    # codec reading our bytes only.
    rig = _fresh(rig, fast)
    for chunk in chunks:
        rig.send_raw(chunk)
    out = rig.read_back()
    heads = [(e.head.method, e.head.target, e.head.headers, e.names()) for e in rig.exchanges]
    return out, rig.goaways, heads, rig.transport.closed, rig.server.violation is not None


def _fresh(rig: ServerRig, fast: bool) -> ServerRig:
    from h2_kit import Clock, FakeDownstream, FakeTransport

    from gatewayd.proxy.http.h2_server import H2ServerConnection

    rig.clock = Clock()
    rig.transport = FakeTransport()
    rig.exchanges = []
    rig.goaways = []
    rig.server = H2ServerConnection(
        FakeDownstream(), rig._factory, clock=rig.clock, limits=rig.server.limits
    )
    rig.server.h2.fast_inbound = fast
    rig.server.h2.fast_outbound = fast  # send_response against h2's send path too
    rig.server.connection_made(rig.transport)
    rig.transport.take()
    return rig


def same(chunks: list[bytes], limits: H2Limits | None = None) -> tuple[object, ...]:
    fast = serve(chunks, fast=True, limits=limits)
    slow = serve(chunks, fast=False, limits=limits)
    assert fast == slow
    return fast


# ----------------------------------------------------------------- split_frames


def test_split_frames_reads_whole_frames_and_leaves_a_partial_one() -> None:
    data = frame(0x1, 0x5, 1, b"abc") + frame(0x0, 0x1, 3, b"") + frame(0x8, 0, 0, b"\x00\x00")
    frames, done = split_frames(data + b"\x00\x00\x09\x00")
    assert frames == [(0, 1, 5, 1, 3), (12, 0, 1, 3, 0), (21, 8, 0, 0, 2)]
    assert done == len(data)


def test_split_frames_ignores_the_reserved_bit_and_waits_for_a_whole_payload() -> None:
    head = (5).to_bytes(3, "big") + b"\x01\x04" + (0x80000001).to_bytes(4, "big")
    assert split_frames(head + b"abcde") == ([(0, 1, 4, 1, 5)], 14)
    assert split_frames(head + b"abcd") == ([], 0)
    assert split_frames(b"") == ([], 0)
    assert split_frames(b"\x00" * 8) == ([], 0)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_split_frames_never_raises_and_never_reads_past_the_end(data: bytes) -> None:
    frames, done = split_frames(data)
    assert done <= len(data)
    pos = 0
    for start, _t, _f, _s, length in frames:
        assert start == pos
        pos += 9 + length
    assert pos == done


def test_only_whole_unpadded_unprioritized_headers_opening_a_client_stream_are_fast() -> None:
    assert fast_headers(0x1, 0x4, 5, 3)
    assert fast_headers(0x1, 0x5, 5, 3)
    assert not fast_headers(0x1, 0x1, 5, 3)  # no END_HEADERS: CONTINUATION follows
    assert not fast_headers(0x1, 0xC, 5, 3)  # PADDED
    assert not fast_headers(0x1, 0x24, 5, 3)  # PRIORITY
    assert not fast_headers(0x1, 0x4, 4, 3)  # even: not a client stream
    assert not fast_headers(0x1, 0x4, 3, 3)  # not new: trailers or an error
    assert not fast_headers(0x0, 0x4, 5, 3)


def test_the_validated_cache_is_bounded_in_entries_and_size() -> None:
    cache = ValidatedFields()
    for i in range(3 * CACHE_ENTRIES):
        key, hit = cache.get(None, [(b"x-n", b"%d" % i)])
        assert hit is None
        cache.put(key, [(b"x-n", b"%d" % i)])
        assert len(cache._cache) <= CACHE_ENTRIES
    big = [(b"x-big", b"v" * 4096)]
    key, _ = cache.get(None, big)
    cache.put(key, big)
    assert cache.get(None, big)[1] is None
    many = [(b"x-%d" % i, b"") for i in range(100)]
    key, _ = cache.get(None, many)
    cache.put(key, many)
    assert cache.get(None, many)[1] is None


# ------------------------------------------------- fast path == h2, valid inputs


def test_requests_in_one_read_are_served_and_the_validation_is_remembered() -> None:
    peer = Peer()
    reqs = b"".join(peer.headers(sid, REQ) for sid in (1, 3, 5, 7))
    _out, goaways, heads, closed, violated = same([PREFACE + SETTINGS + reqs])
    assert [h[:2] for h in heads] == [(b"GET", b"/x")] * 4
    assert all(h[3] == ["start", "end"] for h in heads)
    assert not goaways and not closed and not violated
    rig = _fresh(ServerRig(), True)
    rig.send_raw(PREFACE + SETTINGS + reqs)
    assert rig.server.h2.validated.hits == 3
    assert not rig.server.h2.incoming_buffer._data


def test_frames_around_the_fast_ones_keep_their_order() -> None:
    peer = Peer()
    data = (
        PREFACE
        + SETTINGS
        + peer.headers(1, REQ)
        + PING
        + peer.headers(3, REQ, flags=0x4)  # a body follows
        + frame(0x0, 0x0, 3, b"hello")
        + SETTINGS_ACK
        + peer.headers(5, REQ)
        + frame(0x0, 0x1, 3, b"!")
    )
    out, goaways, heads, closed, _ = same([data])
    assert [h[3] for h in heads] == [
        ["start", "end"],
        ["start", "data", "data", "end"],
        ["start", "end"],
    ]
    assert not goaways and not closed
    # The PING ACK went out between the first two answers, as h2 alone orders it.
    assert frame(0x6, 0x1, 0, b"12345678") in out


def test_a_header_block_split_over_continuation_and_reads() -> None:
    peer = Peer()
    block = peer.enc.encode([*REQ, (b"x-long", b"v" * 300)])
    data = (
        PREFACE
        + SETTINGS
        + frame(0x1, 0x1, 1, block[:100])
        + frame(0x9, 0x0, 1, block[100:200])
        + frame(0x9, 0x4, 1, block[200:])
        + peer.headers(3, REQ)
    )
    # Every cut of the bytes into two reads gives the same answer.
    whole = same([data])
    assert len(whole[2]) == 2
    for cut in range(len(PREFACE), len(data), 7):
        assert same([data[:cut], data[cut:]]) == whole


def test_padded_and_prioritized_headers_go_to_h2() -> None:
    peer = Peer()
    block = peer.enc.encode(REQ)
    padded = frame(0x1, 0xD, 1, b"\x03" + block + b"\x00\x00\x00")
    prio = frame(0x1, 0x25, 3, b"\x00\x00\x00\x00\x10" + peer.enc.encode(REQ))
    _, goaways, heads, closed, _ = same([PREFACE + SETTINGS + padded + prio])
    assert len(heads) == 2 and not goaways and not closed


def test_trailers_on_an_open_stream_go_to_h2() -> None:
    peer = Peer()
    data = (
        PREFACE
        + SETTINGS
        + peer.headers(1, [(b":method", b"POST"), *REQ[1:]], flags=0x4)
        + frame(0x0, 0x0, 1, b"body")
        + peer.headers(1, [(b"x-trailer", b"t")])
    )
    _, _, heads, closed, _ = same([data])
    assert heads[0][3] == ["start", "data", "end"]
    assert not closed


# ------------------------------------------------------- known request blocks

# Static-table references only (RFC 7541 Appendix A): :method GET, :scheme http,
# :path /, :authority "a" (a literal without indexing): the dynamic table is untouched.
BASE = b"\x82\x86\x84\x01\x01a"
ADD_1 = b"\x40\x03x-a\x011"  # literal with incremental indexing: x-a: 1 at index 62
ADD_2 = b"\x40\x03x-a\x012"  # x-a: 2 at index 62, x-a: 1 moves to 63
REF_62 = b"\xbe"  # indexed field 62: the newest entry
REF_63 = b"\xbf"


def _x_a(heads: list[tuple[object, ...]]) -> list[bytes]:
    return [v for h in heads for n, v in h[2] if n == b"x-a"]  # type: ignore[attr-defined]


def test_a_known_block_is_read_again_once_the_table_changed() -> None:
    # The same bytes (BASE + REF_62) mean x-a: 1, then x-a: 2 after ADD_2.  Within one
    # read (stream 3's block is only remembered when its request is handled, after a
    # later block of the read changed the table) and across reads.
    reads = [
        PREFACE + SETTINGS,
        frame(0x1, 0x5, 1, BASE + ADD_1)
        + frame(0x1, 0x5, 3, BASE + REF_62)
        + frame(0x1, 0x5, 5, BASE + ADD_2)
        + frame(0x1, 0x5, 7, BASE + REF_63),
        frame(0x1, 0x5, 9, BASE + REF_62),
        frame(0x1, 0x5, 11, BASE + REF_62),
        frame(0x1, 0x5, 13, BASE + ADD_1) + frame(0x1, 0x5, 15, BASE + REF_62),
    ]
    _, goaways, heads, closed, _ = same(reads)
    assert not goaways and not closed
    assert _x_a(heads) == [b"1", b"1", b"2", b"1", b"2", b"2", b"1", b"1"]
    rig = _fresh(ServerRig(), True)
    for data in reads:
        rig.send_raw(data)
    assert rig.server.h2.known_hits == 1  # stream 11 only


def test_known_blocks_keep_the_content_length_check() -> None:
    # Requests with content-length 4 (the first block indexes its fields, the second
    # is remembered), then the known block with 5 bytes of body: h2's content-length
    # check (RFC 9113 8.1.1) still sees the length of a known block.
    peer = Peer()
    post = [(b":method", b"POST"), *REQ[1:], (b"content-length", b"4")]
    reads = [
        PREFACE + SETTINGS,
        peer.headers(1, post, flags=0x4) + frame(0x0, 0x1, 1, b"body"),
        peer.headers(3, post, flags=0x4) + frame(0x0, 0x1, 3, b"body"),
        peer.headers(5, post, flags=0x4),
        frame(0x0, 0x1, 5, b"body!"),
    ]
    _, goaways, heads, closed, _ = same(reads)
    assert [h[3] for h in heads[:2]] == [["start", "data", "end"]] * 2
    assert heads[2][3] == ["start", "reset"]
    assert closed and goaways == [(5, 0x1)]  # h2: a connection error, PROTOCOL_ERROR
    rig = _fresh(ServerRig(), True)
    for data in reads:
        rig.send_raw(data)
    assert rig.server.h2.known_hits == 1


def test_known_blocks_are_bounded() -> None:
    from gatewayd.proxy.http.h2_conn import KNOWN_ENTRIES, KNOWN_MAX_BLOCK

    rig = _fresh(ServerRig(), True)
    rig.send_raw(PREFACE + SETTINGS)
    for i in range(3 * KNOWN_ENTRIES):
        # A literal without indexing: a new block each time, the table untouched.
        rig.send_raw(frame(0x1, 0x5, 2 * i + 1, BASE + b"\x00\x03x-n\x02%02d" % i))
        assert len(rig.server.h2._known) <= KNOWN_ENTRIES
    long_value = b"v" * KNOWN_MAX_BLOCK
    rest = len(long_value) - 127  # RFC 7541 5.1: a 7-bit prefix, then 7 bits a byte
    big = BASE + b"\x00\x03x-n\x7f" + bytes([rest % 128 + 128, rest >> 7]) + long_value
    sid = 6 * KNOWN_ENTRIES + 1
    rig.send_raw(frame(0x1, 0x5, sid, big))
    assert big not in rig.server.h2._known
    assert len(rig.exchanges) == 3 * KNOWN_ENTRIES + 1


# ------------------------------------------------------------------ DATA frames


def _post(peer: Peer, sid: int) -> bytes:
    return peer.headers(sid, [(b":method", b"POST"), *REQ[1:]], flags=0x4)


@pytest.mark.parametrize(
    "make",
    [
        # Bodies in several frames, ending with an empty END_STREAM frame.
        lambda p: _post(p, 1) + frame(0x0, 0, 1, b"a" * 100) + frame(0x0, 0x1, 1, b""),
        # Over the stream's window (64 KiB): FLOW_CONTROL_ERROR.
        lambda p: _post(p, 1) + frame(0x0, 0, 1, b"x" * 16384) * 4 + frame(0x0, 0, 1, b"y"),
        # DATA after the request ended (STREAM_CLOSED), and on a stream never opened.
        lambda p: p.headers(1, REQ) + frame(0x0, 0x1, 1, b"late"),
        lambda p: frame(0x0, 0x1, 7, b"nobody"),
        # Padded DATA: h2 reads it.
        lambda p: _post(p, 1) + frame(0x0, 0x9, 1, b"\x02ab\x00\x00"),
        # Interleaved streams.
        lambda p: (
            _post(p, 1)
            + _post(p, 3)
            + frame(0x0, 0, 3, b"3")
            + frame(0x0, 0, 1, b"1")
            + frame(0x0, 0x1, 3, b"3")
            + frame(0x0, 0x1, 1, b"1")
        ),
    ],
)
def test_data_frames_match_h2(make: object) -> None:
    assert callable(make)
    data = PREFACE + SETTINGS + make(Peer())
    same([data])
    for cut in range(len(PREFACE), len(data), max(11, len(data) // 100)):
        same([data[:cut], data[cut:]])


# ----------------------------------------------- fast path == h2, hostile inputs


@pytest.mark.parametrize(
    "fields",
    [
        [*REQ, (b"connection", b"keep-alive")],  # connection-specific (RFC 9113 8.2.2)
        [*REQ, (b"te", b"gzip")],  # te other than "trailers"
        [*REQ, (b"X-Upper", b"1")],  # upper-case name (8.2.1)
        [*REQ, (b"x-bad", b"a\r\nb")],  # forbidden characters
        REQ[:3],  # no :path (8.3.1)
        [*REQ, (b":path", b"/again")],  # a pseudo-header twice
        [REQ[0], (b"x-early", b"1"), *REQ[1:]],  # pseudo-header after a field
        [*REQ, (b":status", b"200")],  # a response pseudo-header in a request
        [(b":status", b"100"), *REQ],  # reads as informational: h2's path refuses it
        [REQ[0], (b":status", b"103"), *REQ[1:]],  # the same, :status among the others
    ],
)
def test_invalid_request_fields_get_the_same_verdict_even_after_a_valid_request(
    fields: list[tuple[bytes, bytes]],
) -> None:
    peer = Peer()
    first = PREFACE + SETTINGS + peer.headers(1, REQ)
    _, goaways, heads, closed, _ = same([first, peer.headers(3, fields)])
    assert len(heads) == 1  # only the valid one reached an exchange
    assert closed and goaways and goaways[-1][1] == 0x1  # PROTOCOL_ERROR
    # In one read, h2 drops the whole read's events with the connection error.
    peer = Peer()
    _, goaways, heads, closed, _ = same([first + peer.headers(3, fields)])
    assert not heads and closed and goaways[-1] == (3, 0x1)


def test_hpack_garbage_ends_the_connection() -> None:
    data = PREFACE + SETTINGS + frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff\xff")
    _, goaways, heads, closed, _ = same([data])
    # h2 answers an undecodable block with PROTOCOL_ERROR (its _decode_headers).
    assert not heads and closed and goaways[-1][1] == 0x1


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.headers(2, REQ),  # even stream id from a client
        lambda p: p.headers(3, REQ) + p.headers(1, REQ),  # a lower id after a higher one
        lambda p: p.headers(1, REQ) + p.headers(1, REQ),  # HEADERS on a closed stream
        lambda p: frame(0x1, 0x1, 1, p.enc.encode(REQ)[:3]) + p.headers(3, REQ),  # interleaved
        lambda p: p.headers(0, REQ),  # stream 0
    ],
)
def test_stream_id_and_ordering_errors_match_h2(make: object) -> None:
    assert callable(make)
    out, goaways, _, closed, _ = same([PREFACE + SETTINGS + make(Peer())])
    # A connection error (GOAWAY), or for HEADERS on a stream whose request ended, a
    # stream error (RST_STREAM STREAM_CLOSED, RFC 9113 5.1): as h2 alone decides.
    assert (closed and goaways) or frame(0x3, 0, 1, (0x5).to_bytes(4, "big")) in out


def test_max_concurrent_streams_is_enforced_the_same_way() -> None:
    peer = Peer()
    limits = H2Limits(max_concurrent_streams=2)
    reads = [PREFACE + SETTINGS] + [peer.headers(s, REQ, flags=0x4) for s in (1, 3, 5)]
    _, goaways, heads, closed, _ = same(reads, limits)
    assert len(heads) == 2  # the third stream is over SETTINGS_MAX_CONCURRENT_STREAMS
    assert closed and goaways[-1][1] == 0x1


def test_headers_after_a_connection_error_are_not_read() -> None:
    peer = Peer()
    data = PREFACE + SETTINGS + peer.headers(2, REQ) + peer.headers(3, REQ)
    _, _, heads, closed, _ = same([data])
    assert not heads and closed


@given(
    st.lists(
        st.sampled_from(
            ["req", "req_open", "data_end", "ping", "settings", "wu", "wu_stream", "rst", "junk"]
        ),
        max_size=12,
    ),
    st.integers(min_value=1, max_value=60),
)
@settings(max_examples=60, deadline=None)
def test_random_frame_sequences_and_cuts_match_h2(kinds: list[str], cut: int) -> None:
    peer = Peer()
    sid = 1
    parts = [PREFACE, SETTINGS]
    for kind in kinds:
        if kind == "req":
            parts.append(peer.headers(sid, REQ))
            sid += 2
        elif kind == "req_open":
            parts.append(peer.headers(sid, REQ, flags=0x4))
            sid += 2
        elif kind == "data_end":
            parts.append(frame(0x0, 0x1, max(1, sid - 2), b"x"))
        elif kind == "ping":
            parts.append(PING)
        elif kind == "settings":
            parts.append(SETTINGS)
        elif kind == "wu":
            parts.append(frame(0x8, 0, 0, (100).to_bytes(4, "big")))
        elif kind == "wu_stream":  # on the last stream, answered (closed) or not
            parts.append(frame(0x8, 0, max(1, sid - 2), (100).to_bytes(4, "big")))
        elif kind == "rst":
            parts.append(frame(0x3, 0, max(1, sid - 2), (8).to_bytes(4, "big")))
        else:
            parts.append(frame(0x1, 0x5, sid, b"\x00\x01"))
    data = b"".join(parts)
    cut = min(cut * 3, len(data))
    # Fast path and h2 agree on the bytes read at once and cut in two reads (where
    # the reads are cut may change the answer: events are handled after each read).
    same([data])
    same([data[:cut], data[cut:]])
