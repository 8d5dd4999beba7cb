"""SSLContexts for listeners (server side, SNI selection) and for backends (client side).

No I/O except what ``ssl`` needs: ``load_cert_chain`` only reads files, so key material
is handed to it through an anonymous in-memory file (``memfd_create``) where the
platform has one, else through a file in a private (0700) temporary directory that is
removed straight after.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from gatewayd.tls.certs import CertificateInfo, dns_name_matches

if TYPE_CHECKING:
    from gatewayd.routing.snapshot.rules import TLSOptions

__all__ = [
    "CLIENT_AUTH_MODES",
    "TLS12_CIPHERS",
    "BackendSSLContext",
    "SNISelector",
    "client_context",
    "load_chain_from_memory",
    "server_context",
]

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only (Mozilla "intermediate" minus
# the finite-field DHE suites).  TLS 1.3 suites are all AEAD; OpenSSL's defaults stand.
TLS12_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

CLIENT_AUTH_MODES: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,  # frontend validation mode AllowInsecureFallback
    "require": ssl.CERT_REQUIRED,  # frontend validation mode AllowValidOnly
}


_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _modern(ctx: ssl.SSLContext, options: TLSOptions | None = None) -> None:
    """TLS 1.2 to 1.3 and the AEAD suites, or what a listener's ``tls.options`` narrowed
    them to (routing/control/tlsoptions.py checked the values)."""
    if options is None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.set_ciphers(TLS12_CIPHERS)
    else:
        # The maximum first: a minimum above the current maximum is refused by OpenSSL.
        ctx.maximum_version = _VERSIONS[options.max_version]
        ctx.minimum_version = _VERSIONS[options.min_version]
        ctx.set_ciphers(":".join(options.ciphers) if options.ciphers else TLS12_CIPHERS)
    # Renegotiation is a DoS vector and nothing we serve needs it.
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION


# --------------------------------------------------------------------------- server side


def server_context(
    cert: CertificateInfo,
    *,
    alpn: Sequence[str] = ("http/1.1",),
    client_ca_pem: bytes | None = None,
    client_auth: str = "none",
    options: TLSOptions | None = None,
) -> ssl.SSLContext:
    """A listener context: TLS 1.2/1.3, AEAD suites, ALPN, optional client certificates.

    ``client_auth``: ``none``, ``optional`` (a certificate is asked for and verified
    against ``client_ca_pem`` if sent) or ``require`` (handshake fails without a valid
    one).  ``optional`` and ``require`` need ``client_ca_pem``.
    """
    if client_auth not in CLIENT_AUTH_MODES:
        raise ValueError(
            f"client_auth {client_auth!r}: expected one of {', '.join(CLIENT_AUTH_MODES)}"
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _modern(ctx, options)
    load_chain_from_memory(ctx, cert)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if client_auth != "none":
        if not client_ca_pem:
            raise ValueError(f"client_auth {client_auth!r} needs client_ca_pem")
        ctx.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
        ctx.verify_mode = CLIENT_AUTH_MODES[client_auth]
    elif client_ca_pem:
        raise ValueError("client_ca_pem given with client_auth 'none'")
    return ctx


class SNISelector:
    """Picks a listener's context by the client's SNI, for one listening socket.

    ``entries`` are ``(hostname, context)``: a listener hostname (exact or ``*.suffix``)
    or ``None`` for the listener without hostname.  Precedence, as for listener
    matching in Gateway API: the exact hostname, then the longest matching wildcard,
    then the default: the ``None`` entry, else (``default_to_first``) the first entry.

    Wildcards follow Gateway API Listener semantics, not RFC 6125: "``*.example.com``"
    matches ``foo.example.com`` and ``bar.foo.example.com`` but not ``example.com``.
    Earlier entries win over later ones with the same hostname.
    """

    __slots__ = ("_default", "_exact", "_wildcards")

    def __init__(
        self,
        entries: Sequence[tuple[str | None, ssl.SSLContext]],
        *,
        default_to_first: bool = True,
    ) -> None:
        self._exact: dict[str, ssl.SSLContext] = {}
        wildcards: dict[str, ssl.SSLContext] = {}  # ".example.com" -> context
        default: ssl.SSLContext | None = None
        for hostname, ctx in entries:
            if hostname is None:
                if default is None:
                    default = ctx
                continue
            name = _norm(hostname)
            if name.startswith("*."):
                wildcards.setdefault(name[1:], ctx)
            else:
                self._exact.setdefault(name, ctx)
        if default is None and default_to_first and entries:
            default = entries[0][1]
        self._default = default
        # Longest suffix first: the most specific wildcard wins.
        self._wildcards = sorted(wildcards.items(), key=lambda kv: -len(kv[0]))

    @property
    def default(self) -> ssl.SSLContext | None:
        """The context used without SNI or when nothing matches (a good ``base``)."""
        return self._default

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name:
            name = _norm(server_name)
            ctx = self._exact.get(name)
            if ctx is not None:
                return ctx
            for suffix, wctx in self._wildcards:
                if name.endswith(suffix) and len(name) > len(suffix):
                    return wctx
        return self._default

    def contexts(self) -> list[ssl.SSLContext]:
        seen: dict[int, ssl.SSLContext] = {}
        for ctx in [*self._exact.values(), *(c for _, c in self._wildcards), self._default]:
            if ctx is not None:
                seen.setdefault(id(ctx), ctx)
        return list(seen.values())

    def install(self, base: ssl.SSLContext) -> None:
        """Make ``base`` (the context the listener wraps with) switch by SNI.

        OpenSSL takes the certificate, ALPN and the client-CA store from the switched-to
        context but keeps the *verify mode* of ``base`` (SSL_set_SSL_CTX copies only the
        certificate), so all contexts of one socket must agree on client
        authentication; this is checked.  (Gateway API configures frontend validation
        per port for the same reason.)
        """
        for ctx in self.contexts():
            if ctx.verify_mode != base.verify_mode:
                raise ValueError(
                    "contexts sharing a listening socket must use the same client "
                    f"certificate mode: base has {base.verify_mode.name}, another has "
                    f"{ctx.verify_mode.name}"
                )

        def callback(
            sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext
        ) -> int | None:
            chosen = self.select(server_name)
            if chosen is None:
                # RFC 6066 3: a server that does not recognise the name "SHOULD" ...
                # "send a fatal-level unrecognized_name(112) alert".
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if chosen is not sslobj.context:
                sslobj.context = chosen
            return None

        base.sni_callback = callback


# --------------------------------------------------------------------------- client side


class _BackendSSLObject(ssl.SSLObject):
    """Runs the subjectAltName check as part of the handshake (asyncio/uvloop path)."""

    def do_handshake(self) -> None:
        super().do_handshake()
        ctx = self.context
        if isinstance(ctx, BackendSSLContext):
            ctx.check_peer(self.getpeercert())


class _BackendSSLSocket(ssl.SSLSocket):
    """Same as ``_BackendSSLObject`` for blocking sockets."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        ctx = self.context
        if isinstance(ctx, BackendSSLContext):
            ctx.check_peer(self.getpeercert())


class BackendSSLContext(ssl.SSLContext):
    """A client context bound to one BackendTLSPolicy.

    The policy's hostname is always the SNI ("Hostname MUST be used as the SNI to
    connect to the backend", BackendTLSPolicyValidation.Hostname), whatever
    ``server_hostname`` the caller passes (asyncio passes the backend IP by default).
    With ``subject_alt_names`` the certificate must carry one of them instead of the
    hostname (checked once the handshake is done, before any byte is sent).
    """

    backend_hostname: str | None
    subject_alt_names: tuple[str, ...]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if not server_side and self.backend_hostname is not None:
            server_hostname = self.backend_hostname
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        if not server_side and self.backend_hostname is not None:
            server_hostname = self.backend_hostname
        return super().wrap_socket(
            sock,
            server_side,
            do_handshake_on_connect,
            suppress_ragged_eofs,
            server_hostname,
            session,
        )

    def check_peer(self, peercert: Any) -> None:
        """Raise ``ssl.SSLCertVerificationError`` unless a wanted SAN is present."""
        if not self.subject_alt_names:
            return
        presented: list[tuple[str, str]] = list((peercert or {}).get("subjectAltName", ()))
        for wanted in self.subject_alt_names:
            for kind, value in presented:
                if _san_matches(wanted, kind, value):
                    return
        shown = ", ".join(f"{k}:{v}" for k, v in presented) or "none"
        err = ssl.SSLCertVerificationError(
            1,
            "certificate verify failed: no subjectAltName matches "
            f"{', '.join(self.subject_alt_names)} (certificate has {shown})",
        )
        err.verify_message = "subjectAltName mismatch"
        err.verify_code = 62  # X509_V_ERR_HOSTNAME_MISMATCH
        raise err


def client_context(
    *,
    ca_pem: bytes | None,
    verify_hostname: str | None,
    subject_alt_names: Sequence[str] = (),
    client_cert: CertificateInfo | None = None,
    alpn: Sequence[str] = ("http/1.1",),
) -> BackendSSLContext:
    """A context for TLS to a backend (BackendTLSPolicy).

    ``ca_pem`` None: the system trust store ("WellKnownCACertificates: System").
    ``verify_hostname``: sent as SNI and, when ``subject_alt_names`` is empty, checked
    against the certificate.  ``subject_alt_names``: DNS names (RFC 6125 wildcards in
    the certificate honoured) or URIs (``scheme://...``, compared exactly).
    ``client_cert``: the Gateway's client certificate (spec.tls.backend).
    """
    ctx = BackendSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _modern(ctx)
    ctx.backend_hostname = _norm(verify_hostname) if verify_hostname else None
    ctx.subject_alt_names = tuple(subject_alt_names)
    ctx.sslobject_class = _BackendSSLObject
    ctx.sslsocket_class = _BackendSSLSocket
    ctx.verify_mode = ssl.CERT_REQUIRED
    # BackendTLSPolicy: "Hostname MUST be used for authentication and MUST match the
    # certificate served by the matching backend, unless SubjectAltNames is specified."
    ctx.check_hostname = not subject_alt_names
    if ca_pem is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
    if client_cert is not None:
        load_chain_from_memory(ctx, client_cert)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _san_matches(wanted: str, kind: str, value: str) -> bool:
    if "://" in wanted:
        return kind == "URI" and value == wanted
    try:
        ip = ipaddress.ip_address(wanted)
    except ValueError:
        return kind == "DNS" and dns_name_matches(value, wanted)
    if kind != "IP Address":
        return False
    try:
        return ipaddress.ip_address(value.strip()) == ip
    except ValueError:
        return False


# --------------------------------------------------------------------------- key material


def load_chain_from_memory(ctx: ssl.SSLContext, cert: CertificateInfo) -> None:
    """``ctx.load_cert_chain`` from the PEM held in ``cert`` without a lasting file."""
    with _memory_file(cert.pem_chain) as chain_path, _memory_file(cert.pem_key) as key_path:
        ctx.load_cert_chain(chain_path, key_path)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd: int = memfd_create("gatewayd-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    directory = tempfile.mkdtemp(prefix="gatewayd-tls-")  # mode 0700
    try:
        path = os.path.join(directory, "pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _norm(name: str) -> str:
    return name.strip().lower().removesuffix(".")
