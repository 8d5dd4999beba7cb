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
        files = _yaml_files(str(root)) if root.is_dir() else [str(root)]
        for f in files:
            try:
                st = os.stat(f)
            except OSError:
                continue
            entries.add((f, st.st_ino, st.st_size, st.st_mtime_ns))
    return frozenset(entries)


def _yaml_files(root: str) -> list[str]:
    """Every regular file (symlinks followed) named ``*.yaml`` / ``*.yml`` below ``root``,
    hidden ones included; directories that are symlinks are not entered (as
    ``Path.rglob``).  One ``scandir`` per directory: a poll of 10,000 files took 0.13 s
    with ``rglob`` and a ``Path`` per file."""
    found: list[str] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir():
                    if not entry.is_symlink():
                        stack.append(entry.path)
                    continue
                if os.path.splitext(entry.name)[1] in YAML_SUFFIXES and entry.is_file():
                    found.append(entry.path)
            except OSError:
                continue
    return found


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
