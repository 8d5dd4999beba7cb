"""An informer: list, then watch from the list's resourceVersion, into a cache.

- The list is paged (``limit``/``continue``) and each page bounded in bytes; a watch
  line (one event) is bounded too (``KubeLimits``): an over-large one is refused with a
  log line and the informer relists later, memory never grows past the bound.
- The watch asks for bookmarks (``allowWatchBookmarks``), so its resourceVersion stays
  fresh in a quiet cluster; a watch that ends (server timeout, dropped connection)
  re-watches from the last resourceVersion seen; 410 Gone (as the HTTP status or as an
  ERROR event) relists.
- Errors back off exponentially with jitter: 0.5 s doubling to 30 s, reset by a list
  or a watch event that succeeded.
- The cache is a dict replaced entry by entry on the event loop; ``items()`` copies it
  under a lock, so the build thread reads a consistent copy.  Objects are never mutated
  in place, only replaced.
- ``keep(obj)``: False keeps only the object's name and resourceVersion (a stub), for
  Secrets and ConfigMaps nothing references; ``fetch`` gets one by name when it becomes
  referenced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from gatewayd.runtime.kube.client import MIB, ApiError, KubeClient, TooLarge
from gatewayd.runtime.kube.kinds import WatchedKind

log = logging.getLogger("gatewayd.kube")

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeLimits:
    max_event_bytes: int = 16 * MIB  # one watch line; etcd stores objects up to 1.5 MiB
    max_page_bytes: int = 64 * MIB  # one list page of ``page_size`` objects
    page_size: int = 500
    max_objects: int = 100_000  # per kind; beyond it the kind is refused (logged)
    watch_timeout: int = 300  # timeoutSeconds asked of the server for each watch
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in
    [d/2, d] with d = min(initial * 2**n, max)."""

    def __init__(
        self, initial: float, maximum: float, rand: Callable[[], float] = random.random
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.rand = rand
        self.failures = 0

    def next(self) -> float:
        delay = min(self.initial * 2.0**self.failures, self.maximum)
        self.failures = min(self.failures + 1, 32)
        return delay / 2 + self.rand() * delay / 2

    def reset(self) -> None:
        self.failures = 0


class Gone(Exception):
    """The resourceVersion is too old (410): relist."""


class Informer:
    def __init__(
        self,
        client: KubeClient,
        kind: WatchedKind,
        version: str,
        on_change: Callable[[], None],
        *,
        limits: KubeLimits,
        keep: Callable[[Obj], bool] | None = None,
        watch: bool = True,
    ) -> None:
        self.client = client
        self.watch = watch  # False: list once and stop (gatewayd check)
        self.kind = kind
        self.version = version
        self.on_change = on_change
        self.limits = limits
        self.keep = keep
        self.synced = asyncio.Event()
        self.resource_version = ""
        self._store: dict[Key, Obj] = {}
        self._lock = threading.Lock()
        self.backoff = Backoff(limits.backoff_initial, limits.backoff_max)
        self.lists = 0  # how many lists completed (tests, logs)
        self.watches = 0  # how many watches were opened

    # -- reading (any thread) --------------------------------------------------------
    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._store.values())

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._store.get(key)

    # -- keeping -----------------------------------------------------------------------
    def _stored(self, obj: Obj) -> Obj:
        if self.keep is None or self.keep(obj):
            return obj
        md = obj.get("metadata") or {}
        return {
            "metadata": {
                "name": md.get("name"),
                "namespace": md.get("namespace"),
                "resourceVersion": md.get("resourceVersion"),
            },
            "stub": True,
        }

    def restrip(self) -> list[Key]:
        """Apply ``keep`` again to every entry: drop the data of those no longer kept;
        the keys of stubs now wanted (to ``fetch``)."""
        wanted: list[Key] = []
        with self._lock:
            for key, obj in list(self._store.items()):
                if obj.get("stub"):
                    if self.keep is not None and self.keep(obj):
                        wanted.append(key)
                else:
                    self._store[key] = self._stored(obj)
        return wanted

    async def fetch(self, key: Key) -> bool:
        """GET one object by name into the cache (a stub that became wanted)."""
        path = self.kind.object_path(self.version, key[0], key[1])
        try:
            obj = await self.client.get_json(path, max_bytes=self.limits.max_event_bytes)
        except (ApiError, TooLarge) as exc:
            log.warning("%s %s/%s: get failed: %s", self.kind.kind, key[0], key[1], exc)
            return False
        with self._lock:
            current = self._store.get(key)
            if current is not None and current.get("stub"):
                self._store[key] = self._stored(obj)
        return True

    # -- list and watch ----------------------------------------------------------------
    async def run(self) -> None:
        """List and watch until cancelled (``watch`` False: until listed once)."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                if not self.watch:
                    return
                await self._watch()
            except Gone:
                log.info(
                    "%s: resourceVersion %s expired (410): relisting",
                    self.kind.kind,
                    self.resource_version,
                )
                need_list = True
            except (ApiError, TooLarge, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    need_list = True
                    continue
                if isinstance(exc, TooLarge):
                    need_list = True  # an event was lost: only a relist is complete
                wait = self.backoff.next()
                log.warning("%s %s: %s; retrying in %.1fs", self.kind.kind, self.version, exc, wait)
                await asyncio.sleep(wait)
            except Exception:  # a bug must not stop the informer for good
                wait = self.backoff.next()
                log.exception("%s %s: relisting in %.1fs", self.kind.kind, self.version, wait)
                need_list = True
                await asyncio.sleep(wait)

    async def _list(self) -> None:
        path = self.kind.path(self.version)
        items: dict[Key, Obj] = {}
        cont = ""
        while True:
            query = [("limit", str(self.limits.page_size))]
            if cont:
                query.append(("continue", cont))
            page = await self.client.get_json(path, query, max_bytes=self.limits.max_page_bytes)
            for obj in page.get("items") or ():
                if isinstance(obj, dict):
                    items[_key(obj)] = self._stored(obj)
            if len(items) > self.limits.max_objects:
                raise TooLarge(
                    f"more than {self.limits.max_objects} objects: refused (the limit bounds "
                    "memory; gatewayd reads no objects of this kind until there are fewer)"
                )
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                self.resource_version = str(meta.get("resourceVersion") or "")
                break
        with self._lock:
            self._store = items
        self.lists += 1
        self.backoff.reset()
        self.synced.set()
        self.on_change()

    async def _watch(self) -> None:
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.limits.watch_timeout)),
        ]
        if self.resource_version:
            query.append(("resourceVersion", self.resource_version))
        resp = await self.client.stream(
            self.kind.path(self.version), query, idle_seconds=self.limits.watch_timeout + 30
        )
        self.watches += 1
        self.backoff.reset()  # the server answered: a later drop starts from 0.5 s again
        async with resp:
            buffer = bytearray()
            try:
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while True:
                        end = buffer.find(b"\n")
                        if end < 0 or end > self.limits.max_event_bytes:
                            break
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        if line.strip():
                            self._event(line)
                    # (A chunk is what one socket read returned: at most 64 KiB or so.)
                    if len(buffer) > self.limits.max_event_bytes:
                        raise TooLarge(
                            f"a watch event over {self.limits.max_event_bytes} bytes: refused"
                        )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise ApiError(0, f"watch dropped: {type(exc).__name__}: {exc}") from exc
        # The server ended the watch (timeoutSeconds) or the connection closed cleanly:
        # watch again from the last resourceVersion.

    def _event(self, line: bytes) -> None:
        event = json.loads(line)
        if not isinstance(event, dict):
            raise ValueError("a watch event that is not a JSON object")
        etype = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"a watch event without an object: {etype}")
        if etype == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiError(int(obj.get("code") or 0), f"watch error: {obj.get('message')}")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        key = _key(obj)
        with self._lock:
            if etype in ("ADDED", "MODIFIED"):
                if key not in self._store and len(self._store) >= self.limits.max_objects:
                    log.error(
                        "%s %s/%s: not kept: already %d objects of this kind (the limit)",
                        self.kind.kind,
                        key[0],
                        key[1],
                        self.limits.max_objects,
                    )
                else:
                    self._store[key] = self._stored(obj)
            elif etype == "DELETED":
                self._store.pop(key, None)
            else:
                raise ValueError(f"unknown watch event type {etype!r}")
        if rv:
            self.resource_version = rv
        self.backoff.reset()
        self.on_change()


def _key(obj: Obj) -> Key:
    md = obj.get("metadata") or {}
    return (str(md.get("namespace") or ""), str(md.get("name") or ""))
