"""Our own reading of the hot inbound HTTP/2 frames on the server side (issue 12).

Profiles of a small HTTP/2 exchange (h2load against ``gatewayd run``) put most of what
was left of the codec's CPU in h2's inbound path: a hyperframe object per frame (flag
sets, ``parse_body``), the frame buffer's copies, and h2's header validation run again
on every request although a client repeats the same header block.  Two things here:

- `split_frames`: the 9-byte frame headers read in place (RFC 9113 4.1), whole frames
  only, no objects.  `BoundedH2Connection.receive_data` (h2_conn.py) handles a complete
  HEADERS frame that opens a new client stream (END_HEADERS set, no padding, no
  priority) itself, with the same state transitions, the same HPACK decoder and the
  same validation as h2, and hands every other frame to h2 unchanged and in order.
- `ValidatedFields`: h2's inbound validation (``validate_headers`` after
  ``normalize_inbound_headers``, RFC 9113 8.2 and 8.3: pseudo-header order and set,
  connection-specific fields, ``te``, characters, ``:authority`` against ``host``) is a
  pure function of the decoded list and the validation flags.  A list that passed is
  remembered, so the next identical one skips the passes; a list that fails is never
  remembered (it raises every time).

Bounds: the cache holds at most `CACHE_ENTRIES` lists of at most `CACHE_MAX_BYTES`
bytes (names and values) each, per connection, whatever the peer sends.  Frame sizes,
header-block sizes and floods stay ``h2_limits.FrameScanner``'s job: it sees every byte
before this code does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CACHE_ENTRIES = 8
CACHE_MAX_BYTES = 2048
CACHE_MAX_FIELDS = 64

# RFC 9113 6.2: HEADERS flags.
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20
DATA = 0x0
HEADERS = 0x1


def split_frames(
    data: bytes | bytearray, pos: int = 0
) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """The complete frames in ``data`` from ``pos``: (start, type, flags, stream id,
    payload length) each, and the offset just past the last complete frame (the rest
    is a partial frame).  The reserved bit of the stream id is ignored (RFC 9113 4.1:
    "MUST be ignored when receiving")."""
    frames: list[tuple[int, int, int, int, int]] = []
    end = len(data)
    while pos + 9 <= end:
        length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
        if pos + 9 + length > end:
            break
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append((pos, data[pos + 3], data[pos + 4], sid, length))
        pos += 9 + length
    return frames, pos


def fast_headers(ftype: int, flags: int, stream_id: int, highest_inbound: int) -> bool:
    """A HEADERS frame our fast path takes: a whole header block (END_HEADERS), no
    padding nor priority fields, opening a new client stream (odd id above every id
    seen, RFC 9113 5.1.1).  Anything else goes to h2."""
    return (
        ftype == HEADERS
        and flags & (FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY) == FLAG_END_HEADERS
        and stream_id & 1 == 1
        and stream_id > highest_inbound
    )


class ValidatedFields:
    """Header lists h2 validated already, per connection (see the module text)."""

    __slots__ = ("_cache", "hits")

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, tuple[Any, ...]], tuple[Any, ...]] = {}
        self.hits = 0

    def get(self, flags: Any, headers: Iterable[Any]) -> tuple[tuple[Any, ...], list[Any] | None]:
        """(the key, the validated list or None)."""
        key = (flags, tuple(headers))
        hit = self._cache.get(key)
        if hit is None:
            return key, None
        self.hits += 1
        return key, list(hit)

    def put(self, key: tuple[Any, tuple[Any, ...]], validated: list[Any]) -> None:
        fields = key[1]
        if len(fields) > CACHE_MAX_FIELDS:
            return
        size = 0
        for name, value in fields:
            size += len(name) + len(value)
        if size > CACHE_MAX_BYTES:
            return
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()
        self._cache[key] = tuple(validated)
