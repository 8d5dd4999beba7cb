"""Small constructors for compiler tests: Resolution objects built directly in Python,
without the loader or the status computation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.model import (
    BackendObjectReference,
    BackendRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatchType,
    HTTPHeaderMatch,
    HTTPPathMatch,
    HTTPQueryParamMatch,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteMatch,
    HTTPRouteRule,
    Meta,
    PathMatchType,
    Route,
)
from gatewayd.routing.control.bindings import (
    AttachedRoute,
    BackendKey,
    BackendTarget,
    ListenerBinding,
    Resolution,
)
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.rules import RouteHit, RouteTable

EXACT = PathMatchType.EXACT
PREFIX = PathMatchType.PATH_PREFIX
REGEX = PathMatchType.REGULAR_EXPRESSION
HEXACT = HeaderMatchType.EXACT
HREGEX = HeaderMatchType.REGULAR_EXPRESSION

ADDRESS = "10.0.0.1"


def meta(name: str, ns: str = "default", ts: str = "") -> Meta:
    return Meta(namespace=ns, name=name, creation_timestamp=ts)


def ref(name: str = "svc", port: int | None = 8080, weight: int = 1, **kw: object) -> BackendRef:
    filters: tuple[HTTPRouteFilter, ...] = tuple(kw.pop("filters", ()))  # type: ignore[arg-type]
    ns = kw.pop("ns", None)
    assert not kw, kw
    return BackendRef(
        ref=BackendObjectReference(name=name, port=port, namespace=ns),  # type: ignore[arg-type]
        weight=weight,
        filters=filters,
    )


def match(
    path: str = "/",
    kind: PathMatchType = PREFIX,
    *,
    method: str | None = None,
    headers: Sequence[tuple[str, str] | tuple[str, str, HeaderMatchType]] = (),
    query: Sequence[tuple[str, str] | tuple[str, str, HeaderMatchType]] = (),
) -> HTTPRouteMatch:
    def hm(h: tuple[str, str] | tuple[str, str, HeaderMatchType]) -> HTTPHeaderMatch:
        return HTTPHeaderMatch(name=h[0], value=h[1], type=h[2] if len(h) == 3 else HEXACT)

    def qm(q: tuple[str, str] | tuple[str, str, HeaderMatchType]) -> HTTPQueryParamMatch:
        return HTTPQueryParamMatch(name=q[0], value=q[1], type=q[2] if len(q) == 3 else HEXACT)

    return HTTPRouteMatch(
        path=HTTPPathMatch(type=kind, value=path),
        method=method,
        headers=tuple(hm(h) for h in headers),
        query_params=tuple(qm(q) for q in query),
    )


def rule(
    *matches: HTTPRouteMatch,
    backends: Sequence[BackendRef] | None = None,
    filters: Sequence[HTTPRouteFilter] = (),
    **kw: object,
) -> HTTPRouteRule:
    return HTTPRouteRule(
        matches=tuple(matches) or (HTTPRouteMatch(),),
        backend_refs=tuple(backends) if backends is not None else (ref(),),
        filters=tuple(filters),
        **kw,  # type: ignore[arg-type]
    )


def http(
    name: str,
    *rules: HTTPRouteRule,
    hostnames: Sequence[str] = (),
    ns: str = "default",
    ts: str = "",
) -> HTTPRoute:
    return HTTPRoute(meta=meta(name, ns, ts), hostnames=tuple(hostnames), rules=tuple(rules))


def gmatch(
    service: str | None = None,
    method: str | None = None,
    *,
    kind: HeaderMatchType = HEXACT,
    headers: Sequence[tuple[str, str]] = (),
) -> GRPCRouteMatch:
    mm = None
    if service is not None or method is not None:
        mm = GRPCMethodMatch(type=kind, service=service, method=method)
    return GRPCRouteMatch(
        method=mm, headers=tuple(HTTPHeaderMatch(name=n, value=v) for n, v in headers)
    )


def grpc(
    name: str,
    *matches: GRPCRouteMatch,
    hostnames: Sequence[str] = (),
    ns: str = "default",
    ts: str = "",
    backends: Sequence[BackendRef] | None = None,
) -> GRPCRoute:
    return GRPCRoute(
        meta=meta(name, ns, ts),
        hostnames=tuple(hostnames),
        rules=(
            GRPCRouteRule(
                matches=tuple(matches),
                backend_refs=tuple(backends) if backends is not None else (ref(),),
            ),
        ),
    )


def attach(route: Route, hostnames: Sequence[str] | None = None) -> AttachedRoute:
    """Attached with the route's own hostnames (a listener without hostname)."""
    return AttachedRoute(
        route=route, hostnames=tuple(hostnames) if hostnames is not None else route.hostnames
    )


def binding(
    *routes: Route | AttachedRoute,
    name: str = "http",
    hostname: str | None = None,
    port: int = 80,
    protocol: str = "HTTP",
    address: str = ADDRESS,
    gateway: str = "gw",
) -> ListenerBinding:
    return ListenerBinding(
        gateway_namespace="default",
        gateway_name=gateway,
        listener_name=name,
        address=address,
        port=port,
        protocol=protocol,
        hostname=hostname,
        routes=tuple(r if isinstance(r, AttachedRoute) else attach(r) for r in routes),
    )


def backend_refs(routes: Iterable[Route]) -> list[tuple[BackendObjectReference, str]]:
    out: list[tuple[BackendObjectReference, str]] = []
    for route in routes:
        ns = route.meta.namespace
        for r in route.rules:
            out.extend((br.ref, ns) for br in r.backend_refs)
            filters: tuple[HTTPRouteFilter, ...] = getattr(r, "filters", ())
            out.extend((f.request_mirror.backend_ref, ns) for f in filters if f.request_mirror)
    return out


def valid_target(key: BackendKey) -> BackendTarget:
    return BackendTarget(
        name=f"{key.namespace}/{key.name}:{key.port}",
        endpoints=(EndpointAddress(address="10.1.0.1", port=9000, pod=f"{key.name}-pod"),),
    )


def resolution(
    *bindings: ListenerBinding,
    invalid: Iterable[str] = (),
    missing: Iterable[str] = (),
    extra: Mapping[BackendKey, BackendTarget] | None = None,
) -> Resolution:
    """Every backend referenced by an attached route resolves to one endpoint, except
    the Service names in ``invalid`` (BackendNotFound target) and ``missing`` (absent)."""
    bad = set(invalid)
    gone = set(missing)
    backends: dict[BackendKey, BackendTarget] = {}
    routes = [a.route for b in bindings for a in b.routes]
    for obj_ref, ns in backend_refs(routes):
        key = BackendKey.of(obj_ref, ns)
        if key.name in gone:
            continue
        if key.name in bad:
            backends[key] = BackendTarget(name=f"{ns}/{key.name}:{key.port}", invalid="X")
        else:
            backends[key] = valid_target(key)
    backends.update(extra or {})
    return Resolution(listeners=tuple(bindings), backends=backends)


def snapshot(*bindings: ListenerBinding, **kw: object) -> Snapshot:
    return compile_snapshot(resolution(*bindings, **kw), generation=1)  # type: ignore[arg-type]


def table(*routes: Route | AttachedRoute, **kw: object) -> RouteTable:
    """One HTTP listener without hostname carrying ``routes``."""
    snap = snapshot(binding(*routes))
    return snap.ports[(ADDRESS, 80)].table


def who(hit: RouteHit | None) -> str | None:
    """The "route-name/rule-index" of a hit (None for a 404)."""
    if hit is None:
        return None
    return f"{hit.rule.route_name}/{hit.rule.rule_index}"


def get(
    t: RouteTable,
    path: str,
    host: str = "example.com",
    method: str = "GET",
    query: str = "",
    headers: Mapping[str, str] | None = None,
) -> str | None:
    return who(t.lookup(host, method, path, query, headers or {}))
