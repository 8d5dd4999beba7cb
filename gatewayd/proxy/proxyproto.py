"""PROXY protocol (HAProxy's, versions 1 and 2): the client address a load balancer in
front of gatewayd saw, sent as the first bytes of each connection.

Downstream (``--proxy-protocol``): on a port where it is enabled, a connection from a
trusted source (a CIDR the operator named) must start with a v1 or v2 header; its source
address then stands for the client everywhere the peer address is used
(X-Forwarded-For, X-Envoy-External-Address, the access log, TLSRoute's
``downstream_remote_address``).  A connection from any other source is served as a
direct client, but one that starts with a PROXY header is refused: a client must not be
able to claim an address.  The header is read off the socket before the loop's
transport exists (``read_proxy_header``), byte-exact, so TLS termination and HTTP/2
detection see the stream exactly as if no header had been sent.

Upstream: TLS passthrough (and TCP) backends whose Service asks for it get a v1 or v2
header naming the client and the listener address (``encode_v1``/``encode_v2``).

Bounds: a v1 header is at most 107 bytes (the specification's own limit); a v2 header
at most ``MAX_V2_BYTES`` (its TLVs are skipped, not kept); the whole header must arrive
within the timeout, else the connection is closed.  Nothing is allocated beyond those.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Final

V1_PREFIX: Final = b"PROXY "
V1_MAX_BYTES: Final = 107  # "PROXY TCP6 <39> <39> <5> <5>\r\n", the specification's bound
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED: Final = 16  # signature, version/command, family/transport, length
# v2 address blocks are 12 (IPv4), 36 (IPv6) or 216 (unix) bytes; the rest is TLVs
# (AWS, Azure and GCP send a few dozen bytes of them).  Envoy reads up to 64 KiB;
# 4 KiB is far above anything a load balancer sends and keeps each connection small.
MAX_V2_BYTES: Final = V2_FIXED + 4096
# Waiting for a header (Envoy's listener_filters_timeout, 15 s).
DEFAULT_TIMEOUT: Final = 15.0
# Peeking at an untrusted client's first bytes that are still a prefix of a signature:
# polled (the bytes stay unread, so the socket stays readable), at most this often.
_PREFIX_POLL: Final = 0.005


class ProxyHeaderError(ValueError):
    """Not a valid PROXY protocol header; ``str()`` says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header.  ``source``/``destination`` are (ip, port) of a proxied TCP
    connection, None for LOCAL (the load balancer's own health check) and
    UNKNOWN/UNSPEC (the receiver uses the real peer address)."""

    version: int
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int  # bytes of the header on the wire


def header_length(buf: bytes) -> int | None:
    """The header's length on the wire once ``buf`` (its first bytes) tells it, else
    None (more bytes are needed).  Raises ``ProxyHeaderError`` as soon as ``buf`` cannot
    start a header."""
    if buf[:1] == b"P":
        if not V1_PREFIX.startswith(buf[:6]):
            raise ProxyHeaderError("not a PROXY protocol header")
        end = buf.find(b"\n", 0, V1_MAX_BYTES)
        if end >= 0:
            return end + 1
        if len(buf) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX_BYTES} bytes")
        return None
    if buf[:1] == b"\r":
        if not V2_SIGNATURE.startswith(buf[:12]):
            raise ProxyHeaderError("not a PROXY protocol header")
        if len(buf) < V2_FIXED:
            return None
        total = V2_FIXED + int.from_bytes(buf[14:16], "big")
        if total > MAX_V2_BYTES:
            raise ProxyHeaderError(f"v2 header of {total} bytes (limit {MAX_V2_BYTES})")
        return total
    if not buf:
        return None
    raise ProxyHeaderError("not a PROXY protocol header")


def starts_like_header(buf: bytes) -> bool | None:
    """Whether an untrusted client's first bytes are a PROXY header: True, False, or
    None while ``buf`` is still a strict prefix of a signature."""
    for signature in (V1_PREFIX, V2_SIGNATURE):
        n = min(len(buf), len(signature))
        if n and buf[:n] == signature[:n]:
            return True if n == len(signature) else None
    return False if buf else None


def parse_header(data: bytes) -> ProxyHeader:
    """Parse one complete header (``header_length(data) == len(data)``)."""
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    raise ProxyHeaderError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader:
    if not data.endswith(b"\r\n"):
        raise ProxyHeaderError("v1 header does not end with CRLF")
    try:
        text = data[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    fields = text.split(" ")
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found"
        return ProxyHeader(1, None, None, len(data))
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header needs: PROXY TCP4|TCP6 src dst sport dport")
    version = 4 if fields[1] == "TCP4" else 6
    src = _v1_address(fields[2], version)
    dst = _v1_address(fields[3], version)
    sport = _v1_port(fields[4])
    dport = _v1_port(fields[5])
    return ProxyHeader(1, (src, sport), (dst, dport), len(data))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"v1 header: {text!r} is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError(f"v1 header: {text!r} is not an IPv{version} address")
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else str(address)


def _v1_port(text: str) -> int:
    # Decimal without leading zeros or signs, 0-65535.
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"v1 header: bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"v1 header: bad port {text!r}")
    return port


def _parse_v2(data: bytes) -> ProxyHeader:
    if len(data) < V2_FIXED:
        raise ProxyHeaderError("v2 header shorter than 16 bytes")
    ver_cmd, fam = data[12], data[13]
    length = int.from_bytes(data[14:16], "big")
    if len(data) != V2_FIXED + length:
        raise ProxyHeaderError("v2 header length does not match its bytes")
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 header: version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command == 0:  # LOCAL: the proxy's own connection (health check)
        return ProxyHeader(2, None, None, len(data))
    if command != 1:
        raise ProxyHeaderError(f"v2 header: unknown command {command}")
    family, transport = fam >> 4, fam & 0x0F
    body = data[V2_FIXED:]
    if family == 0 or transport not in (1, 2):
        # UNSPEC (or a transport other than STREAM/DGRAM): keep the real peer address.
        return ProxyHeader(2, None, None, len(data))
    if family == 1:  # AF_INET
        if length < 12:
            raise ProxyHeaderError("v2 header: IPv4 address block too short")
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack_from("!HH", body, 8)
    elif family == 2:  # AF_INET6
        if length < 36:
            raise ProxyHeaderError("v2 header: IPv6 address block too short")
        src = _v6_text(body[0:16])
        dst = _v6_text(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
    elif family == 3:  # AF_UNIX: no IP address to use
        return ProxyHeader(2, None, None, len(data))
    else:
        raise ProxyHeaderError(f"v2 header: unknown address family {family}")
    return ProxyHeader(2, (src, sport), (dst, dport), len(data))


def _v6_text(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


# --------------------------------------------------------------------------- encode


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header for a TCP connection from ``source`` to ``destination`` (mixed
    families: both as IPv6, IPv4-mapped)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v2 header (command PROXY, STREAM) for a TCP connection, no TLVs."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    if src.version == 4:
        fam, block = 0x11, src.packed + dst.packed
    else:
        fam, block = 0x21, src.packed + dst.packed
    block += struct.pack("!HH", source[1], destination[1])
    return V2_SIGNATURE + bytes((0x21, fam)) + len(block).to_bytes(2, "big") + block


def upstream_header(version: int, client: object, local: object) -> bytes:
    """The header (``version`` 1 or 2) for an upstream connection carrying a client
    connection from ``client`` to ``local`` (socket addresses); v1 ``UNKNOWN`` or v2
    LOCAL when either address is not an IP one."""
    if (
        isinstance(client, tuple)
        and isinstance(local, tuple)
        and len(client) >= 2
        and len(local) >= 2
    ):
        source, destination = (str(client[0]), int(client[1])), (str(local[0]), int(local[1]))
        return encode_v1(source, destination) if version == 1 else encode_v2(source, destination)
    if version == 1:
        return b"PROXY UNKNOWN\r\n"
    return V2_SIGNATURE + b"\x20\x00\x00\x00"


def _as_v6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    if address.version == 6:
        return address  # type: ignore[return-value]
    return ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + address.packed)


# --------------------------------------------------------------------------- trust


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 192.168.1.7"`` -> networks (a bare address is a /32 or /128).
    Raises ValueError naming the bad entry."""
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR") from None
    if not networks:
        raise ValueError("no trusted source CIDR given")
    return tuple(networks)


def trusted(networks: tuple[Network, ...], ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address in net for net in networks)


# --------------------------------------------------------------------------- read


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def read_proxy_header(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ProxyHeader:
    """Read one header off a freshly accepted non-blocking socket, consuming exactly
    its bytes (never the client's data after it).  Only bytes that can only be header
    bytes are consumed before the end is known, so every wake-up makes progress (no
    busy loop on a level-triggered readable socket).  The caller bounds the time."""
    buf = b""
    fd = sock.fileno()
    while True:
        await _readable(loop, fd)
        limit = (V1_MAX_BYTES if buf[:1] != b"\r" else MAX_V2_BYTES) - len(buf)
        try:
            peek = sock.recv(max(limit, 1), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peek:
            raise ProxyHeaderError("connection closed before a complete PROXY header")
        seen = buf + peek
        total = header_length(seen)
        # Until the end is seen, every byte peeked is a header byte: a v1 header has
        # no LF yet, a v2 one is longer (or has fewer than its 16 fixed bytes).
        take = total - len(buf) if total is not None and len(seen) >= total else len(peek)
        got = sock.recv(take)
        buf += got
        if total is not None and len(buf) == total:
            return parse_header(buf)


async def peek_untrusted(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    """Whether an untrusted client's first bytes are a PROXY header (nothing is
    consumed).  A client that sends nothing is handed on as soon as it does; the caller
    bounds the time."""
    fd = sock.fileno()
    while True:
        await _readable(loop, fd)
        try:
            peek = sock.recv(len(V2_SIGNATURE), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peek:
            return False  # closed: let the protocol see it
        verdict = starts_like_header(peek)
        if verdict is not None:
            return verdict
        # A strict prefix of a signature ("PRO", "\r\n"): wait for more, polling,
        # since the bytes stay in the socket and it stays readable.
        await asyncio.sleep(_PREFIX_POLL)
