"""``ConfigPipeline(freeze=True)``: each build is kept out of the cyclic collector's
walks (``gc.freeze``), and cyclic garbage frozen with it is reclaimed by a full
collection at most every ``interval`` seconds (``BuiltOutOfCollections``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.collector import BuiltOutOfCollections
from gatewayd.pipeline import ConfigPipeline

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gc}
spec: {controllerName: gatewayd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: gc
  listeners: [{name: http, port: 18080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default}
spec:
  parentRefs: [{name: gw}]
"""


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (the rest of the suite collects
    as usual)."""
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.collect()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_build_is_frozen_and_walked_by_no_collection(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    pipeline = ConfigPipeline([str(tmp_path)], freeze=True)
    built = pipeline.build()
    assert gc.get_freeze_count() > 0
    walked = {id(o) for o in gc.get_objects()}  # every generation but the frozen one
    assert id(built.snapshot) not in walked
    assert id(built.resolution) not in walked
    assert not any(id(route) in walked for route in built.load.config.http_routes)
    assert pipeline.frozen is not None and pipeline.frozen.full_collections == 0


def test_without_freeze_a_build_is_collected_as_usual(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    built = ConfigPipeline([str(tmp_path)]).build()
    assert gc.get_freeze_count() == 0
    assert id(built.snapshot) in {id(o) for o in gc.get_objects()}


def test_frozen_cyclic_garbage_is_reclaimed_once_the_interval_passed() -> None:
    policy = BuiltOutOfCollections(interval=3600.0)
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    policy.end()  # the first build: frozen, nothing collected
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: no collection sees it
    policy.end()  # within the interval: frozen again, still not collected
    gc.collect()
    assert alive() is not None
    assert policy.full_collections == 0
    policy.interval = 0.0
    policy.end()  # the interval passed: unfreeze, collect, freeze
    assert alive() is None
    assert policy.full_collections == 1


def test_frozen_cyclic_garbage_is_reclaimed_once_the_frozen_set_doubled() -> None:
    """Frequent reloads with many short connections: the frozen set may not grow
    without bound until the interval passes."""
    policy = BuiltOutOfCollections(interval=3600.0)
    policy.end()  # the first build
    base = gc.get_freeze_count()
    assert policy.baseline == base
    cycles = [_Cycle() for _ in range(base // 4 + 1)]  # a quarter more: under the limit
    alive = weakref.ref(cycles[0])
    policy.end()
    del cycles
    gc.collect()
    assert alive() is not None and policy.full_collections == 0
    cycles = [_Cycle() for _ in range(base + 1)]  # now the frozen set doubles
    alive_too = weakref.ref(cycles[0])
    policy.end()
    del cycles
    policy.end()  # over twice the baseline: unfreeze, collect, freeze
    assert alive() is None and alive_too() is None
    assert policy.full_collections == 1
    assert policy.baseline == gc.get_freeze_count() < 2 * base


def test_a_worker_unpickles_a_snapshot_frozen_and_restores_the_thread_settings(
    tmp_path: Path,
) -> None:
    import pickle
    import sys

    from gatewayd.workers import ProtocolError, _unpickle_snapshot

    (tmp_path / "c.yaml").write_text(CONFIG)
    built = ConfigPipeline([str(tmp_path)]).build()
    data = pickle.dumps(built.snapshot, pickle.HIGHEST_PROTOCOL)
    interval = sys.getswitchinterval()
    policy = BuiltOutOfCollections()
    snapshot = _unpickle_snapshot(data, policy)
    assert snapshot.to_json() == built.snapshot.to_json()
    assert id(snapshot) not in {id(o) for o in gc.get_objects()}  # frozen
    assert gc.isenabled()
    assert sys.getswitchinterval() == interval
    # Anything but a pickled snapshot is refused (the worker answers with the error).
    with pytest.raises(ProtocolError, match="not a snapshot"):
        _unpickle_snapshot(pickle.dumps(("apply", 1)), policy)
    assert gc.isenabled()
    assert sys.getswitchinterval() == interval
