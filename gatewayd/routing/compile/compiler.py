"""Resolution -> Snapshot: build the route tables the data plane serves.

``compile_snapshot()`` runs off the hot path on every configuration change.  It turns
each accepted listener's attached routes into ``Candidate`` matchers (``compile.match``)
ordered by the Gateway API precedence rules (``compile.precedence``) inside route tables
(``snapshot.table``), and each route rule into a ``CompiledRule`` with its filters and
weighted backends resolved.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from gatewayd.routing.compile.match import InvalidMatch, compile_grpc_match, compile_http_match
from gatewayd.routing.compile.mesh import compile_mesh
from gatewayd.routing.compile.precedence import route_order
from gatewayd.routing.compile.sessions import session_policy
from gatewayd.routing.config.model import (
    BackendObjectReference,
    BackendRef,
    FilterType,
    GRPCRoute,
    HTTPHeaderFilter,
    HTTPPathModifier,
    HTTPRequestMirrorFilter,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteMatch,
    HTTPRouteRetry,
    HTTPRouteTimeouts,
    Meta,
    PathModifierType,
    Route,
    SessionPersistence,
    TCPRoute,
    TLSModeType,
    TLSRoute,
    UDPRoute,
)
from gatewayd.routing.control.bindings import (
    AttachedRoute,
    BackendKey,
    BackendTarget,
    ListenerBinding,
    Resolution,
)
from gatewayd.routing.snapshot.backends import BackendTLS, ClientCertificate
from gatewayd.routing.snapshot.candidates import Candidate
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.l4 import L4Table
from gatewayd.routing.snapshot.rules import (
    H2_APP_PROTOCOLS,
    CompiledBackend,
    CompiledRule,
    Cors,
    HeaderOps,
    Mirror,
    PathModifier,
    Redirect,
    Retry,
    Rewrite,
    RouteHit,
    RouteTable,
    SessionPolicy,
    TerminateTLS,
)
from gatewayd.routing.snapshot.table import (
    HTTPRouteTable,
    ListenerSpec,
    SNIRoute,
    SNITable,
    TLSListener,
)

# "If a reference to a custom filter type cannot be resolved, the filter MUST NOT be
# skipped. Instead, requests that would have been processed by that filter MUST receive
# a HTTP error response."  gatewayd knows no custom filter, so every ExtensionRef is
# unresolvable.
EXTENSION_REF_STATUS = 500

# "If *all* entries in BackendRefs are invalid, and there are also no filters specified
# in this route rule, *all* traffic which matches this rule MUST receive a 500 status
# code." / "When a HTTPBackendRef is invalid, 500 status codes MUST be returned for
# requests that would have otherwise been routed to an invalid backend."
INVALID_BACKEND_STATUS = 500

# HTTPRouteRetry.attempts: "When this field is unspecified, the number of times to
# attempt to retry a backend request is implementation-specific."  We follow Envoy's
# num_retries default of 1 (GEP-1731 lists it), and its 25 ms base backoff.
DEFAULT_RETRY_ATTEMPTS = 1
DEFAULT_RETRY_BACKOFF = 0.025


HTTP_PROTOCOLS = frozenset({"HTTP", "HTTPS"})
TLS_PROTOCOL = "TLS"
L4_PROTOCOLS = frozenset({"TCP", "UDP"})


def compile_snapshot(resolution: Resolution, *, generation: int) -> Snapshot:
    """One ``ListenerPort`` per (address, port) of ``resolution.listeners``.

    HTTP and HTTPS listeners get an ``HTTPRouteTable`` (HTTPRoutes and GRPCRoutes);
    a port whose listeners are all TLS gets an ``SNITable`` (TLSRoutes).  A port with
    HTTPS and TLS listeners gets both (``ListenerPort.tls_table``).  TLS listeners
    sharing a port with plain HTTP listeners, and listeners of other protocols, are not
    served (the status computation reports such conflicts).
    """
    compiler = _Compiler(
        resolution.backends,
        resolution.backend_tls,
        resolution.client_certificates,
        resolution.backend_sessions,
    )
    by_port: dict[tuple[str, int], list[ListenerBinding]] = {}
    udp_by_port: dict[tuple[str, int], list[ListenerBinding]] = {}
    for binding in resolution.listeners:
        into = udp_by_port if binding.protocol == "UDP" else by_port
        into.setdefault((binding.address, binding.port), []).append(binding)
    ports: dict[tuple[str, int], ListenerPort] = {}
    for key, bindings in by_port.items():
        port = compiler.listener_port(bindings)
        if port is not None:
            ports[key] = port
    udp_ports: dict[tuple[str, int], ListenerPort] = {}
    for key, bindings in udp_by_port.items():
        udp_ports[key] = compiler.l4_port(bindings[0])
    # GAMMA: mesh routes get their own compiler (their backends resolve apart).
    mesh = None
    targets = list(resolution.backends.values())
    if resolution.mesh is not None and resolution.mesh.services:
        mesh_compiler = _Compiler(resolution.mesh.backends, resolution.backend_tls)
        mesh = compile_mesh(resolution.mesh, mesh_compiler.candidates)
        targets += resolution.mesh.backends.values()
    endpoints = frozenset((e.address, e.port) for t in targets for e in t.endpoints)
    return Snapshot(
        generation=generation, ports=ports, mesh=mesh, endpoints=endpoints, udp_ports=udp_ports
    )


def _lower(hostname: str | None) -> str | None:
    # Hostnames compare case-insensitively; the data plane hands a lower-cased Host.
    return hostname.lower() if hostname is not None else None


def _route_kind(route: Route) -> str:
    if isinstance(route, HTTPRoute):
        return "HTTPRoute"
    if isinstance(route, GRPCRoute):
        return "GRPCRoute"
    if isinstance(route, TCPRoute):
        return "TCPRoute"
    if isinstance(route, UDPRoute):
        return "UDPRoute"
    return "TLSRoute"


def _unique_routes(attached: Iterable[AttachedRoute]) -> list[AttachedRoute]:
    """A route attached twice to one listener (two parentRefs naming it) counts once."""
    seen: set[tuple[str, str, str]] = set()
    out: list[AttachedRoute] = []
    for a in attached:
        meta = a.route.meta
        key = (_route_kind(a.route), meta.namespace, meta.name)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return out


class _Compiler:
    """Compiles each route's rules once per snapshot, shared by every listener."""

    def __init__(
        self,
        backends: Mapping[BackendKey, BackendTarget],
        backend_tls: Mapping[tuple[str, str, int], BackendTLS] | None = None,
        client_certificates: Mapping[tuple[str, str], ClientCertificate] | None = None,
        backend_sessions: Mapping[tuple[str, str], tuple[str, SessionPersistence]] | None = None,
    ) -> None:
        self.backends = backends
        self.backend_tls = backend_tls or {}
        self.client_certificates = client_certificates or {}
        # BackendLBPolicy sessions, compiled once per Service.
        self.service_sessions: dict[tuple[str, str], SessionPolicy] = {
            key: session_policy(
                sp, scope=f"Service {key[0]}/{key[1]}", source=f"BackendLBPolicy {policy}"
            )
            for key, (policy, sp) in (backend_sessions or {}).items()
        }
        # (id(route), Gateway) -> its compiled rules (a Gateway's client certificate goes
        # into its TLS backends); ``_keep`` pins the routes so ids stay unique.
        self._rules: dict[tuple[int, tuple[str, str] | None], tuple[CompiledRule, ...]] = {}
        self._keep: list[Route] = []

    # ----------------------------------------------------------------- ports

    def l4_port(self, binding: ListenerBinding) -> ListenerPort:
        """A TCP or UDP listener: its one route, the oldest attached (the status
        computation attaches no other, ``control.routes.attach_route``)."""
        hit: RouteHit | None = None
        for attached in binding.routes:
            route = attached.route
            if isinstance(route, TCPRoute | UDPRoute):
                rule = route.rules[0] if route.rules else None
                compiled = self._rule(
                    kind=_route_kind(route),
                    meta=route.meta,
                    index=0,
                    name=rule.name if rule is not None else None,
                    filters=(),
                    backend_refs=rule.backend_refs if rule is not None else (),
                    timeouts=None,
                    retry=None,
                    session=None,
                    # Opaque bytes: no BackendTLSPolicy applies (control.backendtls).
                    backend_tls=False,
                )
                hit = RouteHit(rule=compiled, listener_name=binding.listener_name)
                break
        return ListenerPort(
            address=binding.address,
            port=binding.port,
            protocol=binding.protocol,
            gateway_namespace=binding.gateway_namespace,
            gateway_name=binding.gateway_name,
            listener_names=(binding.listener_name,),
            table=L4Table(listener_name=binding.listener_name, hit=hit),
        )

    def listener_port(self, bindings: Sequence[ListenerBinding]) -> ListenerPort | None:
        tcp = [b for b in bindings if b.protocol == "TCP"]
        if tcp:
            # A TCP listener shares its port with no other (ProtocolConflict otherwise).
            return self.l4_port(tcp[0])
        http = [b for b in bindings if b.protocol in HTTP_PROTOCOLS]
        first = bindings[0]
        table: RouteTable
        tls_table: SNITable | None = None
        if http:
            protocol = http[0].protocol
            table = HTTPRouteTable([self._http_listener(b) for b in http])
            served = http
            tls = [b for b in bindings if b.protocol == TLS_PROTOCOL]
            if protocol == "HTTPS" and tls:
                # Feature GatewayHTTPSAndTLSPassthroughSamePort: the ClientHello's server
                # name picks an HTTPS or a TLS listener of the port.
                tls_table = SNITable(
                    [self._tls_listener(b) for b in tls],
                    https_hostnames=[_lower(b.hostname) for b in http],
                )
                served = http + tls
        else:
            tls = [b for b in bindings if b.protocol == TLS_PROTOCOL]
            if not tls:
                return None
            protocol = TLS_PROTOCOL
            table = SNITable([self._tls_listener(b) for b in tls])
            served = tls
        terminate = tuple(
            TerminateTLS(
                listener_name=b.listener_name,
                hostname=_lower(b.hostname),
                certificates=b.certificates,
                client_ca_pem=b.client_ca_pem,
                client_auth=b.client_auth,
                tls_options=b.tls_options,
            )
            for b in served
            if b.protocol == "HTTPS" and b.tls_mode == "Terminate" and b.certificates
        )
        return ListenerPort(
            address=first.address,
            port=first.port,
            protocol=protocol,
            gateway_namespace=served[0].gateway_namespace,
            gateway_name=served[0].gateway_name,
            listener_names=tuple(b.listener_name for b in served),
            table=table,
            terminate=terminate,
            tls_table=tls_table,
        )

    def _http_listener(self, binding: ListenerBinding) -> ListenerSpec:
        groups: dict[str | None, list[Candidate]] = {}
        for attached in _unique_routes(binding.routes):
            route = attached.route
            if isinstance(route, TLSRoute | TCPRoute | UDPRoute):
                continue  # not served on an HTTP listener
            candidates = self._candidates(
                route, binding.listener_name, (binding.gateway_namespace, binding.gateway_name)
            )
            if not candidates:
                continue
            hostnames: Iterable[str | None] = attached.hostnames or (None,)
            for hostname in dict.fromkeys(_lower(h) for h in hostnames):
                groups.setdefault(hostname, []).extend(candidates)
        return ListenerSpec(
            name=binding.listener_name, hostname=_lower(binding.hostname), candidates=groups
        )

    def _tls_listener(self, binding: ListenerBinding) -> TLSListener:
        # tls.mode defaults to Terminate.
        mode = binding.tls_mode or TLSModeType.TERMINATE.value
        # Terminate: gatewayd holds the plaintext and re-encrypts it for a Service a
        # BackendTLSPolicy targets (with the Gateway's client certificate).  Passthrough:
        # the client's own TLS stream reaches the backend untouched, no policy applies.
        terminate = mode == TLSModeType.TERMINATE.value
        gateway = (binding.gateway_namespace, binding.gateway_name)
        client = self.client_certificates.get(gateway) if terminate else None
        routes: list[SNIRoute] = []
        for attached in _unique_routes(binding.routes):
            route = attached.route
            if not isinstance(route, TLSRoute):
                continue
            rule = self._tls_rule(route, backend_tls=terminate, client=client)
            routes.append(
                SNIRoute(
                    hit=RouteHit(rule=rule, listener_name=binding.listener_name),
                    order=route_order(route.meta),
                    hostnames=tuple(dict.fromkeys(h.lower() for h in attached.hostnames)),
                )
            )
        return TLSListener(
            name=binding.listener_name,
            hostname=_lower(binding.hostname),
            mode=mode,
            certificates=binding.certificates,
            client_ca_pem=binding.client_ca_pem,
            client_auth=binding.client_auth,
            tls_options=binding.tls_options,
            routes=tuple(routes),
        )

    # ----------------------------------------------------------------- candidates

    def candidates(self, route: HTTPRoute | GRPCRoute, listener_name: str) -> list[Candidate]:
        """Fresh matchers for ``route`` (each route table ranks its own)."""
        return self._candidates(route, listener_name, None)

    def _candidates(
        self,
        route: HTTPRoute | GRPCRoute,
        listener_name: str,
        gateway: tuple[str, str] | None,
    ) -> list[Candidate]:
        rules = self.rules(route, gateway)
        out: list[Candidate] = []
        meta = route.meta
        if isinstance(route, HTTPRoute):
            for ri, rule in enumerate(route.rules):
                # "If no matches are specified, the default is a prefix path match on
                # "/", which has the effect of matching every HTTP request."
                matches = rule.matches or (HTTPRouteMatch(),)
                for mi, match in enumerate(matches):
                    try:
                        out.append(
                            compile_http_match(
                                meta=meta,
                                rule_index=ri,
                                match_index=mi,
                                match=match,
                                rule=rules[ri],
                                listener_name=listener_name,
                            )
                        )
                    except InvalidMatch:
                        # The status computation rejects such regexes; a match that
                        # cannot be evaluated never matches.
                        continue
        else:
            for ri, grule in enumerate(route.rules):
                # "If no matches are specified, the implementation MUST match every
                # gRPC request."
                gmatches = grule.matches or (None,)
                for mi, gmatch in enumerate(gmatches):
                    try:
                        out.append(
                            compile_grpc_match(
                                meta=meta,
                                rule_index=ri,
                                match_index=mi,
                                match=gmatch,
                                rule=rules[ri],
                                listener_name=listener_name,
                            )
                        )
                    except InvalidMatch:
                        continue
        return out

    # ----------------------------------------------------------------- rules

    def rules(
        self, route: HTTPRoute | GRPCRoute, gateway: tuple[str, str] | None = None
    ) -> tuple[CompiledRule, ...]:
        # Rules are shared by every Gateway without a client certificate.
        client = self.client_certificates.get(gateway) if gateway is not None else None
        cache_key = (id(route), gateway if client is not None else None)
        cached = self._rules.get(cache_key)
        if cached is not None:
            return cached
        compiled: list[CompiledRule] = []
        if isinstance(route, HTTPRoute):
            for i, rule in enumerate(route.rules):
                compiled.append(
                    self._rule(
                        kind="HTTPRoute",
                        meta=route.meta,
                        index=i,
                        name=rule.name,
                        filters=rule.filters,
                        backend_refs=rule.backend_refs,
                        timeouts=rule.timeouts,
                        retry=rule.retry,
                        session=rule.session_persistence,
                        client=client,
                    )
                )
        else:
            for i, grule in enumerate(route.rules):
                compiled.append(
                    self._rule(
                        kind="GRPCRoute",
                        meta=route.meta,
                        index=i,
                        name=grule.name,
                        filters=grule.filters,
                        backend_refs=grule.backend_refs,
                        timeouts=None,
                        retry=None,
                        session=grule.session_persistence,
                        client=client,
                    )
                )
        result = tuple(compiled)
        self._rules[cache_key] = result
        self._keep.append(route)
        return result

    def _tls_rule(
        self, route: TLSRoute, *, backend_tls: bool, client: ClientCertificate | None
    ) -> CompiledRule:
        # A TLSRoute has nothing to match on besides SNI; its first rule carries the
        # backends (the v1 API allows exactly one rule).
        refs = route.rules[0].backend_refs if route.rules else ()
        name = route.rules[0].name if route.rules else None
        return self._rule(
            kind="TLSRoute",
            meta=route.meta,
            index=0,
            name=name,
            filters=(),
            backend_refs=refs,
            timeouts=None,
            retry=None,
            session=None,
            client=client,
            backend_tls=backend_tls,
        )

    def _rule(
        self,
        *,
        kind: str,
        meta: Meta,
        index: int,
        name: str | None,
        filters: tuple[HTTPRouteFilter, ...],
        backend_refs: tuple[BackendRef, ...],
        timeouts: HTTPRouteTimeouts | None,
        retry: HTTPRouteRetry | None,
        session: SessionPersistence | None,
        client: ClientCertificate | None = None,
        backend_tls: bool = True,
    ) -> CompiledRule:
        """``backend_tls``: a BackendTLSPolicy may apply to the rule's backends (False
        for TLSRoutes of Passthrough listeners)."""
        ns = meta.namespace
        # "Implementations supporting GRPCRoute ... MUST support HTTP/2" and gRPC is
        # only carried by HTTP/2: a GRPCRoute's backends are reached over HTTP/2.
        grpc = kind == "GRPCRoute"
        request_headers: list[HTTPHeaderFilter] = []
        response_headers: list[HTTPHeaderFilter] = []
        redirect: Redirect | None = None
        rewrite: Rewrite | None = None
        mirrors: list[Mirror] = []
        cors: Cors | None = None
        extension_ref = False
        for f in filters:
            if f.type is FilterType.REQUEST_HEADER_MODIFIER and f.request_header_modifier:
                request_headers.append(f.request_header_modifier)
            elif f.type is FilterType.RESPONSE_HEADER_MODIFIER and f.response_header_modifier:
                response_headers.append(f.response_header_modifier)
            elif f.type is FilterType.REQUEST_REDIRECT and f.request_redirect is not None:
                redirect = _redirect(f)
            elif f.type is FilterType.URL_REWRITE and f.url_rewrite is not None:
                rewrite = _rewrite(f)
            elif f.type is FilterType.REQUEST_MIRROR and f.request_mirror is not None:
                m = f.request_mirror
                target = self._mirror_backend(m.backend_ref, ns, client, grpc=grpc)
                if target is not None:
                    mirrors.append(Mirror(backend=target, fraction=_mirror_fraction(m)))
            elif f.type is FilterType.CORS and f.cors is not None:
                c = f.cors
                cors = Cors(
                    allow_origins=c.allow_origins,
                    allow_methods=c.allow_methods,
                    allow_headers=c.allow_headers,
                    expose_headers=c.expose_headers,
                    allow_credentials=c.allow_credentials,
                    max_age=c.max_age,
                )
            elif f.type is FilterType.EXTENSION_REF:
                extension_ref = True

        backends: list[CompiledBackend] = []
        cumulative: list[int] = []
        total = 0
        # weight 0: "no traffic should be forwarded for this entry" -- but for sessions
        # already pinned there (GEP-1619: "the persistence to a single backend MUST be
        # maintained across services, even if the weight is set to 0").
        zero: list[CompiledBackend] = []
        for ref in backend_refs:
            compiled = self._backend(
                ref,
                ns,
                client,
                tls_allowed=backend_tls,
                grpc=grpc,
                # BackendLBPolicy sessions: HTTPRoutes only (GRPCRoutes refuse
                # sessionPersistence; TLSRoutes carry no HTTP).
                session_allowed=kind == "HTTPRoute",
            )
            if ref.weight <= 0:
                zero.append(compiled)
                continue
            backends.append(compiled)
            total += ref.weight
            cumulative.append(total)

        direct_status: int | None = None
        if extension_ref:
            # Every request of the rule passes through the unresolvable filter: answer
            # the error before anything else could answer (a redirect, a CORS preflight).
            direct_status = EXTENSION_REF_STATUS
            redirect = rewrite = cors = None
        elif redirect is None and (
            not backends or all(b.invalid_status is not None for b in backends)
        ):
            # No backendRefs, every weight 0, or every backend invalid: nothing can be
            # forwarded, every request of the rule is answered 500.
            direct_status = INVALID_BACKEND_STATUS

        request_timeout = backend_timeout = None
        if timeouts is not None:
            request_timeout = _timeout(timeouts.request)
            backend_timeout = _timeout(timeouts.backend_request)

        compiled_retry: Retry | None = None
        if retry is not None:
            compiled_retry = Retry(
                attempts=retry.attempts if retry.attempts is not None else DEFAULT_RETRY_ATTEMPTS,
                codes=frozenset(retry.codes),
                backoff=retry.backoff if retry.backoff is not None else DEFAULT_RETRY_BACKOFF,
            )

        if session is not None:
            # "Session persistence configuration specified in a route rule SHALL
            # override equivalent configuration in BackendTrafficPolicy" (GEP-1619,
            # BackendLBPolicy before it): every backendRef of the rule gets the rule's.
            rid = f"{ns}/{meta.name}/rule/{index}"
            policy = session_policy(session, scope=f"{kind} {rid}", source=f"{kind} {rid}")
            backends = [replace(b, session=policy) for b in backends]
            zero = [replace(b, session=policy) for b in zero]
        session_backends = tuple(
            b for b in (*backends, *zero) if b.session is not None and b.invalid_status is None
        )

        return CompiledRule(
            route_kind=kind,
            route_namespace=ns,
            route_name=meta.name,
            rule_index=index,
            rule_name=name,
            request_headers=_header_ops(request_headers),
            response_headers=_header_ops(response_headers),
            redirect=redirect,
            rewrite=rewrite,
            mirrors=tuple(mirrors),
            cors=cors,
            backends=tuple(backends),
            cumulative_weights=tuple(cumulative),
            total_weight=total,
            direct_status=direct_status,
            request_timeout=request_timeout,
            backend_request_timeout=backend_timeout,
            retry=compiled_retry,
            sticky=bool(session_backends),
            session_backends=session_backends,
        )

    # ----------------------------------------------------------------- backends

    def _tls(self, key: BackendKey, client: ClientCertificate | None) -> BackendTLS | None:
        """The TLS settings of a Service port targeted by a BackendTLSPolicy, with the
        Gateway's client certificate: "presented to backends that request one"."""
        if key.group != "" or key.kind != "Service" or key.port is None:
            return None
        tls = self.backend_tls.get((key.namespace, key.name, key.port))
        if tls is None or client is None or tls.error is not None:
            return tls
        return replace(tls, client_certificate=client)

    def _backend(
        self,
        ref: BackendRef,
        route_namespace: str,
        client: ClientCertificate | None = None,
        *,
        tls_allowed: bool = True,
        grpc: bool = False,
        session_allowed: bool = False,
    ) -> CompiledBackend:
        key = BackendKey.of(ref.ref, route_namespace)
        target = self.backends.get(key)
        request: list[HTTPHeaderFilter] = []
        response: list[HTTPHeaderFilter] = []
        redirect: Redirect | None = None
        rewrite: Rewrite | None = None
        mirrors: list[Mirror] = []
        extension_ref = False
        for f in ref.filters:
            if f.type is FilterType.REQUEST_HEADER_MODIFIER and f.request_header_modifier:
                request.append(f.request_header_modifier)
            elif f.type is FilterType.RESPONSE_HEADER_MODIFIER and f.response_header_modifier:
                response.append(f.response_header_modifier)
            elif f.type is FilterType.REQUEST_REDIRECT and f.request_redirect is not None:
                # HTTPRouteBackendRequestRedirect: requests sent to this backendRef are
                # answered with the redirect instead.
                redirect = _redirect(f)
            elif f.type is FilterType.URL_REWRITE and f.url_rewrite is not None:
                # HTTPRouteBackendURLRewrite: the rewrite applies to requests sent to
                # this backendRef only.
                rewrite = _rewrite(f)
            elif f.type is FilterType.REQUEST_MIRROR and f.request_mirror is not None:
                # "executed if and only if the request is being forwarded to the
                # backend defined here" (HTTPBackendRef.Filters).
                m = f.request_mirror
                target_mirror = self._mirror_backend(
                    m.backend_ref, route_namespace, client, grpc=grpc
                )
                if target_mirror is not None:
                    mirrors.append(Mirror(backend=target_mirror, fraction=_mirror_fraction(m)))
            elif f.type is FilterType.EXTENSION_REF:
                extension_ref = True
        request_ops = _header_ops(request)
        response_ops = _header_ops(response)
        if target is None or target.invalid is not None:
            # The weight stays a share of the rule: "the proportion of requests that
            # would otherwise have been routed to an invalid backend MUST receive a 500
            # status code."
            return CompiledBackend(
                name=target.name if target is not None else _key_name(key),
                invalid_status=INVALID_BACKEND_STATUS,
                request_headers=request_ops,
                response_headers=response_ops,
                redirect=redirect,
                rewrite=rewrite,
                mirrors=tuple(mirrors),
            )
        tls = self._tls(key, client) if tls_allowed else None
        invalid_status = EXTENSION_REF_STATUS if extension_ref else None
        if tls is not None and tls.error is not None:
            # The policy has no usable CA: "Connections using an invalid CACertificateRef
            # MUST fail, and the client MUST receive an HTTP 5xx error response."
            invalid_status = INVALID_BACKEND_STATUS
        return CompiledBackend(
            name=target.name,
            endpoints=target.endpoints,
            invalid_status=invalid_status,
            app_protocol=target.app_protocol,
            http2=grpc or target.app_protocol in H2_APP_PROTOCOLS,
            fqdn=target.fqdn,
            request_headers=request_ops,
            response_headers=response_ops,
            redirect=redirect,
            rewrite=rewrite,
            mirrors=tuple(mirrors),
            tls=tls,
            proxy_protocol=target.proxy_protocol,
            session=self.service_sessions.get((key.namespace, key.name))
            if session_allowed and key.group == "" and key.kind == "Service"
            else None,
        )

    def _mirror_backend(
        self,
        ref: BackendObjectReference,
        route_namespace: str,
        client: ClientCertificate | None = None,
        *,
        grpc: bool = False,
    ) -> CompiledBackend | None:
        """A mirror target, or None when it cannot be used: "If the referent cannot be
        found, this BackendRef is invalid and must be dropped from the Gateway."  The
        primary request is unaffected."""
        key = BackendKey.of(ref, route_namespace)
        target = self.backends.get(key)
        if target is None or target.invalid is not None:
            return None
        tls = self._tls(key, client)
        if tls is not None and tls.error is not None:
            return None  # every connection would fail: nothing to mirror to
        return CompiledBackend(
            name=target.name,
            endpoints=target.endpoints,
            app_protocol=target.app_protocol,
            http2=grpc or target.app_protocol in H2_APP_PROTOCOLS,
            fqdn=target.fqdn,
            tls=tls,
        )


def _key_name(key: BackendKey) -> str:
    port = f":{key.port}" if key.port is not None else ""
    return f"{key.namespace}/{key.name}{port}"


def _header_ops(filters: Sequence[HTTPHeaderFilter]) -> HeaderOps | None:
    """Header modifiers with lower-case names ("Name is the name of the header to be
    matched. Name matching MUST be case-insensitive."); several filters concatenate."""
    if not filters:
        return None
    set_: list[tuple[str, str]] = []
    add: list[tuple[str, str]] = []
    remove: list[str] = []
    for f in filters:
        set_.extend((h.name.lower(), h.value) for h in f.set)
        add.extend((h.name.lower(), h.value) for h in f.add)
        remove.extend(name.lower() for name in f.remove)
    if not (set_ or add or remove):
        return None
    return HeaderOps(set=tuple(set_), add=tuple(add), remove=tuple(remove))


def _redirect(f: HTTPRouteFilter) -> Redirect:
    r = f.request_redirect
    assert r is not None
    return Redirect(
        scheme=r.scheme,
        hostname=r.hostname,
        port=r.port,
        path=_path_modifier(r.path),
        status_code=r.status_code,
    )


def _rewrite(f: HTTPRouteFilter) -> Rewrite:
    w = f.url_rewrite
    assert w is not None
    return Rewrite(hostname=w.hostname, path=_path_modifier(w.path))


def _path_modifier(path: HTTPPathModifier | None) -> PathModifier | None:
    if path is None:
        return None
    if path.type is PathModifierType.REPLACE_FULL_PATH:
        return PathModifier(type=path.type.value, value=path.replace_full_path or "/")
    return PathModifier(type=path.type.value, value=path.replace_prefix_match or "/")


def _mirror_fraction(m: HTTPRequestMirrorFilter) -> float:
    """RequestMirror share: "If neither field is specified, 100% of requests will be
    mirrored." percent is 0..100; fraction is numerator/denominator."""
    if m.percent is not None:
        share = m.percent / 100.0
    elif m.fraction is not None:
        den = m.fraction.denominator
        share = m.fraction.numerator / den if den > 0 else 0.0
    else:
        share = 1.0
    return min(1.0, max(0.0, share))


def _timeout(seconds: float | None) -> float | None:
    """ "Setting a timeout to the zero duration (e.g. "0s") SHOULD disable the timeout
    completely": 0.0, kept apart from None, unset (the data plane's default applies,
    e.g. ``gatewayd run --route-timeout``)."""
    if seconds is None:
        return None
    return max(seconds, 0.0)
