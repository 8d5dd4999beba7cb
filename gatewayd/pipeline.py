"""The one-way configuration flow: source -> model -> status -> compiled snapshot.

The pipeline keeps what must survive a reload (object generations, Gateway addresses,
the statuses' condition times, the snapshot generation) and nothing else.  It runs off
the hot path; the data plane only ever sees the ``Snapshot`` it returns.
"""

from __future__ import annotations

import datetime
import errno
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gatewayd.collector import BuiltOutOfCollections, collection_paused
from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import ConfigLimits, LoadResult
from gatewayd.routing.control.bindings import ObjectStatus, Resolution
from gatewayd.routing.control.conditions import keep_transition_times
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.compiled import Snapshot

if TYPE_CHECKING:
    from gatewayd.runtime.sources import ConfigSource

DEFAULT_CONTROLLER = "gatewayd.dev/gateway-controller"
DEFAULT_ADDRESS_POOL = "127.0.10.0/24"


def is_local_address(address: str) -> bool:
    """True when this host can bind ``address`` (loopback range or an interface address)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL and exc.errno != errno.EINVAL
    return True


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    load: LoadResult
    resolution: Resolution
    snapshot: Snapshot


class ConfigPipeline:
    """Builds snapshots from a ``ConfigSource`` (or config paths: a ``FileSource``);
    remembers generations and addresses."""

    def __init__(
        self,
        source: ConfigSource | Sequence[str],
        *,
        controller_name: str = DEFAULT_CONTROLLER,
        address_pool: str = DEFAULT_ADDRESS_POOL,
        limits: ConfigLimits | None = None,
        freeze: bool = False,
    ) -> None:
        """``freeze``: keep each build out of the collector's walks
        (``BuiltOutOfCollections``): for a daemon, which builds a few times; not for a
        test suite or a one-shot command."""
        if isinstance(source, (list, tuple)):
            from gatewayd.runtime.sources.files import FileSource

            source = FileSource(source)
        assert not isinstance(source, Sequence)
        self.source: ConfigSource = source
        self.limits = limits or ConfigLimits()
        self.controller_name = controller_name
        self.address_pool = address_pool
        self._generations: Mapping[tuple[str, str, str], tuple[str, int]] | None = None
        self._addresses: Mapping[tuple[str, str], str] | None = None
        # (kind, namespace, name) -> the serving status: its conditions' times carry over.
        self._statuses: Mapping[tuple[str, str, str], Mapping[str, object]] = {}
        self.snapshot_generation = 0
        self.frozen = BuiltOutOfCollections() if freeze else None

    def build(self) -> Built:
        """Load, resolve and compile.  Raises ConfigPathError when the source cannot be
        read at all.

        Reads ``commit``'s state and nothing else of the pipeline, so the daemon runs it
        on a thread while one reload at a time commits on the event loop."""
        with collection_paused():
            built = self._build()
            if self.frozen is not None:
                self.frozen.end()
            return built

    def _build(self) -> Built:
        loaded = self.source.load(self._generations, self.limits)
        resolution = resolve(
            loaded.config,
            controller_name=self.controller_name,
            address_pool=self.address_pool,
            previous_addresses=self._addresses,
            is_local_address=is_local_address,
            now=utc_now(),
        )
        resolution = replace(resolution, statuses=self._keep_times(resolution.statuses))
        snapshot = compile_snapshot(resolution, generation=self.snapshot_generation + 1)
        return Built(load=loaded, resolution=resolution, snapshot=snapshot)

    def commit(self, built: Built) -> None:
        """Remember a build that is now serving (its generations and addresses)."""
        self._generations = built.load.generations
        self._addresses = built.resolution.gateway_addresses
        self._statuses = {
            (s.kind, s.namespace, s.name): s.status for s in built.resolution.statuses
        }
        self.snapshot_generation = built.snapshot.generation

    def _keep_times(self, statuses: tuple[ObjectStatus, ...]) -> tuple[ObjectStatus, ...]:
        """``statuses`` with the serving statuses' ``lastTransitionTime`` on every condition
        whose status did not change (metav1.Condition): a reload re-resolves everything
        at a new ``now``, and only a transition may show a new time."""
        if not self._statuses:
            return statuses
        kept: list[ObjectStatus] = []
        for status in statuses:
            before = self._statuses.get((status.kind, status.namespace, status.name))
            if before is not None:
                status = replace(status, status=keep_transition_times(status.status, before))
            kept.append(status)
        return tuple(kept)
