"""``load_objects``: API objects into the model, with the same checks as files but for
unknown fields (the cluster's schema admitted them) and named by ``k8s:`` sources."""

from __future__ import annotations

from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import load_documents, load_objects


def route(name: str, **spec_extra: object) -> dict[str, object]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": "5d1c",
            "resourceVersion": "42",
            "generation": 3,
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"parentRefs": [{"name": "gw"}], **spec_extra},
        "status": {"parents": []},
    }


def src(name: str) -> m.Source:
    return m.Source(file=f"k8s:HTTPRoute/default/{name}", index=0)


def test_objects_load_with_their_generation_and_source() -> None:
    result = load_objects([(src("a"), route("a"))])
    assert result.problems == ()
    (loaded,) = result.config.http_routes
    assert loaded.meta.name == "a"
    assert loaded.meta.generation == 3  # metadata.generation as the API server set it
    assert loaded.meta.source.file == "k8s:HTTPRoute/default/a"


def test_unknown_fields_are_ignored_for_admitted_objects_only() -> None:
    # A field of a newer Gateway API release: the cluster's CRD admitted it.
    obj = route("a", futureField={"x": 1})
    assert load_objects([(src("a"), obj)]).problems == ()
    import yaml

    from_file = load_documents([("f.yaml", yaml.safe_dump(obj))])
    assert any("futureField" in p.message for p in from_file.problems)


def test_an_invalid_object_is_skipped_and_named_the_rest_loads() -> None:
    bad = route("bad", rules=[{"matches": [{"path": {"type": "PathPrefix", "value": "no-slash"}}]}])
    result = load_objects([(src("bad"), bad), (src("good"), route("good"))])
    assert [r.meta.name for r in result.config.http_routes] == ["good"]
    assert len(result.problems) == 1
    assert str(result.problems[0]).startswith("k8s:HTTPRoute/default/bad")


def test_notices_are_passed_through() -> None:
    result = load_objects([], notices=["GRPCRoute: not served by the cluster, read as empty"])
    assert result.notices == ("GRPCRoute: not served by the cluster, read as empty",)
