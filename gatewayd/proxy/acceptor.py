"""Fair accepting on a listening socket shared by several worker processes.

With ``--workers N`` every worker accepts on the one socket the supervisor bound
(``gatewayd/workers.py``; no SO_REUSEPORT, so no other process can join the port).  An
asyncio server on that socket (libuv's) accepts every queued connection each time its
worker wakes, until the queue is empty: 64 connections opened at once all went to one
worker (measured: 64/0, 1/63; 100 at once: 1/99 at best, see ``loadtest/accept_split.py``),
so a load test opening its connections together kept one worker busy and the other idle.

``SharedAcceptor`` does what nginx does without ``multi_accept``: each worker watches
the listening descriptor itself and accepts at most ``ACCEPT_BATCH`` connections per
wake-up, then goes back to its event loop.  Every worker is woken for a new connection
(level-triggered poll on the same socket), each takes a few, and the rest stay queued
for whichever worker asks next.  A worker whose loop is busy serving comes back later
and so takes fewer: the split follows the load.  Each accepted socket is handed to the
loop (``connect_accepted_socket``) with the same protocol factory, TLS context and
handshake timeout an asyncio server of the port would use, so everything after the
accept (``--max-connections``, TLS termination and its errors, TLSRoute's ClientHello
and access log) is unchanged.

One process owning its socket (``--workers 1``, ``--tproxy``, tests) keeps the asyncio
server: nobody shares its queue, and libuv's accept loop is the fastest there is.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Final

log = logging.getLogger("gatewayd.proxy.acceptor")

# Connections accepted per wake-up.  Measured with 2 workers on 2 cores
# (loadtest/accept_split.py): 1 splits 64 and 100 simultaneous connections evenly
# and accepts short connections as fast as libuv's accept-everything loop did.
ACCEPT_BATCH: Final = 1

# accept() errors that concern one connection only (it was reset while queued, or a
# signal came): the next one is tried.
_SKIP: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
# Out of descriptors or memory: the listening socket stays readable, so keep polling
# and every wake-up fails again.  Stop watching it for a moment (asyncio's servers wait
# 1 s; the other workers, if they can, accept meanwhile).
_RESOURCE: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
RESOURCE_PAUSE: Final = 0.1

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class SharedAcceptor:
    """Accepts on one listening socket, ``ACCEPT_BATCH`` connections per wake-up.

    Offers what ``Proxy`` uses of an asyncio server: ``close()``, which stops accepting
    at once (the socket's other descriptors, in the supervisor and the other workers,
    keep it listening).  Owns ``sock`` (a descriptor of its own) and closes it.
    ``tasks`` keeps every handshake task until it ends (the owner cancels what is left
    when it closes)."""

    __slots__ = (
        "factory",
        "fd",
        "handshake_timeout",
        "loop",
        "paused",
        "sock",
        "ssl",
        "tasks",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        factory: ProtocolFactory,
        tasks: set[asyncio.Task[None]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        handshake_timeout: float | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        self.tasks = tasks
        self.ssl = ssl_context
        self.handshake_timeout = handshake_timeout if ssl_context is not None else None
        self.paused: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as exc:
                if exc.errno in _SKIP:
                    continue
                self._pause(exc)
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        # The loop makes the descriptor non-blocking itself (libuv's uv_tcp_open), and
        # sets TCP_NODELAY as its servers do.
        task = self.loop.create_task(self._connect(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(
                self.factory,
                conn,
                ssl=self.ssl,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, TimeoutError):
            # A failed or timed-out TLS handshake (counted and reported by the port's
            # PortTLS), or a client gone before the loop took the socket: an asyncio
            # server drops these silently too.  The loop closed the transport.
            conn.close()
        except asyncio.CancelledError:
            conn.close()  # the proxy closed while the handshake was running
            raise
        except Exception:
            log.exception("serving an accepted connection failed")
            conn.close()

    def _pause(self, exc: OSError) -> None:
        log.error(
            "accepting on %s failed: %s; retrying in %.1fs",
            _name(self.sock),
            exc.strerror or exc,
            RESOURCE_PAUSE,
        )
        self.loop.remove_reader(self.fd)
        self.paused = self.loop.call_later(RESOURCE_PAUSE, self._resume)

    def _resume(self) -> None:
        self.paused = None
        self.loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        """Stop accepting now; connections already accepted go on."""
        if self.sock.fileno() < 0:
            return
        if self.paused is not None:
            self.paused.cancel()
            self.paused = None
        else:
            self.loop.remove_reader(self.fd)
        self.sock.close()


def _name(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "a listening socket"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
