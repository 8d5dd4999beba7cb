"""The snapshot the data plane serves, swapped atomically on reload.

A request reads ``holder.current`` once, when its request head is complete, and keeps
that snapshot (and its ``ListenerPort``) for its whole life, so a reload never changes
the routing of a request in flight.
"""

from __future__ import annotations

from gatewayd.routing.snapshot.compiled import Snapshot


class SnapshotHolder:
    """One mutable reference to the current immutable ``Snapshot``."""

    __slots__ = ("current",)

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self.current: Snapshot = snapshot if snapshot is not None else Snapshot(generation=0)

    def swap(self, snapshot: Snapshot) -> None:
        # One reference assignment: atomic for every reader on this event loop.
        self.current = snapshot
