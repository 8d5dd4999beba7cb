"""Client SSLContexts for BackendTLSPolicy backends, built lazily in the serving process.

The compiled snapshot carries only plain data (``routing.snapshot.backends.BackendTLS``: PEM
bytes, hostname, subjectAltNames) because it is pickled to the worker processes and an
``ssl.SSLContext`` does not pickle.  Each process builds one context per distinct
``BackendTLS.key`` the first time a request needs it and keeps it across snapshots (a
reload that does not change a policy keeps its context, its TLS session cache and the
pooled connections made with it).
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from collections import OrderedDict
from typing import Final

from gatewayd.routing.snapshot.backends import BackendTLS
from gatewayd.tls.certs import CertificateInfo, InvalidCertificate, load_keypair
from gatewayd.tls.context import BackendSSLContext, client_context

__all__ = ["HTTP_ALPN", "BackendContexts", "BackendTLSSetupError"]

log = logging.getLogger("gatewayd.tls.backend")

# Distinct (policy, Gateway client certificate, ALPN) combinations a process keeps
# contexts for; the least recently used is dropped beyond this (each holds its CA store).
MAX_CONTEXTS: Final = 256

# ALPN offered to HTTP backends; an L4 splice (TLSRoute re-encryption) offers none: it
# does not know the protocol it carries.
HTTP_ALPN: Final = ("http/1.1",)


class BackendTLSSetupError(OSError):
    """The TLS settings of a backend cannot be turned into a context (e.g. the Gateway's
    client certificate is expired).  An OSError, so the data plane treats it like any
    failed upstream connect: 503 and ``upstream_cx_connect_fail``."""


class BackendContexts:
    """``BackendTLS`` -> ``BackendSSLContext``, built once per ``key`` and ALPN list,
    LRU-bounded."""

    __slots__ = ("_contexts", "max_size")

    def __init__(self, max_size: int = MAX_CONTEXTS) -> None:
        self.max_size = max_size
        self._contexts: OrderedDict[
            tuple[str, tuple[str, ...]], BackendSSLContext | BackendTLSSetupError
        ] = OrderedDict()

    def get(self, tls: BackendTLS, *, alpn: tuple[str, ...] = HTTP_ALPN) -> BackendSSLContext:
        """The context for ``tls`` offering ``alpn``; raises ``BackendTLSSetupError`` when
        it cannot be built (the failure is remembered, so a broken certificate is parsed
        and logged once)."""
        key = (tls.key, alpn)
        found = self._contexts.get(key)
        if found is None:
            found = self._build(tls, alpn)
            self._contexts[key] = found
            if len(self._contexts) > self.max_size:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(key)
        if isinstance(found, BackendTLSSetupError):
            raise found
        return found

    def __len__(self) -> int:
        return len(self._contexts)

    @staticmethod
    def _build(tls: BackendTLS, alpn: tuple[str, ...]) -> BackendSSLContext | BackendTLSSetupError:
        client: CertificateInfo | None = None
        cert = tls.client_certificate
        try:
            if cert is not None:
                # Checked here, with the real clock, not in the pure status code.
                client = load_keypair(cert.chain_pem, cert.key_pem, now=dt.datetime.now(dt.UTC))
            return client_context(
                ca_pem=tls.ca_pem,
                verify_hostname=tls.hostname,
                subject_alt_names=tls.subject_alt_names,
                client_cert=client,
                alpn=alpn,
            )
        except (InvalidCertificate, ssl.SSLError, ValueError) as exc:
            message = f"BackendTLSPolicy {tls.policy}: cannot set up TLS to the backend: {exc}"
            log.error("%s", message)
            return BackendTLSSetupError(message)
