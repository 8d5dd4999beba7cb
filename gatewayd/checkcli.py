"""`gatewayd check`: validate a configuration and print every object's status."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from gatewayd.pipeline import ConfigPipeline
from gatewayd.routing.config.load import ConfigLimits, ConfigPathError
from gatewayd.routing.control.bindings import ObjectStatus

if TYPE_CHECKING:
    from gatewayd.runtime.sources import ConfigSource
    from gatewayd.runtime.sources.kubernetes import KubernetesSource

CONDITION_TYPES = ("Accepted", "Programmed", "ResolvedRefs")


def _conditions(status: Mapping[str, object]) -> list[Mapping[str, object]]:
    raw = status.get("conditions")
    return [c for c in raw if isinstance(c, Mapping)] if isinstance(raw, list) else []


def _rows_for(obj: ObjectStatus) -> list[tuple[str, list[Mapping[str, object]]]]:
    """(label, conditions) rows: the object itself, then each listener or route parent."""
    ref = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
    rows: list[tuple[str, list[Mapping[str, object]]]] = []
    if obj.kind in ("GatewayClass", "Gateway"):
        rows.append((f"{obj.kind} {ref}", _conditions(obj.status)))
    listeners = obj.status.get("listeners")
    if isinstance(listeners, list):
        rows.extend(
            (f"  listener {listener.get('name')}", _conditions(listener))
            for listener in listeners
            if isinstance(listener, Mapping)
        )
    parents = obj.status.get("parents")
    if isinstance(parents, list):
        for parent in parents:
            if not isinstance(parent, Mapping):
                continue
            pref = parent.get("parentRef")
            target = ""
            if isinstance(pref, Mapping):
                target = f"{pref.get('namespace', obj.namespace)}/{pref.get('name')}"
                if pref.get("sectionName"):
                    target += f"/{pref.get('sectionName')}"
            rows.append((f"{obj.kind} {ref} -> {target}", _conditions(parent)))
    return rows


def _cell(conditions: Iterable[Mapping[str, object]], ctype: str) -> str:
    for c in conditions:
        if c.get("type") == ctype:
            status = str(c.get("status"))
            return status if status == "True" else f"{status}({c.get('reason')})"
    return "-"


def format_check(statuses: Sequence[ObjectStatus]) -> tuple[str, bool]:
    """The table, and whether anything is not accepted."""
    table = [("OBJECT", *(t.upper() for t in CONDITION_TYPES))]
    rejected = False
    for obj in statuses:
        for label, conditions in _rows_for(obj):
            cells = [_cell(conditions, t) for t in CONDITION_TYPES]
            if cells[0].startswith("False"):
                rejected = True
            table.append((label, *cells))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    ]
    return "\n".join(lines) + "\n", rejected


def check_main(
    paths: Sequence[str] | ConfigSource,
    *,
    controller_name: str,
    address_pool: str,
    out: TextIO | None = None,
    limits: ConfigLimits | None = None,
) -> int:
    out = out or sys.stdout
    pipeline = ConfigPipeline(
        paths, controller_name=controller_name, address_pool=address_pool, limits=limits
    )
    try:
        built = pipeline.build()
    except ConfigPathError as exc:
        print(f"error: {exc}", file=out)
        return 1
    text, rejected = format_check(built.resolution.statuses)
    out.write(text)
    problems = [*built.load.problems, *built.resolution.problems]
    for notice in built.load.notices:
        print(f"notice: {notice}", file=out)
    if problems:
        print(f"\n{len(problems)} problem(s):", file=out)
        for problem in problems:
            print(str(problem), file=out)
    return 1 if problems or rejected else 0


# How long ``check --kubernetes`` waits for the API server to answer every list.
KUBE_SYNC_TIMEOUT = 30.0


def check_kubernetes(
    source: KubernetesSource,
    *,
    controller_name: str,
    address_pool: str,
    out: TextIO | None = None,
    limits: ConfigLimits | None = None,
) -> int:
    """``check --kubernetes``: list every kind once, then check as for files."""
    import asyncio

    from gatewayd.runtime.kube.client import KubeConfigError

    out = out or sys.stdout

    async def sync() -> None:
        try:
            async with asyncio.timeout(KUBE_SYNC_TIMEOUT):
                await source.ready()
        finally:
            await source.close()

    try:
        asyncio.run(sync())
    except KubeConfigError as exc:
        print(f"error: {exc}", file=out)
        return 1
    except TimeoutError:
        print(
            f"error: {source.describe()}: no complete list within {KUBE_SYNC_TIMEOUT:.0f}s",
            file=out,
        )
        return 1
    return check_main(
        source, controller_name=controller_name, address_pool=address_pool, out=out, limits=limits
    )
