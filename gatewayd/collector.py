"""The cyclic garbage collector around large builds of long-lived objects: a
configuration built by the supervisor (``pipeline.py``) or unpickled by a worker
(``workers.py``).  Imports nothing of gatewayd: a worker imports it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a build runs.

    A build allocates hundreds of thousands of objects that live on (10,000 HTTPRoutes:
    about 500,000), and each allocation burst triggers collections that walk all of them
    again: a third of the build's CPU time.  Reference counting still frees everything
    that is not a cycle; the collector runs again when the build is done."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# At most this often (seconds) a build ends with a full collection of everything, the
# serving configuration included (``ConfigPipeline(freeze=True)``).
FULL_COLLECTION_INTERVAL = 600.0
# ... or sooner, once the frozen set has grown to this many times its size after the
# last full collection.
FROZEN_GROWTH_LIMIT = 2


class BuiltOutOfCollections:
    """Keeps each build out of the cyclic collector's walks (``gc.freeze``); ``end`` is
    called at the end of each build, in ``collection_paused``.

    A build leaves some 200,000 long-lived objects (10,000 HTTPRoutes), and the
    collections that follow it walk them all with the GIL held: young ones on the first
    allocations, a full one soon after; 120-190 ms each on a busy core, three per reload,
    which every request in flight waits for.  The configuration holds no reference
    cycles (reference counting frees a replaced one), so collecting never finds anything
    in it: ``end`` freezes everything alive while the collector is still paused.

    Freezing takes what else is alive too: the connections open at that moment.  Once
    closed, their reference cycles (about a dozen objects each) stay in the frozen set.
    To bound that, a build ends with a full collection first (``gc.unfreeze``,
    ``gc.collect``: one pause like those above) when none ran for
    ``FULL_COLLECTION_INTERVAL`` seconds (the first build, at start-up, serves no
    connection yet: it only freezes), or sooner when the frozen set has grown to
    ``FROZEN_GROWTH_LIMIT`` times its size after the last full collection (frequent
    reloads with many short connections, as EndpointSlice churn in Kubernetes mode
    brings).  What connections leave frozen is thus at most about the size of one
    build plus what was alive then, however often the configuration changes."""

    __slots__ = ("baseline", "full_collections", "interval", "last_full")

    def __init__(self, interval: float = FULL_COLLECTION_INTERVAL) -> None:
        self.interval = interval
        self.last_full: float | None = None
        self.full_collections = 0
        # gc.get_freeze_count() right after the last full collection (or the first build).
        self.baseline = 0

    def end(self) -> None:
        """At the end of a build, the collector paused."""
        now = time.monotonic()
        if self.last_full is None:
            self.last_full = now  # the first build: no connection yet, nothing to reclaim
        elif (
            now - self.last_full >= self.interval
            or gc.get_freeze_count() > FROZEN_GROWTH_LIMIT * self.baseline
        ):
            gc.unfreeze()
            gc.collect()
            self.last_full = now
            self.full_collections += 1
            gc.freeze()
            self.baseline = gc.get_freeze_count()
            return
        gc.freeze()
        if not self.baseline:
            self.baseline = gc.get_freeze_count()
