"""A transport double for the HTTP/1.1 codec tests (as h11 and uvicorn test theirs):
bytes go in through the protocol's ``data_received``, what the codec writes is
collected, and pausing, half-closing and aborting are recorded.  No socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop


class TransportDouble:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written = bytearray()
        self.paused = False
        self.pause_calls = 0
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.buffered = 0  # what get_write_buffer_size reports
        self.limits: tuple[int, int] | None = None
        self.extra: dict[str, Any] = {"peername": peer}
        self.protocol: Any = None  # what set_protocol installed (a tunnel)

    # asyncio.Transport, the parts the codecs use
    def write(self, data: bytes) -> None:
        assert not self.closed and not self.eof_written, "write after close"
        self.written += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.write(p)

    def pause_reading(self) -> None:
        assert not self.paused, "paused twice"
        self.paused = True
        self.pause_calls += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def take(self) -> bytes:
        """What was written since the last ``take``."""
        data = bytes(self.written)
        self.written.clear()
        return data


def run_in_loop(main: Callable[[], Coroutine[Any, Any, None]], timeout: float = 10.0) -> None:
    """Run ``main`` on a fresh uvloop (the codecs read the running loop), bounded."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await main()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())
