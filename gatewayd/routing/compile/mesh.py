"""GAMMA compile: a ``MeshResolution`` -> the ``MeshTable`` keyed by ``(clusterIP, port)``.

One producer ``ListenerPort`` and one per consumer namespace for each Service port with
routes, plus the Pod IP -> namespace map that identifies a client's namespace
(``control.mesh`` decides which routes are which).

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from gatewayd.routing.config.model import GRPCRoute, HTTPRoute, Route
from gatewayd.routing.control.bindings import MeshResolution, ServicePortRoutes
from gatewayd.routing.snapshot.candidates import Candidate
from gatewayd.routing.snapshot.compiled import ListenerPort, MeshService, MeshTable
from gatewayd.routing.snapshot.table import HTTPRouteTable, ListenerSpec

MESH_PROTOCOL: Final = "HTTP"


CandidatesOf = Callable[[HTTPRoute | GRPCRoute, str], list[Candidate]]


def _table(routes: Iterable[Route], candidates_of: CandidatesOf, name: str) -> HTTPRouteTable:
    # GEP-1426 hostnames: "GAMMA implementations SHOULD NOT infer any functionality from
    # the hostnames field on xRoutes" -- every route lands in the catch-all host group.
    cands: list[Candidate] = []
    for route in routes:
        if isinstance(route, HTTPRoute | GRPCRoute):
            cands.extend(candidates_of(route, name))
    return HTTPRouteTable([ListenerSpec(name=name, hostname=None, candidates={None: cands})])


def _port(
    binding: ServicePortRoutes,
    routes: tuple[Route, ...],
    address: str,
    name: str,
    candidates_of: CandidatesOf,
) -> ListenerPort:
    """A ``ListenerPort`` standing for one route set of one Service port: the data plane
    serves it exactly like a Gateway listener port."""
    return ListenerPort(
        address=address,
        port=binding.port,
        protocol=MESH_PROTOCOL,
        gateway_namespace=binding.service_namespace,
        gateway_name=binding.service_name,
        listener_names=(name,),
        table=_table(routes, candidates_of, name),
    )


def compile_mesh(mesh: MeshResolution, candidates_of: CandidatesOf) -> MeshTable:
    """One ``MeshService`` per (clusterIP, port) with routes.  ``candidates_of`` is the
    compiler's matcher builder (fresh candidates on every call: each table ranks its
    own)."""
    services: dict[tuple[str, int], MeshService] = {}
    for binding in mesh.services:
        label = f"mesh:{binding.service_namespace}/{binding.service_name}:{binding.port}"
        for address in binding.cluster_ips:
            producer = (
                _port(binding, binding.producer, address, label, candidates_of)
                if binding.producer
                else None
            )
            consumers = {
                ns: _port(binding, routes, address, f"{label}:consumer:{ns}", candidates_of)
                for ns, routes in binding.consumers.items()
                if routes
            }
            if producer is None and not consumers:
                continue
            services[(address, binding.port)] = MeshService(
                address=address,
                port=binding.port,
                service_namespace=binding.service_namespace,
                service_name=binding.service_name,
                producer=producer,
                consumers=consumers,
            )
    return MeshTable(services=services, pod_namespaces=dict(mesh.pod_namespaces))
