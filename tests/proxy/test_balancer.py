"""Endpoint choice and outlier detection (gatewayd/proxy/balancer.py), with a seeded
random source and explicit clocks: every figure here is deterministic."""

from __future__ import annotations

import pickle
import random

import pytest
from prometheus_client import CollectorRegistry

from gatewayd.proxy.balancer import (
    ROUND_ROBIN,
    EndpointHealth,
    EndpointState,
    OutlierOptions,
)
from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule


def backend(name: str, n: int, *, base_port: int = 8000) -> CompiledBackend:
    eps = tuple(EndpointAddress(address="127.0.0.1", port=base_port + i) for i in range(n))
    return CompiledBackend(name=name, endpoints=eps)


def rule(*weighted: tuple[CompiledBackend, int]) -> CompiledRule:
    cum: list[int] = []
    total = 0
    for _, w in weighted:
        total += w
        cum.append(total)
    return CompiledRule(
        route_kind="HTTPRoute",
        route_namespace="default",
        route_name="r",
        rule_index=0,
        backends=tuple(b for b, _ in weighted),
        cumulative_weights=tuple(cum),
        total_weight=total,
    )


def health(**opts: object) -> EndpointHealth:
    return EndpointHealth(OutlierOptions(**opts), rng=random.Random(7).random)  # type: ignore[arg-type]


def fail(h: EndpointHealth, st: EndpointState, be: CompiledBackend, now: float, n: int) -> bool:
    return any([h.on_failure(st, be, now) for _ in range(n)])


# --------------------------------------------------------------------------- balancing


def test_least_request_spreads_evenly_when_idle() -> None:
    h = health()
    be = backend("be", 4)
    counts = dict.fromkeys(range(8000, 8004), 0)
    for _ in range(4000):
        st = h.pick(be, 0.0)
        assert st is not None
        counts[st.port] += 1
    assert sum(counts.values()) == 4000
    for port, n in counts.items():
        assert 850 <= n <= 1150, (port, counts)


def test_least_request_never_picks_the_busiest_endpoint() -> None:
    """Power of two choices: two distinct endpoints are compared, so the one with
    strictly the most requests in flight never wins."""
    h = health()
    be = backend("be", 4)
    states = [h.pick(be, 0.0) for _ in range(20)]
    by_port = {s.port: s for s in states if s is not None}
    by_port[8002].active = 10
    by_port[8001].active = 2
    counts = dict.fromkeys(range(8000, 8004), 0)
    for _ in range(3000):
        st = h.pick(be, 0.0)
        assert st is not None
        counts[st.port] += 1
    assert counts[8002] == 0, counts
    # 8001 wins only against 8002 (1 pair in 6): far fewer than the idle endpoints.
    assert counts[8001] < counts[8000] / 2, counts
    assert counts[8000] > 0 and counts[8003] > 0, counts


def test_least_request_follows_in_flight_counts() -> None:
    """Callers add and remove in-flight requests; a slow endpoint (requests pile up
    there) gets fewer new ones."""
    h = health()
    be = backend("be", 2)
    slow_port = 8001
    in_flight: list[tuple[EndpointState, int]] = []  # (state, finishes at tick)
    counts = {8000: 0, 8001: 0}
    for tick in range(2000):
        for item in [x for x in in_flight if x[1] <= tick]:
            item[0].active -= 1
            in_flight.remove(item)
        st = h.pick(be, 0.0)
        assert st is not None
        st.active += 1
        counts[st.port] += 1
        in_flight.append((st, tick + (20 if st.port == slow_port else 1)))
    assert counts[slow_port] < 0.1 * 2000, counts


def test_round_robin_walks_in_order() -> None:
    h = health(lb_policy=ROUND_ROBIN)
    be = backend("be", 3)
    ports = []
    for _ in range(7):
        st = h.pick(be, 0.0)
        assert st is not None
        ports.append(st.port)
    assert ports == [8000, 8001, 8002, 8000, 8001, 8002, 8000]


def test_no_endpoint_picks_none_and_one_endpoint_needs_no_draw() -> None:
    def no_draw() -> float:
        raise AssertionError("no random draw for one endpoint")

    h = EndpointHealth(rng=no_draw)
    assert h.pick(backend("empty", 0), 0.0) is None
    st = h.pick(backend("one", 1), 0.0)
    assert st is not None and st.port == 8000


def test_preferred_endpoint_while_available() -> None:
    h = health()
    be = backend("be", 3)
    for _ in range(20):
        st = h.pick(be, 0.0, preferred=("127.0.0.1", 8002))
        assert st is not None and st.port == 8002
    # An endpoint of no backend of ours: the balancer chooses.
    st = h.pick(be, 0.0, preferred=("127.0.0.1", 9999))
    assert st is not None and st.port in (8000, 8001, 8002)
    target = h.states[("127.0.0.1", 8002)]
    assert fail(h, target, be, 10.0, 5)
    assert not h.is_available("127.0.0.1", 8002, 10.0)
    assert h.is_available("127.0.0.1", 8000, 10.0)
    assert h.is_available("10.9.9.9", 1, 10.0)  # never seen: available
    for _ in range(20):
        st = h.pick(be, 10.0, preferred=("127.0.0.1", 8002))
        assert st is not None and st.port != 8002
    assert h.is_available("127.0.0.1", 8002, 40.0)  # 30 s later, back
    st = h.pick(be, 40.0, preferred=("127.0.0.1", 8002))
    assert st is not None and st.port == 8002


# --------------------------------------------------------------------------- ejection


def test_five_consecutive_failures_eject_and_success_resets_the_count() -> None:
    h = health()
    be = backend("be", 2)
    h.pick(be, 0.0)
    st = h.states[("127.0.0.1", 8000)]
    assert not fail(h, st, be, 1.0, 4)
    h.on_success(st)
    assert not fail(h, st, be, 1.0, 4)
    assert h.ejected == 0
    assert h.on_failure(st, be, 1.0)
    assert h.ejected == 1 and st.ejected_until == 31.0
    for _ in range(50):
        picked = h.pick(be, 2.0)
        assert picked is not None and picked.port == 8001


def test_ejection_time_doubles_up_to_the_maximum_then_resets() -> None:
    h = health(base_ejection_time=30.0, max_ejection_time=300.0)
    be = backend("be", 2)
    h.pick(be, 0.0)
    st = h.states[("127.0.0.1", 8000)]
    now = 0.0
    waits = []
    for _ in range(6):
        assert fail(h, st, be, now, 5)
        waits.append(st.ejected_until - now)
        now = st.ejected_until
        h.pick(be, now)  # lazily un-ejected here
        assert not st.ejected_until
    assert waits == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    # Healthy for max_ejection_time: the next ejection starts from the base again.
    now += 300.0
    assert fail(h, st, be, now, 5)
    assert st.ejected_until - now == 30.0


def test_max_ejection_percent_keeps_half_of_the_endpoints() -> None:
    h = health()
    be = backend("be", 4)
    h.pick(be, 0.0)
    states = [h.states[("127.0.0.1", 8000 + i)] for i in range(4)]
    ejected = [fail(h, st, be, 0.0, 5) for st in states]
    assert ejected == [True, True, False, False]
    assert h.ejected == 2
    # The two left keep counting and are ejected once room is made.
    assert states[2].failures == 5
    seen = {h.pick(be, 1.0).port for _ in range(50)}  # type: ignore[union-attr]
    assert seen == {8002, 8003}


def test_one_endpoint_can_always_be_ejected_and_panic_uses_it() -> None:
    """max(1, n * percent): a one-endpoint backend can be ejected (as Envoy); with none
    healthy the balancer panics and uses it anyway, and the backend counts as down."""
    h = health()
    be = backend("solo", 1)
    st = h.pick(be, 0.0)
    assert st is not None
    assert fail(h, st, be, 0.0, 5)
    assert h.backend_down(be, 1.0)
    again = h.pick(be, 1.0)
    assert again is st  # panic: the ejected endpoint rather than nothing
    assert not h.backend_down(be, 31.0)


def test_panic_threshold_uses_every_endpoint() -> None:
    h = health(max_ejection_percent=100)
    be = backend("be", 3)
    h.pick(be, 0.0)
    states = [h.states[("127.0.0.1", 8000 + i)] for i in range(3)]
    assert fail(h, states[0], be, 0.0, 5)
    seen = {h.pick(be, 1.0).port for _ in range(60)}  # type: ignore[union-attr]
    assert seen == {8001, 8002}  # 2 of 3 healthy: above 50%
    assert fail(h, states[1], be, 0.0, 5)
    seen = {h.pick(be, 1.0).port for _ in range(60)}  # type: ignore[union-attr]
    assert seen == {8000, 8001, 8002}  # 1 of 3 healthy: below 50%, panic


def test_outlier_detection_off() -> None:
    h = health(consecutive_5xx=0)
    be = backend("be", 2)
    st = h.pick(be, 0.0)
    assert st is not None
    assert not fail(h, st, be, 0.0, 100)
    assert h.ejected == 0


def test_ejections_in_metrics_and_lazy_expiry() -> None:
    metrics = ProxyMetrics(CollectorRegistry())
    h = EndpointHealth(OutlierOptions(), metrics, rng=random.Random(1).random)
    be = backend("ns/svc:80", 2)
    h.pick(be, 0.0)
    st = h.states[("127.0.0.1", 8000)]
    assert fail(h, st, be, 0.0, 5)
    assert metrics._ejections == {"ns/svc:80": 1}
    assert metrics._ejected == {"ns/svc:80": 1}
    assert h.expire(29.9) == 0  # not due: nothing scanned
    assert metrics._ejected == {"ns/svc:80": 1}
    h.pick(be, 30.0)
    assert metrics._ejected == {"ns/svc:80": 0}
    assert metrics._ejections == {"ns/svc:80": 1}
    assert h.ejected == 0


def test_retain_forgets_endpoints_that_left() -> None:
    metrics = ProxyMetrics(CollectorRegistry())
    h = EndpointHealth(OutlierOptions(), metrics)
    be = backend("be", 2)
    h.pick(be, 0.0)
    assert fail(h, h.states[("127.0.0.1", 8000)], be, 0.0, 5)
    h.retain({("127.0.0.1", 8001)})
    assert list(h.states) == [("127.0.0.1", 8001)]
    assert h.ejected == 0 and metrics._ejected == {"be": 0}


def test_health_survives_a_new_snapshot() -> None:
    """States are keyed by (address, port): a reload's new backend objects see the
    same ejections and in-flight counts."""
    h = health()
    old = backend("be", 2)
    h.pick(old, 0.0)
    assert fail(h, h.states[("127.0.0.1", 8000)], old, 0.0, 5)
    new = backend("be", 2)
    seen = {h.pick(new, 1.0).port for _ in range(30)}  # type: ignore[union-attr]
    assert seen == {8001}


def test_balancing_state_is_not_pickled() -> None:
    h = health()
    be = backend("be", 2)
    h.pick(be, 0.0)
    assert be.lb is not None
    copy = pickle.loads(pickle.dumps(be))
    assert copy.lb is None
    assert copy.endpoints == be.endpoints


# --------------------------------------------------------------------------- weighted fallback


def test_share_of_a_down_backend_goes_to_the_others() -> None:
    h = health()
    a, b, c = (
        backend("a", 1, base_port=8000),
        backend("b", 1, base_port=8100),
        backend("c", 1, base_port=8200),
    )
    r = rule((a, 50), (b, 30), (c, 20))
    draws = [i / 1000 for i in range(1000)]
    before = [h.choose_backend(r, x, 0.0) for x in draws]
    assert [before.count(x) for x in (a, b, c)] == [500, 300, 200]
    st = h.pick(a, 0.0)
    assert st is not None and fail(h, st, a, 0.0, 5)
    after = [h.choose_backend(r, x, 1.0) for x in draws]
    # a's half goes to b and c in proportion to their weights (3:2).
    assert after.count(a) == 0
    assert after.count(b) == 600 and after.count(c) == 400
    # Ejection over: the weights as configured.
    back = [h.choose_backend(r, x, 31.0) for x in draws]
    assert [back.count(x) for x in (a, b, c)] == [500, 300, 200]


def test_backend_without_endpoints_gives_its_share_but_invalid_keeps_500() -> None:
    h = health()
    empty = backend("empty", 0)
    live = backend("live", 1)
    invalid = CompiledBackend(name="bad", invalid_status=500)
    r = rule((empty, 1), (live, 1))
    assert {h.choose_backend(r, i / 100, 0.0).name for i in range(100)} == {"live"}  # type: ignore[union-attr]
    r2 = rule((invalid, 1), (live, 1))
    names = [h.choose_backend(r2, i / 100, 0.0).name for i in range(100)]  # type: ignore[union-attr]
    assert names.count("bad") == 50  # "MUST" answer 500 for that share


@pytest.mark.parametrize("ejected_too", [False, True])
def test_every_backend_down_keeps_the_plain_choice(ejected_too: bool) -> None:
    h = health()
    a, b = backend("a", 0), backend("b", 1)
    if ejected_too:
        st = h.pick(b, 0.0)
        assert st is not None and fail(h, st, b, 0.0, 5)
    r = rule((a, 1), (b, 1))
    names = [h.choose_backend(r, i / 100, 1.0).name for i in range(100)]  # type: ignore[union-attr]
    if ejected_too:
        assert names.count("a") == 50 and names.count("b") == 50
    else:
        assert set(names) == {"b"}


def test_retry_avoids_the_previous_endpoint() -> None:
    h = health()
    be = backend("be", 3)
    for _ in range(100):
        first = h.pick(be, 0.0)
        assert first is not None
        again = h.pick(be, 0.0, None, first)
        assert again is not None and again is not first
