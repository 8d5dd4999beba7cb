"""``KubernetesSource``: the Gateway API objects of a cluster, listed and watched.

One informer per kind the cluster serves (``runtime/kube``); every change calls the
daemon's ``changed()``, which debounces and rebuilds.  ``load`` turns the informers'
caches into the same typed model as files (``load_objects``), each object named
``k8s:Kind/namespace/name`` in problems and logs.

The API server has already admitted these objects, so an object gatewayd finds
invalid is reported (in its own status, and the log) and skipped, and the rest serves:
``skips_invalid``.  Fields gatewayd does not model are ignored (the cluster's CRDs may
be newer than gatewayd).

Kinds whose CRD is missing are logged once and read as empty; discovery runs again
every ``rediscover`` seconds, so a CRD installed later is picked up (and one removed
is dropped).

Secrets and ConfigMaps keep their data only while a Gateway or BackendTLSPolicy
references them (``kinds.Keep.REFERENCED``); when a reference appears, the object is
fetched by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import (
    ConfigLimits,
    ConfigPathError,
    Generations,
    LoadResult,
    load_objects,
)
from gatewayd.routing.config.loadcache import ObjectCache
from gatewayd.runtime.kube.client import ApiError, KubeClient, KubeConfigError, TooLarge, connect
from gatewayd.runtime.kube.discovery import discover
from gatewayd.runtime.kube.informer import Backoff, Informer, Key, KubeLimits, Obj
from gatewayd.runtime.kube.kinds import KINDS, Keep, WatchedKind

log = logging.getLogger("gatewayd.kube")

RefKey = tuple[str, str, str]  # (kind, namespace, name) of a referenced Secret/ConfigMap


class KubernetesSource:
    skips_invalid = True
    settle = 0.2  # a burst of watch events (kubectl apply -f dir/) makes one rebuild

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        limits: KubeLimits | None = None,
        rediscover: float = 60.0,
        kinds: tuple[WatchedKind, ...] = KINDS,
        watch: bool = True,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.context = context
        self.limits = limits or KubeLimits()
        self.rediscover = rediscover
        self.kinds = kinds
        self.watch = watch  # False: list every kind once (gatewayd check)
        self.client: KubeClient | None = None
        self.informers: dict[str, Informer] = {}
        self.versions: dict[str, str | None] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._discovery_task: asyncio.Task[None] | None = None
        self._fetches: set[asyncio.Task[bool]] = set()
        self._changed: Callable[[], None] | None = None
        self._referenced: frozenset[RefKey] = frozenset()
        self._missing_logged: set[str] = set()
        self._retiring: dict[str, tuple[Informer, asyncio.Task[None]]] = {}
        # Changes seen, and how many the last ``load`` had seen: a change between the
        # first load and ``run`` is reported when ``run`` starts.
        self._changes = 0
        # What the last load made of each object: a reload reads again only the objects
        # whose content changed (builds run one at a time: ``Daemon.load``).
        self.cache = ObjectCache()
        self._loaded_changes = -1

    def describe(self) -> str:
        if self.client is None:
            where = self.kubeconfig or "in-cluster configuration"
            return f"Kubernetes API ({where})"
        return f"Kubernetes API {self.client.cluster}"

    # -- connecting and syncing ------------------------------------------------------
    async def ready(self) -> None:
        """Connect, discover, start every informer and wait for their first lists.
        Raises KubeConfigError when there is no usable configuration; API errors are
        retried (with backoff) until the lists succeed."""
        if self.client is None:
            self.client = await connect(self.kubeconfig, self.context)
            log.info("Kubernetes API server %s", self.client.cluster)
        backoff = Backoff(self.limits.backoff_initial, self.limits.backoff_max)
        while True:
            try:
                await self._discover()
                break
            except (ApiError, TooLarge) as exc:
                wait = backoff.next()
                log.warning("discovery failed: %s; retrying in %.1fs", exc, wait)
                await asyncio.sleep(wait)
        if self._discovery_task is None and self.watch:
            self._discovery_task = asyncio.get_running_loop().create_task(self._rediscover())
        await asyncio.gather(*(i.synced.wait() for i in self.informers.values()))
        self._on_change()  # the references of the first lists: fetch what they need
        await asyncio.gather(*self._fetches)

    async def _discover(self) -> None:
        assert self.client is not None
        versions = await discover(self.client, self.kinds)
        started, stopped = [], []
        for wk in self.kinds:
            version = versions[wk.kind]
            current = self.informers.get(wk.kind)
            if current is not None and current.version != version:
                task = self._tasks.pop(wk.kind)
                del self.informers[wk.kind]
                if version is None:
                    task.cancel()
                    stopped.append(wk.kind)
                else:
                    # Another version now: the old cache serves until the new one listed.
                    self._retiring[wk.kind] = (current, task)
            if version is None:
                if wk.kind not in self._missing_logged:
                    self._missing_logged.add(wk.kind)
                    log.warning(
                        "%s: the cluster serves none of %s (CRD not installed?): read as "
                        "empty; looking again every %.0fs",
                        wk.kind,
                        ", ".join(wk.api_version(v) for v in wk.versions),
                        self.rediscover,
                    )
                continue
            self._missing_logged.discard(wk.kind)
            if wk.kind in self.informers:
                continue
            informer = Informer(
                self.client,
                wk,
                version,
                self._on_change,
                limits=self.limits,
                keep=self._keeper(wk) if wk.keep is Keep.REFERENCED else None,
                watch=self.watch,
            )
            self.informers[wk.kind] = informer
            self._tasks[wk.kind] = asyncio.get_running_loop().create_task(informer.run())
            started.append(f"{wk.kind} {wk.api_version(version)}")
        if started:
            log.info("watching %s", ", ".join(started))
        if stopped:
            log.info("no longer served: %s", ", ".join(stopped))
            self._on_change()
        self.versions = versions

    async def _rediscover(self) -> None:
        while True:
            await asyncio.sleep(self.rediscover)
            try:
                await self._discover()
            except (ApiError, TooLarge) as exc:
                log.warning("discovery failed: %s; keeping the kinds being watched", exc)

    def _keeper(self, wk: WatchedKind) -> Callable[[Obj], bool]:
        def keep(obj: Obj) -> bool:
            md = obj.get("metadata") or {}
            key = (wk.kind, str(md.get("namespace") or ""), str(md.get("name") or ""))
            return key in self._referenced

        return keep

    # -- changes -------------------------------------------------------------------
    async def run(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        if self._changes != self._loaded_changes:
            changed()
        await asyncio.Event().wait()

    def _on_change(self) -> None:
        self._changes += 1
        for kind, (_, task) in list(self._retiring.items()):
            successor = self.informers.get(kind)
            if successor is None or successor.synced.is_set():
                task.cancel()
                del self._retiring[kind]
        referenced = frozenset(self._references())
        if referenced != self._referenced:
            self._referenced = referenced
            for wk in self.kinds:
                informer = self.informers.get(wk.kind)
                if informer is None or wk.keep is not Keep.REFERENCED:
                    continue
                for key in informer.restrip():
                    self._fetch(informer, key)
        if self._changed is not None:
            self._changed()

    def _fetch(self, informer: Informer, key: Key) -> None:
        async def fetch() -> bool:
            done = await informer.fetch(key)
            self._on_change()
            return done

        task = asyncio.get_running_loop().create_task(fetch())
        self._fetches.add(task)
        task.add_done_callback(self._fetches.discard)

    def _references(self) -> Iterator[RefKey]:
        for kind in ("Gateway", "ListenerSet", "BackendTLSPolicy"):
            informer = self.informers.get(kind)
            if informer is None:
                continue
            for obj in informer.items():
                namespace = str((obj.get("metadata") or {}).get("namespace") or "")
                yield from secret_refs(obj.get("spec"), namespace)

    # -- loading (build thread) -----------------------------------------------------
    def load(self, previous: Generations | None, limits: ConfigLimits) -> LoadResult:
        if self.client is None:
            raise ConfigPathError("the Kubernetes source is not connected")
        self._loaded_changes = self._changes  # read before the caches: never too new
        # Missing kinds are not repeated here: discovery logged each once.
        return load_objects(self._objects(), previous=previous, cache=self.cache)

    def _objects(self) -> Iterator[tuple[m.Source, Mapping[str, Any]]]:
        for wk in self.kinds:
            informer = self.informers.get(wk.kind)
            if informer is not None and not informer.synced.is_set():
                retiring = self._retiring.get(wk.kind)
                informer = retiring[0] if retiring is not None else informer
            if informer is None:
                continue
            api_version = wk.api_version(informer.version)
            for obj in informer.items():
                if obj.get("stub"):
                    continue
                md = obj.get("metadata") or {}
                name = (
                    f"{md.get('namespace')}/{md.get('name')}" if wk.namespaced else md.get("name")
                )
                # List items carry no apiVersion/kind: the list's own are implied.
                yield (
                    m.Source(file=f"k8s:{wk.kind}/{name}", index=0),
                    {**obj, "apiVersion": api_version, "kind": wk.kind},
                )

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = [
            *self._tasks.values(),
            *self._fetches,
            *(task for _, task in self._retiring.values()),
        ]
        if self._discovery_task is not None:
            tasks.append(self._discovery_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.client is not None:
            await self.client.close()


_REF_KEYS = {"certificateRefs": "Secret", "caCertificateRefs": "ConfigMap"}


def secret_refs(spec: object, namespace: str) -> Iterator[RefKey]:
    """The Secrets and ConfigMaps a Gateway or BackendTLSPolicy spec references:
    ``certificateRefs`` (default kind Secret), ``caCertificateRefs`` (ConfigMap), and
    ``clientCertificateRef`` (Secret), wherever they appear in the spec."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key in _REF_KEYS and isinstance(value, list):
                for ref in value:
                    yield from _ref(ref, _REF_KEYS[key], namespace)
            elif key == "clientCertificateRef":
                yield from _ref(value, "Secret", namespace)
            else:
                yield from secret_refs(value, namespace)
    elif isinstance(spec, list):
        for item in spec:
            yield from secret_refs(item, namespace)


def _ref(ref: object, default_kind: str, namespace: str) -> Iterator[RefKey]:
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str):
        return
    if ref.get("group") not in (None, ""):
        return
    kind = ref.get("kind") or default_kind
    if kind in ("Secret", "ConfigMap"):
        yield (str(kind), str(ref.get("namespace") or namespace), ref["name"])


__all__ = ["KubeConfigError", "KubernetesSource", "secret_refs"]
