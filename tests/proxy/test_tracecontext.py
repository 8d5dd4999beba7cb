"""W3C Trace Context: parsing ``traceparent`` and what ``forward_request_headers`` sends."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.forwarded import forward_request_headers
from gatewayd.proxy.tracecontext import parse_traceparent

Headers = list[tuple[bytes, bytes]]

TRACE = b"0af7651916cd43dd8448eb211c80319c"
PARENT = b"b7ad6b7169203331"
VALID = b"00-" + TRACE + b"-" + PARENT + b"-01"
SHAPE = re.compile(rb"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")


def forward(
    headers: Headers, *, flags: bytes = b"00", preserve: bool = False, sample: float = 1.0
) -> tuple:
    return forward_request_headers(
        headers,
        peer_ip="192.0.2.5",
        scheme=b"http",
        trusted_hops=0,
        preserve_request_id=preserve,
        trace_flags=flags,
        trace_sample=sample,
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (VALID, (TRACE, PARENT, b"01")),
        (VALID[:-2] + b"00", (TRACE, PARENT, b"00")),
        # Flags other than sampled are dropped (version 00 defines only that one).
        (VALID[:-2] + b"03", (TRACE, PARENT, b"01")),
        (VALID[:-2] + b"02", (TRACE, PARENT, b"00")),
        # A higher version is read as version 00, with what follows ignored.
        (b"cc" + VALID[2:] + b"-what-the-future-holds", (TRACE, PARENT, b"01")),
        (b"cc" + VALID[2:], (TRACE, PARENT, b"01")),
    ],
)
def test_valid_traceparent(value: bytes, expected: tuple[bytes, bytes, bytes]) -> None:
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b"",
        VALID[:-1],  # short
        VALID + b"-",  # version 00 is exactly 55 characters
        b"ff" + VALID[2:],  # version ff is invalid
        b"cc" + VALID[2:] + b"x",  # a higher version must continue with a dash
        VALID.upper(),  # upper-case hex is not HEXDIGLC
        b"00-" + b"0" * 32 + b"-" + PARENT + b"-01",  # all-zero trace id
        b"00-" + TRACE + b"-" + b"0" * 16 + b"-01",  # all-zero parent id
        b"00-" + TRACE + b"_" + PARENT + b"-01",
        b"00-" + TRACE[:-1] + b"g-" + PARENT + b"-01",
        b"00-" + TRACE + b"-" + PARENT + b"-0x",
    ],
)
def test_invalid_traceparent(value: bytes) -> None:
    assert parse_traceparent(value) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_parser_never_raises(value: bytes) -> None:
    got = parse_traceparent(value)
    if got is not None:
        trace_id, parent_id, flags = got
        assert len(trace_id) == 32 and len(parent_id) == 16 and flags in (b"00", b"01")


def test_a_trace_starts_when_none_came_with_the_request_id_as_its_id() -> None:
    out, rid, tp, parent = forward([(b"host", b"a")])
    assert values(out, b"traceparent") == [tp]
    assert SHAPE.match(tp), tp
    assert tp[3:35] == rid.replace(b"-", b"")  # one id in the logs and in the traces
    assert tp.endswith(b"-00")  # nothing is recorded: not sampled
    assert parent == b""
    # Each request is a new trace and a new span.
    _, _, tp2, _ = forward([(b"host", b"a")])
    assert tp2[3:35] != tp[3:35] and tp2[36:52] != tp[36:52]


def test_a_request_id_made_with_its_trace_is_a_version_4_uuid() -> None:
    for _ in range(500):
        _, rid, tp, _ = forward([(b"host", b"a")])
        u = uuid.UUID(rid.decode("ascii"))
        assert str(u).encode() == rid
        assert (u.version, u.variant) == (4, uuid.RFC_4122)
        assert tp[3:35] == u.hex.encode()


def test_a_started_trace_is_sampled_when_spans_are_recorded() -> None:
    _, _, tp, _ = forward([(b"host", b"a")], flags=b"01")
    assert tp.endswith(b"-01")


def test_a_preserved_request_id_does_not_become_the_trace_id() -> None:
    _, rid, tp, _ = forward([(b"x-request-id", b"abc")], preserve=True)
    assert rid == b"abc"
    assert SHAPE.match(tp) and tp[3:35] != b"0" * 32


def test_a_valid_trace_continues_with_a_new_parent_id() -> None:
    received = [(b"host", b"a"), (b"traceparent", VALID), (b"tracestate", b"vendor=x,other=y")]
    out, _, tp, parent = forward(received)
    assert values(out, b"traceparent") == [tp]
    assert tp[3:35] == TRACE  # same trace
    assert tp[36:52] != PARENT  # gatewayd's span is the backend's parent
    assert tp.endswith(b"-01")  # the caller's sampling decision is kept
    assert parent == PARENT
    assert values(out, b"tracestate") == [b"vendor=x,other=y"]


def test_tracestate_lines_are_combined() -> None:
    received = [(b"traceparent", VALID), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")]
    out, _, _, _ = forward(received)
    assert values(out, b"tracestate") == [b"a=1,b=2"]


@pytest.mark.parametrize(
    "received",
    [
        [(b"traceparent", VALID.upper()), (b"tracestate", b"a=1")],
        [(b"traceparent", b"garbage"), (b"tracestate", b"a=1")],
        [(b"traceparent", VALID), (b"traceparent", VALID), (b"tracestate", b"a=1")],
        [(b"tracestate", b"a=1")],
    ],
)
def test_an_invalid_traceparent_is_replaced_and_its_tracestate_dropped(received: Headers) -> None:
    out, rid, tp, parent = forward(received)
    assert values(out, b"traceparent") == [tp]
    assert tp[3:35] == rid.replace(b"-", b"") != TRACE
    assert values(out, b"tracestate") == []
    assert parent == b""


def test_without_trace_flags_both_headers_pass_unchanged() -> None:
    received = [(b"traceparent", b"garbage"), (b"tracestate", b"a=1")]
    out, _, tp, parent = forward_request_headers(
        received, peer_ip="192.0.2.5", scheme=b"http", trusted_hops=0
    )
    assert tp is None and parent == b""
    assert values(out, b"traceparent") == [b"garbage"]
    assert values(out, b"tracestate") == [b"a=1"]


def test_new_traces_are_sampled_at_the_ratio() -> None:
    flags = [forward([], flags=b"01", sample=0.25)[2][-2:] for _ in range(4000)]
    share = flags.count(b"01") / len(flags)
    assert 0.18 < share < 0.32, share  # binomial, n=4000: ~10 standard deviations wide
    assert all(forward([], flags=b"01", sample=0.0)[2].endswith(b"-00") for _ in range(50))


def test_a_callers_sampled_flag_is_followed_whatever_the_ratio() -> None:
    for _ in range(50):
        assert forward([(b"traceparent", VALID)], flags=b"01", sample=0.0)[2].endswith(b"-01")
