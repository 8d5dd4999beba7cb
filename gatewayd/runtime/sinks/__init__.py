"""Where computed statuses go: the StatusSink seam.

The pipeline computes every object's Gateway API status (``routing.status.resolve``,
then the data plane's bind failures); the daemon hands each serving configuration's
statuses to every sink, in order, on the event loop:

* ``sinks.admin.AdminStatusSink``: keeps them for the admin ``/status`` endpoint (every
  replica, always);
* ``sinks.kubernetes.KubernetesStatusSink``: writes them to the API server's ``/status``
  subresources, only while this replica holds the leader Lease.

``publish`` must return at once: a sink that does I/O queues the work and does it on
tasks of its own (bounded), so a slow API server never holds up a reload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from gatewayd.routing.control.bindings import ObjectStatus

__all__ = ["StatusSink"]


@runtime_checkable
class StatusSink(Protocol):
    def publish(self, statuses: Sequence[ObjectStatus]) -> None:
        """The statuses of the configuration now serving (all of them, each time)."""

    async def close(self) -> None:
        """Stop: no write starts after this returns."""
