"""A transport double for the HTTP/1.1 codec tests (as h11 and uvicorn test theirs):
bytes go in through the protocol's ``data_received``, what the codec writes is
collected, and pausing, half-closing and aborting are recorded.  No socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from gatewayd.proxy.snapshot import SnapshotHolder
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule, RouteHit


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


class OneRoute:
    """A route table that answers every request with one rule's hit."""

    def __init__(self, hit: RouteHit) -> None:
        self.hit = hit

    def lookup(self, *args: Any) -> RouteHit:
        return self.hit

    def to_json(self) -> object:
        return []


def one_rule_snapshot(
    local: str = "127.0.0.1", **rule_kw: Any
) -> tuple[SnapshotHolder, CompiledRule]:
    """A snapshot with one HTTP listener port ``(local, 1)`` whose every request goes to
    one HTTPRoute rule (``rule_kw``: the rule's other fields) with one backend ``be``,
    endpoint ``local:9``; its holder and the rule."""
    be = CompiledBackend(name="be", endpoints=(EndpointAddress(address=local, port=9),))
    rule = CompiledRule(
        route_kind="HTTPRoute",
        route_namespace="default",
        route_name="r",
        rule_index=0,
        backends=(be,),
        cumulative_weights=(1,),
        total_weight=1,
        **rule_kw,
    )
    port = ListenerPort(
        address=local,
        port=1,
        protocol="HTTP",
        gateway_namespace="default",
        gateway_name="gw",
        listener_names=("http",),
        table=OneRoute(RouteHit(rule=rule, prefix=None, listener_name="http")),  # type: ignore[arg-type]
    )
    holder = SnapshotHolder()
    holder.swap(Snapshot(generation=1, ports={(local, 1): port}))
    return holder, rule
