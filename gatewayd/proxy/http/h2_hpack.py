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

from hpack import Decoder, Encoder
from hpack.table import HeaderTable

CACHE_ENTRIES = 8
CACHE_MAX_BLOCK = 512
CACHE_MAX_FIELDS = 64


class CountedTable(HeaderTable):
    """An HPACK dynamic table that counts its changes (``gen``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.gen += 1
        super().add(name, value)

    @property  # type: ignore[override]
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
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
        headers = super().decode(data, raw)
        if cacheable and table.gen == gen and len(headers) <= CACHE_MAX_FIELDS:  # type: ignore[attr-defined]
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[bytes(data)] = list(headers)
        return headers


class CachingEncoder(Encoder):
    """``hpack.Encoder`` remembering field lists it encoded without touching the table.

    The key is the list of (name, value) tuples as given: a field's representation
    (plain or never-indexed, ``hpack.NeverIndexedHeaderTuple``) is part of its type, and
    the caller always gives a name the same representation, so equal keys encode alike.
    """

    def __init__(self) -> None:
        super().__init__()
        table = CountedTable()
        table.maxsize = self.header_table.maxsize
        self.header_table = table
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._cache_gen = -1
        self.hits = 0

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        table = self.header_table
        gen = table.gen  # type: ignore[attr-defined]
        key: tuple[Any, ...] | None = None
        if (
            not self.table_size_changes
            and huffman
            and isinstance(headers, list | tuple)
            and len(headers) <= CACHE_MAX_FIELDS
        ):
            key = tuple(headers)
            if gen != self._cache_gen:
                self._cache.clear()
                self._cache_gen = gen
            else:
                hit = self._cache.get(key)
                if hit is not None:
                    self.hits += 1
                    return hit
        block = super().encode(headers, huffman)
        if key is not None and table.gen == gen and len(block) <= CACHE_MAX_BLOCK:  # type: ignore[attr-defined]
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = block
        return block
