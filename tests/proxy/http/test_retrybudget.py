"""The retry budget's arithmetic: max(min_concurrency, percent x active) retrying."""

from __future__ import annotations

import pytest

from gatewayd.proxy.http.retrybudget import RetryBudget


def test_minimum_concurrency_when_few_requests_are_active() -> None:
    b = RetryBudget(20.0, 3)
    for _ in range(5):
        b.enter("web")
    assert [b.admit("web") for _ in range(4)] == [True, True, True, False]
    assert b.counts("web") == (5, 3)


def test_share_of_active_requests_above_the_minimum() -> None:
    b = RetryBudget(20.0, 3)
    for _ in range(50):
        b.enter("web")
    admitted = sum(b.admit("web") for _ in range(50))
    assert admitted == 10  # 20 % of 50
    assert b.admit("other") is True  # per backend: another one has its own budget


def test_leaving_frees_the_slots() -> None:
    b = RetryBudget(0.0, 1)
    b.enter("web")
    b.enter("web")
    assert b.admit("web") is True
    assert b.admit("web") is False
    b.leave("web", retried=True)
    assert b.counts("web") == (1, 0)
    assert b.admit("web") is True
    b.leave("web", retried=True)
    assert b.counts("web") == (0, 0)


def test_zero_budget_never_admits() -> None:
    b = RetryBudget(0.0, 0)
    b.enter("web")
    assert b.admit("web") is False


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudget(-1.0, 3)
