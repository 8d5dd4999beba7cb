"""Fixtures of the node-local (TPROXY + GAMMA) tests: network namespaces and backends.

The tests need root, iproute2, nftables and a kernel with TPROXY; without them they
skip and say which one is missing.  One topology (four namespaces, three veth pairs)
serves the whole directory; it is always deleted at teardown, even after a failure.
It is dual-stack where the kernel has IPv6 TPROXY; the IPv6 tests skip elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mesh_manifests import V1_PORT, V2_PORT
from netns_kit import (
    BACKENDS_IP,
    BOOKSTORE_IP,
    HERE,
    PYTHON,
    REVIEWS_IP,
    Topology,
    tproxy6_probe,
    tproxy_probe,
)

_PROBE: list[str | None] = []
_PROBE6: list[str | None] = []


def tproxy_unavailable() -> str | None:
    if not _PROBE:
        _PROBE.append(tproxy_probe())
    return _PROBE[0]


def tproxy6_unavailable() -> str | None:
    """Why the IPv6 tests cannot run here (IPv4 TPROXY first), or None."""
    if not _PROBE6:
        _PROBE6.append(tproxy_unavailable() or tproxy6_probe())
    return _PROBE6[0]


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    reason = tproxy_unavailable()
    if reason is not None:
        pytest.skip(reason)
    topo = Topology(no_ipv6=tproxy6_unavailable())
    try:
        topo.create()
        backends = [
            topo.spawn(
                topo.backends,
                [
                    PYTHON,
                    "-m",
                    "gatewayd",
                    "echo",
                    "--listen",
                    f"{BACKENDS_IP}:{port}",
                    "--name",
                    name,
                    "--namespace",
                    "bookstore",
                ],
                name,
            )
            for name, port in (("bookstore-v1", V1_PORT), ("bookstore-v2", V2_PORT))
        ]
        peers = topo.spawn(
            topo.backends,
            [PYTHON, str(HERE / "peer_server.py"), f"{BOOKSTORE_IP}:9000", f"{REVIEWS_IP}:8080"],
            "peer-server",
        )
        if not peers.wait_line("ready", 10.0):
            raise AssertionError("peer server did not start\n" + topo.outputs())
        for proc in backends:
            if not proc.wait_line("listening on", 10.0):
                raise AssertionError("echo backend did not start\n" + topo.outputs())
        yield topo
    finally:
        topo.destroy()
    assert not topo.leftovers(), f"namespaces left behind: {topo.leftovers()}"
