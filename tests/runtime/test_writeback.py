"""StatusWriteback: the sink and the elector as ``run --kubernetes`` wires them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kits.apiserver import ApiServerDouble
from kube_kit import (
    GW,
    OURS,
    close_client,
    gateway,
    gateway_class,
    http_route,
    kube_client,
    statuses,
)
from prometheus_client import CollectorRegistry, generate_latest

from gatewayd.runtime.kube.election import LeaderElectionSettings
from gatewayd.runtime.kube.writeback import StatusWriteback, writeback_for
from gatewayd.runtime.sources.files import FileSource

T1 = "2026-01-01T00:01:00Z"


def seed(api: ApiServerDouble) -> None:
    api.create(gateway_class("ours", OURS))
    api.create(gateway("gw", "ours"))
    api.create(http_route("r", ["gw"]))


def test_without_leader_election_the_sink_writes_at_once(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        seed(api)

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            wb = StatusWriteback(
                client, controller_name=OURS, election=LeaderElectionSettings(enabled=False)
            )
            try:
                assert wb.elector is None and wb.metrics is None
                wb.start()
                wb.sink.publish(statuses(T1))
                await wb.sink.wait_idle()
                assert wb.state()["leaderElection"] == {"enabled": False, "leader": True}
                assert wb.sink.stats["patches"] == 3
            finally:
                await wb.close()
                await close_client(api, client)
            # No Lease was ever asked for.
            assert not api.requests(path_contains="/leases")
            gw = api.get(GW, "gateways", "gw", namespace="default")
            assert gw["status"]["listeners"][0]["name"] == "http"

        asyncio.run(asyncio.wait_for(scenario(), 60))


def test_with_leader_election_it_writes_once_it_leads_and_releases_on_close(
    tmp_path: Path,
) -> None:
    with ApiServerDouble() as api:
        seed(api)

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            election = LeaderElectionSettings(
                namespace="edge",
                identity="me",
                lease_duration=3.0,
                renew_deadline=2.0,
                retry_period=0.4,
            )
            wb = StatusWriteback(client, controller_name=OURS, election=election)
            assert wb.metrics is not None
            registry = CollectorRegistry()
            registry.register(wb.metrics)
            try:
                wb.sink.publish(statuses(T1))  # before leading: kept, not written
                assert wb.sink.state()["queued"] == 0
                wb.start()
                await api.async_wait_for(lambda: wb.sink.stats["patches"] == 3, within=10.0)
                state = wb.state()["leaderElection"]
                assert state == {
                    "lease": "edge/gatewayd-status",
                    "identity": "me",
                    "holder": "me",
                    "leader": True,
                }
                assert b'gatewayd_leader{lease="edge/gatewayd-status"} 1.0' in generate_latest(
                    registry
                )
            finally:
                await wb.close()
                await close_client(api, client)
            lease = api.get("coordination.k8s.io", "leases", "gatewayd-status", namespace="edge")
            assert lease["spec"]["holderIdentity"] == ""

        asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_file_source_has_no_write_back(tmp_path: Path) -> None:
    source = FileSource([str(tmp_path)], watch=False)
    assert writeback_for(source, controller_name=OURS, election=LeaderElectionSettings()) is None
