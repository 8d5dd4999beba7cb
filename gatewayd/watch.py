"""Config file watching: poll a cheap signature of every config file, debounce, reload.

Polling (stat of each YAML file every ``interval``) needs no inotify support, sees atomic
renames and in-place writes alike, and costs microseconds per file.  A change is applied
once the signature has been stable for ``settle`` seconds, so an editor writing a file in
several steps triggers one reload.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

Signature = frozenset[tuple[str, int, int, int]]

YAML_SUFFIXES = (".yaml", ".yml")


def config_signature(paths: Sequence[str]) -> Signature:
    """(path, inode, size, mtime_ns) of every config file; missing paths count as empty."""
    entries: set[tuple[str, int, int, int]] = set()
    for raw in paths:
        root = Path(raw)
        files: list[Path]
        if root.is_dir():
            files = [p for p in root.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()]
        else:
            files = [root]
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            entries.add((str(f), st.st_ino, st.st_size, st.st_mtime_ns))
    return frozenset(entries)


async def watch_config(
    paths: Sequence[str],
    on_change: Callable[[], Awaitable[object]],
    *,
    interval: float = 0.5,
    settle: float = 0.3,
    initial: Signature | None = None,
) -> None:
    """Run forever (until cancelled): call ``on_change`` after each settled change.

    ``initial``: the signature the serving configuration was loaded from, taken before
    that load, so a file written while it ran (or before this task first polls) is
    still seen as a change."""
    loop = asyncio.get_running_loop()
    current = initial
    if current is None:
        current = await loop.run_in_executor(None, config_signature, paths)
    while True:
        await asyncio.sleep(interval)
        seen = await loop.run_in_executor(None, config_signature, paths)
        if seen == current:
            continue
        # Debounce: wait until two polls agree, so a half-written file is not loaded.
        while True:
            await asyncio.sleep(settle)
            again = await loop.run_in_executor(None, config_signature, paths)
            if again == seen:
                break
            seen = again
        current = seen
        await on_change()
