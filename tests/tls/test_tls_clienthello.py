from __future__ import annotations

import contextlib
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.tls.clienthello import (
    MAX_CLIENT_HELLO,
    NEED_MORE,
    ClientHello,
    InvalidClientHello,
    NeedMore,
    parse_client_hello,
)

# --------------------------------------------------------------------------- real hellos


def real_hello(
    server_hostname: str | None,
    alpn: list[str] | None = None,
    *,
    max_version: ssl.TLSVersion | None = None,
) -> bytes:
    """The first flight of Python's ssl client: one ClientHello in TLS records."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    data = outgoing.read()
    assert data[0] == 22
    return data


def handshake_payload(records: bytes) -> tuple[bytes, bytes]:
    """(record header version bytes, concatenated handshake payload) of TLS records."""
    out = b""
    pos = 0
    version = records[1:3]
    while pos < len(records):
        assert records[pos] == 22
        (length,) = struct.unpack(">H", records[pos + 3 : pos + 5])
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return version, out


def as_records(payload: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """Wrap ``payload`` in handshake records of the given fragment sizes (cycled)."""
    out = b""
    pos = 0
    i = 0
    while pos < len(payload):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(payload)
        frag = payload[pos : pos + n]
        out += bytes([22]) + version + struct.pack(">H", len(frag)) + frag
        pos += len(frag)
        i += 1
    return out


HELLO = real_hello("www.Example.com", ["h2", "http/1.1"])
HELLO_RESULT = parse_client_hello(HELLO)


def test_real_hello_whole() -> None:
    assert (
        ClientHello(
            sni="www.example.com",
            alpn=("h2", "http/1.1"),
            legacy_version=0x0303,
            supported_versions=(0x0304, 0x0303),
        )
        == HELLO_RESULT
    )


def test_real_hello_without_sni() -> None:
    result = parse_client_hello(real_hello(None))
    assert isinstance(result, ClientHello)
    assert result.sni is None
    assert result.alpn == ()


def test_ip_address_hostname_sends_no_sni() -> None:
    # RFC 6066: literal IP addresses are not permitted in HostName; ssl omits SNI.
    result = parse_client_hello(real_hello("127.0.0.1"))
    assert isinstance(result, ClientHello)
    assert result.sni is None


def test_tls12_only_client_has_no_supported_versions() -> None:
    result = parse_client_hello(real_hello("a.example", max_version=ssl.TLSVersion.TLSv1_2))
    assert isinstance(result, ClientHello)
    assert result.sni == "a.example"
    assert result.legacy_version == 0x0303
    assert result.supported_versions == ()


def test_byte_by_byte_needs_more_until_complete() -> None:
    for n in range(len(HELLO)):
        assert parse_client_hello(HELLO[:n]) is NEED_MORE, n
    assert parse_client_hello(HELLO) == HELLO_RESULT


def test_need_more_is_a_singleton() -> None:
    assert NeedMore() is NEED_MORE
    assert repr(NEED_MORE) == "NEED_MORE"


@pytest.mark.parametrize("sizes", [[1], [2, 3], [100], [7, 300, 1], [16384]])
def test_hello_fragmented_over_records(sizes: list[int]) -> None:
    version, payload = handshake_payload(HELLO)
    data = as_records(payload, sizes, version)
    assert data != HELLO or sizes == [16384]
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is NEED_MORE
    assert parse_client_hello(data) == HELLO_RESULT


def test_bytes_after_the_hello_are_ignored() -> None:
    # What follows (e.g. TLS 1.3 early data records) is not the parser's business.
    assert parse_client_hello(HELLO + b"\x17\x03\x03\x00\x01x") == HELLO_RESULT
    assert parse_client_hello(bytearray(HELLO)) == HELLO_RESULT


# --------------------------------------------------------------------------- invalid


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /x HTTP/1.1\r\n", b"G", b"PRI * HTTP/2.0"],
)
def test_plain_http_is_invalid_and_flagged(data: bytes) -> None:
    with pytest.raises(InvalidClientHello, match="plain HTTP") as info:
        parse_client_hello(data)
    assert info.value.plain_http


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00\x00\x00\x00", "first byte is 0x00"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", "first byte is 0x53"),
        (b"\x80\x2e\x01\x00\x02", "SSL 2.0"),
        (b"\x16\x02", "version major 2"),
        (b"\x16\x03\x01\x00\x00", "empty TLS handshake record"),
        (b"\x16\x03\x01\x40\x01", "16385 bytes long"),
        (b"\x16\x03\x03\x00\x04\x02\x00\x00\x26", "type 2, not ClientHello"),
        (b"\x15\x03\x03\x00\x02\x02\x28", "first byte is 0x15"),
    ],
)
def test_garbage_is_invalid(data: bytes, message: str) -> None:
    with pytest.raises(InvalidClientHello, match=message) as info:
        parse_client_hello(data)
    assert not info.value.plain_http


def test_oversized_hello_is_refused_from_its_header() -> None:
    header = bytes([1]) + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(InvalidClientHello, match="at most 65536"):
        parse_client_hello(as_records(header + b"\x03\x03", [100]))
    # ... while exactly the limit is still a NEED_MORE
    header = bytes([1]) + MAX_CLIENT_HELLO.to_bytes(3, "big")
    assert parse_client_hello(as_records(header + b"\x03\x03", [100])) is NEED_MORE


def test_other_record_type_interleaved_is_invalid() -> None:
    version, payload = handshake_payload(HELLO)
    first = as_records(payload[:50], [50], version)
    alert = b"\x15\x03\x03\x00\x02\x01\x00"
    with pytest.raises(InvalidClientHello, match="content type 21 at offset 55"):
        parse_client_hello(first + alert)


# --------------------------------------------------------------------------- hand-made


def _vec(n: int, body: bytes) -> bytes:
    return len(body).to_bytes(n, "big") + body


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack(">H", ext_type) + _vec(2, body)


def sni(*names: tuple[int, bytes]) -> bytes:
    return ext(0, _vec(2, b"".join(bytes([t]) + _vec(2, n) for t, n in names)))


def hello_message(
    extensions: list[bytes] | None,
    *,
    version: int = 0x0303,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    trailer: bytes = b"",
) -> bytes:
    body = (
        struct.pack(">H", version)
        + bytes(32)
        + _vec(1, session_id)
        + _vec(2, suites)
        + _vec(1, compression)
    )
    if extensions is not None:
        body += _vec(2, b"".join(extensions))
    body += trailer
    return bytes([1]) + len(body).to_bytes(3, "big") + body


def parse_message(msg: bytes) -> ClientHello:
    result = parse_client_hello(as_records(msg, [16384]))
    assert isinstance(result, ClientHello)
    return result


def test_hello_without_extensions() -> None:
    result = parse_message(hello_message(None, version=0x0301))
    assert result == ClientHello(sni=None, alpn=(), legacy_version=0x0301, supported_versions=())


def test_sni_trailing_dot_dropped_and_lower_cased() -> None:
    assert parse_message(hello_message([sni((0, b"API.Example.COM."))])).sni == "api.example.com"


def test_unknown_sni_name_type_is_skipped() -> None:
    result = parse_message(hello_message([sni((7, b"\xff\xfe"), (0, b"a.example"))]))
    assert result.sni == "a.example"


def test_grease_removed_from_supported_versions_and_unknown_extensions_skipped() -> None:
    versions = ext(43, _vec(1, b"\x7a\x7a\x03\x04\x03\x03"))
    grease_ext = ext(0x0A0A, b"")
    result = parse_message(hello_message([grease_ext, versions, ext(16, _vec(2, b"\x02h2"))]))
    assert result.supported_versions == (0x0304, 0x0303)
    assert result.alpn == ("h2",)


@pytest.mark.parametrize(
    ("extensions", "message"),
    [
        ([sni((0, b"bad_name!.com"))], "not a valid DNS name"),
        ([sni((0, b"-lead.example"))], "not a valid DNS name"),
        ([sni((0, b"a..b"))], "empty or over-long"),
        ([sni((0, b"x" * 64 + b".com"))], "empty or over-long"),
        ([sni((0, (b"a" * 60 + b".") * 5))], "at most 253"),
        ([sni((0, b""))], "host_name is empty"),
        ([sni((0, b"\xc3\xa9.example"))], "not a valid DNS name"),
        ([sni((0, b"a.example"), (0, b"b.example"))], "name type 0 twice"),
        ([sni((0, b"a.example")), sni((0, b"a.example"))], "extension 0 appears twice"),
        ([ext(16, _vec(2, b""))], "ALPN extension lists no protocol"),
        ([ext(16, _vec(2, b"\x00"))], "empty ALPN protocol name"),
        ([ext(16, _vec(2, b"\x05h2"))], "truncated|overruns"),
        ([ext(43, _vec(1, b"\x03"))], "supported_versions"),
        ([ext(43, b"")], "truncated in supported_versions"),
        ([ext(0, b"\x00\x10\x00")], "overruns"),
    ],
)
def test_malformed_extensions(extensions: list[bytes], message: str) -> None:
    with pytest.raises(InvalidClientHello, match=message):
        parse_message(hello_message(extensions))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": 0x0200}, "legacy_version 0x0200"),
        ({"session_id": bytes(33)}, "longer than 32"),
        ({"suites": b""}, "at least one 2-byte suite"),
        ({"suites": b"\x13"}, "at least one 2-byte suite"),
        ({"compression": b""}, "compression_methods is empty"),
        ({"trailer": b"\x00"}, "stray bytes"),
    ],
)
def test_malformed_body(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidClientHello, match=message):
        parse_message(hello_message([], **kwargs))  # type: ignore[arg-type]


def test_truncated_body_inside_a_complete_message() -> None:
    msg = hello_message([])
    body = msg[4:20]  # declares 16 bytes: random is cut short
    with pytest.raises(InvalidClientHello, match="truncated in random"):
        parse_message(bytes([1]) + len(body).to_bytes(3, "big") + body)


# --------------------------------------------------------------------------- properties


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=20), st.data())
@settings(max_examples=60)
def test_any_record_split_and_read_split(sizes: list[int], data: st.DataObject) -> None:
    version, payload = handshake_payload(HELLO)
    wire = as_records(payload, sizes, version)
    cuts = sorted(
        data.draw(st.sets(st.integers(min_value=0, max_value=len(wire) - 1), max_size=30))
    )
    # the caller accumulates reads: every proper prefix is NEED_MORE
    for cut in cuts:
        assert parse_client_hello(wire[:cut]) is NEED_MORE
    assert parse_client_hello(wire) == HELLO_RESULT


@given(st.binary(max_size=600))
@settings(max_examples=300)
def test_random_bytes_only_raise_invalid(data: bytes) -> None:
    for candidate in (data, b"\x16\x03\x01" + data, b"\x16\x03\x01\x02\x00\x01" + data):
        with contextlib.suppress(InvalidClientHello):
            parse_client_hello(candidate)


@given(st.integers(min_value=0, max_value=len(HELLO) - 1), st.integers(0, 255), st.data())
@settings(max_examples=300)
def test_mutated_real_hello_only_raises_invalid(pos: int, value: int, data: st.DataObject) -> None:
    mutated = bytearray(HELLO)
    mutated[pos] = value
    end = data.draw(st.integers(min_value=0, max_value=len(mutated)))
    try:
        result = parse_client_hello(bytes(mutated[:end]))
    except InvalidClientHello:
        return
    assert isinstance(result, ClientHello | NeedMore)
