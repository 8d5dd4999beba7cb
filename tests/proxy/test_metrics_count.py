"""``metrics._count``, the batch counting of exchange records, against a plain
reference: a dict lookup and ``bisect_left`` per slot, whatever the keys' string
identities and the durations (bucket bounds included)."""

from __future__ import annotations

import random
from bisect import bisect_left

from gatewayd.proxy.metrics import BUCKETS, ExchangeRecord, RequestKey, _count, _Requests


def _reference(
    records: list[ExchangeRecord],
) -> tuple[dict[RequestKey, _Requests], dict[tuple[str, str], _Requests]]:
    rq: dict[RequestKey, _Requests] = {}
    up: dict[tuple[str, str], _Requests] = {}
    for ns, gw, listener, route, status, duration, backend, up_s in records:
        for slots, key, seconds in (
            (rq, (ns, gw, listener, route), duration),
            *([(up, (backend, route), up_s)] if backend is not None and up_s >= 0.0 else []),
        ):
            slot = slots.setdefault(key, _Requests())  # type: ignore[attr-defined]
            slot.codes[status] = slot.codes.get(status, 0) + 1
            slot.counts[bisect_left(BUCKETS, seconds)] += 1
            slot.total += seconds
    return rq, up


def _same(a: dict[object, _Requests], b: dict[object, _Requests]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].codes == b[k].codes, k
        assert a[k].counts == b[k].counts, k
        assert a[k].total == b[k].total, k  # the same additions in the same order


def _fresh(s: str) -> str:
    """An equal string that is another object (as a joined listener list is)."""
    return "".join(list(s))


def test_count_matches_the_reference() -> None:
    rnd = random.Random(7)
    bounds = [*BUCKETS, 0.0, -1.0, 1e-7, 99.0, float("inf")]
    near = [b * f for b in BUCKETS for f in (0.999999, 1.0, 1.000001)]
    durations = bounds + near + [rnd.random() * 0.003 for _ in range(50)]
    route_a, route_b = "ns/a/rule/0", "ns/b/rule/1"
    records: list[ExchangeRecord] = []
    for i in range(2000):
        route = route_a if rnd.random() < 0.8 else route_b
        if rnd.random() < 0.1:
            route = _fresh(route)
        listener = "http" if rnd.random() < 0.9 else _fresh("http,https")
        backend = rnd.choice(["be", "be", "be2", None])
        up_s = rnd.choice(durations) if rnd.random() < 0.9 else -1.0
        records.append(
            (
                "ns",
                "gw",
                listener,
                route if i % 50 else "",
                rnd.choice([200, 200, 200, 404, 503, 0]),
                rnd.choice(durations),
                backend,
                up_s,
            )
        )
    rq: dict[RequestKey, _Requests] = {}
    up: dict[tuple[str, str], _Requests] = {}
    # In batches, as the exchange hands them over, into the same slots.
    for start in range(0, len(records), 256):
        _count(rq, up, records[start : start + 256])
    ref_rq, ref_up = _reference(records)
    _same(rq, ref_rq)  # type: ignore[arg-type]
    _same(up, ref_up)  # type: ignore[arg-type]


def test_count_of_nothing_counts_nothing() -> None:
    rq: dict[RequestKey, _Requests] = {}
    up: dict[tuple[str, str], _Requests] = {}
    _count(rq, up, [])
    assert rq == {} and up == {}
