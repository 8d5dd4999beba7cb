"""Sans-I/O TLS ClientHello parser.

A listener that must route on SNI before terminating TLS (TLSRoute passthrough, or the
choice of certificate) peeks at the first flight of the client.  ``parse_client_hello``
is given *all* bytes received so far on the connection and answers one of:

- ``NEED_MORE``: the bytes are a valid beginning of a ClientHello; read more.
- a ``ClientHello``: the message is complete (the caller still forwards/feeds every
  byte it received: nothing is consumed here).
- ``InvalidClientHello`` is raised: the bytes cannot start a TLS ClientHello (plain
  HTTP to a TLS port, garbage, an oversized or malformed hello).

The parser is deliberately strict about framing (lengths must add up exactly) and
lenient about content it does not need (unknown extensions are skipped).  It never
raises anything but ``InvalidClientHello`` for any input.

Pure module: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_CLIENT_HELLO",
    "NEED_MORE",
    "ClientHello",
    "ClientHelloReader",
    "InvalidClientHello",
    "NeedMore",
    "parse_client_hello",
]

# Handshake message bodies longer than this are refused.  Real ClientHellos are a few
# hundred bytes (post-quantum key shares push them to ~2 KiB); 64 KiB bounds the memory a
# client can make us buffer before we know where the connection goes.
MAX_CLIENT_HELLO: Final = 64 * 1024

_CONTENT_HANDSHAKE: Final = 22
_HANDSHAKE_CLIENT_HELLO: Final = 1
# RFC 8446 5.1: "The length MUST NOT exceed 2^14 bytes."  (TLSPlaintext.length)
_MAX_RECORD: Final = 1 << 14

_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_EXT_SUPPORTED_VERSIONS: Final = 43
_SNI_HOST_NAME: Final = 0

_HTTP_METHOD_STARTS: Final = (
    b"GET ",
    b"POST",
    b"PUT ",
    b"HEAD",
    b"DELE",
    b"OPTI",
    b"PATC",
    b"CONN",
    b"TRAC",
    b"PRI ",
)


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs from a ClientHello."""

    sni: str | None  # server_name host_name, lower-cased, no trailing dot; None if absent
    alpn: tuple[str, ...]  # ALPN protocol names in client preference order (latin-1)
    legacy_version: int  # ClientHello.legacy_version, e.g. 0x0303
    supported_versions: tuple[int, ...]  # supported_versions extension, GREASE removed


class NeedMore:
    """The bytes so far are a valid prefix of a ClientHello: read more (singleton)."""

    __slots__ = ()
    _instance: NeedMore | None = None

    def __new__(cls) -> NeedMore:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = NeedMore()


class InvalidClientHello(ValueError):
    """The bytes are not (the beginning of) a TLS ClientHello.

    ``plain_http`` is True when they look like an HTTP/1.x request, so that a listener
    can answer "plain HTTP sent to a TLS port" instead of just closing.
    """

    def __init__(self, message: str, *, plain_http: bool = False) -> None:
        super().__init__(message)
        self.plain_http = plain_http


def parse_client_hello(data: bytes | bytearray | memoryview) -> ClientHello | NeedMore:
    """Parse the ClientHello at the start of ``data`` (every byte received so far)."""
    buf = bytes(data)
    handshake = bytearray()  # reassembled handshake-layer bytes
    message_end: int | None = None  # 4 + body length, once the header is known
    pos = 0
    while True:
        if pos >= len(buf):
            return NEED_MORE
        _check_record_start(buf, pos)
        if pos + 5 > len(buf):
            return NEED_MORE
        length = int.from_bytes(buf[pos + 3 : pos + 5], "big")
        if length == 0:
            # RFC 8446 5.1: "Implementations MUST NOT send zero-length fragments of
            # Handshake types"
            raise InvalidClientHello(f"empty TLS handshake record at offset {pos}")
        if length > _MAX_RECORD:
            raise InvalidClientHello(
                f"TLS record at offset {pos} is {length} bytes long (at most 16384 allowed)"
            )
        fragment = buf[pos + 5 : pos + 5 + length]  # may be short: the record is arriving
        handshake += fragment
        if message_end is None and handshake and handshake[0] != _HANDSHAKE_CLIENT_HELLO:
            raise InvalidClientHello(
                f"first handshake message is of type {handshake[0]}, not ClientHello (1)"
            )
        if message_end is None and len(handshake) >= 4:
            body_length = int.from_bytes(handshake[1:4], "big")
            if body_length > MAX_CLIENT_HELLO:
                raise InvalidClientHello(
                    f"ClientHello is {body_length} bytes long (at most {MAX_CLIENT_HELLO})"
                )
            message_end = 4 + body_length
        if message_end is not None and len(handshake) >= message_end:
            return _parse_body(bytes(handshake[4:message_end]))
        if len(fragment) < length:
            return NEED_MORE
        pos += 5 + length


class ClientHelloReader:
    """The first bytes of one connection, read until they hold a whole ClientHello.

    ``feed`` takes each read as it comes and answers like ``parse_client_hello``, but
    parses only when a TLS record is complete (a ClientHello can only end at a record
    boundary), so a client dribbling bytes one at a time costs one parse per record, not
    one per byte.  More than ``limit`` bytes without a complete ClientHello raise
    ``InvalidClientHello``.  ``data`` holds every byte fed so far (to be forwarded or
    handed to a TLS layer: nothing is consumed).
    """

    __slots__ = ("_parse_at", "_scan", "data", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self._scan = 0  # start of the first record not known to be complete
        self._parse_at = 1  # the first byte already tells TLS from anything else

    def feed(self, chunk: bytes | bytearray | memoryview) -> ClientHello | NeedMore:
        buf = self.data
        buf += chunk
        if len(buf) >= self._parse_at:
            result = parse_client_hello(buf)
            if not isinstance(result, NeedMore):
                return result
            self._advance()
        if len(buf) > self.limit:
            raise InvalidClientHello(
                f"no complete ClientHello in the first {self.limit} bytes ({len(buf)} read)"
            )
        return NEED_MORE

    def take(self) -> bytes:
        """Every byte fed so far, handed over once (the reader keeps nothing)."""
        data = bytes(self.data)
        self.data = bytearray()
        return data

    def _advance(self) -> None:
        """Skip the complete records; parse next when the first incomplete one ends (or,
        without its header yet, when the header is there)."""
        buf = self.data
        n = len(buf)
        pos = self._scan
        while pos + 5 <= n:
            end = pos + 5 + int.from_bytes(buf[pos + 3 : pos + 5], "big")
            if end > n:
                self._scan, self._parse_at = pos, end
                return
            pos = end
        self._scan, self._parse_at = pos, pos + 5


def _check_record_start(buf: bytes, pos: int) -> None:
    """Validate what is available of the record header at ``pos``."""
    content_type = buf[pos]
    if content_type != _CONTENT_HANDSHAKE:
        if pos == 0:
            head = buf[:4]
            if any(m.startswith(head) for m in _HTTP_METHOD_STARTS):
                raise InvalidClientHello(
                    "plain HTTP request sent to a TLS listener", plain_http=True
                )
            if content_type & 0x80:
                # SSL 2.0 CLIENT-HELLO framing: SSLv2 is prohibited (RFC 6176) and no
                # supported client sends it any more.
                raise InvalidClientHello("SSL 2.0-style ClientHello is not supported")
            raise InvalidClientHello(
                f"not a TLS handshake: first byte is 0x{content_type:02x}, expected 0x16"
            )
        # RFC 8446 5.1: "Handshake messages MUST NOT be interleaved with other record
        # types."
        raise InvalidClientHello(
            f"TLS record of content type {content_type} at offset {pos} interrupts the ClientHello"
        )
    if pos + 1 < len(buf) and buf[pos + 1] != 3:
        raise InvalidClientHello(
            f"TLS record at offset {pos} has version major {buf[pos + 1]}, expected 3"
        )


class _Reader:
    """Bounds-checked big-endian reader; every short read is an InvalidClientHello."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise InvalidClientHello(f"ClientHello truncated in {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def take_all(self) -> bytes:
        return self.take(self.remaining(), "vector")

    def uint(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, length_size: int, what: str) -> _Reader:
        """A sub-reader over a length-prefixed vector; skips it in this reader."""
        n = self.uint(length_size, f"{what} length")
        if n > self.end - self.pos:
            raise InvalidClientHello(f"{what} length {n} overruns the ClientHello")
        sub = _Reader(self.data, self.pos, self.pos + n)
        self.pos += n
        return sub


def _parse_body(body: bytes) -> ClientHello:
    r = _Reader(body)
    legacy_version = r.uint(2, "legacy_version")
    if legacy_version >> 8 != 3:
        raise InvalidClientHello(f"ClientHello legacy_version 0x{legacy_version:04x} is not TLS")
    r.take(32, "random")
    session_id = r.vector(1, "legacy_session_id")
    if session_id.remaining() > 32:
        # RFC 8446 4.1.2: opaque legacy_session_id<0..32>
        raise InvalidClientHello("legacy_session_id longer than 32 bytes")
    suites = r.vector(2, "cipher_suites")
    if suites.remaining() < 2 or suites.remaining() % 2:
        # RFC 8446 4.1.2: CipherSuite cipher_suites<2..2^16-2>
        raise InvalidClientHello("cipher_suites must hold at least one 2-byte suite")
    compression = r.vector(1, "legacy_compression_methods")
    if compression.remaining() < 1:
        raise InvalidClientHello("legacy_compression_methods is empty")

    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    if r.remaining() == 0:
        # RFC 5246 7.4.1.2: a ClientHello without extensions is legal (pre-1.3 clients).
        return ClientHello(sni=None, alpn=(), legacy_version=legacy_version, supported_versions=())
    extensions = r.vector(2, "extensions")
    if r.remaining():
        raise InvalidClientHello(f"{r.remaining()} stray bytes after the ClientHello extensions")
    seen: set[int] = set()
    while extensions.remaining():
        ext_type = extensions.uint(2, "extension type")
        ext = extensions.vector(2, f"extension {ext_type}")
        if ext_type in seen:
            # RFC 8446 4.2: "There MUST NOT be more than one extension of the same type in
            # a given extension block."
            raise InvalidClientHello(f"extension {ext_type} appears twice")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            sni = _parse_server_name(ext)
        elif ext_type == _EXT_ALPN:
            alpn = _parse_alpn(ext)
        elif ext_type == _EXT_SUPPORTED_VERSIONS:
            versions = _parse_supported_versions(ext)
    return ClientHello(
        sni=sni, alpn=alpn, legacy_version=legacy_version, supported_versions=versions
    )


def _parse_server_name(ext: _Reader) -> str | None:
    if ext.remaining() == 0:
        # RFC 6066 3: the *server's* echo is empty; a client's empty one carries no name.
        return None
    names = ext.vector(2, "server_name list")
    if ext.remaining():
        raise InvalidClientHello("stray bytes after the server_name list")
    host: str | None = None
    seen: set[int] = set()
    while names.remaining():
        name_type = names.uint(1, "server_name type")
        name = names.vector(2, "server_name").take_all()
        if name_type in seen:
            # RFC 6066 3: "The ServerNameList MUST NOT contain more than one name of the
            # same name_type."
            raise InvalidClientHello(f"server_name lists name type {name_type} twice")
        seen.add(name_type)
        if name_type == _SNI_HOST_NAME:
            host = _validate_host_name(name)
    return host


_LDH: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-_")


def _validate_host_name(raw: bytes) -> str:
    # RFC 6066 3: '"HostName" contains the fully qualified DNS hostname of the server,
    # as understood by the client. The hostname is represented as a byte string using
    # ASCII encoding without a trailing dot.'  Some clients send the trailing dot anyway;
    # it names the same host, so it is dropped rather than refused.
    name = raw.lower()
    if name.endswith(b"."):
        name = name[:-1]
    if not name:
        raise InvalidClientHello("server_name host_name is empty")
    if len(name) > 253:
        raise InvalidClientHello(f"server_name host_name is {len(name)} bytes (at most 253)")
    for label in name.split(b"."):
        if not label or len(label) > 63:
            raise InvalidClientHello(
                f"server_name {_show(raw)} has an empty or over-long (>63) label"
            )
        # Letters, digits and hyphen (RFC 1123); underscore is tolerated because it is
        # common in real names (it never matches a Gateway API hostname anyway).
        if not _LDH.issuperset(label) or label[0] == 0x2D or label[-1] == 0x2D:
            raise InvalidClientHello(f"server_name {_show(raw)} is not a valid DNS name")
    return name.decode("ascii")


def _show(raw: bytes) -> str:
    return repr(raw[:80].decode("ascii", "backslashreplace"))


def _parse_alpn(ext: _Reader) -> tuple[str, ...]:
    # RFC 7301 3.1: ProtocolName protocol_name_list<2..2^16-1>, each name <1..2^8-1>
    names = ext.vector(2, "ALPN protocol list")
    if ext.remaining():
        raise InvalidClientHello("stray bytes after the ALPN protocol list")
    if names.remaining() == 0:
        raise InvalidClientHello("ALPN extension lists no protocol")
    out: list[str] = []
    while names.remaining():
        name = names.vector(1, "ALPN protocol name")
        if name.remaining() == 0:
            raise InvalidClientHello("empty ALPN protocol name")
        # ALPN names are opaque bytes; latin-1 maps them 1:1 to str without failing.
        out.append(name.take_all().decode("latin-1"))
    return tuple(out)


def _is_grease(value: int) -> bool:
    # RFC 8701 2: GREASE values are {0x0A0A, 0x1A1A, ..., 0xFAFA}.
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


def _parse_supported_versions(ext: _Reader) -> tuple[int, ...]:
    # RFC 8446 4.2.1: ProtocolVersion versions<2..254> in the ClientHello.
    versions = ext.vector(1, "supported_versions list")
    if ext.remaining():
        raise InvalidClientHello("stray bytes after the supported_versions list")
    if versions.remaining() < 2 or versions.remaining() % 2:
        raise InvalidClientHello("supported_versions must hold at least one 2-byte version")
    out: list[int] = []
    while versions.remaining():
        v = versions.uint(2, "supported version")
        if not _is_grease(v):
            out.append(v)
    return tuple(out)
