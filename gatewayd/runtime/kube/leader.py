"""LeaderElector: which replica writes status, decided on a coordination.k8s.io/v1 Lease.

Every replica serves traffic; only the holder of the Lease writes status.  The protocol
is client-go's leaderelection (tools/leaderelection), which every Kubernetes controller
speaks, so its timings and fields mean what operators expect:

* ``lease_duration`` 15 s: how long a replica waits, from the moment it last saw the
  Lease change, before it takes over a Lease that is not renewed.  Expiry is measured
  on the observer's own clock from its observation, never from ``renewTime`` (clocks of
  two nodes need not agree).  The holder's ``leaseDurationSeconds`` is what counts.
* ``renew_deadline`` 10 s: the leader retries its renewal for this long; if none
  succeeds it stops writing at once (``on_stopped_leading``), before the others can
  consider the Lease expired (``renew_deadline < lease_duration``).
* ``retry_period`` 2 s: between attempts; candidates add up to 1.2 times it as jitter
  (client-go's JitterFactor), so a dead leader is replaced within lease + retry +
  jitter, about 20 s, well within 30 s.
* Release on a graceful stop (client-go's ReleaseOnCancel): the holder writes an empty
  ``holderIdentity`` and ``leaseDurationSeconds: 1``, and a candidate takes the Lease
  at its next attempt, without waiting for expiry.

Writes are updates (PUT) carrying the resourceVersion read, so two candidates racing
for one expired Lease cannot both win: the second gets 409 Conflict and stays a
candidate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatewayd.runtime.kube.apierror import api_error
from gatewayd.runtime.kube.election import (
    DEFAULT_LEASE_NAME,
    DEFAULT_LEASE_NAMESPACE,
    JITTER_FACTOR,
    LEASE_DURATION,
    RENEW_DEADLINE,
    RETRY_PERIOD,
    LeaderElectionSettings,
    default_identity,
    default_namespace,
)

__all__ = [
    "DEFAULT_LEASE_NAME",
    "DEFAULT_LEASE_NAMESPACE",
    "LEASE_DURATION",
    "RENEW_DEADLINE",
    "RETRY_PERIOD",
    "LeaderElectionSettings",
    "LeaderElector",
    "LeaderMetrics",
    "default_identity",
    "default_namespace",
]

log = logging.getLogger("gatewayd.leader")


def _micro_time(when: dt.datetime) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class _Record:
    """The Lease spec fields of the protocol (client-go's LeaderElectionRecord)."""

    holder: str
    duration: int
    acquire_time: object
    renew_time: object
    transitions: int


def _record(lease: Any) -> _Record:
    spec = lease.spec
    if spec is None:
        return _Record("", 0, None, None, 0)
    return _Record(
        holder=spec.holder_identity or "",
        duration=spec.lease_duration_seconds or 0,
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=spec.lease_transitions or 0,
    )


class LeaderElector:
    """Campaigns for the Lease, renews it while leading, and says so through callbacks.

    ``start()`` runs it on a task of its own; ``stop(release=True)`` ends it, giving the
    Lease up when held (``release=False``: as if the process were killed)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        name: str = DEFAULT_LEASE_NAME,
        identity: str,
        lease_duration: float = LEASE_DURATION,
        renew_deadline: float = RENEW_DEADLINE,
        retry_period: float = RETRY_PERIOD,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        # client-go's own checks (NewLeaderElector).
        if not lease_duration > renew_deadline:
            raise ValueError("the lease duration must be greater than the renew deadline")
        if not renew_deadline > JITTER_FACTOR * retry_period:
            raise ValueError("the renew deadline must exceed 1.2 times the retry period")
        if retry_period <= 0 or not identity:
            raise ValueError("retry period must be positive and the identity not empty")
        self.api = CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._clock = clock
        self._rng = rng
        self.is_leader = False
        self.holder: str | None = None  # as last observed; "" when released
        self.transitions = 0
        self._observed: _Record | None = None
        self._observed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        # Each request is bounded; a renewal also by what is left of its deadline.
        self.request_timeout = max(retry_period, 1.0)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, *, release: bool = True) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.is_leader:
            self._set_leader(False)
            if release:
                await self._release()

    def state(self) -> dict[str, object]:
        """For /status: which Lease, who holds it as far as we saw, and whether we do."""
        return {
            "lease": f"{self.namespace}/{self.name}",
            "identity": self.identity,
            "holder": self.holder,
            "leader": self.is_leader,
        }

    # -- the protocol -----------------------------------------------------------------
    async def _run(self) -> None:
        log.info(
            "leader election: campaigning for Lease %s/%s as %s",
            self.namespace,
            self.name,
            self.identity,
        )
        while True:
            await self._acquire()
            self._set_leader(True)
            await self._renew()
            self._set_leader(False)

    async def _acquire(self) -> None:
        while True:
            if await self._attempt(self.request_timeout):
                return
            # wait.JitterUntil(retryPeriod, JitterFactor 1.2)
            await asyncio.sleep(self.retry_period * (1.0 + JITTER_FACTOR * self._rng()))

    async def _renew(self) -> None:
        """Renew every retry period; return when a renewal round missed its deadline."""
        while True:
            deadline = self._clock() + self.renew_deadline
            while True:
                left = deadline - self._clock()
                if left <= 0:
                    log.error(
                        "leader election: could not renew Lease %s/%s within %.1fs; "
                        "no longer the leader, status writes stop",
                        self.namespace,
                        self.name,
                        self.renew_deadline,
                    )
                    return
                if await self._attempt(min(self.request_timeout, left)):
                    break
                await asyncio.sleep(min(self.retry_period, max(0.0, deadline - self._clock())))
            await asyncio.sleep(self.retry_period)

    async def _attempt(self, limit: float) -> bool:
        """tryAcquireOrRenew, bounded by ``limit`` seconds; any failure is "not this time"."""
        try:
            return await asyncio.wait_for(self._try_acquire_or_renew(), limit)
        except ApiException as exc:
            if exc.status != 409:
                log.info(
                    "leader election: Lease %s/%s: %s", self.namespace, self.name, api_error(exc)
                )
            return False
        except TimeoutError:
            log.info(
                "leader election: Lease %s/%s: no answer in %.1fs",
                self.namespace,
                self.name,
                limit,
            )
            return False
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection refused, a proxy's HTML, ...: try again
            log.info(
                "leader election: Lease %s/%s: %s: %s",
                self.namespace,
                self.name,
                type(exc).__name__,
                exc,
            )
            return False

    async def _try_acquire_or_renew(self) -> bool:
        now = self._clock()
        wall = dt.datetime.now(dt.UTC)
        try:
            lease = await self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            # No Lease yet: create it, held by us (409: another candidate was faster).
            body = self._body(None, holder=self.identity, acquire=wall, renew=wall, transitions=0)
            await self.api.create_namespaced_lease(self.namespace, body)
            self._observe(_Record(self.identity, self._seconds(), wall, wall, 0), now)
            return True
        old = _record(lease)
        if old != self._observed:
            self._observe(old, now)
        self.holder = old.holder
        duration = old.duration if old.duration > 0 else self._seconds()
        if old.holder and old.holder != self.identity and self._observed_at + duration > now:
            return False  # held by another replica and not expired
        ours = old.holder == self.identity
        transitions = old.transitions if ours else old.transitions + 1
        acquire = old.acquire_time if ours and old.acquire_time is not None else wall
        body = self._body(
            lease.metadata.resource_version,
            holder=self.identity,
            acquire=acquire,
            renew=wall,
            transitions=transitions,
        )
        await self.api.replace_namespaced_lease(self.name, self.namespace, body)
        self._observe(_Record(self.identity, self._seconds(), acquire, wall, transitions), now)
        return True

    async def _release(self) -> None:
        """Give the Lease up (holder empty, 1 s duration) so another replica takes it
        at its next attempt.  Best effort, bounded: a stop must not hang on it."""
        try:
            lease = await asyncio.wait_for(
                self.api.read_namespaced_lease(self.name, self.namespace), self.request_timeout
            )
            if _record(lease).holder != self.identity:
                return  # somebody else's already: nothing of ours to release
            wall = dt.datetime.now(dt.UTC)
            body = self._body(
                lease.metadata.resource_version,
                holder="",
                acquire=wall,
                renew=wall,
                transitions=_record(lease).transitions,
                duration=1,
            )
            await asyncio.wait_for(
                self.api.replace_namespaced_lease(self.name, self.namespace, body),
                self.request_timeout,
            )
            self.holder = ""
            log.info("leader election: released Lease %s/%s", self.namespace, self.name)
        except Exception as exc:
            log.warning(
                "leader election: could not release Lease %s/%s (%s); it expires in %.0fs",
                self.namespace,
                self.name,
                exc,
                self.lease_duration,
            )

    # -- helpers ----------------------------------------------------------------------
    def _seconds(self) -> int:
        return max(1, round(self.lease_duration))

    def _observe(self, record: _Record, now: float) -> None:
        self._observed = record
        self._observed_at = now
        self.holder = record.holder
        self.transitions = record.transitions

    def _body(
        self,
        resource_version: str | None,
        *,
        holder: str,
        acquire: object,
        renew: dt.datetime,
        transitions: int,
        duration: int | None = None,
    ) -> Any:
        """A Lease as JSON (the client serializes a dict as it is; typed Any because its
        stubs ask for a V1Lease model)."""
        metadata: dict[str, object] = {"name": self.name, "namespace": self.namespace}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": self._seconds() if duration is None else duration,
                "acquireTime": _micro_time(acquire)
                if isinstance(acquire, dt.datetime)
                else acquire,
                "renewTime": _micro_time(renew),
                "leaseTransitions": transitions,
            },
        }

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        if leader:
            log.info(
                "leader election: now the leader (Lease %s/%s); writing status",
                self.namespace,
                self.name,
            )
            callback = self.on_started_leading
        else:
            callback = self.on_stopped_leading
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("leader election: a leadership callback failed")


class LeaderMetrics(Collector):
    """``gatewayd_leader``: 1 while this replica holds the status Lease, else 0."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "gatewayd_leader",
            "1 while this replica holds the status-writing Lease (leader election), else 0.",
            labels=("lease",),
        )
        family.add_metric(
            (f"{self.elector.namespace}/{self.elector.name}",),
            1.0 if self.elector.is_leader else 0.0,
        )
        return [family]
