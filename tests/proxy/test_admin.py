"""The admin HTTP server over a real loopback socket, with fake daemon state."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from types import MappingProxyType
from typing import Any

import aiohttp
import prometheus_client
import pytest

from gatewayd.proxy.admin import (
    AdminServer,
    AdminState,
    default_metrics,
    parse_address,
    start_admin,
)
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot

TIMEOUT = 20.0


def arun(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


class FakeTable:
    def lookup(self, *args: object) -> None:
        return None

    def to_json(self) -> object:
        return ({"host": "*", "rules": ("default/r/rule/0",)},)


class FakeDaemon:
    """Mutable state behind the admin callables."""

    def __init__(self) -> None:
        self.ready = False
        self.statuses = [
            ObjectStatus(
                api_version="gateway.networking.k8s.io/v1",
                kind="Gateway",
                namespace="default",
                name="gw",
                generation=2,
                # Read-only mappings, as the status code may hand over.
                status=MappingProxyType(
                    {"conditions": ({"type": "Programmed", "status": "True"},)}
                ),
            ),
            ObjectStatus(
                api_version="gateway.networking.k8s.io/v1",
                kind="GatewayClass",
                namespace="",
                name="gc",
                generation=1,
                status={"conditions": [{"type": "Accepted", "status": "True"}]},
            ),
        ]
        self.snapshot = Snapshot(
            generation=7,
            ports={
                ("10.0.0.1", 80): ListenerPort(
                    address="10.0.0.1",
                    port=80,
                    protocol="HTTP",
                    gateway_namespace="default",
                    gateway_name="gw",
                    listener_names=("http",),
                    table=FakeTable(),
                )
            },
        )
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            "gatewayd_test_requests", "requests seen", registry=self.registry
        )

    def state(self, **overrides: Callable[..., Any]) -> AdminState:
        callables: dict[str, Callable[..., Any]] = {
            "ready": lambda: self.ready,
            "status_items": lambda: [s.as_item() for s in self.statuses],
            "config_dump": self.snapshot.to_json,
            "metrics": lambda: (
                prometheus_client.generate_latest(self.registry),
                prometheus_client.CONTENT_TYPE_LATEST,
            ),
        }
        callables.update(overrides)
        return AdminState(**callables)


def with_admin(
    state: AdminState, test: Callable[[AdminServer, aiohttp.ClientSession], Awaitable[None]]
) -> Coroutine[Any, Any, None]:
    async def main() -> None:
        server = await start_admin("127.0.0.1:0", state)
        try:
            assert server.host == "127.0.0.1"
            assert server.port > 0
            async with aiohttp.ClientSession(server.url) as client:
                await test(server, client)
        finally:
            await server.close()

    return main()


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9901") == ("127.0.0.1", 9901)
    assert parse_address(":0") == ("127.0.0.1", 0)  # loopback unless told otherwise
    assert parse_address("[::1]:9901") == ("::1", 9901)
    for bad in ("127.0.0.1", "x:y", "h:65536"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_ready_flips_from_503_to_200() -> None:
    daemon = FakeDaemon()

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        async with client.get("/ready") as r:
            assert r.status == 503
            assert await r.text() == "INITIALIZING\n"
        daemon.ready = True
        async with client.get("/ready") as r:
            assert r.status == 200
            assert await r.text() == "LIVE\n"
            assert r.content_type == "text/plain"
        async with client.head("/ready") as r:
            assert r.status == 200

    arun(with_admin(daemon.state(), test))


def test_status_serves_items() -> None:
    daemon = FakeDaemon()

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        async with client.get("/status") as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            doc = await r.json()
        assert doc == {
            "items": [
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "metadata": {"name": "gw", "generation": 2, "namespace": "default"},
                    "status": {"conditions": [{"type": "Programmed", "status": "True"}]},
                },
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "GatewayClass",
                    "metadata": {"name": "gc", "generation": 1},
                    "status": {"conditions": [{"type": "Accepted", "status": "True"}]},
                },
            ]
        }

    arun(with_admin(daemon.state(), test))


def test_config_dump_serves_snapshot() -> None:
    daemon = FakeDaemon()

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        async with client.get("/config_dump") as r:
            assert r.status == 200
            doc = await r.json()
        assert doc == {
            "generation": 7,
            "listeners": [
                {
                    "address": "10.0.0.1",
                    "port": 80,
                    "protocol": "HTTP",
                    "gateway": "default/gw",
                    "listeners": ["http"],
                    "routes": [{"host": "*", "rules": ["default/r/rule/0"]}],
                }
            ],
        }

    arun(with_admin(daemon.state(), test))


def test_prometheus_keeps_content_type_and_body() -> None:
    daemon = FakeDaemon()
    daemon.requests.inc(3)

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        async with client.get("/stats/prometheus") as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
            text = await r.text()
        assert "gatewayd_test_requests_total 3.0" in text.splitlines()

    arun(with_admin(daemon.state(), test))


def test_default_metrics_is_the_global_registry() -> None:
    body, content_type = default_metrics()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert b"# TYPE" in body  # the default registry always has process/platform metrics
    daemon = FakeDaemon()
    state = AdminState(ready=lambda: True, status_items=list, config_dump=daemon.snapshot.to_json)
    assert state.metrics is default_metrics


def test_index_and_unknown_paths() -> None:
    daemon = FakeDaemon()

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        async with client.get("/") as r:
            assert r.status == 200
            text = await r.text()
        for path in ("/ready", "/status", "/config_dump", "/stats/prometheus"):
            assert f"  {path} " in text
        async with client.get("/nope") as r:
            assert r.status == 404
            assert await r.json() == {"error": "Not Found"}
        async with client.post("/ready") as r:
            assert r.status == 405
            assert await r.json() == {"error": "Method Not Allowed"}

    arun(with_admin(daemon.state(), test))


def test_raising_callables_answer_json_500(caplog: pytest.LogCaptureFixture) -> None:
    daemon = FakeDaemon()

    def broken() -> Any:
        raise RuntimeError("status not computed yet")

    state = daemon.state(ready=broken, status_items=broken, config_dump=broken, metrics=broken)

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        for path in ("/ready", "/status", "/config_dump", "/stats/prometheus"):
            async with client.get(path) as r:
                assert r.status == 500, path
                assert r.content_type == "application/json"
                body = await r.text()
            assert json.loads(body) == {"error": "RuntimeError: status not computed yet"}
            assert "Traceback" not in body
        # The index does not depend on the state and keeps working.
        async with client.get("/") as r:
            assert r.status == 200

    with caplog.at_level(logging.ERROR, logger="gatewayd.proxy.admin"):
        arun(with_admin(state, test))
    assert sum("failed" in rec.getMessage() for rec in caplog.records) == 4


def test_unserialisable_values_do_not_break_the_dump() -> None:
    daemon = FakeDaemon()
    state = daemon.state(config_dump=lambda: {"set": frozenset({"b", "a"}), "obj": object})

    async def test(server: AdminServer, client: aiohttp.ClientSession) -> None:
        async with client.get("/config_dump") as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["set"] == ["a", "b"]
        assert doc["obj"] == "<class 'object'>"

    arun(with_admin(state, test))


def test_busy_address_raises_oserror() -> None:
    daemon = FakeDaemon()

    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError):
                await start_admin(f"127.0.0.1:{port}", daemon.state())

    arun(main())
