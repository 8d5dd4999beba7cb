"""``FileSource``: YAML files and directories, polled for changes (``gatewayd.watch``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from gatewayd.routing.config.load import ConfigLimits, Generations, LoadResult, load_paths
from gatewayd.routing.config.loadcache import LoadCache
from gatewayd.watch import Signature, config_signature, watch_config


class FileSource:
    """The ``--config`` paths.  A new problem in a reload keeps the last good config."""

    skips_invalid = False
    settle = 0.0  # watch_config already waits for two polls to agree

    def __init__(self, paths: Sequence[str], *, watch: bool = True) -> None:
        self.paths = list(paths)
        self.watch = watch
        self._signature: Signature | None = None
        # What the last load made of each file: a reload reads and validates only the
        # files whose text changed (builds run one at a time: ``Daemon.load``).
        self.cache = LoadCache()

    def describe(self) -> str:
        return "files " + " ".join(self.paths)

    def load(self, previous: Generations | None, limits: ConfigLimits) -> LoadResult:
        return load_paths(self.paths, previous=previous, limits=limits, cache=self.cache)

    async def ready(self) -> None:
        # The files' signature before the first load: an edit made while it builds (or
        # before the watcher's first poll) is then a change the watcher reports.
        if self.watch:
            loop = asyncio.get_running_loop()
            self._signature = await loop.run_in_executor(None, config_signature, self.paths)

    async def run(self, changed: Callable[[], None]) -> None:
        if not self.watch:
            await asyncio.Event().wait()  # nothing to watch: SIGHUP still reloads

        async def on_change() -> None:
            changed()

        await watch_config(self.paths, on_change, initial=self._signature)

    async def close(self) -> None:
        return None
