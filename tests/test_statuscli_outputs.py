"""``gatewayd status`` through the ``gatewayd`` command line against a real admin server:
``-o wide|json|yaml``, ``describe``, the CONTROLLER column, a daemon with nothing loaded."""

from __future__ import annotations

import json

import pytest
import yaml
from test_statuscli import GV, SAMPLE, admin_in_thread, cond, item

from gatewayd.cli import main
from gatewayd.proxy.admin import AdminState
from gatewayd.statuscli import format_status_table

CONTROLLER = "gatewayd.dev/gateway-controller"

ROUTE = item(
    "HTTPRoute",
    "default",
    "shop",
    {
        "parents": [
            {
                "parentRef": {"kind": "Gateway", "name": "gw", "sectionName": "http"},
                "controllerName": CONTROLLER,
                "conditions": [
                    cond("Accepted", message="Route is accepted by Gateway default/gw"),
                    cond(
                        "ResolvedRefs",
                        "False",
                        "BackendNotFound",
                        "rules[0].backendRefs[0]: backendRef Service default/api not found",
                    ),
                ],
            }
        ]
    },
)
GATEWAY = item(
    "Gateway",
    "default",
    "edge",
    {
        "addresses": [{"type": "IPAddress", "value": "127.0.10.1"}],
        "conditions": [cond("Accepted"), cond("Programmed", message="Gateway is programmed")],
        "listeners": [
            {
                "name": "http",
                "attachedRoutes": 1,
                "conditions": [
                    cond("Accepted"),
                    cond("Programmed", "False", "Invalid", "cannot bind 127.0.10.1:80: denied"),
                ],
            }
        ],
    },
)
ITEMS = [*SAMPLE, ROUTE, GATEWAY]


def state(config: dict[str, object], items: list[dict[str, object]]) -> AdminState:
    return AdminState(
        ready=lambda: True,
        status_items=lambda: items,
        config_dump=dict,
        config_state=lambda: config,
    )


def run(capsys: pytest.CaptureFixture[str], address: str, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["status", *args, "--admin-address", address])
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


CONFIG = {"generation": 3, "lastReloadError": None, "controllerName": CONTROLLER}


def test_every_output_format_is_reachable(capsys: pytest.CaptureFixture[str]) -> None:
    with admin_in_thread(state(CONFIG, ITEMS)) as server:
        code, out, _ = run(capsys, server.address, "gateways", "-o", "json")
        assert code == 0 and json.loads(out)["items"][-1] == GATEWAY
        code, out, _ = run(capsys, server.address, "httproutes", "-o", "yaml")
        assert code == 0
        routes = yaml.safe_load(out)["items"]
        assert [r["metadata"]["name"] for r in routes] == ["web", "api", "shop"]
        code, out, _ = run(capsys, server.address, "httproutes", "-o", "wide")
        assert code == 0
        assert out == format_status_table(ITEMS, "httproutes", wide=True)
        code, _, err = run(capsys, server.address, "httproutes", "-o", "xml")
        assert code == 2 and "invalid choice: 'xml'" in err


def test_wide_shows_the_first_failing_condition_and_its_message() -> None:
    table = format_status_table([ROUTE, GATEWAY], "all", wide=True)
    assert table == (
        "# gateways\n"
        "NAMESPACE   NAME   ADDRESS      PROGRAMMED   LISTENERS   MESSAGE\n"
        "default     edge   127.0.10.1   True         http:1      "
        "Programmed Invalid: cannot bind 127.0.10.1:80: denied\n"
        "\n"
        "# httproutes\n"
        "NAMESPACE   NAME   PARENTS           ACCEPTED   RESOLVEDREFS             MESSAGE\n"
        "default     shop   default/gw/http   True       False(BackendNotFound)   "
        "ResolvedRefs BackendNotFound: rules[0].backendRefs[0]: backendRef Service "
        "default/api not found\n"
    )


def test_backendtlspolicies_is_a_kind_the_command_takes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with admin_in_thread(state(CONFIG, ITEMS)) as server:
        code, out, err = run(capsys, server.address, "backendtlspolicies")
    assert (code, err) == (0, "")
    assert out == "No resources found.\n"


def test_controller_column_is_filled_from_the_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    with admin_in_thread(state(CONFIG, ITEMS)) as server:
        code, out, _ = run(capsys, server.address, "gatewayclasses")
    assert code == 0
    assert out == (
        "NAME       CONTROLLER                        ACCEPTED\n"
        f"gatewayd   {CONTROLLER}   True\n"
        f"other      {CONTROLLER}   False(InvalidParameters)\n"
    )


def test_describe_prints_every_condition_message(capsys: pytest.CaptureFixture[str]) -> None:
    with admin_in_thread(state(CONFIG, ITEMS)) as server:
        code, out, err = run(capsys, server.address, "describe", "httproute", "default/shop")
        assert (code, err) == (0, ""), err
        assert out.splitlines()[:5] == [
            "Name:         shop",
            "Namespace:    default",
            "Kind:         HTTPRoute",
            f"API Version:  {GV}",
            "Generation:   1",
        ]
        assert "  default/gw/http (controller gatewayd.dev/gateway-controller)" in out
        assert "Route is accepted by Gateway default/gw" in out
        assert "backendRef Service default/api not found" in out
        code, out, _ = run(capsys, server.address, "describe", "gateway", "edge")  # default ns
        assert code == 0
        assert "Addresses:    127.0.10.1" in out
        assert "  http (attached routes: 1)" in out
        assert "cannot bind 127.0.10.1:80: denied" in out
        code, out, _ = run(capsys, server.address, "describe", "gc", "gatewayd", "-o", "json")
        assert code == 0 and json.loads(out)["metadata"]["name"] == "gatewayd"


def test_describe_what_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    with admin_in_thread(state(CONFIG, ITEMS)) as server:
        code, out, err = run(capsys, server.address, "describe", "httproute", "apps/nope")
        assert (code, out) == (1, "")
        assert err == (
            "no HTTPRoute apps/nope in the status of gatewayd "
            "(HTTPRoutes it has: apps/api, default/shop, default/web)\n"
        )
        for args in (("describe",), ("describe", "pods", "a/b"), ("describe", "gc", "ns/x")):
            code, _, err = run(capsys, server.address, *args)
            assert code == 2, args
            assert "error:" in err


def test_a_daemon_with_nothing_loaded_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    config = {
        "generation": 0,
        "lastReloadError": None,
        "notReady": "no configuration loaded yet",
    }
    with admin_in_thread(state(config, [])) as server:
        code, out, err = run(capsys, server.address)
    assert (code, out) == (1, "")
    assert err == (
        f"gatewayd at {server.address} serves no configuration: no configuration loaded yet\n"
    )
