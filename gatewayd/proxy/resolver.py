"""Connect-time DNS resolution of FQDN endpoints, with a short TTL cache.

EndpointSlice (discovery.k8s.io/v1, AddressType): "FQDN: Represents a Fully Qualified
Domain Name."  The addresses of such a slice are names (e.g. the service names of a
docker compose network).  The upstream pool resolves one only when it opens a new
connection (a pool miss), so a request on a pooled keep-alive connection costs no lookup
at all, and a pool miss within ``ttl`` seconds of the last lookup costs a dict lookup.
That is the behaviour of an Envoy STRICT_DNS cluster, which re-resolves its names every
``dns_refresh_rate`` (5 s by default), without a timer per name: a name nobody connects
to is never resolved.

``loop.getaddrinfo`` runs in the loop's thread pool, so a slow DNS server delays only
the connects waiting for that name; concurrent misses for one name share one lookup.
getaddrinfo does not return the records' TTL, hence the fixed one.  Failures are cached
for ``negative_ttl`` so a missing name does not send every request to the DNS server;
the caller turns the ``socket.gaierror`` into a 503 like any failed connect.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

# (family, sockaddr) of getaddrinfo, in its order (RFC 6724 preference).
Target = tuple[int, tuple[Any, ...]]
Lookup = Callable[[str, int], Awaitable[list[Target]]]

DEFAULT_TTL = 5.0  # Envoy's dns_refresh_rate default
DEFAULT_NEGATIVE_TTL = 1.0
MAX_ENTRIES = 4096  # above this, expired entries are dropped when a new one is stored


class Resolver:
    """Resolves ``(host, port)`` to connect targets, caching answers for ``ttl`` seconds."""

    __slots__ = ("_cache", "_clock", "_inflight", "_lookup", "lookups", "negative_ttl", "ttl")

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        lookup: Lookup | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._lookup: Lookup = lookup if lookup is not None else _getaddrinfo
        self._clock = clock
        # (host, port) -> (expires, targets, or the (errno, message) of a failure)
        self._cache: dict[tuple[str, int], tuple[float, list[Target] | tuple[int, str]]] = {}
        self._inflight: dict[tuple[str, int], asyncio.Task[list[Target]]] = {}
        self.lookups = 0  # lookups started (tests and /config_dump read it)

    async def resolve(self, host: str, port: int) -> list[Target]:
        """Targets for ``host:port``; raises ``socket.gaierror`` when the name does not
        resolve (now, or at a lookup less than ``negative_ttl`` ago)."""
        key = (host, port)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            answer = hit[1]
            if isinstance(answer, tuple):
                raise socket.gaierror(*answer)
            return answer
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._resolve(key))
            self._inflight[key] = task  # the reference to the task lives here until done
            task.add_done_callback(functools.partial(self._done, key))
        # shield: a caller giving up (connect timeout, client gone) must not cancel the
        # lookup the other callers of this name wait for; its answer still gets cached.
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, int], task: asyncio.Task[list[Target]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # Every caller may have given up already: mark the outcome as seen so asyncio
        # does not log "exception was never retrieved" for a name that did not resolve.
        if not task.cancelled():
            task.exception()

    async def _resolve(self, key: tuple[str, int]) -> list[Target]:
        self.lookups += 1
        try:
            targets = await self._lookup(*key)
            if not targets:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        except socket.gaierror as exc:
            code = exc.errno if isinstance(exc.errno, int) else socket.EAI_FAIL
            self._store(key, self.negative_ttl, (code, exc.strerror or str(exc)))
            raise
        self._store(key, self.ttl, targets)
        return targets

    def _store(
        self, key: tuple[str, int], ttl: float, answer: list[Target] | tuple[int, str]
    ) -> None:
        now = self._clock()
        cache = self._cache
        if len(cache) >= MAX_ENTRIES:
            for stale in [k for k, (expires, _) in cache.items() if expires <= now]:
                del cache[stale]
        cache[key] = (now + ttl, answer)

    def cached(self, host: str, port: int) -> list[Target] | None:
        """The unexpired targets of ``host:port``, without resolving (admin, tests)."""
        hit = self._cache.get((host, port))
        if hit is None or hit[0] <= self._clock() or isinstance(hit[1], tuple):
            return None
        return hit[1]

    def close(self) -> None:
        """Cancel the lookups still running (daemon shutdown)."""
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()


async def _getaddrinfo(host: str, port: int) -> list[Target]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    out: list[Target] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        target = (int(family), tuple(sockaddr))
        if target not in out:
            out.append(target)
    return out
