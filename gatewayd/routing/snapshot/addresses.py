"""Address text helpers shared by the control stage and the data plane.

Pure module: no I/O.
"""

from __future__ import annotations

import ipaddress


def canonical_ip(text: str) -> str | None:
    """``text`` as ``ipaddress`` prints it (IPv6 compressed), or None if not an IP."""
    try:
        return ipaddress.ip_address(text.strip()).compressed
    except ValueError:
        return None


def host_port(address: str, port: int) -> str:
    """``address:port`` with an IPv6 address in brackets, so the port cannot be read as
    its last group: RFC 3986 3.2.2 "A host identified by an Internet Protocol literal
    address, version 6 [RFC3513] or later, is distinguished by enclosing the IP literal
    within square brackets", which is also how Envoy prints %UPSTREAM_HOST%."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
