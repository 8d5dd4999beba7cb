"""HPACK coders with a small cache of header blocks that leave the dynamic table as is.

Profiles of the HTTP/2 rows of ``make bench`` put about a third of gatewayd's CPU in
the pure-Python ``hpack`` package (table searches, integer and Huffman coding, one
``log.debug`` per field).  A connection mostly repeats itself: after its first request
a client's header block is made of references to table entries, and after the first
response our block for the same fields is too.  RFC 7541 makes such a block a pure
function of its bytes (its fields) and of the dynamic table: decoding or encoding it
again against the same table gives the same result.  So each coder keeps the results
of the calls that did not touch its table (no insertion, no size update), keyed by the
block (decoder) or the field list (encoder), valid for one table *generation*; any
change of the table starts a new generation and empties the cache.

Bounds (per connection, whatever the peer sends): at most `CACHE_ENTRIES` entries, only
blocks up to `CACHE_MAX_BLOCK` bytes and lists up to `CACHE_MAX_FIELDS` fields, so a
full cache holds a few tens of KiB; the decoded fields reference the table's own bytes.
Every limit the decoder enforces (header list size, table size) gave the same answer
when the entry was stored: a cached result is one the full decoder accepted from
the same bytes and the same table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable, table_entry_size

CACHE_ENTRIES = 8
CACHE_MAX_BLOCK = 512
CACHE_MAX_FIELDS = 64


class CountedTable(HeaderTable):
    """An HPACK dynamic table that counts its changes (``gen``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = 0

    def add(self, name: bytes, value: bytes) -> None:
        # An entry larger than the table empties it (RFC 7541 4.4): with the table
        # already empty nothing changes.  nginx sends "literal with incremental
        # indexing" fields against a table of size 0: they must not end the cache.
        if self._current_size or table_entry_size(name, value) <= self._maxsize:
            self.gen += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        if newmax != self._maxsize or self._current_size > newmax:
            self.gen += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]


class CachingDecoder(Decoder):
    """``hpack.Decoder`` remembering blocks that only referenced the table."""

    def __init__(self, max_header_list_size: int = Decoder().max_header_list_size) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        table = CountedTable()
        table.maxsize = self.header_table.maxsize
        self.header_table = table
        self._cache: dict[bytes, list[Any]] = {}
        self._cache_gen = -1
        self.hits = 0

    def decode(self, data: bytes, raw: bool = False) -> Any:
        table = self.header_table
        gen = table.gen  # type: ignore[attr-defined]
        cacheable = raw and len(data) <= CACHE_MAX_BLOCK
        if cacheable:
            if gen != self._cache_gen:
                self._cache.clear()
                self._cache_gen = gen
            else:
                key = bytes(data)
                hit = self._cache.get(key)
                if hit is not None:
                    self.hits += 1
                    return list(hit)
        headers = list(super().decode(data, raw))
        if cacheable and table.gen == gen and len(headers) <= CACHE_MAX_FIELDS:  # type: ignore[attr-defined]
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[bytes(data)] = headers
            return list(headers)
        return headers


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``first`` holding the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _string(data: bytes) -> bytes:
    """RFC 7541 5.2: a string literal, Huffman-coded when that is shorter."""
    coded = _HUFFMAN.encode(data)
    if len(coded) < len(data):
        return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(data), 7, 0) + data


# RFC 7541 Appendix A: the static table (index = position + 1); first index per name.
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_n, _v), _i)
    _STATIC_NAMES.setdefault(_n, _i)


def encode_field(name: bytes, value: bytes, never_indexed: bool) -> bytes:
    """One field without touching the dynamic table: a static-table index, or a literal
    "without indexing" (RFC 7541 6.2.2) or "never indexed" (6.2.3)."""
    if not never_indexed:
        full = _STATIC_FIELDS.get((name, value))
        if full is not None:
            return _integer(full, 7, 0x80)  # 6.1 indexed header field
    first = 0x10 if never_indexed else 0x00
    index = _STATIC_NAMES.get(name)
    if index is not None:
        return _integer(index, 4, first) + _string(value)
    return bytes((first,)) + _string(name) + _string(value)


# Encoded fields, shared by every connection of the process (a field's bytes depend on
# the field alone).  Bounded: fields up to FIELD_CACHE_MAX_BYTES, at most
# FIELD_CACHE_ENTRIES (emptied when full): at most about 2 MiB.
FIELD_CACHE_ENTRIES = 4096
FIELD_CACHE_MAX_BYTES = 256
_plain_fields: dict[tuple[bytes, bytes], bytes] = {}
_never_fields: dict[tuple[bytes, bytes], bytes] = {}

# Fields whose value is new on every response (``x-request-id``, a UUID): cached, they
# only pushed useful entries out of the field cache (emptied every 4,096 responses), and
# Huffman-coding them cost two encodes a response for about 7 bytes saved.  Encoded as
# a literal without indexing, the name's bytes prepared once, the value as is.
# ``traceparent`` (W3C Trace Context, a new span id per request) likewise.
_UNIQUE_NAMES: dict[bytes, bytes] = {
    name: b"\x00" + _string(name) for name in (b"x-request-id", b"traceparent")
}


UNIQUE_NAMES = frozenset(_UNIQUE_NAMES)


def plain_field(name: bytes, value: bytes) -> bytes:
    """The bytes `StaticEncoder.encode` writes for the plain (not never-indexed) field
    (name, value), uncached: for callers that keep encoded fields of their own."""
    unique = _UNIQUE_NAMES.get(name)
    if unique is not None:
        return unique + _integer(len(value), 7, 0) + value
    return encode_field(name, value, False)


class StaticEncoder:
    """An HPACK encoder that never inserts into its dynamic table (size 0).

    Profiles of small HTTP/2 responses: ``hpack.Encoder`` cost about a fifth of
    gatewayd's CPU, and a response carries fields unique to it (``x-request-id``,
    ``date`` once a second) that made every block a new one and churned the table.
    Without insertions a field's encoding is a pure function of the field, so the
    encoded fields are cached and a block is a join of cached bytes.  The price is
    compression: a repeated field costs its literal (typically 10-40 bytes) instead of
    one index byte; HEADERS frames of responses stay small either way.

    RFC 7541 4.2: the first block, and the first after any change of the peer's
    SETTINGS_HEADER_TABLE_SIZE (``header_table_size``), starts with a dynamic table
    size update to 0, so the peer's decoder knows the table is and stays empty.
    """

    __slots__ = ("_announce", "_max")

    def __init__(self) -> None:
        self._max = 4096
        self._announce = True

    @property
    def header_table_size(self) -> int:
        return self._max

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max = value
        self._announce = True

    def join(self, encoded: list[bytes]) -> bytes:
        """A block of fields encoded already (`plain_field`), with the table size
        update when one is due."""
        if self._announce:
            self._announce = False
            return b"\x20" + b"".join(encoded)
        return b"".join(encoded)

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        parts: list[bytes] = []
        if self._announce:
            self._announce = False
            parts.append(b"\x20")  # 6.3: dynamic table size update, 0
        plain, never = _plain_fields, _never_fields
        for field in headers:
            name, value = field[0], field[1]
            unique = _UNIQUE_NAMES.get(name)
            if unique is not None and not isinstance(field, NeverIndexedHeaderTuple):
                parts.append(unique + _integer(len(value), 7, 0) + value)
                continue
            cache = never if isinstance(field, NeverIndexedHeaderTuple) else plain
            key = (name, value)
            data = cache.get(key)
            if data is None:
                data = encode_field(name, value, cache is never)
                if len(name) + len(value) <= FIELD_CACHE_MAX_BYTES:
                    if len(cache) >= FIELD_CACHE_ENTRIES:
                        cache.clear()
                    cache[key] = data
            parts.append(data)
        return b"".join(parts)
