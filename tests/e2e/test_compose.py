"""The docker compose demo without a Docker engine: docker-compose.yml and the Dockerfile
are parsed and checked against each other and the repository, then every service's
command line runs as a subprocess on loopback.

What differs from the containers, and nothing else: the compose volumes become copies
in a temporary "container root"; addresses that only exist in a compose network are
mapped to loopback (each echo's network alias -> ``localhost``, each fixed port -> a free
loopback port, the Gateway's 0.0.0.0 -> 127.0.0.1); ``gatewayd`` is ``python -m
gatewayd`` and ``python`` is this interpreter.
"""

from __future__ import annotations

import http.client
import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from e2e_kit import (
    ECHO_READY_TIMEOUT,
    Child,
    Doc,
    deadline_loop,
    free_port,
    gatewayd_argv,
    request,
    run_cli,
    to_yaml,
)

from gatewayd.pipeline import ConfigPipeline
from gatewayd.runtime.sources.files import FileSource

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GATEWAYD_SERVICES = ("gatewayd", "echo-v1", "echo-v2")  # services built from Dockerfile


# --------------------------------------------------------------------------- parsing


def compose() -> Doc:
    doc: Doc = yaml.safe_load(COMPOSE_FILE.read_text())
    return doc


def service(name: str) -> Doc:
    svc: Doc = compose()["services"][name]
    return svc


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile(path: Path = ROOT / "Dockerfile") -> list[Instruction]:
    """The Dockerfile's instructions: comments dropped, continuation lines joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return out


def exec_form(args: str) -> list[str]:
    """A JSON-array ("exec form") instruction argument, asserted to be one."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def build_context(svc: Doc) -> tuple[Path, Path]:
    build = svc["build"]
    if isinstance(build, str):
        context, file = build, "Dockerfile"
    else:
        context, file = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    base = (COMPOSE_FILE.parent / context).resolve()
    return base, base / file


def volumes(svc: Doc) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount in short syntax."""
    out = []
    for spec in svc.get("volumes", []):
        host, container, *_mode = spec.split(":")
        assert host.startswith("."), f"bind mounts are relative to the compose file: {spec}"
        out.append(((COMPOSE_FILE.parent / host).resolve(), container))
    return out


def container_ports(svc: Doc) -> set[int]:
    return {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in svc.get("ports", [])}


def option(command: list[str], name: str) -> str:
    i = command.index(name)
    return command[i + 1]


def mount_into(root: Path, svc: Doc) -> None:
    """Copy a service's bind mounts to ``root`` + their container paths."""
    for host, container in volumes(svc):
        target = root / container.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target)
        else:
            shutil.copyfile(host, target)


def config_docs(config_dir: Path) -> list[tuple[Path, list[Doc]]]:
    return [
        (path, [d for d in yaml.safe_load_all(path.read_text()) if d])
        for path in sorted(config_dir.rglob("*.yaml"))
    ]


# --------------------------------------------------------------------------- static checks


def test_every_referenced_file_exists() -> None:
    services = compose()["services"]
    assert set(services) == {"gatewayd", "echo-v1", "echo-v2", "locust"}
    for name in GATEWAYD_SERVICES:
        context, docker_file = build_context(services[name])
        assert context == ROOT and docker_file.is_file(), (name, context, docker_file)
    for name, svc in services.items():
        for host, container in volumes(svc):
            assert host.exists(), f"service {name}: {host} (mounted at {container}) is missing"
            assert host.is_relative_to(ROOT)
    # COPY sources of the Dockerfile exist and .dockerignore lets them into the context.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for step in dockerfile():
        if step.keyword == "COPY":
            *sources, _dest = step.args.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/" in ignore, f".dockerignore drops {src}"
    # locust runs the repository's locustfile, mounted where its command line looks.
    locust = services["locust"]
    mounted = {c: h for h, c in volumes(locust)}
    assert mounted[option(locust["command"], "-f")] == ROOT / "loadtest" / "locustfile.py"


def test_dockerfile_non_root_healthcheck_entrypoint() -> None:
    steps = dockerfile()
    keywords = [s.keyword for s in steps]
    assert steps[0].keyword == "FROM" and re.fullmatch(r"python:3\.11-slim\S*", steps[0].args)
    users = [s.args for s in steps if s.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    (entrypoint,) = (s for s in steps if s.keyword == "ENTRYPOINT")
    assert exec_form(entrypoint.args) == ["gatewayd"]
    exposed = {int(p) for s in steps if s.keyword == "EXPOSE" for p in s.args.split()}
    (health,) = (s for s in steps if s.keyword == "HEALTHCHECK")
    probe = healthcheck_argv()
    assert probe[0] == "python" and "/ready" in probe[-1]
    probed = re.search(r"127\.0\.0\.1:(\d+)/ready", probe[-1])
    assert probed is not None, probe
    admin_port = int(probed.group(1))
    assert "--interval=" in health.args and "--timeout=" in health.args
    # The ports the services publish are the ones the image exposes, and the admin port
    # the healthcheck probes is where the compose command puts the admin server.
    gw = service("gatewayd")
    assert container_ports(gw) <= exposed
    assert admin_port in exposed
    assert option(gw["command"], "--admin-address") == f"0.0.0.0:{admin_port}"
    # The image's default command serves the same mount point the same way.
    (cmd,) = (s for s in steps if s.keyword == "CMD")
    default = exec_form(cmd.args)
    assert default[0] == "run" == gw["command"][0]
    for name in ("--config", "--admin-address"):
        assert option(default, name) == option(gw["command"], name)
    assert "pip install -c constraints.txt ." in " ".join(
        s.args for s in steps if s.keyword == "RUN"
    )


def healthcheck_argv() -> list[str]:
    (health,) = (s for s in dockerfile() if s.keyword == "HEALTHCHECK")
    _options, sep, cmd = health.args.partition("CMD ")
    assert sep, health.args
    return exec_form(cmd)


def test_config_shape_matches_the_compose_network() -> None:
    """Gateway port = published port; each FQDN endpoint = an echo service's alias and
    --listen port; every route's backend is one of those Services."""
    root_docs = [doc for _p, docs in compose_config_docs() for doc in docs]
    (gw,) = [d for d in root_docs if d["kind"] == "Gateway"]
    assert gw["spec"]["addresses"] == [{"type": "IPAddress", "value": "0.0.0.0"}]
    listener_ports = {lst["port"] for lst in gw["spec"]["listeners"]}
    assert listener_ports <= container_ports(service("gatewayd"))
    slices = [d for d in root_docs if d["kind"] == "EndpointSlice"]
    assert slices and all(s["addressType"] == "FQDN" for s in slices)
    for es in slices:
        name = es["metadata"]["labels"]["kubernetes.io/service-name"]
        echo = service(name)
        (address,) = es["endpoints"][0]["addresses"]
        assert address in echo["networks"]["default"]["aliases"]
        # Kubernetes admission: an FQDN address has at least two labels.
        assert address.count(".") >= 1
        listen_port = int(option(echo["command"], "--listen").rsplit(":", 1)[1])
        assert [p["port"] for p in es["ports"]] == [listen_port]
        assert option(echo["command"], "--name") == name
    services = {es["metadata"]["labels"]["kubernetes.io/service-name"] for es in slices}
    refs = {
        ref["name"]
        for d in root_docs
        if d["kind"] == "HTTPRoute"
        for r in d["spec"]["rules"]
        for ref in r.get("backendRefs", [])
    }
    assert refs and refs <= services, (refs, services)


def compose_config_docs() -> Iterator[tuple[Path, list[Doc]]]:
    for host, container in volumes(service("gatewayd")):
        assert container.startswith("/etc/gatewayd/")
        paths = sorted(host.rglob("*.yaml")) if host.is_dir() else [host]
        for path in paths:
            yield path, [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_gatewayd_check_accepts_the_compose_config(tmp_path: Path) -> None:
    mount_into(tmp_path, service("gatewayd"))
    config = option(service("gatewayd")["command"], "--config")
    result = run_cli("check", "--config", str(tmp_path / config.lstrip("/")))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert any(r[:2] == ["Gateway", "demo/edge"] for r in rows), result.stdout
    assert not any("False" in r for r in rows), result.stdout
    routes = {
        f"{d['metadata'].get('namespace', 'default')}/{d['metadata']['name']}"
        for _, docs in compose_config_docs()
        for d in docs
        if d["kind"] == "HTTPRoute"
    }
    assert len(routes) >= 3
    assert {r[1] for r in rows if r[0] == "HTTPRoute"} == routes, result.stdout


# --------------------------------------------------------------------------- running it


def command_argv(svc: Doc) -> list[str]:
    """The container's command line: the image's ENTRYPOINT (gatewayd) + ``command``."""
    return gatewayd_argv(*svc["command"])


def start_echo(name: str) -> tuple[Child, int]:
    """The echo service's command, its --listen moved to a loopback port of its own."""
    argv = command_argv(service(name))
    i = argv.index("--listen")
    assert argv[i + 1].startswith("0.0.0.0:")
    argv[i + 1] = "127.0.0.1:0"
    child = Child(argv, name)
    line = child.stdout.wait_for(lambda s: "listening on" in s, ECHO_READY_TIMEOUT)
    m = re.search(r":(\d+)\s*$", line or "")
    if m is None:
        child.stop()
        raise AssertionError(f"{name} did not start\n{child.output()}")
    return child, int(m.group(1))


def map_to_loopback(
    config_dir: Path, echo_ports: dict[str, int], listener_ports: dict[int, int]
) -> None:
    """Rewrite the copied config: aliases -> localhost, fixed ports -> loopback ports
    (``listener_ports``: container port -> free port here)."""
    aliases = {
        alias: name
        for name in echo_ports
        for alias in service(name)["networks"]["default"]["aliases"]
    }
    for path, docs in config_docs(config_dir):
        for doc in docs:
            if doc["kind"] == "Gateway":
                doc["spec"]["addresses"] = [{"type": "IPAddress", "value": "127.0.0.1"}]
                for lst in doc["spec"]["listeners"]:
                    lst["port"] = listener_ports[lst["port"]]
            elif doc["kind"] == "EndpointSlice":
                (ep,) = doc["endpoints"]
                name = aliases[ep["addresses"][0]]
                ep["addresses"] = ["localhost"]  # still addressType FQDN: resolved
                for p in doc["ports"]:
                    p["port"] = echo_ports[name]
        path.write_text(to_yaml(docs))


@dataclass
class Running:
    gateway_port: int
    https_port: int
    admin_port: int
    echo_ports: dict[str, int]
    gatewayd: Child


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    children: list[Child] = []
    try:
        echo_ports = {}
        for name in ("echo-v1", "echo-v2"):
            child, port = start_echo(name)
            children.append(child)
            echo_ports[name] = port
        root = tmp_path_factory.mktemp("container-root")
        gw = service("gatewayd")
        mount_into(root, gw)
        argv = command_argv(gw)
        config = argv.index("--config") + 1
        argv[config] = str(root / argv[config].lstrip("/"))
        gateway_port, https_port, admin_port = free_port(), free_port(), free_port()
        argv[argv.index("--admin-address") + 1] = f"127.0.0.1:{admin_port}"
        map_to_loopback(Path(argv[config]), echo_ports, {8080: gateway_port, 8443: https_port})
        daemon = Child(argv, "gatewayd")
        children.append(daemon)
        env = Running(gateway_port, https_port, admin_port, echo_ports, daemon)
        for _ in deadline_loop(15.0, 0.1):
            if not daemon.alive() or run_healthcheck(admin_port).returncode == 0:
                break
        assert run_healthcheck(admin_port).returncode == 0, daemon.output()
        yield env
    finally:
        for child in reversed(children):
            child.stop()


def run_healthcheck(admin_port: int) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's HEALTHCHECK command, probing ``admin_port``."""
    argv = healthcheck_argv()
    argv[0] = sys.executable
    argv[-1] = re.sub(r"127\.0\.0\.1:\d+/ready", f"127.0.0.1:{admin_port}/ready", argv[-1])
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)


def test_requests_reach_both_echo_services_through_fqdn_endpoints(running: Running) -> None:
    canary = request(running.gateway_port, "/echo", headers=[("X-Canary", "true")])
    assert canary.echo()["pod"] == "echo-v2"
    headers = request(running.gateway_port, "/headers").echo()
    assert headers["pod"] == "echo-v1"
    assert headers["namespace"] == "demo"
    pods = {request(running.gateway_port, "/echo").echo()["pod"] for _ in range(30)}
    assert "echo-v1" in pods and pods <= {"echo-v1", "echo-v2"}
    assert request(running.gateway_port, "/old/page").status == 301


def test_https_listener_serves_with_the_demo_certificate(running: Running) -> None:
    # The demo certificate is self-signed: trust it for this one connection.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", running.https_port, timeout=10, context=ctx)
    try:
        conn.request("GET", "/secure/page")
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200
    assert body["pod"] == "echo-v1"
    proto = {k.lower(): v for k, v in body["headers"].items()}["x-forwarded-proto"]
    assert proto in ("https", ["https"])


def test_healthcheck_commands_pass_and_fail_for_real(running: Running) -> None:
    assert run_healthcheck(running.admin_port).returncode == 0
    assert run_healthcheck(free_port()).returncode != 0  # nothing listens: unhealthy
    for name, port in running.echo_ports.items():
        probe = list(service(name)["healthcheck"]["test"])
        assert probe[:2] == ["CMD", "python"]
        fixed = option(service(name)["command"], "--listen").rsplit(":", 1)[1]
        assert f"127.0.0.1:{fixed}/" in probe[-1]
        argv = [sys.executable, *probe[2:-1], probe[-1].replace(f":{fixed}/", f":{port}/")]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert result.returncode == 0, result.stderr


def test_locust_service_command_runs_headless(running: Running, tmp_path: Path) -> None:
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is not installed (make locust installs it); its run is not tested")
    svc = service("locust")
    argv = [sys.executable, "-m", "locust", *svc["command"]]
    mounted = {c: h for h, c in volumes(svc)}
    f = argv.index("-f") + 1
    argv[f] = str(mounted[argv[f]])
    host = argv.index("--host") + 1
    assert argv[host] == "http://gatewayd:8080"
    argv[host] = f"http://127.0.0.1:{running.gateway_port}"
    argv += ["--headless", "-u", "10", "-r", "10", "-t", "3s", "--only-summary"]
    https_url = svc["environment"]["GATEWAYD_HTTPS_URL"]
    assert https_url.startswith("https://gatewayd:8443/")
    env = dict(os.environ)
    env["GATEWAYD_HTTPS_URL"] = https_url.replace(
        "gatewayd:8443", f"127.0.0.1:{running.https_port}"
    )
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path, env=env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(argv)}\n{output[-4000:]}"
    assert "canary OK" in output, output[-4000:]
    # The HTTPS users ran too (locust's summary names each request by its path).
    assert "HTTPS /secure/locust" in output, output[-4000:]


# --------------------------------------------------------------------------- the image alone


def default_command() -> list[str]:
    (cmd,) = (s for s in dockerfile() if s.keyword == "CMD")
    return exec_form(cmd.args)


def test_default_command_gives_gateways_every_address_of_the_container(tmp_path: Path) -> None:
    """`docker run -p 8000:8000`: a Gateway without spec.addresses must listen on an
    address the published port reaches, the unspecified one."""
    pool = ipaddress.ip_network(option(default_command(), "--address-pool"))
    assert pool.num_addresses == 1 and pool.network_address.is_unspecified
    assert option(default_command(), "--admin-address").startswith("0.0.0.0:")
    docs = [d for d in first_gateway_docs() if d["kind"] in ("GatewayClass", "Gateway")]
    assert "addresses" not in docs[1]["spec"]
    (tmp_path / "gateway.yaml").write_text(to_yaml(docs))
    built = ConfigPipeline(FileSource([str(tmp_path)]), address_pool=str(pool)).build()
    assert dict(built.resolution.gateway_addresses) == {("default", "first"): "0.0.0.0"}
    assert {address for address, _port in built.snapshot.ports} == {"0.0.0.0"}


def first_gateway_docs() -> list[Doc]:
    """The README's "Your first Gateway" manifests (what its docker run line mounts)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Your first Gateway\n")
    block = re.search(r"```yaml\n(.*?)```", text[start:], re.S)
    assert block is not None
    return [d for d in yaml.safe_load_all(block.group(1)) if d]


def test_default_command_line_serves_the_readme_gateway(tmp_path: Path) -> None:
    """The image's command line as a subprocess, the README's docker run mount at
    /etc/gatewayd; the container's every-address pool becomes loopback here."""
    echo = Child(gatewayd_argv("echo", "--listen", "127.0.0.1:0"), "echo")
    daemon = None
    try:
        line = echo.stdout.wait_for(lambda s: "listening on" in s, ECHO_READY_TIMEOUT)
        found = re.search(r":(\d+)\s*$", line or "")
        assert found is not None, echo.output()
        echo_port, gw_port, admin_port = int(found.group(1)), free_port(), free_port()
        docs = first_gateway_docs()
        for doc in docs:
            if doc["kind"] == "Gateway":
                doc["spec"]["listeners"][0]["port"] = gw_port
            elif doc["kind"] == "EndpointSlice":
                doc["ports"] = [{"port": echo_port}]
        root = tmp_path / "etc" / "gatewayd"
        root.mkdir(parents=True)
        (root / "gateway.yaml").write_text(to_yaml(docs))
        argv = gatewayd_argv(*default_command())
        argv[argv.index("--config") + 1] = str(root)
        argv[argv.index("--admin-address") + 1] = f"127.0.0.1:{admin_port}"
        argv[argv.index("--address-pool") + 1] = "127.0.0.1/32"
        daemon = Child(argv, "gatewayd")
        listening = daemon.stderr.wait_for(lambda s: "listening: gateway" in s, 20.0)
        assert listening is not None, daemon.output()
        assert f"on http://127.0.0.1:{gw_port}" in listening
        reply = request(gw_port, "/hello")
        assert reply.status == 200 and reply.echo()["path"] == "/hello"
        assert run_healthcheck(admin_port).returncode == 0
    finally:
        if daemon is not None:
            daemon.stop()
        echo.stop()


def test_image_dependencies_are_pinned() -> None:
    """constraints.txt pins every runtime dependency, to the versions the tests run on
    (make installs with it too)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from pin_constraints import runtime_closure
    finally:
        sys.path.remove(str(ROOT / "tools"))
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"not pinned: {line}"
            pins[name] = version
    assert pins == runtime_closure()
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt -e '.[dev]'" in makefile


def test_compose_up_wait_means_every_service_healthy() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", f"{name} has no healthcheck: up --wait cannot wait"
    gw_probe = services["gatewayd"]["healthcheck"]["test"]
    assert gw_probe[1:] == healthcheck_argv()  # the image's own HEALTHCHECK
    assert all(
        dep["condition"] == "service_healthy" for dep in services["locust"]["depends_on"].values()
    )
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up --build --wait" in readme
