"""Connect-time resolution of FQDN endpoints: the TTL cache (fake lookup, fake clock) and
the upstream pool connecting through it on loopback (the real getaddrinfo)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any

import pytest
import uvloop

from gatewayd.proxy.http.pool import UpstreamPool
from gatewayd.proxy.resolver import Resolver, Target

LOOPBACK: list[Target] = [(socket.AF_INET, ("127.0.0.1", 80))]


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(10):
            await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeDns:
    """Answers from a table; a name maps to targets or to a failure.  ``gate``, when
    set, holds every lookup until the test opens it."""

    def __init__(self, answers: dict[str, list[Target] | None]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, host: str, port: int) -> list[Target]:
        self.asked.append((host, port))
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer


def test_answer_is_cached_for_the_ttl_then_looked_up_again() -> None:
    clock = Clock()
    dns = FakeDns({"echo-v1": LOOPBACK})
    resolver = Resolver(ttl=5.0, lookup=dns, clock=clock)

    async def main() -> None:
        assert await resolver.resolve("echo-v1", 80) == LOOPBACK
        clock.now += 4.9
        assert await resolver.resolve("echo-v1", 80) == LOOPBACK
        assert dns.asked == [("echo-v1", 80)]
        assert resolver.cached("echo-v1", 80) == LOOPBACK
        clock.now += 0.2  # past the TTL
        assert resolver.cached("echo-v1", 80) is None
        dns.answers["echo-v1"] = [(socket.AF_INET, ("127.0.0.2", 80))]
        assert await resolver.resolve("echo-v1", 80) == [(socket.AF_INET, ("127.0.0.2", 80))]
        assert dns.asked == [("echo-v1", 80), ("echo-v1", 80)]
        assert resolver.lookups == 2

    run(main())


def test_failure_is_cached_for_the_negative_ttl() -> None:
    clock = Clock()
    dns = FakeDns({})
    resolver = Resolver(ttl=5.0, negative_ttl=1.0, lookup=dns, clock=clock)

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(socket.gaierror) as info:
                await resolver.resolve("no-such-host.invalid", 80)
            assert info.value.errno == socket.EAI_NONAME
        assert len(dns.asked) == 1
        clock.now += 1.01
        dns.answers["no-such-host.invalid"] = LOOPBACK  # the name appeared meanwhile
        assert await resolver.resolve("no-such-host.invalid", 80) == LOOPBACK
        assert len(dns.asked) == 2

    run(main())


def test_an_empty_answer_is_a_resolution_failure() -> None:
    resolver = Resolver(lookup=FakeDns({"empty": []}), clock=Clock())

    async def main() -> None:
        with pytest.raises(socket.gaierror):
            await resolver.resolve("empty", 80)

    run(main())


def test_concurrent_misses_share_one_lookup() -> None:
    dns = FakeDns({"echo-v1": LOOPBACK})
    resolver = Resolver(lookup=dns, clock=Clock())

    async def main() -> None:
        dns.gate = asyncio.Event()
        waiters = [asyncio.ensure_future(resolver.resolve("echo-v1", 80)) for _ in range(20)]
        await asyncio.sleep(0)  # every waiter reaches the in-flight lookup
        dns.gate.set()
        assert await asyncio.gather(*waiters) == [LOOPBACK] * 20
        assert dns.asked == [("echo-v1", 80)]

    run(main())


def test_a_caller_giving_up_does_not_cancel_the_shared_lookup() -> None:
    dns = FakeDns({"echo-v1": LOOPBACK})
    resolver = Resolver(lookup=dns, clock=Clock())

    async def main() -> None:
        dns.gate = asyncio.Event()
        impatient = asyncio.ensure_future(resolver.resolve("echo-v1", 80))
        patient = asyncio.ensure_future(resolver.resolve("echo-v1", 80))
        await asyncio.sleep(0)
        impatient.cancel()
        await asyncio.sleep(0)
        dns.gate.set()
        assert await patient == LOOPBACK
        assert impatient.cancelled()
        assert resolver.cached("echo-v1", 80) == LOOPBACK

    run(main())


def test_close_cancels_lookups_in_flight() -> None:
    dns = FakeDns({"echo-v1": LOOPBACK})
    resolver = Resolver(lookup=dns, clock=Clock())

    async def main() -> None:
        dns.gate = asyncio.Event()
        waiter = asyncio.ensure_future(resolver.resolve("echo-v1", 80))
        await asyncio.sleep(0)
        resolver.close()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    run(main())


def test_real_getaddrinfo_localhost_and_an_invalid_name() -> None:
    resolver = Resolver()

    async def main() -> None:
        targets = await resolver.resolve("localhost", 8080)
        assert (socket.AF_INET, ("127.0.0.1", 8080)) in targets
        # RFC 6761 6.4: "invalid." names never resolve.
        with pytest.raises(socket.gaierror):
            await resolver.resolve("no-such-host.invalid", 8080)

    run(main())


def test_pool_connects_to_a_name_and_keys_the_connection_by_the_name() -> None:
    async def main() -> None:
        accepted = asyncio.Event()

        async def on_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.set()
            w.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool(connect_timeout=2.0)
        try:
            up = await pool.connect("localhost", port, "demo/echo-v1:80", resolve=True)
            assert up.key == ("localhost", port, "")  # keyed by the name, no TLS
            assert up.transport.get_extra_info("peername")[0] == "127.0.0.1"
            await accepted.wait()
            assert pool.resolver.lookups == 1
            with pytest.raises(socket.gaierror):
                await pool.connect("no-such-host.invalid", port, "x", resolve=True)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_pool_tries_the_next_address_when_one_refuses() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as probe:  # a loopback address where nothing listens
            probe.bind(("127.0.0.1", 0))
            dead = probe.getsockname()[1]
        # Only the port differs per target in real answers; the pool connects to
        # (address, endpoint port), so the refusing target is a second address.
        answers = FakeDns(
            {"two": [(socket.AF_INET, ("127.0.0.3", 0)), (socket.AF_INET, ("127.0.0.1", 0))]}
        )
        pool = UpstreamPool(connect_timeout=2.0, resolver=Resolver(lookup=answers))
        try:
            up = await pool.connect("two", port, "x", resolve=True)
            assert up.transport.get_extra_info("peername")[0] == "127.0.0.1"
            with pytest.raises(OSError):
                await pool.connect("two", dead, "x", resolve=True)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()

    run(main())
