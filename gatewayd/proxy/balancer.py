"""Which endpoint of a backend gets a request, and which endpoints are ejected.

Per worker process (each worker balances and ejects on what it sees itself, as each
Envoy worker thread has its own load balancer; ejections are not shared between
workers).

Balancing (``--lb-policy``): least request by default, Envoy's ``LEAST_REQUEST`` with
its default ``choice_count`` of 2 ("power of two choices"): two endpoints drawn at
random, the one with fewer requests in flight from this worker wins.  ``round-robin``
walks the endpoints in order.

Passive health (outlier detection), on by default, like Envoy's ``consecutive_5xx``
with local-origin failures counted as 5xx (Envoy's default,
``split_external_local_origin_errors: false``): a connect failure, a reset before the
response, and a 502/503/504 answer each count one failure of the endpoint; any other
answer resets the count.  ``consecutive_5xx`` failures in a row eject the endpoint for
``base_ejection_time``, doubled on each repeat up to ``max_ejection_time``; an endpoint
that stayed un-ejected for ``max_ejection_time`` starts from the base again.  Never more
than ``max_ejection_percent`` of one backend's endpoints are ejected (at least one can
be, as Envoy).  When fewer than ``panic_threshold`` percent of a backend's endpoints are
left, the balancer uses them all (Envoy's panic mode).  Ejections end lazily: checked
on the next pick (and by the proxy's sweep, for the gauge), never by a timer per
endpoint.

The API the request path (and session persistence) uses:

- ``EndpointHealth.pick(backend, now, preferred=None)``: an ``EndpointState`` (its
  ``endpoint`` is the ``EndpointAddress``) or None when the backend has no endpoint;
  ``preferred`` (address, port) is returned when it belongs to the backend and is not
  ejected.
- ``EndpointHealth.is_available(address, port, now)``: not ejected (unknown endpoints
  are available).
- ``EndpointHealth.backend_down(backend, now)`` and ``choose_backend(rule, r, now)``:
  the weighted choice of a rule's backendRef, where a backendRef whose endpoints are
  all ejected (or that has none) gives its share to the others.
- ``EndpointHealth.on_success(state)`` / ``on_failure(state, backend, now)``: what
  happened to a request sent there; ``on_failure`` returns True when it ejected the
  endpoint.  ``state.active`` counts requests in flight (the caller adds and removes).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from gatewayd.proxy.metrics import ProxyMetrics
    from gatewayd.routing.snapshot.backends import EndpointAddress
    from gatewayd.routing.snapshot.rules import CompiledBackend, CompiledRule

LEAST_REQUEST: Final = "least-request"
ROUND_ROBIN: Final = "round-robin"
LB_POLICIES: Final = (LEAST_REQUEST, ROUND_ROBIN)

# Backend answers counted as failures of the endpoint (Envoy's gateway errors).
GATEWAY_ERRORS: Final = frozenset((502, 503, 504))

# Access log flag of a request whose failure ejected its endpoint (gatewayd's own;
# Envoy has no flag for it).  Joined to the request's own flag: "UF,OE".
FLAG_EJECTED: Final = "OE"

_NEVER: Final = float("inf")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierOptions:
    """Balancing and passive health settings (``gatewayd run`` flags in brackets)."""

    lb_policy: str = LEAST_REQUEST  # --lb-policy
    # Failures in a row that eject an endpoint; 0 turns outlier detection off
    # (--outlier-consecutive-5xx; Envoy's consecutive_5xx default, 5).
    consecutive_5xx: int = 5
    # --outlier-base-ejection-time (Envoy's base_ejection_time, 30 s).
    base_ejection_time: float = 30.0
    # --outlier-max-ejection-time (Envoy's max_ejection_time, 300 s).
    max_ejection_time: float = 300.0
    # --outlier-max-ejection-percent (Envoy's default is 10; 50 here: with two
    # endpoints, one can be ejected).
    max_ejection_percent: int = 50
    # Envoy's healthy_panic_threshold, 50%.
    panic_threshold: int = 50


DEFAULT_OUTLIER: Final = OutlierOptions()


class EndpointState:
    """One endpoint as this worker sees it: requests in flight, failures, ejection."""

    __slots__ = (
        "active",
        "address",
        "ejected_by",
        "ejected_until",
        "ejections",
        "endpoint",
        "failures",
        "port",
        "unejected_at",
    )

    def __init__(self, endpoint: EndpointAddress) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.port = endpoint.port
        self.active = 0  # requests in flight (least request)
        self.failures = 0  # consecutive failures
        self.ejected_until = 0.0  # 0: not ejected
        self.ejections = 0  # consecutive ejections (the doubling)
        self.unejected_at = 0.0  # when the last ejection ended
        self.ejected_by = ""  # backend name the ejection is counted under (metrics)

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        # Per-process state riding on a snapshot object: never sent to another process.
        return (_none, ())

    def __repr__(self) -> str:
        return (
            f"EndpointState({self.address}:{self.port} active={self.active} "
            f"failures={self.failures} ejected_until={self.ejected_until})"
        )


class BackendBalancer:
    """The per-process view of one backend: its endpoints' states and the ones to choose
    from.  Kept on the backend (``CompiledBackend.lb``) and rebuilt when any ejection
    starts or ends (``epoch``)."""

    __slots__ = ("avail", "by_key", "down", "epoch", "panic", "rr", "single", "states")

    def __init__(self, states: tuple[EndpointState, ...], epoch: int, panic_threshold: int) -> None:
        self.states = states
        self.epoch = epoch
        self.rr = 0
        self.by_key: dict[tuple[str, int], EndpointState] | None = None
        healthy = tuple(s for s in states if not s.ejected_until)
        # Panic: "if the percentage of healthy hosts falls below this, the load balancer
        # will ignore health" (Envoy's healthy_panic_threshold).
        self.panic = bool(states) and len(healthy) * 100 < panic_threshold * len(states)
        self.avail = states if self.panic or not healthy else healthy
        self.down = not healthy
        # A backend with one endpoint sends every request there, ejected or not (panic):
        # the request path takes it without a call, whatever the epoch.
        self.single = states[0] if len(states) == 1 else None

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (_none, ())


def _none() -> None:
    return None


class EndpointHealth:
    """Every endpoint this worker sends to, keyed by (address, port): shared by all
    backends (and snapshots) that list it, so a reload keeps its health."""

    def __init__(
        self,
        options: OutlierOptions | None = None,
        metrics: ProxyMetrics | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.options = options if options is not None else DEFAULT_OUTLIER
        self.metrics = metrics
        self.random = rng
        self.round_robin = self.options.lb_policy == ROUND_ROBIN
        self.states: dict[tuple[str, int], EndpointState] = {}
        self.ejected = 0  # endpoints ejected now (and not yet noticed back)
        self.epoch = 0  # bumped on every ejection and un-ejection
        self.next_expiry = _NEVER

    # ------------------------------------------------------------------ request path

    def balancer(self, backend: CompiledBackend) -> BackendBalancer:
        bal: BackendBalancer | None = backend.lb
        if bal is None or bal.epoch != self.epoch:
            bal = self._build(backend)
        return bal

    def _build(self, backend: CompiledBackend) -> BackendBalancer:
        states = self.states
        out: list[EndpointState] = []
        for ep in backend.endpoints:
            key = (ep.address, ep.port)
            st = states.get(key)
            if st is None:
                st = states[key] = EndpointState(ep)
            else:
                st.endpoint = ep  # the newest snapshot's (its pod may have changed)
            out.append(st)
        bal = BackendBalancer(tuple(out), self.epoch, self.options.panic_threshold)
        object.__setattr__(backend, "lb", bal)
        return bal

    def pick(
        self,
        backend: CompiledBackend,
        now: float,
        preferred: tuple[str, int] | None = None,
        avoid: EndpointState | None = None,
    ) -> EndpointState | None:
        """The endpoint for the next request to ``backend``; None when it has none.
        ``avoid`` (a retry's previous endpoint) loses to the other candidate.

        O(1) apart from rebuilding the backend's view after an ejection starts or
        ends (O(endpoints), once per backend and ejection event)."""
        if self.ejected and now >= self.next_expiry:
            self.expire(now)
        bal: BackendBalancer | None = backend.lb
        if bal is None or bal.epoch != self.epoch:
            bal = self._build(backend)
        if preferred is not None:
            by_key = bal.by_key
            if by_key is None:
                by_key = bal.by_key = {(s.address, s.port): s for s in bal.states}
            pst = by_key.get(preferred)
            if pst is not None and not pst.ejected_until:
                return pst
        avail: tuple[EndpointState, ...] = bal.avail
        n = len(avail)
        if n <= 1:
            return avail[0] if n else None
        if self.round_robin:
            i = bal.rr
            bal.rr = i + 1 if i + 1 < n else 0
            return avail[i if i < n else 0]
        # Two distinct endpoints from one draw: the integer part picks the first, the
        # fraction the second among the n-1 others.
        r = self.random() * n
        i = int(r)
        a = avail[i]
        b = avail[(i + 1 + int((r - i) * (n - 1))) % n]
        if avoid is not None:
            if a is avoid:
                return b
            if b is avoid:
                return a
        return b if b.active < a.active else a

    def is_available(self, address: str, port: int, now: float) -> bool:
        """Whether (address, port) may get requests: not ejected (or ejected until a
        time that has passed).  Endpoints this worker never sent to are available."""
        if self.ejected and now >= self.next_expiry:
            self.expire(now)
        st = self.states.get((address, port))
        return st is None or not st.ejected_until

    def backend_down(self, backend: CompiledBackend, now: float) -> bool:
        """A valid backendRef with no endpoint, or whose endpoints are all ejected."""
        if backend.invalid_status is not None:
            return False  # its share is answered 500, as the spec says
        if not backend.endpoints:
            return True
        if not self.ejected:
            return False
        if now >= self.next_expiry:
            self.expire(now)
        return self.balancer(backend).down

    def choose_backend(self, rule: CompiledRule, r: float, now: float) -> CompiledBackend | None:
        """The rule's weighted choice (``r`` uniform in [0, 1)); a backendRef that is
        down gives its share to the others that are not, in proportion to their
        weights.  When every one is down, the plain weighted choice (it answers 503,
        or, in panic, tries an ejected endpoint)."""
        backend = rule.pick_backend(r)
        if backend is None or not self.backend_down(backend, now):
            return backend
        return self._fallback(rule, r, now) or backend

    def _fallback(self, rule: CompiledRule, r: float, now: float) -> CompiledBackend | None:
        live: list[tuple[CompiledBackend, int]] = []
        prev = 0
        total = 0
        point = r * rule.total_weight
        for backend, cum in zip(rule.backends, rule.cumulative_weights, strict=True):
            weight = cum - prev
            if prev <= point < cum:
                # Where the draw fell within the down backend's share, uniform again:
                # that share is split among the others by their weights.
                r = (point - prev) / weight
            prev = cum
            if weight > 0 and not self.backend_down(backend, now):
                live.append((backend, weight))
                total += weight
        if not total:
            return None
        point = r * total
        for backend, weight in live:
            if point < weight:
                return backend
            point -= weight
        return live[-1][0]

    # ------------------------------------------------------------------ outcomes

    @staticmethod
    def on_success(state: EndpointState) -> None:
        state.failures = 0

    def on_failure(self, state: EndpointState, backend: CompiledBackend, now: float) -> bool:
        """A connect failure, a reset, or a 502/503/504 from ``state``'s endpoint.
        True when this failure ejected it."""
        opts = self.options
        threshold = opts.consecutive_5xx
        if threshold <= 0 or state.ejected_until:
            return False  # off, or ejected already (a panic pick, or a request in flight)
        state.failures += 1
        if state.failures < threshold:
            return False
        bal = self.balancer(backend)
        n = len(bal.states)
        ejected_here = sum(1 for s in bal.states if s.ejected_until)
        if ejected_here >= max(1, n * opts.max_ejection_percent // 100):
            return False  # max_ejection_percent: keep counting, eject later
        state.failures = 0
        if state.unejected_at and now - state.unejected_at >= opts.max_ejection_time:
            state.ejections = 0  # healthy for long enough: back to the base time
        state.ejections += 1
        wait = opts.base_ejection_time * (2 ** min(state.ejections - 1, 30))
        until = now + min(wait, max(opts.max_ejection_time, opts.base_ejection_time))
        state.ejected_until = until
        state.ejected_by = backend.name
        self.ejected += 1
        self.epoch += 1
        self.next_expiry = min(self.next_expiry, until)
        m = self.metrics
        if m is not None:
            m.outlier_ejection(backend.name, 1)
        return True

    def expire(self, now: float) -> int:
        """End the ejections that are due; returns how many ended."""
        if not self.ejected or now < self.next_expiry:
            return 0
        ended = 0
        nxt = _NEVER
        m = self.metrics
        for st in self.states.values():
            until = st.ejected_until
            if not until:
                continue
            if now >= until:
                st.ejected_until = 0.0
                st.unejected_at = now
                st.failures = 0
                ended += 1
                if m is not None:
                    m.outlier_ejection(st.ejected_by, -1)
            elif until < nxt:
                nxt = until
        self.ejected -= ended
        self.next_expiry = nxt
        if ended:
            self.epoch += 1
        return ended

    def retain(self, endpoints: Iterable[tuple[str, int]]) -> None:
        """A new configuration lists only ``endpoints``: forget the others (memory stays
        bounded by the configuration's endpoints)."""
        keep = set(endpoints)
        m = self.metrics
        for key in [k for k in self.states if k not in keep]:
            st = self.states.pop(key)
            if st.ejected_until:
                self.ejected -= 1
                if m is not None:
                    m.outlier_ejection(st.ejected_by, -1)
        if not self.ejected:
            self.next_expiry = _NEVER
        self.epoch += 1
