"""The HPACK coders of the HTTP/2 codecs: the caching decoder agrees with ``hpack``'s
call for call whatever the table does; the static encoder's blocks decode to their
fields with an empty table; caches stay bounded; limits hold on cached paths."""

from __future__ import annotations

import hpack
import pytest
from h2_kit import ServerRig, responses
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.http import h2_hpack
from gatewayd.proxy.http.codec import ResponseHead
from gatewayd.proxy.http.h2_fields import to_h2_fields
from gatewayd.proxy.http.h2_hpack import (
    CACHE_ENTRIES,
    CACHE_MAX_BLOCK,
    FIELD_CACHE_ENTRIES,
    FIELD_CACHE_MAX_BYTES,
    CachingDecoder,
    StaticEncoder,
)

# A few names and values so that lists repeat, hit the table, and evict (big values).
_names = st.sampled_from([b"x-a", b"x-b", b"content-type", b"date", b"cookie", b"x-request-id"])
_values = st.one_of(
    st.sampled_from([b"1", b"22", b"text/plain", b"v" * 300]),
    st.binary(min_size=0, max_size=40).map(lambda b: b.hex().encode()),
)
_field = st.tuples(_names, _values)
_lists = st.lists(st.lists(_field, min_size=1, max_size=6), min_size=1, max_size=8)
# A session: header lists, each used 1-3 times in a row (repeats are what the cache
# serves), with table-size changes sprinkled in.
_session = st.lists(
    st.tuples(st.integers(0, 7), st.integers(1, 3), st.sampled_from([None, 0, 256, 4096])),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(lists=_lists, session=_session)
def test_encoder_blocks_decode_to_their_fields_and_leave_the_table_empty(lists, session) -> None:  # type: ignore[no-untyped-def]
    enc = StaticEncoder()
    reader = hpack.Decoder()
    for index, times, resize in session:
        if resize is not None:
            enc.header_table_size = resize  # the peer's SETTINGS_HEADER_TABLE_SIZE
            reader.max_allowed_table_size = resize
        fields = lists[index % len(lists)]
        for _ in range(times):
            block = enc.encode(fields)
            assert reader.decode(block, raw=True) == fields
            assert list(reader.header_table.dynamic_entries) == []
            assert reader.header_table.maxsize == 0


def test_request_ids_are_plain_literals_kept_out_of_the_field_cache() -> None:
    enc = StaticEncoder()
    reader = hpack.Decoder()
    h2_hpack._plain_fields.clear()
    for value in (b"", b"0f3c" * 9, b"v" * 200, b"\xff" * 130):
        fields = [(b"x-request-id", value), (b"content-type", b"text/plain")]
        block = enc.encode(fields)
        assert reader.decode(block, raw=True) == fields
        assert value in block  # not Huffman-coded
    assert all(name != b"x-request-id" for name, _ in h2_hpack._plain_fields)
    assert list(reader.header_table.dynamic_entries) == []


def test_encoder_announces_an_empty_table_first_and_after_each_settings_change() -> None:
    enc = StaticEncoder()
    fields = [(b":status", b"200"), (b"x-a", b"1")]
    first = enc.encode(fields)
    again = enc.encode(fields)
    assert first == b"\x20" + again  # RFC 7541 6.3: size update to 0, then the fields
    enc.header_table_size = 0
    assert enc.encode(fields) == first
    assert enc.encode(fields) == again
    # Known representations: :status 200 is static index 8; x-a a literal without
    # indexing with a new name (RFC 7541 6.2.2).
    assert again[:1] == b"\x88"
    assert again[1:2] == b"\x00"


@settings(max_examples=60, deadline=None)
@given(lists=_lists, session=_session)
def test_decoder_gives_the_plain_decoders_fields(lists, session) -> None:  # type: ignore[no-untyped-def]
    writer = hpack.Encoder()
    plain, cached = hpack.Decoder(), CachingDecoder()
    for index, times, resize in session:
        if resize is not None:
            writer.header_table_size = resize
        fields = lists[index % len(lists)]
        for _ in range(times):
            block = writer.encode(fields)
            assert cached.decode(block, raw=True) == plain.decode(block, raw=True) == fields


def test_a_repeated_block_hits_and_a_replayed_block_follows_the_table() -> None:
    """The same bytes mean other fields once the table has changed: the client replays
    a block of dynamic-table references after an insertion moved the indexes."""
    dec = CachingDecoder()
    ref = hpack.Decoder()
    first = hpack.Encoder()
    b1 = first.encode([(b"x-a", b"1")])  # literal with indexing
    b2 = first.encode([(b"x-a", b"1")])  # indexed 62
    for block in (b1, b2):
        assert dec.decode(block, raw=True) == ref.decode(block, raw=True)
    assert dec.decode(b2, raw=True) == [(b"x-a", b"1")]
    assert dec.hits == 1
    b3 = first.encode([(b"x-b", b"2")])  # an insertion: 62 is x-b now, 63 x-a
    assert dec.decode(b3, raw=True) == ref.decode(b3, raw=True)
    # b2 replayed: index 62 now names x-b; a stale cache would answer x-a.
    assert dec.decode(b2, raw=True) == ref.decode(b2, raw=True) == [(b"x-b", b"2")]


def test_caches_are_bounded() -> None:
    dec = CachingDecoder()
    writer = hpack.Encoder()
    # Static-table-only fields: no insertion, every call cacheable.
    for i in range(CACHE_ENTRIES * 5):
        fields = [(b":status", b"200")] * (1 + i % 40)
        dec.decode(writer.encode(fields), raw=True)
        assert len(dec._cache) <= CACHE_ENTRIES
    big = [(b":status", b"200")] * (CACHE_MAX_BLOCK + 1)
    block = writer.encode(big)
    assert len(block) > CACHE_MAX_BLOCK
    dec._cache.clear()
    assert dec.decode(block, raw=True) == big
    assert dec._cache == {}
    # The encoder's field cache (process-wide).
    enc = StaticEncoder()
    for i in range(FIELD_CACHE_ENTRIES + 10):
        enc.encode([(b"x-n", b"%d" % i)])
        assert len(h2_hpack._plain_fields) <= FIELD_CACHE_ENTRIES
    h2_hpack._plain_fields.clear()
    long_value = b"v" * FIELD_CACHE_MAX_BYTES
    assert hpack.Decoder().decode(enc.encode([(b"x-long", long_value)]), raw=True) == [
        (b"x-long", long_value)
    ]
    assert h2_hpack._plain_fields == {}


def test_the_header_list_bound_holds_for_a_repeated_block() -> None:
    """An HPACK bomb: a small block of references to one big table entry.  Refused the
    first time, refused again (a refusal is never cached)."""
    writer = hpack.Encoder()
    dec = CachingDecoder(max_header_list_size=8 * 1024)
    entry = [(b"x-big", b"v" * 3000)]
    dec.decode(writer.encode(entry), raw=True)  # inserted into the table
    bomb = writer.encode(entry * 10)  # 10 one-byte references: 30 KiB decoded
    assert len(bomb) < 20
    for _ in range(3):
        with pytest.raises(hpack.OversizedHeaderListError):
            dec.decode(bomb, raw=True)
    assert dec._cache == {}


def test_to_h2_fields_trims_values_and_never_indexes_credentials() -> None:
    fields = to_h2_fields(
        [
            (b"Authorization", b"Bearer t "),
            (b"cookie", b"a=1"),
            (b"cookie", b"session=" + b"x" * 40),
            (b"x-a", b"\t v \t"),
        ],
        request=True,
    )
    assert fields == [
        (b"authorization", b"Bearer t"),
        (b"cookie", b"a=1"),
        (b"cookie", b"session=" + b"x" * 40),
        (b"x-a", b"v"),
    ]
    kinds = [isinstance(f, hpack.NeverIndexedHeaderTuple) for f in fields]
    assert kinds == [True, True, False, False]
    # On the wire they are "never indexed" literals (RFC 7541 6.2.3), which an
    # intermediary must forward as such.
    decoded = hpack.Decoder().decode(StaticEncoder().encode(fields), raw=True)
    assert decoded == fields
    assert [isinstance(f, hpack.NeverIndexedHeaderTuple) for f in decoded] == kinds


def test_a_connection_serves_repeated_requests_from_its_caches() -> None:
    rig = ServerRig(respond=False)
    got = {}
    for _ in range(4):
        sid = rig.request(b"/same", extra=[(b"user-agent", b"t")])
        rig.pump()
        stream = rig.exchanges[-1].stream
        stream.send_head(
            ResponseHead(200, [(b"content-type", b"text/plain ")], body_length=2),
            b"GET",
        )
        stream.send_data(b"ok")
        stream.send_end(None)
        got[sid] = responses(rig.pump())[sid]
    for answer in got.values():
        assert answer["status"] == 200
        assert answer["body"] == b"ok"
        assert (b"content-type", b"text/plain") in answer["headers"]
    assert [e.head.target for e in rig.exchanges] == [b"/same"] * 4
    # The connection's known request blocks answer before the decoder's cache does.
    assert rig.server.h2.decoder.hits + rig.server.h2.known_hits >= 2
    assert list(rig.client.decoder.header_table.dynamic_entries) == []


def test_indexing_literals_against_an_empty_table_keep_the_cache() -> None:
    """nginx: a size update to 0, then "literal with incremental indexing" fields, which
    empty an empty table (RFC 7541 4.4): the same block decodes from the cache."""
    writer = hpack.Encoder()
    writer.header_table_size = 0
    dec, ref = CachingDecoder(), hpack.Decoder()
    first = writer.encode([(b"server", b"nginx"), (b"x-a", b"1")])
    block = writer.encode([(b"server", b"nginx"), (b"x-a", b"1")])
    assert first[:1] == b"\x20" and first[1:] == block
    for b in (first, block, block, block):
        assert dec.decode(b, raw=True) == ref.decode(b, raw=True)
    assert dec.hits == 2


def test_a_response_head_over_one_frame_goes_out_in_continuation_frames() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/big")
    rig.pump()
    stream = rig.exchanges[0].stream
    big = b"x" * 40_000  # > 2 frames of 16 KiB, incompressible enough
    stream.send_head(ResponseHead(200, [(b"x-big", big)], body_length=2), b"GET")
    stream.send_data(b"ok")
    stream.send_end([(b"x-t", b"1")])
    frames = bytes(rig.transport.out)
    got = responses(rig.pump())[sid]
    assert (b"x-big", big) in got["headers"]
    assert got["body"] == b"ok"
    assert got["trailers"] == [(b"x-t", b"1")]
    assert got["ended"]
    # HEADERS then two CONTINUATION frames, END_HEADERS only on the last.
    types = []
    pos = 0
    while pos + 9 <= len(frames):
        length = int.from_bytes(frames[pos : pos + 3], "big")
        types.append((frames[pos + 3], frames[pos + 4]))
        pos += 9 + length
    headers_at = types.index((0x1, 0x0))
    assert types[headers_at + 1 : headers_at + 3] == [(0x9, 0x0), (0x9, 0x4)]


def test_headers_on_a_stream_the_client_reset_raise_as_in_h2() -> None:
    import h2.errors
    import h2.exceptions

    rig = ServerRig(respond=False)
    sid = rig.request(b"/gone")
    rig.pump()
    rig.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    rig.pump()
    assert rig.exchanges[0].names()[-1] == "reset"
    with pytest.raises(h2.exceptions.StreamClosedError):
        rig.server.h2.send_headers(sid, [(b":status", b"200")], end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError):
        # Trailers (a second HEADERS) must end the stream.
        sid2 = rig.request(b"/t")
        rig.pump()
        rig.server.h2.send_headers(sid2, [(b":status", b"200")])
        rig.server.h2.send_headers(sid2, [(b"x-t", b"1")])


def test_data_frames_spend_both_windows_like_h2() -> None:
    rig = ServerRig(respond=False)
    sid = rig.request(b"/w")
    rig.pump()
    h2c = rig.server.h2
    conn_before = h2c.outbound_flow_control_window
    stream_before = h2c.local_flow_control_window(sid)
    stream = rig.exchanges[0].stream
    stream.send_head(ResponseHead(200, [], body_length=1000), b"GET")
    stream.send_data(b"a" * 1000)
    stream.send_end(None)
    assert h2c.outbound_flow_control_window == conn_before - 1000
    assert stream_before == 65535
    got = responses(rig.pump())[sid]
    assert got["body"] == b"a" * 1000
    assert got["ended"]
    import h2.exceptions

    sid2 = rig.request(b"/w2")
    rig.pump()
    h2c.send_headers(sid2, [(b":status", b"200")])
    with pytest.raises(h2.exceptions.FlowControlError):
        h2c.send_data(sid2, b"x" * 16384 * 5)
    with pytest.raises(h2.exceptions.FrameTooLargeError):
        h2c.send_data(sid2, b"x" * 16385)


def test_the_connection_coders_keep_h2s_decoder_bounds() -> None:
    import h2.connection

    from gatewayd.proxy.http.h2_conn import BoundedH2Connection, h2_config

    for client in (True, False):
        conn = BoundedH2Connection(h2_config(client_side=client))
        plain = h2.connection.H2Connection(h2_config(client_side=client))
        assert isinstance(conn.decoder, CachingDecoder)
        assert isinstance(conn.encoder, StaticEncoder)
        assert conn.decoder.max_header_list_size == plain.decoder.max_header_list_size
        assert conn.decoder.max_allowed_table_size == plain.decoder.max_allowed_table_size
