"""Status, admin endpoints, metrics and the check/status commands, end to end."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_kit import (
    LOCALHOST,
    Client,
    Gatewayd,
    assert_condition,
    backend_manifests,
    backend_ref,
    conditions,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    prometheus_samples,
    request,
    rule,
    run_cli,
    to_yaml,
)

pytestmark = pytest.mark.e2e

# A per-run pool inside 127.0.0.0/8 (all local on Linux), away from the default pool.
POOL_NET = ipaddress.ip_network(f"127.{100 + os.getpid() % 100}.{os.getpid() % 250}.0/28")


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    pooled_port: int
    params_port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    port, pooled_port, params_port = free_port(), free_port(), free_port()
    params = gateway("params", [listener("http", params_port)])
    # A parametersRef to a kind gatewayd does not know (GatewayInvalidParametersRef).
    params["spec"]["infrastructure"] = {
        "parametersRef": {"group": "invalid.io", "kind": "InvalidParameters", "name": "invalid"}
    }
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        params,
        gateway("pooled", [listener("http", pooled_port)], address=None),
        *echo.manifests(),
        http_route("good", [rule(backends=[backend_ref("echo-v1")])], hostnames=["good.example"]),
        http_route(
            "broken",
            [
                rule(matches=[match("/ok")], backends=[backend_ref("echo-v1")]),
                rule(matches=[match("/missing")], backends=[backend_ref("nowhere")]),
            ],
            hostnames=["broken.example"],
        ),
        http_route("on-pooled", [rule(backends=[backend_ref("echo-v1")])], parent="pooled"),
        # Refused by validation (a PathPrefix starts with "/"): reported, never served.
        http_route(
            "invalid",
            [rule(matches=[match("no-slash")], backends=[backend_ref("echo-v1")])],
            hostnames=["invalid.example"],
        ),
    ]
    daemon = module_gatewayd(docs, args=["--address-pool", str(POOL_NET)])
    return Env(daemon, port, pooled_port, params_port)


# --------------------------------------------------------------------------- /status


def test_admin_ready(env: Env) -> None:
    assert env.daemon.admin_get("/ready")[0] == 200


def test_status_items_shape(env: Env) -> None:
    for item in env.daemon.status_items():
        assert {"apiVersion", "kind", "metadata", "status"} <= set(item), item
        assert "name" in item["metadata"]
        assert isinstance(item["metadata"].get("generation"), int), item


def test_gateway_class_accepted(env: Env) -> None:
    status = env.daemon.status_of("GatewayClass", "gatewayd", namespace=None)
    assert_condition(status, "Accepted", "True")


def test_gateway_programmed_with_attached_routes(env: Env) -> None:
    status = env.daemon.status_of("Gateway", "gw")
    assert_condition(status, "Accepted", "True")
    assert_condition(status, "Programmed", "True")
    listeners = {item["name"]: item for item in status["listeners"]}
    assert listeners["http"]["attachedRoutes"] == 2, listeners
    assert_condition(listeners["http"], "Programmed", "True")
    assert_condition(listeners["http"], "Accepted", "True")
    addresses = [a["value"] for a in status.get("addresses", [])]
    assert addresses == [LOCALHOST], status


def test_gateway_with_a_parameters_ref_is_not_accepted_nor_served(env: Env) -> None:
    status = env.daemon.status_of("Gateway", "params")
    assert_condition(status, "Accepted", "False", "InvalidParameters")
    assert "invalid.io/InvalidParameters invalid" in conditions(status)["Accepted"]["message"]
    assert_condition(status, "Programmed", "False", "Invalid")
    assert "addresses" not in status
    with pytest.raises(OSError):
        request(env.params_port, "/", host="any.example", timeout=2.0)


def test_route_parent_status(env: Env) -> None:
    status = env.daemon.status_of("HTTPRoute", "good")
    parents = status["parents"]
    assert len(parents) == 1, parents
    parent = parents[0]
    assert parent["parentRef"]["name"] == "gw"
    assert parent["controllerName"] == "gatewayd.dev/gateway-controller"
    assert_condition(parent, "Accepted", "True")
    assert_condition(parent, "ResolvedRefs", "True")


def test_an_invalid_route_is_reported_in_its_own_status_and_not_served(env: Env) -> None:
    [parent] = env.daemon.status_of("HTTPRoute", "invalid")["parents"]
    assert parent["parentRef"]["name"] == "gw"
    assert_condition(parent, "Accepted", "False", "UnsupportedValue")
    [accepted] = [c for c in parent["conditions"] if c["type"] == "Accepted"]
    assert "spec.rules[0].matches[0].path.value" in accepted["message"], accepted
    # Not attached (attachedRoutes counts good and broken only) and not served.
    assert request(env.port, "/", host="invalid.example").status == 404


def test_missing_backend_reported_and_answered_500(env: Env) -> None:
    status = env.daemon.status_of("HTTPRoute", "broken")
    parent = status["parents"][0]
    # the route is still accepted: its other rules serve
    assert_condition(parent, "Accepted", "True")
    assert_condition(parent, "ResolvedRefs", "False", "BackendNotFound")
    assert request(env.port, "/missing", host="broken.example").status == 500
    assert request(env.port, "/ok", host="broken.example").echo()["pod"] == "echo-v1"


def test_pool_address_allocated_and_served(env: Env) -> None:
    status = env.daemon.status_of("Gateway", "pooled")
    assert_condition(status, "Programmed", "True")
    addresses = [a["value"] for a in status.get("addresses", [])]
    assert len(addresses) == 1, status
    address = addresses[0]
    assert ipaddress.ip_address(address) in POOL_NET, address
    r = request(env.pooled_port, "/pooled", address=address, host="any.example")
    assert r.echo()["path"] == "/pooled"
    # the pooled Gateway does not listen on the other Gateway's address
    with pytest.raises(OSError):
        request(env.pooled_port, "/", address=LOCALHOST, timeout=2)


def test_config_dump(env: Env) -> None:
    code, body = env.daemon.admin_get("/config_dump")
    assert code == 200
    dump = json.loads(body)
    ports = {entry["port"] for entry in dump["listeners"]}
    assert {env.port, env.pooled_port} <= ports, dump


# --------------------------------------------------------------------------- metrics


def test_prometheus_metrics(env: Env) -> None:
    with Client(env.port) as c:
        for _ in range(5):
            assert c.request("/m", host="good.example").status == 200
        assert c.request("/", host="nowhere.example").status == 404
    text = env.daemon.metrics()
    downstream = prometheus_samples(text, "gatewayd_downstream_rq_total")
    assert downstream, "no gatewayd_downstream_rq_total in:\n" + text[:3000]
    assert all("listener" in labels for labels, _ in downstream), downstream
    ok = sum(v for labels, v in downstream if labels.get("code", "").startswith("2"))
    assert ok >= 5, downstream
    not_found = sum(v for labels, v in downstream if labels.get("code", "").startswith("4"))
    assert not_found >= 1, downstream
    upstream = prometheus_samples(text, "gatewayd_upstream_rq_total")
    to_echo = sum(
        v
        for labels, v in upstream
        if "echo-v1" in labels.get("backend", "") and labels.get("code") == "200"
    )
    assert to_echo >= 5, upstream


# --------------------------------------------------------------------------- gatewayd status


def test_status_command_gateways(env: Env) -> None:
    proc = run_cli("status", "gateways", "--admin-address", f"{LOCALHOST}:{env.daemon.admin_port}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "NAME" in lines[0].upper(), proc.stdout
    assert any(re.search(r"\bgw\b", line) for line in lines[1:]), proc.stdout
    assert any(re.search(r"\bpooled\b", line) for line in lines[1:]), proc.stdout


def test_status_command_httproutes(env: Env) -> None:
    proc = run_cli(
        "status", "httproutes", "--admin-address", f"{LOCALHOST}:{env.daemon.admin_port}"
    )
    assert proc.returncode == 0, proc.stderr
    assert "good" in proc.stdout and "broken" in proc.stdout, proc.stdout


def test_status_command_without_daemon_fails(env: Env) -> None:
    proc = run_cli("status", "gateways", "--admin-address", f"{LOCALHOST}:{free_port()}")
    assert proc.returncode != 0


# --------------------------------------------------------------------------- gatewayd check


def _valid_docs() -> list[dict[str, object]]:
    return [
        gateway_class(),
        gateway("web", [listener("http", 8080)]),
        http_route("site", [rule(backends=[backend_ref("svc")])], parent="web"),
    ]


def _svc_docs() -> list[dict[str, object]]:
    return backend_manifests("svc", 9999)


def test_check_valid_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "valid"
    cfg.mkdir()
    (cfg / "gateway.yaml").write_text(to_yaml(_valid_docs()))
    (cfg / "backends.yaml").write_text(to_yaml(_svc_docs()))
    proc = run_cli("check", "--config", str(cfg))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "site" in out and "web" in out, out


def test_check_invalid_directory(tmp_path: Path) -> None:
    cfg = tmp_path / "invalid"
    cfg.mkdir()
    (cfg / "gateway.yaml").write_text(to_yaml(_valid_docs()))
    (cfg / "backends.yaml").write_text(to_yaml(_svc_docs()))
    bad_route = http_route(
        "bad-route",
        [rule(matches=[match("/x", type="Bogus")], backends=[backend_ref("svc")])],
        parent="web",
    )
    bad = cfg / "bad.yaml"
    bad.write_text(
        to_yaml(
            [http_route("fine", [rule(backends=[backend_ref("svc")])], parent="web"), bad_route]
        )
    )
    proc = run_cli("check", "--config", str(cfg))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # file:document-index: Kind ns/name: field.path: message
    pattern = re.escape(str(bad)) + r":1: HTTPRoute default/bad-route: spec\.rules\S*: \S"
    relative = r"\S*bad\.yaml:1: HTTPRoute default/bad-route: spec\.rules\S*: \S"
    assert re.search(pattern, out) or re.search(relative, out), out
    # The table lists the refused route like any other object, not accepted.
    row = re.search(r"^HTTPRoute default/bad-route -> default/web +(\S+)", proc.stdout, re.M)
    assert row is not None and row.group(1) == "False(UnsupportedValue)", proc.stdout


def test_check_missing_path_fails(tmp_path: Path) -> None:
    proc = run_cli("check", "--config", str(tmp_path / "does-not-exist"))
    assert proc.returncode != 0
    assert "does-not-exist" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- bind failures


def test_unbindable_listener_is_not_programmed_while_others_serve(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with blocker:
        blocker.bind((LOCALHOST, 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        open_port = free_port()
        docs = [
            gateway_class(),
            gateway("gw", [listener("taken", taken), listener("open", open_port)]),
            *echo.manifests(),
            http_route("all", [rule(backends=[backend_ref("echo-v1")])]),
        ]
        daemon = gatewayd(docs, wait="status")
        listeners: dict[str, dict[str, object]] = {}
        for _ in deadline_loop(10):
            status = daemon.status_of("Gateway", "gw")
            listeners = {item["name"]: item for item in status.get("listeners", [])}
            if (
                "taken" in listeners
                and conditions(listeners["taken"]).get("Programmed", {}).get("status") == "False"
            ):
                break
        assert "taken" in listeners, listeners
        assert_condition(listeners["taken"], "Programmed", "False")
        assert_condition(listeners["open"], "Programmed", "True")
        assert request(open_port, "/still-serving").echo()["path"] == "/still-serving"


def test_sigterm_shuts_down_cleanly(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *echo.manifests(),
        http_route("all", [rule(backends=[backend_ref("echo-v1")])]),
    ]
    daemon = gatewayd(docs)
    assert request(port, "/").status == 200
    start = time.monotonic()
    rc = daemon.stop()
    assert rc == 0, daemon.output()
    assert time.monotonic() - start < 5
    with pytest.raises(OSError):
        request(port, "/", timeout=2)


def test_text_access_log_one_line_per_request(env: Env) -> None:
    marker = f"/access-{os.getpid()}-{time.monotonic_ns()}"
    assert request(env.port, marker, host="good.example").status == 200
    out = env.daemon.child.stdout
    line = out.wait_for(lambda s: marker in s, timeout=5)
    assert line is not None, "no access log line on stdout\n" + env.daemon.output()
    assert re.search(r"\b200\b", line), line
    assert out.count(lambda s: marker in s) == 1


# --------------------------------------------------------------------------- reload


def test_sighup_reload(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (v1, v2) = echoes.start("echo-v1", "echo-v2")
    port = free_port()
    base = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *v1.manifests(),
        *v2.manifests(),
    ]
    daemon = gatewayd([*base, http_route("r", [rule(backends=[backend_ref("echo-v1")])])])
    assert request(port).echo()["pod"] == "echo-v1"

    daemon.config.write_text(
        to_yaml([*base, http_route("r", [rule(backends=[backend_ref("echo-v2")])])])
    )
    daemon.child.proc.send_signal(signal.SIGHUP)
    pods = set()
    for _ in deadline_loop(10):
        pods.add(request(port).echo()["pod"])
        if "echo-v2" in pods:
            break
    assert "echo-v2" in pods, "the reload was not applied\n" + daemon.output()
    status = daemon.status_of("HTTPRoute", "r")
    assert_condition(status["parents"][0], "Accepted", "True")

    # a broken file on reload keeps the last good configuration serving
    daemon.config.write_text("kind: HTTPRoute\nmetadata: [not, a, map\n")
    mark = daemon.child.stderr.mark()
    daemon.child.proc.send_signal(signal.SIGHUP)
    line = daemon.child.stderr.wait_for(
        lambda s: "keeping" in s or "ERROR" in s, timeout=10, start=mark
    )
    assert line is not None, daemon.output()
    assert request(port).echo()["pod"] == "echo-v2"
    assert daemon.admin_get("/ready")[0] == 200


# --------------------------------------------------------------------------- run options


def test_not_ready_without_a_configuration(gatewayd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    daemon = gatewayd("", args=["--config", str(tmp_path / "missing.yaml")], wait="none")
    codes = []
    for _ in deadline_loop(10):
        code, _ = daemon.admin_get("/ready", timeout=1)
        if code:
            codes.append(code)
        if len(codes) >= 3 or not daemon.child.alive():
            break
    # either it refuses to run at all, or its admin answers "not ready"
    if daemon.child.alive():
        assert codes and set(codes) == {503}, codes
    else:
        assert daemon.child.proc.returncode != 0
        assert "missing.yaml" in daemon.output()


def test_custom_controller_name_and_several_config_paths(echoes, gatewayd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    routes_dir = tmp_path / "routes"
    (routes_dir / "nested").mkdir(parents=True)
    (routes_dir / "nested" / "route.yaml").write_text(
        to_yaml([http_route("r", [rule(backends=[backend_ref("echo-v1")])], parent="custom-gw")])
    )
    (routes_dir / "backend.yaml").write_text(to_yaml(echo.manifests()))
    docs = [
        gateway_class("custom", controller="example.com/custom-controller"),
        gateway_class("default-class"),  # another controller's class now
        gateway("custom-gw", [listener("http", port)], class_name="custom"),
    ]
    daemon = gatewayd(
        docs,
        args=[
            "--config",
            str(routes_dir),
            "--controller-name",
            "example.com/custom-controller",
        ],
    )
    assert request(port, "/c").echo()["path"] == "/c"
    assert_condition(daemon.status_of("GatewayClass", "custom", namespace=None), "Accepted", "True")
    route = daemon.status_of("HTTPRoute", "r")
    assert route["parents"][0]["controllerName"] == "example.com/custom-controller"
    # a class for another controller is not ours: never reported Accepted True by us
    others = [
        item
        for item in daemon.status_items()
        if item["kind"] == "GatewayClass" and item["metadata"]["name"] == "default-class"
    ]
    for item in others:
        assert conditions(item["status"]).get("Accepted", {}).get("status") != "True", item
