"""``BackendResolver.resolve`` answers each reference once per point of view: the same
reference seen from another namespace or route kind is resolved again."""

from __future__ import annotations

import itertools

from status_builders import backend, grant, service

from gatewayd.routing.config.model import ServicePort
from gatewayd.routing.control.backendrefs import BackendResolver
from gatewayd.routing.control.refgrant import ReferenceGrants

REF = backend("svc", 8080, namespace="backends").ref
VIEWS = [
    ("HTTPRoute", "apps", None),  # the grant allows it
    ("GRPCRoute", "apps", "RefNotPermitted"),  # not from GRPCRoutes
    ("HTTPRoute", "other", "RefNotPermitted"),  # not from this namespace
    ("HTTPRoute", "backends", None),  # the Service's own namespace
]


def resolver() -> BackendResolver:
    return BackendResolver(
        [
            service("svc", "backends"),
            service("h2", "apps", [ServicePort(port=80, app_protocol="kubernetes.io/h2c")]),
        ],
        [],
        ReferenceGrants([grant("backends", from_namespace="apps")]),
    )


def test_each_point_of_view_in_any_order() -> None:
    for order in itertools.permutations(VIEWS):
        r = resolver()
        for _ in range(2):
            for kind, namespace, invalid in order:
                key, target = r.resolve(REF, kind, namespace)
                assert (key.namespace, key.name, key.port) == ("backends", "svc", 8080)
                assert target.invalid == invalid, (kind, namespace)
                if invalid:
                    assert f"{kind}s from namespace {namespace!r}" in target.message


def test_other_references_are_resolved_on_their_own() -> None:
    r = resolver()
    assert r.resolve(REF, "HTTPRoute", "apps")[1].invalid is None
    # The same name without a namespace: the route's own.
    key, target = r.resolve(backend("svc", 8080).ref, "HTTPRoute", "apps")
    assert (key.namespace, target.invalid) == ("apps", "BackendNotFound")
    key, target = r.resolve(backend("svc", 9090, namespace="backends").ref, "HTTPRoute", "apps")
    assert (key.port, target.invalid) == (9090, "BackendNotFound")
    key, target = r.resolve(backend("h2", 80).ref, "HTTPRoute", "apps")
    assert (target.invalid, target.app_protocol) == (None, "kubernetes.io/h2c")
    assert r.resolve(backend("h2", 80).ref, "GRPCRoute", "apps")[1].invalid is None
