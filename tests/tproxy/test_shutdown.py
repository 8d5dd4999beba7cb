"""Shutdown of ``gatewayd run --tproxy`` removes the nftables table and the policy
routing it installed (its own daemon, in the shared test namespaces)."""

from __future__ import annotations

from pathlib import Path

from netns_kit import Topology
from test_node_local import Daemon, kernel_state


def test_shutdown_removes_every_rule(topology: Topology, tmp_path: Path) -> None:
    assert "table inet gatewayd" not in kernel_state(topology)["nft"]
    d = Daemon(topology, tmp_path)
    try:
        up = kernel_state(topology)
        assert "table inet gatewayd" in up["nft"]
        assert "fwmark 0x1 lookup 100" in up["rules4"]
        assert "local default dev lo" in up["table4"]
    finally:
        code = d.stop()
    assert code == 0, d.proc.output()
    down = kernel_state(topology)
    assert "gatewayd" not in down["nft"]
    assert "fwmark" not in down["rules4"] and "fwmark" not in down["rules6"]
    assert "local" not in down["table4"] and "local" not in down["table6"]
