"""The admin ``/status`` endpoint's sink: what this replica computed, as it computed it."""

from __future__ import annotations

from collections.abc import Sequence

from gatewayd.routing.control.bindings import ObjectStatus

__all__ = ["AdminStatusSink"]


class AdminStatusSink:
    """Holds the last published statuses; ``items()`` is the ``/status`` document's list.

    Every replica serves its own computation here, leader or not (issue 13: "/status on
    every replica shows what it computed")."""

    __slots__ = ("statuses",)

    def __init__(self) -> None:
        self.statuses: tuple[ObjectStatus, ...] = ()

    def publish(self, statuses: Sequence[ObjectStatus]) -> None:
        self.statuses = tuple(statuses)  # one reference assignment: readers see either

    def items(self) -> list[dict[str, object]]:
        return [s.as_item() for s in self.statuses]

    async def close(self) -> None:
        return None
