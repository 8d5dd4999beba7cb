"""The `h2` connection both HTTP/2 codecs use, and its configuration.

`BoundedH2Connection` is h2's ``H2Connection`` with a bounded memory of closed streams,
the HPACK coders of ``h2_hpack``, and a quicker ``send_headers`` for the fields the
codecs build (``h2_fields.to_h2_fields``).  Everything inbound (frames, header
validation, stream states, flow control) is h2's own.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.exceptions
from h2.connection import AllowedStreamIDs, ConnectionInputs
from h2.stream import StreamInputs
from h2.utilities import authority_from_headers, extract_method_header

from gatewayd.proxy.http.h2_hpack import CachingDecoder, StaticEncoder


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
