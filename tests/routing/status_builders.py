"""Small builders of model objects for the status tests (no loader involved)."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from gatewayd.routing.config.model import (
    GATEWAY_GROUP,
    AllowedRoutes,
    BackendObjectReference,
    BackendRef,
    Config,
    Endpoint,
    EndpointPort,
    EndpointSlice,
    FromNamespaces,
    Gateway,
    GatewayAddress,
    GatewayClass,
    GatewayTLSConfig,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteRule,
    LabelSelector,
    Listener,
    ListenerSet,
    Meta,
    Namespace,
    ParentGatewayReference,
    ParentReference,
    ReferenceGrant,
    ReferenceGrantFrom,
    ReferenceGrantTo,
    RouteGroupKind,
    Secret,
    SecretObjectReference,
    Service,
    ServicePort,
    TLSModeType,
)
from gatewayd.routing.control.bindings import ObjectStatus, Resolution
from gatewayd.tls.certs import self_signed

CONTROLLER = "gatewayd.dev/gateway-controller"


def meta(name: str, namespace: str = "default", **kw: Any) -> Meta:
    return Meta(namespace=namespace, name=name, **kw)


def gateway_class(name: str = "gatewayd", controller: str = CONTROLLER) -> GatewayClass:
    return GatewayClass(meta=Meta(namespace="", name=name), controller_name=controller)


def listener(
    name: str = "http",
    port: int = 80,
    protocol: str = "HTTP",
    hostname: str | None = None,
    *,
    from_: FromNamespaces = FromNamespaces.SAME,
    selector: LabelSelector | None = None,
    kinds: Sequence[str] = (),
    tls: GatewayTLSConfig | None = None,
) -> Listener:
    return Listener(
        name=name,
        port=port,
        protocol=protocol,
        hostname=hostname,
        tls=tls,
        allowed_routes=AllowedRoutes(
            namespaces_from=from_,
            selector=selector,
            kinds=tuple(RouteGroupKind(group=GATEWAY_GROUP, kind=k) for k in kinds),
        ),
    )


def terminate(*secrets: str | SecretObjectReference) -> GatewayTLSConfig:
    refs = tuple(
        s if isinstance(s, SecretObjectReference) else SecretObjectReference(name=s)
        for s in secrets
    )
    return GatewayTLSConfig(mode=TLSModeType.TERMINATE, certificate_refs=refs)


def passthrough() -> GatewayTLSConfig:
    return GatewayTLSConfig(mode=TLSModeType.PASSTHROUGH)


def gateway(
    name: str = "gw",
    *listeners: Listener,
    namespace: str = "default",
    class_name: str = "gatewayd",
    addresses: Sequence[str | GatewayAddress] = (),
    **meta_kw: Any,
) -> Gateway:
    return Gateway(
        meta=meta(name, namespace, **meta_kw),
        gateway_class_name=class_name,
        listeners=listeners or (listener(),),
        addresses=tuple(
            a if isinstance(a, GatewayAddress) else GatewayAddress(value=a) for a in addresses
        ),
    )


def listener_set(
    name: str,
    parent_gateway: str,
    *listeners: Listener,
    namespace: str = "default",
    parent_namespace: str | None = None,
    **meta_kw: Any,
) -> ListenerSet:
    return ListenerSet(
        meta=meta(name, namespace, **meta_kw),
        parent_ref=ParentGatewayReference(name=parent_gateway, namespace=parent_namespace),
        listeners=listeners,
    )


def parent(
    name: str = "gw",
    namespace: str | None = None,
    section: str | None = None,
    port: int | None = None,
    **kw: Any,
) -> ParentReference:
    return ParentReference(name=name, namespace=namespace, section_name=section, port=port, **kw)


def backend(name: str = "svc", port: int | None = 8080, **kw: Any) -> BackendRef:
    return BackendRef(ref=BackendObjectReference(name=name, port=port, **kw))


def http_route(
    name: str = "route",
    *parents: ParentReference,
    namespace: str = "default",
    hostnames: Sequence[str] = (),
    backends: Sequence[BackendRef] = (),
    filters: Sequence[HTTPRouteFilter] = (),
    **meta_kw: Any,
) -> HTTPRoute:
    return HTTPRoute(
        meta=meta(name, namespace, **meta_kw),
        parent_refs=parents or (parent(),),
        hostnames=tuple(hostnames),
        rules=(HTTPRouteRule(backend_refs=tuple(backends), filters=tuple(filters)),),
    )


def service(
    name: str = "svc",
    namespace: str = "default",
    ports: Sequence[ServicePort] = (),
) -> Service:
    return Service(
        meta=meta(name, namespace),
        ports=tuple(ports) or (ServicePort(name="http", port=8080, target_port=3000),),
    )


def endpoint_slice(
    name: str,
    service_name: str = "svc",
    namespace: str = "default",
    *,
    ports: Sequence[EndpointPort] = (EndpointPort(name="http", port=3000),),
    endpoints: Sequence[Endpoint] = (),
    address_type: str = "IPv4",
) -> EndpointSlice:
    return EndpointSlice(
        meta=meta(name, namespace),
        service_name=service_name,
        address_type=address_type,
        ports=tuple(ports),
        endpoints=tuple(endpoints),
    )


@functools.cache
def _test_pair() -> tuple[bytes, bytes]:
    # resolve() defaults ``now`` to 1970-01-01: a pair valid from then until long after
    # today serves both the default and real clocks.
    start = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return self_signed(["example.com", "*.example.com"], days=365 * 200, now=start)


def ca_pem() -> str:
    """A CA bundle for frontend validation (the self-signed test certificate)."""
    return _test_pair()[0].decode("ascii")


def tls_secret(name: str = "cert", namespace: str = "default", *, complete: bool = True) -> Secret:
    """A kubernetes.io/tls Secret holding a valid pair (``complete=False``: no tls.key)."""
    cert, key = _test_pair()
    data: tuple[tuple[str, bytes], ...] = (("tls.crt", cert),)
    if complete:
        data += (("tls.key", key),)
    return Secret(meta=meta(name, namespace), type="kubernetes.io/tls", data=data)


def namespace(name: str, **labels: str) -> Namespace:
    all_labels = {"kubernetes.io/metadata.name": name, **labels}
    return Namespace(meta=Meta(namespace="", name=name, labels=tuple(sorted(all_labels.items()))))


def grant(
    namespace: str,
    *,
    from_kind: str = "HTTPRoute",
    from_namespace: str = "default",
    from_group: str = GATEWAY_GROUP,
    to_kind: str = "Service",
    to_group: str = "",
    to_name: str | None = None,
    name: str = "grant",
) -> ReferenceGrant:
    return ReferenceGrant(
        meta=meta(name, namespace),
        from_=(ReferenceGrantFrom(group=from_group, kind=from_kind, namespace=from_namespace),),
        to=(ReferenceGrantTo(group=to_group, kind=to_kind, name=to_name),),
    )


def config(*objects: object, classes: Sequence[GatewayClass] | None = None) -> Config:
    """A Config from a flat list of objects (a default GatewayClass unless given)."""
    buckets: dict[str, list[object]] = {}
    field_of = {
        "GatewayClass": "gateway_classes",
        "Gateway": "gateways",
        "HTTPRoute": "http_routes",
        "GRPCRoute": "grpc_routes",
        "TLSRoute": "tls_routes",
        "ReferenceGrant": "reference_grants",
        "Namespace": "namespaces",
        "Service": "services",
        "EndpointSlice": "endpoint_slices",
        "Secret": "secrets",
        "ConfigMap": "config_maps",
        "Pod": "pods",
        "BackendTLSPolicy": "backend_tls_policies",
        "ListenerSet": "listener_sets",
        "BackendLBPolicy": "backend_lb_policies",
    }
    for obj in objects:
        buckets.setdefault(field_of[type(obj).__name__], []).append(obj)
    if classes is None:
        classes = [gateway_class()]
    buckets.setdefault("gateway_classes", []).extend(classes)
    return Config(**{k: tuple(v) for k, v in buckets.items()})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- status access


def status_of(
    res: Resolution, kind: str, name: str, namespace: str = "default"
) -> Mapping[str, Any]:
    for st in res.statuses:
        if (
            st.kind == kind
            and st.name == name
            and st.namespace == (namespace if kind != "GatewayClass" else "")
        ):
            return st.status
    raise AssertionError(
        f"no status for {kind} {namespace}/{name}: {[_id(s) for s in res.statuses]}"
    )


def _id(st: ObjectStatus) -> str:
    return f"{st.kind} {st.namespace}/{st.name}"


def cond(obj: Mapping[str, Any], type_: str) -> tuple[str, str]:
    """(status, reason) of the condition ``type_`` in ``obj['conditions']``."""
    for c in obj["conditions"]:
        if c["type"] == type_:
            return (c["status"], c["reason"])
    raise AssertionError(f"no condition {type_} in {obj['conditions']}")


def listener_status(
    res: Resolution, gw: str, name: str, namespace: str = "default"
) -> Mapping[str, Any]:
    for ls in status_of(res, "Gateway", gw, namespace)["listeners"]:
        if ls["name"] == name:
            return ls  # type: ignore[no-any-return]
    raise AssertionError(f"no listener {name}")


def parent_status(
    res: Resolution, route: str, namespace: str = "default", kind: str = "HTTPRoute", index: int = 0
) -> Mapping[str, Any]:
    return status_of(res, kind, route, namespace)["parents"][index]  # type: ignore[no-any-return]


def has_status(res: Resolution, kind: str, name: str, namespace: str = "default") -> bool:
    return any(
        st.kind == kind and st.name == name and st.namespace == namespace for st in res.statuses
    )
