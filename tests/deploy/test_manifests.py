"""deploy/ checked offline: no cluster, no kubectl and no network on the test machines.

- Every Kubernetes object of both overlays and of deploy/examples is validated against
  the Kubernetes OpenAPI schemas bundled in the ``kubernetes-validate`` package, in
  strict mode (an unknown field is an error), for the oldest and the newest Kubernetes
  version the README names.
- Gateway API objects (no upstream CRD schema is copied into this repository) go
  through gatewayd's own loader and validation: ``gatewayd check`` must accept the
  GatewayClass and the examples.
- The workloads' command lines use only options ``gatewayd run --help`` lists and parse
  with gatewayd's own parser; container ports, probes, the Service and the Prometheus
  annotations agree with those options; and a gatewayd started the way the probes
  expect answers them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_kit import (
    DEPLOY,
    EXAMPLES,
    GATEWAY_GROUP,
    KUSTOMIZATION,
    OVERLAYS,
    ROOT,
    Doc,
    container,
    find,
    free_port,
    get,
    load_docs,
    option,
    referenced_files,
    render,
    run_help_flags,
    workload,
)

from gatewayd.cli import build_parser
from gatewayd.proxy.admin import ENDPOINTS

# The Kubernetes versions README "Deploying to Kubernetes" names (a newer
# kubernetes-validate still validates against 1.37: it picks the newest schema not newer).
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CONTROLLER_NAME = "gatewayd.dev/gateway-controller"
IMAGE = "gatewayd:demo"  # docker-compose.yml's image, built from Dockerfile
NODE_LOCAL_CAPABILITIES = {"NET_ADMIN", "NET_RAW"}


def kubernetes_objects() -> list[tuple[str, Doc]]:
    """(where, object) of every object that is not a Gateway API one."""
    out = []
    for overlay in OVERLAYS:
        out += [(overlay, d) for d in render(DEPLOY / overlay)]
    for path in sorted(EXAMPLES.glob("*.yaml")):
        out += [(f"examples/{path.name}", d) for d in load_docs(path)]
    return [(w, d) for w, d in out if not d["apiVersion"].startswith(GATEWAY_GROUP + "/")]


def object_id(item: tuple[str, Doc]) -> str:
    where, doc = item
    return f"{where}:{doc['kind']}/{doc['metadata']['name']}"


def parse_run(args: list[str]) -> Any:
    """``args`` as gatewayd's own command line parser reads them (SystemExit: invalid)."""
    assert args[0] == "run", args
    return build_parser().parse_args(args)


# --------------------------------------------------------------------------- layout


def test_every_deploy_file_is_applied_by_an_overlay() -> None:
    used: set[Path] = set()
    for overlay in OVERLAYS:
        used |= set(referenced_files(DEPLOY / overlay))
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.is_relative_to(EXAMPLES):
            continue
        assert path.resolve() in used, f"{path} is in no overlay: kubectl apply -k skips it"
    # The base alone runs nothing; each overlay adds exactly one workload.
    base = render(DEPLOY / "base")
    assert not [d for d in base if d["kind"] in ("DaemonSet", "Deployment")]
    assert {workload(o)["kind"] for o in OVERLAYS} == {"DaemonSet", "Deployment"}
    assert not list(EXAMPLES.glob(KUSTOMIZATION))


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("item", kubernetes_objects(), ids=object_id)
def test_object_matches_kubernetes_schema(item: tuple[str, Doc], version: str) -> None:
    _where, doc = item
    kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_catches_mistakes() -> None:
    """The validator really is strict and really has the schemas (offline)."""
    ds = workload("node-local")
    typo = yaml.safe_load(yaml.safe_dump(ds))
    typo["spec"]["template"]["spec"]["hostNetwrok"] = True
    wrong_type = yaml.safe_load(yaml.safe_dump(ds))
    container(wrong_type)["ports"][0]["containerPort"] = "9901"
    for bad in (typo, wrong_type):
        with pytest.raises(jsonschema.ValidationError):
            kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


# --------------------------------------------------------------------------- Gateway API


def with_cluster_ips(docs: list[Doc]) -> list[Doc]:
    """What the API server adds before gatewayd sees a Service: a cluster IP (from the
    documentation range: nothing is sent to it)."""
    out = []
    for i, doc in enumerate(docs):
        if doc["kind"] == "Service" and "clusterIP" not in doc.get("spec", {}):
            doc = yaml.safe_load(yaml.safe_dump(doc))
            doc["spec"]["clusterIP"] = f"192.0.2.{10 + i}"
            doc["spec"]["clusterIPs"] = [doc["spec"]["clusterIP"]]
        out.append(doc)
    return out


def test_gateway_api_objects_pass_gatewayd_check(tmp_path: Path) -> None:
    base = render(DEPLOY / "base")
    gateway_api = [d for d in base if d["apiVersion"].startswith(GATEWAY_GROUP + "/")]
    assert [d["kind"] for d in gateway_api] == ["GatewayClass"]
    (gateway_class,) = gateway_api
    assert gateway_class["spec"]["controllerName"] == CONTROLLER_NAME
    assert build_parser_default("controller_name") == CONTROLLER_NAME
    docs = [gateway_class]
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += load_docs(path)
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump_all(with_cluster_ips(docs)))
    pool = option(container(workload("north-south"))["args"], "--address-pool")
    assert pool is not None
    done = subprocess.run(
        [
            *(sys.executable, "-m", "gatewayd", "check"),
            *("--config", str(config), "--address-pool", pool),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split("  ")[0].strip(): line.split() for line in done.stdout.splitlines()}
    assert rows["GatewayClass gatewayd"][2] == "True"
    assert rows["Gateway demo/edge"][2:5] == ["True", "True", "True"]
    routes = [r for name, r in rows.items() if name.startswith("HTTPRoute ")]
    assert len(routes) == 2 and all(r[4] == "True" for r in routes), done.stdout
    # Only the example workloads themselves are not Gateway API input.
    assert "skipped 2 Deployment objects" in done.stdout + done.stderr


# --------------------------------------------------------------------------- command lines


@pytest.fixture(scope="module")
def help_flags() -> set[str]:
    flags = run_help_flags()
    assert {"--config", "--admin-address", "--tproxy"} <= flags  # the parse itself works
    return flags


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workload_uses_only_run_options(overlay: str, help_flags: set[str]) -> None:
    args = container(workload(overlay))["args"]
    used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    assert used <= help_flags, f"not in `gatewayd run --help`: {sorted(used - help_flags)}"
    assert "--kubernetes" in used and "--config" not in used
    parse_run(args)  # values too: gatewayd's own parser exits on a bad one


def admin_port(args: list[str]) -> tuple[str, int]:
    host, _, port = parse_run(args).admin_address.rpartition(":")
    return host, int(port)


def ports(c: Doc) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in c["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_probes_and_scrape_annotations_follow_the_args(overlay: str) -> None:
    ds = workload(overlay)
    c = container(ds)
    host, port = admin_port(c["args"])
    # The kubelet probes, and Prometheus scrapes, the pod's address: the admin server
    # must listen there, not on loopback.
    assert host in ("0.0.0.0", "::", "[::]"), host
    assert ports(c)["admin"] == port
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/")):
        http_get = c[probe]["httpGet"]
        assert http_get["path"] == path and "host" not in http_get
        assert ports(c).get(http_get["port"], http_get["port"]) == port
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] in {path for path, _ in ENDPOINTS}
    assert annotations["prometheus.io/path"] == "/stats/prometheus"
    # Every container port is one gatewayd listens on: the admin address, the TPROXY
    # port, or a listener port of the example Gateway.
    gateway = find(load_docs(EXAMPLES / "gateway.yaml"), "Gateway")
    listener_ports = {listener["port"] for listener in gateway["spec"]["listeners"]}
    parsed = parse_run(c["args"])
    expected = {"admin": port}
    if parsed.tproxy:
        expected["tproxy"] = parsed.tproxy_port or build_parser_default("tproxy_port")
    assert set(ports(c)) >= set(expected)
    for name, number in ports(c).items():
        assert expected.get(name) == number or number in listener_ports, (name, number)
    assert len({p["containerPort"] for p in c["ports"]}) == len(c["ports"])


def build_parser_default(dest: str) -> Any:
    return parse_run(["run", "--kubernetes"]).__dict__[dest]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_drain(overlay: str) -> None:
    ds = workload(overlay)
    drain = parse_run(container(ds)["args"]).drain_timeout
    assert drain == 15  # Envoy's and gatewayd's default, written out in the manifest
    assert ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 2 * drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_identity_image_and_resources(overlay: str) -> None:
    docs = render(DEPLOY / overlay)
    ds = workload(overlay)
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    account = find(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert ds["metadata"]["namespace"] == account["metadata"]["namespace"]
    assert find(docs, "Namespace")["metadata"]["name"] == ds["metadata"]["namespace"]
    assert c["image"] == IMAGE
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-gatewayd-image"]["image"] == IMAGE
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # The downward API: the pod's name (the leader-election holder id) and namespace
    # (the Lease's namespace, where the Role allows Leases).
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    workers = parse_run(c["args"]).workers
    if workers is not None:  # a container sees the node's CPUs: match the CPU limit
        assert str(workers) == str(c["resources"]["limits"]["cpu"])


def test_node_local_daemonset() -> None:
    docs = render(DEPLOY / "node-local")
    ds = workload("node-local")
    assert ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert parse_run(c["args"]).tproxy is True
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == NODE_LOCAL_CAPABILITIES
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged" not in sc
    # Root, on purpose (the manifest says why): capabilities are only effective for uid 0.
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    labels = find(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
    # The image installs nft(8), which --tproxy runs.
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(r"^RUN .*apt-get install .*\bnftables\b", dockerfile, re.M)


def test_north_south_deployment_and_service() -> None:
    docs = render(DEPLOY / "north-south")
    ds = workload("north-south")
    assert ds["kind"] == "Deployment" and ds["spec"]["replicas"] == 2
    pod = ds["spec"]["template"]["spec"]
    c = container(ds)
    # Pod Security "restricted", which the namespace enforces.
    labels = find(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert not pod.get("hostNetwork") and not any("hostPort" in p for p in c["ports"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    svc = find(docs, "Service")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    gateway = find(load_docs(EXAMPLES / "gateway.yaml"), "Gateway")
    listener_ports = {listener["port"] for listener in gateway["spec"]["listeners"]}
    for p in svc["spec"]["ports"]:
        target = ports(c).get(p["targetPort"], p["targetPort"])
        assert target in listener_ports, p  # the Service reaches a Gateway listener
        assert target != admin_port(c["args"])[1]  # and never the admin server


# --------------------------------------------------------------------------- probes, live


def test_gatewayd_answers_the_probes_and_the_scrape(tmp_path: Path) -> None:
    """gatewayd serving the example Gateway (from files, on loopback: the cluster is
    the one thing missing) answers the readiness and liveness probes and the scrape
    path of the manifests with 200."""
    ds = workload("north-south")
    c = container(ds)
    gateway_class = find(render(DEPLOY / "base"), "GatewayClass")
    docs = [gateway_class, *load_docs(EXAMPLES / "echo.yaml")]
    docs += load_docs(EXAMPLES / "gateway.yaml")
    for doc in docs:
        if doc["kind"] == "Gateway":
            doc["spec"]["listeners"][0]["port"] = free_port()
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(docs))
    port = free_port()
    paths = [
        c["readinessProbe"]["httpGet"]["path"],
        c["livenessProbe"]["httpGet"]["path"],
        ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
    ]
    child = subprocess.Popen(
        [
            *(sys.executable, "-m", "gatewayd", "run", "--config", str(tmp_path)),
            *("--admin-address", f"127.0.0.1:{port}", "--workers", "1"),
            *("--address-pool", "127.0.0.1/32", "--access-log", "off", "--no-watch"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        answers: dict[str, tuple[int, bytes]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None:
            try:
                answers = {path: get(port, path) for path in paths}
            except OSError:
                answers = {}
            if answers and all(code == 200 for code, _ in answers.values()):
                break
            time.sleep(0.1)
        assert child.poll() is None, "gatewayd exited"
        assert {path: code for path, (code, _) in answers.items()} == dict.fromkeys(paths, 200)
        assert b"gatewayd_config_generation" in answers["/stats/prometheus"][1]
    finally:
        child.terminate()
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out.decode(errors="replace")


def test_example_backends_run_gatewayd_echo_on_their_ports() -> None:
    docs = load_docs(EXAMPLES / "echo.yaml")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert len(deployments) == 2
    for dep in deployments:
        c = container(dep)
        assert c["image"] == IMAGE
        args = build_parser().parse_args(c["args"])
        assert args.command == "echo" and args.name == dep["metadata"]["name"]
        assert args.namespace == dep["metadata"]["namespace"]
        assert int(args.listen.rpartition(":")[2]) == ports(c)["http"]
        assert args.listen.startswith("0.0.0.0:")  # reachable at the pod's address
        # Its Service selects exactly its pods and reaches the named port.
        svc = services[dep["metadata"]["name"]]
        assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    # "echo" (the mesh route's parent) selects both versions.
    both = services["echo"]["spec"]["selector"]
    assert all(
        both.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments
    )
