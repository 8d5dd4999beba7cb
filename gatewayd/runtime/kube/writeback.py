"""Status write-back as ``gatewayd run --kubernetes`` runs it: the sink and the elector.

The KubernetesStatusSink writes only while this replica leads; the LeaderElector turns
it on (with a full resync) and off.  With leader election disabled the sink is on from
the start.  ``state()`` is shown in /status (``config.statusWriteback``) and
``LeaderMetrics`` exports ``gatewayd_leader``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from kubernetes_asyncio.client import ApiClient

from gatewayd.runtime.kube.leader import (
    LeaderElectionSettings,
    LeaderElector,
    LeaderMetrics,
    default_identity,
    default_namespace,
)
from gatewayd.runtime.kube.statuspatch import SHARED_LISTS
from gatewayd.runtime.sinks.kubernetes import KubernetesStatusSink

if TYPE_CHECKING:
    from gatewayd.runtime.sources import ConfigSource
    from gatewayd.runtime.sources.kubernetes import KubernetesSource

__all__ = ["StatusWriteback", "writeback_for"]


class StatusWriteback:
    def __init__(
        self,
        api_client: ApiClient,
        *,
        controller_name: str,
        election: LeaderElectionSettings,
        version_of: Callable[[str], str | None] | None = None,
        claimed: Callable[[], Iterable[tuple[str, str, str]]] | None = None,
    ) -> None:
        self.sink = KubernetesStatusSink(
            api_client,
            controller_name=controller_name,
            active=not election.enabled,
            version_of=version_of,
            claimed=claimed,
        )
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


def writeback_for(
    source: ConfigSource, *, controller_name: str, election: LeaderElectionSettings
) -> StatusWriteback | None:
    """Status write-back for a connected Kubernetes source; None for any other source
    (files: /status is all there is)."""
    from gatewayd.runtime.sources.kubernetes import KubernetesSource

    if not isinstance(source, KubernetesSource) or source.client is None:
        return None
    kube = source
    return StatusWriteback(
        source.client.api,
        controller_name=controller_name,
        election=election,
        # Read at each write: rediscovery replaces ``versions`` when a CRD changes.
        version_of=lambda kind: kube.versions.get(kind),
        claimed=lambda: claimed_by(kube, controller_name),
    )


def claimed_by(source: KubernetesSource, controller_name: str) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of the cached routes and policies whose status holds an
    entry written by ``controller_name``."""
    out: list[tuple[str, str, str]] = []
    for kind, shared in SHARED_LISTS.items():
        informer = source.informers.get(kind)
        if informer is None:
            continue
        for obj in informer.items():
            status = obj.get("status")
            entries = status.get(shared.field) if isinstance(status, dict) else None
            if not isinstance(entries, list):
                continue
            if any(
                isinstance(e, dict) and e.get("controllerName") == controller_name for e in entries
            ):
                meta = obj.get("metadata") or {}
                out.append((kind, str(meta.get("namespace") or ""), str(meta.get("name") or "")))
    return out
