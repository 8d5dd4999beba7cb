"""The compiled mesh (GAMMA): route tables by original destination and client namespace.

A node-local data plane sees a connection's original destination (a Service's
ClusterIP and port, thanks to TPROXY) and its source address; ``MeshTable.lookup``
answers which ``ListenerPort`` serves it, or None (forward it unchanged).  Built by
``compile.mesh.compile_mesh()``.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gatewayd.routing.snapshot.compiled import ListenerPort


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshService:
    """One diverted (clusterIP, port) and the route tables its clients use."""

    address: str
    port: int
    service_namespace: str
    service_name: str
    producer: ListenerPort | None = None
    consumers: Mapping[str, ListenerPort] = field(default_factory=dict)

    def port_for(self, client_namespace: str | None) -> ListenerPort | None:
        """The consumer routes of the client's namespace, else the producer routes,
        else None (no route applies: forward the connection unchanged)."""
        if client_namespace is not None:
            consumer = self.consumers.get(client_namespace)
            if consumer is not None:
                return consumer
        return self.producer


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshTable:
    """The compiled mesh: the data plane's lookup by original destination and source."""

    services: Mapping[tuple[str, int], MeshService] = field(default_factory=dict)
    pod_namespaces: Mapping[str, str] = field(default_factory=dict)

    def namespace_of(self, source_ip: str) -> str | None:
        """The namespace of the Pod owning ``source_ip`` (canonical form), if any."""
        return self.pod_namespaces.get(source_ip)

    def lookup(self, address: str, port: int, source_ip: str) -> ListenerPort | None:
        """Routes for a connection to ``address:port`` from ``source_ip`` (both in
        canonical form); None when the mesh has nothing to say about it."""
        service = self.services.get((address, port))
        if service is None:
            return None
        return service.port_for(self.pod_namespaces.get(source_ip))

    def to_json(self) -> dict[str, object]:
        return {
            "services": [
                {
                    "address": s.address,
                    "port": s.port,
                    "service": f"{s.service_namespace}/{s.service_name}",
                    "producer": s.producer.table.to_json() if s.producer is not None else None,
                    "consumers": {ns: lp.table.to_json() for ns, lp in sorted(s.consumers.items())},
                }
                for s in self.services.values()
            ],
            "pods": dict(sorted(self.pod_namespaces.items())),
        }
