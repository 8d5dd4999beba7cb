"""backendRef resolution as kube-proxy does it: Service port -> port name -> slice port
-> ready endpoints."""

from __future__ import annotations

import pytest
from status_builders import backend, config, endpoint_slice, gateway, http_route, service

from gatewayd.routing.config.model import (
    BackendObjectReference,
    BackendTLSPolicy,
    BackendTLSPolicyValidation,
    Endpoint,
    EndpointPort,
    FilterType,
    HTTPRequestMirrorFilter,
    HTTPRouteFilter,
    Meta,
    PolicyTargetReference,
    ServicePort,
)
from gatewayd.routing.control.bindings import BackendKey, BackendTarget
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.backends import EndpointAddress


def key(name: str = "svc", port: int | None = 8080, ns: str = "default") -> BackendKey:
    return BackendKey(group="", kind="Service", namespace=ns, name=name, port=port)


def target(*objects: object, ref: object = None) -> BackendTarget:
    br = ref if ref is not None else backend()
    res = resolve(config(gateway(), http_route("r", backends=[br]), *objects))  # type: ignore[list-item]
    assert len(res.backends) == 1
    return next(iter(res.backends.values()))


def ep(
    address: str, *, ready: bool = True, pod: str | None = None, more: tuple[str, ...] = ()
) -> Endpoint:
    return Endpoint(addresses=(address, *more), ready=ready, target_ref_name=pod)


def test_named_port_maps_to_the_slice_port_of_the_same_name() -> None:
    svc = service(
        ports=[
            ServicePort(name="metrics", port=9090, target_port="metrics"),
            ServicePort(name="http", port=8080, target_port="web"),
        ]
    )
    es = endpoint_slice(
        "s1",
        ports=[EndpointPort(name="metrics", port=9100), EndpointPort(name="http", port=3000)],
        endpoints=[ep("10.0.0.1", pod="p1")],
    )
    t = target(svc, es)
    assert t.invalid is None
    assert t.name == "default/svc:8080"
    assert t.endpoints == (EndpointAddress(address="10.0.0.1", port=3000, pod="p1"),)


def test_unnamed_single_port() -> None:
    svc = service(ports=[ServicePort(port=8080, target_port=3000)])
    es = endpoint_slice("s1", ports=[EndpointPort(port=3001)], endpoints=[ep("10.0.0.1")])
    assert target(svc, es).endpoints == (EndpointAddress(address="10.0.0.1", port=3001),)


def test_not_ready_endpoints_are_left_out_and_every_slice_counts() -> None:
    es1 = endpoint_slice("s1", endpoints=[ep("10.0.0.1"), ep("10.0.0.2", ready=False)])
    es2 = endpoint_slice("s2", endpoints=[ep("10.0.0.3"), ep("10.0.0.1")])  # duplicate dropped
    other = endpoint_slice("s3", service_name="other", endpoints=[ep("10.9.9.9")])
    other_ns = endpoint_slice("s4", namespace="elsewhere", endpoints=[ep("10.8.8.8")])
    t = target(service(), es2, es1, other, other_ns)
    assert [e.address for e in t.endpoints] == ["10.0.0.1", "10.0.0.3"]


def test_only_the_first_address_of_an_endpoint_is_used() -> None:
    es = endpoint_slice("s1", endpoints=[ep("10.0.0.1", more=("10.0.0.99",))])
    assert [e.address for e in target(service(), es).endpoints] == ["10.0.0.1"]


def test_no_ready_endpoint_is_valid_but_empty() -> None:
    es = endpoint_slice("s1", endpoints=[ep("10.0.0.1", ready=False)])
    t = target(service(), es)
    assert t.invalid is None and t.endpoints == ()


def test_slice_without_the_port_name_is_ignored() -> None:
    es = endpoint_slice(
        "s1", ports=[EndpointPort(name="grpc", port=9000)], endpoints=[ep("10.0.0.1")]
    )
    assert target(service(), es).endpoints == ()


def test_fqdn_slices() -> None:
    es = endpoint_slice("s1", address_type="FQDN", endpoints=[ep("backend.example.com")])
    t = target(service(), es)
    assert t.fqdn is True
    assert t.endpoints == (EndpointAddress(address="backend.example.com", port=3000),)


def test_app_protocol_from_service_port_then_slice_port() -> None:
    svc = service(ports=[ServicePort(name="http", port=8080, app_protocol="http")])
    assert target(svc).app_protocol == "http"
    es = endpoint_slice(
        "s1", ports=[EndpointPort(name="http", port=3000, app_protocol="example.com/http1")]
    )
    assert target(service(), es).app_protocol == "example.com/http1"


@pytest.mark.parametrize(
    ("app_protocol", "why"),
    [
        ("kubernetes.io/wss", "WebSocket over TLS"),
    ],
)
def test_unserved_app_protocols_are_unsupported_protocol_for_http_routes(
    app_protocol: str, why: str
) -> None:
    svc = service(ports=[ServicePort(name="http", port=8080, app_protocol=app_protocol)])
    t = target(svc)
    assert t.invalid == "UnsupportedProtocol"
    assert app_protocol in t.message
    assert why in t.message
    # The same from an EndpointSlice port when the Service port leaves it out.
    es = endpoint_slice(
        "s1", ports=[EndpointPort(name="http", port=3000, app_protocol=app_protocol)]
    )
    assert target(service(), es).invalid == "UnsupportedProtocol"


def test_h2c_backends_are_served() -> None:
    """The upstream HTTP/2 pool speaks h2c: appProtocol kubernetes.io/h2c resolves."""
    svc = service(ports=[ServicePort(name="http", port=8080, app_protocol="kubernetes.io/h2c")])
    t = target(svc)
    assert t.invalid is None
    assert t.app_protocol == "kubernetes.io/h2c"


def test_websocket_backends_are_served() -> None:
    # HTTPRouteBackendProtocolWebSocket: the Upgrade is forwarded (proxy/http/upgrade.py).
    svc = service(ports=[ServicePort(name="http", port=8080, app_protocol="kubernetes.io/ws")])
    t = target(svc)
    assert t.invalid is None
    assert t.app_protocol == "kubernetes.io/ws"


def test_wss_backends_are_served_under_a_backend_tls_policy() -> None:
    svc = service(ports=[ServicePort(name="http", port=8080, app_protocol="kubernetes.io/wss")])
    assert target(svc).invalid == "UnsupportedProtocol"
    assert "BackendTLSPolicy" in target(svc).message
    policy = BackendTLSPolicy(
        meta=Meta(namespace="default", name="p"),
        target_refs=(PolicyTargetReference(group="", kind="Service", name="svc"),),
        validation=BackendTLSPolicyValidation(hostname="backend.example"),
    )
    t = target(svc, policy)
    assert t.invalid is None and t.app_protocol == "kubernetes.io/wss"


def test_invalid_references() -> None:
    assert target().invalid == "BackendNotFound"  # no Service
    assert target(service(), ref=backend(port=9999)).invalid == "BackendNotFound"
    assert target(service(), ref=backend(port=None)).invalid == "BackendNotFound"
    t = target(service(), ref=backend(kind="ServiceImport", group="multicluster.x-k8s.io"))
    assert t.invalid == "InvalidKind"
    assert "ServiceImport" in t.message


def test_every_backend_and_mirror_of_attached_routes_is_resolved() -> None:
    mirror = HTTPRouteFilter(
        type=FilterType.REQUEST_MIRROR,
        request_mirror=HTTPRequestMirrorFilter(
            backend_ref=BackendObjectReference(name="shadow", port=8080)
        ),
    )
    res = resolve(
        config(
            gateway(),
            http_route("r", backends=[backend("svc"), backend("svc2", port=81)], filters=[mirror]),
            service(),
            service("shadow"),
        )
    )
    assert set(res.backends) == {key("svc"), key("svc2", 81), key("shadow")}
    assert res.backends[key("shadow")].invalid is None
    assert res.backends[key("svc2", 81)].invalid == "BackendNotFound"
