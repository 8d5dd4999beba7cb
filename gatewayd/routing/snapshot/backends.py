"""Backend data the snapshot carries to the data plane: endpoints and TLS to a backend.

Plain data: it crosses the pipe to the worker processes with the rest of the snapshot.

Pure module: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gatewayd.routing.snapshot.frozen import fast_init

if TYPE_CHECKING:
    pass


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointAddress:
    """One ready endpoint: an IP address (or an FQDN for addressType FQDN) and a port."""

    address: str
    port: int
    pod: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCertificate:
    """The Gateway's client certificate for backends (spec.tls.backend), as PEM."""

    chain_pem: bytes  # the Secret's tls.crt
    key_pem: bytes  # the Secret's tls.key


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendTLS:
    """How to speak TLS to one Service port (its effective BackendTLSPolicy).

    Plain data (it crosses the pipe to the worker processes, where an SSLContext cannot):
    the serving process builds one client context per distinct ``key`` on first use.
    ``error`` is set when the policy has no usable CA certificate: "Connections using an
    invalid CACertificateRef MUST fail, and the client MUST receive an HTTP 5xx error
    response." (BackendTLSPolicyValidation.CACertificateRefs)
    """

    policy: str  # "namespace/name" of the BackendTLSPolicy
    hostname: str  # SNI, and the name verified when subject_alt_names is empty
    ca_pem: bytes | None = None  # None: the system trust store (wellKnownCACertificates)
    subject_alt_names: tuple[str, ...] = ()  # DNS names or URIs
    client_certificate: ClientCertificate | None = None  # the Gateway's, if any
    error: str | None = None
    # A digest of everything above: the cache key of the client context and part of the
    # upstream pool key (a TLS connection is only reused for the same settings).
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        cert = self.client_certificate
        for part in (
            self.hostname.encode(),
            b"system" if self.ca_pem is None else self.ca_pem,
            "\n".join(self.subject_alt_names).encode(),
            b"" if cert is None else cert.chain_pem,
            b"" if cert is None else cert.key_pem,
        ):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        object.__setattr__(self, "key", "tls:" + h.hexdigest()[:32])
