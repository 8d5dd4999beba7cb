"""`gatewayd check`: validate a configuration and print every object's status.

Exit 1 when anything would not be served as written, with one line per reason::

    routes.yaml:2: HTTPRoute default/web: parent default/edge: ResolvedRefs=False
        BackendNotFound: rules[0].backendRefs[0]: backendRef Service default/api not found

(one line in the output), warnings (exit unaffected) for objects of kinds gatewayd does
not read and for GatewayClasses of other controllers.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from gatewayd.pipeline import Built, ConfigPipeline
from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import ConfigLimits, ConfigPathError
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.runtime.listening import not_served_reason

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


# At most this many "skipped" warnings, one per object; the per-kind counts follow.
MAX_SKIPPED_WARNINGS = 50

# The conditions whose status False means the object (or that listener, or the route on
# that parent) is not served, or not as written.
_SERVING_CONDITIONS = ("Accepted", "Programmed", "ResolvedRefs")


def _sources(config: m.Config) -> dict[tuple[str, str, str], m.Source]:
    """(kind, namespace, name) -> the file and document each object came from."""
    found: dict[tuple[str, str, str], m.Source] = {}
    for kind, objects in (
        ("GatewayClass", config.gateway_classes),
        ("Gateway", config.gateways),
        ("HTTPRoute", config.http_routes),
        ("GRPCRoute", config.grpc_routes),
        ("TLSRoute", config.tls_routes),
        ("BackendTLSPolicy", config.backend_tls_policies),
    ):
        for obj in objects:
            meta = obj.meta
            if meta.source is not None:
                found[(kind, meta.namespace, meta.name)] = meta.source
    for record in config.rejected:
        if record.meta.source is not None:
            found.setdefault(
                (record.kind.value, record.meta.namespace, record.meta.name), record.meta.source
            )
    return found


def _failing(conditions: object) -> list[str]:
    """``Type=False Reason: message`` for each serving condition that is False."""
    out = []
    for c in conditions if isinstance(conditions, list | tuple) else ():
        if not isinstance(c, Mapping) or c.get("status") != "False":
            continue
        if c.get("type") in _SERVING_CONDITIONS:
            message = str(c.get("message") or "").replace("\n", " ")
            out.append(f"{c.get('type')}=False {c.get('reason')}: {message}")
    return out


def _ref_target(ref: object, namespace: str) -> tuple[str, str, str]:
    if not isinstance(ref, Mapping):
        return ("", "", "")
    kind = str(ref.get("kind") or "Gateway")
    return (kind, str(ref.get("namespace") or namespace), str(ref.get("name") or ""))


def not_served_lines(built: Built) -> list[str]:
    """``file:doc-index: Kind ns/name: [listener|parent X: ]Type=False Reason: message``
    for every condition that keeps an object from being served.

    An object refused at load is reported by its problem line alone, and a route on a
    refused Gateway only in one line under that problem (``format_problems``)."""
    sources = _sources(built.load.config)
    refused = {(p.kind, p.namespace, p.name) for p in built.load.problems if p.kind}
    lines: list[str] = []
    for obj in built.resolution.statuses:
        key = (obj.kind, obj.namespace, obj.name)
        if key in refused:
            continue
        source = sources.get(key)
        ref = f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name
        head = f"{source}: {obj.kind} {ref}: " if source else f"{obj.kind} {ref}: "
        lines.extend(head + text for text in _failing(obj.status.get("conditions")))
        for listener in _entries(obj.status.get("listeners")):
            name = listener.get("name")
            lines.extend(
                f"{head}listener {name}: {t}" for t in _failing(listener.get("conditions"))
            )
        for field, ref_key in (("parents", "parentRef"), ("ancestors", "ancestorRef")):
            for entry in _entries(obj.status.get(field)):
                target = _ref_target(entry.get(ref_key), obj.namespace)
                if target in refused:
                    continue  # said under the refused Gateway's problem
                label = f"{field[:-1]} {'/'.join(target[1:])}"
                lines.extend(f"{head}{label}: {t}" for t in _failing(entry.get("conditions")))
    return lines


def _entries(value: object) -> list[Mapping[str, object]]:
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []


def _dependents(built: Built) -> dict[tuple[str, str, str], list[str]]:
    """Refused Gateway -> the routes whose parentRef names it (not served either)."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for obj in built.resolution.statuses:
        for entry in _entries(obj.status.get("parents")):
            target = _ref_target(entry.get("parentRef"), obj.namespace)
            out.setdefault(target, []).append(f"{obj.kind} {obj.namespace}/{obj.name}")
    return out


def format_problems(built: Built) -> list[str]:
    """The load and resolution problems, each refused Gateway followed by one line naming
    the routes that attach to it."""
    dependents = _dependents(built)
    lines: list[str] = []
    told: set[tuple[str, str, str]] = set()
    for problem in built.load.problems:
        lines.append(str(problem))
        key = (problem.kind, problem.namespace, problem.name)
        if key in dependents and key not in told:
            told.add(key)
            lines.append(f"  so not served either: {', '.join(dependents[key])}")
    lines.extend(str(p) for p in built.resolution.problems)
    return lines


def warnings(built: Built, controller_name: str) -> list[str]:
    """Skipped objects (file, kind and name) and GatewayClasses of other controllers."""
    skipped = built.load.skipped
    lines = [f"warning: {p}" for p in skipped[:MAX_SKIPPED_WARNINGS]]
    if len(skipped) > MAX_SKIPPED_WARNINGS:
        lines.append(f"warning: ... and {len(skipped) - MAX_SKIPPED_WARNINGS} more skipped")
    lines.extend(f"notice: {notice}" for notice in built.load.notices)
    others = [
        gc for gc in built.load.config.gateway_classes if gc.controller_name != controller_name
    ]
    if others:
        named = ", ".join(f"{gc.meta.name} ({gc.controller_name})" for gc in others)
        lines.append(
            f"warning: GatewayClasses of other controllers, not served by "
            f"{controller_name} (--controller-name): {named}"
        )
    return lines


def check_main(
    paths: Sequence[str] | ConfigSource,
    *,
    controller_name: str,
    address_pool: str,
    out: TextIO | None = None,
    limits: ConfigLimits | None = None,
) -> int:
    """Print the status table, warnings and every reason something is not served; 1 when
    anything is not served (or nothing is), else 0."""
    out = out or sys.stdout
    pipeline = ConfigPipeline(
        paths, controller_name=controller_name, address_pool=address_pool, limits=limits
    )
    try:
        built = pipeline.build()
    except ConfigPathError as exc:
        print(f"error: {exc}", file=out)
        return 1
    text, _rejected = format_check(built.resolution.statuses)
    out.write(text)
    for line in warnings(built, controller_name):
        print(line, file=out)
    errors = [*format_problems(built), *not_served_lines(built)]
    if not errors and not built.snapshot.ports and built.snapshot.mesh is None:
        errors.append(
            not_served_reason(
                built.load.config,
                built.resolution.statuses,
                controller_name=controller_name,
                bind_failures={},
                name_others=False,  # the warning above names them
            ).replace("no listener is served", "nothing would be served", 1)
        )
    if errors:
        count = sum(1 for e in errors if not e.startswith("  "))
        print(f"\n{count} error(s): not served as written", file=out)
        for line in errors:
            print(line, file=out)
    return 1 if errors else 0


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
