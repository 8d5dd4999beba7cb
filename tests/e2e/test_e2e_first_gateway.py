"""A new user's first steps, as the README writes them: "Your first Gateway" (its YAML,
its commands, the address its `listening:` line names), /ready while nothing is served,
a mistyped --config path, `status` with no daemon, `--version`.

The README's fixed ports (8000, 3000, 9901) are swapped for free ones, the only change.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from e2e_kit import (
    ECHO_READY_TIMEOUT,
    Child,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    gatewayd_argv,
    listener,
    run_cli,
    to_yaml,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
POOL_ADDRESS = "127.0.10.1"  # the first address of the default --address-pool


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced(section: str, lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)```", section, re.S)
    assert found is not None, f"no ```{lang} block"
    return found.group(1)


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_readme_first_gateway_reaches_a_served_request(tmp_path: Path) -> None:
    section = readme_section("Your first Gateway")
    gw_port, echo_port, admin_port = free_port(POOL_ADDRESS), free_port(), free_port()
    ports = {"8000": gw_port, "3000": echo_port, "9901": admin_port}

    def swap(text: str) -> str:
        return re.sub(r"\b(8000|3000|9901)\b", lambda m: str(ports[m.group(1)]), text)

    target = re.search(r"to `([^`]+/gateway\.yaml)`", section)
    assert target is not None, "the README names the file to write"
    config = tmp_path / target.group(1)
    config.parent.mkdir(parents=True)
    config.write_text(swap(fenced(section, "yaml")))

    commands = [line for line in swap(fenced(section, "sh")).splitlines() if line.strip()]
    children: list[Child] = []
    try:
        served_url = documented_url = None
        documented_line = "listening: "
        for line in commands:
            if line.startswith("#"):
                logged = re.search(r"logs: (listening: .*?) \(", line)
                assert logged is not None, line
                documented_line = logged.group(1)
                continue
            words = shlex.split(line.split("  #")[0].rstrip(" &"))
            if words[0] == "curl":
                documented_url = words[-1]
                continue
            assert words[0] == ".venv/bin/gatewayd", line
            argv = gatewayd_argv(*words[1:])
            if words[1] == "check":
                code, output = _run(argv, tmp_path)
                assert code == 0, output
            elif words[1] == "echo":
                echo = Child(argv, "echo", cwd=tmp_path)
                children.append(echo)
                assert echo.stdout.wait_for(lambda s: "listening on" in s, ECHO_READY_TIMEOUT)
            else:
                assert words[1] == "run", line
                daemon = Child(argv, "gatewayd", cwd=tmp_path)
                children.append(daemon)
                found = daemon.stderr.wait_for(lambda s: "listening: gateway" in s, 20.0)
                assert found is not None, daemon.output()
                assert documented_line in found, (documented_line, found)
                # Where the address came from is said on the same line.
                assert "no spec.addresses" in found and "--address-pool" in found, found
                served = re.search(r" on (http://\S+)", found)
                assert served is not None, found
                served_url = served.group(1)
        assert documented_url is not None and served_url is not None
        assert documented_url.startswith(served_url), (documented_url, served_url)
        status, body = get(documented_url)
        assert status == 200, body
        echoed = json.loads(body)
        assert echoed["path"] == urlsplit(documented_url).path
        ready = get(f"http://127.0.0.1:{admin_port}/ready")
        assert ready == (200, "LIVE\n")
    finally:
        for child in reversed(children):
            child.stop()


def _run(argv: list[str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=cwd)
    return done.returncode, done.stdout + done.stderr


def test_ready_says_why_until_a_listener_is_served(gatewayd) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = [
        gateway_class("other", controller="example.com/other-controller"),
        gateway("web", [listener("http", port)], class_name="other"),
    ]
    daemon = gatewayd(docs, wait="none")
    last = (0, "")
    for _ in deadline_loop(20.0, 0.1):
        last = daemon.admin_get("/ready", timeout=1.0)
        if "no listener is served" in last[1]:
            break
    code, body = last
    assert code == 503, daemon.output()
    assert body.startswith("INITIALIZING\nno listener is served: no GatewayClass with ")
    assert "other (example.com/other-controller)" in body
    status = run_cli("status", "--admin-address", f"127.0.0.1:{daemon.admin_port}")
    assert status.returncode == 0, status.stderr
    assert "not ready (/ready is 503): no listener is served" in status.stderr
    # The same Gateway on a class of ours: served, ready, and the line says where.
    daemon.config.write_text(to_yaml([gateway_class("other"), docs[1]]))
    for _ in deadline_loop(20.0, 0.1):
        if daemon.admin_get("/ready", timeout=1.0)[0] == 200:
            break
    assert daemon.admin_get("/ready") == (200, "LIVE\n"), daemon.output()
    line = daemon.child.stderr.wait_for(lambda s: "listening: gateway" in s, 5.0)
    assert line is not None and line.endswith(
        f"listening: gateway default/web listener http HTTP on http://127.0.0.1:{port}"
    ), line


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_missing_config_path_is_a_usage_error(command: str, tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    done = run_cli(command, "--config", str(typo), timeout=30)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--config {typo}: no such file or directory" in done.stderr
    assert done.stderr.count("\n") == 2  # argparse's usage line and the error


def test_status_without_a_daemon_is_one_clear_line() -> None:
    address = f"127.0.0.1:{free_port()}"
    done = run_cli("status", "--admin-address", address)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"cannot reach gatewayd admin at {address}: ")
    assert "is `gatewayd run` up?" in done.stderr and done.stderr.count("\n") == 1


def test_version_is_the_package_metadata() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"gatewayd {version('gatewayd')}\n"
