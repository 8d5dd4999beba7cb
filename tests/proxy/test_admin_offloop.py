"""/config_dump and /status are rendered on a thread, not on the loop they share with
the data plane (one worker): a 500-route dump takes ~0.1 s."""

from __future__ import annotations

import asyncio
import threading
from typing import TypeVar

import aiohttp

from gatewayd.proxy.admin import AdminState, start_admin

T = TypeVar("T")


def test_dumps_are_made_and_rendered_off_the_loop() -> None:
    threads: dict[str, threading.Thread] = {}

    def record(name: str, value: T) -> T:
        threads[name] = threading.current_thread()
        return value

    state = AdminState(
        ready=lambda: True,
        status_items=lambda: [record("status", {"kind": "Gateway"})],
        config_dump=lambda: record("dump", {"generation": 3}),
        config_state=lambda: record("state", {"generation": 3}),
    )

    async def main() -> tuple[object, object]:
        server = await start_admin("127.0.0.1:0", state)
        try:
            async with aiohttp.ClientSession(server.url) as client:
                async with client.get("/config_dump") as r:
                    dump = await r.json()
                async with client.get("/status") as r:
                    status = await r.json()
            return dump, status
        finally:
            await server.close()

    dump, status = asyncio.run(asyncio.wait_for(main(), 20.0))
    assert dump == {"generation": 3}
    assert status == {"items": [{"kind": "Gateway"}], "config": {"generation": 3}}
    assert set(threads) == {"status", "dump", "state"}
    assert all(t is not threading.main_thread() for t in threads.values()), threads
