"""TLS termination for one listening socket: SNI picks the listener and its certificate.

A ``PortTLS`` belongs to one HTTPS listening socket (a Gateway address and port).  The
socket is created once with ``PortTLS.base`` as its ``ssl`` context; that context never
changes.  Its SNI callback reads ``PortTLS``'s current table and switches each new
connection to the context of the certificate it chose.  ``update()`` (a reload) builds
a new table and replaces it with one reference assignment, so

- new handshakes use the new certificates at once,
- connections already open keep the context (and certificate) they negotiated,
- the listening socket is never closed or re-bound.

Selection follows the listener rules of Gateway API: the listener whose hostname is the
client's server name, else the one with the longest matching wildcard, else the
listener without hostname; no match refuses the handshake (RFC 6066 3: the server
"SHOULD" answer "a fatal-level unrecognized_name(112) alert").  Within the listener,
the first certificate naming the server name exactly, else the first covering it by a
wildcard, else its first certificate.

Failed handshakes are reported through ``on_error(label, reason)`` with a short reason
(the ``tls_handshake_error`` metric).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from gatewayd.tls.certs import dns_name_matches
from gatewayd.tls.context import _modern, server_context

if TYPE_CHECKING:
    from gatewayd.routing.snapshot.rules import TerminateTLS, TLSOptions
    from gatewayd.tls.certs import CertificateInfo

__all__ = ["ALPN", "PortTLS", "TerminatedSSLObject", "handshake_reason"]

log = logging.getLogger("gatewayd.tls")

# HTTP/1.1 is what the data plane speaks; advertising h2 would make clients send it.
# HTTPS listeners offer HTTP/2 first, then HTTP/1.1 (Envoy Gateway's default); the
# connection serves whichever the client picked (proxy/http/h1_server.py hands an "h2"
# connection to the HTTP/2 codec).
ALPN: Final = ("h2", "http/1.1")

ErrorHook = Callable[[str, str], None]

# OpenSSL reason codes -> the metric's short reasons.
_REASONS: Final = {
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "VERSION_TOO_LOW": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_cert",
    "CERTIFICATE_VERIFY_FAILED": "bad_client_cert",
    "NO_APPLICATION_PROTOCOL": "alpn",
    "TLSV1_ALERT_UNKNOWN_CA": "client_rejected_cert",
    "SSLV3_ALERT_BAD_CERTIFICATE": "client_rejected_cert",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "client_rejected_cert",
    "TLSV1_ALERT_DECRYPT_ERROR": "client_rejected_cert",
}


def handshake_reason(exc: BaseException, obj: TerminatedSSLObject | None = None) -> str:
    """A short, bounded label for a failed server handshake."""
    if obj is not None and obj.refused_name:
        return "unknown_sni"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return _REASONS.get(reason, "handshake")
    return "handshake"


class TerminatedSSLObject(ssl.SSLObject):
    """The server side of one terminated connection (asyncio and uvloop use
    ``SSLContext.wrap_bio``).  Records what the SNI callback chose, so the HTTP layer
    can compare it with each request's Host, and reports failed handshakes."""

    port: PortTLS | None = None
    server_name: str = ""  # lower-case SNI, "" when the client sent none
    listener_name: str = ""
    require_cert: bool = False  # the chosen listener refuses clients without a cert
    refused_name: bool = False

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except (ssl.SSLError, OSError) as exc:
            port = self.port
            if port is not None:
                port.failed(handshake_reason(exc, self))
            raise
        if self.require_cert and not self.getpeercert(binary_form=True):
            # Only on a port whose listeners disagree on client certificates: the
            # socket asks for one without insisting (OpenSSL keeps the verify mode of
            # the context a connection starts with), so this listener insists here.
            port = self.port
            if port is not None:
                port.failed("no_client_cert")
            raise ssl.SSLError(1, f"listener {self.listener_name} requires a client certificate")


class _BaseContext(ssl.SSLContext):
    """The context a listening socket is created with; tags each connection's
    ``TerminatedSSLObject`` with its ``PortTLS``."""

    port: PortTLS

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(obj, TerminatedSSLObject):
            obj.port = self.port
        return obj


class _Listener:
    """One listener's certificates: contexts by exact name, by wildcard, a default."""

    __slots__ = ("default", "exact", "name", "require_cert", "wildcards")

    def __init__(
        self, name: str, pairs: Sequence[tuple[CertificateInfo, ssl.SSLContext]], require: bool
    ) -> None:
        self.name = name
        self.require_cert = require
        self.default = pairs[0][1]
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcards: list[tuple[str, ssl.SSLContext]] = []
        for info, ctx in pairs:
            for dns in info.dns_names:
                if dns.startswith("*."):
                    self.wildcards.append((dns, ctx))
                else:
                    self.exact.setdefault(dns, ctx)

    def context_for(self, server_name: str) -> ssl.SSLContext:
        ctx = self.exact.get(server_name)
        if ctx is not None:
            return ctx
        if server_name:
            for pattern, wctx in self.wildcards:
                if dns_name_matches(pattern, server_name):
                    return wctx
        return self.default


class _Table:
    """Listeners of one port by hostname (Gateway API listener precedence)."""

    __slots__ = ("any", "exact", "wildcards")

    def __init__(self, listeners: Sequence[tuple[str | None, _Listener]]) -> None:
        self.exact: dict[str, _Listener] = {}
        wildcards: dict[str, _Listener] = {}  # ".example.com" -> listener
        self.any: _Listener | None = None
        for hostname, listener in listeners:
            if hostname is None:
                if self.any is None:
                    self.any = listener
            elif hostname.startswith("*."):
                wildcards.setdefault(hostname[1:], listener)
            else:
                self.exact.setdefault(hostname, listener)
        # Longest suffix first: "the most specific wildcard" wins.
        self.wildcards = sorted(wildcards.items(), key=lambda kv: -len(kv[0]))

    def select(self, server_name: str) -> _Listener | None:
        if server_name:
            found = self.exact.get(server_name)
            if found is not None:
                return found
            # "*.example.com" matches one or more labels in front of ".example.com".
            for suffix, listener in self.wildcards:
                if server_name.endswith(suffix) and len(server_name) > len(suffix):
                    return listener
        return self.any


_EMPTY: Final = _Table(())

# (chain, key, client CA, client auth): contexts are reused across reloads while their
# material is unchanged (building one costs a key parse; it also keeps sessions valid).
_ContextKey = tuple[bytes, bytes, bytes | None, str, "TLSOptions | None"]


class PortTLS:
    """TLS termination of one listening socket; ``update()`` on every snapshot."""

    __slots__ = ("_contexts", "_table", "base", "label", "on_error")

    def __init__(self, label: str, on_error: ErrorHook | None = None) -> None:
        self.label = label
        self.on_error = on_error
        self._table = _EMPTY
        self._contexts: dict[_ContextKey, ssl.SSLContext] = {}
        base = _BaseContext(ssl.PROTOCOL_TLS_SERVER)
        # Versions and ciphers are copied into each connection from this context when
        # it starts (the SNI switch does not change them): TLS 1.2/1.3, AEAD only.
        _modern(base)
        base.set_alpn_protocols(list(ALPN))
        base.sslobject_class = TerminatedSSLObject
        base.port = self
        base.sni_callback = self._on_sni
        self.base: ssl.SSLContext = base

    def update(self, listeners: Sequence[TerminateTLS]) -> list[str]:
        """Serve ``listeners`` from the next handshake on.  Returns problems (a listener
        whose context could not be built is left out; the others serve)."""
        problems: list[str] = []
        contexts: dict[_ContextKey, ssl.SSLContext] = {}
        entries: list[tuple[str | None, _Listener]] = []
        modes: set[str] = set()
        # tls.options are per port (the control plane refuses listeners of one port that
        # differ): the base context's versions and suites are the ones negotiated.
        _modern(self.base, listeners[0].tls_options if listeners else None)
        for lt in listeners:
            pairs: list[tuple[CertificateInfo, ssl.SSLContext]] = []
            try:
                for info in lt.certificates:
                    key = (
                        info.pem_chain,
                        info.pem_key,
                        lt.client_ca_pem,
                        lt.client_auth,
                        lt.tls_options,
                    )
                    ctx = contexts.get(key) or self._contexts.get(key)
                    if ctx is None:
                        ctx = server_context(
                            info,
                            alpn=ALPN,
                            client_ca_pem=lt.client_ca_pem,
                            client_auth=lt.client_auth,
                            options=lt.tls_options,
                        )
                    contexts[key] = ctx
                    pairs.append((info, ctx))
            except (ssl.SSLError, ValueError, OSError) as exc:
                problems.append(f"listener {lt.listener_name}: {exc}")
                continue
            if not pairs:
                continue
            modes.add(lt.client_auth)
            entries.append(
                (lt.hostname, _Listener(lt.listener_name, pairs, lt.client_auth == "require"))
            )
        # The verify mode is the starting context's for the whole handshake: insist on a
        # client certificate only when every listener of the socket does; ask for one
        # when some listener validates them; else do not ask.
        if modes == {"require"}:
            mode, post_check = ssl.CERT_REQUIRED, False
        elif modes - {"none"}:
            mode, post_check = ssl.CERT_OPTIONAL, "require" in modes
        else:
            mode, post_check = ssl.CERT_NONE, False
        if not post_check:
            for _, listener in entries:
                listener.require_cert = False
        self.base.verify_mode = mode
        self._contexts = contexts
        self._table = _Table(entries)
        return problems

    @property
    def serving(self) -> bool:
        t = self._table
        return bool(t.exact or t.wildcards or t.any is not None)

    def failed(self, reason: str) -> None:
        hook = self.on_error
        if hook is not None:
            hook(self.label, reason)

    def _on_sni(
        self, sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        name = server_name.lower().removesuffix(".") if server_name else ""
        listener = self._table.select(name)
        if listener is None:
            if isinstance(sslobj, TerminatedSSLObject):
                sslobj.refused_name = True
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = listener.context_for(name)
        if isinstance(sslobj, TerminatedSSLObject):
            sslobj.server_name = name
            sslobj.listener_name = listener.name
            sslobj.require_cert = listener.require_cert
        return None
