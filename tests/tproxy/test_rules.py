"""The generated kernel configuration: nft ruleset text, dry run, idempotent install."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mesh_manifests import manifests
from netns_kit import BOOKSTORE_IP, GATEWAY_IP, REVIEWS_IP, ROOT, run, tproxy_probe

from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.tproxy.rules import (
    DivertTarget,
    TproxySettings,
    desired_targets,
    render_removal,
    render_ruleset,
)


def test_ruleset_diverts_each_target_and_skips_the_bypass_mark() -> None:
    settings = TproxySettings(port=15001, mark=0x1)
    targets = [
        DivertTarget(family=4, address="10.96.0.10", port=8080, comment="Service a/b"),
        DivertTarget(family=6, address="fd00::10", port=80, comment='Gateway "x"'),
    ]
    text = render_ruleset(targets, settings)
    lines = text.splitlines()
    # Idempotent replacement in one transaction: create-if-missing, delete, define.
    assert lines[:3] == [
        "add table inet gatewayd",
        "delete table inet gatewayd",
        "table inet gatewayd {",
    ]
    bypass = next(i for i, line in enumerate(lines) if "return" in line)
    divert = [i for i, line in enumerate(lines) if "tproxy" in line]
    assert "meta mark 0x80000001 return" in lines[bypass]
    assert bypass < min(divert), "the proxy's own connections must be skipped first"
    assert (
        "ip daddr 10.96.0.10 tcp dport 8080 tproxy ip to :15001 meta mark set 0x00000001 accept"
        in text
    )
    assert "ip6 daddr fd00::10 tcp dport 80 tproxy ip6 to :15001" in text
    assert "comment \"Gateway 'x'\"" in text  # quotes cannot break out of the comment
    assert settings.bypass_mark == 0x80000001
    no_v6 = render_ruleset(targets, TproxySettings(ipv6=False))
    assert "ip6" not in no_v6
    assert render_removal(settings) == "add table inet gatewayd\ndelete table inet gatewayd\n"


def test_empty_snapshot_diverts_nothing() -> None:
    assert desired_targets(Snapshot(generation=1)) == ()


def test_dry_run_prints_the_rules_for_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "m.yaml"
    config.write_text(manifests())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatewayd",
            "run",
            "--config",
            str(config),
            "--tproxy-dry-run",
            "--tproxy-port",
            "15123",
            "--tproxy-mark",
            "0x10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"ip daddr {BOOKSTORE_IP} tcp dport 8080 tproxy ip to :15123" in out
    assert f"ip daddr {REVIEWS_IP} tcp dport 8080" in out  # consumer-only Service
    # The Gateway's 10.232.0.1 is no address of this host (only of the test "node"
    # namespace): not programmed here, so not diverted either.
    assert f"ip daddr {GATEWAY_IP}" not in out
    assert "dport 9000" not in out  # a Service port without routes is never diverted
    assert "ip -4 rule add fwmark 0x10 lookup 100" in out
    assert "meta mark set 0x00000010" in out


def test_routing_install_and_remove_are_idempotent() -> None:
    reason = tproxy_probe()
    if reason is not None:
        pytest.skip(reason)
    import secrets

    ns = f"gwd-{secrets.token_hex(3)}-rules"
    run(["ip", "netns", "add", ns])
    try:
        script = textwrap.dedent(
            """
            from gatewayd.tproxy.rules import TproxySettings, install_routing, remove_routing
            s = TproxySettings(mark=0x7, route_table=123)
            install_routing(s)
            install_routing(s)
            print("installed")
            """
        )
        run(["ip", "netns", "exec", ns, sys.executable, "-c", script])
        rules = run(["ip", "netns", "exec", ns, "ip", "-4", "rule"])
        assert rules.count("fwmark 0x7 lookup 123") == 1, rules
        assert "local default dev lo" in run(
            ["ip", "netns", "exec", ns, "ip", "-4", "route", "show", "table", "123"]
        )
        remove = (
            "from gatewayd.tproxy.rules import TproxySettings, remove_routing\n"
            "s = TproxySettings(mark=0x7, route_table=123)\n"
            "remove_routing(s)\nremove_routing(s)\n"
        )
        run(["ip", "netns", "exec", ns, sys.executable, "-c", remove])
        assert "fwmark" not in run(["ip", "netns", "exec", ns, "ip", "rule"])
        assert "fwmark" not in run(["ip", "netns", "exec", ns, "ip", "-6", "rule"])
        shown = run(
            ["ip", "netns", "exec", ns, "ip", "-4", "route", "show", "table", "123"], check=False
        )
        assert "local" not in shown
    finally:
        run(["ip", "netns", "del", ns], check=False)
