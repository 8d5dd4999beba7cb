"""The frame scanner and reset budget on their own: byte-split invariance, only the
documented error on garbage, windows that forgive."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.http.h2_limits import (
    GOAWAY,
    PREFACE,
    FrameScanner,
    H2Limits,
    ResetBudget,
    Violation,
)

_LAX = H2Limits(
    max_settings_per_window=10**9,
    max_pings_per_window=10**9,
    max_consecutive_empty_frames=10**9,
    max_priority_frames_per_stream=10**9,
    max_window_updates_per_data_frame=10**9,
)


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


_frames = st.lists(
    st.tuples(
        st.sampled_from([0x0, 0x2, 0x3, 0x4, 0x6, GOAWAY, 0x8, 0xA]),
        st.integers(0, 255),
        st.integers(0, 2**31 - 1),
        st.binary(min_size=8, max_size=40),
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(frames=_frames, cuts=st.lists(st.integers(0, 600), max_size=8))
def test_splitting_the_bytes_anywhere_changes_nothing(
    frames: list[tuple[int, int, int, bytes]], cuts: list[int]
) -> None:
    # PADDED DATA frames are left out: their first payload byte is read as a length.
    stream = PREFACE + b"".join(_frame(t, f & ~0x8 if t == 0 else f, s, p) for t, f, s, p in frames)
    whole = FrameScanner(_LAX, inbound=True, preface=True, strip_goaway=True)
    pieces = FrameScanner(_LAX, inbound=True, preface=True, strip_goaway=True)
    sent = FrameScanner(_LAX, inbound=False)
    sent.data_frames = 10**6  # as if we had sent plenty: WINDOW_UPDATEs are in budget
    whole.sent = pieces.sent = sent
    expected = whole.scan(stream, 0.0)
    out = b""
    last = 0
    for cut in sorted({c for c in cuts if c < len(stream)}):
        out += pieces.scan(stream[last:cut], 0.0)
        last = cut
    out += pieces.scan(stream[last:], 0.0)
    assert out == expected
    assert pieces.goaways == whole.goaways
    kept = [(t, s, p) for t, _, s, p in frames if t != GOAWAY]
    assert expected == PREFACE + b"".join(
        _frame(t, f & ~0x8 if t == 0 else f, s, p) for t, f, s, p in frames if t != GOAWAY
    )
    assert len(whole.goaways) == len(frames) - len(kept)


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.binary(max_size=64), max_size=10))
def test_garbage_raises_only_violation(data: list[bytes]) -> None:
    scanner = FrameScanner(H2Limits(), inbound=True, strip_goaway=True)
    try:
        for chunk in data:
            scanner.scan(chunk, 0.0)
    except Violation as v:
        assert v.error_code in (0x6, 0xB)


def test_state_stays_constant_whatever_the_payload_size() -> None:
    scanner = FrameScanner(H2Limits(), inbound=True)
    scanner.scan(_frame(0x0, 0, 1, b"")[:9].replace(b"\x00\x00\x00", b"\x00\x40\x00", 1), 0.0)
    for _ in range(64):
        assert scanner.scan(b"x" * 256, 0.0) == b"x" * 256
    assert scanner._head == b""
    assert scanner._skip == 16384 - 64 * 256


def test_resets_spread_over_windows_never_trip() -> None:
    budget = ResetBudget(H2Limits())
    now = 0.0
    for _ in range(20):  # 20 windows of 199 early resets among 600 streams each
        for i in range(600):
            budget.stream_closed(i % 3 == 0 and i < 597, now)
        now += 10.0
    assert budget.premature == 20 * 199


def test_the_201st_early_reset_in_a_window_trips() -> None:
    budget = ResetBudget(H2Limits())
    for _ in range(200):
        budget.stream_closed(True, 5.0)
    try:
        budget.stream_closed(True, 5.0)
    except Violation as v:
        assert v.error_code == 0xB
    else:
        raise AssertionError("no violation")
