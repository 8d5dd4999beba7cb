"""Where the configuration comes from: the ``ConfigSource`` seam.

The pipeline asks a source for the objects (``load``, on the build thread) and the
daemon runs the source's watch (``run``), which calls ``changed()`` on every change; the
daemon debounces those and rebuilds, one build at a time.  Two sources exist: files
(``files.FileSource``) and a Kubernetes API server (``kubernetes.KubernetesSource``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gatewayd.routing.config.load import ConfigLimits, Generations, LoadResult


class SourceError(Exception):
    """The source cannot be used at all (e.g. no Kubernetes client configuration)."""


class ConfigSource(Protocol):
    # True when an object with a problem was already admitted elsewhere (an API server):
    # it is reported and skipped and the rest serves.  False (files): a reload that
    # brings a new problem keeps the last good configuration.
    skips_invalid: bool
    # Seconds of quiet after a ``changed()`` before the daemon rebuilds (0: the source
    # settles changes itself, as file polling does).
    settle: float

    def describe(self) -> str:
        """What is read, for logs (e.g. "files examples/" or "cluster kind-dev")."""
        ...

    def load(self, previous: Generations | None, limits: ConfigLimits) -> LoadResult:
        """Read a consistent copy of the configuration and load it (any thread).

        Raises ``ConfigPathError`` when nothing can be read at all."""
        ...

    async def ready(self) -> None:
        """Return once ``load`` sees a complete configuration (files: at once; an API
        server: every kind listed)."""
        ...

    async def run(self, changed: Callable[[], None]) -> None:
        """Watch until cancelled, calling ``changed()`` after every change."""
        ...

    async def close(self) -> None:
        """Release what ``ready``/``run`` opened."""
        ...
