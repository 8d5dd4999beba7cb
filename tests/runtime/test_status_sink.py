"""KubernetesStatusSink against the API-server double, through the real client."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from kits.apiserver import ApiServerDouble
from kube_kit import (
    GW,
    OTHER,
    OURS,
    close_client,
    gateway,
    gateway_class,
    http_route,
    kube_client,
    route_parent,
    statuses,
)

from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.runtime.sinks.kubernetes import KubernetesStatusSink

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:01:00Z"
T2 = "2026-01-01T00:02:00Z"
FOREIGN = route_parent("theirs", OTHER, True, T0)
THEIR_GATEWAY_STATUS = {
    "conditions": [
        {
            "type": "Accepted",
            "status": "True",
            "reason": "Accepted",
            "message": "theirs",
            "observedGeneration": 1,
            "lastTransitionTime": T0,
        }
    ]
}


def seed(api: ApiServerDouble) -> None:
    api.create(gateway_class("ours", OURS))
    api.create(gateway_class("theirs", OTHER))
    api.create(gateway("gw", "ours"))
    api.create(gateway("other", "theirs", status=THEIR_GATEWAY_STATUS))
    api.create(http_route("r", ["gw", "theirs"], status={"parents": [FOREIGN]}))


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, 60))


def patches(api: ApiServerDouble) -> list[str]:
    return [r.path for r in api.requests(verb="patch", path_contains="/status")]


def test_statuses_are_patched_once_and_a_quiet_republish_sends_nothing(
    tmp_path: Path,
) -> None:
    with ApiServerDouble() as api:
        seed(api)
        other_before = api.get(GW, "gateways", "other", namespace="default")

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(client, controller_name=OURS, active=True)
            try:
                sink.publish(statuses(T1))
                await sink.wait_idle()
                assert sorted(patches(api)) == sorted(
                    [
                        f"/apis/{GW}/v1/gatewayclasses/ours/status",
                        f"/apis/{GW}/v1/namespaces/default/gateways/gw/status",
                        f"/apis/{GW}/v1/namespaces/default/httproutes/r/status",
                    ]
                )
                cls = api.get(GW, "gatewayclasses", "ours")
                assert cls["status"]["supportedFeatures"] == [
                    {"name": "Gateway"},
                    {"name": "HTTPRoute"},
                ]
                gw = api.get(GW, "gateways", "gw", namespace="default")
                assert gw["status"]["addresses"] == [{"type": "IPAddress", "value": "127.0.10.1"}]
                assert gw["status"]["listeners"][0]["attachedRoutes"] == 1
                route = api.get(GW, "httproutes", "r", namespace="default")
                # The other controller's entry stays, first; ours follows.
                assert route["status"]["parents"] == [FOREIGN, route_parent("gw", OURS, True, T1)]
                # Nothing of the other controller's Gateway or class was touched.
                assert api.get(GW, "gateways", "other", namespace="default") == other_before
                assert "status" not in api.get(GW, "gatewayclasses", "theirs")
                assert not api.requests(path_contains="/gateways/other")
                assert not api.requests(path_contains="/gatewayclasses/theirs")

                # The next build: same statuses, newer timestamps.  No request at all.
                api.clear_requests()
                sink.publish(statuses(T2))
                await sink.wait_idle()
                assert api.requests() == []

                # A condition flips: the route alone is written, its time moves; the
                # ResolvedRefs condition keeps the time of its last transition.
                sink.publish(statuses(T2, route_ok=False))
                await sink.wait_idle()
                assert patches(api) == [f"/apis/{GW}/v1/namespaces/default/httproutes/r/status"]
                route = api.get(GW, "httproutes", "r", namespace="default")
                ours = route["status"]["parents"][1]
                accepted, resolved = ours["conditions"]
                assert (accepted["status"], accepted["lastTransitionTime"]) == ("False", T2)
                assert (resolved["status"], resolved["lastTransitionTime"]) == ("True", T1)
                assert route["status"]["parents"][0] == FOREIGN
                assert sink.stats["errors"] == 0
            finally:
                await sink.close()
                await close_client(api, client)

        run(scenario())


def test_a_conflict_is_retried_after_reading_again(tmp_path: Path) -> None:
    """Another controller writes the route between our read and our patch: our patch
    (carrying the resourceVersion read) gets 409; the sink reads again and keeps the
    newcomer's entry."""
    with ApiServerDouble() as api:
        seed(api)
        late = route_parent("late", OTHER, True, T0)

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(client, controller_name=OURS, active=True, backoff=0.01)
            real_get = sink._get
            raced: list[str] = []

            async def racing_get(r: Any, namespace: str, name: str) -> Any:
                live = await real_get(r, namespace, name)
                if name == "r" and not raced:
                    raced.append(name)
                    # A write by somebody else lands right after our read.
                    api.patch_status(
                        GW, "httproutes", "r", {"parents": [FOREIGN, late]}, namespace="default"
                    )
                return live

            sink._get = racing_get  # type: ignore[method-assign]
            try:
                sink.publish(statuses(T1))
                await sink.wait_idle()
            finally:
                await sink.close()
                await close_client(api, client)
            assert raced == ["r"]
            assert sink.stats["conflicts"] == 1
            route_patches = api.requests(verb="patch", path_contains="/httproutes/r/status")
            assert [r.status for r in route_patches] == [409, 200]
            route = api.get(GW, "httproutes", "r", namespace="default")
            assert route["status"]["parents"] == [
                FOREIGN,
                late,
                route_parent("gw", OURS, True, T1),
            ]

        run(scenario())


def test_a_route_no_longer_attached_loses_our_entry_only(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        seed(api)

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(client, controller_name=OURS, active=True)
            try:
                sink.publish(statuses(T1))
                await sink.wait_idle()
                sink.publish(statuses(T2, with_route=False))
                await sink.wait_idle()
                route = api.get(GW, "httproutes", "r", namespace="default")
                assert route["status"]["parents"] == [FOREIGN]
                # Said once: a later build does not write it again.
                api.clear_requests()
                sink.publish(statuses(T2, with_route=False))
                await sink.wait_idle()
                assert api.requests() == []
            finally:
                await sink.close()
                await close_client(api, client)

        run(scenario())


def test_only_an_active_sink_writes_and_activation_resyncs_everything(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        seed(api)

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(client, controller_name=OURS, max_in_flight=2)
            try:
                sink.publish(statuses(T1))
                await asyncio.sleep(0.2)
                assert api.requests(path_contains="/status") == []
                sink.set_active(True)  # became the leader
                await sink.wait_idle()
                assert len(patches(api)) == 3
                # Somebody wipes our route entry while we are not leading ...
                sink.set_active(False)
                api.patch_status(GW, "httproutes", "r", {"parents": [FOREIGN]}, namespace="default")
                sink.publish(statuses(T2))
                await asyncio.sleep(0.2)
                api.clear_requests()
                # ... and the next leadership reads everything again, fixing only it.
                sink.set_active(True)
                await sink.wait_idle()
                assert len(api.requests(verb="get", path_contains="/status")) == 3
                assert patches(api) == [f"/apis/{GW}/v1/namespaces/default/httproutes/r/status"]
            finally:
                await sink.close()
                await close_client(api, client)

        run(scenario())


def test_an_object_that_is_gone_is_dropped_and_errors_are_retried_later(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        seed(api)
        api.delete(GW, "httproutes", "r", namespace="default")

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(
                client,
                controller_name=OURS,
                active=True,
                attempts=2,
                backoff=0.01,
                retry_after=0.3,
            )
            try:
                sink.publish(statuses(T1))
                await sink.wait_idle()
                assert sink.stats["gone"] == 1
                assert len(patches(api)) == 2
                # The API server answers 503 for a while: bounded attempts, then a
                # retry later that succeeds once it serves again.
                api.set_unavailable("503")
                cls, gw, _route = statuses(T2)
                moved = replace(
                    gw,
                    generation=2,
                    status={
                        **gw.status,
                        "addresses": [{"type": "IPAddress", "value": "127.0.10.2"}],
                    },
                )
                sink.publish([cls, moved])
                await sink.wait_idle()
                assert sink.stats["errors"] >= 2
                api.set_unavailable(None)
                await api.async_wait_for(
                    lambda: (
                        api.get(GW, "gateways", "gw", namespace="default")["status"]["addresses"][
                            0
                        ]["value"]
                        == "127.0.10.2"
                    ),
                    within=5.0,
                )
            finally:
                await sink.close()
                await close_client(api, client)

        run(scenario())


def test_an_unused_policy_is_read_once_and_a_tombstone_outlives_a_pause(tmp_path: Path) -> None:
    """A BackendTLSPolicy none of our Gateways uses (``ancestors: []``) is read once and
    never written; a route detached while this replica does not lead still loses our
    entry when it leads again, however many builds came in between."""
    with ApiServerDouble() as api:
        seed(api)
        api.create(
            {
                "apiVersion": f"{GW}/v1",
                "kind": "BackendTLSPolicy",
                "metadata": {"name": "p", "namespace": "default"},
                "spec": {
                    "targetRefs": [{"group": "", "kind": "Service", "name": "svc"}],
                    "validation": {"hostname": "svc.example", "wellKnownCACertificates": "System"},
                },
            }
        )
        policy = ObjectStatus(
            api_version=f"{GW}/v1",
            kind="BackendTLSPolicy",
            namespace="default",
            name="p",
            generation=1,
            status={"ancestors": []},
        )

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(client, controller_name=OURS, active=True)
            try:
                sink.publish([*statuses(T1), policy])
                await sink.wait_idle()
                assert len(api.requests(verb="get", path_contains="/backendtlspolicies/p")) == 1
                assert not api.requests(verb="patch", path_contains="/backendtlspolicies/p")
                assert "status" not in api.get(GW, "backendtlspolicies", "p", namespace="default")
                api.clear_requests()
                sink.publish([*statuses(T2), policy])
                await sink.wait_idle()
                assert api.requests() == []

                sink.set_active(False)
                sink.publish([*statuses(T2, with_route=False), policy])
                sink.publish([*statuses(T2, with_route=False), policy])
                sink.set_active(True)
                await sink.wait_idle()
                route = api.get(GW, "httproutes", "r", namespace="default")
                assert route["status"]["parents"] == [FOREIGN]
            finally:
                await sink.close()
                await close_client(api, client)

        run(scenario())


def test_writes_are_bounded_in_flight_and_coalesced_per_object(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        seed(api)
        names = [f"r{i}" for i in range(6)]
        for name in names:
            api.create(http_route(name, ["gw"]))

        def routes(ok: bool, now: str) -> list[ObjectStatus]:
            return [
                ObjectStatus(
                    api_version=f"{GW}/v1",
                    kind="HTTPRoute",
                    namespace="default",
                    name=name,
                    generation=1,
                    status={"parents": [route_parent("gw", OURS, ok, now)]},
                )
                for name in names
            ]

        async def scenario() -> None:
            client = await kube_client(api, tmp_path)
            sink = KubernetesStatusSink(client, controller_name=OURS, active=True, max_in_flight=2)
            try:
                api.pause()  # every request hangs until resumed
                sink.publish(routes(True, T1))
                await asyncio.sleep(0.3)
                assert (sink.state()["inFlight"], sink.state()["queued"]) == (2, 4)
                # Published again: one entry per object (the two in flight are queued
                # again, to be written once more at their newest), not one per publish.
                sink.publish(routes(False, T2))
                assert sink.state()["queued"] == 6
                sink.publish(routes(False, T2))
                assert sink.state()["queued"] == 6
                api.resume()
                await sink.wait_idle()
                for name in names:
                    route = api.get(GW, "httproutes", name, namespace="default")
                    [entry] = route["status"]["parents"]
                    assert entry["conditions"][0]["status"] == "False", name
                # The two caught in flight were written twice (old, then new); the four
                # queued ones once, at their newest.
                assert len(patches(api)) == 8
            finally:
                api.resume()
                await sink.close()
                await close_client(api, client)

        run(scenario())
