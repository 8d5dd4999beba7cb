"""PROXY protocol v1/v2: parsing, incremental length detection, encoding, trust, and
reading a header off a real socket byte-exactly within its bounds."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from loop_kit import run

from gatewayd.proxy.proxyproto import (
    MAX_V2_BYTES,
    V1_MAX_BYTES,
    V2_SIGNATURE,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    header_length,
    parse_header,
    parse_networks,
    peek_untrusted,
    read_proxy_header,
    starts_like_header,
    trusted,
    upstream_header,
)


def v2(command: int, family: int, block: bytes) -> bytes:
    return V2_SIGNATURE + bytes((0x20 | command, family)) + struct.pack("!H", len(block)) + block


# --------------------------------------------------------------------------- parse


def test_v1_tcp4() -> None:
    raw = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"
    h = parse_header(raw)
    assert (h.version, h.source, h.destination, h.length) == (
        1,
        ("203.0.113.7", 51234),
        ("192.0.2.1", 443),
        len(raw),
    )


def test_v1_tcp6_and_unknown() -> None:
    h = parse_header(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n")
    assert h.source == ("2001:db8::7", 1) and h.destination == ("2001:db8::1", 65535)
    unknown = parse_header(b"PROXY UNKNOWN ffff:f...f:ffff 1 2 3\r\n")
    assert unknown.source is None and unknown.destination is None


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n", "needs"),
        (b"PROXY TCP5 203.0.113.7 192.0.2.1 1 2\r\n", "needs"),
        (b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n", "IPv4"),
        (b"PROXY TCP4 a.b.c.d 192.0.2.1 1 2\r\n", "not an IP"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 2\r\n", "bad port"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 080 2\r\n", "bad port"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 2\r\n", "bad port"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n", "CRLF"),
    ],
)
def test_v1_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_header(raw)


def test_v2_ipv4_ipv6_with_tlvs() -> None:
    block = bytes([203, 0, 113, 7, 192, 0, 2, 1]) + struct.pack("!HH", 40000, 8443)
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP with 3 bytes: skipped
    h = parse_header(v2(1, 0x11, block + tlv))
    assert h.source == ("203.0.113.7", 40000) and h.destination == ("192.0.2.1", 8443)
    six = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(
        socket.AF_INET6, "::ffff:192.0.2.1"
    )
    h6 = parse_header(v2(1, 0x21, six + struct.pack("!HH", 1, 2)))
    assert h6.source == ("2001:db8::7", 1)
    assert h6.destination == ("192.0.2.1", 2)  # IPv4-mapped shown as IPv4


def test_v2_local_unspec_and_unix_keep_the_peer() -> None:
    for command, family, block in ((0, 0x00, b""), (1, 0x00, b""), (1, 0x31, b"\0" * 216)):
        h = parse_header(v2(command, family, block))
        assert h.source is None and h.destination is None


@pytest.mark.parametrize(
    "raw, why",
    [
        (V2_SIGNATURE + b"\x11\x11\x00\x00", "version 1"),
        (V2_SIGNATURE + b"\x22\x11\x00\x00", "unknown command"),
        (v2(1, 0x11, b"\0" * 11), "too short"),
        (v2(1, 0x21, b"\0" * 35), "too short"),
        (v2(1, 0x41, b"\0" * 12), "unknown address family"),
    ],
)
def test_v2_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_header(raw)


# --------------------------------------------------------------------------- length


@pytest.mark.parametrize(
    "raw",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n",
        v2(1, 0x11, bytes(8) + struct.pack("!HH", 1, 2) + b"\x04\x00\x01x"),
    ],
)
def test_header_length_on_every_prefix(raw: bytes) -> None:
    """Fed byte by byte, the length is unknown until it can be known, then exact."""
    for n in range(len(raw)):
        got = header_length(raw[:n])
        assert got is None or got == len(raw)
    assert header_length(raw + b"GET / HTTP/1.1\r\n") == len(raw)


def test_header_length_refuses_other_bytes_at_once() -> None:
    for raw in (b"GET / HTTP/1.1\r\n", b"POST", b"\x16\x03\x01", b"\r\n\r\n\x01"):
        with pytest.raises(ProxyHeaderError, match="not a PROXY"):
            header_length(raw)


def test_header_length_bounds() -> None:
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        header_length(b"PROXY " + b"x" * (V1_MAX_BYTES - 6))
    big = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_BYTES - 15)
    with pytest.raises(ProxyHeaderError, match="limit"):
        header_length(big)
    ok = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_BYTES - 16)
    assert header_length(ok) == MAX_V2_BYTES


def test_starts_like_header() -> None:
    assert starts_like_header(b"PROXY TCP4") is True
    assert starts_like_header(V2_SIGNATURE) is True
    assert starts_like_header(b"PRO") is None  # could still be PROXY or PROPFIND
    assert starts_like_header(b"PROPFIND /") is False
    assert starts_like_header(b"\r\n\r\n") is None
    assert starts_like_header(b"GET /") is False
    assert starts_like_header(b"\x16\x03\x01") is False
    assert starts_like_header(b"") is None


# --------------------------------------------------------------------------- encode


def test_encode_round_trips() -> None:
    for src, dst in (
        (("203.0.113.7", 1234), ("192.0.2.1", 443)),
        (("2001:db8::7", 1), ("2001:db8::1", 65535)),
    ):
        for encode in (encode_v1, encode_v2):
            raw = encode(src, dst)
            assert header_length(raw) == len(raw)
            h = parse_header(raw)
            assert (h.source, h.destination) == (src, dst)


def test_encode_mixed_families_as_ipv6() -> None:
    h = parse_header(encode_v1(("2001:db8::7", 5), ("192.0.2.1", 6)))
    assert h.source == ("2001:db8::7", 5) and h.destination == ("192.0.2.1", 6)


def test_upstream_header_without_ip_addresses() -> None:
    assert upstream_header(1, None, ("127.0.0.1", 1)) == b"PROXY UNKNOWN\r\n"
    local = parse_header(upstream_header(2, "/run/x.sock", None))
    assert local.source is None
    assert parse_header(upstream_header(2, ("10.0.0.1", 7), ("10.0.0.2", 8))).source == (
        "10.0.0.1",
        7,
    )


# --------------------------------------------------------------------------- trust


def test_trusted_networks() -> None:
    nets = parse_networks("10.0.0.0/8, 192.168.1.7,2001:db8::/32")
    assert trusted(nets, "10.1.2.3") and trusted(nets, "192.168.1.7")
    assert trusted(nets, "::ffff:10.9.9.9")  # IPv4-mapped peers on dual-stack sockets
    assert trusted(nets, "2001:db8::1")
    assert not trusted(nets, "192.168.1.8") and not trusted(nets, "not-an-ip")
    with pytest.raises(ValueError, match=r"'10\.0\.0\.300/8'"):
        parse_networks("10.0.0.300/8")
    with pytest.raises(ValueError, match="no trusted"):
        parse_networks(" , ")


# --------------------------------------------------------------------------- sockets


async def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def test_read_header_split_in_pieces_consumes_exactly_the_header() -> None:
    run(_read_header_split_in_pieces_consumes_exactly_the_header())


async def _read_header_split_in_pieces_consumes_exactly_the_header() -> None:
    loop = asyncio.get_running_loop()
    server, client = await _pair()
    header = b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n"
    payload = b"GET / HTTP/1.1\r\n\r\n"
    try:
        task = asyncio.ensure_future(read_proxy_header(loop, server))
        for piece in (header[:3], header[3:20], header[20:] + payload):
            client.send(piece)
            await asyncio.sleep(0.01)
        h = await asyncio.wait_for(task, 2)
        assert h.source == ("203.0.113.7", 51234)
        assert server.recv(100) == payload  # the client's bytes are all still there
    finally:
        server.close()
        client.close()


def test_read_v2_header_byte_by_byte() -> None:
    run(_read_v2_header_byte_by_byte())


async def _read_v2_header_byte_by_byte() -> None:
    loop = asyncio.get_running_loop()
    server, client = await _pair()
    header = encode_v2(("198.51.100.4", 9), ("192.0.2.1", 80)) + b""
    try:
        task = asyncio.ensure_future(read_proxy_header(loop, server))
        for i in range(len(header)):
            client.send(header[i : i + 1])
            await asyncio.sleep(0.001)
        client.send(b"\x16\x03\x01")
        h = await asyncio.wait_for(task, 2)
        assert h.source == ("198.51.100.4", 9)
        assert server.recv(10) == b"\x16\x03\x01"
    finally:
        server.close()
        client.close()


def test_read_header_errors_and_bounds() -> None:
    run(_read_header_errors_and_bounds())


async def _read_header_errors_and_bounds() -> None:
    loop = asyncio.get_running_loop()
    cases = [
        (b"GET / HTTP/1.1\r\n", "not a PROXY"),
        (b"PROXY " + b"1" * 200, "longer than 107"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\0" * 4000, "limit"),
    ]
    for data, why in cases:
        server, client = await _pair()
        try:
            client.send(data)
            with pytest.raises(ProxyHeaderError, match=why):
                await asyncio.wait_for(read_proxy_header(loop, server), 2)
        finally:
            server.close()
            client.close()
    server, client = await _pair()
    try:
        client.send(b"PROXY TCP4")
        client.shutdown(socket.SHUT_WR)
        with pytest.raises(ProxyHeaderError, match="closed before"):
            await asyncio.wait_for(read_proxy_header(loop, server), 2)
    finally:
        server.close()
        client.close()


def test_read_header_incomplete_is_bounded_by_the_callers_timeout() -> None:
    run(_read_header_incomplete_is_bounded_by_the_callers_timeout())


async def _read_header_incomplete_is_bounded_by_the_callers_timeout() -> None:
    loop = asyncio.get_running_loop()
    server, client = await _pair()
    try:
        client.send(b"PROXY TCP4 1.2.3.4")
        start = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(read_proxy_header(loop, server), 0.2)
        assert loop.time() - start < 1.0
    finally:
        server.close()
        client.close()


def test_peek_untrusted_leaves_the_bytes() -> None:
    run(_peek_untrusted_leaves_the_bytes())


async def _peek_untrusted_leaves_the_bytes() -> None:
    loop = asyncio.get_running_loop()
    for data, verdict in (
        (b"GET / HTTP/1.1\r\n", False),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", True),
        (V2_SIGNATURE, True),
    ):
        server, client = await _pair()
        try:
            client.send(data)
            assert await asyncio.wait_for(peek_untrusted(loop, server), 2) is verdict
            assert server.recv(100) == data
        finally:
            server.close()
            client.close()
    server, client = await _pair()
    try:
        client.send(b"PRO")  # a prefix: decided once more bytes come
        task = asyncio.ensure_future(peek_untrusted(loop, server))
        await asyncio.sleep(0.03)
        assert not task.done()
        client.send(b"PFIND / HTTP/1.1\r\n")
        assert await asyncio.wait_for(task, 2) is False
    finally:
        server.close()
        client.close()
