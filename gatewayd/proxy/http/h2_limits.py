"""HTTP/2 edge limits and flood defences, sans-I/O (no sockets, no clock of its own).

The `h2` package parses frames and keeps stream state; it does not defend an edge
proxy against a hostile peer on its own. What it leaves open, measured against h2 4.x:

- A frame header announcing a 16 MiB payload is only checked against
  SETTINGS_MAX_FRAME_SIZE once the whole payload has been buffered: a peer can make
  every connection hold 16 MiB. `FrameScanner` reads the 9-byte frame headers itself
  and refuses an oversized frame as soon as its header arrives (RFC 9113 4.2: "An
  endpoint MUST send an error code of FRAME_SIZE_ERROR if a frame exceeds the size
  defined in SETTINGS_MAX_FRAME_SIZE").
- HEADERS + CONTINUATION are joined before HPACK decoding, bounded only by 64 frames
  of up to SETTINGS_MAX_FRAME_SIZE each (1 MiB at the default frame size). The scanner
  bounds the encoded header block (`max_header_block_bytes`) frame by frame, before any
  decoding (CONTINUATION flood, CVE-2024-27316 and relatives).
- HPACK's decoder bounds the decoded header list size (name + value + 32 per entry,
  RFC 9113 6.5.2) but not the number of headers: the connection checks the count.
- Nothing limits SETTINGS or PING frames, each of which makes h2 queue an ACK; nor
  PRIORITY, WINDOW_UPDATE or empty DATA frames, which cost work and produce nothing.

The budgets follow Envoy's edge best practice and its HTTP/2 protocol options
(``max_outbound_frames`` 10000, ``max_outbound_control_frames`` 1000,
``max_consecutive_inbound_frames_with_empty_payload`` 1,
``max_inbound_priority_frames_per_stream`` 100,
``max_inbound_window_update_frames_per_data_frame_sent`` 10, and the premature-reset
rule of CVE-2023-44487: after 500 streams, close when at least half were reset early).

Every check raises `Violation(error_code, reason)`; the connection turns it into
GOAWAY (the error code) and a close. Time is passed in (`now`, seconds), so tests use
a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# RFC 9113 7 error codes used here.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# RFC 9113 6 frame types and flags.
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8

# RFC 9113 3.4: the client connection preface.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types that carry no request or response content: an ACK is queued for some,
# state is touched for others.  Counted against the outbound control-frame budget.
_CONTROL_TYPES = frozenset({RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, PRIORITY})


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Limits:
    """Per-connection limits; the defaults are Envoy's edge best practice.

    Envoy's edge document: ``max_concurrent_streams`` 100,
    ``initial_stream_window_size`` 64 KiB, ``initial_connection_window_size`` 1 MiB,
    request headers 60 KiB / 100 headers (gatewayd's HTTP/1.1 limits too).
    """

    # Downstream: SETTINGS_MAX_CONCURRENT_STREAMS we announce.  Upstream: the most
    # streams we open on one backend connection, and never more than the backend's own
    # SETTINGS_MAX_CONCURRENT_STREAMS (UPSTREAM_H2_LIMITS: the backend's value alone).
    max_concurrent_streams: int = 100
    initial_stream_window: int = 64 * 1024
    connection_window: int = 1024 * 1024
    max_header_list_bytes: int = 60 * 1024  # decoded: name + value + 32 per header
    max_headers: int = 100
    header_table_size: int = 4096  # HPACK dynamic table we let the peer use
    max_frame_size: int = 16384  # RFC 9113 default and minimum; we never raise it
    # Encoded header block (HEADERS + CONTINUATION payloads, padding included), checked
    # frame by frame before HPACK decoding: the decoded limit plus 4 KiB of slack for
    # padding and table-size updates (HPACK output is never larger than its input by
    # more than that for a list within the decoded limit).
    max_header_block_bytes: int = 64 * 1024
    # Floods: SETTINGS and PING frames (not ACKs) the peer may send per window.
    max_settings_per_window: int = 100
    max_pings_per_window: int = 100
    flood_window: float = 10.0
    # Envoy: max_consecutive_inbound_frames_with_empty_payload.
    max_consecutive_empty_frames: int = 1
    # Envoy: max_inbound_priority_frames_per_stream.
    max_priority_frames_per_stream: int = 100
    # Envoy: max_inbound_window_update_frames_per_data_frame_sent.
    max_window_updates_per_data_frame: int = 10
    # Rapid reset (CVE-2023-44487) and MadeYouReset (CVE-2025-8671): streams reset
    # before their response ended, by the client (RST_STREAM) or by us because of a
    # client protocol error.  Close when, within `flood_window`, more than
    # `max_premature_resets` happened and they are at least half of the streams
    # closed in that window; and, as Envoy does over the connection's life, when after
    # `premature_reset_min_streams` streams at least half were reset early.
    max_premature_resets: int = 200
    premature_reset_min_streams: int = 500
    # Envoy's premature_reset_min_stream_lifetime_seconds: a stream reset after living
    # this long is not premature.
    premature_reset_min_lifetime: float = 1.0
    # Outbound queue while the transport is over its high-water mark (the peer does
    # not read): Envoy's max_outbound_control_frames and max_outbound_frames.
    max_outbound_control_frames: int = 1000
    max_outbound_frames: int = 10000
    # A stream whose response waits on a zero flow-control window this long is reset
    # (Envoy's stream_idle_timeout, 5 min); a connection with no stream this long is
    # closed with GOAWAY (gatewayd's keep-alive idle timeout, 60 s).
    stream_idle_timeout: float = 300.0
    idle_timeout: float = 60.0
    # Per stream, response bytes the codec holds while the peer's window is shut
    # before it asks the exchange to stop reading its upstream (and resumes under half).
    stream_write_high_water: int = 64 * 1024


EDGE_H2_LIMITS = H2Limits()

# The encoded header block bound over the decoded one: padding (up to 255 bytes a
# frame) and table-size updates; a literal is never longer encoded than decoded (plus a
# few bytes of lengths, less than the 32 bytes RFC 9113 6.5.2 counts per field).
HEADER_BLOCK_SLACK = 4 * 1024
# Largest HPACK dynamic table we let a peer use (--h2-hpack-table-size): the table is
# held per connection, so its size is memory per connection.
MAX_HPACK_TABLE_SIZE = 64 * 1024

# Upstream HTTP/2 connections (h2_client): the same limits, except that the number of
# streams on a connection is the backend's SETTINGS_MAX_CONCURRENT_STREAMS alone (as
# Envoy's cluster default, 2^31-1) unless --upstream-h2-max-concurrent-streams caps it.
UPSTREAM_H2_LIMITS = H2Limits(max_concurrent_streams=2**31 - 1)


def with_header_limits(
    limits: H2Limits, *, list_bytes: int, count: int, table_size: int
) -> H2Limits:
    """``limits`` with another header list bound (decoded bytes, RFC 9113 6.5.2: name +
    value + 32 per field), field count and HPACK table size; the encoded block bound
    follows the decoded one (`HEADER_BLOCK_SLACK`)."""
    return replace(
        limits,
        max_header_list_bytes=list_bytes,
        max_headers=count,
        header_table_size=table_size,
        max_header_block_bytes=list_bytes + HEADER_BLOCK_SLACK,
    )


class Violation(Exception):
    """The peer broke a limit: GOAWAY with `error_code`, then close."""

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(reason)
        self.error_code = error_code
        self.reason = reason


class FrameScanner:
    """Reads frame headers from one direction of a connection, before h2 does.

    Inbound (`inbound=True`): enforces the frame size, the encoded header-block bound,
    the SETTINGS/PING/PRIORITY/WINDOW_UPDATE/empty-frame budgets.  Outbound: counts the
    frames we send (DATA frames for the WINDOW_UPDATE ratio, control frames for the
    queue bound).  Payload bytes are skipped, never copied; state is a few integers, so
    memory is constant whatever the peer sends.
    """

    __slots__ = (
        "_block_bytes",
        "_empty_run",
        "_flood_start",
        "_frames_paused",
        "_goaway",
        "_head",
        "_inbound",
        "_limits",
        "_pad_probe",
        "_pings",
        "_preface_left",
        "_priority_frames",
        "_settings",
        "_skip",
        "_window_updates",
        "control_frames_paused",
        "data_frames",
        "frames_paused",
        "goaways",
        "paused",
        "rst_streams",
        "sent",
        "streams_opened",
        "strip_goaway",
    )

    def __init__(
        self,
        limits: H2Limits,
        *,
        inbound: bool,
        preface: bool = False,
        strip_goaway: bool = False,
    ) -> None:
        self._limits = limits
        self.strip_goaway = strip_goaway
        self._goaway: bytearray | None = None  # payload of a GOAWAY being stripped
        self.goaways: list[tuple[int, int]] = []  # stripped GOAWAYs: (last id, code)
        self._inbound = inbound
        self._preface_left = len(PREFACE) if preface else 0
        self._head = b""  # partial 9-byte frame header
        self._skip = 0  # payload bytes of the current frame still to pass
        self._pad_probe = False  # next payload byte is a DATA frame's pad length
        self._block_bytes = -1  # encoded header block so far; -1: not inside one
        self._empty_run = 0
        self._flood_start = 0.0
        self._settings = 0
        self._pings = 0
        self._priority_frames = 0
        self._window_updates = 0
        self._frames_paused = 0
        self.streams_opened = 0
        self.data_frames = 0  # DATA frames seen (outbound: the WINDOW_UPDATE ratio)
        self.rst_streams = 0  # RST_STREAM frames seen
        self.paused = False  # outbound: the transport is over its high-water mark
        self.control_frames_paused = 0
        self.frames_paused = 0
        # Inbound: the outbound scanner of the same connection (DATA frames we sent).
        self.sent: FrameScanner | None = None

    def scan(self, data: bytes, now: float) -> bytes:
        """Account for `data`; raise Violation when a budget is exceeded.

        Returns the bytes to hand to h2: `data` itself, or with `strip_goaway` the same
        bytes less any GOAWAY frame, which lands in `goaways` as (last stream id, error
        code).  h2 treats a GOAWAY, sent or received, as the end of the connection and
        refuses every later frame, so a graceful GOAWAY (streams up to the last id
        finish) has to be handled outside it (RFC 9113 6.8).
        """
        view = memoryview(data)
        pos = 0
        end = len(view)
        strip = self.strip_goaway
        out: list[bytes | memoryview] | None = [] if strip else None
        if self._preface_left:
            n = min(self._preface_left, end)
            if out is not None:
                out.append(view[:n])
            pos = n
            self._preface_left -= n
        while pos < end:
            if self._skip:
                if self._pad_probe:
                    self._pad_probe = False
                    # Padded DATA: payload = 1 pad-length byte + data + padding.
                    data_len = self._skip - 1 - view[pos]
                    self._empty_data(data_len <= 0, now)
                n = min(self._skip, end - pos)
                if self._goaway is not None:
                    self._goaway += view[pos : pos + n]
                elif out is not None:
                    out.append(view[pos : pos + n])
                self._skip -= n
                pos += n
                if self._goaway is not None and not self._skip:
                    self._goaway_done()
                continue
            need = 9 - len(self._head)
            chunk = bytes(view[pos : pos + need])
            pos += len(chunk)
            if len(chunk) < need:
                self._head += chunk
                break
            head = self._head + chunk if self._head else chunk
            self._head = b""
            self._frame(head, now)
            if strip and head[3] == GOAWAY:
                if self._skip < 8:
                    raise Violation(FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
                self._goaway = bytearray()
            elif out is not None:
                out.append(head)
        if out is None:
            return data
        return b"".join(out)

    def _goaway_done(self) -> None:
        payload = self._goaway or b""
        self._goaway = None
        last = int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF
        code = int.from_bytes(payload[4:8], "big")
        self.goaways.append((last, code))

    def _frame(self, head: bytes, now: float) -> None:
        length = int.from_bytes(head[0:3], "big")
        ftype = head[3]
        flags = head[4]
        stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        self._skip = length
        if self.paused:
            self.frames_paused += 1
            if ftype in _CONTROL_TYPES:
                self.control_frames_paused += 1
        if not self._inbound:
            if ftype == DATA:
                self.data_frames += 1
            elif ftype == RST_STREAM:
                self.rst_streams += 1
            return
        limits = self._limits
        if length > limits.max_frame_size:
            raise Violation(
                FRAME_SIZE_ERROR,
                f"frame of {length} bytes over SETTINGS_MAX_FRAME_SIZE {limits.max_frame_size}",
            )
        if now - self._flood_start >= limits.flood_window:
            self._flood_start = now
            self._settings = 0
            self._pings = 0
        if ftype == DATA:
            self.data_frames += 1
            if flags & FLAG_PADDED and length:
                self._pad_probe = True
            else:
                self._empty_data(length == 0 and not flags & FLAG_END_STREAM, now)
            return
        self._empty_run = 0
        if ftype in (HEADERS, PUSH_PROMISE):
            if ftype == HEADERS and stream_id % 2 == 1:
                self.streams_opened += 1
            self._block_bytes = length
            self._check_block()
            if flags & FLAG_END_HEADERS:
                self._block_bytes = -1
        elif ftype == CONTINUATION:
            if self._block_bytes >= 0:
                self._block_bytes += length
                self._check_block()
            if flags & FLAG_END_HEADERS:
                self._block_bytes = -1
        elif ftype == SETTINGS:
            if not flags & FLAG_ACK:
                self._settings += 1
                if self._settings > limits.max_settings_per_window:
                    raise Violation(ENHANCE_YOUR_CALM, "SETTINGS flood")
        elif ftype == PING:
            if not flags & FLAG_ACK:
                self._pings += 1
                if self._pings > limits.max_pings_per_window:
                    raise Violation(ENHANCE_YOUR_CALM, "PING flood")
        elif ftype == PRIORITY:
            # Envoy: more than 5 + 2 * limit * (1 + streams opened) PRIORITY frames.
            self._priority_frames += 1
            budget = 5 + 2 * limits.max_priority_frames_per_stream * (1 + self.streams_opened)
            if self._priority_frames > budget:
                raise Violation(ENHANCE_YOUR_CALM, "PRIORITY flood")
        elif ftype == WINDOW_UPDATE:
            self.window_update_received(self.sent.data_frames if self.sent else 0)
        elif ftype == RST_STREAM:
            self.rst_streams += 1

    def window_update_received(self, data_frames_sent: int) -> None:
        """Envoy's ratio: WINDOW_UPDATE frames against DATA frames we sent.

        Called for each inbound WINDOW_UPDATE frame; the connection knows how many DATA
        frames it sent (its outbound scanner).
        """
        self._window_updates += 1
        budget = 5 + 2 * (
            self.streams_opened + self._limits.max_window_updates_per_data_frame * data_frames_sent
        )
        if self._window_updates > budget:
            raise Violation(ENHANCE_YOUR_CALM, "WINDOW_UPDATE flood")

    def _empty_data(self, empty: bool, now: float) -> None:
        if not empty:
            self._empty_run = 0
            return
        self._empty_run += 1
        if self._empty_run > self._limits.max_consecutive_empty_frames:
            raise Violation(ENHANCE_YOUR_CALM, "consecutive DATA frames with no payload")

    def _check_block(self) -> None:
        if self._block_bytes > self._limits.max_header_block_bytes:
            raise Violation(
                ENHANCE_YOUR_CALM,
                f"header block over {self._limits.max_header_block_bytes} bytes "
                "(HEADERS + CONTINUATION)",
            )

    def writes_paused(self, paused: bool) -> None:
        """Outbound: the transport crossed its high-water mark (True) or drained."""
        self.paused = paused
        if not paused:
            self.control_frames_paused = 0
            self.frames_paused = 0

    def scan_inbound(self, data: bytes, now: float) -> bytes:
        """`scan` of what the peer sent, the same checks frame by frame (`_frame`), with
        whole frames read in place: the bytes come back as they are unless a GOAWAY is
        stripped.  A frame begun in an earlier read, the preface, a partial frame at
        the end or a GOAWAY take `scan` from there (the server's requests went through
        its per-frame copies and joins)."""
        if self._skip or self._head or self._preface_left or self._goaway is not None:
            return self.scan(data, now)
        pos = 0
        end = len(data)
        limits = self._limits
        # A whole header block in one HEADERS frame (a request, mostly) within the
        # frame and block bounds: `_frame`'s work for it inline, without the slice
        # and the call (0.4 us a request).
        block_max = min(limits.max_frame_size, limits.max_header_block_bytes)
        while pos + 9 <= end:
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            nxt = pos + 9 + length
            ftype = data[pos + 3]
            if nxt > end or ftype == GOAWAY:
                break
            if (
                ftype == HEADERS
                and data[pos + 4] & FLAG_END_HEADERS
                and length <= block_max
                and not self.paused
            ):
                if now - self._flood_start >= limits.flood_window:
                    self._flood_start = now
                    self._settings = 0
                    self._pings = 0
                self._empty_run = 0
                if data[pos + 8] & 1:  # the stream id's low bit: a client's stream
                    self.streams_opened += 1
                self._block_bytes = -1
            else:
                self._frame(data[pos : pos + 9], now)
                if self._pad_probe:  # padded DATA: 1 pad-length byte + data + padding
                    self._pad_probe = False
                    self._empty_data(length - 1 - data[pos + 9] <= 0, now)
                self._skip = 0
            pos = nxt
        if pos == end:
            return data
        rest = self.scan(data[pos:], now)
        return data[:pos] + rest if pos else rest

    def scan_outbound(self, data: bytes) -> None:
        """`scan` for the frames we send while the peer reads (not ``paused``): only
        DATA and RST_STREAM are counted then, so whole frames are stepped over by their
        length, with no copies nor per-frame calls (the server's responses went
        through `scan` frame by frame).  A partial frame, a frame already begun, a
        paused transport or GOAWAY stripping take `scan`."""
        if (
            self.paused
            or self._skip
            or self._head
            or self._preface_left
            or self.strip_goaway
            or self._inbound
        ):
            self.scan(data, 0.0)
            return
        pos = 0
        end = len(data)
        while pos + 9 <= end:
            nxt = pos + 9 + ((data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2])
            if nxt > end:
                break
            ftype = data[pos + 3]
            if ftype == DATA:
                self.data_frames += 1
            elif ftype == RST_STREAM:
                self.rst_streams += 1
            pos = nxt
        if pos < end:
            self.scan(data[pos:], 0.0)

    def check_outbound(self) -> None:
        """Outbound: frames queued while the peer does not read stay within budget."""
        limits = self._limits
        if self.control_frames_paused > limits.max_outbound_control_frames:
            raise Violation(ENHANCE_YOUR_CALM, "outbound control frames not read by the peer")
        if self.frames_paused > limits.max_outbound_frames:
            raise Violation(ENHANCE_YOUR_CALM, "outbound frames not read by the peer")


class ResetBudget:
    """Premature stream resets: rapid reset (CVE-2023-44487), MadeYouReset (CVE-2025-8671).

    A premature reset is a stream younger than `premature_reset_min_lifetime` that
    ended by RST_STREAM before its response ended:
    sent by the client, or sent by us because the client's frames broke the stream
    (the MadeYouReset trick makes the server do the resetting).  Both count the same.
    """

    __slots__ = ("_limits", "_start", "closed", "premature", "win_closed", "win_premature")

    def __init__(self, limits: H2Limits) -> None:
        self._limits = limits
        self._start = 0.0
        self.closed = 0
        self.premature = 0
        self.win_closed = 0
        self.win_premature = 0

    def stream_closed(self, premature: bool, now: float) -> None:
        limits = self._limits
        if now - self._start >= limits.flood_window:
            self._start = now
            self.win_closed = 0
            self.win_premature = 0
        self.closed += 1
        self.win_closed += 1
        if premature:
            self.premature += 1
            self.win_premature += 1
            if self.win_premature > limits.max_premature_resets and (
                self.win_premature * 2 >= self.win_closed
            ):
                raise Violation(ENHANCE_YOUR_CALM, "too many streams reset early (rapid reset)")
        if self.closed >= limits.premature_reset_min_streams and self.premature * 2 >= self.closed:
            raise Violation(ENHANCE_YOUR_CALM, "half the streams reset early (rapid reset)")


def is_h2_preface(data: bytes | bytearray) -> bool | None:
    """Prior-knowledge cleartext HTTP/2 (RFC 9113 3.3) at the start of a connection.

    True: the 24-byte preface is there; False: these bytes are not HTTP/2 (HTTP/1.1);
    None: too few bytes to tell yet (all received bytes match the preface's start).
    An HTTP/1.1 request line never starts with "PRI * HTTP/2.0".
    """
    n = min(len(data), len(PREFACE))
    if data[:n] != PREFACE[:n]:
        return False
    return True if n == len(PREFACE) else None
