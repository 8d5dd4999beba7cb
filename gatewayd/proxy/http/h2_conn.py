"""The `h2` connection both HTTP/2 codecs use, and its configuration.

`BoundedH2Connection` is h2's ``H2Connection`` with a bounded memory of closed streams,
the HPACK coders of ``h2_hpack``, and a quicker ``send_headers`` for the fields the
codecs build (``h2_fields.to_h2_fields``).  Inbound, on the server side
(``fast_inbound``), a HEADERS frame opening a new stream is read by our own code
(``h2_inbound``) with h2's decoder and validation and its transitions set directly;
every other frame, and flow control, is h2's own.  Outbound, on the server side, a
whole response to an ended request may be written in one go (``send_response``) with
h2's state set as its own send path would.  Validated header lists are remembered on
both sides (``h2_inbound.ValidatedFields``).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.exceptions
import h2.stream
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, _decode_headers
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes
from h2.stream import H2StreamStateMachine, StreamClosedBy, StreamInputs, StreamState
from h2.utilities import (
    HeaderValidationFlags,
    authority_from_headers,
    extract_method_header,
)
from h2.windows import WindowManager

from gatewayd.proxy.http.h2_hpack import CachingDecoder, StaticEncoder
from gatewayd.proxy.http.h2_inbound import (
    DATA,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FLAG_PADDED,
    FLAG_PRIORITY,
    HEADERS,
    ValidatedFields,
)

_HEADERS_FLAGS = FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY  # `fast_headers`' test

# h2's streams a connection holds before send_headers counts (and sweeps) them.
SWEEP_STREAMS = 256
# Request header blocks remembered per connection (`remember_request`): a client
# repeats a few (h2load one, a browser one per kind of request); blocks up to
# KNOWN_MAX_BLOCK bytes, so at most 4 KiB of keys and what the codec keeps of each.
KNOWN_ENTRIES = 8
KNOWN_MAX_BLOCK = 512
# h2's validation flags of a request's header block on the server side
# (``H2Stream._build_hdr_validation_flags`` after ``request_received``).
_REQUEST_FLAGS = HeaderValidationFlags(
    is_client=False, is_trailer=False, is_response_header=False, is_push_promise=False
)
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_OPEN = StreamState.OPEN
_CLOSED = StreamState.CLOSED
_BY_SEND_END_STREAM = StreamClosedBy.SEND_END_STREAM
_odict_set = OrderedDict.__setitem__
_HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE
_INITIAL_WINDOW_SIZE = SettingCodes.INITIAL_WINDOW_SIZE


def _informational(headers: list[Any]) -> bool:
    return bool(headers) and headers[0][0] == b":status" and headers[0][1][:1] == b"1"


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """HEADERS (+ CONTINUATION) frames carrying ``block`` (RFC 9113 6.2, 6.10):
    END_STREAM on the HEADERS frame, END_HEADERS on the last frame."""
    sid = stream_id.to_bytes(4, "big")
    if len(block) <= max_frame:
        flags = 0x4 | (0x1 if end_stream else 0)
        return len(block).to_bytes(3, "big") + bytes((0x1, flags)) + sid + block
    out = bytearray()
    ftype, flags = 0x1, 0x1 if end_stream else 0
    for i in range(0, len(block), max_frame):
        chunk = block[i : i + max_frame]
        last = i + max_frame >= len(block)
        out += len(chunk).to_bytes(3, "big") + bytes((ftype, flags | (0x4 if last else 0)))
        out += sid + chunk
        ftype, flags = 0x9, 0
    return bytes(out)


def h2_config(*, client_side: bool) -> h2.config.H2Configuration:
    """h2's configuration for both codecs.

    Inbound fields are validated by h2 (client or backend bytes: a trust boundary).
    Outbound fields are not re-validated nor re-normalized by h2: they come from
    ``h2_fields.to_h2_fields`` (lower-case names, connection-specific fields dropped,
    ``te`` only as "trailers", values trimmed, credentials never indexed) after an
    HTTP/1.1 parser or an h2 inbound validation or a validated configuration, and h2's
    second pass over each field cost about a tenth of an HTTP/2 exchange.
    """
    return h2.config.H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


class CachedStream(h2.stream.H2Stream):
    """h2's stream, whose inbound header validation remembers the lists that passed
    (``h2_inbound.ValidatedFields``): a client repeats its header block, and the
    validation passes were a tenth of a small exchange's CPU."""

    validated: ValidatedFields

    def _process_received_headers(
        self, headers: Any, header_validation_flags: Any, header_encoding: Any
    ) -> list[Any]:
        if header_encoding:
            return super()._process_received_headers(
                headers, header_validation_flags, header_encoding
            )
        headers = list(headers)
        key, hit = self.validated.get(header_validation_flags, headers)
        if hit is not None:
            return hit
        out = super()._process_received_headers(headers, header_validation_flags, None)
        self.validated.put(key, out)
        return out


@dataclass(kw_only=True)
class CacheableRequest(RequestReceived):
    """h2's RequestReceived for a request header block the connection may remember
    (`BoundedH2Connection.remember_request`): decoding it left the HPACK table as it
    was, so the same bytes mean the same request while the table stays so."""

    block: bytes = b""
    gen: int = -1  # the decoder table's generation it was decoded with


# What h2's H2Stream.__init__ sets, taken from one stream h2 built itself: a stream is
# made by copying these (`BoundedH2Connection._new_stream`).  h2's constructor (three
# objects, three __init__ calls) was 1.7 us of each request; the copies 0.4 us.
_PROTO = CachedStream(
    1, config=h2_config(client_side=False), inbound_window_size=1, outbound_window_size=1
)
_STREAM_ATTRS = dict(vars(_PROTO))
_MACHINE_ATTRS = dict(vars(_PROTO.state_machine))
_WINDOW_ATTRS = dict(vars(_PROTO._inbound_window_manager))
_new = object.__new__


class BoundedH2Connection(h2.connection.H2Connection):
    """h2 remembers how up to 65,536 closed streams ended (to tell a late frame from a
    protocol error): about 6 MiB on a long-lived connection.  4,096 is plenty for
    frames in flight; a frame for a stream forgotten earlier is a connection error."""

    MAX_CLOSED_STREAMS = 4096

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        # h2_hpack: a third of the CPU of small HTTP/2 exchanges went to hpack.
        self.encoder = StaticEncoder()  # type: ignore[assignment]
        plain = self.decoder
        self.decoder = CachingDecoder(max_header_list_size=plain.max_header_list_size)
        self.decoder.max_allowed_table_size = plain.max_allowed_table_size
        self.validated = ValidatedFields()
        # Server side: HEADERS frames opening a stream take `_fast_headers`.
        self.fast_inbound = False
        # Server side: whole responses may take `send_response` (tests turn it off to
        # compare with h2's own path).
        self.fast_outbound = True
        # Server side: request header blocks seen before, by their bytes -> (h2's
        # expected content length, what the codec made of the request); valid for one
        # generation of the decoder's table (`remember_request`).
        self._known: dict[bytes, tuple[int | None, Any]] = {}
        self._known_gen = -1
        self.known_hits = 0

    def open(self, connection_window: int) -> None:
        """Our preface (SETTINGS), then a WINDOW_UPDATE raising the connection window
        from RFC 9113's initial 65,535 to ``connection_window`` (either side)."""
        self.initiate_connection()
        extra = connection_window - 65535
        if extra > 0:
            self.increment_flow_control_window(extra)

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> CachedStream:
        """h2's, creating a `CachedStream`: same id rules, windows and bookkeeping."""
        outbound = self._stream_id_is_outbound(stream_id)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise h2.exceptions.StreamIDTooLowError(stream_id, highest)
        if (stream_id % 2) != int(allowed_ids):
            raise h2.exceptions.ProtocolError("Invalid stream ID for peer.")
        s = CachedStream(
            stream_id,
            config=self.config,
            inbound_window_size=self.local_settings.initial_window_size,
            outbound_window_size=self.remote_settings.initial_window_size,
        )
        s.validated = self.validated
        s.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = s
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return s

    def _open_client_stream(self, stream_id: int) -> CachedStream:
        """`_begin_new_stream` for a stream `fast_headers` let through (a client's odd
        id above every id seen, on the server side): the same stream, windows and
        bookkeeping, without the checks it passed nor the property look-ups."""
        s = self._new_stream(stream_id)
        self.streams[stream_id] = s
        self.highest_inbound_stream_id = stream_id
        return s

    def _new_stream(self, stream_id: int) -> CachedStream:
        """The stream h2's ``H2Stream(stream_id, config, inbound_window_size,
        outbound_window_size)`` builds (state IDLE), from copies of its attributes."""
        machine = _new(H2StreamStateMachine)
        machine.__dict__.update(_MACHINE_ATTRS)
        machine.stream_id = stream_id
        window = _new(WindowManager)
        window.__dict__.update(_WINDOW_ATTRS)
        # Settings.__getitem__ (a Python call each, two per stream) read in place: the
        # current value heads its deque of values not yet acknowledged; the initial
        # window always has one.
        size = self.local_settings._settings[_INITIAL_WINDOW_SIZE][0]
        window.max_window_size = size
        window.current_window_size = size
        s = _new(CachedStream)
        s.__dict__.update(_STREAM_ATTRS)
        s.state_machine = machine
        s.stream_id = stream_id
        s._inbound_window_manager = window
        s.outbound_flow_control_window = self.remote_settings._settings[_INITIAL_WINDOW_SIZE][0]
        s.config = self.config
        s.validated = self.validated
        s.max_outbound_frame_size = self.max_outbound_frame_size
        return s

    def remember_request(
        self, block: bytes, gen: int, content_length: int | None, request: Any
    ) -> None:
        """Keep ``request`` (the codec's reading of a request) for the header block
        ``block`` of a `CacheableRequest`: the next HEADERS frame opening a stream with
        the same bytes, the decoder's table unchanged, skips decoding, validation and
        the codec's reading (`_fast_headers` returns ``(stream id, END_STREAM,
        request)`` for it).  ``gen``: the table generation it was decoded with;
        ``content_length``: h2's expected content length of it."""
        if gen != self.decoder.header_table.gen or len(block) > KNOWN_MAX_BLOCK:  # type: ignore[attr-defined]
            return  # the table changed since (a later block of the same read)
        if gen != self._known_gen or len(self._known) >= KNOWN_ENTRIES:
            self._known.clear()
            self._known_gen = gen
        self._known[block] = (content_length, request)

    def receive_data(self, data: Any) -> list[Any]:
        """h2's ``receive_data``, except that on the server side a complete HEADERS
        frame opening a new stream is read here (`h2_inbound`): no frame objects, no
        copies through h2's frame buffer.  Frames keep their order: the others go to h2
        in runs between such frames.  While h2 holds a partial frame, the preface or an
        unfinished header block (CONTINUATION), everything goes to h2."""
        buf = self.incoming_buffer
        if (
            not self.fast_inbound
            or buf._preamble_len
            or buf._data
            or buf._headers_buffer
            or not data
        ):
            return super().receive_data(data)
        events: list[Any] = []
        slow_from = 0
        max_frame = self.max_inbound_frame_size
        max_streams = self.local_settings.max_concurrent_streams
        # `split_frames`' walk, without its list of tuples (a frame at a time here).
        end = len(data)
        nxt = 0
        while nxt + 9 <= end:
            start = nxt
            length = (data[start] << 16) | (data[start + 1] << 8) | data[start + 2]
            nxt = start + 9 + length
            if nxt > end:
                break
            ftype = data[start + 3]
            if ftype == DATA and length <= max_frame and not data[start + 4] & FLAG_PADDED:
                if start > slow_from:
                    events += super().receive_data(data[slow_from:start])
                    slow_from = start
                    if buf._data or buf._headers_buffer:
                        break  # h2 is inside a header block: the rest is its own
                    max_streams = self.local_settings.max_concurrent_streams
                got = self._fast_data(data, start, length)
                if got is not None:
                    events += got
                    slow_from = nxt
                continue
            if ftype != HEADERS or length > max_frame:
                continue
            flags = data[start + 4]
            # `fast_headers` inlined (a call less per request): a whole block (END_HEADERS)
            # without padding nor priority, opening a client stream above every id seen.
            if flags & _HEADERS_FLAGS != FLAG_END_HEADERS:
                continue
            sid = int.from_bytes(data[start + 5 : start + 9], "big") & 0x7FFFFFFF
            if not sid & 1 or sid <= self.highest_inbound_stream_id:
                continue
            if start > slow_from:
                events += super().receive_data(data[slow_from:start])
                slow_from = start
                if buf._data or buf._headers_buffer:
                    break  # h2 is inside a header block: the rest is its own
                max_streams = self.local_settings.max_concurrent_streams  # a SETTINGS ACK
            if sid <= self.highest_inbound_stream_id or (
                # h2's count walks every stream it keeps (open or not yet forgotten),
                # so it is at most their number: counted only when that could be over.
                len(self.streams) >= max_streams and self.open_inbound_streams + 1 > max_streams
            ):
                continue  # h2 refuses it its own way
            slow_from = nxt
            try:
                events += self._fast_headers(
                    sid, data[start + 9 : nxt], bool(flags & FLAG_END_STREAM)
                )
            except h2.exceptions.ProtocolError as e:
                self._terminate_connection(e.error_code)
                raise
        if slow_from < len(data):
            events += super().receive_data(data[slow_from:])
        return events

    def _fast_data(self, data: Any, start: int, length: int) -> list[Any] | None:
        """h2's ``_receive_data_frame`` and ``H2Stream.receive_data`` for a DATA frame
        without padding on a stream open both ways (a request body), within both
        windows and the request's content-length: the windows and the received
        length move, the stream goes OPEN -> OPEN (``recv_data``) and, with
        END_STREAM, -> HALF_CLOSED_REMOTE; DataReceived (and StreamEnded) as h2 makes
        them.  None, with nothing done, for anything else: h2 reads it (and raises
        what it raises).  h2's frame objects and two table look-ups of hashed Enums
        per frame were most of a gRPC call's inbound cost."""
        sid = int.from_bytes(data[start + 5 : start + 9], "big") & 0x7FFFFFFF
        stream = self.streams.get(sid)
        if stream is None or self.state_machine.state is not _SERVER_OPEN:
            return None
        machine = stream.state_machine
        conn_window = self._inbound_flow_control_window_manager
        window = stream._inbound_window_manager
        if (
            machine.state is not _OPEN
            or conn_window.current_window_size < length
            or window.current_window_size < length
        ):
            return None
        end_stream = bool(data[start + 4] & FLAG_END_STREAM)
        actual = stream._actual_content_length + length
        expected = stream._expected_content_length
        if expected is not None and (expected < actual or (end_stream and expected != actual)):
            return None
        conn_window.current_window_size -= length
        window.current_window_size -= length
        stream._actual_content_length = actual
        event = DataReceived(stream_id=sid, data=bytes(data[start + 9 : start + 9 + length]))
        event.flow_controlled_length = length
        if not end_stream:
            return [event]
        machine.state = _HALF_CLOSED_REMOTE
        ended = StreamEnded(stream_id=sid)
        event.stream_ended = ended
        return [event, ended]

    def _fast_headers(self, stream_id: int, block: bytes, end_stream: bool) -> list[Any]:
        """h2's ``_receive_headers_frame`` and ``H2Stream.receive_headers`` for a
        request opening a stream: decode, connection and stream transitions, content
        length, validation (remembered), the events.  The transitions h2 would look up
        in its tables are set directly (each lookup hashes two Enums in Python, a tenth
        of the inbound cost): connection SERVER_OPEN stays SERVER_OPEN; the stream goes
        IDLE -> OPEN (``request_received``) and, with END_STREAM, -> HALF_CLOSED_REMOTE
        (``stream_half_closed``).  A block whose pseudo-headers carry ``:status`` takes
        h2's path (it refuses it).

        A block remembered (`remember_request`) gives ``(stream id, END_STREAM, the
        codec's request)`` in place of h2's events: the stream is opened as above, with
        the content length h2 read from the same block."""
        if type(block) is not bytes:
            block = bytes(block)  # a dict key
        gen = self.decoder.header_table.gen  # type: ignore[attr-defined]
        if gen != self._known_gen:
            self._known.clear()
            self._known_gen = gen
        elif self.state_machine.state is _SERVER_OPEN:
            known = self._known.get(block)
            if known is not None:
                self.known_hits += 1
                # `_open_client_stream` inlined (a call less per request).
                stream = self._new_stream(stream_id)
                self.streams[stream_id] = stream
                self.highest_inbound_stream_id = stream_id
                machine = stream.state_machine
                machine.client = False
                machine.headers_received = True
                machine.state = _HALF_CLOSED_REMOTE if end_stream else _OPEN
                stream._expected_content_length = known[0]
                return [(stream_id, end_stream, known[1])]
        headers = list(_decode_headers(self.decoder, block))
        events: list[Any]
        if self.state_machine.state is _SERVER_OPEN:
            events = []  # (SERVER_OPEN, RECV_HEADERS) -> SERVER_OPEN, no event
        else:
            events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        stream = self._open_client_stream(stream_id)
        for name, _value in headers:  # pseudo-headers come first
            if name[:1] != b":":
                break
            if name == b":status":  # h2 decides (``is_informational_response``)
                _frames, stream_events = stream.receive_headers(headers, end_stream, None)
                return events + list(stream_events)
        machine = stream.state_machine
        machine.client = False
        machine.headers_received = True
        machine.state = _OPEN
        request = RequestReceived(stream_id=stream_id)
        if self.decoder.header_table.gen == gen:  # type: ignore[attr-defined]
            request = CacheableRequest(stream_id=stream_id, block=block, gen=gen)
        events.append(request)
        if end_stream:
            machine.state = _HALF_CLOSED_REMOTE
            ended = StreamEnded(stream_id=stream_id)
            request.stream_ended = ended
            events.append(ended)
        stream._initialize_content_length(headers)
        request.headers = stream._process_received_headers(headers, _REQUEST_FLAGS, None)
        return events

    def send_response(
        self,
        stream_id: int,
        headers: list[Any],
        body: bytes,
        encoded: list[bytes] | None = None,
        trailers: list[Any] | None = None,
    ) -> bool:
        """Server side: a whole response (HEADERS, and DATA when ``body``, ending the
        stream) to a request whose stream is half-closed (remote), when it fits the
        windows and one frame; False (nothing done) otherwise, for h2's path.

        The same effects as ``send_headers`` + ``send_data`` + END_STREAM through h2:
        (HALF_CLOSED_REMOTE, SEND_HEADERS) ``response_sent``, SEND_DATA, then
        SEND_END_STREAM -> CLOSED closed by SEND_END_STREAM, both windows less the
        body; and the closed stream moves to h2's closed streams now rather than at
        h2's next count of open streams (``_open_streams`` does exactly that).
        ``encoded``: the fields' bytes (``h2_hpack.plain_field``) when the caller has
        them, else the encoder encodes ``headers``.  ``trailers`` (a gRPC answer's):
        a last HEADERS frame carries them and the end of the stream, as h2's
        ``send_headers`` of trailers (``response_sent`` again: trailers sent)."""
        stream = self.streams.get(stream_id)
        if stream is None or not self.fast_outbound or self.state_machine.state is not _SERVER_OPEN:
            return False
        machine = stream.state_machine
        size = len(body)
        if (
            machine.state is not _HALF_CLOSED_REMOTE
            or machine.headers_sent
            or machine.client is not False
            or size > self.max_outbound_frame_size
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
            # `_informational` inlined (a call less per response).
            or (headers and headers[0][0] == b":status" and headers[0][1][:1] == b"1")
        ):
            return False
        if encoded is not None:
            block = self.encoder.join(encoded)  # type: ignore[attr-defined]  # StaticEncoder
        else:
            block = self.encoder.encode(headers)
        last = None if trailers is None else self.encoder.encode(trailers)
        machine.headers_sent = True
        if last is not None:
            machine.trailers_sent = True
        machine.state = _CLOSED
        machine.stream_closed_by = _BY_SEND_END_STREAM
        out = self._data_to_send
        sid = stream_id.to_bytes(4, "big")
        n = len(block)
        max_frame = self.max_outbound_frame_size
        ends = not size and last is None  # the HEADERS frame ends the stream
        if n > max_frame:  # CONTINUATION frames
            out += header_frames(stream_id, block, ends, max_frame)
        else:  # RFC 9113 6.2: HEADERS, END_HEADERS (0x4), END_STREAM (0x1)
            out += n.to_bytes(3, "big")
            out += b"\x01\x05" + sid if ends else b"\x01\x04" + sid
            out += block
        if size:
            stream.outbound_flow_control_window -= size
            self.outbound_flow_control_window -= size
            # RFC 9113 6.1: DATA, flag END_STREAM (0x1) unless trailers follow.
            out += size.to_bytes(3, "big")
            out += b"\x00\x01" + sid if last is None else b"\x00\x00" + sid
            out += body
        if last is not None:
            out += header_frames(stream_id, last, True, max_frame)
        del self.streams[stream_id]
        # h2's SizeLimitDict.__setitem__ is a Python call and a second one for its
        # bound; the same insertion and bound inline.
        closed = self._closed_streams
        _odict_set(closed, stream_id, _BY_SEND_END_STREAM)
        if len(closed) > self.MAX_CLOSED_STREAMS:
            closed.popitem(last=False)  # type: ignore[call-arg]
        return True

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's ``send_headers`` with the same state transitions, less its per-field
        passes and frame objects: the fields are already bytes and normalized
        (`h2_config`), the block comes from `StaticEncoder` and is framed here.  That
        path was about a fifth of the CPU of a small HTTP/2 response.  Informational
        responses, streams a server would open (push) and priorities take h2's path."""
        client = self.config.client_side
        if (
            priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or not isinstance(headers, list)
            or (not client and (stream_id not in self.streams or _informational(headers)))
        ):
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        if stream_id not in self.streams:
            max_open = self.remote_settings.max_concurrent_streams
            # h2 counts (and sweeps) every stream it holds at each new one: 2% of a gRPC
            # call's CPU.  Open streams are some of `self.streams`, so the count can only
            # refuse when there are that many; the client forgets ended streams itself
            # (h2_client_conn), the sweep still runs past SWEEP_STREAMS.
            if len(self.streams) >= min(max_open, SWEEP_STREAMS):
                opened = self.open_outbound_streams
                if opened + 1 > max_open:
                    raise h2.exceptions.TooManyStreamsError(
                        f"Max outbound streams is {max_open}, {opened} open"
                    )
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._get_or_create_stream(stream_id, AllowedStreamIDs(client))
        machine = stream.state_machine
        # As h2 does: the transition first (it raises on a closed stream), then the block.
        machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if machine.trailers_sent and not end_stream:
            raise h2.exceptions.ProtocolError("Trailers must have END_STREAM set.")
        if client and stream._authority is None:
            stream._authority = authority_from_headers(headers)
        stream.request_method = extract_method_header(headers)
        self._data_to_send += header_frames(
            stream_id, block, end_stream, self.max_outbound_frame_size
        )

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        """h2's ``send_data`` (same checks, transitions and window accounting) writing
        one DATA frame by hand instead of through frame objects; padding takes h2's
        path."""
        if pad_length is not None:
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        size = len(data)
        stream = self._get_stream_by_id(stream_id)
        window = min(self.outbound_flow_control_window, stream.outbound_flow_control_window)
        if size > 0 and size > window:
            raise h2.exceptions.FlowControlError(
                f"Cannot send {size} bytes, flow control window is {window}"
            )
        if size > self.max_outbound_frame_size:
            raise h2.exceptions.FrameTooLargeError(
                f"Cannot send frame size {size}, max frame size is {self.max_outbound_frame_size}"
            )
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size
        # RFC 9113 6.1: DATA, flag END_STREAM (0x1).
        head = size.to_bytes(3, "big") + (b"\x00\x01" if end_stream else b"\x00\x00")
        self._data_to_send += head + stream_id.to_bytes(4, "big")
        self._data_to_send += data
