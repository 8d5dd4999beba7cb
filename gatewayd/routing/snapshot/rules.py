"""Compiled route rules: filters, weighted backends, retries, mirrors, the ``RouteHit`` a
lookup returns and the ``RouteTable`` interface every table serves.

Everything here is precomputed for the request path: header names are lower-cased,
weights are cumulative, status lines are ready.  Nothing is mutated after compilation
except the per-process balancing state of a backend (the round-robin cursor and
``lb``, private to each worker process).

Pure module: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gatewayd.routing.snapshot.backends import BackendTLS, EndpointAddress
from gatewayd.routing.snapshot.frozen import fast_init

if TYPE_CHECKING:
    from gatewayd.tls.certs import CertificateInfo


# --------------------------------------------------------------------------- filters


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderOps:
    """RequestHeaderModifier / ResponseHeaderModifier, applied in the spec's order:
    remove, then set (overwrite), then add (append).  Names are lower-case."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PathModifier:
    type: str  # "ReplaceFullPath" | "ReplacePrefixMatch"
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Redirect:
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathModifier | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True, kw_only=True)
class Rewrite:
    hostname: str | None = None
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cors:
    allow_origins: tuple[str, ...] = ()  # may hold "*" or "https://*.example.com"
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 5


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionPolicy:
    """Session persistence (GEP-1619) of a rule's backends: where the session token
    travels and how long it lives.  The token itself (proxy/http/session.py) carries
    the chosen endpoint, so no state is shared between workers, reloads or restarts.

    ``scope`` is bound into the token's MAC: "Route rules referencing the same service
    MUST NOT share persistent sessions" (a rule's scope is its route id; a
    BackendLBPolicy's is the Service)."""

    name: str  # cookie or header name
    header: bool = False  # type Header (False: Cookie)
    scope: bytes = b""
    absolute_timeout: float | None = None  # seconds
    idle_timeout: float | None = None
    permanent: bool = False  # cookie lifetimeType Permanent: Max-Age = absoluteTimeout
    cookie_path: str = "/"
    source: str = ""  # "HTTPRoute ns/name rule N" or "BackendLBPolicy ns/name"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "type": "Header" if self.header else "Cookie",
            "name": self.name,
            "source": self.source,
        }
        if self.absolute_timeout is not None:
            out["absoluteTimeout"] = self.absolute_timeout
        if self.idle_timeout is not None:
            out["idleTimeout"] = self.idle_timeout
        if not self.header:
            out["lifetimeType"] = "Permanent" if self.permanent else "Session"
            out["path"] = self.cookie_path
        return out


# Service appProtocols spoken as cleartext HTTP/2 with prior knowledge (KEP-3726;
# conformance HTTPRouteBackendProtocolH2C).
H2_APP_PROTOCOLS: frozenset[str] = frozenset({"kubernetes.io/h2c"})


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledBackend:
    """One backendRef of a rule, resolved to endpoints.

    ``invalid_status`` is 500 for a reference that could not be resolved (its weight is
    still a share of the rule).  With no endpoints the data plane answers 503.
    """

    name: str  # "namespace/name:port" (metrics label)
    endpoints: tuple[EndpointAddress, ...] = ()
    invalid_status: int | None = None
    app_protocol: str | None = None
    # Spoken to over HTTP/2 (h2c, or TLS with ALPN h2 under a BackendTLSPolicy): every
    # GRPCRoute backend and appProtocol kubernetes.io/h2c.  Decided here, once, so the
    # request path branches on one attribute.
    http2: bool = False
    fqdn: bool = False
    request_headers: HeaderOps | None = None  # backendRef-level filters
    response_headers: HeaderOps | None = None
    redirect: Redirect | None = None  # backendRef-level RequestRedirect
    rewrite: Rewrite | None = None  # backendRef-level URLRewrite
    mirrors: tuple[Mirror, ...] = ()  # backendRef-level RequestMirror
    # BackendTLSPolicy (with the Gateway's client certificate): None speaks cleartext.
    tls: BackendTLS | None = None
    # PROXY protocol header version sent first on L4 (TLS passthrough) connections to
    # the endpoints: 0 none, 1 or 2 (Service annotation gatewayd.io/upstream-proxy-protocol).
    proxy_protocol: int = 0
    # Session persistence of this backendRef: the rule's, else a BackendLBPolicy's on
    # the Service; None balances every request.
    session: SessionPolicy | None = None
    # Round-robin cursor over endpoints: per process, advanced on the request path.
    _cursor: Iterator[EndpointAddress] = field(default=iter(()), repr=False, compare=False)
    # The data plane's per-process view of the endpoints (health, requests in flight),
    # set on first use by ``gatewayd.proxy.balancer``; never pickled (it pickles as None).
    lb: Any = field(default=None, repr=False, compare=False)
    # Any of redirect, rewrite, mirrors: the request path tests this one attribute.
    request_filters: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cursor", itertools.cycle(self.endpoints))
        object.__setattr__(
            self,
            "request_filters",
            self.redirect is not None or self.rewrite is not None or bool(self.mirrors),
        )

    def next_endpoint(self) -> EndpointAddress | None:
        """Round robin over ready endpoints; None when there is none (answer 503)."""
        if not self.endpoints:
            return None
        return next(self._cursor)


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirror:
    backend: CompiledBackend
    fraction: float = 1.0  # share of requests mirrored, 0..1


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    attempts: int  # retries after the first try
    codes: frozenset[int] = frozenset()
    backoff: float = 0.025  # seconds, doubled each retry


# --------------------------------------------------------------------------- rules


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRule:
    """One route rule, ready to serve: filters in order, then the backend choice."""

    route_kind: str  # HTTPRoute | GRPCRoute
    route_namespace: str
    route_name: str
    rule_index: int
    rule_name: str | None = None
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    cors: Cors | None = None
    backends: tuple[CompiledBackend, ...] = ()  # weight > 0 only
    cumulative_weights: tuple[int, ...] = ()  # running sums of the backends' weights
    total_weight: int = 0
    # Local reply when nothing can be forwarded: 500 for a rule with no backendRefs (and no
    # redirect), or whose backendRefs all have weight 0 / are invalid.
    direct_status: int | None = None
    # Seconds; 0.0: disabled ("0s"); None: unset, the data plane's default applies.
    request_timeout: float | None = None
    backend_request_timeout: float | None = None
    retry: Retry | None = None
    # Some backend has a ``session``: the request path looks for a session token
    # first (one attribute test for every other rule).
    sticky: bool = False
    # The backends a session token may name: those with a session, weight 0 included.
    session_backends: tuple[CompiledBackend, ...] = ()
    # "namespace/name/rule/N": the access log's route and the per-route metrics label,
    # computed once here rather than per request.
    route_id: str = ""
    # The request path's lean lane (proxy/http/exchange.py ``_forward_plain``): an
    # HTTPRoute rule whose requests only need the forwarding headers, the rule's
    # RequestHeaderModifier and one HTTP/1.1 backendRef without filters: no CORS,
    # redirect, direct reply, rewrite, mirror, session, retry or timeouts.  Decided
    # here once, so a request of such a rule skips the other tests.
    plain: bool = field(default=False, init=False, compare=False)
    # A ``plain`` rule without a ResponseHeaderModifier on it or its backendRef:
    # nothing on the response side reads or changes the fields, so the HTTP/1.1 client
    # codec may pass the backend's field lines through (``Exchange.raw_response``,
    # set from this one flag at routing instead of a property's six tests per response).
    raw: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        if not self.route_id:
            rid = f"{self.route_namespace}/{self.route_name}/rule/{self.rule_index}"
            object.__setattr__(self, "route_id", rid)
        backends = self.backends
        one = backends[0] if len(backends) == 1 else None
        object.__setattr__(
            self,
            "plain",
            self.route_kind == "HTTPRoute"
            and one is not None
            and self.total_weight > 0
            and one.invalid_status is None
            and not one.http2
            and not one.request_filters
            and one.request_headers is None
            and self.cors is None
            and self.redirect is None
            and self.direct_status is None
            and self.rewrite is None
            and not self.mirrors
            and not self.sticky
            and self.retry is None
            and self.request_timeout is None
            and self.backend_request_timeout is None,
        )
        object.__setattr__(
            self,
            "raw",
            self.plain
            and self.response_headers is None
            and one is not None
            and one.response_headers is None,
        )

    def pick_backend(self, r: float) -> CompiledBackend | None:
        """Weighted choice; ``r`` is uniform in [0, 1).  None when no backend is left."""
        total = self.total_weight
        if total <= 0:
            return None
        point = r * total
        cum = self.cumulative_weights
        for i, backend in enumerate(self.backends):
            if point < cum[i]:
                return backend
        return self.backends[-1]


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RouteHit:
    """A lookup result; one is preallocated per (rule, match) at compile time.

    ``prefix`` is the PathPrefix value that matched, for ReplacePrefixMatch."""

    rule: CompiledRule
    prefix: str | None = None
    listener_name: str = ""


class RouteTable(Protocol):
    """Routes of one bound address:port (one or more listeners of one Gateway)."""

    def lookup(
        self,
        host: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
    ) -> RouteHit | None:
        """``host``: lower-case, port stripped; ``path``: as received (no query);
        ``query``: raw query string without '?'; ``headers``: lower-case names, repeated
        headers joined with ','.  None means no route matched (404)."""
        ...

    def to_json(self) -> object: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSOptions:
    """A listener's ``tls.options`` gatewayd implements (control/tlsoptions.py): the
    protocol versions and the TLS 1.2 cipher suites offered.  Defaults: TLS 1.2 to 1.3,
    ``TLS12_CIPHERS`` of gatewayd/tls/context.py."""

    min_version: str = "1.2"  # "1.2" | "1.3"
    max_version: str = "1.3"
    ciphers: tuple[str, ...] = ()  # OpenSSL names of TLS 1.2 suites; () : the default


@dataclass(frozen=True, slots=True, kw_only=True)
class TerminateTLS:
    """TLS termination of one HTTPS listener, as PEM: each serving process builds its
    ``ssl.SSLContext`` from this (contexts do not pickle; snapshots must)."""

    listener_name: str
    hostname: str | None  # lower-case; None: the listener without hostname
    certificates: tuple[CertificateInfo, ...]  # checked key pairs, certificateRefs order
    client_ca_pem: bytes | None = None  # frontend validation CA bundle
    client_auth: str = "none"  # none | require | optional
    tls_options: TLSOptions | None = None  # the same on every listener of the port
