"""`gatewayd check` as a user runs it: exit 1 with one `file:doc-index: Kind ns/name:
...` line per reason something is not served, warnings that leave the exit alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_kit import (
    Doc,
    backend_manifests,
    backend_ref,
    gateway,
    gateway_class,
    http_route,
    listener,
    rule,
    run_cli,
    to_yaml,
)

pytestmark = pytest.mark.e2e

PORT = 18080  # never bound: check only builds the configuration


def check(tmp_path: Path, docs: list[Doc]) -> tuple[int, Path, list[str]]:
    config = tmp_path / "config.yaml"
    config.write_text(to_yaml(docs))
    done = run_cli("check", "--config", str(config))
    assert done.stderr == "", done.stderr
    return done.returncode, config, done.stdout.splitlines()


def served() -> list[Doc]:
    return [
        gateway_class(),
        gateway("web", [listener("http", PORT)]),
        *backend_manifests("svc", 9999),
        http_route("site", [rule(backends=[backend_ref("svc")])], parent="web"),
    ]


def errors(lines: list[str]) -> list[str]:
    """The lines after the ``N error(s)`` header."""
    heads = [i for i, line in enumerate(lines) if line.endswith("error(s): not served as written")]
    return lines[heads[0] + 1 :] if heads else []


def test_a_served_config_exits_0(tmp_path: Path) -> None:
    code, _, lines = check(tmp_path, served())
    assert code == 0, "\n".join(lines)
    assert errors(lines) == []
    assert not any(line.startswith("warning:") for line in lines)


def test_backend_not_found_names_the_backend(tmp_path: Path) -> None:
    docs = [
        *served(),
        http_route("api", [rule(backends=[backend_ref("missing")])], parent="web"),
    ]
    code, config, lines = check(tmp_path, docs)
    assert code == 1
    assert errors(lines) == [
        f"{config}:5: HTTPRoute default/api: parent default/web: ResolvedRefs=False "
        "BackendNotFound: rules[0].backendRefs[0]: backendRef Service default/missing not found"
    ]


def test_unknown_kinds_warn_with_file_and_name_and_keep_exit_0(tmp_path: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo", "namespace": "apps"},
    }
    code, config, lines = check(tmp_path, [*served(), deployment])
    assert code == 0, "\n".join(lines)
    assert f"warning: {config}:5: Deployment apps/echo: skipped: not a kind gatewayd reads" in lines


def test_a_misspelt_gateway_api_kind_is_an_error(tmp_path: Path) -> None:
    typo = http_route("site", [rule(backends=[backend_ref("svc")])], parent="web")
    typo["kind"] = "HTTPRout"
    code, config, lines = check(tmp_path, [*served()[:-1], typo])
    assert code == 1
    assert errors(lines) == [
        f'{config}:4: HTTPRout default/site: kind: "HTTPRout" is not a kind of the Gateway '
        "API (gateway.networking.k8s.io); did you mean HTTPRoute?"
    ]


def test_gateway_classes_of_other_controllers_in_one_line(tmp_path: Path) -> None:
    docs = [
        gateway_class("theirs", controller="example.com/a"),
        gateway_class("also-theirs", controller="example.com/b"),
        gateway("web", [listener("http", PORT)], class_name="theirs"),
    ]
    code, _, lines = check(tmp_path, docs)
    assert code == 1  # nothing would be served
    (line,) = [li for li in lines if "GatewayClasses of other controllers" in li]
    assert line.startswith("warning: ")
    assert line.endswith("theirs (example.com/a), also-theirs (example.com/b)")
    (reason,) = errors(lines)
    assert reason.startswith("nothing would be served: no GatewayClass with controllerName ")


def test_a_duplicate_listener_name_is_one_clear_line(tmp_path: Path) -> None:
    docs = served()
    docs[1] = gateway("web", [listener("http", PORT), listener("http", PORT + 1)])
    docs.append(http_route("other", [rule(backends=[backend_ref("svc")])], parent="web"))
    code, config, lines = check(tmp_path, docs)
    assert code == 1
    assert errors(lines) == [
        f'{config}:1: Gateway default/web: spec.listeners[1].name: duplicate listener name "http"'
        "; listener names must be unique within the Gateway",
        "  so not served either: HTTPRoute default/other, HTTPRoute default/site",
    ]


def test_a_listener_condition_is_reported_with_its_listener(tmp_path: Path) -> None:
    docs = served()
    docs[1] = gateway("web", [listener("http", PORT), listener("tls", PORT + 1, protocol="HTTPS")])
    code, config, lines = check(tmp_path, docs)
    assert code == 1
    found = [e for e in errors(lines) if " listener tls: " in e]
    assert found, "\n".join(lines)
    assert all(e.startswith(f"{config}:1: Gateway default/web: listener tls: ") for e in found)
    assert any("=False " in e for e in found)
