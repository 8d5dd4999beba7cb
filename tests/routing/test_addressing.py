"""``host_port``: how an address and a port are written in logs, labels and dumps."""

from __future__ import annotations

import pytest

from gatewayd.routing.snapshot.addresses import host_port


@pytest.mark.parametrize(
    ("address", "port", "expected"),
    [
        ("10.0.0.1", 80, "10.0.0.1:80"),
        ("fd00:96::10", 8080, "[fd00:96::10]:8080"),
        ("::1", 9901, "[::1]:9901"),
        ("::ffff:10.0.0.1", 443, "[::ffff:10.0.0.1]:443"),
        ("backend.example", 8443, "backend.example:8443"),  # an FQDN endpoint
    ],
)
def test_host_port_brackets_ipv6_only(address: str, port: int, expected: str) -> None:
    assert host_port(address, port) == expected
