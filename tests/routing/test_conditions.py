"""control/conditions.py: one condition builder; lastTransitionTime moves only on a
transition (metav1.Condition)."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

from status_builders import (
    backend,
    config,
    gateway,
    http_route,
    parent_status,
    service,
    status_of,
)

from gatewayd.routing.control.conditions import condition, keep_transition_times
from gatewayd.routing.control.resolve import resolve

T0 = "2030-01-01T00:00:00Z"
T1 = "2030-01-02T00:00:00Z"


def _times(conds: list[dict[str, Any]]) -> dict[str, str]:
    return {c["type"]: c["lastTransitionTime"] for c in conds}


def test_condition_shape() -> None:
    assert condition("Accepted", False, "Invalid", "why", 3, T0) == {
        "type": "Accepted",
        "status": "False",
        "reason": "Invalid",
        "message": "why",
        "observedGeneration": 3,
        "lastTransitionTime": T0,
    }


def test_time_kept_unless_the_status_flips() -> None:
    old = {
        "conditions": [
            condition("Accepted", True, "Accepted", "ok", 1, T0),
            condition("Programmed", True, "Programmed", "ok", 1, T0),
        ]
    }
    new = {
        "conditions": [
            # New message, reason and generation, same status: not a transition.
            condition("Accepted", True, "Accepted", "still ok", 2, T1),
            condition("Programmed", False, "Invalid", "bind failed", 2, T1),
            condition("ResolvedRefs", True, "ResolvedRefs", "new type", 2, T1),
        ]
    }
    before = copy.deepcopy(new)
    out = keep_transition_times(new, old)
    assert _times(out["conditions"]) == {  # type: ignore[arg-type]
        "Accepted": T0,
        "Programmed": T1,
        "ResolvedRefs": T1,
    }
    assert out["conditions"][0]["message"] == "still ok"  # type: ignore[index]
    assert new == before  # inputs are not modified
    assert keep_transition_times(new, None) == new


def test_entries_are_matched_by_name_parent_ref_and_controller() -> None:
    ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}

    def parents(ctrl_time: str, other_time: str, ours_ok: bool) -> dict[str, Any]:
        return {
            "parents": [
                {
                    "parentRef": ref,
                    "controllerName": "example.com/other",
                    "conditions": [condition("Accepted", True, "Accepted", "", 1, other_time)],
                },
                {
                    "parentRef": ref,
                    "controllerName": "gatewayd.dev/gateway-controller",
                    "conditions": [condition("Accepted", ours_ok, "Accepted", "", 1, ctrl_time)],
                },
            ],
            "listeners": [
                {"name": "b", "conditions": [condition("Programmed", True, "P", "", 1, ctrl_time)]},
            ],
        }

    old = parents(T0, "2029-01-01T00:00:00Z", ours_ok=False)
    old["listeners"].insert(0, {"name": "a", "conditions": []})
    out = keep_transition_times(parents(T1, T1, ours_ok=True), old)
    other, ours = out["parents"]  # type: ignore[misc]
    # The other controller's entry keeps its own old time; ours flipped False -> True.
    assert other["conditions"][0]["lastTransitionTime"] == "2029-01-01T00:00:00Z"
    assert ours["conditions"][0]["lastTransitionTime"] == T1
    # Listener "b" moved from index 1 to 0 and is still matched by name.
    assert out["listeners"][0]["conditions"][0]["lastTransitionTime"] == T0  # type: ignore[index]


def test_resolving_again_keeps_times_until_a_condition_flips() -> None:
    objs: list[object] = [gateway("gw"), http_route("r", backends=[backend("svc")]), service()]
    first = resolve(config(*objs), now=T0)
    again = resolve(config(*objs), now=T1)
    olds = {(s.kind, s.namespace, s.name): s.status for s in first.statuses}
    for st in again.statuses:
        kept = keep_transition_times(st.status, olds[(st.kind, st.namespace, st.name)])
        assert kept == olds[(st.kind, st.namespace, st.name)], st.kind

    # The Service goes away: the route's ResolvedRefs flips, everything else holds.
    gone = resolve(config(*objs[:2]), now=T1)
    old_parent = parent_status(first, "r")
    route = keep_transition_times(
        status_of(gone, "HTTPRoute", "r"), status_of(first, "HTTPRoute", "r")
    )
    times = _times(route["parents"][0]["conditions"])  # type: ignore[index]
    assert times == {"Accepted": T0, "ResolvedRefs": T1}
    assert _times(old_parent["conditions"]) == {"Accepted": T0, "ResolvedRefs": T0}
    gw: Mapping[str, Any] = keep_transition_times(
        status_of(gone, "Gateway", "gw"), status_of(first, "Gateway", "gw")
    )
    assert set(_times(gw["conditions"]).values()) == {T0}


def test_a_deeply_nested_foreign_document_is_bounded() -> None:
    # A status read back from the API server is not ours: nesting beyond the Gateway API
    # shapes is left alone, without recursion errors and in bounded time.
    def nested(depth: int, when: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"conditions": [condition("X", True, "X", "", 1, when)]}
        for _ in range(depth):
            doc = {"parents": [{"name": "n", **doc}]}
        return doc

    start = time.perf_counter()
    out = keep_transition_times(nested(5000, T1), nested(5000, T0))
    assert time.perf_counter() - start < 1.0
    assert out["parents"][0]["name"] == "n"  # type: ignore[index]
    shallow = keep_transition_times(nested(2, T1), nested(2, T0))
    assert shallow["parents"][0]["parents"][0]["conditions"][0]["lastTransitionTime"] == T0  # type: ignore[index]
