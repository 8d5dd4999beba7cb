"""LeaderElector against the API-server double's Leases (real client, real HTTP).

Timings are client-go's scaled down (lease 3 s, renew deadline 2 s, retry 0.4 s) so
each scenario takes seconds; the bounds asserted are the protocol's at that scale, plus
a second for a loaded test machine."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from kits.apiserver import ApiServerDouble
from kube_kit import kube_client
from prometheus_client import CollectorRegistry, generate_latest

from gatewayd.runtime.kube.leader import (
    DEFAULT_LEASE_NAMESPACE,
    JITTER_FACTOR,
    LeaderElector,
    LeaderMetrics,
    default_identity,
    default_namespace,
)

LEASE = 3.0
RENEW = 2.0
RETRY = 0.4
# A candidate retries every RETRY * (1 + up to 1.2); one request on loopback is quick,
# a loaded test machine may add a second.
TAKEOVER_AFTER_EXPIRY = RETRY * (1 + JITTER_FACTOR) + 1.0


def elector(client: Any, identity: str, events: list[tuple[str, str]]) -> LeaderElector:
    return LeaderElector(
        client,
        namespace="gatewayd-system",
        name="gatewayd-status",
        identity=identity,
        lease_duration=LEASE,
        renew_deadline=RENEW,
        retry_period=RETRY,
        on_started_leading=lambda: events.append(("started", identity)),
        on_stopped_leading=lambda: events.append(("stopped", identity)),
    )


async def until(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition()`` holds; fails after ``within``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def lease(api: ApiServerDouble) -> dict[str, Any]:
    return api.get("coordination.k8s.io", "leases", "gatewayd-status", namespace="gatewayd-system")


def run(tmp_path: Path, scenario: Callable[[ApiServerDouble, Any, Any], Awaitable[None]]) -> None:
    with ApiServerDouble() as api:

        async def main() -> None:
            a_dir, b_dir = tmp_path / "a", tmp_path / "b"
            a_dir.mkdir()
            b_dir.mkdir()
            client_a = await kube_client(api, a_dir)
            client_b = await kube_client(api, b_dir)
            try:
                await scenario(api, client_a, client_b)
            finally:
                await client_a.close()
                await client_b.close()
                await api.async_wait_disconnected()  # their TLS close_notify exchanges

        asyncio.run(asyncio.wait_for(main(), 60))


def test_two_electors_one_leader_and_a_killed_leader_is_replaced(tmp_path: Path) -> None:
    async def scenario(api: ApiServerDouble, client_a: Any, client_b: Any) -> None:
        events: list[tuple[str, str]] = []
        a = elector(client_a, "replica-a", events)
        b = elector(client_b, "replica-b", events)
        a.start()
        b.start()
        try:
            await until(lambda: a.is_leader or b.is_leader, 5.0)
            # Over several renewals: exactly one leader, and the Lease names it.
            for _ in range(10):
                await asyncio.sleep(0.2)
                assert a.is_leader != b.is_leader
            leader, follower = (a, b) if a.is_leader else (b, a)
            spec = lease(api)["spec"]
            assert spec["holderIdentity"] == leader.identity
            assert spec["leaseDurationSeconds"] == 3
            assert follower.holder == leader.identity
            assert events == [("started", leader.identity)]

            # Killed: no release, the Lease simply stops being renewed.
            await leader.stop(release=False)
            assert lease(api)["spec"]["holderIdentity"] == leader.identity
            took = await until(lambda: follower.is_leader, LEASE + TAKEOVER_AFTER_EXPIRY + 1.0)
            # Not before the Lease expired in the follower's eyes ...
            assert took > LEASE - RETRY * (1 + JITTER_FACTOR) - 0.2
            # ... and within lease duration + retry (client-go: 15 s + 2 s with jitter).
            assert took < LEASE + TAKEOVER_AFTER_EXPIRY
            spec = lease(api)["spec"]
            assert spec["holderIdentity"] == follower.identity
            assert spec["leaseTransitions"] == 1
        finally:
            await a.stop()
            await b.stop()

    run(tmp_path, scenario)


def test_a_graceful_stop_releases_the_lease_for_a_quick_handover(tmp_path: Path) -> None:
    async def scenario(api: ApiServerDouble, client_a: Any, client_b: Any) -> None:
        events: list[tuple[str, str]] = []
        a = elector(client_a, "replica-a", events)
        a.start()
        await until(lambda: a.is_leader, 5.0)
        b = elector(client_b, "replica-b", events)
        b.start()
        try:
            await asyncio.sleep(RETRY * 3)  # b has seen a's Lease: a valid one
            assert not b.is_leader
            await a.stop(release=True)
            assert lease(api)["spec"]["holderIdentity"] == ""
            assert events[-1] == ("stopped", "replica-a")
            took = await until(lambda: b.is_leader, LEASE)
            # No waiting for expiry: the next attempt takes it.
            assert took < TAKEOVER_AFTER_EXPIRY
        finally:
            await a.stop()
            await b.stop()

    run(tmp_path, scenario)


def test_a_leader_that_cannot_renew_stops_within_the_renew_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gatewayd.leader")

    async def scenario(api: ApiServerDouble, client_a: Any, _client_b: Any) -> None:
        events: list[tuple[str, str]] = []
        a = elector(client_a, "replica-a", events)
        registry = CollectorRegistry()
        registry.register(LeaderMetrics(a))
        a.start()
        try:
            await until(lambda: a.is_leader, 5.0)
            assert b'gatewayd_leader{lease="gatewayd-system/gatewayd-status"} 1.0' in (
                generate_latest(registry)
            )
            api.set_unavailable("503")
            took = await until(lambda: not a.is_leader, RENEW + RETRY + 1.0)
            # It stops before anybody else could take the Lease over (lease duration).
            assert took < LEASE
            assert events == [("started", "replica-a"), ("stopped", "replica-a")]
            assert b'gatewayd_leader{lease="gatewayd-system/gatewayd-status"} 0.0' in (
                generate_latest(registry)
            )
            logged = caplog.text
            # Why, with the API server's own words, and that writing stopped.
            assert "Lease gatewayd-system/gatewayd-status: HTTP 503 Service Unavailable: " in logged
            assert "no longer the leader, status writes stop" in logged
            # The API server is back: it campaigns again, and leads again.
            api.set_unavailable(None)
            await until(lambda: a.is_leader, LEASE + TAKEOVER_AFTER_EXPIRY + 1.0)
        finally:
            await a.stop()

    run(tmp_path, scenario)


def test_client_go_timing_rules_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="renew deadline"):
        LeaderElector(object(), namespace="n", identity="i", lease_duration=10, renew_deadline=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"1\.2 times"):
        LeaderElector(object(), namespace="n", identity="i", renew_deadline=2.0, retry_period=2.0)  # type: ignore[arg-type]
    default = LeaderElector(object(), namespace="n", identity="i")  # type: ignore[arg-type]
    assert (default.lease_duration, default.renew_deadline, default.retry_period) == (15, 10, 2)
    assert default_namespace(str(tmp_path / "missing")) == DEFAULT_LEASE_NAMESPACE
    ns_file = tmp_path / "namespace"
    ns_file.write_text("gateways\n")
    assert default_namespace(str(ns_file)) == "gateways"
    monkeypatch.setenv("GATEWAYD_SERVICE_ACCOUNT_DIR", str(tmp_path))
    assert default_namespace() == "gateways"  # where the in-cluster token is read too
    monkeypatch.setenv("POD_NAME", "gatewayd-x7k2p")
    assert default_identity() == "gatewayd-x7k2p"
    monkeypatch.delenv("POD_NAME")
    assert default_identity().endswith(f"_{__import__('os').getpid()}")
