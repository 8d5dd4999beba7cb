"""Route tables of TCP and UDP listeners (TCPRoute, UDPRoute).

Neither route kind matches on anything: the one route a listener carries (the oldest,
``control.routes.attach_route``) takes every connection (TCP) or client flow (UDP).  Its
first rule carries the backends; a rule has no matches, so later rules could never be
chosen.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gatewayd.routing.snapshot.rules import RouteHit
from gatewayd.routing.snapshot.table import rule_to_json


@dataclass(frozen=True, slots=True, kw_only=True)
class L4Table:
    """``compiled.RouteTable`` of a port whose listener is ``protocol: TCP`` or ``UDP``.

    ``lookup()`` never matches (nothing is parsed); the data plane reads ``hit``: None
    when no route is attached, and every connection is refused."""

    listener_name: str
    hit: RouteHit | None = None

    def lookup(
        self,
        host: str,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
    ) -> RouteHit | None:
        return None

    def to_json(self) -> object:
        hit = self.hit
        return {
            "listener": self.listener_name,
            "route": hit.rule.route_id if hit is not None else None,
            "rule": rule_to_json(hit.rule) if hit is not None else None,
        }
