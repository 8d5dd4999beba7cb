"""Status write-back as ``gatewayd run --kubernetes`` runs it: the sink and the elector.

The KubernetesStatusSink writes only while this replica leads; the LeaderElector turns
it on (with a full resync) and off.  With leader election disabled the sink is on from
the start.  ``state()`` is shown in /status (``config.statusWriteback``) and
``LeaderMetrics`` exports ``gatewayd_leader``.
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes_asyncio.client import ApiClient

from gatewayd.runtime.kube.leader import (
    LeaderElectionSettings,
    LeaderElector,
    LeaderMetrics,
    default_identity,
    default_namespace,
)
from gatewayd.runtime.sinks.kubernetes import DEFAULT_RESOURCES, KubernetesStatusSink, Resource

__all__ = ["StatusWriteback", "resources_of"]


def resources_of(version_of: Callable[[str], str | None]) -> dict[str, Resource]:
    """The status kinds at the versions the cluster serves (``version_of(kind)``, from
    discovery; None: not served, so not written)."""
    out: dict[str, Resource] = {}
    for kind, default in DEFAULT_RESOURCES.items():
        version = version_of(kind)
        if version is not None:
            out[kind] = Resource(default.group, version, default.plural, default.namespaced)
    return out


class StatusWriteback:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        controller_name: str,
        election: LeaderElectionSettings,
        resources: dict[str, Resource] | None = None,
    ) -> None:
        self.sink = KubernetesStatusSink(
            api_client,
            controller_name=controller_name,
            active=not election.enabled,
            resources=resources,
        )
        if resources is not None:
            # Exactly what discovery found: a kind it did not find is not written.
            self.sink.resources = dict(resources)
        self.elector: LeaderElector | None = None
        self.metrics: LeaderMetrics | None = None
        if election.enabled:
            self.elector = LeaderElector(
                api_client,
                namespace=election.namespace or default_namespace(),
                name=election.name,
                identity=election.identity or default_identity(),
                lease_duration=election.lease_duration,
                renew_deadline=election.renew_deadline,
                retry_period=election.retry_period,
                on_started_leading=lambda: self.sink.set_active(True),
                on_stopped_leading=lambda: self.sink.set_active(False),
            )
            self.metrics = LeaderMetrics(self.elector)

    def start(self) -> None:
        if self.elector is not None:
            self.elector.start()

    async def close(self) -> None:
        """Stop writing, then give the Lease up so another replica takes over at once."""
        await self.sink.close()
        if self.elector is not None:
            await self.elector.stop(release=True)

    def state(self) -> dict[str, object]:
        state: dict[str, object] = {"sink": self.sink.state()}
        if self.elector is not None:
            state["leaderElection"] = self.elector.state()
        else:
            state["leaderElection"] = {"enabled": False, "leader": True}
        return state
