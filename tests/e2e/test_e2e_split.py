"""Weighted traffic splitting, counted by the echo's "pod" field."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Client,
    Counter,
    Gatewayd,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    rule,
)

pytestmark = pytest.mark.e2e

REQUESTS = 2000


@dataclass
class Env:
    daemon: Gatewayd
    port: int


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    backends = module_echoes.start("echo-v1", "echo-v2", "echo-v3")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    for b in backends:
        docs += b.manifests()
    docs += [
        http_route(
            "ninety-ten",
            [rule(backends=[backend_ref("echo-v1", weight=90), backend_ref("echo-v2", weight=10)])],
            hostnames=["ninety.example"],
        ),
        http_route(
            "fifty-fifty",
            [rule(backends=[backend_ref("echo-v1", weight=50), backend_ref("echo-v2", weight=50)])],
            hostnames=["fifty.example"],
        ),
        http_route(
            "zero-weight",
            [
                rule(
                    backends=[
                        backend_ref("echo-v1", weight=1),
                        backend_ref("echo-v3", weight=0),
                    ]
                )
            ],
            hostnames=["zero.example"],
        ),
    ]
    return Env(module_gatewayd(docs), port)


def count_pods(env: Env, host: str, n: int) -> dict[str, int]:
    counter = Counter()
    with Client(env.port) as c:
        for _ in range(n):
            counter.add(str(c.request("/", host=host).echo()["pod"]))
    return counter.values


def test_ninety_ten_split(env: Env) -> None:
    pods = count_pods(env, "ninety.example", REQUESTS)
    assert set(pods) == {"echo-v1", "echo-v2"}, pods
    share = pods["echo-v2"] / REQUESTS
    assert abs(share - 0.10) <= 0.03, pods


def test_fifty_fifty_split(env: Env) -> None:
    pods = count_pods(env, "fifty.example", REQUESTS)
    assert set(pods) == {"echo-v1", "echo-v2"}, pods
    share = pods["echo-v2"] / REQUESTS
    # one standard deviation is 1.1% at n=2000: 4.5% keeps the test deterministic enough
    assert abs(share - 0.50) <= 0.045, pods


def test_zero_weight_gets_nothing(env: Env) -> None:
    pods = count_pods(env, "zero.example", 200)
    assert pods == {"echo-v1": 200}


def test_concurrent_clients(env: Env) -> None:
    """20 keep-alive clients at once, 25 requests each: every answer is the right one."""

    def client(n: int) -> list[str]:
        with Client(env.port) as c:
            return [
                str(c.request(f"/c/{n}/{i}", host="fifty.example").echo()["path"])
                for i in range(25)
            ]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(client, range(20)))
    for n, paths in enumerate(results):
        assert paths == [f"/c/{n}/{i}" for i in range(25)]
