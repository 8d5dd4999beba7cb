"""runtime.kube.statuspatch: our status merged into the live object, as a merge patch."""

from __future__ import annotations

import copy

from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import condition
from gatewayd.runtime.kube.statuspatch import status_patch

OURS = "gatewayd.dev/gateway-controller"
OTHER = "example.net/other-controller"
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-02T00:00:00Z"


def merge(target: object, patch: object) -> object:
    """RFC 7386 JSON merge patch, as the API server applies it (for round trips)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def gw_ref(name: str = "gw", section: str | None = None) -> dict[str, object]:
    ref: dict[str, object] = {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": "default",
        "name": name,
    }
    if section is not None:
        ref["sectionName"] = section
    return ref


def parent(
    ref: dict[str, object], controller: str, ok: bool, now: str, gen: int = 1, msg: str = "m"
):
    return {
        "parentRef": ref,
        "controllerName": controller,
        "conditions": [
            condition("Accepted", ok, "Accepted" if ok else "NotAllowedByListeners", msg, gen, now),
            condition("ResolvedRefs", True, "ResolvedRefs", "resolved", gen, now),
        ],
    }


def route_status(parents: list[dict[str, object]], gen: int = 1) -> ObjectStatus:
    return ObjectStatus(
        api_version="gateway.networking.k8s.io/v1",
        kind="HTTPRoute",
        namespace="default",
        name="r",
        generation=gen,
        status={"parents": parents},
    )


def live_obj(status: dict[str, object] | None, rv: str = "42", gen: int = 1) -> dict[str, object]:
    obj: dict[str, object] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default", "resourceVersion": rv, "generation": gen},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def gateway_status(
    now: str, *, programmed: bool = True, msg: str = "ok", gen: int = 1
) -> ObjectStatus:
    status: dict[str, object] = {
        "conditions": [
            condition("Accepted", True, "Accepted", "accepted", gen, now),
            condition(
                "Programmed", programmed, "Programmed" if programmed else "Invalid", msg, gen, now
            ),
        ],
        "listeners": [
            {
                "name": "http",
                "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                "attachedRoutes": 1,
                "conditions": [condition("Programmed", programmed, "Programmed", msg, gen, now)],
            }
        ],
    }
    if programmed:
        status["addresses"] = [{"type": "IPAddress", "value": "127.0.10.1"}]
    return ObjectStatus(
        api_version="gateway.networking.k8s.io/v1",
        kind="Gateway",
        namespace="default",
        name="gw",
        generation=gen,
        status=status,
    )


def test_a_status_equal_but_for_transition_times_is_not_patched() -> None:
    live = live_obj({"parents": [parent(gw_ref(), OURS, True, T0)]})
    ours = route_status([parent(gw_ref(), OURS, True, T1)])
    assert status_patch(ours, live, controller_name=OURS) is None


def test_the_first_write_carries_the_resource_version_and_our_entries() -> None:
    ours = route_status([parent(gw_ref(), OURS, True, T1)])
    body = status_patch(ours, live_obj(None, rv="7"), controller_name=OURS)
    assert body == {
        "metadata": {"resourceVersion": "7"},
        "status": {"parents": [parent(gw_ref(), OURS, True, T1)]},
    }


def test_a_condition_status_flip_moves_its_transition_time() -> None:
    live = live_obj({"parents": [parent(gw_ref(), OURS, True, T0)]})
    ours = route_status([parent(gw_ref(), OURS, False, T1)])
    body = status_patch(ours, live, controller_name=OURS)
    assert body is not None
    [entry] = body["status"]["parents"]  # type: ignore[index]
    accepted, resolved = entry["conditions"]
    assert accepted["status"] == "False"
    assert accepted["lastTransitionTime"] == T1  # flipped: now
    assert resolved["lastTransitionTime"] == T0  # unchanged status: the live time


def test_a_message_change_alone_is_written_but_keeps_the_transition_time() -> None:
    live = live_obj({"parents": [parent(gw_ref(), OURS, True, T0, msg="before")]})
    ours = route_status([parent(gw_ref(), OURS, True, T1, msg="after")])
    body = status_patch(ours, live, controller_name=OURS)
    assert body is not None
    [entry] = body["status"]["parents"]  # type: ignore[index]
    accepted = entry["conditions"][0]
    assert accepted["message"] == "after"
    assert accepted["lastTransitionTime"] == T0


def test_other_controllers_parents_are_kept_and_our_stale_entries_replaced() -> None:
    foreign_a = parent(gw_ref("theirs"), OTHER, True, T0)
    foreign_b = parent(gw_ref("theirs", "https"), OTHER, False, T0)
    stale = parent(gw_ref("gone"), OURS, True, T0)  # a parentRef we no longer compute
    live = live_obj({"parents": [foreign_a, stale, foreign_b]})
    ours = route_status([parent(gw_ref(), OURS, True, T1)])
    body = status_patch(ours, live, controller_name=OURS)
    assert body is not None
    parents = body["status"]["parents"]  # type: ignore[index]
    assert parents == [foreign_a, foreign_b, parent(gw_ref(), OURS, True, T1)]
    # Applied and recomputed a moment later: nothing more to write.
    after = merge(live, body)
    assert isinstance(after, dict)
    assert (
        status_patch(
            route_status([parent(gw_ref(), OURS, True, "2027-01-01T00:00:00Z")]),
            after,
            controller_name=OURS,
        )
        is None
    )


def test_no_entries_of_ours_removes_ours_only() -> None:
    foreign = parent(gw_ref("theirs"), OTHER, True, T0)
    live = live_obj({"parents": [parent(gw_ref(), OURS, True, T0), foreign]})
    body = status_patch(route_status([]), live, controller_name=OURS)
    assert body is not None
    assert body["status"] == {"parents": [foreign]}


def test_parent_refs_compare_with_their_defaults_filled_in() -> None:
    # The API server may store a parentRef without group/kind/namespace (defaults).
    bare = {"name": "gw"}
    live = live_obj({"parents": [parent(bare, OURS, True, T0)]})
    ours = route_status([parent(gw_ref(), OURS, True, T1)])
    body = status_patch(ours, live, controller_name=OURS)
    assert body is not None  # the ref's spelling differs: written once, the full form
    [entry] = body["status"]["parents"]  # type: ignore[index]
    assert all(c["lastTransitionTime"] == T0 for c in entry["conditions"])


def test_observed_generation_comes_from_the_object_the_status_was_computed_from() -> None:
    live = live_obj({"parents": [parent(gw_ref(), OURS, True, T0, gen=2)]}, gen=3)
    ours = route_status([parent(gw_ref(), OURS, True, T1, gen=3)], gen=3)
    body = status_patch(ours, live, controller_name=OURS)
    assert body is not None
    [entry] = body["status"]["parents"]  # type: ignore[index]
    assert {c["observedGeneration"] for c in entry["conditions"]} == {3}
    assert {c["lastTransitionTime"] for c in entry["conditions"]} == {T0}


def test_parents_stay_within_the_api_maximum_of_32() -> None:
    foreign = [parent(gw_ref(f"g{i}"), OTHER, True, T0) for i in range(31)]
    ours = route_status([parent(gw_ref("a"), OURS, True, T1), parent(gw_ref("b"), OURS, True, T1)])
    body = status_patch(ours, live_obj({"parents": foreign}), controller_name=OURS)
    assert body is not None
    parents = body["status"]["parents"]  # type: ignore[index]
    assert len(parents) == 32
    assert parents[:31] == foreign


def test_backend_tls_policy_ancestors_merge_the_same_way() -> None:
    def ancestor(name: str, controller: str, now: str) -> dict[str, object]:
        return {
            "ancestorRef": gw_ref(name),
            "controllerName": controller,
            "conditions": [condition("Accepted", True, "Accepted", "ok", 1, now)],
        }

    theirs = ancestor("theirs", OTHER, T0)
    live = live_obj({"ancestors": [theirs, ancestor("gw", OURS, T0)]})
    ours = ObjectStatus(
        api_version="gateway.networking.k8s.io/v1",
        kind="BackendTLSPolicy",
        namespace="default",
        name="p",
        generation=1,
        status={"ancestors": [ancestor("gw", OURS, T1)]},
    )
    assert status_patch(ours, live, controller_name=OURS) is None
    moved = ObjectStatus(
        api_version=ours.api_version,
        kind=ours.kind,
        namespace=ours.namespace,
        name=ours.name,
        generation=1,
        status={"ancestors": [ancestor("gw2", OURS, T1)]},
    )
    body = status_patch(moved, live, controller_name=OURS)
    assert body is not None
    assert body["status"] == {"ancestors": [theirs, ancestor("gw2", OURS, T1)]}


def test_a_policy_nobody_uses_is_not_written_an_empty_list() -> None:
    ours = ObjectStatus(
        api_version="gateway.networking.k8s.io/v1",
        kind="BackendTLSPolicy",
        namespace="default",
        name="p",
        generation=1,
        status={"ancestors": []},
    )
    assert status_patch(ours, live_obj(None), controller_name=OURS) is None


def test_gateway_status_times_are_kept_per_listener_and_removed_fields_are_nulled() -> None:
    live_status = dict(gateway_status(T0).status)
    live_status["someoneElses"] = {"x": 1}  # a field we do not own: never in the patch
    live = live_obj(live_status)
    assert status_patch(gateway_status(T1), live, controller_name=OURS) is None

    body = status_patch(
        gateway_status(T1, programmed=False, msg="bind failed"), live, controller_name=OURS
    )
    assert body is not None
    status = body["status"]
    assert isinstance(status, dict)
    assert status["addresses"] is None  # no longer bound: removed by the merge patch
    assert "someoneElses" not in status
    accepted, programmed = status["conditions"]
    assert accepted["lastTransitionTime"] == T0
    assert programmed["lastTransitionTime"] == T1
    [listener] = status["listeners"]
    assert listener["conditions"][0]["lastTransitionTime"] == T1
    after = merge(live, body)
    assert isinstance(after, dict)
    assert "addresses" not in after["status"]
    assert after["status"]["someoneElses"] == {"x": 1}


def test_gateway_class_status_with_supported_features() -> None:
    ours = ObjectStatus(
        api_version="gateway.networking.k8s.io/v1",
        kind="GatewayClass",
        namespace="",
        name="gatewayd",
        generation=1,
        status={
            "conditions": [condition("Accepted", True, "Accepted", "ok", 1, T1)],
            "supportedFeatures": [{"name": "Gateway"}, {"name": "HTTPRoute"}],
        },
    )
    live = live_obj(
        {"conditions": [condition("Accepted", False, "Pending", "Waiting for controller", 1, T0)]}
    )
    body = status_patch(ours, live, controller_name=OURS)
    assert body is not None
    assert body["status"] == dict(ours.status)
    assert status_patch(ours, merge(live, body), controller_name=OURS) is None  # type: ignore[arg-type]
