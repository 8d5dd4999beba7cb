"""The request head limits of the HTTP/1.1 server codec (``max_header_bytes``,
``max_headers``), charged to a head's fields once the head is complete or stops
(end of a read, parse error) instead of field by field: the same heads get the same
431, whatever the reads they come in, and trailer fields take what the head left."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_h1_server import RECORDED, serve
from transport_double import TransportDouble

from gatewayd.proxy.http.h1_server import HttpConnection

MAX_BYTES = 200
MAX_FIELDS = 6


def counted(target: bytes, fields: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """What the limits count of a head: its target, each field's name and value and
    4 bytes (": " and CRLF); and its number of fields."""
    return len(target) + sum(len(n) + len(v) + 4 for n, v in fields), len(fields)


def head_bytes(target: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    lines = b"".join(b"%s: %s\r\n" % f for f in fields)
    return b"GET " + target + b" HTTP/1.1\r\n" + lines + b"\r\n"


def outcome(data: bytes, cuts: list[int], **options: object) -> bytes:
    """The first bytes written back (b"" when the request was taken) after ``data``
    was read in pieces cut at ``cuts``."""
    seen: list[bytes] = []

    def test(conn: HttpConnection, t: TransportDouble) -> None:
        pos = 0
        for cut in [*sorted(cuts), len(data)]:
            if cut > pos:
                conn.data_received(data[pos:cut])
                pos = cut
        seen.append(t.take()[:12])
        if not seen[0]:
            assert [ex.head.target for ex in RECORDED] == [data.split(b" ")[1]]

    serve(test, max_header_bytes=MAX_BYTES, max_headers=MAX_FIELDS)
    return seen[0]


def fields_of(sizes: list[int]) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"h")] + [(b"x-%d" % i, b"v" * n) for i, n in enumerate(sizes)]


def test_head_at_the_byte_limit_is_taken_one_more_is_431() -> None:
    target = b"/"
    fields = fields_of([0])
    used, _ = counted(target, fields)
    # The last field grows to take exactly what is left, then one byte more.
    fields[-1] = (fields[-1][0], b"v" * (MAX_BYTES - used))
    assert counted(target, fields)[0] == MAX_BYTES
    assert outcome(head_bytes(target, fields), []) == b""
    fields[-1] = (fields[-1][0], fields[-1][1] + b"v")
    assert outcome(head_bytes(target, fields), []) == b"HTTP/1.1 431"


def test_head_at_the_field_limit_is_taken_one_more_is_431() -> None:
    fields = fields_of([1] * (MAX_FIELDS - 1))
    assert outcome(head_bytes(b"/", fields), []) == b""
    fields.append((b"x-last", b"1"))
    assert outcome(head_bytes(b"/", fields), []) == b"HTTP/1.1 431"


def test_an_incomplete_head_over_the_field_limit_is_431_at_once() -> None:
    # No end of head, no byte limit reached: the fields alone are too many (the
    # parser hands on a field once the next line begins: one more than the limit).
    data = head_bytes(b"/", fields_of([1] * (MAX_FIELDS + 1)))[:-2]
    assert outcome(data, []) == b"HTTP/1.1 431"
    assert outcome(data, [len(data) // 2]) == b"HTTP/1.1 431"


def test_a_target_over_the_byte_limit_is_431_at_once() -> None:
    data = b"GET /" + b"p" * MAX_BYTES
    assert outcome(data, []) == b"HTTP/1.1 431"
    assert outcome(data, [10, 100]) == b"HTTP/1.1 431"
    # At the limit with its Host field (the target's own line, then "host: h").
    target = b"/" + b"p" * (MAX_BYTES - 1 - len(b"hosth") - 4)
    assert outcome(head_bytes(target, fields_of([])), []) == b""
    assert outcome(head_bytes(target + b"p", fields_of([])), []) == b"HTTP/1.1 431"


def test_too_many_fields_then_a_second_host_is_431_not_400() -> None:
    # Per field, the limit was reached before the second Host was looked at.
    fields = [*fields_of([1] * MAX_FIELDS), (b"host", b"again")]
    assert outcome(head_bytes(b"/", fields), []) == b"HTTP/1.1 431"
    fields = [*fields_of([1] * 2), (b"host", b"again")]
    assert outcome(head_bytes(b"/", fields), []) == b"HTTP/1.1 400"


def test_too_many_fields_then_a_malformed_line_is_431_not_400() -> None:
    data = head_bytes(b"/", fields_of([1] * (MAX_FIELDS + 1)))[:-2] + b"bad line\r\n\r\n"
    assert outcome(data, []) == b"HTTP/1.1 431"


def test_trailers_take_what_the_head_left() -> None:
    def run(head_fields: list[tuple[bytes, bytes]], trailer_value: bytes) -> list[object]:
        events: list[object] = []

        def test(conn: HttpConnection, t: TransportDouble) -> None:
            conn.data_received(
                head_bytes(b"/", [*head_fields, (b"transfer-encoding", b"chunked")]) + b"1\r\na\r\n"
            )
            [ex] = RECORDED
            conn.data_received(b"0\r\nt: " + trailer_value + b"\r\n\r\n")
            events.extend(ex.events)

        serve(test, max_header_bytes=MAX_BYTES, max_headers=MAX_FIELDS)
        return events

    head_fields = fields_of([10, 10])
    used, _ = counted(b"/", [*head_fields, (b"transfer-encoding", b"chunked")])
    room = MAX_BYTES - used - len(b"t") - 4  # what the trailer's value may take
    assert run(head_fields, b"v" * room) == [("start",), ("end",)]
    assert run(head_fields, b"v" * (room + 1)) == [("start",), ("error", 431)]


@settings(max_examples=150, deadline=None)
@given(
    target_len=st.integers(0, 60),
    sizes=st.lists(st.integers(0, 60), max_size=MAX_FIELDS + 2),
    cut_fractions=st.lists(st.floats(0, 1), max_size=3),
)
def test_the_limits_are_those_of_the_fields_counted_one_by_one(
    target_len: int, sizes: list[int], cut_fractions: list[float]
) -> None:
    target = b"/" + b"p" * target_len
    fields = fields_of(sizes)
    data = head_bytes(target, fields)
    n_bytes, n_fields = counted(target, fields)
    cuts = [int(f * len(data)) for f in cut_fractions]
    # A head arriving in pieces is also bounded by the bytes read while it is incomplete
    # (``head_fed``, request line and framing included: what the parser holds), checked
    # at the end of each such read, as before the fields were charged per head.
    fed = max((c for c in cuts if 0 < c < len(data)), default=0)
    over = n_bytes > MAX_BYTES or n_fields > MAX_FIELDS or fed > MAX_BYTES
    assert outcome(data, cuts) == (b"HTTP/1.1 431" if over else b"")
