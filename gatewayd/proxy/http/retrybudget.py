"""The retry budget: how many requests may be retrying at once, per backend.

Envoy's ``retry_budget`` (``budget_percent`` 20 %, ``min_retry_concurrency`` 3): "the
limit on concurrent retries as a percentage of the sum of active requests", never
below the minimum.  A request counts as active from its backend pick to its end, and
as retrying from its first retry to its end.  When the budget is spent, the retry is
not sent: the client gets what the last try produced (the backend's response, or the
local reply of its failure), and ``gatewayd_upstream_rq_retry_overflow_total`` counts
it.  A backend that fails every request under load therefore sees at most
``max(min_concurrency, percent x active)`` retries in flight instead of ``attempts``
times its load.

Only requests whose rule has ``retry`` are counted (the others never retry), so the
hot path of rules without retries pays nothing.  Per process: each worker keeps its
own counts, as each of Envoy's workers shares one per cluster.  Event-loop thread only.
"""

from __future__ import annotations

from typing import Final

DEFAULT_PERCENT: Final = 20.0
DEFAULT_MIN_CONCURRENCY: Final = 3


class RetryBudget:
    __slots__ = ("_active", "_retrying", "min_concurrency", "percent")

    def __init__(
        self, percent: float = DEFAULT_PERCENT, min_concurrency: int = DEFAULT_MIN_CONCURRENCY
    ) -> None:
        if percent < 0 or min_concurrency < 0:
            raise ValueError("retry budget percent and minimum concurrency must be >= 0")
        self.percent = percent
        self.min_concurrency = min_concurrency
        self._active: dict[str, int] = {}
        self._retrying: dict[str, int] = {}

    def enter(self, backend: str) -> None:
        """A request to ``backend`` (on a rule with ``retry``) starts."""
        active = self._active
        active[backend] = active.get(backend, 0) + 1

    def admit(self, backend: str) -> bool:
        """Whether a request to ``backend`` may start retrying; counts it when it may."""
        retrying = self._retrying
        now = retrying.get(backend, 0)
        allowed = max(
            float(self.min_concurrency), self._active.get(backend, 0) * self.percent / 100.0
        )
        if now >= allowed:
            return False
        retrying[backend] = now + 1
        return True

    def leave(self, backend: str, retried: bool) -> None:
        """A request counted by ``enter`` ended (``retried``: ``admit`` had let it)."""
        active = self._active
        n = active.get(backend, 0) - 1
        if n > 0:
            active[backend] = n
        else:
            active.pop(backend, None)
        if retried:
            retrying = self._retrying
            r = retrying.get(backend, 0) - 1
            if r > 0:
                retrying[backend] = r
            else:
                retrying.pop(backend, None)

    def counts(self, backend: str) -> tuple[int, int]:
        """(active, retrying) requests of ``backend``, for tests and the admin page."""
        return self._active.get(backend, 0), self._retrying.get(backend, 0)
