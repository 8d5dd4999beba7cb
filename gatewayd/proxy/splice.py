"""L4 splice: bytes from a client connection to an upstream connection and back, unchanged.

Used by the transparent listener (pass-through to an original destination) and by TLS
listeners (TLSRoute: the raw TLS stream in Passthrough mode, the decrypted stream in
Terminate mode, where the client "transport" is ``tlsroute.TLSServerLayer``'s).

Flow control: each side's write buffer has water marks; above the high mark the *other*
side stops being read (``pause_writing`` -> ``pause_reading``), below the low mark it is
read again, so a slow reader on either end never makes the proxy buffer more than about
one high-water mark per direction.  Half-close passes through: a client FIN becomes an
upstream FIN (``write_eof``) and the other direction keeps flowing.  A splice with no
bytes either way for the owner's TCP idle timeout is closed (``close_idle``).

The upstream side may speak TLS (a TLSRoute backend behind a Terminate listener that a
BackendTLSPolicy targets: ``connect(ssl_context=...)``); the loop's TLS transport has no
half-close, so a client FIN closes that connection with a close_notify instead.

For the access log each side counts the bytes it reads (one integer add per chunk):
``received`` from the client, ``sent`` to it; ``flags`` and ``details`` say why gatewayd
ended the splice, if it did (Envoy's UF on a failed connect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any, Final, cast

from gatewayd.proxy.http.h1_client import WRITE_HIGH, WRITE_LOW
from gatewayd.routing.snapshot.addresses import host_port

log = logging.getLogger("gatewayd.proxy.splice")

SPLICE_CONNECT_TIMEOUT: Final = 5.0


class _Side(asyncio.Protocol):
    """One side of a splice: bytes in are written to the other side."""

    __slots__ = ("eof", "nbytes", "pending", "splice", "tls", "transport", "upstream")

    def __init__(self, splice: Splice, upstream: bool) -> None:
        self.splice = splice
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        # A transport of the loop's TLS: it closes itself after eof_received (keeping it
        # open "has no effect when using ssl" and logs a warning).
        self.tls = False
        self.eof = False
        self.nbytes = 0  # bytes read on this side, for the access log
        # Client bytes that arrive before the upstream is connected (reading is paused
        # at once, but a transport may already hold a read), and bytes the caller read
        # before handing the connection over (a ClientHello).
        self.pending: list[bytes] | None = None

    def other(self) -> _Side:
        s = self.splice
        return s.down if self.upstream else s.up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.transport = t

    def data_received(self, data: bytes) -> None:
        self.nbytes += len(data)
        splice = self.splice
        splice.last_active = splice.loop.time()
        peer = self.other().transport
        if peer is None:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
        elif not peer.is_closing():
            peer.write(data)

    def eof_received(self) -> bool | None:
        # Half-close passes through: the other side gets our FIN and may keep talking.
        self.eof = True
        peer = self.other()
        if peer.transport is None:
            return True  # passed on once the upstream is connected
        if not peer.transport.is_closing():
            _send_eof(peer.transport)
        if peer.eof:
            self.splice.close()
            return None
        return None if self.tls else True

    # Flow control: a side whose write buffer is full stops the other side's reading.
    def pause_writing(self) -> None:
        peer = self.other().transport
        if peer is not None and not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.other().transport
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.splice.side_lost(self)


class Splice:
    """A client connection forwarded unchanged to an upstream address (L4).

    ``registry`` holds the open splices of the owner (for shutdown); ``on_done`` runs
    once, when both connections are gone or the splice is aborted.  ``tag`` is the
    owner's (e.g. the listening port), for selective shutdown.
    """

    __slots__ = (
        "details",
        "down",
        "flags",
        "last_active",
        "loop",
        "on_done",
        "registry",
        "tag",
        "up",
        "upstream_host",
    )

    def __init__(
        self,
        registry: set[Splice],
        client: asyncio.Transport,
        *,
        on_done: Callable[[], None] | None = None,
        tag: object = None,
    ) -> None:
        self.registry = registry
        self.on_done = on_done
        self.tag = tag
        self.loop = asyncio.get_running_loop()
        # Loop time of the last bytes read on either side (the idle timeout's clock).
        self.last_active = self.loop.time()
        self.down = _Side(self, upstream=False)
        self.down.transport = client
        client.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.up = _Side(self, upstream=True)
        # For the access log: Envoy's response flags and the reason gatewayd ended the
        # splice ("" for none), and the address the upstream side connects to.
        self.flags = ""
        self.details = ""
        self.upstream_host = ""
        registry.add(self)

    def hand_over(self, client: asyncio.Transport, already_read: bytes = b"") -> None:
        """Make the splice the client transport's protocol; ``already_read`` is sent
        upstream first.  Reading stops until the upstream is connected."""
        client.pause_reading()
        if already_read:
            self.down.pending = [already_read]
            self.down.nbytes += len(already_read)
        client.set_protocol(self.down)

    async def connect(
        self,
        address: str,
        port: int,
        *,
        mark: int | None = None,
        connect_timeout: float = SPLICE_CONNECT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> bool:
        """Connect the upstream side and start forwarding; False (and the client
        connection aborted) when the upstream cannot be reached.

        With ``ssl_context`` the upstream side is TLS (SNI ``server_hostname``); a failed
        handshake or certificate verification (``ssl.SSLError``, an OSError) is a failed
        connect, and the connect timeout bounds the handshake too."""
        loop = asyncio.get_running_loop()
        self.upstream_host = host_port(address, port)
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {"ssl": ssl_context, "server_hostname": server_hostname}
            self.up.tls = True
        try:
            async with asyncio.timeout(connect_timeout):
                if mark is not None:
                    from gatewayd.tproxy.sockets import connect_marked

                    sock = await connect_marked(address, port, mark)
                    await loop.create_connection(lambda: self.up, sock=sock, **tls)
                else:
                    await loop.create_connection(lambda: self.up, address, port, **tls)
        except (OSError, TimeoutError) as exc:
            log.debug("splice to %s:%d failed: %s", address, port, exc)
            self.fail_connect()
            return False
        except Exception:
            log.exception("splice to %s:%d failed", address, port)
            self.fail_connect()
            return False
        client = self.down.transport
        upstream = self.up.transport
        if client is None or client.is_closing() or upstream is None:
            self.close()
            return True
        pending, self.down.pending = self.down.pending, None
        if pending:
            upstream.writelines(pending)
        if self.down.eof:
            _send_eof(upstream)
        else:
            client.resume_reading()
        return True

    def fail_connect(self) -> None:
        """The upstream side cannot be connected: abort the client connection, flag UF."""
        # Set before abort(): on_done (which logs) runs inside it.
        self.flags = "UF"
        self.details = "upstream_connect_failure"
        self.abort()

    @property
    def received(self) -> int:
        """Bytes read from the client (those read before ``hand_over`` included)."""
        return self.down.nbytes

    @property
    def sent(self) -> int:
        """Bytes read from the upstream, i.e. written towards the client."""
        return self.up.nbytes

    def side_lost(self, side: _Side) -> None:
        other = self.up if side is self.down else self.down
        if other.transport is not None and not other.transport.is_closing():
            # The other direction may still have bytes to deliver: close, not abort.
            other.transport.close()
        if self.down.transport is None and self.up.transport is None:
            self._done()

    def close(self) -> None:
        for side in (self.down, self.up):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()

    def abort(self) -> None:
        for side in (self.down, self.up):
            if side.transport is not None:
                with contextlib.suppress(Exception):
                    side.transport.abort()
        self._done()

    def _done(self) -> None:
        if self in self.registry:
            self.registry.discard(self)
            on_done, self.on_done = self.on_done, None
            if on_done is not None:
                on_done()

    def buffered_bytes(self) -> int:
        total = 0
        for side in (self.down, self.up):
            t = side.transport
            if t is not None and not t.is_closing():
                total += t.get_write_buffer_size()
        return total


def _send_eof(transport: asyncio.Transport) -> None:
    """Pass a half-close on: a FIN, or, where the transport has none (TLS), a close."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


def close_idle(splices: set[Splice], now: float, idle_timeout: float) -> int:
    """Close the splices with no bytes either way for ``idle_timeout`` seconds (Envoy's
    tcp_proxy ``idle_timeout``); the number closed.  Called by the owner's periodic sweep."""
    if idle_timeout <= 0:
        return 0
    limit = now - idle_timeout
    idle = [s for s in splices if s.last_active <= limit]
    for splice in idle:
        log.debug("splice idle for %.0fs: closed", idle_timeout)
        splice.details = "idle_timeout"
        splice.close()
    return len(idle)
