"""Listening sockets, bound once per (address, port) and owned by one process.

A port is never shared with another process: sockets are bound without SO_REUSEPORT,
so a second gatewayd (or anything else) on the same port gets EADDRINUSE, reported as
that listener's bind failure, instead of silently taking a share of the connections.
With ``--workers N`` the supervisor binds each port once and hands the same socket to
every worker (``gatewayd/workers.py``); one worker, ``--tproxy`` and tests bind here in
the serving process.

A ``ListeningSockets`` keeps the bound socket of every port it serves; each asyncio
server gets a ``dup()`` of it (uvloop closes the socket it is given when the server
closes), so a server closed and opened again on the same port (an HTTP port turning
HTTPS) keeps the very same socket and its accept queue: nothing is bound twice.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

ListenKey = tuple[str, int]

# Accept queue of every listening socket (the kernel caps it at net.core.somaxconn).
BACKLOG = 1024


class NotHanded(OSError):
    """A worker was not given a socket for this port: the supervisor could not bind it
    and reports why itself."""


def bind_listener(address: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on ``address:port``.

    SO_REUSEADDR only lets the port be bound again while old connections sit in
    TIME_WAIT; SO_REUSEPORT is never set: with it a second process of the same user
    joins the port and the kernel hands it part of the connections.  ``listen()`` right
    away, because two SO_REUSEADDR sockets may both bind a port while neither listens."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ListeningSockets:
    """The listening socket of each port this process serves.

    ``binds=True``: ``open`` binds a port on first use (one process serves).
    ``binds=False``: sockets arrive with ``put`` (a worker: the supervisor binds)."""

    __slots__ = ("binds", "sockets")

    def __init__(self, *, binds: bool = True) -> None:
        self.binds = binds
        self.sockets: dict[ListenKey, socket.socket] = {}

    def open(self, key: ListenKey) -> socket.socket:
        """A new descriptor of ``key``'s listening socket, for one asyncio server."""
        sock = self.sockets.get(key)
        if sock is None:
            if not self.binds:
                raise NotHanded(errno.EADDRNOTAVAIL, "not bound by the supervisor")
            sock = self.sockets[key] = bind_listener(*key)
        return sock.dup()

    def put(self, key: ListenKey, sock: socket.socket) -> None:
        """Take ``sock`` as ``key``'s socket (a worker: handed by the supervisor)."""
        old = self.sockets.pop(key, None)
        if old is not None:
            old.close()
        sock.setblocking(False)
        self.sockets[key] = sock

    def retain(self, keys: Iterable[ListenKey]) -> None:
        """Close the sockets of every port not in ``keys``."""
        keep = set(keys)
        for key in [k for k in self.sockets if k not in keep]:
            self.sockets.pop(key).close()

    def close(self) -> None:
        self.retain(())

    @property
    def shared(self) -> bool:
        """Whether other processes accept on these sockets too (the supervisor handed
        them to every worker), so accepting must leave them their share."""
        return not self.binds

    def keys(self) -> set[ListenKey]:
        return set(self.sockets)
