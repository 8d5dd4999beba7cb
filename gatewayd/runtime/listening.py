"""What a loaded configuration serves, in words for the log and ``/ready``.

``listening_lines`` gives one line per bound listener, with the address to use::

    listening: gateway demo/edge listener http HTTP on http://127.0.0.1:8080

and says where an address came from when the Gateway has no ``spec.addresses`` (the
``--address-pool``), since that address (127.0.10.x by default) is not the one a new
user tries first.  ``not_served_reason`` says why nothing is served (``/ready`` 503).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from gatewayd.routing.config import model as m
from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.snapshot.addresses import host_port
from gatewayd.routing.snapshot.compiled import Snapshot

_SCHEMES = {"HTTP": "http", "HTTPS": "https", "TLS": "tls"}
ListenKey = tuple[str, int]


def _pool_note(gateway: m.Gateway | None, address: str, address_pool: str) -> str:
    """Why the address is what it is, when the Gateway did not ask for one."""
    if gateway is None or gateway.addresses:
        if _unspecified(address):
            return " (every address of this host)"
        return ""
    if _unspecified(address):
        where = "every address of this host"
    elif _loopback(address):
        where = "loopback only"
    else:
        where = "this address only"
    return (
        f" ({where}: the Gateway has no spec.addresses, so its address comes from "
        f"--address-pool {address_pool}; set spec.addresses, or --address-pool "
        "0.0.0.0/32 to listen on every address)"
    )


def _unspecified(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def listening_lines(
    snapshot: Snapshot,
    gateways: Iterable[m.Gateway],
    *,
    failed: Iterable[ListenKey],
    address_pool: str,
) -> list[str]:
    """One line per listener of every bound (address, port) of ``snapshot``."""
    by_name = {(g.meta.namespace, g.meta.name): g for g in gateways}
    skip = set(failed)
    lines: list[str] = []
    for key in sorted(snapshot.ports, key=lambda k: (k[0], k[1])):
        if key in skip:
            continue
        lp = snapshot.ports[key]
        gateway = by_name.get((lp.gateway_namespace, lp.gateway_name))
        note = _pool_note(gateway, lp.address, address_pool)
        where = host_port(lp.address, lp.port)
        # An HTTPS port that TLS listeners share: those are TLS, chosen by SNI.
        tls_names: set[str] = set()
        if lp.tls_table is not None and lp.protocol != "TLS":
            tls_names = {t.name for t in lp.tls_table.listeners()}
        for name in lp.listener_names:
            protocol = "TLS" if name in tls_names else lp.protocol
            url = f"{_SCHEMES.get(protocol, protocol.lower())}://{where}"
            lines.append(
                f"listening: gateway {lp.gateway_namespace}/{lp.gateway_name} listener "
                f"{name} {protocol} on {url}{note}"
            )
    return lines


def _condition(status: Mapping[str, object], ctype: str) -> Mapping[str, object] | None:
    conditions = status.get("conditions")
    if not isinstance(conditions, list | tuple):
        return None
    for c in conditions:
        if isinstance(c, Mapping) and c.get("type") == ctype:
            return c
    return None


def not_served_reason(
    config: m.Config,
    statuses: Iterable[ObjectStatus],
    *,
    controller_name: str,
    bind_failures: Mapping[ListenKey, str],
    name_others: bool = True,
) -> str:
    """Why a loaded configuration serves no listener, in one line (``name_others``: with
    the GatewayClasses of other controllers, for a caller that does not list them)."""
    parts: list[str] = []
    ours = [s for s in statuses if s.kind == "Gateway"]
    if not config.gateway_classes:
        parts.append(f"no GatewayClass with controllerName {controller_name}")
    elif not any(gc.controller_name == controller_name for gc in config.gateway_classes):
        others = ", ".join(
            f"{gc.meta.name} ({gc.controller_name})" for gc in config.gateway_classes
        )
        named = f"; GatewayClasses of other controllers: {others}" if name_others else ""
        parts.append(f"no GatewayClass with controllerName {controller_name}{named}")
    elif not ours:
        parts.append("no Gateway of a GatewayClass of this controller")
    for status in ours:
        cond = _condition(status.status, "Programmed")
        if cond is not None and cond.get("status") != "True":
            parts.append(
                f"Gateway {status.namespace}/{status.name} Programmed {cond.get('status')} "
                f"{cond.get('reason')}: {cond.get('message')}"
            )
    for (address, port), reason in sorted(bind_failures.items()):
        parts.append(f"cannot bind {host_port(address, port)}: {reason}")
    return "no listener is served: " + ("; ".join(parts) or "no Gateway listener is bound")
