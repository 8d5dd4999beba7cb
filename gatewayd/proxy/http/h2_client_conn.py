"""The upstream side's `h2` connection: the hot frames of a response read by our code.

Profiles of the gRPC row of ``make bench`` (h2load unary calls, h2c down, GRPCRoute to
an h2c backend; py-spy on ``gatewayd run --workers 1``) put 15% of the worker's CPU in
h2's inbound path of the upstream connection: for every frame a hyperframe object
(flag sets, padding and priority mixins, ``parse_body``), the frame buffer's copies and
a ``repr(frame)`` h2 formats for a trace log whatever the logger (h2 4.x
``_receive_frame``).  A unary call's response is three frames: HEADERS (``:status``),
DATA, HEADERS (trailers, END_STREAM).

`ClientH2Connection.receive_data` reads the frame headers in place
(``h2_inbound.split_frames``) and handles itself a complete HEADERS frame (END_HEADERS,
no padding nor priority) or an unpadded DATA frame on a stream of ours that may still
receive (open or half-closed local), with h2's own pieces: the connection and stream
state machines, the connection's and the stream's flow-control windows, the HPACK
decoder (``h2_hpack.CachingDecoder``), h2's header validation (remembered,
``h2_inbound.ValidatedFields``) and content-length tracking.  Every other frame (and
any frame while h2 holds a partial one or an unfinished header block) goes to h2,
unchanged and in order; a protocol error ends the connection as h2 would (GOAWAY, then
the error is raised).  `tests/proxy/http/test_h2_client_conn.py` checks that both paths
give the same events and the same bytes to send, for valid and hostile input.

Outbound, the end of a request (an empty DATA frame with END_STREAM) is written by hand
as ``send_data`` is (``h2_conn``), and closed streams are forgotten as they end
(`forget`) rather than by h2's sweep of every stream at each new request.

Bounds: the bytes given here went through ``h2_limits.FrameScanner`` first (frame size,
header block size, floods); a frame over SETTINGS_MAX_FRAME_SIZE is left to h2, which
refuses it.  Nothing is buffered here: a partial frame goes to h2's own buffer.
"""

from __future__ import annotations

from typing import Any

import h2.exceptions
from h2.connection import ConnectionInputs, _decode_headers
from h2.stream import StreamInputs, StreamState

from gatewayd.proxy.http.h2_conn import BoundedH2Connection
from gatewayd.proxy.http.h2_inbound import split_frames
from gatewayd.proxy.http.h2_limits import FrameScanner

# RFC 9113 6.1, 6.2: frame types and flags.
_DATA = 0x0
_HEADERS = 0x1
_RST_STREAM = 0x3
_END_STREAM = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY = 0x20

# Stream states in which a response frame may arrive (RFC 9113 5.1).
_RECEIVING = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})


def fast_frame(ftype: int, flags: int) -> bool:
    """A frame our path reads: an unpadded DATA frame, or a HEADERS frame carrying a
    whole header block (END_HEADERS) with no padding nor priority fields."""
    if ftype == _DATA:
        return not flags & _PADDED
    if ftype == _HEADERS:
        return flags & (_END_HEADERS | _PADDED | _PRIORITY) == _END_HEADERS
    return False


class ClientH2Connection(BoundedH2Connection):
    """``BoundedH2Connection`` for the client side (see the module text)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        self.fast_frames = 0  # frames read by our path (tests, profiles)
        self.fast_response = True  # False: every frame through h2 (the tests' reference)

    def receive_data(self, data: Any) -> list[Any]:
        buf = self.incoming_buffer
        if (
            not self.fast_response
            or buf._preamble_len
            or buf._data
            or buf._headers_buffer
            or not data
        ):
            return super().receive_data(data)
        if not isinstance(data, bytes):
            data = bytes(data)
        frames, _done = split_frames(data)
        events: list[Any] = []
        streams = self.streams
        slow_from = 0
        max_frame = self.max_inbound_frame_size
        for start, ftype, flags, sid, length in frames:
            if length > max_frame or not fast_frame(ftype, flags):
                continue
            stream = streams.get(sid)
            if stream is None or stream.state_machine.state not in _RECEIVING:
                continue
            if start > slow_from:
                events += super().receive_data(data[slow_from:start])
                slow_from = start
                if buf._data or buf._headers_buffer:
                    break  # h2 is inside a header block: the rest is its own
                # The frames h2 just read may have closed or reset this stream.
                stream = streams.get(sid)
                if stream is None or stream.state_machine.state not in _RECEIVING:
                    continue
            payload = data[start + 9 : start + 9 + length]
            slow_from = start + 9 + length
            end_stream = bool(flags & _END_STREAM)
            try:
                if ftype == _DATA:
                    events += self.state_machine.process_input(ConnectionInputs.RECV_DATA)
                    self._inbound_flow_control_window_manager.window_consumed(length)
                    _f, stream_events = stream.receive_data(payload, end_stream, length)
                else:
                    headers = _decode_headers(self.decoder, payload)
                    events += self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
                    _f, stream_events = stream.receive_headers(
                        headers, end_stream, self.config.header_encoding
                    )
            except h2.exceptions.ProtocolError as e:
                self._terminate_connection(e.error_code)
                raise
            events += stream_events
            self.fast_frames += 1
        if slow_from < len(data):
            events += super().receive_data(data[slow_from:])
        return events

    def end_stream(self, stream_id: int) -> None:
        """h2's ``end_stream`` (same transitions), the empty DATA frame with END_STREAM
        written by hand (RFC 9113 6.1)."""
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self._get_stream_by_id(stream_id)
        stream.state_machine.process_input(StreamInputs.SEND_END_STREAM)
        self._data_to_send += b"\x00\x00\x00\x00\x01" + stream_id.to_bytes(4, "big")

    def forget(self, stream_id: int) -> None:
        """A stream of ours ended: if h2 sees it closed too, move it to h2's bounded
        memory of closed streams now (what h2's sweep does when it counts streams)."""
        stream = self.streams.get(stream_id)
        if stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by


class ResponseScanner(FrameScanner):
    """The inbound ``FrameScanner`` of an upstream connection (``strip_goaway``), with a
    quick pass for the reads a response is made of.

    The scanner walked each frame through ``_frame`` and, to strip GOAWAY frames,
    rebuilt every read from slices: 2.5 µs a frame, 4% of a gRPC call.  A read that
    starts and ends on frame boundaries and holds only DATA frames (unpadded, with a
    payload or END_STREAM) and HEADERS frames carrying a whole block (END_HEADERS),
    each within the frame-size and header-block bounds, changes the scanner's state in
    a known way (DATA counted, the empty-frame run reset, each HEADERS on an odd
    stream counted) and holds no GOAWAY to strip: that state is set here and the read
    returned as is.  Any other read, or while the transport is paused, takes
    ``FrameScanner.scan`` unchanged; so every budget and every violation is the
    scanner's own (`tests/proxy/http/test_h2_client_conn.py` compares both).
    """

    __slots__ = ()

    def scan(self, data: bytes, now: float) -> bytes:
        if (
            not data
            or self._head
            or self._skip
            or self._goaway is not None
            or self._preface_left
            or self.paused
            or self._block_bytes >= 0
        ):
            return super().scan(data, now)
        limits = self._limits
        max_data = limits.max_frame_size
        max_block = min(max_data, limits.max_header_block_bytes)
        end = len(data)
        pos = 0
        data_frames = 0
        headers_odd = 0
        while pos < end:
            if pos + 9 > end:
                return super().scan(data, now)
            length = (data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2]
            ftype = data[pos + 3]
            flags = data[pos + 4]
            if ftype == _DATA:
                if length > max_data or flags & _PADDED or not (length or flags & _END_STREAM):
                    return super().scan(data, now)
                data_frames += 1
            elif ftype == _HEADERS and flags & _END_HEADERS and length <= max_block:
                headers_odd += data[pos + 8] & 1
            else:
                return super().scan(data, now)
            pos += 9 + length
        if pos != end:
            return super().scan(data, now)
        # What `FrameScanner._frame` does for these frames: the flood window moves on,
        # DATA frames and HEADERS on odd streams are counted, the empty run ends.
        if now - self._flood_start >= limits.flood_window:
            self._flood_start = now
            self._settings = 0
            self._pings = 0
        self.data_frames += data_frames
        self.streams_opened += headers_odd
        self._empty_run = 0
        return data


class RequestScanner(FrameScanner):
    """The outbound ``FrameScanner`` of an upstream connection, with a quick pass.

    Outbound, the scanner only counts: DATA frames (the inbound WINDOW_UPDATE budget),
    RST_STREAM frames, and while the transport is paused the frames queued.  Our own
    writes are whole frames; while the transport is not paused and the scanner is at a
    frame boundary, the counts are taken here in one loop over the frame headers
    (`FrameScanner.scan` cost 2 µs a request write); otherwise ``FrameScanner.scan``.
    """

    __slots__ = ()

    def scan(self, data: bytes, now: float) -> bytes:
        if not data or self._head or self._skip or self._preface_left or self.paused:
            return super().scan(data, now)
        end = len(data)
        pos = 0
        data_frames = 0
        resets = 0
        while pos + 9 <= end:
            ftype = data[pos + 3]
            if ftype == _DATA:
                data_frames += 1
            elif ftype == _RST_STREAM:
                resets += 1
            pos += 9 + ((data[pos] << 16) | (data[pos + 1] << 8) | data[pos + 2])
        if pos != end:
            return super().scan(data, now)
        self.data_frames += data_frames
        self.rst_streams += resets
        return data
