"""Manifests of the node-local tests: a ``bookstore`` Service split 90/10 between
bookstore-v1 and bookstore-v2 (GAMMA producer route), a consumer route from the
``reviews`` namespace, a consumer-only Service ``ratings``, and a Gateway ``edge``.

``manifests_v6()`` is the IPv6 single-stack counterpart: Services with IPv6 ClusterIPs
(``clusterIPs`` and ``ipFamilies`` as the API server writes them), EndpointSlices of
``addressType: IPv6``, a 75/25 producer split, the consumer-only dual-stack ``ratings``
(IPv6 first) and a Gateway ``edge6`` on an IPv6 address."""

from __future__ import annotations

from typing import Any

import yaml
from netns_kit import (
    BACKENDS_IP,
    BACKENDS_IP6,
    BOOKSTORE_IP,
    BOOKSTORE_IP6,
    BOOKSTORE_V1_IP,
    BOOKSTORE_V1_IP6,
    BOOKSTORE_V2_IP,
    BOOKSTORE_V2_IP6,
    CLIENT_A_IP,
    CLIENT_A_IP6,
    CLIENT_B_IP,
    CLIENT_B_IP6,
    GATEWAY_IP,
    GATEWAY_IP6,
    REVIEWS_IP,
    REVIEWS_IP6,
)

GW = "gateway.networking.k8s.io/v1"
V1_PORT = 8081  # bookstore-v1 echo in the backends namespace
V2_PORT = 8082  # bookstore-v2 echo
SERVICE_PORT = 8080
UNROUTED_PORT = 9000  # a bookstore port without routes: never diverted

Doc = dict[str, Any]


def _service(ns: str, name: str, ip: str, ports: list[tuple[str, int]]) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": ip,
            "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        },
    }


def _service6(ns: str, name: str, ip: str, ports: list[tuple[str, int]]) -> Doc:
    """An IPv6 single-stack Service the way the API server stores it."""
    doc = _service(ns, name, ip, ports)
    doc["spec"].update(
        {
            "type": "ClusterIP",
            "clusterIPs": [ip],
            "ipFamilies": ["IPv6"],
            "ipFamilyPolicy": "SingleStack",
        }
    )
    return doc


def _service_dual(ns: str, name: str, ips: list[str], ports: list[tuple[str, int]]) -> Doc:
    """A dual-stack Service: ``clusterIP`` is the first of ``clusterIPs``, whose family
    comes first in ``ipFamilies``."""
    doc = _service(ns, name, ips[0], ports)
    doc["spec"].update(
        {
            "type": "ClusterIP",
            "clusterIPs": ips,
            "ipFamilies": ["IPv6" if ":" in ip else "IPv4" for ip in ips],
            "ipFamilyPolicy": "RequireDualStack",
        }
    )
    return doc


def _slice6(ns: str, service: str, port: int) -> Doc:
    doc = _slice(ns, service, port)
    doc["addressType"] = "IPv6"
    doc["endpoints"] = [{"addresses": [BACKENDS_IP6], "conditions": {"ready": True}}]
    return doc


def _slice(ns: str, service: str, port: int) -> Doc:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-1",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [BACKENDS_IP], "conditions": {"ready": True}}],
    }


def _pod(ns: str, name: str, ip: str) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}]},
    }


def _pod_dual(ns: str, name: str, ips: list[str]) -> Doc:
    doc = _pod(ns, name, ips[0])
    doc["status"]["podIPs"] = [{"ip": ip} for ip in ips]
    return doc


def _service_parent(name: str, namespace: str | None = None) -> Doc:
    ref: Doc = {"group": "", "kind": "Service", "name": name, "port": SERVICE_PORT}
    if namespace is not None:
        ref["namespace"] = namespace
    return ref


def _backend(name: str, weight: int | None = None) -> Doc:
    ref: Doc = {"name": name, "namespace": "bookstore", "port": SERVICE_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def _route(ns: str, name: str, parents: list[Doc], backends: list[Doc], tag: str) -> Doc:
    return {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": parents,
            "rules": [
                {
                    "filters": [
                        {
                            "type": "ResponseHeaderModifier",
                            "responseHeaderModifier": {"set": [{"name": "X-Route", "value": tag}]},
                        }
                    ],
                    "backendRefs": backends,
                }
            ],
        },
    }


def _grant(ns: str, name: str, from_ns: str, service: str) -> Doc:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "from": [
                {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": from_ns}
            ],
            "to": [{"group": "", "kind": "Service", "name": service}],
        },
    }


def manifests(*, grant: bool = True) -> str:
    docs: list[Doc] = [
        {
            "apiVersion": GW,
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayd"},
            "spec": {"controllerName": "gatewayd.dev/gateway-controller"},
        },
        _service(
            "bookstore",
            "bookstore",
            BOOKSTORE_IP,
            [("http", SERVICE_PORT), ("other", UNROUTED_PORT)],
        ),
        _service("bookstore", "bookstore-v1", BOOKSTORE_V1_IP, [("http", SERVICE_PORT)]),
        _service("bookstore", "bookstore-v2", BOOKSTORE_V2_IP, [("http", SERVICE_PORT)]),
        _slice("bookstore", "bookstore-v1", V1_PORT),
        _slice("bookstore", "bookstore-v2", V2_PORT),
        _service("ratings", "ratings", REVIEWS_IP, [("http", SERVICE_PORT)]),
        _pod("shop", "client-a", CLIENT_A_IP),
        _pod("reviews", "client-b", CLIENT_B_IP),
        # Producer route: every client of bookstore:8080 gets the 90/10 split.
        _route(
            "bookstore",
            "bookstore-split",
            [_service_parent("bookstore")],
            [_backend("bookstore-v1", 90), _backend("bookstore-v2", 10)],
            "producer",
        ),
        # Consumer route of the reviews namespace: its clients go to v2 only.
        _route(
            "reviews",
            "bookstore-consumer",
            [_service_parent("bookstore", "bookstore")],
            [_backend("bookstore-v2")],
            "consumer-reviews",
        ),
        # Consumer-only Service: reviews' clients get routes, everyone else passes through.
        _route(
            "reviews",
            "ratings-consumer",
            [_service_parent("ratings", "ratings")],
            [_backend("bookstore-v1")],
            "consumer-ratings",
        ),
        _grant("ratings", "allow-reviews", "reviews", "ratings"),
        {
            "apiVersion": GW,
            "kind": "Gateway",
            "metadata": {"name": "edge", "namespace": "bookstore"},
            "spec": {
                "gatewayClassName": "gatewayd",
                "addresses": [{"type": "IPAddress", "value": GATEWAY_IP}],
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
            },
        },
        _route(
            "bookstore", "edge-route", [{"name": "edge"}], [_backend("bookstore-v1")], "gateway"
        ),
    ]
    if grant:
        docs.append(_grant("bookstore", "allow-reviews", "reviews", "bookstore"))
    return yaml.safe_dump_all(docs, sort_keys=False)


V6_SPLIT = (75, 25)  # bookstore-v1 / bookstore-v2 weights of the IPv6 producer route


def manifests_v6() -> str:
    docs: list[Doc] = [
        {
            "apiVersion": GW,
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayd"},
            "spec": {"controllerName": "gatewayd.dev/gateway-controller"},
        },
        _service6(
            "bookstore",
            "bookstore",
            BOOKSTORE_IP6,
            [("http", SERVICE_PORT), ("other", UNROUTED_PORT)],
        ),
        _service6("bookstore", "bookstore-v1", BOOKSTORE_V1_IP6, [("http", SERVICE_PORT)]),
        _service6("bookstore", "bookstore-v2", BOOKSTORE_V2_IP6, [("http", SERVICE_PORT)]),
        _slice6("bookstore", "bookstore-v1", V1_PORT),
        _slice6("bookstore", "bookstore-v2", V2_PORT),
        # Dual-stack, IPv6 first: both ClusterIPs are diverted; the Pods are dual-stack
        # too, so client-b is known to be in "reviews" from either source address.
        _service_dual("ratings", "ratings", [REVIEWS_IP6, REVIEWS_IP], [("http", SERVICE_PORT)]),
        _pod_dual("shop", "client-a", [CLIENT_A_IP6, CLIENT_A_IP]),
        _pod_dual("reviews", "client-b", [CLIENT_B_IP6, CLIENT_B_IP]),
        _route(
            "bookstore",
            "bookstore-split",
            [_service_parent("bookstore")],
            [_backend("bookstore-v1", V6_SPLIT[0]), _backend("bookstore-v2", V6_SPLIT[1])],
            "producer",
        ),
        _route(
            "reviews",
            "ratings-consumer",
            [_service_parent("ratings", "ratings")],
            [_backend("bookstore-v1")],
            "consumer-ratings",
        ),
        _grant("ratings", "allow-reviews", "reviews", "ratings"),
        {
            "apiVersion": GW,
            "kind": "Gateway",
            "metadata": {"name": "edge6", "namespace": "bookstore"},
            "spec": {
                "gatewayClassName": "gatewayd",
                "addresses": [{"type": "IPAddress", "value": GATEWAY_IP6}],
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
            },
        },
        _route(
            "bookstore", "edge-route", [{"name": "edge6"}], [_backend("bookstore-v1")], "gateway"
        ),
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)
