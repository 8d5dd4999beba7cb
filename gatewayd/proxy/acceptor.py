"""Fair accepting on a listening socket shared by several worker processes.

With ``--workers N`` every worker accepts on the one socket the supervisor bound
(``gatewayd/workers.py``; no SO_REUSEPORT, so no other process can join the port).  An
asyncio server on that socket (libuv's) accepts every queued connection each time its
worker wakes, until the queue is empty: 64 connections opened at once all went to one
worker at times (measured with 2 workers: 64/0, 63/1, 12/52; 100 at once: 96/4, 1/99;
``loadtest/accept_split.py``), so a load test opening its connections together could
keep one worker busy and the other idle.

``SharedAcceptor`` does what nginx does without ``multi_accept``: each worker watches
the listening descriptor itself and accepts at most ``ACCEPT_BATCH`` (one) connection
per wake-up, then goes back to its event loop.  Every worker is woken for a new
connection (level-triggered poll on the same socket), each takes one, and the rest stay
queued for whichever worker asks next.  A worker whose loop is busy serving comes back
later and so takes fewer: the split follows the load.  Each accepted socket is handed
to the loop (``connect_accepted_socket``) with the same protocol factory, TLS context
and handshake timeout an asyncio server of the port would use, so everything after the
accept (``--max-connections``, TLS termination and its errors, TLSRoute's ClientHello
and access log) is unchanged.

Leaving the accept to whichever worker runs first is fair only while every worker gets
a core when a burst arrives; on a loaded machine one worker still took 63 of 64 at
times.  So the workers also balance by open connections, as Envoy's exact connection
balancer does: each publishes how many connections it holds in a small array the
supervisor shares with all of them (``Balance``), and a worker holding ``SLACK`` more
than the least-loaded one leaves the queue to the others for a moment.  A worker that
does not take connections meanwhile (busy, or stuck) is not waited for again until its
count moves (``MAX_WAIT``): the balance never stops accepting, it only orders it.

The price: accepting in Python costs more than libuv's C accept loop, about 18 us of
CPU per new connection in one process and 30 us per connection with two workers
(every worker is woken for every connection; the losers find the queue empty).  A
connection-per-request benchmark of local 404s went from ~14,000 to ~10,000
connections/s with 2 workers on 2 cores; keep-alive traffic does not pay it.

One process owning its socket (``--workers 1``, ``--tproxy``, tests) keeps the asyncio
server: nobody shares its queue, and libuv's accept loop is the fastest there is.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, MutableSequence
from typing import Final

from gatewayd.proxy.proxyproto import (
    Network,
    ProxyHeaderError,
    peek_untrusted,
    read_proxy_header,
    trusted,
)

log = logging.getLogger("gatewayd.proxy.acceptor")

# Connections accepted per wake-up.  Measured with 2 workers on 2 cores
# (loadtest/accept_split.py): batches of 4 accepted short connections no faster than 1
# (8,700-9,100/s against 10,100/s: the cost is per connection, not per wake-up) and
# split bursts less evenly (20/44 at worst against 31/33).
ACCEPT_BATCH: Final = 1

# accept() errors that concern one connection only (it was reset while queued, or a
# signal came): the next one is tried.
_SKIP: Final = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
# Any other error (out of descriptors or memory: EMFILE, ENFILE, ENOBUFS, ENOMEM) leaves
# the listening socket readable, so watching it would fail again at once, forever.
# Stop watching it this long (asyncio's servers wait 1 s; the other workers, if they
# can, accept meanwhile).
RESOURCE_PAUSE: Final = 0.1

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

# A worker holding this many connections more than the least-loaded worker leaves new
# ones to the others.  Small, so that a burst of 64 splits within a few connections;
# above 1, so that two idle workers do not hand every connection back and forth.
SLACK: Final = 4
# How long the connection queue is left to the other workers before checking again,
# and how long they may leave it untouched (their counts not moving) before this worker
# takes it anyway: they are busy, or stuck, and the queue must not wait for them.
# MAX_WAIT is about one scheduler period of a loaded 2-core machine (CFS: 6 ms times
# 1 + log2(CPUs)); with 10 ms, a burst arriving while a CPU hog ran still went 42/22.
DEFER: Final = 0.001
MAX_WAIT: Final = 0.02
# The count of a worker that does not accept (not started, exited, draining): never the
# least loaded.
NOT_ACCEPTING: Final = 1 << 30


class Balance:
    """This worker's view of every worker's open connections (``counts``: one C int per
    worker in memory shared by all of them; the supervisor sets a slot to
    ``NOT_ACCEPTING`` while its worker is not serving).  Reading N ints and writing one
    per wake-up costs well under a microsecond."""

    __slots__ = ("counts", "index", "others", "since")

    def __init__(self, counts: MutableSequence[int], index: int) -> None:
        self.counts = counts
        self.index = index
        self.others = -1  # the other workers' total when last looked at
        self.since = 0.0  # since when it has not moved

    def publish(self, mine: int) -> None:
        self.counts[self.index] = mine

    def stop(self) -> None:
        self.counts[self.index] = NOT_ACCEPTING

    def my_turn(self, mine: int, now: float) -> bool:
        """Publish ``mine``; whether this worker should accept the next connection."""
        counts = self.counts
        counts[self.index] = mine
        if mine - min(counts) < SLACK:
            return True
        # Another worker holds fewer: leave it the queue while it is taking connections.
        others = sum(counts) - mine
        if others != self.others:
            self.others = others
            self.since = now
            return False
        return now - self.since >= MAX_WAIT


class SharedAcceptor:
    """Accepts on one listening socket, ``ACCEPT_BATCH`` connections per wake-up.

    Offers what ``Proxy`` uses of an asyncio server: ``close()``, which stops accepting
    at once (the socket's other descriptors, in the supervisor and the other workers,
    keep it listening).  Owns ``sock`` (a descriptor of its own) and closes it.
    ``tasks`` keeps every handshake task until it ends (the owner cancels what is left
    when it closes)."""

    __slots__ = (
        "balance",
        "factory",
        "fd",
        "handshake_timeout",
        "load",
        "loop",
        "on_refused",
        "paused",
        "proxy_protocol",
        "proxy_timeout",
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
        balance: Balance | None = None,
        load: Callable[[], int] = int,
        proxy_protocol: tuple[Network, ...] | None = None,
        proxy_timeout: float = 15.0,
        on_refused: Callable[[str, str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        self.tasks = tasks
        self.ssl = ssl_context
        self.handshake_timeout = handshake_timeout if ssl_context is not None else None
        self.paused: asyncio.TimerHandle | None = None
        # ``load()``: this worker's open connections, for ``balance``.
        self.balance = balance
        self.load = load
        # PROXY protocol (``proxy/proxyproto.py``): the sources trusted to send a
        # header; None: the port does not read one.  ``on_refused(peer, reason)``
        # reports a connection closed for its header.
        self.proxy_protocol = proxy_protocol
        self.proxy_timeout = proxy_timeout
        self.on_refused = on_refused
        if balance is not None:
            balance.publish(load())
        sock.setblocking(False)
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        balance = self.balance
        if balance is not None and not balance.my_turn(self.load(), time.monotonic()):
            self._pause(DEFER)
            return
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as exc:
                if exc.errno in _SKIP:
                    continue
                log.error(
                    "accepting on %s failed: %s; retrying in %.1fs",
                    _name(self.sock),
                    exc.strerror or exc,
                    RESOURCE_PAUSE,
                )
                self._pause(RESOURCE_PAUSE)
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        # The loop makes the descriptor non-blocking itself (libuv's uv_tcp_open), and
        # sets TCP_NODELAY as its servers do.
        task = self.loop.create_task(self._connect(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        factory = self.factory
        if self.proxy_protocol is not None:
            try:
                factory = await self._proxy_header(conn)
            except asyncio.CancelledError:
                conn.close()
                raise
            if factory is None:
                conn.close()
                return
        try:
            await self.loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self.ssl,
                ssl_handshake_timeout=self.handshake_timeout,
            )
        except (OSError, TimeoutError):
            # A failed or timed-out TLS handshake (counted and reported by the port's
            # PortTLS), or a client gone before the loop took the socket: an asyncio
            # server drops these silently too.  ``conn.close()`` closes the descriptor
            # only if no transport took it (a transport holds an I/O reference on the
            # socket object and detaches it when it closes).
            conn.close()
        except asyncio.CancelledError:
            conn.close()  # the proxy closed while the handshake was running
            raise
        except Exception:
            log.exception("serving an accepted connection failed")
            conn.close()

    async def _proxy_header(self, conn: socket.socket) -> ProtocolFactory | None:
        """The protocol factory for ``conn`` after its PROXY header (or, from an
        untrusted source, after checking that it sent none); None: refuse it."""
        networks = self.proxy_protocol
        assert networks is not None
        try:
            peer = conn.getpeername()
        except OSError:
            return None  # gone already
        peer_ip = str(peer[0])
        conn.setblocking(False)
        reason = ""
        try:
            if trusted(networks, peer_ip):
                header = await asyncio.wait_for(
                    read_proxy_header(self.loop, conn), self.proxy_timeout
                )
                source = header.source
                if source is None:  # LOCAL or UNKNOWN: the peer speaks for itself
                    return self.factory
                return _with_client(self.factory, source)
            if await asyncio.wait_for(peek_untrusted(self.loop, conn), self.proxy_timeout):
                reason = "PROXY header from an untrusted source"
            else:
                return self.factory
        except TimeoutError:
            reason = "no PROXY header in time"
        except ProxyHeaderError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"connection failed: {exc.strerror or exc}"
        if self.on_refused is not None:
            self.on_refused(peer_ip, reason)
        return None

    def _pause(self, seconds: float) -> None:
        # Not watching the socket: it stays readable, so watching would spin.
        self.loop.remove_reader(self.fd)
        self.paused = self.loop.call_later(seconds, self._resume)

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


def _with_client(factory: ProtocolFactory, client: tuple[str, int]) -> ProtocolFactory:
    """``factory`` whose protocols take ``client`` (a PROXY header's source) as the
    client address instead of the socket's peer (``client_address``)."""

    def make() -> asyncio.BaseProtocol:
        protocol = factory()
        protocol.client_address = client  # type: ignore[attr-defined]
        return protocol

    return make


def _name(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
    except OSError:
        return "a listening socket"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
