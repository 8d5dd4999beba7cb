"""The in-process harness of tests/proxy: one uvloop event loop per test, bounded in
time, and everything the test registered in ``opened`` closed afterwards even when it
fails (a loop closed with live servers and transports can hang)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

LOCAL = "127.0.0.1"

# Close callables (plain or returning a coroutine), run last-in first-out after a test.
opened: list[Callable[[], Any]] = []


def run(coro: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    async def bounded() -> None:
        try:
            async with asyncio.timeout(timeout):
                await coro
        finally:
            while opened:
                result = opened.pop()()
                if asyncio.iscoroutine(result):
                    with contextlib.suppress(Exception):  # cleanup only
                        async with asyncio.timeout(5):
                            await result

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        return int(s.getsockname()[1])
