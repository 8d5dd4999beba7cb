"""The RBAC rules of deploy/ against the API calls gatewayd makes, both ways: every call
is allowed, and nothing else is (no write on any spec, Secrets read-only, Leases only in
gatewayd's own namespace).

The calls come from the code: the kinds ``gatewayd run --kubernetes`` lists and watches
(``gatewayd/runtime/kube/kinds.py``: ``KINDS`` and ``VERBS``).  The status write-back
and the leader election tables below are this test's, and say where in the code each
call is made.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from deploy_kit import DEPLOY, OVERLAYS, Doc, container, find, render, workload

from gatewayd.runtime.kube.kinds import GATEWAY_GROUP, KINDS, VERBS

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

# gatewayd/runtime/sinks/kubernetes.py (KubernetesStatusSink): GET the object's /status,
# then PATCH it (JSON merge patch), for the kinds it reports on.
STATUS_KINDS = ("GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "BackendTLSPolicy")
STATUS_VERBS = ("get", "patch")
# gatewayd/runtime/kube/leader.py (LeaderElector): read, create and replace one
# coordination.k8s.io/v1 Lease in the pod's namespace.
LEASE: Grant = ("coordination.k8s.io", "leases", "")
LEASE_VERBS = ("get", "create", "update")
READ_VERBS = {"get", "list", "watch"}
NAMESPACE = "gatewayd-system"


def needed_cluster_wide() -> set[Grant]:
    by_kind = {k.kind: k for k in KINDS}
    reads = {(k.group, k.plural, verb) for k in KINDS for verb in VERBS}
    status = {
        (by_kind[kind].group, f"{by_kind[kind].plural}/status", verb)
        for kind in STATUS_KINDS
        for verb in STATUS_VERBS
    }
    return reads | status


def needed_in_namespace() -> set[Grant]:
    return {(LEASE[0], LEASE[1], verb) for verb in LEASE_VERBS}


def grants(rules: Iterable[Doc]) -> set[Grant]:
    out = set()
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    out.add((group, resource, verb))
    return out


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    return render(DEPLOY / request.param)


def test_the_code_reads_what_this_test_expects() -> None:
    """The table of kinds is the one the code uses (a kind added there must be granted;
    this guards the status table too, which names kinds of that table)."""
    kinds = {k.kind for k in KINDS}
    assert set(STATUS_KINDS) <= kinds
    assert set(VERBS) == READ_VERBS
    gateway_kinds = {k.kind for k in KINDS if k.group == GATEWAY_GROUP}
    # Every Gateway API kind gatewayd reads gets status, except ReferenceGrant (no status).
    assert gateway_kinds - set(STATUS_KINDS) == {"ReferenceGrant"}


def test_cluster_role_allows_every_call_and_nothing_more(docs: list[Doc]) -> None:
    role = find(docs, "ClusterRole", "gatewayd")
    granted = grants(role["rules"])
    needed = needed_cluster_wide()
    missing = needed - granted
    assert not missing, f"the ClusterRole misses calls the code makes: {sorted(missing)}"
    extra = granted - needed
    assert not extra, f"the ClusterRole grants what no code uses: {sorted(extra)}"
    # Spelled out: reading only on every main resource, Secrets above all; the only
    # writes are patches of status subresources.
    for group, resource, verb in granted:
        if resource.endswith("/status"):
            assert verb in STATUS_VERBS and group == GATEWAY_GROUP
        else:
            assert verb in READ_VERBS, (group, resource, verb)
    secrets = {verb for group, resource, verb in granted if (group, resource) == ("", "secrets")}
    assert secrets == READ_VERBS
    assert not [g for g in granted if g[1] == "leases"]


def test_leases_only_in_its_own_namespace(docs: list[Doc]) -> None:
    roles = [d for d in docs if d["kind"] == "Role"]
    assert len(roles) == 1
    (role,) = roles
    assert role["metadata"]["namespace"] == NAMESPACE
    assert grants(role["rules"]) == needed_in_namespace()
    # The Lease's namespace is the pod's (the default of --leader-election-namespace):
    # the workload runs in the Role's namespace and passes no other.
    ds = workload_of(docs)
    assert ds["metadata"]["namespace"] == NAMESPACE
    assert "--leader-election-namespace" not in container(ds)["args"]


def workload_of(docs: list[Doc]) -> Doc:
    (ds,) = (d for d in docs if d["kind"] in ("DaemonSet", "Deployment"))
    return ds


def test_bindings_give_the_roles_to_the_workloads_account(docs: list[Doc]) -> None:
    account = find(docs, "ServiceAccount")
    subject = {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": account["metadata"]["namespace"],
    }
    assert workload_of(docs)["spec"]["template"]["spec"]["serviceAccountName"] == subject["name"]
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = find(docs, binding_kind)
        role = find(docs, role_kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [subject]
        if role_kind == "Role":
            assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    # Nothing else is bound to the account (no second, broader role).
    bindings = [d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")]
    assert len(bindings) == 2


def test_overlays_share_one_rbac() -> None:
    rbac_kinds = ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount")
    seen = [
        sorted(
            (d["kind"], d["metadata"]["name"], repr(d.get("rules")))
            for d in render(DEPLOY / overlay)
            if d["kind"] in rbac_kinds
        )
        for overlay in OVERLAYS
    ]
    assert seen[0] == seen[1]
    assert {workload(o)["spec"]["template"]["spec"]["serviceAccountName"] for o in OVERLAYS} == {
        "gatewayd"
    }
