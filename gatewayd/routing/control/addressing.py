"""Gateway address assignment: static ``spec.addresses`` or the next free pool address.

Gateway API (apis/v1/gateway_types.go, GatewaySpec.Addresses):

    "If a value is set in the spec and the requested address is invalid or unavailable,
    the implementation MUST indicate this in an associated entry in
    GatewayStatus.Conditions."

    "If no Addresses are specified, the implementation MAY schedule the Gateway in an
    implementation-specific manner, assigning an appropriate set of Addresses."

Allocation is stable: a Gateway keeps the pool address it had (``previous``) for as long
as it exists and still asks for a pool address.  Claims are settled in priority order
(oldest Gateway first, then namespace/name): kept pool addresses first, then static
addresses, then new pool allocations.

Pure module: no I/O (``is_local`` is the caller's probe).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from gatewayd.routing.config.model import Gateway

IP_ADDRESS = "IPAddress"


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressOutcome:
    """What one Gateway got.  At most one of the three messages is the headline."""

    addresses: tuple[str, ...] = ()  # usable, in spec order (pool address last)
    unsupported: str | None = None  # -> Accepted False UnsupportedAddress
    not_usable: str | None = None  # -> Programmed False AddressNotUsable
    not_assigned: str | None = None  # -> Programmed False AddressNotAssigned
    pool_address: str | None = None  # the pool address held (remembered for next time)


def _key(gw: Gateway) -> tuple[str, str]:
    return (gw.meta.namespace, gw.meta.name)


def _canonical(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def _pool_hosts(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Iterator[str]:
    # hosts() leaves out the network and broadcast addresses of real subnets (so
    # 127.0.10.0/24 starts at 127.0.10.1) and yields the lone address of a /32 or /128.
    for host in network.hosts():
        yield str(host)


def allocate(
    gateways: Sequence[Gateway],
    *,
    pool: str,
    previous: Mapping[tuple[str, str], str],
    is_local: Callable[[str], bool],
) -> dict[tuple[str, str], AddressOutcome]:
    """Addresses for ``gateways`` (ours, in priority order)."""
    network = ipaddress.ip_network(pool, strict=False)
    owner: dict[str, tuple[str, str]] = {}  # address -> the Gateway that has it
    statics: dict[tuple[str, str], list[str]] = {}
    wants_pool: dict[tuple[str, str], bool] = {}
    unsupported: dict[tuple[str, str], str] = {}
    problems: dict[tuple[str, str], list[str]] = {}

    for gw in gateways:
        key = _key(gw)
        bad = [a for a in gw.addresses if a.type != IP_ADDRESS]
        if bad:
            kinds = ", ".join(sorted({a.type for a in bad}))
            unsupported[key] = (
                f"spec.addresses: address type {kinds} is not supported "
                f"(only {IP_ADDRESS} addresses can be bound)"
            )
            continue
        statics[key] = [a.value for a in gw.addresses if a.value]
        # "When a value is unspecified, an implementation SHOULD automatically assign an
        # address matching the requested type if possible." (GatewaySpecAddress.Value)
        wants_pool[key] = not gw.addresses or any(not a.value for a in gw.addresses)

    # 1. Pool addresses already held stay with their Gateway.
    held: dict[tuple[str, str], str] = {}
    for gw in gateways:
        key = _key(gw)
        if not wants_pool.get(key):
            continue
        prev = previous.get(key)
        canon = _canonical(prev) if prev else None
        if canon is None or ipaddress.ip_address(canon) not in network or canon in owner:
            continue
        owner[canon] = key
        held[key] = canon

    # 2. Static addresses, first come first served.
    usable: dict[tuple[str, str], list[str]] = {}
    for gw in gateways:
        key = _key(gw)
        if key in unsupported:
            continue
        got: list[str] = []
        for value in statics[key]:
            canon = _canonical(value)
            if canon is None:
                problems.setdefault(key, []).append(f"{value!r} is not an IP address")
                continue
            holder = owner.get(canon)
            if holder is not None and holder != key:
                problems.setdefault(key, []).append(
                    f"{canon} is already used by Gateway {holder[0]}/{holder[1]}"
                )
                continue
            if not is_local(canon):
                problems.setdefault(key, []).append(
                    f"{canon} is not an address of this host (add it to an interface)"
                )
                continue
            owner[canon] = key
            if canon not in got:
                got.append(canon)
        usable[key] = got

    # 3. New pool addresses for the rest.
    free = _pool_hosts(network)
    pool_of: dict[tuple[str, str], str] = {}
    exhausted: set[tuple[str, str]] = set()
    for gw in gateways:
        key = _key(gw)
        if not wants_pool.get(key):
            continue
        address = held.get(key)
        if address is None:
            address = next((a for a in free if a not in owner), None)
            if address is None:
                exhausted.add(key)
                continue
            owner[address] = key
        if not is_local(address):
            problems.setdefault(key, []).append(
                f"pool address {address} is not an address of this host "
                f"(choose another --address-pool or add it to an interface)"
            )
            continue
        pool_of[key] = address

    out: dict[tuple[str, str], AddressOutcome] = {}
    for gw in gateways:
        key = _key(gw)
        if key in unsupported:
            out[key] = AddressOutcome(unsupported=unsupported[key])
            continue
        addresses = list(usable.get(key, ()))
        pool_address = pool_of.get(key)
        if pool_address is not None and pool_address not in addresses:
            addresses.append(pool_address)
        msgs = problems.get(key)
        out[key] = AddressOutcome(
            addresses=tuple(addresses),
            not_usable="; ".join(msgs) if msgs else None,
            not_assigned=(
                f"address pool {pool} has no free address left" if key in exhausted else None
            ),
            pool_address=pool_address,
        )
    return out
