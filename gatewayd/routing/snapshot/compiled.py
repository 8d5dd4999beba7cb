"""The compiled snapshot: the only configuration the data plane reads.

``compile.compiler.compile_snapshot()`` builds one ``Snapshot`` off the hot path; workers
swap to it with one reference assignment and each request keeps the snapshot it started
with.  A ``Snapshot`` holds the ``ListenerPort`` of every socket to bind (its route table
from ``table``, its rules from ``rules``) and, in node-local mode, the ``MeshTable``.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gatewayd.routing.snapshot.rules import RouteTable, TerminateTLS
from gatewayd.routing.snapshot.table import SNITable

if TYPE_CHECKING:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerPort:
    """One socket to bind: a Gateway address and port with the listeners sharing it."""

    address: str
    port: int
    protocol: str  # HTTP | HTTPS | TLS | TCP | UDP
    gateway_namespace: str
    gateway_name: str
    listener_names: tuple[str, ...]
    table: RouteTable
    # HTTPS listeners terminated on this port (empty: plain HTTP, or not terminated).
    terminate: tuple[TerminateTLS, ...] = ()
    # protocol HTTPS with TLS listeners on the same port too: their SNITable.  Such a
    # port reads each ClientHello before choosing between the two (proxy/tlsroute.py).
    tls_table: SNITable | None = None


# --------------------------------------------------------------------------- GAMMA


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


# --------------------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    generation: int
    ports: Mapping[tuple[str, int], ListenerPort] = field(default_factory=dict)
    # GAMMA (node-local TPROXY mode): routes by original destination (ClusterIP, port)
    # and client namespace; see snapshot/mesh.py.  Plain data, picklable like the rest.
    mesh: MeshTable | None = None
    # Every (address, port) a backend of this snapshot may connect to; the upstream pool
    # drains connections to any other.  None (a hand-built snapshot): keep them all.
    endpoints: frozenset[tuple[str, int]] | None = None
    # UDP listeners (UDPRoute), apart from ``ports``: a UDP port number is another port
    # than the TCP one of the same number (DNS listens on both).
    udp_ports: Mapping[tuple[str, int], ListenerPort] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "listeners": [
                {
                    "address": lp.address,
                    "port": lp.port,
                    "protocol": lp.protocol,
                    "gateway": f"{lp.gateway_namespace}/{lp.gateway_name}",
                    "listeners": list(lp.listener_names),
                    **({"tls": [_tls_json(t) for t in lp.terminate]} if lp.terminate else {}),
                    "routes": lp.table.to_json(),
                    **({"tlsRoutes": lp.tls_table.to_json()} if lp.tls_table is not None else {}),
                }
                for lp in [*self.ports.values(), *self.udp_ports.values()]
            ],
            **({"mesh": self.mesh.to_json()} if self.mesh is not None else {}),
        }


def _tls_json(t: TerminateTLS) -> dict[str, object]:
    # Fingerprints and names only: key material never leaves through /config_dump.
    return {
        "listener": t.listener_name,
        "hostname": t.hostname if t.hostname is not None else "*",
        "certificates": [
            {
                "dnsNames": list(c.dns_names),
                "notAfter": c.not_after.isoformat(),
                "sha256": c.fingerprint_sha256,
            }
            for c in t.certificates
        ],
        "clientAuth": t.client_auth,
    }
