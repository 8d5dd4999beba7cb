"""``LoadCache``: a reload reuses what the previous load made of each unchanged file,
and gives exactly what a load without the cache gives (objects, problems, generations)."""

from __future__ import annotations

from pathlib import Path

from gatewayd.pipeline import ConfigPipeline
from gatewayd.routing.config.load import ConfigLimits, LoadResult, load_documents, load_objects
from gatewayd.routing.config.loadcache import LoadCache, ObjectCache
from gatewayd.routing.config.model import Source

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: ns
spec:
  parentRefs: [{{name: gw}}]
  hostnames: ["{host}"]
"""

BASE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gc}
spec: {controllerName: gatewayd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: gc
  listeners: [{name: http, protocol: HTTP, port: 8080}]
"""


def routes(*names: str, host: str = "a.example") -> str:
    return "---\n".join(ROUTE.format(name=n, host=host) for n in names)


def same(cached: LoadResult, plain: LoadResult) -> None:
    """The cached load gives what a load without a cache gives."""
    assert cached.config == plain.config
    assert cached.problems == plain.problems
    assert cached.notices == plain.notices
    assert cached.skipped == plain.skipped
    assert cached.generations == plain.generations


def both(
    files: list[tuple[str, str]], cache: LoadCache, previous: LoadResult | None = None, **kw: object
) -> LoadResult:
    prev = previous.generations if previous is not None else None
    cached = load_documents(files, previous=prev, cache=cache, **kw)  # type: ignore[arg-type]
    same(cached, load_documents(files, previous=prev, **kw))  # type: ignore[arg-type]
    return cached


def test_an_unchanged_file_is_reused_and_a_changed_one_read_again() -> None:
    cache = LoadCache()
    files = [("base.yaml", BASE), ("a.yaml", routes("r1", "r2")), ("b.yaml", routes("r3"))]
    first = both(files, cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 3, 3)
    files[2] = ("b.yaml", routes("r3", host="b.example"))
    second = both(files, cache, first)
    assert (cache.hits, cache.misses) == (2, 1)
    # The unchanged file's objects are the very same values; the changed one is new.
    assert second.config.http_routes[0] is first.config.http_routes[0]
    assert second.config.http_routes[1] is first.config.http_routes[1]
    r3 = second.config.http_routes[2]
    assert r3 is not first.config.http_routes[2]
    assert r3.hostnames == ("b.example",)
    assert r3.meta.generation == 2  # its spec changed
    assert second.config.http_routes[0].meta.generation == 1


def test_a_file_with_a_problem_is_read_every_time() -> None:
    cache = LoadCache()
    bad = routes("r1") + "---\nkind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\n"
    files = [("base.yaml", BASE), ("a.yaml", bad)]
    first = both(files, cache)
    assert first.problems
    assert len(cache) == 1  # base.yaml only
    both(files, cache, first)
    assert (cache.hits, cache.misses) == (1, 1)


def test_an_object_defined_earlier_makes_the_cached_file_read_again() -> None:
    cache = LoadCache()
    files = [("a.yaml", routes("r1")), ("b.yaml", routes("r2"))]
    first = both(files, cache)
    # r2 now also in a.yaml, read first: b.yaml's r2 is a later definition.
    files[0] = ("a.yaml", routes("r1", "r2", host="x.example"))
    second = both(files, cache, first)
    assert cache.hits == 0
    assert any("already defined" in str(p) for p in second.problems)


def test_the_node_budget_is_charged_for_a_cached_file() -> None:
    cache = LoadCache()
    files = [("a.yaml", routes("r1", "r2")), ("b.yaml", routes("r3"))]
    first = both(files, cache)
    # A budget the cached files no longer fit in: the same problem as without a cache.
    small = ConfigLimits(max_nodes=30)
    second = both(files, cache, first, limits=small)
    assert any("YAML nodes" in str(p) for p in second.problems)
    assert cache.hits < 2


def test_a_generation_written_elsewhere_makes_the_file_read_again() -> None:
    cache = LoadCache()
    files = [("a.yaml", routes("r1"))]
    first = both(files, cache)
    # The previous load saw r1 with another spec: reading it now moves its generation.
    moved = {k: ("another digest", 4) for k in first.generations}
    cached = load_documents(files, previous=moved, cache=cache)
    same(cached, load_documents(files, previous=moved))
    assert cache.hits == 0
    assert cached.config.http_routes[0].meta.generation == 5


def test_files_that_went_away_are_forgotten() -> None:
    cache = LoadCache()
    first = both([("a.yaml", routes("r1")), ("b.yaml", routes("r2"))], cache)
    both([("a.yaml", routes("r1"))], cache, first)
    assert len(cache) == 1


def test_the_pipeline_keeps_the_last_good_config_and_reuses_unchanged_files(
    tmp_path: Path,
) -> None:
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "a.yaml").write_text(routes("r1", "r2"))
    (tmp_path / "b.yaml").write_text(routes("r3"))
    pipeline = ConfigPipeline([str(tmp_path)])
    good = pipeline.build()
    pipeline.commit(good)
    cache = pipeline.source.cache  # type: ignore[attr-defined]
    # A bad edit: reported, and the file is not remembered.
    (tmp_path / "b.yaml").write_text(routes("r3") + "  bogus: [\n")
    bad = pipeline.build()
    assert bad.load.problems
    assert (cache.hits, cache.misses) == (2, 1)
    # Not committed (the daemon keeps serving ``good``); fixed, the build serves as before.
    (tmp_path / "b.yaml").write_text(routes("r3"))
    fixed = pipeline.build()
    assert not fixed.load.problems
    assert (cache.hits, cache.misses) == (2, 1)
    assert fixed.load.config == good.load.config
    assert fixed.resolution.statuses == good.resolution.statuses
    dumps = [b.snapshot.to_json() for b in (good, fixed)]
    for dump in dumps:
        dump.pop("generation", None)
    assert dumps[0] == dumps[1]


# --------------------------------------------------------------------------- API objects


def api_route(name: str, host: str = "a.example", generation: int = 1) -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "ns", "generation": generation},
        "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host]},
    }


def api_both(
    objects: list[dict[str, object]], cache: ObjectCache, previous: LoadResult | None = None
) -> LoadResult:
    pairs = [
        (Source(file=f"k8s:HTTPRoute/ns/{o['metadata']['name']}", index=0), o) for o in objects
    ]  # type: ignore[index]
    prev = previous.generations if previous is not None else None
    cached = load_objects(pairs, previous=prev, cache=cache)
    same(cached, load_objects(pairs, previous=prev))
    return cached


def test_an_unchanged_api_object_is_reused_and_a_changed_one_read_again() -> None:
    cache = ObjectCache()
    first = api_both([api_route("r1"), api_route("r2")], cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 2)
    second = api_both([api_route("r1"), api_route("r2", "b.example", generation=2)], cache, first)
    assert (cache.hits, cache.misses) == (1, 1)
    assert second.config.http_routes[0] is first.config.http_routes[0]
    assert second.config.http_routes[1].hostnames == ("b.example",)
    assert second.config.http_routes[1].meta.generation == 2


def test_an_invalid_api_object_is_read_every_time_and_gone_ones_forgotten() -> None:
    cache = ObjectCache()
    bad = api_route("r2")
    bad["spec"] = {"parentRefs": "not a list"}
    first = api_both([api_route("r1"), bad], cache)
    assert first.problems
    assert len(cache) == 1
    api_both([api_route("r1"), bad], cache, first)
    assert (cache.hits, cache.misses) == (1, 1)
    api_both([bad], cache, first)
    assert len(cache) == 0


def test_an_api_object_is_known_by_uid_and_resource_version_when_it_has_them() -> None:
    cache = ObjectCache()
    route = api_route("r1")
    route["metadata"] = {**route["metadata"], "uid": "u-1", "resourceVersion": "7"}  # type: ignore[dict-item]
    first = api_both([route], cache)
    # A write is a new resourceVersion: read again.
    changed = api_route("r1", "b.example", generation=2)
    changed["metadata"] = {**changed["metadata"], "uid": "u-1", "resourceVersion": "8"}  # type: ignore[dict-item]
    second = api_both([changed], cache, first)
    assert (cache.hits, cache.misses) == (0, 1)
    assert second.config.http_routes[0].hostnames == ("b.example",)
    # The same version again: taken as it is.
    third = api_both([changed], cache, second)
    assert (cache.hits, cache.misses) == (1, 0)
    assert third.config.http_routes[0] is second.config.http_routes[0]
    # The same stored object served at another API version: read again.
    older = {**changed, "apiVersion": "gateway.networking.k8s.io/v1beta1"}
    api_both([older], cache, third)
    assert (cache.hits, cache.misses) == (0, 1)
