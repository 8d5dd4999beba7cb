"""An object validation refuses is reported in its own status (issue 13): manifests ->
load (the RejectedObject record) -> resolve (its status) -> compiled table (unchanged)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from gatewayd.checkcli import format_check
from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import LoadResult, load_documents, load_objects
from gatewayd.routing.config.validate.rejected import (
    MAX_MESSAGE_CHARS,
    MAX_MESSAGES,
    MAX_PARENT_REFS,
    rejected_object,
)
from gatewayd.routing.control.bindings import ObjectStatus, Resolution
from gatewayd.routing.control.resolve import resolve

CONTROLLER = "gatewayd.dev/gateway-controller"
GW = "gateway.networking.k8s.io/v1"
NOW = "2026-01-02T03:04:05Z"

Doc = dict[str, Any]


def gateway_class(name: str = "gatewayd", controller: str = CONTROLLER) -> Doc:
    return {
        "apiVersion": GW,
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller},
    }


def gateway(name: str = "gw", *, cls: str = "gatewayd", port: int = 80) -> Doc:
    return {
        "apiVersion": GW,
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {
            "gatewayClassName": cls,
            "listeners": [{"name": "http", "port": port, "protocol": "HTTP"}],
        },
    }


def route(
    name: str,
    *,
    parents: Sequence[Doc] = ({"name": "gw"},),
    path: str = "/",
    backend: str = "svc",
    generation: int | None = None,
) -> Doc:
    md: Doc = {"name": name}
    if generation is not None:
        md["generation"] = generation
    return {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": md,
        "spec": {
            "parentRefs": list(parents),
            "hostnames": [f"{name}.example"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                    "backendRefs": [{"name": backend, "port": 80}],
                }
            ],
        },
    }


def service(name: str = "svc", cluster_ip: str | None = None) -> Doc:
    spec: Doc = {"ports": [{"name": "http", "port": 80}]}
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def policy(name: str, *, hostname: str | None = "svc.example", target: str = "svc") -> Doc:
    validation: Doc = {"wellKnownCACertificates": "System"}
    if hostname is not None:
        validation["hostname"] = hostname
    return {
        "apiVersion": GW,
        "kind": "BackendTLSPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": target}],
            "validation": validation,
        },
    }


def load(docs: Sequence[Doc]) -> LoadResult:
    return load_documents([("f.yaml", yaml.safe_dump_all(docs))])


def resolved(docs: Sequence[Doc]) -> tuple[LoadResult, Resolution]:
    loaded = load(docs)
    return loaded, resolve(loaded.config, controller_name=CONTROLLER, now=NOW)


def status_of(res: Resolution, kind: str, name: str) -> ObjectStatus | None:
    found = [s for s in res.statuses if s.kind == kind and s.name == name]
    assert len(found) <= 1
    return found[0] if found else None


def conditions(entry: Any) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in entry["conditions"]}


# --------------------------------------------------------------------------- routes


def test_an_invalid_route_gets_one_parent_entry_per_gateway_of_ours() -> None:
    docs = [
        gateway_class(),
        gateway_class("other", "example.com/other"),
        gateway(),
        gateway("foreign", cls="other"),
        service(),
        route(
            "bad",
            path="no-slash",
            generation=7,
            parents=[
                {"name": "gw"},
                {"name": "gw", "sectionName": "http"},
                {"name": "foreign"},  # another controller's Gateway: not ours to report
                {"name": "missing"},  # no such Gateway
                {"name": "gw", "port": 0},  # invalid itself: names no parent
            ],
        ),
        route("good"),
    ]
    loaded, res = resolved(docs)
    assert [str(p) for p in loaded.problems if p.name == "bad"], "still a problem"
    [rejected] = loaded.config.rejected
    assert (rejected.kind, rejected.meta.name, rejected.meta.generation) == (
        m.Kind.HTTP_ROUTE,
        "bad",
        7,
    )
    assert [(p.name, p.section_name, p.port) for p in rejected.parent_refs] == [
        ("gw", None, None),
        ("gw", "http", None),
        ("foreign", None, None),
        ("missing", None, None),
    ]

    bad = status_of(res, "HTTPRoute", "bad")
    assert bad is not None and bad.generation == 7
    parents = bad.status["parents"]
    assert isinstance(parents, list)
    assert [p["parentRef"] for p in parents] == [
        {"group": m.GATEWAY_GROUP, "kind": "Gateway", "namespace": "default", "name": "gw"},
        {
            "group": m.GATEWAY_GROUP,
            "kind": "Gateway",
            "namespace": "default",
            "name": "gw",
            "sectionName": "http",
        },
    ]
    for parent in parents:
        assert parent["controllerName"] == CONTROLLER
        conds = conditions(parent)
        # Only Accepted: the references of a refused object were never resolved.
        assert list(conds) == ["Accepted"]
        accepted = conds["Accepted"]
        assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
        assert accepted["observedGeneration"] == 7
        assert accepted["lastTransitionTime"] == NOW
        assert accepted["message"].startswith("HTTPRoute is invalid and not served: ")
        assert "spec.rules[0].matches[0].path.value" in accepted["message"]
        assert "must be an absolute path" in accepted["message"]

    # The valid sibling is untouched, and only it attaches.
    good = status_of(res, "HTTPRoute", "good")
    assert good is not None
    [good_parent] = good.status["parents"]  # type: ignore[misc]
    assert conditions(good_parent)["Accepted"]["status"] == "True"
    gw = status_of(res, "Gateway", "gw")
    assert gw is not None
    [ls] = gw.status["listeners"]  # type: ignore[misc]
    assert ls["attachedRoutes"] == 1
    [binding] = res.listeners
    assert [a.route.meta.name for a in binding.routes] == ["good"]
    # The table serves the good route and nothing of the bad one.
    snapshot = compile_snapshot(res, generation=1)
    assert "bad" not in repr(snapshot.to_json())
    assert "good" in repr(snapshot.to_json())


def test_an_invalid_route_of_a_foreign_gateway_only_gets_no_status() -> None:
    docs = [
        gateway_class(),
        gateway_class("other", "example.com/other"),
        gateway("foreign", cls="other"),
        route("bad", path="no-slash", parents=[{"name": "foreign"}]),
    ]
    loaded, res = resolved(docs)
    assert len(loaded.config.rejected) == 1
    assert status_of(res, "HTTPRoute", "bad") is None


def test_the_messages_a_status_carries_are_bounded() -> None:
    bad = route("bad")
    bad["spec"]["hostnames"] = ["-x" * 200 + str(i) for i in range(12)]
    _loaded, res = resolved([gateway_class(), gateway(), service(), bad])
    st = status_of(res, "HTTPRoute", "bad")
    assert st is not None
    [parent] = st.status["parents"]  # type: ignore[misc]
    message = conditions(parent)["Accepted"]["message"]
    assert message.endswith(" more)"), message
    parts = message.removeprefix("HTTPRoute is invalid and not served: ").split("; ")
    assert len(parts) == MAX_MESSAGES
    assert all(len(p) <= MAX_MESSAGE_CHARS + len(" (and 99 more)") for p in parts)
    assert len(message) < MAX_MESSAGES * (MAX_MESSAGE_CHARS + 2) + 100


def test_an_invalid_mesh_route_is_reported_on_its_service_parent() -> None:
    svc_parent = {"group": "", "kind": "Service", "name": "svc", "port": 80}
    docs = [
        service("svc", cluster_ip="10.0.0.5"),
        route(
            "bad",
            path="no-slash",
            parents=[svc_parent, {"group": "", "kind": "Service", "name": "nope"}],
        ),
        route("good", parents=[svc_parent]),
    ]
    _loaded, res = resolved(docs)
    st = status_of(res, "HTTPRoute", "bad")
    assert st is not None
    [parent] = st.status["parents"]  # type: ignore[misc]
    assert parent["parentRef"] == {
        "group": "",
        "kind": "Service",
        "namespace": "default",
        "name": "svc",
        "port": 80,
    }
    assert conditions(parent)["Accepted"]["reason"] == "UnsupportedValue"
    # The good route alone serves the Service port.
    assert res.mesh is not None
    [port] = res.mesh.services
    assert [r.meta.name for r in port.producer] == ["good"]


# --------------------------------------------------------------------------- Gateways


def test_an_invalid_gateway_of_ours_is_not_accepted_and_serves_nothing() -> None:
    docs = [
        gateway_class(),
        gateway_class("other", "example.com/other"),
        gateway("bad", port=0),
        gateway("foreign-bad", cls="other", port=0),
        gateway("gw"),
        service(),
        route("to-bad", parents=[{"name": "bad"}]),
    ]
    loaded, res = resolved(docs)
    assert {r.meta.name for r in loaded.config.rejected} == {"bad", "foreign-bad"}
    st = status_of(res, "Gateway", "bad")
    assert st is not None
    conds = conditions(st.status)
    for ctype in ("Accepted", "Programmed"):
        assert (conds[ctype]["status"], conds[ctype]["reason"]) == ("False", "Invalid")
        assert "spec.listeners[0].port" in conds[ctype]["message"]
    assert st.status["listeners"] == []
    assert "addresses" not in st.status
    # Another controller's Gateway: untouched.
    assert status_of(res, "Gateway", "foreign-bad") is None
    # Nothing is bound for it; the valid Gateway beside it is.
    assert {b.gateway_name for b in res.listeners} == {"gw"}
    # A route naming the rejected Gateway: it exists, so no "not found" problem, and the
    # route is told it has no listener to attach to (its references still resolve).
    assert not [p for p in res.problems if "not found" in p.message], res.problems
    to_bad = status_of(res, "HTTPRoute", "to-bad")
    assert to_bad is not None
    [parent] = to_bad.status["parents"]  # type: ignore[misc]
    conds = conditions(parent)
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == (
        "False",
        "NoMatchingParent",
    )
    assert "default/bad is invalid" in conds["Accepted"]["message"]
    assert conds["ResolvedRefs"]["status"] == "True"


def test_a_gateway_whose_class_cannot_be_read_is_not_reported() -> None:
    bad = gateway("bad")
    bad["spec"]["gatewayClassName"] = ""
    loaded, res = resolved([gateway_class(), bad])
    [rejected] = loaded.config.rejected
    assert rejected.gateway_class_name is None
    assert status_of(res, "Gateway", "bad") is None


# --------------------------------------------------------------------------- policies


def test_an_invalid_backend_tls_policy_gets_an_ancestor_entry_not_accepted() -> None:
    docs = [
        gateway_class(),
        gateway(),
        service("svc"),
        service("other"),
        route("r"),
        route("r2", backend="other"),
        policy("bad", hostname=None),  # validation.hostname is required
        policy("good", target="other"),
    ]
    _loaded, res = resolved(docs)
    st = status_of(res, "BackendTLSPolicy", "bad")
    assert st is not None
    [ancestor] = st.status["ancestors"]  # type: ignore[misc]
    assert ancestor["ancestorRef"] == {
        "group": m.GATEWAY_GROUP,
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
    }
    assert ancestor["controllerName"] == CONTROLLER
    accepted = conditions(ancestor)["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "spec.validation.hostname" in accepted["message"]
    # The valid policy beside it is accepted and the only one applied.
    good = status_of(res, "BackendTLSPolicy", "good")
    assert good is not None
    [good_ancestor] = good.status["ancestors"]  # type: ignore[misc]
    assert conditions(good_ancestor)["Accepted"]["status"] == "True"
    assert {key[1] for key in res.backend_tls} == {"other"}


def test_an_invalid_policy_no_route_of_ours_uses_has_no_status() -> None:
    _loaded, res = resolved([gateway_class(), gateway(), service(), policy("bad", hostname=None)])
    assert status_of(res, "BackendTLSPolicy", "bad") is None


def test_an_invalid_backend_lb_policy_gets_an_ancestor_entry_not_accepted() -> None:
    bad = {
        "apiVersion": "gateway.networking.k8s.io/v1alpha2",
        "kind": "BackendLBPolicy",
        "metadata": {"name": "bad"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "svc"}],
            # CEL: AbsoluteTimeout must be specified when lifetimeType is Permanent.
            "sessionPersistence": {"cookieConfig": {"lifetimeType": "Permanent"}},
        },
    }
    _loaded, res = resolved([gateway_class(), gateway(), service("svc"), route("r"), bad])
    st = status_of(res, "BackendLBPolicy", "bad")
    assert st is not None
    assert st.api_version == "gateway.networking.k8s.io/v1alpha2"
    [ancestor] = st.status["ancestors"]  # type: ignore[misc]
    assert ancestor["ancestorRef"]["name"] == "gw"
    accepted = conditions(ancestor)["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "spec.sessionPersistence.absoluteTimeout" in accepted["message"]
    assert res.backend_sessions == {}


# --------------------------------------------------------------------------- sources


def test_objects_an_api_server_admitted_are_recorded_alike() -> None:
    bad = route("bad", path="no-slash", generation=3)
    bad["metadata"]["namespace"] = "default"
    bad["spec"]["futureField"] = True  # admitted by a newer CRD: ignored
    loaded = load_objects([(m.Source(file="k8s:HTTPRoute/default/bad", index=0), bad)])
    [rejected] = loaded.config.rejected
    assert rejected.meta.generation == 3
    assert [p.name for p in rejected.parent_refs] == ["gw"]
    assert all("futureField" not in msg for msg in rejected.messages)


def test_an_object_without_a_usable_name_is_not_recorded() -> None:
    bad = route("Not_A_Name", path="no-slash")
    loaded = load([bad])
    assert loaded.problems
    assert loaded.config.rejected == ()


def test_check_lists_a_rejected_route_like_any_other() -> None:
    _loaded, res = resolved([gateway_class(), gateway(), service(), route("bad", path="x")])
    text, rejected = format_check(res.statuses)
    assert rejected
    row = next(line for line in text.splitlines() if line.startswith("HTTPRoute default/bad"))
    assert row.split()[-3:] == ["False(UnsupportedValue)", "-", "-"], text


def test_one_status_per_object_when_a_file_defines_a_name_twice() -> None:
    # Invalid metadata is not remembered as a definition, so the valid one after loads
    # too: the valid definition owns the status.
    bad = route("dup", path="no-slash", generation=0)
    loaded, res = resolved([gateway_class(), gateway(), service(), bad, route("dup")])
    assert loaded.config.rejected == ()
    st = status_of(res, "HTTPRoute", "dup")
    assert st is not None
    [parent] = st.status["parents"]  # type: ignore[misc]
    assert conditions(parent)["Accepted"]["status"] == "True"
    # A refused first definition owns the name; the later one is "already defined".
    loaded, res = resolved(
        [gateway_class(), gateway(), service(), route("dup", path="x"), route("dup")]
    )
    assert [r.meta.name for r in loaded.config.rejected] == ["dup"]
    assert any("already defined" in p.message for p in loaded.problems)
    st = status_of(res, "HTTPRoute", "dup")
    assert st is not None
    [parent] = st.status["parents"]  # type: ignore[misc]
    assert conditions(parent)["Accepted"]["reason"] == "UnsupportedValue"


def test_the_record_of_a_refused_object_is_bounded() -> None:
    data = route("bad", parents=[{"name": f"gw{i}"} for i in range(1000)])
    issues = [("spec.rules", "x" * 100_000)] * 1000
    record = rejected_object(
        m.Kind.HTTP_ROUTE, m.Meta(namespace="default", name="bad"), data, issues, admitted=True
    )
    assert record is not None
    assert len(record.parent_refs) == MAX_PARENT_REFS
    assert len(record.messages) == MAX_MESSAGES and record.more == 1000 - MAX_MESSAGES
    assert all(len(msg) == MAX_MESSAGE_CHARS for msg in record.messages)
    assert record.messages[0].startswith("spec.rules: xxx") and record.messages[0].endswith("...")
