"""TLS listeners (``protocol: TLS``) with TLSRoutes: route by SNI, then splice at L4.

Per accepted connection (``TLSRouteConnection``):

1. **ClientHello** -- bytes are buffered, without answering, until
   ``tls.clienthello.ClientHelloReader`` has a whole ClientHello (it may arrive in
   pieces and across several TLS records).  At most ``HELLO_MAX_BYTES`` are held, and
   the hello (plus, in Terminate mode, the handshake) must be done within
   ``HANDSHAKE_TIMEOUT``.  Garbage, a hello without SNI, or one that is too big or too
   slow: the connection is closed and no backend is contacted.
2. **Route** -- the port's ``SNITable`` of the *current* snapshot (read once, here)
   picks the listener by SNI (most specific listener hostname), then the TLSRoute
   (most specific effective hostname), then a backendRef by weight and an endpoint
   round robin.  No match: closed.
3. **Passthrough** listener -- the buffered bytes go to the backend first, then both
   directions are spliced unchanged (``splice.Splice``): the client talks TLS with the
   backend and sees the backend's certificate.
4. **Terminate** listener -- the bytes already read are fed to an ``ssl.SSLObject``
   over memory BIOs (``TLSServerLayer``), which completes the handshake with the
   listener's certificate; the decrypted stream is then spliced to the backend in
   plaintext, or over a new TLS connection when a BackendTLSPolicy targets the backend
   (re-encryption: the policy hostname as SNI, chain and hostname or subjectAltNames
   verified, the Gateway's client certificate if any, no ALPN; a failed verification is
   a failed connect and closes the client).  The loop's own TLS (``start_tls``) cannot
   be used towards the client: it would want to read the ClientHello we have already
   consumed.

5. **HTTPS listener** (a port with HTTPS and TLS listeners, feature
   GatewayHTTPSAndTLSPassthroughSamePort) -- when the server name selects one of the
   port's HTTPS listeners rather than a TLS one (exact hostname, then the longest
   wildcard, then no hostname, across both), the bytes read are fed to a
   ``TLSServerLayer`` over the port's ``PortTLS.base`` context (the HTTPS listeners'
   certificates and client validation), and after the handshake an ``HttpConnection``
   becomes the layer's app: HTTP routing, 421, keep-alive, access log and metrics are
   those of an HTTPS-only port.  Ports with HTTPS listeners only keep the loop's TLS.

A reload changes the table of *new* connections; open splices keep going.  Contexts are
built in the serving process from the PEM pairs in the snapshot (SSLContexts do not
pickle to worker processes) and cached by pairs and client validation, so a reload that
only changes routes reuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Final, cast

from gatewayd.proxy.accesslog import sockaddr_text
from gatewayd.proxy.proxyproto import upstream_header
from gatewayd.proxy.splice import Splice
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.table import SNITable, TLSListener
from gatewayd.tls.backend import BackendTLSSetupError
from gatewayd.tls.clienthello import (
    ClientHello,
    ClientHelloReader,
    InvalidClientHello,
    NeedMore,
)
from gatewayd.tls.context import load_chain_from_memory, server_context
from gatewayd.tls.terminate import handshake_reason

if TYPE_CHECKING:
    from gatewayd.proxy.server import Proxy
    from gatewayd.routing.snapshot.backends import BackendTLS
    from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
    from gatewayd.routing.snapshot.rules import CompiledBackend, TLSOptions
    from gatewayd.routing.snapshot.table import SNIMatch
    from gatewayd.tls.certs import CertificateInfo

log = logging.getLogger("gatewayd.proxy.tlsroute")

ListenKey = tuple[str, int]

TLS_PROTOCOL: Final = "TLS"
PASSTHROUGH: Final = "Passthrough"

# Bytes held while waiting for a complete ClientHello.  Real ones are a few hundred
# bytes, about 2 KiB with post-quantum key shares; 16 KiB is one full TLS record.
HELLO_MAX_BYTES: Final = 16 * 1024
# Seconds from accept to a complete ClientHello (and, Terminate, a finished handshake).
HANDSHAKE_TIMEOUT: Final = 10.0
# Plaintext read from the SSLObject per call.
READ_CHUNK: Final = 64 * 1024

# What became of a connection: the ``result`` label of gatewayd_tls_route_cx_total.
R_PASSTHROUGH: Final = "passthrough"
R_TERMINATE: Final = "terminate"
R_NO_SNI: Final = "no_sni"
R_NO_ROUTE: Final = "no_route"
R_BAD_HELLO: Final = "bad_client_hello"
R_TIMEOUT: Final = "timeout"
R_INVALID_BACKEND: Final = "invalid_backend"
R_NO_ENDPOINT: Final = "no_healthy_upstream"
R_CONNECT_FAIL: Final = "upstream_connect_failure"
R_BAD_CERT: Final = "bad_certificate"
R_HANDSHAKE: Final = "handshake_error"
R_OVERLOAD: Final = "overload"
R_SHUTDOWN: Final = "shutdown"

# Envoy's %RESPONSE_FLAGS% of a connection closed before its splice, by result; the
# result itself is logged as %CONNECTION_TERMINATION_DETAILS%.  A Terminate listener
# without a usable certificate is not served (its status says so): as no listener, NR.
FLAGS: Final = {
    R_NO_SNI: "NR",
    R_NO_ROUTE: "NR",
    R_BAD_CERT: "NR",
    R_BAD_HELLO: "DPE",
    R_HANDSHAKE: "DPE",
    R_TIMEOUT: "DPE",
    R_INVALID_BACKEND: "NC",
    R_NO_ENDPOINT: "UH",
    R_OVERLOAD: "UO",
}

# Connection phases.
P_HELLO: Final = 0
P_HANDSHAKE: Final = 1
P_SPLICED: Final = 2
P_CLOSED: Final = 3


# --------------------------------------------------------------------------- contexts


# What a Terminate listener's context is made of: its key pairs and frontend validation
# (client CA bundle, client_auth).  Listeners with equal keys share one context.
ContextKey = tuple[tuple["CertificateInfo", ...], bytes | None, str, "TLSOptions | None"]


def context_key(listener: TLSListener) -> ContextKey:
    return (
        listener.certificates,
        listener.client_ca_pem,
        listener.client_auth,
        listener.tls_options,
    )


class TLSContexts:
    """Server contexts of Terminate listeners, built once per distinct ``ContextKey``."""

    __slots__ = ("_by_key",)

    def __init__(self) -> None:
        self._by_key: dict[ContextKey, ssl.SSLContext | None] = {}

    def refresh(self, snapshot: Snapshot) -> None:
        """Build what ``snapshot`` needs (at apply, off the accept path); forget what it
        no longer uses."""
        wanted: dict[ContextKey, str] = {}
        for lp in snapshot.ports.values():
            table = sni_table(lp)
            if table is not None:
                for listener in table.listeners():
                    if listener.mode != PASSTHROUGH:
                        wanted.setdefault(
                            context_key(listener),
                            f"{lp.gateway_namespace}/{lp.gateway_name} listener {listener.name}",
                        )
        for key in list(self._by_key):
            if key not in wanted:
                del self._by_key[key]
        for key, who in wanted.items():
            if key not in self._by_key:
                self._by_key[key] = _build_context(key, who)

    def get(self, listener: TLSListener) -> ssl.SSLContext | None:
        key = context_key(listener)
        if key not in self._by_key:
            self._by_key[key] = _build_context(key, f"listener {listener.name}")
        return self._by_key[key]


def sni_table(lp: ListenerPort) -> SNITable | None:
    """The TLS listeners of a port: all of them, or those sharing it with HTTPS ones."""
    if lp.tls_table is not None:
        return lp.tls_table
    if lp.protocol == TLS_PROTOCOL and isinstance(lp.table, SNITable):
        return lp.table
    return None


def _build_context(key: ContextKey, who: str) -> ssl.SSLContext | None:
    """A server context presenting every pair (e.g. RSA and ECDSA, which OpenSSL keeps
    side by side) and asking for client certificates as frontend validation says; None,
    and one error line, when it cannot be built."""
    certs, client_ca_pem, client_auth, options = key
    if not certs:
        log.error(
            "%s: Terminate mode without a usable certificate (see the listener's status); "
            "its connections are closed",
            who,
        )
        return None
    try:
        # No ALPN: the decrypted bytes are spliced, not parsed as HTTP.
        ctx = server_context(
            certs[0],
            alpn=(),
            client_ca_pem=client_ca_pem,
            client_auth=client_auth,
            options=options,
        )
        for info in certs[1:]:
            load_chain_from_memory(ctx, info)
    except (ssl.SSLError, ValueError, OSError) as exc:
        names = "; ".join(
            f"{', '.join(c.dns_names) or '?'} (sha256 {c.fingerprint_sha256[:16]})" for c in certs
        )
        log.error(
            "%s: cannot terminate TLS with the certificate for %s: %s; fix the Secret's "
            "tls.crt/tls.key (connections to this listener are closed until then)",
            who,
            names,
            exc,
        )
        return None
    return ctx


# --------------------------------------------------------------------------- listener


class TLSRouteListener:
    """Everything TLS listeners own in one process: connections, splices, contexts."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.conns: set[TLSRouteConnection] = set()
        self.splices: set[Splice] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.contexts = TLSContexts()

    def connection(self, key: ListenKey, label: str) -> TLSRouteConnection:
        """The protocol of a connection accepted on a TLS listener port."""
        return TLSRouteConnection(self, key, label)

    def apply(self, snapshot: Snapshot) -> None:
        self.contexts.refresh(snapshot)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def shutdown_port(self, key: ListenKey) -> None:
        """The port is no longer served: close its connections (spliced bytes already
        written are still delivered)."""
        for conn in list(self.conns):
            if conn.key == key:
                conn.close()
        for splice in list(self.splices):
            if splice.tag == key:
                splice.close()

    def stop_accepting(self) -> None:
        """Draining: connections still reading a ClientHello are closed; splices go on
        until ``close``."""
        for conn in list(self.conns):
            conn.close()

    def busy(self) -> bool:
        return bool(self.conns or self.splices)

    async def close(self) -> None:
        for conn in list(self.conns):
            conn.abort()
        for splice in list(self.splices):
            splice.abort()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    def buffered_bytes(self) -> int:
        total = sum(len(c.hello.data) for c in self.conns)
        return total + sum(s.buffered_bytes() for s in self.splices)


# --------------------------------------------------------------------------- connection


class TLSRouteConnection(asyncio.Protocol):
    """One client connection on a TLS listener port, until it is spliced or closed."""

    __slots__ = (
        "backend",
        "client_address",
        "cluster",
        "counted",
        "hello",
        "https",
        "key",
        "label",
        "layer",
        "owner",
        "peer",
        "phase",
        "result",
        "route",
        "rx",
        "sni",
        "splice",
        "start",
        "timer",
        "transport",
        "upstream_counted",
        "upstream_host",
    )

    def __init__(self, owner: TLSRouteListener, key: ListenKey, label: str) -> None:
        self.owner = owner
        self.key = key
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.hello = ClientHelloReader(HELLO_MAX_BYTES)
        self.phase = P_HELLO
        self.timer: asyncio.TimerHandle | None = None
        self.layer: TLSServerLayer | None = None
        self.backend: CompiledBackend | None = None
        self.counted = False  # counted in n_conns and downstream_cx until _finish
        self.upstream_counted = False
        # For the access log line written when the connection ends.
        self.start = 0.0  # loop time at accept
        self.peer = ""
        # The client a trusted PROXY protocol header named (proxy/proxyproto.py).
        self.client_address: tuple[str, int] | None = None
        self.rx = 0  # bytes read before the hand-over (the ClientHello)
        self.sni = ""
        self.route = ""
        self.cluster = ""
        self.upstream_host = ""
        self.result = ""  # why it was closed before its splice (a metric result)
        self.splice: Splice | None = None
        # Handed to an HTTPS listener of the port: from then on the HTTP connection
        # counts, logs and reports like one accepted on an HTTPS-only port.
        self.https = False

    # ------------------------------------------------------------------ accept

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        t = cast(asyncio.Transport, transport)
        self.transport = t
        proxy = self.owner.proxy
        self.start = asyncio.get_running_loop().time()
        if proxy.access is not None or self.client_address is not None:
            self.peer = sockaddr_text(self.client_address or t.get_extra_info("peername"))
        if proxy.n_conns >= proxy.options.max_connections and not proxy.make_room():
            self.phase = P_CLOSED
            self._count(R_OVERLOAD)
            t.abort()
            self.result = R_OVERLOAD
            self._log()
            return
        proxy.n_conns += 1
        self.counted = True
        self.owner.conns.add(self)
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, 1)
        self.timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._timeout)

    # ------------------------------------------------------------------ ClientHello

    def data_received(self, data: bytes) -> None:
        if self.phase != P_HELLO:
            return
        self.rx += len(data)
        try:
            result = self.hello.feed(data)
        except InvalidClientHello as exc:
            self._refuse(R_BAD_HELLO, str(exc))
            return
        if not isinstance(result, NeedMore):
            self._route(result)

    def eof_received(self) -> bool | None:
        # The client gave up before its ClientHello was complete.
        self._refuse(R_BAD_HELLO, "connection closed before a complete ClientHello")
        return None

    def _timeout(self) -> None:
        self.timer = None
        if self.phase == P_HELLO:
            self._refuse(R_TIMEOUT, "no complete ClientHello in time")
        elif self.phase == P_HANDSHAKE:
            port_tls = self.owner.proxy.terminators.get(self.key) if self.https else None
            metrics = self.owner.proxy.metrics
            if port_tls is not None:
                port_tls.failed("timeout")  # an HTTPS listener's, under the port's label
            elif metrics is not None:
                metrics.tls_handshake_error(self.label, "timeout")
            self._refuse(R_TIMEOUT, "TLS handshake not finished in time", handshake=True)

    # ------------------------------------------------------------------ routing

    def _route(self, hello: ClientHello) -> None:
        # The snapshot is read once per connection, here.
        lp = self.owner.proxy.holder.current.ports.get(self.key)
        table = sni_table(lp) if lp is not None else None
        if table is not None and table.shared_with_https:
            # HTTPS and TLS listeners on one port: the listener the server name selects
            # decides, with the usual precedence across both (a ClientHello without SNI
            # only selects a listener without hostname, as on an HTTPS-only port).
            side = table.selects_tls(hello.sni or "")
            if side is False:
                self._https(hello.sni or "")
                return
            if side is None:
                self._refuse(
                    R_NO_ROUTE if hello.sni else R_NO_SNI,
                    f"no listener for server name {hello.sni or '(none)'!r}",
                )
                return
        if not hello.sni:
            # "Hostnames defines a set of SNI hostnames that should match against the SNI
            # attribute of TLS ClientHello message in TLS handshake." (TLSRouteSpec)  It
            # is the only thing a TLSRoute matches on: without SNI nothing can match.
            self._refuse(R_NO_SNI, "ClientHello without server_name")
            return
        self.sni = hello.sni
        found = table.lookup_tls(hello.sni) if table is not None else None
        if found is None:
            self._refuse(R_NO_ROUTE, f"no TLSRoute for server name {hello.sni!r}")
            return
        rule = found.hit.rule
        self.route = rule.route_id
        backend = rule.pick_backend(random.random())
        if backend is not None:
            self.cluster = backend.name
        if backend is None or backend.invalid_status is not None:
            # "the underlying implementation must actively reject request attempts to
            # this backend, by rejecting the connection. Request rejections must respect
            # weight" (TLSRouteRule.BackendRefs): an invalid ref keeps its weight share.
            self._refuse(R_INVALID_BACKEND, f"{rule.route_id}: no valid backendRef")
            return
        endpoint = backend.next_endpoint()
        if endpoint is None:
            self._refuse(R_NO_ENDPOINT, f"{backend.name}: no ready endpoint")
            return
        self.backend = backend
        self.upstream_host = host_port(endpoint.address, endpoint.port)
        if found.listener.mode == PASSTHROUGH:
            self._passthrough(endpoint.address, endpoint.port)
        else:
            self._terminate(found, endpoint.address, endpoint.port)

    def _passthrough(self, address: str, port: int) -> None:
        transport = self.transport
        assert transport is not None
        self._stop_timer()
        self.phase = P_SPLICED
        self.owner.conns.discard(self)
        splice = self.splice = Splice(
            self.owner.splices, transport, on_done=self._finish, tag=self.key
        )
        first = self.hello.take()
        backend = self.backend
        if backend is not None and backend.proxy_protocol:
            # The Service asked for a PROXY header: it goes before the client's bytes.
            first = (
                upstream_header(
                    backend.proxy_protocol,
                    self.client_address or transport.get_extra_info("peername"),
                    transport.get_extra_info("sockname"),
                )
                + first
            )
        splice.hand_over(transport, first)
        self._count(R_PASSTHROUGH)
        # Never re-encrypted: the backend gets the client's own TLS stream.
        self.owner.spawn(
            self._connect(splice, address, port, None), f"tls passthrough {self.label}"
        )

    def _terminate(self, found: SNIMatch, address: str, port: int) -> None:
        transport = self.transport
        assert transport is not None
        ctx = self.owner.contexts.get(found.listener)
        if ctx is None:
            self._refuse(R_BAD_CERT, f"listener {found.listener.name} has no usable certificate")
            return
        self.phase = P_HANDSHAKE
        layer = self.layer = TLSServerLayer(
            ctx,
            transport,
            on_handshake=lambda: self._handshake_done(address, port),
            on_error=self._handshake_failed,
            on_lost=self._lost_in_handshake,
        )
        transport.set_protocol(layer)
        layer.data_received(self.hello.take())

    def _handshake_done(self, address: str, port: int) -> None:
        layer = self.layer
        assert layer is not None
        self._stop_timer()
        self.phase = P_SPLICED
        self.owner.conns.discard(self)
        client = cast(asyncio.Transport, layer)
        splice = self.splice = Splice(
            self.owner.splices, client, on_done=self._finish, tag=self.key
        )
        layer.app = splice.down
        # Decrypted bytes that arrive before the upstream is connected wait in the
        # splice (reading the raw socket pauses meanwhile).
        client.pause_reading()
        self._count(R_TERMINATE)
        tls = self.backend.tls if self.backend is not None else None
        self.owner.spawn(self._connect(splice, address, port, tls), f"tls terminate {self.label}")

    def _https(self, sni: str) -> None:
        """An HTTPS listener of the port: terminate with the port's ``PortTLS`` (its SNI
        callback picks the certificate, client certificates are validated as on an
        HTTPS-only port), then serve HTTP over the layer."""
        transport = self.transport
        assert transport is not None
        self.https = True
        self.sni = sni
        port_tls = self.owner.proxy.terminators.get(self.key)
        if port_tls is None:
            self._refuse(R_BAD_CERT, "no HTTPS listener of this port has a usable certificate")
            return
        self.phase = P_HANDSHAKE
        layer = self.layer = TLSServerLayer(
            port_tls.base,
            transport,
            on_handshake=self._https_ready,
            # TerminatedSSLObject counted the failure in tls_handshake_error already.
            on_error=lambda reason: self._refuse(
                R_HANDSHAKE, f"TLS handshake failed: {reason}", handshake=True
            ),
            on_lost=self._lost_in_handshake,
        )
        transport.set_protocol(layer)
        layer.data_received(self.hello.take())

    def _https_ready(self) -> None:
        """Handshake done: an ``HttpConnection`` takes the decrypted stream over; this
        connection steps out of the counts it held (the HTTP one takes them)."""
        layer = self.layer
        assert layer is not None
        self._stop_timer()
        self.phase = P_SPLICED
        self._finish()
        conn = self.owner.proxy.https_connection(self.key, self.label)
        conn.client_address = self.client_address
        layer.app = conn
        conn.connection_made(layer)

    def _handshake_failed(self, reason: str) -> None:
        metrics = self.owner.proxy.metrics
        if metrics is not None:
            metrics.tls_handshake_error(self.label, reason)
        self._refuse(R_HANDSHAKE, f"TLS handshake failed: {reason}", handshake=True)

    def _lost_in_handshake(self) -> None:
        if self.phase == P_HANDSHAKE:
            self._refuse(R_HANDSHAKE, "client left during the TLS handshake", handshake=True)

    async def _connect(
        self, splice: Splice, address: str, port: int, tls: BackendTLS | None
    ) -> None:
        backend = self.backend
        ctx: ssl.SSLContext | None = None
        ok = True
        if tls is not None:
            try:
                # The per-process cache HTTP backends use; no ALPN: the splice does not
                # know the protocol it carries.
                ctx = self.owner.proxy.pool.contexts.get(tls, alpn=())
            except BackendTLSSetupError:
                # Logged once by BackendContexts.  An HTTP backend answers 503 (UF) here:
                # a failed connect.
                splice.fail_connect()
                ok = False
        if ok:
            ok = await splice.connect(
                address,
                port,
                connect_timeout=self._connect_timeout(),
                ssl_context=ctx,
                server_hostname=tls.hostname if tls is not None else None,
            )
        metrics = self.owner.proxy.metrics
        if metrics is None or backend is None:
            return
        if ok:
            if self.counted:
                metrics.upstream_cx(backend.name, 1)
                self.upstream_counted = True
        else:
            metrics.upstream_connect_fail(backend.name)
            metrics.tls_route_cx(self.label, R_CONNECT_FAIL)

    def _connect_timeout(self) -> float:
        return self.owner.proxy.options.upstream_connect_timeout

    # ------------------------------------------------------------------ closing

    def _refuse(self, result: str, why: str, *, handshake: bool = False) -> None:
        """Close without contacting any backend."""
        if self.phase not in (P_HELLO, P_HANDSHAKE):
            return
        log.debug("%s: %s: closing", self.label, why)
        self._count(result)
        self.result = result
        self.phase = P_CLOSED
        self._stop_timer()
        layer = self.layer
        if handshake and layer is not None:
            layer.close()  # after any alert the handshake produced
        elif self.transport is not None:
            self.transport.close()
        self._finish()

    def close(self) -> None:
        self._refuse(R_SHUTDOWN, "listener removed or gatewayd stopping")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.phase = P_CLOSED
        self._stop_timer()
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.phase == P_HELLO:
            self.phase = P_CLOSED
            self._stop_timer()
            self._finish()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _count(self, result: str) -> None:
        metrics = self.owner.proxy.metrics
        if metrics is not None and not self.https:
            metrics.tls_route_cx(self.label, result)

    def _finish(self) -> None:
        """Once per accepted connection, when it is gone."""
        self.owner.conns.discard(self)
        if not self.counted:
            return
        self.counted = False
        proxy = self.owner.proxy
        proxy.n_conns -= 1
        if proxy.metrics is not None:
            proxy.metrics.downstream_cx(self.label, -1)
            if self.upstream_counted and self.backend is not None:
                self.upstream_counted = False
                proxy.metrics.upstream_cx(self.backend.name, -1)
        self.hello.take()  # drop what a refused connection had sent
        self._log()
        proxy.connection_gone()

    def _log(self) -> None:
        """The connection's access log line (Envoy's tcp_proxy writes one per
        connection, when it closes)."""
        access = self.owner.proxy.access
        if access is None or self.https:
            return  # HTTPS: the HTTP requests are logged, as on an HTTPS-only port
        duration = asyncio.get_running_loop().time() - self.start
        splice = self.splice
        layer = self.layer
        if splice is not None:
            # Spliced: the splice's bytes (plaintext after a Terminate handshake).
            flags, details = splice.flags, splice.details
            rx, tx = splice.received, splice.sent
        else:
            flags, details = FLAGS.get(self.result, ""), self.result
            # Refused in a Terminate handshake: the raw bytes the TLS layer saw.
            rx, tx = (layer.rx, layer.tx) if layer is not None else (self.rx, 0)
        access.log_l4(
            start_time=time.time() - duration,
            flags=flags,
            bytes_received=rx,
            bytes_sent=tx,
            duration_ms=int(duration * 1000.0),
            downstream=self.peer,
            sni=self.sni,
            upstream_host=self.upstream_host,
            upstream_cluster=self.cluster,
            route=self.route,
            details=details,
        )


# --------------------------------------------------------------------------- TLS layer


class TLSServerLayer(asyncio.Protocol):
    """Server-side TLS on a transport whose first bytes were already read.

    Protocol of the raw transport and, towards ``app`` (a splice side), a transport
    that carries plaintext: ``write`` encrypts, ``data_received`` on the app gets the
    decrypted bytes, flow control and closing are passed through.  TLS has no half-close
    that clients rely on, so ``can_write_eof`` is False: the app closes instead (with a
    close_notify).
    """

    __slots__ = (
        "app",
        "closing",
        "eof",
        "handshaken",
        "incoming",
        "on_error",
        "on_handshake",
        "on_lost",
        "outgoing",
        "raw",
        "rx",
        "sslobj",
        "tx",
    )

    def __init__(
        self,
        ctx: ssl.SSLContext,
        raw: asyncio.Transport,
        *,
        on_handshake: Callable[[], None],
        on_error: Callable[[str], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.raw = raw
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.on_handshake = on_handshake
        self.on_error = on_error
        self.on_lost = on_lost
        self.app: asyncio.Protocol | None = None
        self.handshaken = False
        self.closing = False
        self.eof = False  # the client's stream ended (close_notify or FIN)
        # Raw bytes from/to the client, for the access log of a failed handshake.
        self.rx = 0
        self.tx = 0

    # ------------------------------------------------------------------ from the client

    def data_received(self, data: bytes) -> None:
        if self.eof or (self.closing and not self.handshaken):
            return
        self.rx += len(data)
        self.incoming.write(data)
        if not self.handshaken:
            try:
                self.sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except ssl.SSLError as exc:
                self._flush()  # the alert, if OpenSSL wrote one
                # The HTTPS listeners' short labels: a bounded set for the metric.
                self.on_error(handshake_reason(exc))
                return
            self.handshaken = True
            self._flush()
            self.on_handshake()
        self._read()

    def _read(self) -> None:
        app = self.app
        while app is not None and not self.closing:
            try:
                chunk = self.sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as exc:
                log.debug("TLS error after the handshake: %s", exc)
                self.abort()
                return
            if not chunk:
                # close_notify (a memory-BIO SSLObject reads b"" then): the client is
                # done sending; the other direction may go on.
                self.eof = True
                self._flush()
                if not app.eof_received():
                    self.close()
                return
            app.data_received(chunk)
        # TLS 1.3 post-handshake messages (KeyUpdate) may need an answer.
        self._flush()

    def eof_received(self) -> bool | None:
        if not self.handshaken or self.app is None:
            self.on_error("handshake")  # the client left mid-handshake
            return None
        if self.eof:
            return True  # close_notify came first and was passed on
        # TCP FIN without close_notify: treat it as the end of the client's stream.
        self.eof = True
        return self.app.eof_received()

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        app, self.app = self.app, None
        self.closing = True
        if app is not None:
            app.connection_lost(exc)
        else:
            self.on_lost()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.tx += len(data)
            self.raw.write(data)

    # ------------------------------------------------------------------ transport for the app

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[self.sslobj.write(view) :]
        except ssl.SSLError as exc:
            log.debug("TLS write failed: %s", exc)
            self.abort()
            return
        self._flush()

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def set_protocol(self, protocol: asyncio.Protocol) -> None:
        """A new protocol for the plaintext (a WebSocket tunnel, HTTP/2 after ALPN)."""
        self.app = protocol

    def get_protocol(self) -> asyncio.Protocol | None:
        return self.app

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.handshaken:
            with contextlib.suppress(ssl.SSLError):
                self.sslobj.unwrap()  # queues our close_notify; theirs is not awaited
        self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.closing = True
        self.raw.abort()

    def is_closing(self) -> bool:
        return self.closing or self.raw.is_closing()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.sslobj
        return self.raw.get_extra_info(name, default)
