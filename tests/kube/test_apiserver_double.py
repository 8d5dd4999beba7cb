"""The API-server double against the real client library (kubernetes_asyncio).

Each test drives the double the way gatewayd's Kubernetes source and status writer will:
discovery, list then watch from the list's resourceVersion, bookmarks, 410 Expired and a
relist, dropped connections, merge patches of /status, optimistic concurrency and a
lease race.  Every wait is bounded; the whole module runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from kits.apiserver import (
    GATEWAY_GROUP,
    ApiError,
    ApiServerDouble,
    field_matcher,
    json_patch,
    label_matcher,
    merge_patch,
)
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

T = TypeVar("T")
GW = GATEWAY_GROUP
MERGE = "application/merge-patch+json"


def run(coro: Coroutine[Any, Any, T], limit: float = 20.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, limit))


@contextlib.asynccontextmanager
async def kube(
    api: ApiServerDouble, *, token: str | None = None, settle: bool = True
) -> AsyncIterator[client.ApiClient]:
    """A real ApiClient configured from the double's kubeconfig (``token`` overrides).

    On exit, waits until the double holds no connection (``settle=False`` skips that for
    an inner client whose outer one still holds its own).
    """
    conf = api.kubeconfig()
    if token is not None:
        conf["users"][0]["user"] = {"token": token} if token else {}
    cfg = client.Configuration()
    await config.load_kube_config_from_dict(conf, client_configuration=cfg)
    async with client.ApiClient(cfg) as ac:
        yield ac
    if settle:
        await api.async_wait_disconnected()


def gateway(name: str, ns: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"gatewayClassName": "gatewayd", "listeners": [], **spec},
    }


async def raw_get(ac: client.ApiClient, path: str) -> Any:
    """GET a path the generated APIs have no method for (a group/version's discovery)."""
    return await ac.call_api(
        path,
        "GET",
        response_types_map={200: "object"},
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )


async def expect_api_error(aw: Awaitable[Any], status: int) -> dict[str, Any]:
    """Await ``aw``; it must fail with ``status``; returns the parsed Status body."""
    with pytest.raises(ApiException) as info:
        await aw
    assert info.value.status == status, info.value
    body: dict[str, Any] = json.loads(info.value.body) if info.value.body else {}
    return body


# ----------------------------------------------------------------------------- discovery


def test_discovery_lists_groups_versions_and_status_subresources(
    apiserver: ApiServerDouble,
) -> None:
    async def main() -> None:
        async with kube(apiserver) as ac:
            core = await client.CoreApi(ac).get_api_versions()
            assert core.versions == ["v1"]
            groups = {g.name: g for g in (await client.ApisApi(ac).get_api_versions()).groups}
            assert {"discovery.k8s.io", "coordination.k8s.io", GW} <= set(groups)
            gw_group = groups[GW]
            assert gw_group.preferred_version.version == "v1"
            assert [v.version for v in gw_group.versions] == [
                "v1",
                "v1beta1",
                "v1alpha3",
                "v1alpha2",
            ]

            core_res = {
                r.name: r for r in (await client.CoreV1Api(ac).get_api_resources()).resources
            }
            assert core_res["services"].namespaced and core_res["services"].kind == "Service"
            assert "services/status" in core_res and "secrets/status" not in core_res
            assert not core_res["namespaces"].namespaced
            leases = (await client.CoordinationV1Api(ac).get_api_resources()).resources
            assert [r.name for r in leases] == ["leases"]
            assert "watch" in leases[0].verbs and "update" in leases[0].verbs
            slices = (await client.DiscoveryV1Api(ac).get_api_resources()).resources
            assert [r.kind for r in slices] == ["EndpointSlice"]

            v1 = await raw_get(ac, f"/apis/{GW}/v1")
            names = {r["name"]: r for r in v1["resources"]}
            assert names["gatewayclasses"]["namespaced"] is False
            assert names["gateways/status"]["verbs"] == ["get", "patch", "update"]
            assert "referencegrants/status" not in names
            alpha3 = await raw_get(ac, f"/apis/{GW}/v1alpha3")
            assert {r["name"] for r in alpha3["resources"]} >= {"tlsroutes", "backendtlspolicies"}

    run(main())


def test_a_missing_crd_is_absent_from_discovery_and_answers_404() -> None:
    omit = [f"{GW}/v1alpha2", f"{GW}/v1/tlsroutes", "discovery.k8s.io"]
    with ApiServerDouble(omit=omit) as api:

        async def main() -> None:
            async with kube(api) as ac:
                body = await expect_api_error(raw_get(ac, f"/apis/{GW}/v1alpha2"), 404)
                assert body["kind"] == "Status" and body["reason"] == "NotFound"
                await expect_api_error(raw_get(ac, "/apis/discovery.k8s.io/v1"), 404)
                v1 = await raw_get(ac, f"/apis/{GW}/v1")
                assert "tlsroutes" not in {r["name"] for r in v1["resources"]}
                assert "httproutes" in {r["name"] for r in v1["resources"]}
                groups = (await client.ApisApi(ac).get_api_versions()).groups
                assert "discovery.k8s.io" not in {g.name for g in groups}
                co = client.CustomObjectsApi(ac)
                body = await expect_api_error(
                    co.list_cluster_custom_object(GW, "v1", "tlsroutes"), 404
                )
                assert body["reason"] == "NotFound"
                # Another served version of the same kind still answers.
                listed = await co.list_cluster_custom_object(GW, "v1alpha3", "tlsroutes")
                assert listed["items"] == [] and listed["kind"] == "TLSRouteList"

        run(main())


# ----------------------------------------------------------------------------- auth and config


def test_requests_without_the_token_get_401(apiserver: ApiServerDouble) -> None:
    async def main() -> None:
        for token in ("wrong-token", ""):
            async with kube(apiserver, token=token) as ac:
                body = await expect_api_error(client.CoreV1Api(ac).list_namespace(), 401)
                assert body["reason"] == "Unauthorized"
        async with kube(apiserver) as ac:
            assert (await client.CoreV1Api(ac).list_namespace()).items == []

    run(main())
    refused = apiserver.requests(status=401)
    assert len(refused) == 2 and all(r.verb == "list" for r in refused)
    assert len(apiserver.requests(verb="list")) == 3
    assert len(apiserver.requests(verb="GET")) == 3 and apiserver.requests(verb="get") == []


def test_kubeconfig_file_and_in_cluster_files_are_accepted_by_the_loaders(
    apiserver: ApiServerDouble, tmp_path: Path
) -> None:
    path = apiserver.write_kubeconfig(tmp_path / "kubeconfig", context="ctx", namespace="team")
    incluster = apiserver.write_incluster(tmp_path / "sa", namespace="team")
    apiserver.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})

    async def main() -> None:
        cfg = client.Configuration()
        await config.load_kube_config(
            config_file=str(path), context="ctx", client_configuration=cfg
        )
        async with client.ApiClient(cfg) as ac:
            names = [n.metadata.name for n in (await client.CoreV1Api(ac).list_namespace()).items]
            assert names == ["team"]
        cfg2 = client.Configuration()
        config.load_incluster_config(
            client_configuration=cfg2,
            token_filename=str(incluster.token_path),
            cert_filename=str(incluster.ca_path),
            environ=incluster.env,
        )
        assert cfg2.host == apiserver.url
        async with client.ApiClient(cfg2) as ac:
            assert (await client.CoreV1Api(ac).read_namespace("team")).metadata.name == "team"

    run(main())
    assert incluster.namespace_path.read_text() == "team"


# ----------------------------------------------------------------------------- list and watch


def test_list_then_watch_from_its_resource_version_with_bookmarks() -> None:
    with ApiServerDouble(bookmark_interval=0.1) as api:
        api.create(gateway("a"))
        api.create(gateway("other", ns="elsewhere"))

        async def main() -> list[tuple[str, str, str]]:
            async with kube(api) as ac:
                co = client.CustomObjectsApi(ac)
                listed = await co.list_namespaced_custom_object(GW, "v1", "default", "gateways")
                assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
                all_ns = await co.list_cluster_custom_object(GW, "v1", "gateways")
                assert len(all_ns["items"]) == 2
                rv = listed["metadata"]["resourceVersion"]
                assert rv == str(api.resource_version)

                async def writer() -> None:
                    await api.async_wait_for(lambda: api.open_watches == 1)
                    await asyncio.to_thread(api.create, gateway("b"))
                    await asyncio.to_thread(api.create, gateway("c", ns="elsewhere"))
                    await asyncio.to_thread(
                        api.patch, GW, "gateways", "a", {"spec": {"x": 1}}, namespace="default"
                    )
                    await asyncio.to_thread(api.delete, GW, "gateways", "b", namespace="default")

                task = asyncio.create_task(writer())
                seen: list[tuple[str, str, str]] = []
                w = watch.Watch()
                async for ev in w.stream(
                    co.list_namespaced_custom_object,
                    GW,
                    "v1",
                    "default",
                    "gateways",
                    resource_version=rv,
                    allow_watch_bookmarks=True,
                    timeout_seconds=5,
                ):
                    obj = ev["raw_object"]
                    seen.append(
                        (
                            ev["type"],
                            obj["metadata"].get("name", ""),
                            obj["metadata"]["resourceVersion"],
                        )
                    )
                    if ev["type"] == "BOOKMARK" and len(seen) >= 4:
                        w.stop()
                await w.close()
                await task
                return seen

        seen = run(main())
    changes = [(t, n) for t, n, _ in seen if t != "BOOKMARK"]
    assert changes == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    rvs = [int(rv) for _, _, rv in seen]
    assert rvs == sorted(rvs), "resourceVersions only grow along a watch"
    bookmarks = [rv for t, _, rv in seen if t == "BOOKMARK"]
    assert bookmarks and int(bookmarks[-1]) == max(rvs)


def test_watch_without_resource_version_starts_with_the_current_objects(
    apiserver: ApiServerDouble,
) -> None:
    apiserver.create(gateway("a"))
    apiserver.create(gateway("b"))

    async def main() -> list[tuple[str, str]]:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            out = []
            w = watch.Watch()
            async for ev in w.stream(
                co.list_cluster_custom_object, GW, "v1", "gateways", timeout_seconds=1
            ):
                out.append((ev["type"], ev["raw_object"]["metadata"]["name"]))
                if len(out) == 2:
                    w.stop()
            await w.close()
            return out

    assert run(main()) == [("ADDED", "a"), ("ADDED", "b")]


def test_an_expired_resource_version_gives_410_then_a_relist_recovers(
    apiserver: ApiServerDouble,
) -> None:
    apiserver.create(gateway("a"))

    async def main() -> None:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            old = (await co.list_cluster_custom_object(GW, "v1", "gateways"))["metadata"][
                "resourceVersion"
            ]
            apiserver.create(gateway("b"))
            apiserver.expire_history()

            # With timeoutSeconds the library does not retry: the 410 ERROR event surfaces.
            w = watch.Watch()
            with pytest.raises(ApiException) as info:
                async for _ in w.stream(
                    co.list_cluster_custom_object,
                    GW,
                    "v1",
                    "gateways",
                    resource_version=old,
                    timeout_seconds=2,
                ):
                    pass
            await w.close()
            assert info.value.status == 410 and "Expired" in str(info.value.reason)

            # Without it the library retries once from the same version, then gives up.
            w = watch.Watch()
            with pytest.raises(ApiException) as info:
                async for _ in w.stream(
                    co.list_cluster_custom_object, GW, "v1", "gateways", resource_version=old
                ):
                    pass
            await w.close()
            assert info.value.status == 410

            # A list at an exact, compacted version is an HTTP 410 too.
            body = await expect_api_error(
                co.list_cluster_custom_object(
                    GW, "v1", "gateways", resource_version=old, resource_version_match="Exact"
                ),
                410,
            )
            assert body["reason"] == "Expired"

            # Relist, then watch from the new version: later changes arrive.
            listed = await co.list_cluster_custom_object(GW, "v1", "gateways")
            assert sorted(i["metadata"]["name"] for i in listed["items"]) == ["a", "b"]
            apiserver.create(gateway("c"))
            w = watch.Watch()
            async for ev in w.stream(
                co.list_cluster_custom_object,
                GW,
                "v1",
                "gateways",
                resource_version=listed["metadata"]["resourceVersion"],
                timeout_seconds=2,
            ):
                assert (ev["type"], ev["raw_object"]["metadata"]["name"]) == ("ADDED", "c")
                w.stop()
            await w.close()

    run(main())
    errors = [r for r in apiserver.requests(verb="watch") if r.query.get("resourceVersion")]
    assert len(errors) >= 4


def test_a_dropped_watch_resumes_from_its_last_resource_version(
    apiserver: ApiServerDouble,
) -> None:
    async def main() -> list[str]:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            rv = (await co.list_cluster_custom_object(GW, "v1", "gateways"))["metadata"][
                "resourceVersion"
            ]
            apiserver.create(gateway("a"))
            w = watch.Watch()
            stream = w.stream(
                co.list_cluster_custom_object,
                GW,
                "v1",
                "gateways",
                resource_version=rv,
                timeout_seconds=10,
            )
            first = await stream.__anext__()
            assert first["raw_object"]["metadata"]["name"] == "a"
            await asyncio.to_thread(apiserver.drop_watches)
            apiserver.create(gateway("b"))  # happens while nobody watches
            with pytest.raises(aiohttp.ClientPayloadError):
                await stream.__anext__()
            await apiserver.async_wait_for(lambda: apiserver.open_watches == 0)
            # Resume from the last version seen: the missed event is replayed.
            names = []
            w2 = watch.Watch()
            async for ev in w2.stream(
                co.list_cluster_custom_object,
                GW,
                "v1",
                "gateways",
                resource_version=w.resource_version,
                timeout_seconds=2,
            ):
                names.append(ev["raw_object"]["metadata"]["name"])
                w2.stop()
            await w2.close()
            return names

    assert run(main()) == ["b"]


def test_selectors_filter_lists_and_watches(apiserver: ApiServerDouble) -> None:
    for name, tier in (("web", "front"), ("db", "back")):
        apiserver.create(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "default", "labels": {"tier": tier}},
                "spec": {"ports": [{"port": 80}]},
            }
        )
        apiserver.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-tls", "namespace": "default"},
                "data": {},
            }
        )

    async def main() -> list[tuple[str, str]]:
        async with kube(apiserver) as ac:
            core = client.CoreV1Api(ac)
            front = await core.list_namespaced_service("default", label_selector="tier=front")
            assert [s.metadata.name for s in front.items] == ["web"]
            some = await core.list_namespaced_service(
                "default", label_selector="tier in (front,back),!gone"
            )
            assert len(some.items) == 2
            secret = await core.list_namespaced_secret(
                "default", field_selector="metadata.name=db-tls"
            )
            assert [s.metadata.name for s in secret.items] == ["db-tls"]
            await expect_api_error(
                core.list_namespaced_secret("default", field_selector="type=x"), 400
            )

            rv = front.metadata.resource_version
            # Moving "db" into the selector is an ADDED, moving "web" out a DELETED.
            apiserver.patch(
                "",
                "services",
                "db",
                {"metadata": {"labels": {"tier": "front"}}},
                namespace="default",
            )
            apiserver.patch(
                "",
                "services",
                "web",
                {"metadata": {"labels": {"tier": "back"}}},
                namespace="default",
            )
            out = []
            w = watch.Watch()
            async for ev in w.stream(
                core.list_namespaced_service,
                "default",
                label_selector="tier=front",
                resource_version=rv,
                timeout_seconds=2,
            ):
                out.append((ev["type"], ev["object"].metadata.name))
                if len(out) == 2:
                    w.stop()
            await w.close()
            return out

    assert run(main()) == [("ADDED", "db"), ("DELETED", "web")]


# ----------------------------------------------------------------------------- writes


def test_merge_patch_of_status_leaves_spec_and_generation_alone(
    apiserver: ApiServerDouble,
) -> None:
    async def main() -> None:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            gw = gateway("gw")
            gw["status"] = {"conditions": [{"type": "Ignored"}]}
            created = await co.create_namespaced_custom_object(GW, "v1", "default", "gateways", gw)
            assert "status" not in created, "a create through /gateways drops .status"
            assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]

            patched = await co.patch_namespaced_custom_object_status(
                GW,
                "v1",
                "default",
                "gateways",
                "gw",
                {
                    "status": {"conditions": [{"type": "Accepted"}]},
                    "spec": {"gatewayClassName": "evil"},
                },
                _content_type=MERGE,
            )
            assert patched["status"]["conditions"] == [{"type": "Accepted"}]
            assert patched["spec"]["gatewayClassName"] == "gatewayd"
            assert patched["metadata"]["generation"] == 1
            assert int(patched["metadata"]["resourceVersion"]) > int(
                created["metadata"]["resourceVersion"]
            )

            # A spec change through the main resource bumps generation and keeps status.
            spec = await co.patch_namespaced_custom_object(
                GW,
                "v1",
                "default",
                "gateways",
                "gw",
                {"spec": {"gatewayClassName": "other"}, "status": None},
                _content_type=MERGE,
            )
            assert spec["metadata"]["generation"] == 2
            assert spec["status"]["conditions"] == [{"type": "Accepted"}]

            # The library's default for a dict body is a JSON patch, which the server refuses.
            body = await expect_api_error(
                co.patch_namespaced_custom_object_status(
                    GW, "v1", "default", "gateways", "gw", {"status": {}}
                ),
                400,
            )
            assert body["reason"] == "BadRequest"
            # A real JSON patch (a list) works on /status.
            jp = await co.patch_namespaced_custom_object_status(
                GW,
                "v1",
                "default",
                "gateways",
                "gw",
                [{"op": "add", "path": "/status/addresses", "value": [{"value": "10.0.0.1"}]}],
            )
            assert jp["status"]["addresses"] == [{"value": "10.0.0.1"}]

            # PUT on /status replaces status only.
            cur = await co.get_namespaced_custom_object_status(
                GW, "v1", "default", "gateways", "gw"
            )
            cur["status"] = {"conditions": []}
            cur["spec"]["gatewayClassName"] = "ignored"
            put = await co.replace_namespaced_custom_object_status(
                GW, "v1", "default", "gateways", "gw", cur
            )
            assert (
                put["status"] == {"conditions": []} and put["spec"]["gatewayClassName"] == "other"
            )

    run(main())
    patches = apiserver.requests(verb="PATCH", path_contains="/status")
    assert [r.status for r in patches] == [200, 400, 200]
    assert patches[0].content_type == MERGE and patches[0].body["status"]
    assert apiserver.errors == []


def test_stale_writes_conflict_and_missing_objects_are_404(apiserver: ApiServerDouble) -> None:
    async def main() -> None:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            first = await co.create_namespaced_custom_object(
                GW, "v1", "default", "gateways", gateway("gw")
            )
            body = await expect_api_error(
                co.create_namespaced_custom_object(GW, "v1", "default", "gateways", gateway("gw")),
                409,
            )
            assert body["reason"] == "AlreadyExists"
            first["spec"]["gatewayClassName"] = "one"
            updated = await co.replace_namespaced_custom_object(
                GW, "v1", "default", "gateways", "gw", first
            )
            first["spec"]["gatewayClassName"] = "two"  # still carries the old resourceVersion
            body = await expect_api_error(
                co.replace_namespaced_custom_object(GW, "v1", "default", "gateways", "gw", first),
                409,
            )
            assert (
                body["reason"] == "Conflict" and "the object has been modified" in body["message"]
            )
            stale = {
                "metadata": {"resourceVersion": first["metadata"]["resourceVersion"]},
                "status": {},
            }
            await expect_api_error(
                co.patch_namespaced_custom_object_status(
                    GW, "v1", "default", "gateways", "gw", stale, _content_type=MERGE
                ),
                409,
            )
            del updated["metadata"]["resourceVersion"]
            body = await expect_api_error(
                co.replace_namespaced_custom_object(GW, "v1", "default", "gateways", "gw", updated),
                422,
            )
            assert body["reason"] == "Invalid"
            body = await expect_api_error(
                co.get_namespaced_custom_object(GW, "v1", "default", "gateways", "nope"), 404
            )
            assert body == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": 'gateways.gateway.networking.k8s.io "nope" not found',
                "reason": "NotFound",
                "code": 404,
                "details": {"name": "nope", "group": GW, "kind": "gateways"},
            }
            await co.delete_namespaced_custom_object(GW, "v1", "default", "gateways", "gw")
            await expect_api_error(
                co.delete_namespaced_custom_object(GW, "v1", "default", "gateways", "gw"), 404
            )

    run(main())
    assert apiserver.errors == []


def test_lease_race_has_exactly_one_winner(apiserver: ApiServerDouble) -> None:
    def lease(holder: str) -> client.V1Lease:
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name="gatewayd-leader", namespace="default"),
            spec=client.V1LeaseSpec(holder_identity=holder, lease_duration_seconds=15),
        )

    async def main() -> None:
        async with kube(apiserver) as one, kube(apiserver, settle=False) as two:
            apis = [client.CoordinationV1Api(one), client.CoordinationV1Api(two)]
            created = await asyncio.gather(
                *(
                    api.create_namespaced_lease("default", lease(f"pod-{i}"))
                    for i, api in enumerate(apis)
                ),
                return_exceptions=True,
            )
            wins = [c for c in created if isinstance(c, client.V1Lease)]
            losses = [c for c in created if isinstance(c, ApiException)]
            assert len(wins) == 1 and [e.status for e in losses] == [409]

            # Both read the same version, both try to take over: one update wins.
            seen = await asyncio.gather(
                *(api.read_namespaced_lease("gatewayd-leader", "default") for api in apis)
            )
            assert seen[0].metadata.resource_version == seen[1].metadata.resource_version
            for i, obj in enumerate(seen):
                obj.spec.holder_identity = f"taker-{i}"
            results = await asyncio.gather(
                *(
                    api.replace_namespaced_lease("gatewayd-leader", "default", obj)
                    for api, obj in zip(apis, seen, strict=True)
                ),
                return_exceptions=True,
            )
            winners = [r.spec.holder_identity for r in results if isinstance(r, client.V1Lease)]
            conflicts = [r.status for r in results if isinstance(r, ApiException)]
            assert len(winners) == 1 and conflicts == [409]
            final = await apis[0].read_namespaced_lease("gatewayd-leader", "default")
            assert final.spec.holder_identity == winners[0]

    run(main())


def test_finalizers_hold_a_delete_until_removed(apiserver: ApiServerDouble) -> None:
    obj = gateway("gw")
    obj["metadata"]["finalizers"] = ["gatewayd.dev/cleanup"]
    apiserver.create(obj)

    async def main() -> None:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            held = await co.delete_namespaced_custom_object(GW, "v1", "default", "gateways", "gw")
            assert held["metadata"]["deletionTimestamp"]
            await co.patch_namespaced_custom_object(
                GW,
                "v1",
                "default",
                "gateways",
                "gw",
                {"metadata": {"finalizers": None}},
                _content_type=MERGE,
            )
            await expect_api_error(
                co.get_namespaced_custom_object(GW, "v1", "default", "gateways", "gw"), 404
            )

    run(main())


# ----------------------------------------------------------------------------- failure modes


def test_unavailable_and_paused_servers_for_backoff_tests(apiserver: ApiServerDouble) -> None:
    async def main() -> None:
        async with kube(apiserver) as ac:
            core = client.CoreV1Api(ac)
            await core.list_namespace()
            apiserver.set_unavailable("503")
            body = await expect_api_error(core.list_namespace(), 503)
            assert body["reason"] == "ServiceUnavailable"
            apiserver.set_unavailable("refuse")
            with pytest.raises(aiohttp.ClientError):
                await core.list_namespace()
            with pytest.raises(aiohttp.ClientConnectorError):
                await core.list_namespace()
            apiserver.set_unavailable(None)
            assert (await core.list_namespace()).items == []

            apiserver.pause()
            pending = asyncio.ensure_future(core.list_namespace())
            await asyncio.sleep(0.2)
            assert not pending.done(), "a paused server holds the request"
            apiserver.resume()
            assert (await asyncio.wait_for(pending, 5)).items == []

    run(main())


def test_history_request_log_and_bodies_are_bounded(tmp_path: Path) -> None:
    with ApiServerDouble(history_size=5, log_size=3) as api:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
        start = api.resource_version
        for i in range(20):
            api.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}})
        assert len(api._history) == 5

        async def main() -> None:
            async with kube(api) as ac:
                core = client.CoreV1Api(ac)
                for _ in range(5):
                    await core.list_namespaced_config_map("default", limit=7)
                w = watch.Watch()
                with pytest.raises(ApiException) as info:
                    async for _ in w.stream(
                        core.list_namespaced_config_map,
                        "default",
                        resource_version=str(start),
                        timeout_seconds=1,
                    ):
                        pass
                await w.close()
                assert info.value.status == 410
                # Newer than the history's start: replayed.
                w = watch.Watch()
                async for ev in w.stream(
                    core.list_namespaced_config_map,
                    "default",
                    resource_version=str(api.resource_version - 2),
                    timeout_seconds=1,
                ):
                    assert ev["object"].metadata.name == "c18"
                    w.stop()
                await w.close()
            # A body over 3 MiB is refused before it is parsed.
            tls = ssl.create_default_context(cadata=api.ca_pem.decode())
            big = b'{"data": "' + b"y" * (4 * 1024 * 1024) + b'"}'
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{api.url}/api/v1/namespaces/default/configmaps",
                    data=io.BytesIO(big),
                    headers={
                        "Authorization": "Bearer double-token",
                        "Content-Type": "application/json",
                    },
                    ssl=tls,
                ) as resp,
            ):
                assert resp.status == 413
                assert (await resp.json())["reason"] == "RequestEntityTooLarge"

        run(main())
        assert len(api.requests()) == 3


def test_pages_of_a_list_follow_continue_tokens(apiserver: ApiServerDouble) -> None:
    for i in range(5):
        apiserver.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}})

    async def main() -> list[str]:
        async with kube(apiserver) as ac:
            core = client.CoreV1Api(ac)
            names: list[str] = []
            token = None
            for _ in range(5):
                page = await core.list_config_map_for_all_namespaces(limit=2, _continue=token)
                names += [c.metadata.name for c in page.items]
                token = page.metadata._continue
                if not token:
                    break
            return names

    assert run(main()) == [f"c{i}" for i in range(5)]


def test_wait_for_sees_requests_from_another_thread(apiserver: ApiServerDouble) -> None:
    async def writer() -> None:
        async with kube(apiserver) as ac:
            await client.CoreV1Api(ac).create_namespace({"metadata": {"name": "x"}})

    def later() -> None:
        run(writer())

    t = threading.Thread(target=later)
    t.start()
    got = apiserver.wait_for(
        lambda: apiserver.requests(verb="create", path_contains="/namespaces"), 5
    )
    t.join(5)
    assert got[0].body["metadata"]["name"] == "x" and got[0].status == 201
    with pytest.raises(TimeoutError):
        apiserver.wait_for(lambda: apiserver.requests(verb="delete"), 0.1)


def test_a_closed_watch_is_forgotten_and_an_ended_one_is_resumed_by_the_library(
    apiserver: ApiServerDouble,
) -> None:
    async def main() -> list[str]:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            rv = (await co.list_cluster_custom_object(GW, "v1", "gateways"))["metadata"][
                "resourceVersion"
            ]
            w = watch.Watch()
            stream = w.stream(
                co.list_cluster_custom_object, GW, "v1", "gateways", resource_version=rv
            )
            apiserver.create(gateway("a"))
            names = [(await stream.__anext__())["raw_object"]["metadata"]["name"]]
            # The server ends the stream (as its watch timeout does): the library watches
            # again from the last resourceVersion it saw, and misses nothing.
            await asyncio.to_thread(apiserver.end_watches)
            apiserver.create(gateway("b"))
            names.append((await stream.__anext__())["raw_object"]["metadata"]["name"])
            await w.close()
            await apiserver.async_wait_for(lambda: apiserver.open_watches == 0)
            return names

    assert run(main()) == ["a", "b"]
    watches = apiserver.requests(verb="watch")
    assert len(watches) == 2
    assert int(watches[1].query["resourceVersion"]) > int(watches[0].query["resourceVersion"])


# ----------------------------------------------------------------------------- pure helpers


def _labelled(**labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "n", "namespace": "ns", "labels": labels}}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("env in (prod, staging),tier notin (db)", {"env": "prod", "tier": "web"}, True),
        ("env in (prod, staging),tier notin (db)", {"env": "prod", "tier": "db"}, False),
        ("env in (prod)", {}, False),
        ("", {"a": "b"}, True),
    ],
)
def test_label_selectors_follow_the_api_grammar(
    selector: str, labels: dict[str, str], expected: bool
) -> None:
    assert label_matcher(selector)(_labelled(**labels)) is expected


def test_bad_selectors_are_400() -> None:
    res = ApiServerDouble().resource(GW, "gateways", "v1")
    for bad in ("a=b=c", "!a=b", "in (x)"):
        with pytest.raises(ApiError) as info:
            label_matcher(bad)
        assert info.value.code == 400
    with pytest.raises(ApiError) as info:
        field_matcher("spec.gatewayClassName=x", res)
    assert "field label not supported" in info.value.message
    match = field_matcher("metadata.name=n,metadata.namespace!=other", res)
    assert match(_labelled()) and not field_matcher("metadata.name=m", res)(_labelled())


def test_merge_and_json_patches() -> None:
    doc = {"spec": {"a": 1, "b": [1, 2], "c": {"d": 1}}, "status": {"x": 1}}
    assert merge_patch(doc, {"spec": {"a": None, "b": [3], "c": {"e": 2}}}) == {
        "spec": {"b": [3], "c": {"d": 1, "e": 2}},
        "status": {"x": 1},
    }
    assert doc["spec"]["a"] == 1, "patches never change their input"
    patched = json_patch(
        doc,
        [
            {"op": "add", "path": "/spec/b/-", "value": 3},
            {"op": "replace", "path": "/spec/a", "value": 2},
            {"op": "remove", "path": "/status/x"},
            {"op": "move", "from": "/spec/c", "path": "/spec/moved"},
            {"op": "copy", "from": "/spec/a", "path": "/spec/a~1copy"},
            {"op": "test", "path": "/spec/a", "value": 2},
        ],
    )
    assert patched == {
        "spec": {"a": 2, "b": [1, 2, 3], "moved": {"d": 1}, "a/copy": 2},
        "status": {},
    }
    for ops, code in (
        ({"op": "add"}, 400),
        ([{"op": "remove", "path": "/nope"}], 422),
        ([{"op": "test", "path": "/spec/a", "value": 9}], 422),
        ([{"op": "frobnicate", "path": "/spec/a"}], 400),
    ):
        with pytest.raises(ApiError) as info:
            json_patch(doc, ops)
        assert info.value.code == code, ops


CLIENT_SCRIPT = """
import asyncio, json, sys
from kubernetes_asyncio import client, config

async def main():
    cfg = client.Configuration()
    await config.load_kube_config(config_file=sys.argv[1], client_configuration=cfg)
    async with client.ApiClient(cfg) as ac:
        co = client.CustomObjectsApi(ac)
        listed = await co.list_cluster_custom_object("gateway.networking.k8s.io", "v1", "gateways")
        await co.patch_namespaced_custom_object_status(
            "gateway.networking.k8s.io", "v1", "default", "gateways", "gw",
            {"status": {"conditions": [{"type": "Accepted", "status": "True"}]}},
            _content_type="application/merge-patch+json",
        )
    print(json.dumps([i["metadata"]["name"] for i in listed["items"]]))

asyncio.run(main())
"""


def test_a_subprocess_reaches_the_double_through_a_kubeconfig_file(
    apiserver: ApiServerDouble, apiserver_kubeconfig: Path
) -> None:
    """What ``gatewayd run --kubernetes --kubeconfig PATH`` will do, in a child process."""
    apiserver.create(gateway("gw"))
    kubeconfig = apiserver_kubeconfig
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(kubeconfig)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["gw"]
    obj = apiserver.wait_for_object(
        GW, "gateways", "gw", lambda o: o.get("status"), namespace="default", within=5
    )
    assert obj["status"]["conditions"][0]["type"] == "Accepted"
    assert obj["metadata"]["generation"] == 1


def test_resource_version_match_needs_a_resource_version(apiserver: ApiServerDouble) -> None:
    async def main() -> None:
        async with kube(apiserver) as ac:
            co = client.CustomObjectsApi(ac)
            body = await expect_api_error(
                co.list_cluster_custom_object(GW, "v1", "gateways", resource_version_match="Exact"),
                422,
            )
            assert body["reason"] == "Invalid"
            # NotOlderThan an old version is served from the current state.
            apiserver.create(gateway("a"))
            listed = await co.list_cluster_custom_object(
                GW, "v1", "gateways", resource_version="1", resource_version_match="NotOlderThan"
            )
            assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
            await expect_api_error(
                co.list_cluster_custom_object(GW, "v1", "gateways", resource_version="999"), 504
            )

    run(main())


def test_delete_collection_and_a_restart_on_the_same_port() -> None:
    with ApiServerDouble() as api:
        for i, app in enumerate(("a", "a", "b")):
            api.create(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"c{i}", "namespace": "default", "labels": {"app": app}},
                }
            )

        async def main() -> list[str]:
            async with kube(api) as ac:
                core = client.CoreV1Api(ac)
                await core.delete_collection_namespaced_config_map(
                    "default", label_selector="app=a"
                )
                names = [
                    c.metadata.name
                    for c in (await core.list_namespaced_config_map("default")).items
                ]
                port = api.port
                await asyncio.to_thread(api.stop)
                with pytest.raises(aiohttp.ClientError):
                    await core.list_namespaced_config_map("default")
                await asyncio.to_thread(api.start)
                assert api.port == port
                # The same kubeconfig (CA, token) works after the restart; objects remain.
                after = await core.list_namespaced_config_map("default")
                assert [c.metadata.name for c in after.items] == names
                return names

        assert run(main()) == ["c2"]
        assert [r.status for r in api.requests(verb="deletecollection")] == [200]


def test_send_initial_events_ends_the_initial_state_with_a_bookmark(
    apiserver: ApiServerDouble,
) -> None:
    apiserver.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c0"}})

    async def main() -> list[tuple[str, Any]]:
        async with kube(apiserver) as ac:
            core = client.CoreV1Api(ac)
            await expect_api_error(
                core.list_namespaced_config_map("default", watch=True, send_initial_events=True),
                422,
            )
            out: list[tuple[str, Any]] = []
            w = watch.Watch()
            async for ev in w.stream(
                core.list_namespaced_config_map,
                "default",
                send_initial_events=True,
                resource_version_match="NotOlderThan",
                allow_watch_bookmarks=True,
                timeout_seconds=2,
            ):
                meta = ev["raw_object"]["metadata"]
                out.append((ev["type"], meta.get("name") or meta.get("annotations")))
                if ev["type"] == "BOOKMARK":
                    w.stop()
            await w.close()
            return out

    assert run(main()) == [
        ("ADDED", "c0"),
        ("BOOKMARK", {"k8s.io/initial-events-end": "true"}),
    ]


def test_test_side_controls_default_the_namespace_and_name_the_api_version(
    apiserver: ApiServerDouble,
) -> None:
    made = apiserver.create(
        {"apiVersion": f"{GW}/v1beta1", "kind": "HTTPRoute", "metadata": {"name": "r"}}
    )
    assert made["metadata"]["namespace"] == "default"
    got = apiserver.get(GW, "httproutes", "r")
    assert got["apiVersion"] == f"{GW}/v1" and got["kind"] == "HTTPRoute"
    apiserver.patch_status(GW, "httproutes", "r", {"parents": []})
    assert apiserver.get(GW, "httproutes", "r")["metadata"]["generation"] == 1
    assert [o["metadata"]["name"] for o in apiserver.list_objects(GW, "httproutes")] == ["r"]
    assert apiserver.list_objects(GW, "httproutes", namespace="other") == []
    apiserver.delete(GW, "httproutes", "r")
    assert apiserver.try_get(GW, "httproutes", "r") is None
    with pytest.raises(ValueError):
        ApiServerDouble(history_size=0)


def test_plain_http_without_a_token() -> None:
    with ApiServerDouble(tls=False, token=None) as api:
        assert api.url.startswith("http://")
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})

        async def main() -> list[str]:
            async with kube(api) as ac:
                listed = await client.CoreV1Api(ac).list_namespace()
                return [n.metadata.name for n in listed.items]

        assert run(main()) == ["ns"]
        assert "certificate-authority-data" not in api.kubeconfig()["clusters"][0]["cluster"]
