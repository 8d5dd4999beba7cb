"""ClientHelloReader: a ClientHello fed in arbitrary reads and TLS records."""

from __future__ import annotations

import itertools
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.tls import clienthello
from gatewayd.tls.clienthello import (
    NEED_MORE,
    ClientHello,
    ClientHelloReader,
    InvalidClientHello,
    parse_client_hello,
)


def _first_flight(sni: str) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


FLIGHT = _first_flight("reader.example.com")
EXPECTED = parse_client_hello(FLIGHT)
# The handshake bytes of the single record Python's client sends.
BODY = FLIGHT[5:]


def reframe(sizes: list[int]) -> bytes:
    """BODY as handshake records of the given fragment sizes (cycled, at least 1)."""
    out = b""
    pos = 0
    i = 0
    while pos < len(BODY):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(BODY)
        frag = BODY[pos : pos + n]
        out += b"\x16\x03\x01" + len(frag).to_bytes(2, "big") + frag
        pos += len(frag)
        i += 1
    return out


def feed_in_chunks(reader: ClientHelloReader, wire: bytes, cuts: list[int]) -> list[object]:
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    return [reader.feed(wire[a:b]) for a, b in itertools.pairwise(points)]


def test_whole_flight_in_one_read() -> None:
    reader = ClientHelloReader(16384)
    result = reader.feed(FLIGHT)
    assert isinstance(result, ClientHello) and result.sni == "reader.example.com"
    assert reader.take() == FLIGHT
    assert reader.take() == b""


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_any_records_and_reads_give_the_hello_exactly_at_its_last_byte(
    sizes: list[int], cuts: list[int]
) -> None:
    wire = reframe(sizes)
    reader = ClientHelloReader(1 << 20)
    answers = feed_in_chunks(reader, wire, cuts)
    assert answers[:-1] == [NEED_MORE] * (len(answers) - 1)
    assert answers[-1] == EXPECTED
    assert bytes(reader.data) == wire


def test_one_byte_reads_parse_once_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = reframe([100])
    records = -(-len(BODY) // 100)
    calls = 0
    real = clienthello.parse_client_hello

    def counting(data: bytes | bytearray | memoryview) -> object:
        nonlocal calls
        calls += 1
        return real(data)

    monkeypatch.setattr(clienthello, "parse_client_hello", counting)
    reader = ClientHelloReader(16384)
    results = [reader.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert results[-1] == EXPECTED
    # First byte, each header, each record end: a few per record, not one per byte.
    assert calls <= 2 * records + 2, (calls, len(wire))


def test_more_than_the_limit_without_a_hello_is_invalid() -> None:
    reader = ClientHelloReader(64)
    assert reader.feed(FLIGHT[:60]) is NEED_MORE
    with pytest.raises(InvalidClientHello, match="first 64 bytes"):
        reader.feed(FLIGHT[60:80])


def test_a_hello_followed_by_more_than_the_limit_in_one_read_still_counts() -> None:
    reader = ClientHelloReader(len(FLIGHT))
    result = reader.feed(FLIGHT + b"\x17\x03\x03\x00\x05early")
    assert result == EXPECTED


@pytest.mark.parametrize("first", [b"G", b"\x00", b"\x80"])
def test_garbage_is_refused_at_the_first_byte(first: bytes) -> None:
    with pytest.raises(InvalidClientHello):
        ClientHelloReader(16384).feed(first)
