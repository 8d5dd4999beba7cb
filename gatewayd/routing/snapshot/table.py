"""Route tables: what ``RouteTable.lookup`` runs for every request.

Selection happens in three steps, each a handful of dict lookups:

1. Listener.  Listeners sharing a port are isolated by hostname: the most specific
   listener hostname matching the Host wins (exact, then the longest wildcard suffix,
   then a listener without hostname), and only routes attached to it are considered.
   Conformance test GatewayHTTPListenerIsolation: a request for ``abc.foo.example.com``
   reaches only routes of the ``abc.foo.example.com`` listener, 404 otherwise, even if
   a route of the ``*.example.com`` listener has a matching path.
2. Host group.  Within the listener, the routes' effective hostnames
   (``AttachedRoute.hostnames``) are grouped like Envoy virtual hosts: exact name, then
   the longest wildcard suffix ("*.foo.example.com" before "*.example.com"), then the
   routes without hostname restriction.  Only the most specific group matching the Host
   is searched; if none of its rules match the request is a 404.  "In the event that
   multiple HTTPRoutes specify intersecting hostnames [...], precedence must be given to
   rules from the HTTPRoute with the largest number of: Characters in a matching
   non-wildcard hostname. Characters in a matching hostname."
3. Candidates.  Each (route, rule, match) candidate has a rank, its position in
   precedence order (``compile.precedence``).  A group indexes its candidates by exact path
   and by normalised PathPrefix value (dicts) and keeps its regexes in one list.
   Lookup consults the exact list of the path, the regex list, and the prefix lists of
   the path's element-wise prefixes, longest first; the matching candidate of lowest
   rank wins and its ``RouteHit``, allocated at compile time, is returned.  The cost
   depends on the path depth and on the candidates sharing a path, not on the number
   of routes.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.candidates import (
    PATH_EXACT,
    PATH_PREFIX,
    Candidate,
    parse_query,
    values_hold,
)
from gatewayd.routing.snapshot.hostnames import hostname_rank, is_wildcard
from gatewayd.routing.snapshot.regex import RegexError, RegexSet
from gatewayd.routing.snapshot.rules import (
    CompiledBackend,
    CompiledRule,
    HeaderOps,
    Redirect,
    Rewrite,
    RouteHit,
    TLSOptions,
)

if TYPE_CHECKING:
    from gatewayd.tls.certs import CertificateInfo

T = TypeVar("T")


class HostIndex(Generic[T]):
    """Exact names in a dict, wildcards by their suffix (".example.com"), one catch-all."""

    __slots__ = ("any", "exact", "wildcard")

    def __init__(self, items: Iterable[tuple[str | None, T]]) -> None:
        self.exact: dict[str, T] = {}
        self.wildcard: dict[str, T] = {}
        self.any: T | None = None
        for hostname, value in items:
            if hostname is None:
                self.any = value
            elif is_wildcard(hostname):
                self.wildcard[hostname[1:]] = value
            else:
                self.exact[hostname] = value

    def select(self, host: str) -> T | None:
        """The most specific entry matching ``host`` (lower-case, no port)."""
        value = self.exact.get(host)
        if value is not None:
            return value
        wildcard = self.wildcard
        if wildcard:
            # "*.example.com" matches one or more labels before ".example.com": try the
            # suffixes starting at each '.', longest first.  i > 0 keeps a label in front.
            i = host.find(".")
            while i > 0:
                value = wildcard.get(host[i:])
                if value is not None:
                    return value
                i = host.find(".", i + 1)
        return self.any


# ``HTTPRouteTable.memo``: answers kept per table, and the mark of a key not in it
# (``memo.get(key, MEMO_MISS)``: compared by identity, never read).  Only keys of
# at most MEMO_KEY_LEN characters are kept: host and path are the client's and may be
# tens of kilobytes each, so the entry count alone would not bound the memory.
MEMO_SIZE = 1024
MEMO_KEY_LEN = 512
MEMO_MISS: RouteHit = RouteHit.__new__(RouteHit)

# Larger than any candidate rank: "nothing found yet".
_NO_RANK = 1 << 62


class HostGroup:
    """The candidates of one effective hostname of one listener, indexed by path.

    Exact paths and PathPrefix values are dict keys (a prefix without its trailing
    '/', the root prefix as ""), regexes are one list.  Every list is in precedence
    order; ``Candidate.rank`` orders candidates across lists.
    """

    __slots__ = (
        "candidates",
        "exact",
        "hostname",
        "max_prefix_len",
        "prefixes",
        "regex_set",
        "regexes",
    )

    def __init__(self, hostname: str | None, candidates: Iterable[Candidate]) -> None:
        self.hostname = hostname
        self.candidates: tuple[Candidate, ...] = tuple(sorted(candidates, key=_rank))
        exact: dict[str, list[Candidate]] = {}
        prefixes: dict[str, list[Candidate]] = {}
        regexes: list[Candidate] = []
        for c in self.candidates:
            if c.path_kind == PATH_EXACT:
                exact.setdefault(c.path, []).append(c)
            elif c.path_kind == PATH_PREFIX:
                prefixes.setdefault(c.path, []).append(c)
            else:
                regexes.append(c)
        self.exact = {k: tuple(v) for k, v in exact.items()}
        self.prefixes = {k: tuple(v) for k, v in prefixes.items()}
        self.regexes = tuple(regexes)
        # Two or more regexes are asked in one RE2 pass (RegexSet); should they not fit
        # one set's memory budget, each is asked in turn.
        self.regex_set: RegexSet | None = None
        if len(regexes) > 1:
            try:
                self.regex_set = RegexSet([c.path for c in regexes])
            except RegexError:
                self.regex_set = None
        self.max_prefix_len = max((len(k) for k in prefixes), default=-1)

    def to_json(self) -> dict[str, object]:
        return {
            "hostname": self.hostname if self.hostname is not None else "*",
            "candidates": [c.describe() for c in self.candidates],
        }


def _rank(c: Candidate) -> int:
    return c.rank


def _scan(
    cands: tuple[Candidate, ...],
    best_rank: int,
    regex_path: str | None,
    method: str,
    headers: Mapping[str, str],
    query: str,
    params: list[dict[str, str]],
) -> Candidate | None:
    """The first candidate of ``cands`` (in rank order) whose conditions hold, if it
    ranks before ``best_rank``.  ``regex_path``: the path, for lists of regex
    candidates (exact and prefix lists are selected by path already).  ``params``
    caches the decoded query: decoded once per request, and only if a candidate needs
    it."""
    for c in cands:
        if c.rank >= best_rank:
            return None
        if regex_path is not None and not c.regex.fullmatch(regex_path):
            continue
        if c.method is not None and c.method != method:
            continue
        if c.headers and not values_hold(c.headers, headers):
            continue
        if c.query:
            if not params:
                params.append(parse_query(query))
            if not values_hold(c.query, params[0]):
                continue
        return c
    return None


class ListenerRoutes:
    """The host groups of one listener."""

    __slots__ = ("groups", "hostname", "names")

    def __init__(self, names: tuple[str, ...], hostname: str | None, groups: list[HostGroup]):
        self.names = names
        self.hostname = hostname
        self.groups: HostIndex[HostGroup] = HostIndex((g.hostname, g) for g in groups)

    def ordered_groups(self) -> list[HostGroup]:
        """Most specific first: exact names (alphabetical), longer wildcards, catch-all."""
        out = sorted(self.groups.exact.values(), key=lambda g: g.hostname or "")
        wild = sorted(self.groups.wildcard.values(), key=lambda g: hostname_rank(g.hostname))
        out.extend(reversed(wild))
        if self.groups.any is not None:
            out.append(self.groups.any)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerSpec:
    """Input of the table builder: one listener and its candidates by route hostname
    (``None``: the routes that accept any host)."""

    name: str
    hostname: str | None
    candidates: Mapping[str | None, Sequence[Candidate]]


class HTTPRouteTable:
    """``compiled.RouteTable`` for HTTP and HTTPS listener ports."""

    __slots__ = ("_listener_list", "_listeners", "memo")

    def __init__(self, listeners: Sequence[ListenerSpec]) -> None:
        # Listeners of one port have distinct hostnames (the status computation reports
        # duplicates as Conflicted); should two share one anyway, their routes merge.
        merged: dict[str | None, tuple[list[str], dict[str | None, list[Candidate]]]] = {}
        everyone: dict[int, Candidate] = {}
        for spec in listeners:
            names, groups = merged.setdefault(spec.hostname, ([], {}))
            names.append(spec.name)
            for hostname, cands in spec.candidates.items():
                groups.setdefault(hostname, []).extend(cands)
                everyone.update((id(c), c) for c in cands)
        # One rank per candidate, consistent across every host group it appears in.
        for rank, c in enumerate(sorted(everyone.values(), key=lambda c: c.key)):
            c.rank = rank
        built: list[ListenerRoutes] = []
        for hostname, (names, groups) in merged.items():
            host_groups = [HostGroup(h, cands) for h, cands in groups.items() if cands]
            built.append(ListenerRoutes(tuple(names), hostname, host_groups))
        built.sort(key=lambda lr: hostname_rank(lr.hostname), reverse=True)
        self._listener_list = tuple(built)
        self._listeners: HostIndex[ListenerRoutes] = HostIndex((lr.hostname, lr) for lr in built)
        # ``(host, path) -> lookup's answer``, for a table where nothing but host and
        # path decides (no candidate matches on method, header or query; a regex is
        # on the path): None otherwise.  A client asks for the same few paths of the
        # same host again and again, and the dict hit costs ~0.1 us against ~0.5 us
        # for the walk (timeit, make bench's one PathPrefix "/" rule).  Bounded (host
        # and path are the client's): MEMO_SIZE answers, emptied when full.  The
        # request path reads it directly (``Exchange.on_start``); ``lookup`` fills it.
        self.memo: dict[tuple[str, str], RouteHit | None] | None = (
            {}
            if all(c.method is None and not c.headers and not c.query for c in everyone.values())
            else None
        )

    def lookup(
        self,
        host: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
    ) -> RouteHit | None:
        memo = self.memo
        if memo is None:
            return self._lookup(host, method, path, query, headers)
        key = (host, path)
        hit = memo.get(key, MEMO_MISS)
        if hit is MEMO_MISS:
            hit = self._lookup(host, method, path, query, headers)
            if len(host) + len(path) <= MEMO_KEY_LEN:
                if len(memo) >= MEMO_SIZE:
                    memo.clear()
                memo[key] = hit
        return hit

    def _lookup(
        self,
        host: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
    ) -> RouteHit | None:
        listener = self._listeners.select(host)
        if listener is None:
            return None
        group = listener.groups.select(host)
        if group is None:
            return None
        # Every candidate whose path can match is in the exact list of the path, the
        # regex list, or the prefix list of one of the path's element-wise prefixes
        # ("/a/b/c" -> "/a/b/c", "/a/b", "/a", "").  The winner is the matching
        # candidate of lowest rank; each list is in rank order, so a list is only
        # walked while it can still beat the best found so far.
        best: Candidate | None = None
        best_rank = _NO_RANK
        params: list[dict[str, str]] = []
        cands = group.exact.get(path)
        if cands is not None:
            best = _scan(cands, best_rank, None, method, headers, query, params)
            if best is not None:
                best_rank = best.rank
        regexes = group.regexes
        if regexes and regexes[0].rank < best_rank:
            regex_set = group.regex_set
            if regex_set is None:
                found = _scan(regexes, best_rank, path, method, headers, query, params)
            else:
                # One RE2 pass says which regexes match; only those are scanned.
                hits = regex_set.matching(path)
                found = (
                    _scan(
                        tuple(regexes[i] for i in hits),
                        best_rank,
                        None,
                        method,
                        headers,
                        query,
                        params,
                    )
                    if hits
                    else None
                )
            if found is not None:
                best, best_rank = found, found.rank
        max_len = group.max_prefix_len
        if max_len >= 0:
            prefixes = group.prefixes
            if len(path) <= max_len:
                end = len(path)
            else:
                # Longest element-wise prefix that can be a key: cut at a '/'.
                end = path.rfind("/", 0, max_len + 1)
            while end >= 0:
                prefix = path[:end]
                cands = prefixes.get(prefix)
                if cands is not None and cands[0].rank < best_rank:
                    found = _scan(cands, best_rank, None, method, headers, query, params)
                    if found is not None:
                        best, best_rank = found, found.rank
                if end == 0:
                    break
                end = path.rfind("/", 0, end)
        return best.hit if best is not None else None

    def misdirected(self, sni: str, host: str) -> bool:
        """Whether a request for ``host`` arrived on a TLS connection whose server name
        ``sni`` ("" without SNI) selects another listener of this port.

        Conformance GatewayHTTPSListenerDetectMisdirectedRequests: the listener chosen
        by SNI must be the one the Host selects, or the answer is 421; SNI and Host may
        differ within one listener (two names under its wildcard).  RFC 9110 15.5.20:
        421 "indicates that the request was directed at a server that is unable or
        unwilling to produce an authoritative response for the target URI"."""
        listeners = self._listeners
        return listeners.select(sni) is not listeners.select(host)

    def listeners(self) -> tuple[ListenerRoutes, ...]:
        return self._listener_list

    def listener_for(self, host: str) -> ListenerRoutes | None:
        """The listener ``lookup`` selects for ``host`` (``gatewayd explain``)."""
        return self._listeners.select(host)

    def to_json(self) -> object:
        rules: dict[str, CompiledRule] = {}
        listeners: list[dict[str, object]] = []
        for lr in self._listener_list:
            groups = lr.ordered_groups()
            for g in groups:
                for c in g.candidates:
                    rules.setdefault(c.hit.rule.route_id, c.hit.rule)
            listeners.append(
                {
                    "listeners": list(lr.names),
                    "hostname": lr.hostname if lr.hostname is not None else "*",
                    "hostGroups": [g.to_json() for g in groups],
                }
            )
        return {
            "listeners": listeners,
            "rules": {rid: rule_to_json(rule) for rid, rule in rules.items()},
        }


# --------------------------------------------------------------------------- TLS listeners


@dataclass(frozen=True, slots=True, kw_only=True)
class SNIRoute:
    """A TLSRoute attached through one listener, with its effective hostnames."""

    hit: RouteHit  # hit.rule: route_kind "TLSRoute", backends of the (first) rule
    order: tuple[float, str]  # precedence.route_order of the route
    hostnames: tuple[str, ...]  # () : any SNI


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSListener:
    """One ``protocol: TLS`` listener of a port, as the data plane needs it."""

    name: str
    hostname: str | None  # lower-case; None: any SNI
    mode: str  # Passthrough | Terminate (TLSModeType values)
    certificates: tuple[CertificateInfo, ...] = ()  # Terminate: the pairs to present
    # Terminate: frontend validation (client certificates), as for HTTPS listeners.
    client_ca_pem: bytes | None = None
    client_auth: str = "none"  # none | require | optional
    tls_options: TLSOptions | None = None  # Terminate: versions and ciphers
    routes: tuple[SNIRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class SNIMatch:
    """A ``lookup_tls`` result: the listener the SNI selected and the route within it."""

    listener: TLSListener
    hit: RouteHit


class SNITable:
    """``compiled.RouteTable`` for ports whose listeners are all ``protocol: TLS``.

    ``lookup()`` never matches (no HTTP is parsed on these ports); the data plane calls
    ``lookup_tls()`` with the ClientHello server name.  Selection is the same listener
    isolation and hostname specificity as HTTP: the most specific listener hostname
    matching the SNI wins, then, among its routes, the most specific effective hostname;
    within one hostname the oldest TLSRoute wins, then "{namespace}/{name}" order.  The
    listener decides the mode, so Passthrough and Terminate listeners can share a port
    (feature TLSRouteModeMixed).  Listeners with the same hostname (a conflict the status
    reports) are merged: the first one's mode and certificates apply.

    On a port that also has HTTPS listeners (feature GatewayHTTPSAndTLSPassthroughSamePort)
    ``https_hostnames`` are theirs, and ``selects_tls()`` tells, per server name, whether
    the most specific listener of the whole port is one of these TLS listeners or an
    HTTPS one.
    """

    __slots__ = ("_https_hostnames", "_listener_list", "_listeners", "_sides")

    def __init__(
        self, listeners: Sequence[TLSListener], https_hostnames: Iterable[str | None] = ()
    ) -> None:
        merged: dict[str | None, tuple[list[TLSListener], dict[str | None, list[SNIRoute]]]] = {}
        for listener in listeners:
            same, groups = merged.setdefault(listener.hostname, ([], {}))
            same.append(listener)
            for r in listener.routes:
                for h in r.hostnames or (None,):
                    groups.setdefault(h, []).append(r)
        built: list[tuple[list[TLSListener], HostIndex[SNIMatch], list[object]]] = []
        for same, groups in merged.values():
            first = same[0]
            winners: list[tuple[str | None, SNIMatch]] = []
            dump: list[object] = []
            for h, routes in sorted(
                groups.items(), key=lambda kv: hostname_rank(kv[0]), reverse=True
            ):
                best = min(routes, key=lambda r: r.order)
                winners.append((h, SNIMatch(first, best.hit)))
                dump.append(
                    {
                        "hostname": h if h is not None else "*",
                        "route": f"TLSRoute {best.order[1]}",
                        "rule": rule_to_json(best.hit.rule),
                    }
                )
            built.append((same, HostIndex(winners), dump))
        built.sort(key=lambda item: hostname_rank(item[0][0].hostname), reverse=True)
        self._listener_list = built
        self._listeners: HostIndex[HostIndex[SNIMatch]] = HostIndex(
            (same[0].hostname, index) for same, index, _ in built
        )
        https = tuple(dict.fromkeys(https_hostnames))
        self._https_hostnames = https
        # True: a TLS listener; False: an HTTPS one.  Listeners of both protocols with
        # one hostname are HostnameConflict and not served; should both be here anyway,
        # the HTTPS listener keeps the name (as it did before TLS listeners could share).
        sides: list[tuple[str | None, bool]] = [(same[0].hostname, True) for same, _, _ in built]
        sides.extend((h, False) for h in https)
        self._sides: HostIndex[bool] = HostIndex(sides)

    def lookup(
        self,
        host: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
    ) -> RouteHit | None:
        return None

    def lookup_tls(self, sni: str) -> SNIMatch | None:
        """The listener and route for a ClientHello server name; None: close."""
        name = sni.lower()
        index = self._listeners.select(name)
        if index is None:
            return None
        return index.select(name)

    def selects_tls(self, sni: str) -> bool | None:
        """On a port shared with HTTPS listeners: True when the listener the server name
        selects (exact hostname, then the longest wildcard, then a listener without
        hostname; ``sni`` "" only selects the last) is a TLS listener of this table,
        False when it is an HTTPS listener, None when no listener matches."""
        return self._sides.select(sni.lower())

    @property
    def shared_with_https(self) -> bool:
        return bool(self._https_hostnames)

    def lookup_sni(self, sni: str) -> RouteHit | None:
        found = self.lookup_tls(sni)
        return found.hit if found is not None else None

    def listeners(self) -> list[TLSListener]:
        """Every listener served (one per hostname), most specific hostname first."""
        return [same[0] for same, _, _ in self._listener_list]

    def to_json(self) -> object:
        shared: dict[str, object] = {}
        if self._https_hostnames:
            shared["httpsHostnames"] = [h if h is not None else "*" for h in self._https_hostnames]
        return {
            **shared,
            "listeners": [
                {
                    "listeners": [listener.name for listener in same],
                    "hostname": same[0].hostname if same[0].hostname is not None else "*",
                    "mode": same[0].mode,
                    **(
                        {"clientAuth": same[0].client_auth} if same[0].client_auth != "none" else {}
                    ),
                    # Names and fingerprints only: key material stays out of dumps.
                    **(
                        {
                            "certificates": [
                                {"dnsNames": list(c.dns_names), "sha256": c.fingerprint_sha256}
                                for c in same[0].certificates
                            ]
                        }
                        if same[0].certificates
                        else {}
                    ),
                    "sni": dump,
                }
                for same, _, dump in self._listener_list
            ],
        }


# --------------------------------------------------------------------------- config dump


def _header_ops_json(ops: HeaderOps | None) -> dict[str, object] | None:
    if ops is None:
        return None
    return {
        "set": [list(kv) for kv in ops.set],
        "add": [list(kv) for kv in ops.add],
        "remove": list(ops.remove),
    }


def _redirect_json(r: Redirect) -> dict[str, object]:
    return {
        "scheme": r.scheme,
        "hostname": r.hostname,
        "port": r.port,
        "path": None if r.path is None else {"type": r.path.type, "value": r.path.value},
        "statusCode": r.status_code,
    }


def _rewrite_json(w: Rewrite) -> dict[str, object]:
    return {
        "hostname": w.hostname,
        "path": None if w.path is None else {"type": w.path.type, "value": w.path.value},
    }


def _backend_json(backend: CompiledBackend, weight: int) -> dict[str, object]:
    out: dict[str, object] = {
        "name": backend.name,
        "weight": weight,
        "endpoints": [host_port(e.address, e.port) for e in backend.endpoints],
    }
    if backend.invalid_status is not None:
        out["invalidStatus"] = backend.invalid_status
    if backend.app_protocol is not None:
        out["appProtocol"] = backend.app_protocol
    if backend.fqdn:
        out["fqdn"] = True
    if backend.request_headers is not None:
        out["requestHeaders"] = _header_ops_json(backend.request_headers)
    if backend.response_headers is not None:
        out["responseHeaders"] = _header_ops_json(backend.response_headers)
    if backend.session is not None:
        out["sessionPersistence"] = backend.session.to_json()
    if backend.redirect is not None:
        out["redirect"] = _redirect_json(backend.redirect)
    if backend.rewrite is not None:
        out["rewrite"] = _rewrite_json(backend.rewrite)
    if backend.mirrors:
        out["mirrors"] = [
            {"backend": _backend_json(m.backend, 1), "fraction": m.fraction}
            for m in backend.mirrors
        ]
    tls = backend.tls
    if tls is not None:
        # Never the PEM itself (the client key is a secret): what it is and where from.
        tls_json: dict[str, object] = {
            "policy": tls.policy,
            "sni": tls.hostname,
            "trust": "system" if tls.ca_pem is None else "caCertificateRefs",
            "clientCertificate": tls.client_certificate is not None,
        }
        if tls.subject_alt_names:
            tls_json["subjectAltNames"] = list(tls.subject_alt_names)
        if tls.error is not None:
            tls_json["error"] = tls.error
        out["tls"] = tls_json
    return out


def rule_to_json(rule: CompiledRule) -> dict[str, object]:
    """A readable view of a compiled rule for /config_dump."""
    out: dict[str, object] = {
        "route": f"{rule.route_kind} {rule.route_namespace}/{rule.route_name}",
        "rule": rule.rule_index,
    }
    if rule.rule_name is not None:
        out["name"] = rule.rule_name
    filters: dict[str, object] = {}
    if rule.request_headers is not None:
        filters["requestHeaders"] = _header_ops_json(rule.request_headers)
    if rule.response_headers is not None:
        filters["responseHeaders"] = _header_ops_json(rule.response_headers)
    if rule.redirect is not None:
        filters["redirect"] = _redirect_json(rule.redirect)
    if rule.rewrite is not None:
        filters["rewrite"] = _rewrite_json(rule.rewrite)
    if rule.mirrors:
        filters["mirrors"] = [
            {"backend": _backend_json(m.backend, 1), "fraction": m.fraction} for m in rule.mirrors
        ]
    if rule.cors is not None:
        c = rule.cors
        filters["cors"] = {
            "allowOrigins": list(c.allow_origins),
            "allowMethods": list(c.allow_methods),
            "allowHeaders": list(c.allow_headers),
            "exposeHeaders": list(c.expose_headers),
            "allowCredentials": c.allow_credentials,
            "maxAge": c.max_age,
        }
    if filters:
        out["filters"] = filters
    weights = [
        cum - (rule.cumulative_weights[i - 1] if i else 0)
        for i, cum in enumerate(rule.cumulative_weights)
    ]
    out["backends"] = [_backend_json(b, w) for b, w in zip(rule.backends, weights, strict=True)]
    out["totalWeight"] = rule.total_weight
    if rule.direct_status is not None:
        out["directStatus"] = rule.direct_status
    if rule.request_timeout is not None:
        out["requestTimeout"] = rule.request_timeout
    if rule.backend_request_timeout is not None:
        out["backendRequestTimeout"] = rule.backend_request_timeout
    if rule.retry is not None:
        out["retry"] = {
            "attempts": rule.retry.attempts,
            "codes": sorted(rule.retry.codes),
            "backoff": rule.retry.backoff,
        }
    return out
