"""KubernetesStatusSink: the computed statuses written to the API server's ``/status``.

What is written and how it is merged is ``runtime.kube.statuspatch`` (pure); this module
is the I/O around it:

* ``publish`` (on every serving configuration) compares each object's status with what
  was last synced, ignoring ``lastTransitionTime`` (every build stamps a new one), and
  queues only the objects that differ.  A quiet cluster sends nothing, not even a GET.
* A queued object is synced by reading it (GET ``/status``), computing the merge patch
  against the live object and sending it (PATCH ``/status``, JSON merge patch carrying
  the resourceVersion read).  A 409 Conflict (somebody wrote in between) is answered by
  reading again and recomputing, up to ``attempts`` times with exponential backoff and
  jitter; an object that still fails is tried again ``retry_after`` seconds later.
* The queue coalesces per object (a status published twice while queued is synced once,
  at its newest) and at most ``max_in_flight`` objects are synced at once.
* Routes and policies whose status we wrote and that are no longer attached to any of
  our Gateways get our ``parents``/``ancestors`` entries removed ("Controllers should
  ensure that entries to status populated with their ControllerName are cleaned up when
  they are no longer necessary.", RouteParentStatus.ControllerName).
* Only while active (this replica leads, ``set_active``): becoming active syncs every
  object at once (a full resync: the previous leader may have died mid-write);
  becoming inactive cancels the syncs in flight and forgets the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.runtime.kube.apierror import api_error
from gatewayd.runtime.kube.statuspatch import SHARED_LISTS, status_patch

__all__ = [
    "DEFAULT_RESOURCES",
    "KubernetesStatusSink",
    "Resource",
    "api_error",
]

log = logging.getLogger("gatewayd.status")

GATEWAY_GROUP: Final = "gateway.networking.k8s.io"
MERGE_PATCH: Final = "application/merge-patch+json"


@dataclass(frozen=True, slots=True)
class Resource:
    """Where objects of one kind live in the API: /apis/{group}/{version}/[namespaces/
    {ns}/]{plural}/{name}/status."""

    group: str
    version: str
    plural: str
    namespaced: bool = True


# The versions used when discovery says nothing else (``resources=`` overrides them with
# the versions the cluster serves).
DEFAULT_RESOURCES: Final[Mapping[str, Resource]] = {
    "GatewayClass": Resource(GATEWAY_GROUP, "v1", "gatewayclasses", namespaced=False),
    "Gateway": Resource(GATEWAY_GROUP, "v1", "gateways"),
    "HTTPRoute": Resource(GATEWAY_GROUP, "v1", "httproutes"),
    "GRPCRoute": Resource(GATEWAY_GROUP, "v1", "grpcroutes"),
    "TLSRoute": Resource(GATEWAY_GROUP, "v1", "tlsroutes"),
    "TCPRoute": Resource(GATEWAY_GROUP, "v1", "tcproutes"),
    "UDPRoute": Resource(GATEWAY_GROUP, "v1", "udproutes"),
    "BackendTLSPolicy": Resource(GATEWAY_GROUP, "v1", "backendtlspolicies"),
    "ListenerSet": Resource(GATEWAY_GROUP, "v1", "listenersets"),
    "BackendLBPolicy": Resource(GATEWAY_GROUP, "v1alpha2", "backendlbpolicies"),
}

Key = tuple[str, str, str]  # (kind, namespace, name)


def _key(st: ObjectStatus) -> Key:
    return (st.kind, st.namespace, st.name)


def _timeless(value: object) -> object:
    """``value`` without any lastTransitionTime: what "the status changed" compares."""
    if isinstance(value, Mapping):
        return {k: _timeless(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list | tuple):
        return [_timeless(v) for v in value]
    return value


def _has_entries(st: ObjectStatus) -> bool:
    shared = SHARED_LISTS.get(st.kind)
    return shared is not None and bool(st.status.get(shared.field))


class KubernetesStatusSink:
    """Writes statuses to the API server while active.  Create and use on one loop."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        controller_name: str,
        active: bool = False,
        max_in_flight: int = 4,
        attempts: int = 5,
        backoff: float = 0.1,
        retry_after: float = 30.0,
        request_timeout: float = 10.0,
        resources: Mapping[str, Resource] | None = None,
        version_of: Callable[[str], str | None] | None = None,
        claimed: Callable[[], Iterable[Key]] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if max_in_flight < 1 or attempts < 1:
            raise ValueError("max_in_flight and attempts must be at least 1")
        self.api = CustomObjectsApi(api_client)
        self.controller_name = controller_name
        self.max_in_flight = max_in_flight
        self.attempts = attempts
        self.backoff = backoff
        self.retry_after = retry_after
        self.request_timeout = request_timeout
        self.resources: dict[str, Resource] = {**DEFAULT_RESOURCES, **(resources or {})}
        # The version the cluster serves of a kind (discovery; None: not served), asked
        # at each write so a CRD upgraded meanwhile is written at its new version.
        self.version_of = version_of
        # Routes and policies whose live status (the source's cache) holds an entry of
        # ours: those we no longer compute anything for get it removed, even when it
        # was written before this process started or while another replica led.
        self.claimed = claimed
        self._rng = rng
        self._active = active
        self._closed = False
        # The newest status of every object (and tombstones: our entries to remove).
        self._latest: dict[Key, ObjectStatus] = {}
        # What the API server holds for each object, as far as we know (timeless form).
        self._synced: dict[Key, object] = {}
        # Objects whose status we no longer compute but which still hold our entries.
        self._tombstones: set[Key] = set()
        self._pending: dict[Key, None] = {}  # insertion-ordered set
        self._in_flight: set[Key] = set()
        self._retries: dict[Key, asyncio.TimerHandle] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._unserved: set[str] = set()  # kinds logged once as not served
        self.stats: dict[str, int] = {
            "gets": 0,
            "patches": 0,
            "unchanged": 0,
            "conflicts": 0,
            "errors": 0,
            "gone": 0,
        }

    # -- the seam ---------------------------------------------------------------------
    def publish(self, statuses: Sequence[ObjectStatus]) -> None:
        fresh = {_key(st): st for st in statuses}
        self._tombstones -= fresh.keys()  # computed again: a status like any other
        for key, before in self._latest.items():
            if key in fresh:
                continue
            if key in self._tombstones:
                fresh[key] = before  # our entries are not out yet
            elif _has_entries(before):
                # A route or policy we reported on and no longer compute anything for:
                # our entries come out of its list (a tombstone: the object, no entries).
                shared = SHARED_LISTS[before.kind]
                fresh[key] = replace(before, status={shared.field: []})
                self._tombstones.add(key)
        self._latest = fresh
        self._adopt_claimed()
        for key, st in fresh.items():
            if self._synced.get(key) != _timeless(st.status):
                self._enqueue(key)

    async def close(self) -> None:
        self._closed = True
        self._active = False
        await self._stop_workers()

    # -- leadership -------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._active

    def set_active(self, active: bool) -> None:
        """Start (full resync) or stop writing."""
        if self._closed or active == self._active:
            return
        self._active = active
        if active:
            # What another leader wrote meanwhile is unknown: read and compare everything.
            self._synced.clear()
            self._adopt_claimed()
            for key in self._latest:
                self._enqueue(key)
        else:
            self._pending.clear()
            for handle in self._retries.values():
                handle.cancel()
            self._retries.clear()
            for task in self._workers:
                task.cancel()
            self._workers.clear()
            self._in_flight.clear()
            self._idle.set()

    def _adopt_claimed(self) -> None:
        if self.claimed is None:
            return
        for key in self.claimed():
            kind, namespace, name = key
            shared = SHARED_LISTS.get(kind)
            if shared is None or key in self._latest:
                continue
            self._latest[key] = ObjectStatus(
                api_version=f"{GATEWAY_GROUP}/v1",
                kind=kind,
                namespace=namespace,
                name=name,
                generation=0,  # no conditions of ours are written: only removed
                status={shared.field: []},
            )
            self._tombstones.add(key)

    async def wait_idle(self) -> None:
        """Until nothing is queued or being synced (tests, and a graceful stop)."""
        while self._pending or self._in_flight:
            self._idle.clear()
            await self._idle.wait()

    def state(self) -> dict[str, object]:
        return {
            "active": self._active,
            "queued": len(self._pending),
            "inFlight": len(self._in_flight),
            **self.stats,
        }

    # -- the queue --------------------------------------------------------------------
    def _enqueue(self, key: Key) -> None:
        if not self._active or self._closed:
            return
        handle = self._retries.pop(key, None)
        if handle is not None:
            handle.cancel()
        self._pending[key] = None
        self._idle.clear()
        self._wake.set()
        while len(self._workers) < self.max_in_flight:
            task = asyncio.get_running_loop().create_task(self._worker())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _next(self) -> Key | None:
        for key in self._pending:
            if key not in self._in_flight:
                del self._pending[key]
                return key
        return None

    async def _worker(self) -> None:
        while self._active:
            key = self._next()
            if key is None:
                if not self._in_flight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._in_flight.add(key)
            try:
                ok = await self._sync(key)
            finally:
                self._in_flight.discard(key)
                if self._pending:
                    self._wake.set()  # a key published while it was in flight
                elif not self._in_flight:
                    self._idle.set()
            if not ok and self._active:
                self._retry_later(key)

    def _retry_later(self, key: Key) -> None:
        if key in self._retries:
            return
        loop = asyncio.get_running_loop()

        def again() -> None:
            self._retries.pop(key, None)
            self._enqueue(key)

        self._retries[key] = loop.call_later(self.retry_after, again)

    async def _stop_workers(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pending.clear()
        self._in_flight.clear()
        self._idle.set()

    # -- one object -------------------------------------------------------------------
    async def _sync(self, key: Key) -> bool:
        """Read, merge, patch; True when the API server holds our status (or the object
        is gone), False when it should be tried again later."""
        kind, namespace, name = key
        resource = self._resource(kind)
        if resource is None:
            if kind not in self._unserved:
                self._unserved.add(kind)
                log.warning(
                    "status: the API server does not serve %s; its status is not written", kind
                )
            return True
        for attempt in range(self.attempts):
            st = self._latest.get(key)
            if st is None or not self._active:
                return True
            try:
                live = await self._get(resource, namespace, name)
                body = status_patch(st, live, controller_name=self.controller_name)
                if body is None:
                    self.stats["unchanged"] += 1
                else:
                    if not self._active:  # lost the lease while reading
                        return True
                    await self._patch(resource, namespace, name, body)
                    self.stats["patches"] += 1
                    log.info("status: patched %s %s", kind, _name(namespace, name))
                self._synced[key] = _timeless(st.status)
                self._forget_tombstone(key, st)
                return True
            except ApiException as exc:
                if exc.status == 404:
                    self.stats["gone"] += 1
                    self._synced.pop(key, None)
                    self._forget_tombstone(key, st)
                    return True
                if exc.status == 409:
                    self.stats["conflicts"] += 1
                    reason = "conflict (written meanwhile)"
                else:
                    self.stats["errors"] += 1
                    reason = api_error(exc)
            except Exception as exc:
                # Timeouts, refused connections (aiohttp.ClientError), a body that is not
                # JSON: retried like a conflict; nothing may end the worker.
                self.stats["errors"] += 1
                reason = f"{type(exc).__name__}: {exc}"
            log.info(
                "status: %s %s: %s (attempt %d of %d)",
                kind,
                _name(namespace, name),
                reason,
                attempt + 1,
                self.attempts,
            )
            if attempt + 1 < self.attempts:
                # Exponential backoff with full jitter in [0.5, 1.5) of the step.
                await asyncio.sleep(self.backoff * (2**attempt) * (0.5 + self._rng()))
        log.warning(
            "status: %s %s not written after %d attempts; trying again in %.0fs",
            kind,
            _name(namespace, name),
            self.attempts,
            self.retry_after,
        )
        return False

    def _resource(self, kind: str) -> Resource | None:
        resource = self.resources.get(kind)
        if resource is None or self.version_of is None:
            return resource
        version = self.version_of(kind)
        return None if version is None else replace(resource, version=version)

    def _forget_tombstone(self, key: Key, st: ObjectStatus | None) -> None:
        if key in self._tombstones and st is not None and self._latest.get(key) is st:
            # Our entries are out; nothing more to say about this object.
            self._tombstones.discard(key)
            del self._latest[key]
            self._synced.pop(key, None)

    async def _get(self, r: Resource, namespace: str, name: str) -> Mapping[str, object]:
        self.stats["gets"] += 1
        result: Any
        if r.namespaced:
            result = await self.api.get_namespaced_custom_object_status(
                r.group,
                r.version,
                namespace,
                r.plural,
                name,
                _request_timeout=self.request_timeout,
            )
        else:
            result = await self.api.get_cluster_custom_object_status(
                r.group, r.version, r.plural, name, _request_timeout=self.request_timeout
            )
        if not isinstance(result, Mapping):
            raise ValueError(f"the API server answered a {type(result).__name__}, not an object")
        return result

    async def _patch(
        self, r: Resource, namespace: str, name: str, body: Mapping[str, object]
    ) -> None:
        if r.namespaced:
            await self.api.patch_namespaced_custom_object_status(
                r.group,
                r.version,
                namespace,
                r.plural,
                name,
                body,
                # Without it the client picks json-patch for a dict body; the stubs
                # omit this keyword the generated method reads.
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                _request_timeout=self.request_timeout,
            )
        else:
            await self.api.patch_cluster_custom_object_status(
                r.group,
                r.version,
                r.plural,
                name,
                body,
                # Without it the client picks json-patch for a dict body; the stubs
                # omit this keyword the generated method reads.
                _content_type=MERGE_PATCH,  # type: ignore[call-arg]
                _request_timeout=self.request_timeout,
            )


def _name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name
