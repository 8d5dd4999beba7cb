"""Discovery, informers and the Kubernetes source against the API-server double, through
the real client library (kubernetes_asyncio over HTTPS with a bearer token)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kits.apiserver import ApiServerDouble

from gatewayd.routing.config.load import ConfigLimits
from gatewayd.runtime.kube.client import KubeConfigError, connect
from gatewayd.runtime.kube.discovery import discover
from gatewayd.runtime.kube.informer import Informer, KubeLimits
from gatewayd.runtime.kube.kinds import BY_KIND, KINDS
from gatewayd.runtime.sources.kubernetes import KubernetesSource

GW = "gateway.networking.k8s.io"
# Fast retries: these tests wait for recoveries, not for production backoff.
FAST = KubeLimits(backoff_initial=0.02, backoff_max=0.1)


def route(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"parentRefs": [{"name": "gw"}], **spec},
    }


def secret(name: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {"key": base64.b64encode(b"x" * 64).decode()},
    }


def gateway_with_cert(cert: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "default"},
        "spec": {
            "gatewayClassName": "gatewayd",
            "listeners": [
                {
                    "name": "https",
                    "port": 443,
                    "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": cert}]},
                }
            ],
        },
    }


async def until(condition: Callable[[], object], within: float = 5.0) -> None:
    """Poll ``condition`` every 10 ms for at most ``within`` seconds."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true within {within}s: {condition}")


def run(api: ApiServerDouble, tmp_path: Path, scenario: Callable[[Any], Awaitable[None]]) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

    async def main() -> None:
        client = await connect(str(kubeconfig), None)
        try:
            await scenario(client)
        finally:
            await client.close()

    asyncio.run(main())


async def started(informer: Informer) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 5)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- discovery


def test_discovery_prefers_modelled_versions_and_reports_missing_kinds(tmp_path: Path) -> None:
    omit = [f"{GW}/v1/grpcroutes", f"{GW}/v1alpha2/grpcroutes"]
    with ApiServerDouble(omit=omit) as api:

        async def scenario(client: Any) -> None:
            versions = await discover(client, KINDS)
            assert versions["GRPCRoute"] is None  # no CRD: read as empty
            assert versions["HTTPRoute"] == "v1"
            assert versions["ReferenceGrant"] == "v1beta1"  # first of gatewayd's order
            assert versions["TLSRoute"] == "v1"
            assert versions["EndpointSlice"] == "v1"
            assert versions["Secret"] == "v1"

        run(api, tmp_path, scenario)


# --------------------------------------------------------------------------- informers


def test_informer_lists_then_watches_adds_changes_and_deletes(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        api.create(route("a"))

        async def scenario(client: Any) -> None:
            changes: list[int] = []
            informer = Informer(
                client, BY_KIND["HTTPRoute"], "v1", lambda: changes.append(1), limits=FAST
            )
            task = await started(informer)
            assert [o["metadata"]["name"] for o in informer.items()] == ["a"]
            api.create(route("b"))
            await until(lambda: len(informer.items()) == 2)
            api.patch(
                GW, "httproutes", "a", {"spec": {"hostnames": ["a.example"]}}, namespace="default"
            )
            await until(
                lambda: (informer.get(("default", "a")) or {}).get("spec", {}).get("hostnames")
            )
            api.delete(GW, "httproutes", "b", namespace="default")
            await until(lambda: informer.get(("default", "b")) is None)
            assert len(changes) >= 4  # the list and three events
            assert informer.lists == 1
            await stop(task)
            watches = api.requests(verb="watch", path_contains="/httproutes")
            assert watches and watches[0].query.get("allowWatchBookmarks") == "true"
            assert watches[0].query.get("resourceVersion")  # from the list's

        run(api, tmp_path, scenario)


def test_dropped_watch_rewatches_from_the_last_resource_version(tmp_path: Path) -> None:
    with ApiServerDouble() as api:

        async def scenario(client: Any) -> None:
            informer = Informer(client, BY_KIND["HTTPRoute"], "v1", lambda: None, limits=FAST)
            task = await started(informer)
            api.create(route("a"))
            await until(lambda: informer.get(("default", "a")) is not None)
            seen = informer.resource_version
            api.drop_watches()
            api.create(route("b"))
            await until(lambda: informer.get(("default", "b")) is not None)
            assert informer.lists == 1  # re-watched, not relisted
            rewatch = api.requests(verb="watch", path_contains="/httproutes")[-1]
            assert int(rewatch.query["resourceVersion"]) >= int(seen)
            await stop(task)

        run(api, tmp_path, scenario)


def test_expired_resource_version_relists(tmp_path: Path) -> None:
    with ApiServerDouble() as api:

        async def scenario(client: Any) -> None:
            informer = Informer(client, BY_KIND["HTTPRoute"], "v1", lambda: None, limits=FAST)
            task = await started(informer)
            api.create(route("a"))
            await until(lambda: informer.get(("default", "a")) is not None)
            # While no watch is open, history is compacted past the informer's version.
            api.pause()
            api.drop_watches()
            api.create(route("b"))
            api.delete(GW, "httproutes", "a", namespace="default")
            api.expire_history()
            api.resume()
            await until(lambda: informer.lists == 2)  # 410 Gone -> list again
            await until(lambda: [o["metadata"]["name"] for o in informer.items()] == ["b"])
            await stop(task)

        run(api, tmp_path, scenario)


def test_an_event_over_the_line_bound_is_refused_and_the_kind_relisted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = KubeLimits(max_event_bytes=4096, backoff_initial=0.02, backoff_max=0.1)
    with ApiServerDouble() as api:

        async def scenario(client: Any) -> None:
            informer = Informer(client, BY_KIND["HTTPRoute"], "v1", lambda: None, limits=limits)
            task = await started(informer)
            big = route("big", hostnames=[f"h{i}.example" for i in range(400)])  # ~6 KB
            api.create(big)
            await until(lambda: informer.lists >= 2)
            await stop(task)
            # The relist is bounded by pages, not lines, and holds the object.
            assert informer.get(("default", "big")) is not None

        with caplog.at_level(logging.WARNING, logger="gatewayd.kube"):
            run(api, tmp_path, scenario)
    assert "a watch event over 4096 bytes: refused" in caplog.text


def test_more_objects_than_the_limit_are_refused_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limits = KubeLimits(max_objects=3, page_size=2, backoff_initial=0.05, backoff_max=0.1)
    with ApiServerDouble() as api:
        for i in range(4):
            api.create(route(f"r{i}"))

        async def scenario(client: Any) -> None:
            informer = Informer(client, BY_KIND["HTTPRoute"], "v1", lambda: None, limits=limits)
            task = asyncio.get_running_loop().create_task(informer.run())
            await until(lambda: "more than 3 objects: refused" in caplog.text)
            assert not informer.synced.is_set() and informer.items() == []
            api.delete(GW, "httproutes", "r3", namespace="default")
            await asyncio.wait_for(informer.synced.wait(), 5)  # fewer now: read again
            assert len(informer.items()) == 3
            await stop(task)

        with caplog.at_level(logging.WARNING, logger="gatewayd.kube"):
            run(api, tmp_path, scenario)


# --------------------------------------------------------------------------- the source


def test_source_keeps_only_referenced_secret_data(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        api.create(secret("used"))
        api.create(secret("unused"))
        api.create(gateway_with_cert("used"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

        async def scenario() -> None:
            source = KubernetesSource(kubeconfig=str(kubeconfig), limits=FAST)
            try:
                await asyncio.wait_for(source.ready(), 10)
                secrets = source.informers["Secret"]
                assert "data" in (secrets.get(("default", "used")) or {})
                assert secrets.get(("default", "unused")) == {
                    "metadata": {
                        "name": "unused",
                        "namespace": "default",
                        "resourceVersion": secrets.get(("default", "unused"))["metadata"][  # type: ignore[index]
                            "resourceVersion"
                        ],
                    },
                    "stub": True,
                }
                loaded = source.load(None, ConfigLimits())
                assert [s.meta.name for s in loaded.config.secrets] == ["used"]
                # The Gateway now references the other one: it is fetched by name.
                changes: list[int] = []
                watching = asyncio.get_running_loop().create_task(
                    source.run(lambda: changes.append(1))
                )
                api.update(gateway_with_cert("unused"))
                await until(lambda: "data" in (secrets.get(("default", "unused")) or {}))
                assert "data" not in (secrets.get(("default", "used")) or {})
                assert api.requests(verb="get", path_contains="/secrets/unused")
                loaded = source.load(None, ConfigLimits())
                assert [s.meta.name for s in loaded.config.secrets] == ["unused"]
                assert changes
                watching.cancel()
            finally:
                await source.close()

        asyncio.run(scenario())


def test_source_keeps_the_secret_data_a_listener_set_references(tmp_path: Path) -> None:
    lset = {
        "apiVersion": f"{GW}/v1",
        "kind": "ListenerSet",
        "metadata": {"name": "team", "namespace": "apps"},
        "spec": {
            "parentRef": {"name": "gw", "namespace": "default"},
            "listeners": [
                {
                    "name": "https",
                    "port": 8443,
                    "protocol": "HTTPS",
                    "tls": {"certificateRefs": [{"name": "team-cert"}]},
                }
            ],
        },
    }
    with ApiServerDouble() as api:
        api.create(secret("team-cert", namespace="apps"))
        api.create(secret("other", namespace="apps"))
        api.create(lset)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

        async def scenario() -> None:
            source = KubernetesSource(kubeconfig=str(kubeconfig), limits=FAST)
            try:
                await asyncio.wait_for(source.ready(), 10)
                secrets = source.informers["Secret"]
                assert "data" in (secrets.get(("apps", "team-cert")) or {})
                assert "data" not in (secrets.get(("apps", "other")) or {})
                loaded = source.load(None, ConfigLimits())
                assert [ls.meta.name for ls in loaded.config.listener_sets] == ["team"]
                assert [s.meta.name for s in loaded.config.secrets] == ["team-cert"]
            finally:
                await source.close()

        asyncio.run(scenario())


def test_source_names_objects_and_skips_an_invalid_one(tmp_path: Path) -> None:
    with ApiServerDouble() as api:
        api.create(route("good"))
        api.create(
            route("bad", rules=[{"matches": [{"path": {"type": "PathPrefix", "value": "x"}}]}])
        )
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

        async def scenario() -> None:
            source = KubernetesSource(kubeconfig=str(kubeconfig), limits=FAST)
            try:
                await asyncio.wait_for(source.ready(), 10)
                assert source.skips_invalid
                loaded = source.load(None, ConfigLimits())
            finally:
                await source.close()
            assert [r.meta.name for r in loaded.config.http_routes] == ["good"]
            (problem,) = loaded.problems
            assert str(problem).startswith("k8s:HTTPRoute/default/bad:0: HTTPRoute default/bad")
            assert "double" in source.describe()

        asyncio.run(scenario())


def test_in_cluster_configuration_from_env_and_token_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ApiServerDouble() as api:
        api.create(route("a"))
        incluster = api.write_incluster(tmp_path / "sa")
        for key, value in incluster.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("GATEWAYD_SERVICE_ACCOUNT_DIR", str(tmp_path / "sa"))

        async def scenario() -> None:
            client = await connect(None, None)
            try:
                assert client.cluster.context == "in-cluster"
                data = await client.get_json(BY_KIND["HTTPRoute"].path("v1"), max_bytes=1 << 20)
                assert [o["metadata"]["name"] for o in data["items"]] == ["a"]
            finally:
                await client.close()

        asyncio.run(scenario())
        assert all(r.status == 200 for r in api.requests(path_contains="/httproutes"))


def test_no_client_configuration_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigError, match="Service host/port is not set"):
        asyncio.run(connect(None, None))
    with pytest.raises(KubeConfigError, match="--context needs --kubeconfig"):
        asyncio.run(connect(None, "ctx"))


def test_a_crd_installed_later_is_discovered_and_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    omit = [f"{GW}/v1/tlsroutes", f"{GW}/v1alpha3/tlsroutes", f"{GW}/v1alpha2/tlsroutes"]
    with ApiServerDouble(omit=omit) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

        async def scenario() -> None:
            source = KubernetesSource(kubeconfig=str(kubeconfig), limits=FAST, rediscover=0.1)
            try:
                await asyncio.wait_for(source.ready(), 10)
                assert "TLSRoute" not in source.informers
                changes: list[int] = []
                watching = asyncio.get_running_loop().create_task(
                    source.run(lambda: changes.append(1))
                )
                # "Install the CRD": the double now serves every resource of a full one.
                full = ApiServerDouble()
                api.resources, api._by_path = full.resources, full._by_path
                api.create(
                    {
                        "apiVersion": f"{GW}/v1alpha2",
                        "kind": "TLSRoute",
                        "metadata": {"name": "t", "namespace": "default"},
                        "spec": {
                            "parentRefs": [{"name": "gw"}],
                            "hostnames": ["t.example"],
                            "rules": [{"backendRefs": [{"name": "svc", "port": 443}]}],
                        },
                    }
                )
                await until(lambda: "TLSRoute" in source.informers)
                await asyncio.wait_for(source.informers["TLSRoute"].synced.wait(), 5)
                assert source.versions["TLSRoute"] == "v1"
                loaded = source.load(None, ConfigLimits())
                assert [r.meta.name for r in loaded.config.tls_routes] == ["t"]
                assert changes
                watching.cancel()
            finally:
                await source.close()

        with caplog.at_level(logging.INFO, logger="gatewayd.kube"):
            asyncio.run(scenario())
    assert caplog.text.count("TLSRoute: the cluster serves none of") == 1
    assert "watching TLSRoute gateway.networking.k8s.io/v1" in caplog.text


def test_ready_waits_for_an_unavailable_api_server_with_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ApiServerDouble() as api:
        api.create(route("a"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.set_unavailable("503")

        async def scenario() -> None:
            source = KubernetesSource(kubeconfig=str(kubeconfig), limits=FAST)
            try:
                sync = asyncio.get_running_loop().create_task(source.ready())
                await until(lambda: len(api.requests(status=503)) >= 3)
                assert not sync.done()
                api.set_unavailable(None)
                await asyncio.wait_for(sync, 10)
                loaded = source.load(None, ConfigLimits())
                assert [r.meta.name for r in loaded.config.http_routes] == ["a"]
            finally:
                await source.close()

        with caplog.at_level(logging.WARNING, logger="gatewayd.kube"):
            asyncio.run(scenario())
    assert "discovery failed: HTTP 503" in caplog.text


def test_a_crd_upgraded_to_a_preferred_version_then_removed(tmp_path: Path) -> None:
    only_alpha = [f"{GW}/v1/tlsroutes", f"{GW}/v1alpha3/tlsroutes"]
    with ApiServerDouble(omit=only_alpha) as api:
        api.create(
            {
                "apiVersion": f"{GW}/v1alpha2",
                "kind": "TLSRoute",
                "metadata": {"name": "t", "namespace": "default"},
                "spec": {
                    "parentRefs": [{"name": "gw"}],
                    "hostnames": ["t.example"],
                    "rules": [{"backendRefs": [{"name": "svc", "port": 443}]}],
                },
            }
        )
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")

        def names(source: KubernetesSource) -> list[str]:
            return [r.meta.name for r in source.load(None, ConfigLimits()).config.tls_routes]

        async def scenario() -> None:
            source = KubernetesSource(kubeconfig=str(kubeconfig), limits=FAST, rediscover=0.05)
            try:
                await asyncio.wait_for(source.ready(), 10)
                assert source.versions["TLSRoute"] == "v1alpha2"
                watching = asyncio.get_running_loop().create_task(source.run(lambda: None))
                full = ApiServerDouble()
                api.resources, api._by_path = full.resources, full._by_path
                # While the v1 informer lists, the v1alpha2 cache keeps serving the route.
                seen: list[list[str]] = []
                for _ in range(500):
                    seen.append(names(source))
                    informer = source.informers["TLSRoute"]
                    if informer.version == "v1" and informer.synced.is_set():
                        break
                    await asyncio.sleep(0.01)
                assert all(s == ["t"] for s in seen), seen
                await until(lambda: not source._retiring)
                assert names(source) == ["t"]
                # The CRD removed: the kind is dropped and read as empty.
                gone = ApiServerDouble(
                    omit=[f"{GW}/{v}/tlsroutes" for v in BY_KIND["TLSRoute"].versions]
                )
                api.resources, api._by_path = gone.resources, gone._by_path
                await until(lambda: "TLSRoute" not in source.informers)
                assert names(source) == []
                watching.cancel()
            finally:
                await source.close()

        asyncio.run(scenario())
