"""``gatewayd run --kubernetes`` serving what the API server holds (issue 13).

One module-scoped double (HTTPS, bearer token, no GRPCRoute CRD), two echo backends
and one daemon reading the double through a kubeconfig; each test changes objects in
the double and watches traffic follow.
"""

from __future__ import annotations

import json
import math
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_kit import (
    Child,
    Client,
    Counter,
    EchoBackend,
    Gatewayd,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    gatewayd_argv,
    http_route,
    listener,
    match,
    request,
    rule,
    run_cli,
)
from kits.apiserver import ApiServerDouble

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

GW = "gateway.networking.k8s.io"
NO_GRPCROUTE = [f"{GW}/v1/grpcroutes", f"{GW}/v1alpha2/grpcroutes"]
# How soon a change in the cluster must be served.
WITHIN = 2.0


class KubeGatewayd(Gatewayd):
    """``gatewayd run --kubernetes`` (the file-mode ``Gatewayd`` with another source)."""

    def __init__(self, workdir: Path, source_args: Sequence[str], *, wait: bool = True) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        argv = gatewayd_argv(
            "run",
            "--kubernetes",
            *source_args,
            "--admin-address",
            f"127.0.0.1:{self.admin_port}",
            "--workers",
            "1",
        )
        self.child = Child(argv, "gatewayd", cwd=workdir)
        Gatewayd.live.append(self)
        if wait:
            try:
                self._wait_ready(20.0)
            except BaseException:
                self.stop()
                raise


def create_all(api: ApiServerDouble, docs: Sequence[dict[str, Any]]) -> None:
    for doc in docs:
        api.create(json.loads(json.dumps(doc)))


def backend_docs(backend: EchoBackend) -> list[dict[str, Any]]:
    docs = backend.manifests()
    for doc in docs:
        if doc["kind"] == "EndpointSlice":
            doc["apiVersion"] = "discovery.k8s.io/v1"
    return docs


@dataclass
class Env:
    api: ApiServerDouble
    daemon: KubeGatewayd
    port: int


@pytest.fixture(scope="module")
def env(module_echoes: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    backends = module_echoes.start("echo-v1", "echo-v2")
    port = free_port()
    with ApiServerDouble(omit=NO_GRPCROUTE) as api:
        create_all(api, [gateway_class(), gateway("gw", [listener("http", port)])])
        for b in backends:
            create_all(api, backend_docs(b))
        create_all(api, [split_route("split", 90, 10)])
        base = tmp_path_factory.mktemp("kube")
        kubeconfig = api.write_kubeconfig(base / "kubeconfig")
        daemon = KubeGatewayd(base / "gatewayd", ["--kubeconfig", str(kubeconfig)])
        try:
            yield Env(api, daemon, port)
        finally:
            daemon.stop()


def split_route(name: str, v1: int, v2: int, *, host: str = "split.example") -> dict[str, Any]:
    return http_route(
        name,
        [rule(backends=[backend_ref("echo-v1", weight=v1), backend_ref("echo-v2", weight=v2)])],
        hostnames=[host],
    )


def pods(port: int, host: str, n: int) -> dict[str, int]:
    counter = Counter()
    with Client(port) as c:
        for _ in range(n):
            counter.add(str(c.request("/", host=host).echo()["pod"]))
    return counter.values


def served_within(check: Callable[[], bool], daemon: Gatewayd, what: str) -> float:
    """Seconds until ``check()`` held; fails after ``WITHIN`` seconds."""
    start = time.monotonic()
    while time.monotonic() - start < WITHIN:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"{what} not served within {WITHIN}s\n{daemon.output()}")


def status_code(port: int, host: str, path: str = "/") -> int:
    return request(port, path, host=host).status


def only(port: int, host: str, pod: str) -> Callable[[], bool]:
    def check() -> bool:
        reply = request(port, "/", host=host)
        return reply.status == 200 and reply.echo()["pod"] == pod

    return check


def test_ninety_ten_split_is_served_from_the_cluster(env: Env) -> None:
    n = 400
    counted = pods(env.port, "split.example", n)
    assert set(counted) == {"echo-v1", "echo-v2"}, counted
    share = counted["echo-v2"] / n
    # 3.5 standard deviations of a 10% share over n requests (random picks).
    assert abs(share - 0.10) <= 3.5 * math.sqrt(0.1 * 0.9 / n), counted
    out = env.daemon.output()
    assert "Kubernetes API server https://127.0.0.1:" in out
    assert "(context double)" in out
    assert "HTTPRoute gateway.networking.k8s.io/v1" in out  # which kinds at which versions


def test_weights_changed_and_route_deleted_take_effect_within_two_seconds(env: Env) -> None:
    create_all(env.api, [split_route("moving", 100, 0, host="moving.example")])
    served_within(only(env.port, "moving.example", "echo-v1"), env.daemon, "a new route")
    env.api.update(json.loads(json.dumps(split_route("moving", 0, 100, host="moving.example"))))
    served_within(only(env.port, "moving.example", "echo-v2"), env.daemon, "new weights")
    env.api.delete(GW, "httproutes", "moving", namespace="default")
    served_within(
        lambda: status_code(env.port, "moving.example") == 404, env.daemon, "a deleted route"
    )


def test_dropped_watches_are_recovered(env: Env) -> None:
    env.api.drop_watches()
    create_all(env.api, [split_route("after-drop", 0, 1, host="drop.example")])
    served_within(only(env.port, "drop.example", "echo-v2"), env.daemon, "a change after a drop")


def test_an_expired_resource_version_is_recovered_by_a_relist(env: Env) -> None:
    # The watches are cut and history compacted while they reconnect: their next watch
    # from the old resourceVersion is answered 410 Gone, and they list again.
    env.api.pause()
    env.api.drop_watches()
    create_all(env.api, [split_route("after-expiry", 0, 1, host="expiry.example")])
    env.api.expire_history()
    env.api.resume()
    served_within(only(env.port, "expiry.example", "echo-v2"), env.daemon, "a change after 410")
    assert "expired (410): relisting" in env.daemon.output()


def test_a_missing_crd_is_logged_once_and_serving_goes_on(env: Env) -> None:
    out = env.daemon.output()
    assert out.count("GRPCRoute: the cluster serves none of") == 1, out
    assert status_code(env.port, "split.example") == 200


def test_an_invalid_object_is_skipped_and_the_rest_serves(env: Env) -> None:
    bad_regex = http_route(
        "bad-regex",
        [
            rule(
                matches=[match("/(?=x)", type="RegularExpression")],
                backends=[backend_ref("echo-v1")],
            )
        ],
        hostnames=["bad.example"],
    )
    # Invalid as an object (a PathPrefix must start with "/"): in file mode this reload
    # would be refused whole; here it is skipped and the good route beside it serves.
    bad_path = http_route(
        "bad-path",
        [rule(matches=[match("no-slash")], backends=[backend_ref("echo-v1")])],
        hostnames=["bad.example"],
    )
    good = split_route("good-beside-bad", 0, 1, host="good.example")
    create_all(env.api, [bad_regex, bad_path, good])
    served_within(only(env.port, "good.example", "echo-v2"), env.daemon, "the valid route")
    assert status_code(env.port, "bad.example") == 404
    out = env.daemon.output()
    assert "k8s:HTTPRoute/default/bad-path:0: HTTPRoute default/bad-path" in out
    # The object validation refused is reported in its own status: PATCHed to the API
    # server (this replica leads), Accepted False with validation's message.  (Waited
    # for first: the statuses are published just after the new table serves.)
    written = env.api.wait_for_object(
        GW,
        "httproutes",
        "bad-path",
        lambda o: o.get("status", {}).get("parents"),
        namespace="default",
    )
    [written_parent] = written["status"]["parents"]
    assert written_parent["parentRef"]["name"] == "gw"
    assert written_parent["controllerName"] == "gatewayd.dev/gateway-controller"
    [cond] = written_parent["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == (
        "Accepted",
        "False",
        "UnsupportedValue",
    )
    assert cond["observedGeneration"] == written["metadata"]["generation"]
    assert "spec.rules[0].matches[0].path.value" in cond["message"], cond
    # (The double logs a request once it has answered it, after the store changed.)
    env.api.wait_for(
        lambda: env.api.requests(verb="patch", path_contains="/httproutes/bad-path/status")
    )
    # The same on every replica's /status.
    [admin_parent] = env.daemon.status_of("HTTPRoute", "bad-path")["parents"]
    assert admin_parent["conditions"][0]["message"] == cond["message"]
    parent = env.daemon.status_of("HTTPRoute", "bad-regex")["parents"][0]
    accepted = {c["type"]: c for c in parent["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    code, body = env.daemon.admin_get("/status")
    assert code == 200, body
    assert json.loads(body)["config"]["lastReloadError"] is None, body


def test_check_kubernetes_lists_once_and_prints_the_status(tmp_path: Path) -> None:
    with ApiServerDouble(omit=NO_GRPCROUTE) as api:
        create_all(api, [gateway_class(), gateway("gw", [listener("http", 8080)])])
        create_all(api, [split_route("split", 90, 10)])
        # Its backends exist (check exits 1 on BackendNotFound: those requests would 500).
        create_all(api, [*backend_manifests("echo-v1", 9999), *backend_manifests("echo-v2", 9999)])
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", context="ctx")
        argv = ("check", "--kubernetes", "--kubeconfig", str(kubeconfig), "--context", "ctx")
        proc = run_cli(*argv)
        assert proc.returncode == 0, proc
        assert "Gateway default/gw" in proc.stdout, proc
        assert "HTTPRoute default/split -> default/gw" in proc.stdout, proc
        assert "GRPCRoute: the cluster serves none of" in proc.stderr, proc
        # An invalid object: reported, and check exits 1 as it does for files.
        bad = http_route("bad", [rule(matches=[match("no-slash")])])
        create_all(api, [bad])
        proc = run_cli(*argv)
        assert proc.returncode == 1, proc
        assert "k8s:HTTPRoute/default/bad:0: HTTPRoute default/bad" in proc.stdout, proc
        assert [r.verb for r in api.requests(path_contains="/httproutes")] == ["list", "list"]


def test_config_and_kubernetes_together_are_a_usage_error() -> None:
    proc = run_cli("run", "--config", "examples", "--kubernetes")
    assert proc.returncode == 2
    assert "argument --kubernetes: not allowed with argument --config" in proc.stderr


def test_in_cluster_configuration_from_env_and_token_files(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    incluster = env.api.write_incluster(tmp_path / "serviceaccount")
    for key, value in incluster.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GATEWAYD_SERVICE_ACCOUNT_DIR", str(tmp_path / "serviceaccount"))
    # The module's daemon holds the Gateway's port: this one serves an admin view only.
    daemon = KubeGatewayd(tmp_path / "gatewayd", [], wait=False)
    try:
        daemon._wait_status(20.0)
        assert "(context in-cluster)" in daemon.output()
        assert env.daemon.status_of("Gateway", "gw")  # the same objects, seen by both
        assert daemon.status_of("HTTPRoute", "split")["parents"]
    finally:
        daemon.stop()


def tls_secret(name: str, host: str) -> tuple[dict[str, Any], bytes]:
    """A kubernetes.io/tls Secret with a fresh self-signed certificate, and its DER."""
    cert, key = self_signed([host])
    doc: dict[str, Any] = yaml.safe_load(secret_manifest(cert, key, name=name, namespace="default"))
    return doc, ssl.PEM_cert_to_DER_cert(cert.decode("ascii"))


def served_certificate(port: int, sni: str, address: str = "127.0.0.2") -> bytes | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test compares the DER it put in the Secret
    try:
        with (
            socket.create_connection((address, port), timeout=2) as raw,
            ctx.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def test_https_from_a_secret_and_its_rotation(env: Env) -> None:
    port = free_port("127.0.0.2")  # a Gateway of its own has an address of its own
    first, first_der = tls_secret("secure-cert", "secure.example")
    https = listener("https", port, protocol="HTTPS", hostname="secure.example")
    https["tls"] = {"certificateRefs": [{"name": "secure-cert"}]}
    route = split_route("secure", 0, 1, host="secure.example")
    route["spec"]["parentRefs"] = [{"name": "gw-tls"}]
    create_all(env.api, [first, gateway("gw-tls", [https], address="127.0.0.2"), route])
    served_within(
        lambda: served_certificate(port, "secure.example") == first_der,
        env.daemon,
        "an HTTPS listener with a certificate from a Secret",
    )
    # The certificate rotated in the cluster: the new one is served.
    second, second_der = tls_secret("secure-cert", "secure.example")
    env.api.update(second)
    served_within(
        lambda: served_certificate(port, "secure.example") == second_der,
        env.daemon,
        "a rotated certificate",
    )


def test_listener_set_is_read_served_and_its_status_written(env: Env) -> None:
    """A ListenerSet from the cluster adds a listener to a Gateway that allows it; its
    status and the Gateway's attachedListenerSets are PATCHed back."""
    port = free_port()
    parent = gateway(
        "ls-parent", [listener("own", port, hostname="own.example")], address="127.0.0.5"
    )
    parent["spec"]["allowedListeners"] = {"namespaces": {"from": "Same"}}
    lset = {
        "apiVersion": f"{GW}/v1",
        "kind": "ListenerSet",
        "metadata": {"name": "team", "namespace": "default"},
        "spec": {
            "parentRef": {"name": "ls-parent"},
            "listeners": [
                {"name": "extra", "port": port, "protocol": "HTTP", "hostname": "extra.example"}
            ],
        },
    }
    route = http_route("to-lset", [rule(backends=[backend_ref("echo-v2")])])
    route["spec"]["parentRefs"] = [{"kind": "ListenerSet", "group": GW, "name": "team"}]
    create_all(env.api, [parent, lset, route])

    def served() -> bool:
        try:
            r = request(port, "/", host="extra.example", address="127.0.0.5")
        except OSError:
            return False
        return r.status == 200 and r.echo()["pod"] == "echo-v2"

    served_within(served, env.daemon, "a ListenerSet listener")
    written = env.api.wait_for_object(
        GW,
        "listenersets",
        "team",
        lambda o: o.get("status", {}).get("conditions"),
        namespace="default",
    )
    accepted = {c["type"]: c for c in written["status"]["conditions"]}["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("True", "Accepted")
    [entry] = written["status"]["listeners"]
    assert (entry["name"], entry["attachedRoutes"]) == ("extra", 1)
    gw = env.api.wait_for_object(
        GW,
        "gateways",
        "ls-parent",
        lambda o: o.get("status", {}).get("attachedListenerSets") == 1,
        namespace="default",
    )
    assert gw["status"]["listeners"][0]["name"] == "own"


def test_backend_lb_policy_from_the_cluster_sets_sessions_and_its_status(env: Env) -> None:
    policy = {
        "apiVersion": f"{GW}/v1alpha2",
        "kind": "BackendLBPolicy",
        "metadata": {"name": "sticky-v1", "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "echo-v1"}],
            "sessionPersistence": {"sessionName": "lb", "type": "Cookie"},
        },
    }
    create_all(env.api, [policy, split_route("lb-route", 1, 0, host="lb.example")])

    def cookie_set() -> bool:
        r = request(env.port, "/", host="lb.example")
        return r.status == 200 and (r.header("set-cookie") or "").startswith("lb=")

    served_within(cookie_set, env.daemon, "the BackendLBPolicy's session cookie")
    # Its status is PATCHed to the API server: an ancestor per Gateway whose HTTPRoutes
    # use echo-v1 (earlier tests of this module add some), "gw" among them.
    written = env.api.wait_for_object(
        GW,
        "backendlbpolicies",
        "sticky-v1",
        lambda o: o.get("status", {}).get("ancestors"),
        namespace="default",
    )
    ancestors = {a["ancestorRef"]["name"]: a for a in written["status"]["ancestors"]}
    [cond] = ancestors["gw"]["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Accepted", "True", "Accepted")
    env.api.delete(GW, "backendlbpolicies", "sticky-v1", namespace="default")
    served_within(lambda: not cookie_set(), env.daemon, "the policy's removal")
