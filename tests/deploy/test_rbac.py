"""The RBAC rules of deploy/ against the API calls gatewayd makes, both ways: every call
is allowed, and nothing else is (no write on any spec, Secrets read-only, Leases only in
gatewayd's own namespace).

Two ways of knowing the calls:
- the code's table: the kinds ``gatewayd run --kubernetes`` lists and watches
  (``gatewayd/runtime/kube/kinds.py``: ``KINDS`` and ``VERBS``) and the kinds whose
  status it writes (``gatewayd/runtime/sinks/kubernetes.py``: ``DEFAULT_RESOURCES``);
  the verbs of the status writer and of the leader election are this test's tables,
  naming the code that makes each call;
- the calls themselves: gatewayd runs with the north-south Deployment's arguments
  against the API-server double, and every request it makes is authorized against the
  rules as kube-apiserver would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from deploy_kit import (
    DEPLOY,
    EXAMPLES,
    OVERLAYS,
    Doc,
    container,
    find,
    free_port,
    get,
    load_docs,
    render,
    with_option,
    workload,
)
from kits.apiserver import ApiServerDouble

from gatewayd.runtime.kube.kinds import GATEWAY_GROUP, KINDS, VERBS
from gatewayd.runtime.sinks.kubernetes import DEFAULT_RESOURCES

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

# gatewayd/runtime/sinks/kubernetes.py (KubernetesStatusSink): GET the object's /status
# (get_*_custom_object_status), then PATCH it (patch_*_custom_object_status, JSON merge
# patch), for the kinds of its DEFAULT_RESOURCES.
STATUS_KINDS = tuple(DEFAULT_RESOURCES)
STATUS_VERBS = ("get", "patch")
# gatewayd/runtime/kube/leader.py (LeaderElector): read_namespaced_lease,
# create_namespaced_lease and replace_namespaced_lease of one coordination.k8s.io/v1
# Lease in the pod's namespace.
LEASE: Grant = ("coordination.k8s.io", "leases", "")
LEASE_VERBS = ("get", "create", "update")
READ_VERBS = {"get", "list", "watch"}
NAMESPACE = "gatewayd-system"


def needed_cluster_wide() -> set[Grant]:
    reads = {(k.group, k.plural, verb) for k in KINDS for verb in VERBS}
    status = {
        (r.group, f"{r.plural}/status", verb)
        for r in DEFAULT_RESOURCES.values()
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
    kinds = {k.kind: k for k in KINDS}
    assert set(STATUS_KINDS) <= set(kinds)
    for kind, r in DEFAULT_RESOURCES.items():  # the writer and the reader agree
        assert (r.group, r.plural, r.namespaced) == (
            kinds[kind].group,
            kinds[kind].plural,
            kinds[kind].namespaced,
        )
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


# --------------------------------------------------------------------------- live calls
#
# The tables above say what the code should need; here gatewayd runs with the
# north-south Deployment's own arguments against the API-server double
# (tests/kits/apiserver.py) and every request it makes is checked against the rules,
# the way kube-apiserver's authorizer would (RequestInfo: verb, group, resource,
# subresource, namespace).


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str  # with "/subresource"; "" for a non-resource URL
    namespace: str
    path: str


def attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """What kube-apiserver's RequestInfo makes of a request."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:  # /api, /api/v1, /apis, /apis/<group>[/<version>], /version: discovery
        return Attributes(method.lower(), "", "", "", path)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    if method == "GET":
        verb = "get" if named else "watch" if query.get("watch") in ("true", "1") else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return Attributes(verb, group, resource, namespace, path)


DISCOVERY = re.compile(r"/(api|apis|version)(/[^/]+){0,2}/?")  # system:discovery's URLs


def allowed(a: Attributes, docs: list[Doc]) -> bool:
    if not a.resource:
        return a.verb == "get" and DISCOVERY.fullmatch(a.path) is not None
    grant = (a.group, a.resource, a.verb)
    if grant in grants(find(docs, "ClusterRole")["rules"]):
        return True
    role = find(docs, "Role")
    return bool(a.namespace == role["metadata"]["namespace"] and grant in grants(role["rules"]))


def test_the_request_attributes_are_read_as_the_api_server_reads_them() -> None:
    cases = {
        ("GET", "/apis", ""): ("get", "", ""),
        ("GET", "/api/v1/pods", ""): ("list", "", "pods"),
        ("GET", "/api/v1/pods", "1"): ("watch", "", "pods"),
        ("GET", "/api/v1/namespaces/demo", ""): ("get", "", "namespaces"),
        ("GET", "/api/v1/namespaces/demo/secrets/tls", ""): ("get", "", "secrets"),
        ("PATCH", f"/apis/{GATEWAY_GROUP}/v1/namespaces/d/gateways/g/status", ""): (
            "patch",
            GATEWAY_GROUP,
            "gateways/status",
        ),
        ("PUT", f"/apis/{GATEWAY_GROUP}/v1/gatewayclasses/c/status", ""): (
            "update",
            GATEWAY_GROUP,
            "gatewayclasses/status",
        ),
        ("POST", "/apis/coordination.k8s.io/v1/namespaces/gatewayd-system/leases", ""): (
            "create",
            "coordination.k8s.io",
            "leases",
        ),
    }
    for (method, path, watch), expected in cases.items():
        a = attributes(method, path, {"watch": watch} if watch else {})
        assert (a.verb, a.group, a.resource) == expected, (method, path)
    docs = render(DEPLOY / "north-south")
    assert allowed(attributes("GET", "/apis/discovery.k8s.io/v1", {}), docs)
    assert allowed(attributes("GET", "/api/v1/namespaces/demo/secrets/tls", {}), docs)
    lease = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"
    assert allowed(attributes("POST", lease.format(NAMESPACE), {}), docs)
    assert not allowed(attributes("POST", lease.format("kube-system"), {}), docs)
    assert not allowed(attributes("PATCH", "/api/v1/namespaces/demo/secrets/tls", {}), docs)
    gateway = f"/apis/{GATEWAY_GROUP}/v1/namespaces/demo/gateways/edge"
    assert not allowed(attributes("PATCH", gateway, {}), docs)
    assert allowed(attributes("PATCH", gateway + "/status", {}), docs)
    assert not allowed(attributes("GET", "/metrics", {}), docs)


@dataclass
class LiveRun:
    requests: list[Any]
    output: str


def cluster_objects() -> list[Doc]:
    """What a user applies (base GatewayClass, the examples) as the API server stores
    them; the example Deployments are not read by gatewayd."""
    docs = [find(render(DEPLOY / "base"), "GatewayClass")]
    docs += load_docs(EXAMPLES / "echo.yaml") + load_docs(EXAMPLES / "gateway.yaml")
    return [d for d in docs if d["kind"] != "Deployment"]


def wait(
    condition: Callable[[], bool], within: float, what: str, output: Callable[[], str]
) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}\n{output()}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    tmp = tmp_path_factory.mktemp("live")
    secret = subprocess.run(
        [
            *(sys.executable, "-m", "gatewayd", "cert", "--host", "echo.example"),
            *("--namespace", "demo", "--name", "echo-tls"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    with ApiServerDouble() as api:
        for doc in cluster_objects():
            if doc["kind"] == "Gateway":
                doc["spec"]["listeners"][0]["port"] = free_port()
            api.create(doc)
        api.create(yaml.safe_load(secret))  # not referenced yet: gatewayd keeps no data
        kubeconfig = tmp / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        admin = free_port()
        args = container(workload("north-south"))["args"]
        args = with_option(args, "--admin-address", f"127.0.0.1:{admin}")
        args = with_option(args, "--address-pool", "127.0.0.1/32")  # loopback only
        args = with_option(args, "--workers", "1")
        args = with_option(args, "--kubeconfig", str(kubeconfig))
        env = dict(os.environ, POD_NAME="gatewayd-test-0", POD_NAMESPACE=NAMESPACE)
        log = tmp / "gatewayd.log"
        with log.open("wb") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", *args], stdout=out, stderr=out, env=env
            )
        output = log.read_text
        try:

            def ready() -> bool:
                try:
                    return get(admin, "/ready")[0] == 200
                except OSError:
                    return child.poll() is not None

            wait(ready, 30, "/ready", output)
            assert child.poll() is None, output()
            # A Gateway starts to reference the Secret: its data is fetched now.
            gw = api.get(GATEWAY_GROUP, "gateways", "edge", namespace="demo")
            https = {
                "name": "https",
                "protocol": "HTTPS",
                "port": free_port(),
                "tls": {"mode": "Terminate", "certificateRefs": [{"name": "echo-tls"}]},
                "allowedRoutes": {"namespaces": {"from": "Same"}},
            }
            listeners = [*gw["spec"]["listeners"], https]
            api.patch(
                GATEWAY_GROUP,
                "gateways",
                "edge",
                {"spec": {"listeners": listeners}},
                namespace="demo",
            )

            def https_programmed() -> bool:
                code, body = get(admin, "/status")
                for item in json.loads(body)["items"] if code == 200 else []:
                    if item["kind"] == "Gateway":
                        for listener in item["status"].get("listeners", []):
                            conds = {c["type"]: c["status"] for c in listener["conditions"]}
                            if listener["name"] == "https":
                                return conds.get("Programmed") == "True"
                return False

            wait(https_programmed, 15, "the HTTPS listener with the Secret", output)

            # The Lease holder writes status to the API server: wait for the Gateway's
            # HTTPS listener there, and the route's parent (the last writes expected).
            def written() -> bool:
                gw = api.get(GATEWAY_GROUP, "gateways", "edge", namespace="demo")
                names = {x["name"] for x in gw.get("status", {}).get("listeners", [])}
                route = api.get(GATEWAY_GROUP, "httproutes", "echo-canary", namespace="demo")
                return "https" in names and bool(route.get("status", {}).get("parents"))

            wait(written, 30, "status written to the API server", output)
        finally:
            child.terminate()
            child.wait(timeout=30)
        yield LiveRun(requests=api.requests(), output=output())


def test_every_call_of_gatewayd_run_kubernetes_is_allowed(live_run: LiveRun) -> None:
    docs = render(DEPLOY / "north-south")
    seen = [attributes(r.method, r.path, r.query) for r in live_run.requests]
    denied = sorted({(a.verb, a.path) for a in seen if not allowed(a, docs)})
    assert not denied, f"the RBAC of deploy/ would refuse: {denied}"
    # The run was real: every kind listed and watched, and one Secret read by name.
    calls = {(a.group, a.resource, a.verb) for a in seen if a.resource}
    for k in KINDS:
        assert {(k.group, k.plural, "list"), (k.group, k.plural, "watch")} <= calls, k.kind
    assert ("", "secrets", "get") in calls, live_run.output
    # Status written as the sink does it, and the Lease taken and released.
    for resource in ("gatewayclasses/status", "gateways/status", "httproutes/status"):
        assert (GATEWAY_GROUP, resource, "patch") in calls, resource
    leases = {a.verb for a in seen if a.resource == "leases"}
    assert {"get", "create", "update"} <= leases, leases
    assert {a.namespace for a in seen if a.resource == "leases"} == {NAMESPACE}
    # Nothing but reads outside status subresources and Leases.
    for group, resource, verb in calls:
        if not (resource.endswith("/status") or resource == "leases"):
            assert verb in READ_VERBS, (group, resource, verb)
