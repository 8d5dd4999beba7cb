"""The config watcher: a change made before its first poll is not missed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gatewayd.watch import config_signature, watch_config


def test_a_file_written_during_the_first_load_is_a_change(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: Namespace\n")
    before = config_signature([str(tmp_path)])
    # Written after the signature the serving config was loaded from, before the
    # watcher runs: the daemon's first load was still building.
    (tmp_path / "b.yaml").write_text("kind: Namespace\n")

    async def scenario() -> int:
        changed = asyncio.Event()
        calls = 0

        async def on_change() -> None:
            nonlocal calls
            calls += 1
            changed.set()

        task = asyncio.get_running_loop().create_task(
            watch_config([str(tmp_path)], on_change, interval=0.01, settle=0.01, initial=before)
        )
        try:
            await asyncio.wait_for(changed.wait(), 5.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return calls

    assert asyncio.run(scenario()) == 1


def test_without_initial_the_first_poll_is_the_baseline(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: Namespace\n")

    async def scenario() -> int:
        calls = 0

        async def on_change() -> None:
            nonlocal calls
            calls += 1

        task = asyncio.get_running_loop().create_task(
            watch_config([str(tmp_path)], on_change, interval=0.01, settle=0.01)
        )
        await asyncio.sleep(0.1)  # several polls of an unchanged directory
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return calls

    assert asyncio.run(scenario()) == 0
