"""``gatewayd status``: show a running daemon's Gateway API status as kubectl-like tables.

Reads ``GET /status`` from the admin server (``{"items": [ObjectStatus.as_item(), ...]}``,
Kubernetes JSON shape) and prints one table per kind::

    gatewayd status                  # every non-empty section
    gatewayd status gateways --admin-address 127.0.0.1:9901
    gatewayd status httproutes -o json          # or -o yaml, -o wide
    gatewayd status describe httproute default/web

A condition is shown as its status, followed by its reason when it is not ``True``
(``False(BackendNotFound)``), so a broken object says why on the same line.
Routes get one row per parent: Accepted and ResolvedRefs are reported per parentRef.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "DEFAULT_ADMIN_ADDRESS",
    "SECTIONS",
    "fetch_status",
    "format_status_table",
    "status_main",
]

# Kept equal to gatewayd.proxy.admin.DEFAULT_ADMIN_ADDRESS without importing aiohttp here:
# the CLI should start fast.
DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9901"

# section name -> kind, in display order
SECTIONS: dict[str, str] = {
    "gatewayclasses": "GatewayClass",
    "gateways": "Gateway",
    "listenersets": "ListenerSet",
    "httproutes": "HTTPRoute",
    "grpcroutes": "GRPCRoute",
    "tlsroutes": "TLSRoute",
    "tcproutes": "TCPRoute",
    "udproutes": "UDPRoute",
    "backendtlspolicies": "BackendTLSPolicy",
    "backendlbpolicies": "BackendLBPolicy",
}

# kubectl-style singular and short names
_ALIASES: dict[str, str] = {
    "gatewayclass": "gatewayclasses",
    "gc": "gatewayclasses",
    "gateway": "gateways",
    "gtw": "gateways",
    "listenerset": "listenersets",
    "lset": "listenersets",
    "httproute": "httproutes",
    "grpcroute": "grpcroutes",
    "tlsroute": "tlsroutes",
    "tcproute": "tcproutes",
    "udproute": "udproutes",
    "backendtlspolicy": "backendtlspolicies",
    "btlspolicy": "backendtlspolicies",
    "backendlbpolicy": "backendlbpolicies",
    "blbpolicy": "backendlbpolicies",
}

_NONE = "-"
_GAP = "   "  # kubectl's column padding
_NO_RESOURCES = "No resources found.\n"


# --------------------------------------------------------------------------- helpers


def _map(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _text(value: object) -> str:
    return _NONE if value is None or value == "" else str(value)


def _meta(item: Mapping[str, object]) -> tuple[str, str]:
    meta = _map(item.get("metadata"))
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _condition(conditions: object, ctype: str) -> str:
    """``True``, or ``False(Reason)`` / ``Unknown(Reason)``, or ``-`` when absent."""
    found: Mapping[str, object] | None = None
    for cond in _list(conditions):
        c = _map(cond)
        if c.get("type") == ctype:
            found = c  # the last one wins, as a patch would leave it
    if found is None:
        return _NONE
    status = str(found.get("status") or "Unknown")
    reason = found.get("reason")
    if status == "True" or not reason:
        return status
    return f"{status}({reason})"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append(_GAP.join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _of_kind(items: Sequence[Mapping[str, object]], kind: str) -> list[Mapping[str, object]]:
    selected = [it for it in items if isinstance(it, Mapping) and it.get("kind") == kind]
    return sorted(selected, key=_meta)


# --------------------------------------------------------------------------- tables


def _first_failing(*condition_lists: object) -> str:
    """``Type Reason: message`` of the first condition that is not True (``-``: none)."""
    for conditions in condition_lists:
        for cond in _list(conditions):
            c = _map(cond)
            if c.get("status") != "True" and c.get("type"):
                message = str(c.get("message") or "").replace("\n", " ")
                return f"{c.get('type')} {c.get('reason')}: {message}".rstrip(": ")
    return _NONE


def _gatewayclasses(items: list[Mapping[str, object]], ctx: _Context) -> str:
    rows = []
    for item in items:
        _, name = _meta(item)
        status = _map(item.get("status"))
        # The controller is spec, not status; gatewayd reports only its own classes, so
        # the daemon's controllerName fills it when the item does not carry spec.
        controller = _map(item.get("spec")).get("controllerName") or ctx.controller
        row = [name, _text(controller), _condition(status.get("conditions"), "Accepted")]
        if ctx.wide:
            row.append(_first_failing(status.get("conditions")))
        rows.append(row)
    return _table(["NAME", "CONTROLLER", "ACCEPTED", *ctx.extra], rows)


def _gateways(items: list[Mapping[str, object]], ctx: _Context) -> str:
    rows = []
    for item in items:
        namespace, name = _meta(item)
        status = _map(item.get("status"))
        addresses = [
            str(_map(a).get("value"))
            for a in _list(status.get("addresses"))
            if _map(a).get("value")
        ]
        listeners = [
            f"{_map(li).get('name')}:{_map(li).get('attachedRoutes', 0)}"
            for li in _list(status.get("listeners"))
        ]
        row = [
            _text(namespace),
            name,
            ",".join(addresses) or _NONE,
            _condition(status.get("conditions"), "Programmed"),
            ",".join(listeners) or _NONE,
        ]
        if ctx.wide:
            row.append(
                _first_failing(
                    status.get("conditions"),
                    *(_map(li).get("conditions") for li in _list(status.get("listeners"))),
                )
            )
        rows.append(row)
    return _table(["NAMESPACE", "NAME", "ADDRESS", "PROGRAMMED", "LISTENERS", *ctx.extra], rows)


def _listenersets(items: list[Mapping[str, object]], ctx: _Context) -> str:
    rows = []
    for item in items:
        namespace, name = _meta(item)
        status = _map(item.get("status"))
        listeners = [
            f"{_map(li).get('name')}:{_map(li).get('attachedRoutes', 0)}"
            for li in _list(status.get("listeners"))
        ]
        row = [
            _text(namespace),
            name,
            _condition(status.get("conditions"), "Accepted"),
            _condition(status.get("conditions"), "Programmed"),
            ",".join(listeners) or _NONE,
        ]
        if ctx.wide:
            row.append(_first_failing(status.get("conditions")))
        rows.append(row)
    header = ["NAMESPACE", "NAME", "ACCEPTED", "PROGRAMMED", "LISTENERS", *ctx.extra]
    return _table(header, rows)


def _parent(ref: Mapping[str, object], route_namespace: str) -> str:
    # ParentReference: "When unspecified, this refers to the local namespace of the Route."
    text = f"{ref.get('namespace') or route_namespace}/{ref.get('name', '')}"
    if ref.get("sectionName"):
        text += f"/{ref['sectionName']}"
    if ref.get("port") is not None:
        text += f":{ref['port']}"
    kind = ref.get("kind") or "Gateway"
    return text if kind == "Gateway" else f"{kind}:{text}"


def _per_parent(
    items: list[Mapping[str, object]], field: str, ref_key: str, title: str, ctx: _Context
) -> str:
    """One row per entry of ``status.<field>`` (a route's parents, a policy's
    ancestors), or one row of dashes for an object that has none."""
    rows = []
    for item in items:
        namespace, name = _meta(item)
        entries = _list(_map(item.get("status")).get(field))
        if not entries:
            rows.append([_text(namespace), name, _NONE, _NONE, _NONE, *(_NONE,) * ctx.wide])
        for e in entries:
            entry = _map(e)
            conds = entry.get("conditions")
            row = [
                _text(namespace),
                name,
                _parent(_map(entry.get(ref_key)), namespace),
                _condition(conds, "Accepted"),
                _condition(conds, "ResolvedRefs"),
            ]
            if ctx.wide:
                row.append(_first_failing(conds))
            rows.append(row)
    return _table(["NAMESPACE", "NAME", title, "ACCEPTED", "RESOLVEDREFS", *ctx.extra], rows)


def _routes(items: list[Mapping[str, object]], ctx: _Context) -> str:
    return _per_parent(items, "parents", "parentRef", "PARENTS", ctx)


def _policies(items: list[Mapping[str, object]], ctx: _Context) -> str:
    """One row per ancestor (a Gateway whose routes use a targeted Service)."""
    return _per_parent(items, "ancestors", "ancestorRef", "ANCESTORS", ctx)


@dataclass(frozen=True, slots=True)
class _Context:
    wide: bool = False  # -o wide: one more column, the first failing condition
    controller: str | None = None  # the daemon's controllerName (GatewayClass rows)

    @property
    def extra(self) -> tuple[str, ...]:
        return ("MESSAGE",) if self.wide else ()


_FORMATTERS: dict[str, Callable[[list[Mapping[str, object]], _Context], str]] = {
    "gatewayclasses": _gatewayclasses,
    "gateways": _gateways,
    "listenersets": _listenersets,
    "httproutes": _routes,
    "grpcroutes": _routes,
    "tlsroutes": _routes,
    "tcproutes": _routes,
    "udproutes": _routes,
    "backendtlspolicies": _policies,
    "backendlbpolicies": _policies,
}


def normalize_what(what: str) -> str:
    """A section name, ``all``, or a kubectl-style alias -> the section name."""
    what = what.lower()
    what = _ALIASES.get(what, what)
    if what != "all" and what not in SECTIONS:
        choices = ", ".join([*SECTIONS, "all"])
        raise ValueError(f"unknown resource type {what!r} (choose from {choices})")
    return what


def format_status_table(
    items: Sequence[Mapping[str, object]],
    what: str,
    *,
    wide: bool = False,
    controller: str | None = None,
) -> str:
    """Render status items (``ObjectStatus.as_item()`` dicts) as text.

    ``what`` is a section (``gateways``...) or ``all``: every non-empty section, each
    under a ``# <section>`` line, separated by a blank line.  Rows are sorted by
    namespace and name.  Nothing to show gives ``No resources found.``
    """
    what = normalize_what(what)
    sections = list(SECTIONS) if what == "all" else [what]
    blocks = []
    for section in sections:
        selected = _of_kind(items, SECTIONS[section])
        if not selected:
            continue
        table = _FORMATTERS[section](selected, _Context(wide=wide, controller=controller))
        blocks.append(f"# {section}\n{table}" if what == "all" else table)
    return "\n".join(blocks) if blocks else _NO_RESOURCES


# --------------------------------------------------------------------------- describe


def parse_describe(args: Sequence[str]) -> tuple[str, str, str]:
    """``describe KIND NS/NAME`` arguments -> (Kind, namespace, name); raises ValueError.
    A namespaced kind's NAME alone is in ``default``, as kubectl takes it."""
    if len(args) != 2:
        raise ValueError("describe needs a kind and a name: describe httproute default/web")
    section = normalize_what(args[0])
    if section == "all":
        raise ValueError("describe needs one kind, not all")
    kind = SECTIONS[section]
    namespace, _, name = args[1].rpartition("/")
    if kind == "GatewayClass":
        if namespace:
            raise ValueError(f"a GatewayClass has no namespace: {args[1]!r}")
    else:
        namespace = namespace or "default"
    if not name:
        raise ValueError(f"no name in {args[1]!r}")
    return kind, namespace, name


def _describe_conditions(conditions: object, indent: str) -> list[str]:
    rows = [
        [
            str(_map(c).get("type") or _NONE),
            str(_map(c).get("status") or _NONE),
            str(_map(c).get("reason") or _NONE),
            str(_map(c).get("lastTransitionTime") or _NONE),
            str(_map(c).get("message") or "").replace("\n", " "),
        ]
        for c in _list(conditions)
    ]
    if not rows:
        return [f"{indent}Conditions:  <none>"]
    table = _table(["Type", "Status", "Reason", "Last Transition", "Message"], rows)
    return [f"{indent}Conditions:", *(f"{indent}  {line}" for line in table.splitlines())]


def describe_item(item: Mapping[str, object]) -> str:
    """One object, kubectl-describe style: its conditions with their messages, then
    each listener's, parent's or ancestor's."""
    namespace, name = _meta(item)
    status = _map(item.get("status"))
    lines = [f"Name:         {name}"]
    if namespace:
        lines.append(f"Namespace:    {namespace}")
    lines += [
        f"Kind:         {item.get('kind')}",
        f"API Version:  {item.get('apiVersion')}",
        f"Generation:   {_map(item.get('metadata')).get('generation', _NONE)}",
    ]
    addresses = [str(_map(a).get("value")) for a in _list(status.get("addresses"))]
    if addresses:
        lines.append(f"Addresses:    {', '.join(addresses)}")
    if "conditions" in status:
        lines += _describe_conditions(status.get("conditions"), "")
    if _list(status.get("listeners")):
        lines.append("Listeners:")
        for li in _list(status.get("listeners")):
            listener = _map(li)
            lines.append(
                f"  {listener.get('name')} (attached routes: {listener.get('attachedRoutes', 0)})"
            )
            lines += _describe_conditions(listener.get("conditions"), "    ")
    for field, ref_key, title in (
        ("parents", "parentRef", "Parents"),
        ("ancestors", "ancestorRef", "Ancestors"),
    ):
        entries = _list(status.get(field))
        if field in status:
            lines.append(f"{title}:" if entries else f"{title}:  <none>")
        for e in entries:
            entry = _map(e)
            lines.append(
                f"  {_parent(_map(entry.get(ref_key)), namespace)} "
                f"(controller {entry.get('controllerName', _NONE)})"
            )
            lines += _describe_conditions(entry.get("conditions"), "    ")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI


_NOT_UP = " (is `gatewayd run` up? --admin-address must name its admin address)"


class StatusError(Exception):
    """A message for stderr: the daemon could not be asked or answered nonsense."""


def _status_url(address: str) -> str:
    base = address if "://" in address else f"http://{address}"
    return base.rstrip("/") + "/status"


def fetch_status(address: str, *, timeout: float = 5.0) -> list[dict[str, object]]:
    """``GET http://<address>/status`` and return its items; raises StatusError."""
    return fetch_status_doc(address, timeout=timeout)[0]


def fetch_status_doc(
    address: str, *, timeout: float = 5.0
) -> tuple[list[dict[str, object]], dict[str, object]]:
    """``GET http://<address>/status``: (items, config state); raises StatusError."""
    url = _status_url(address)
    # Never through an http_proxy from the environment: the admin server is local.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        raise StatusError(
            f"gatewayd admin at {address} answered HTTP {exc.code}: {detail or exc.reason}"
        ) from exc
    except urllib.error.URLError as exc:
        raise StatusError(
            f"cannot reach gatewayd admin at {address}: {exc.reason}{_NOT_UP}"
        ) from exc
    except (OSError, ValueError) as exc:  # timeouts, resets, malformed address
        raise StatusError(f"cannot reach gatewayd admin at {address}: {exc}{_NOT_UP}") from exc
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"gatewayd admin at {address} sent invalid JSON: {exc}") from exc
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise StatusError(f"gatewayd admin at {address} sent no 'items' list in /status")
    config = doc.get("config")
    return [it for it in items if isinstance(it, dict)], config if isinstance(config, dict) else {}


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """``gatewayd status``'s arguments (shared by the ``gatewayd`` parser and
    ``status_main``)."""
    parser.add_argument(
        "what",
        nargs="?",
        default="all",
        help="gatewayclasses | gateways | listenersets | httproutes | grpcroutes | "
        "tlsroutes | tcproutes | udproutes | backendtlspolicies | backendlbpolicies | all "
        "(default: all); "
        "or describe KIND NAMESPACE/NAME",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="ARG",
        help="with describe: the kind and the object (NAMESPACE/NAME, or NAME in default; "
        "NAME alone for a GatewayClass)",
    )
    parser.add_argument(
        "--admin-address",
        default=DEFAULT_ADMIN_ADDRESS,
        metavar="HOST:PORT",
        help=f"the daemon's admin address (default: {DEFAULT_ADMIN_ADDRESS})",
    )
    parser.add_argument(
        "-o",
        "--output",
        choices=("table", "wide", "json", "yaml"),
        default="table",
        help="table (default), wide (the table plus each row's first failing condition "
        "and its message), json or yaml (the /status items)",
    )


def status_main(argv: Sequence[str]) -> int:
    """``gatewayd status [WHAT | describe KIND NS/NAME] [--admin-address HOST:PORT]
    [-o table|wide|json|yaml]``."""
    parser = argparse.ArgumentParser(
        prog="gatewayd status",
        description="Show the Gateway API status computed by a running gatewayd.",
    )
    add_status_arguments(parser)
    return status_run(parser.parse_args(list(argv)), parser)


def status_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``gatewayd status`` with parsed arguments; usage errors exit 2."""
    describe: tuple[str, str, str] | None = None
    try:
        if args.what == "describe":
            describe = parse_describe(args.names)
        elif args.names:
            raise ValueError(f"unexpected argument {args.names[0]!r} (describe KIND NS/NAME?)")
        what = "all" if describe else normalize_what(args.what)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2, like any usage error
    try:
        items, config = fetch_status_doc(args.admin_address)
    except StatusError as exc:
        print(exc, file=sys.stderr)
        return 1
    if config.get("generation") == 0 and not items:
        # Up, but nothing loaded: say why instead of "No resources found."
        why = config.get("notReady") or config.get("lastReloadError") or "not loaded yet"
        print(f"gatewayd at {args.admin_address} serves no configuration: {why}", file=sys.stderr)
        return 1
    if config.get("lastReloadError"):
        print(
            f"last reload refused (generation {config.get('generation')} still serving): "
            f"{config['lastReloadError']}",
            file=sys.stderr,
        )
    if config.get("notReady"):
        print(f"not ready (/ready is 503): {config['notReady']}", file=sys.stderr)
    note = _writeback_note(config.get("statusWriteback"))
    if note:
        print(note, file=sys.stderr)
    controller = config.get("controllerName")
    if describe is not None:
        return _describe(items, describe, args.output)
    selected = [it for it in items if what == "all" or it.get("kind") == SECTIONS[what]]
    if args.output == "json":
        print(json.dumps({"items": selected}, indent=2))
    elif args.output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump({"items": selected}, sort_keys=False))
    else:
        sys.stdout.write(
            format_status_table(
                items,
                what,
                wide=args.output == "wide",
                controller=controller if isinstance(controller, str) else None,
            )
        )
    return 0


def _describe(items: list[dict[str, object]], target: tuple[str, str, str], output: str) -> int:
    kind, namespace, name = target
    found = [it for it in items if it.get("kind") == kind and _meta(it) == (namespace, name)]
    if not found:
        known = sorted(
            f"{ns}/{n}" if ns else n
            for ns, n in (_meta(it) for it in items if it.get("kind") == kind)
        )
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        ref = f"{namespace}/{name}" if namespace else name
        print(
            f"no {kind} {ref} in the status of gatewayd ({kind}s it has: {listed or 'none'})",
            file=sys.stderr,
        )
        return 1
    if output == "json":
        print(json.dumps(found[0], indent=2))
    elif output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(found[0], sort_keys=False))
    else:
        sys.stdout.write(describe_item(found[0]))
    return 0


def _writeback_note(state: object) -> str | None:
    """Kubernetes mode: say when this replica's statuses are not the ones written to the
    API server (another replica holds the Lease)."""
    if not isinstance(state, dict):
        return None
    election = state.get("leaderElection")
    if not isinstance(election, dict) or election.get("leader", True):
        return None
    holder = election.get("holder") or "nobody"
    return (
        f"this replica does not write status (Lease {election.get('lease')} is held by "
        f"{holder}); the API server shows the leader's"
    )


if __name__ == "__main__":
    sys.exit(status_main(sys.argv[1:]))
