"""Sockets for node-local TPROXY mode: the transparent listener and marked upstreams.

A TPROXY rule hands a connection addressed to somewhere else (a ClusterIP, a Gateway
address) to a local listening socket without rewriting it: the accepted socket's local
address *is* the original destination, so ``getsockname()`` is all it takes to know
where the client was going.  The listener needs ``IP_TRANSPARENT`` (Linux
ip(7): "Setting this boolean option enables transparent proxying on this socket. [...]
the socket can be bound to a nonlocal IP address [...] and can accept connections
on it", CAP_NET_ADMIN required).

Every connection the proxy opens itself carries ``SO_MARK``: the ruleset returns early
for that mark, so the proxy's own traffic is never diverted back into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Final

# Linux values, for Pythons built without the constants.
IP_TRANSPARENT: Final = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT: Final = 75  # <linux/in6.h>
SO_MARK: Final = getattr(socket, "SO_MARK", 36)


def transparent_listener(family: socket.AddressFamily, port: int) -> socket.socket:
    """A non-blocking TCP socket with IP_TRANSPARENT bound to the wildcard address.

    The wildcard bind matters: TPROXY without an address looks the listener up on the
    incoming interface's address, which a wildcard socket covers.  Raises OSError
    (EPERM without CAP_NET_ADMIN; EAFNOSUPPORT where IPv6 is off)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            # IPv4-transparent too: the kernel checks the IPv4 flag on some v6 paths.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            sock.bind(("::", port))
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
            sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client was going: the accepted transparent socket's local address."""
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def marked_socket(family: socket.AddressFamily, mark: int) -> socket.socket:
    """A non-blocking TCP socket carrying SO_MARK ``mark`` (needs CAP_NET_ADMIN)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As a C unsigned int: marks above 0x7fffffff do not fit the int form.
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, struct.pack("=I", mark & 0xFFFFFFFF))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_marked(host: str, port: int, mark: int) -> socket.socket:
    """A connected, non-blocking, SO_MARKed socket to ``host:port`` (an IP or a name).
    Raises OSError; the caller bounds the time."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, _, _, _, address in infos:
        sock = marked_socket(family, mark)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last if last is not None else OSError(f"cannot resolve {host}")
