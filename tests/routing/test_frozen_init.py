"""``fast_init`` builds what dataclasses' own ``__init__`` builds, and keeps the class
frozen (``gatewayd/routing/snapshot/frozen.py``)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field

import pytest

from gatewayd.routing.config import model as m
from gatewayd.routing.snapshot.frozen import fast_init
from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule


def _both(**kwargs: object) -> tuple[type, type]:
    """The same dataclass twice: with dataclasses' ``__init__`` and with ``fast_init``'s."""

    def make() -> type:
        @dataclass(frozen=True, slots=True, **kwargs)  # type: ignore[call-overload, misc]
        class Sample:
            a: int
            b: str = "b"
            c: list[int] = field(default_factory=list)
            d: int = field(default=4, kw_only=True)
            e: int = field(default=5, init=False, compare=False)
            f: tuple[int, ...] = field(default_factory=tuple, init=False)
            g: int = field(default=7, init=False)

            def __post_init__(self) -> None:
                object.__setattr__(self, "g", self.a * 2)

        return Sample

    plain, fast = make(), make()
    return plain, fast_init(fast)


@pytest.mark.parametrize("kw_only", [False, True])
def test_the_same_instances_as_dataclasses_init(kw_only: bool) -> None:
    plain, fast = _both(kw_only=kw_only)
    assert str(inspect.signature(fast)) == str(inspect.signature(plain))
    for kwargs in ({"a": 1}, {"a": 2, "b": "x", "c": [3], "d": 9}):
        p, f = plain(**kwargs), fast(**kwargs)
        assert repr(p).replace("_both.<locals>.make.<locals>.", "") == repr(f).replace(
            "_both.<locals>.make.<locals>.", ""
        )
        assert dataclasses.astuple(p) == dataclasses.astuple(f)
        assert f.g == 2 * f.a  # __post_init__ ran
    # A factory default is a new object for each instance.
    assert fast(a=1).c is not fast(a=1).c
    if not kw_only:
        assert fast(1, "z").b == "z"
        with pytest.raises(TypeError):
            fast(1, "z", [], 4)  # d is keyword-only
    with pytest.raises(TypeError):
        fast()  # a is required
    with pytest.raises(TypeError):
        fast(a=1, e=3)  # not an __init__ field


def test_the_class_stays_frozen_and_pickles() -> None:
    meta = m.Meta(namespace="ns", name="n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del meta.name  # type: ignore[misc]
    assert meta.source == m.Source(file="<memory>", index=0)
    assert pickle.loads(pickle.dumps(meta)) == meta
    assert dataclasses.replace(meta, name="x").name == "x"
    assert hash(meta) == hash(m.Meta(namespace="ns", name="n"))


def test_snapshot_rules_run_their_post_init() -> None:
    backend = CompiledBackend(name="ns/svc:80")
    assert backend.request_filters is False
    rule = CompiledRule(
        route_kind="HTTPRoute",
        route_namespace="ns",
        route_name="r",
        rule_index=0,
        backends=(backend,),
        total_weight=1,
    )
    assert rule.route_id == "ns/r/rule/0"
    assert rule.plain is True


def test_refuses_a_class_it_does_not_fit() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        b: dataclasses.InitVar[int] = 0

        def __post_init__(self, b: int) -> None:
            pass

    for cls in (NoSlots, NotFrozen, WithInitVar):
        with pytest.raises(TypeError):
            fast_init(cls)
