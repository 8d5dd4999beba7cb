"""The kernel side of node-local mode: the nftables ruleset and the policy routing.

Two pieces make a TPROXY diversion work (kernel Documentation/networking/tproxy.rst):

* an nftables ``tproxy`` rule in the prerouting hook that hands a matching packet to the
  local transparent listener and marks it, and
* a routing policy that delivers marked packets locally whatever their destination:
  ``ip rule add fwmark <mark> lookup <table>`` and
  ``ip route add local default dev lo table <table>``.

``desired_targets()`` and ``render_ruleset()`` are pure: the ruleset is generated from
the snapshot (each Gateway address:port, each Service ClusterIP:port with routes) and is
the same text for the same snapshot, so an unchanged reload touches nothing.  The
ruleset lives in its own table and is replaced in one nft transaction ("add table;
delete table; table {...}"), which is idempotent and never leaves a half-written
table.  ``install_routing()`` / ``remove_routing()`` use pyroute2 (netlink) and ignore
"already there" / "already gone", so both are idempotent too.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from gatewayd.routing.snapshot.compiled import Snapshot

log = logging.getLogger("gatewayd.tproxy")

DEFAULT_PORT: Final = 15001
DEFAULT_MARK: Final = 0x1
DEFAULT_ROUTE_TABLE: Final = 100
DEFAULT_RULE_PRIORITY: Final = 32000
DEFAULT_NFT_TABLE: Final = "gatewayd"
NFT: Final = "nft"
NFT_TIMEOUT: Final = 10.0
# Upstream connections of the proxy carry this bit on top of the diversion mark: the
# diversion rule skips them, and the fwmark rule (an exact match) does not send them
# back to lo.
BYPASS_BIT: Final = 0x80000000


@dataclass(frozen=True, slots=True, kw_only=True)
class TproxySettings:
    port: int = DEFAULT_PORT
    mark: int = DEFAULT_MARK
    route_table: int = DEFAULT_ROUTE_TABLE
    rule_priority: int = DEFAULT_RULE_PRIORITY
    nft_table: str = DEFAULT_NFT_TABLE
    ipv6: bool = True

    @property
    def bypass_mark(self) -> int:
        """SO_MARK of the proxy's own connections: never diverted, routed normally."""
        return self.mark ^ BYPASS_BIT


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class DivertTarget:
    """One address:port whose TCP connections go to the transparent listener."""

    family: int  # 4 | 6
    address: str
    port: int
    comment: str = ""


def desired_targets(snapshot: Snapshot) -> tuple[DivertTarget, ...]:
    """Every Gateway address:port and every Service ClusterIP:port with routes.

    Loopback and unspecified addresses are left out: packets to them never cross the
    prerouting hook from another host (the Gateway's own socket serves local clients).
    """
    out: dict[tuple[str, int], DivertTarget] = {}

    def add(address: str, port: int, comment: str) -> None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return
        if ip.is_loopback or ip.is_unspecified:
            return
        key = (ip.compressed, port)
        if key not in out:
            out[key] = DivertTarget(
                family=ip.version, address=ip.compressed, port=port, comment=comment
            )

    for (address, port), lp in sorted(snapshot.ports.items()):
        add(address, port, f"Gateway {lp.gateway_namespace}/{lp.gateway_name}")
    if snapshot.mesh is not None:
        for (address, port), svc in sorted(snapshot.mesh.services.items()):
            add(address, port, f"Service {svc.service_namespace}/{svc.service_name}")
    return tuple(sorted(out.values()))


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "'") + '"'


def render_ruleset(targets: Iterable[DivertTarget], settings: TproxySettings) -> str:
    """The nft script that (re)creates the table with exactly ``targets``."""
    table = settings.nft_table
    mark = f"0x{settings.mark:08x}"
    lines = [
        f"add table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
        f"\t\tmeta mark 0x{settings.bypass_mark:08x} return "
        f"comment {_quote('gatewayd upstream connections')}",
    ]
    for t in targets:
        if t.family == 6 and not settings.ipv6:
            continue
        fam = "ip6" if t.family == 6 else "ip"
        lines.append(
            f"\t\t{fam} daddr {t.address} tcp dport {t.port} "
            f"tproxy {fam} to :{settings.port} meta mark set {mark} accept"
            + (f" comment {_quote(t.comment)}" if t.comment else "")
        )
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def render_removal(settings: TproxySettings) -> str:
    """The nft script that removes the table if it exists (idempotent)."""
    table = settings.nft_table
    return f"add table inet {table}\ndelete table inet {table}\n"


def render_routing(settings: TproxySettings) -> str:
    """The policy routing ``install_routing()`` installs, as ip(8) commands."""
    out = [
        f"ip -4 rule add fwmark 0x{settings.mark:x} lookup {settings.route_table} "
        f"priority {settings.rule_priority}",
        f"ip -4 route replace local default dev lo table {settings.route_table}",
    ]
    if settings.ipv6:
        out += [
            f"ip -6 rule add fwmark 0x{settings.mark:x} lookup {settings.route_table} "
            f"priority {settings.rule_priority}",
            f"ip -6 route replace local default dev lo table {settings.route_table}",
        ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- nft


def run_nft(script: str) -> None:
    """Apply an nft script atomically.  Raises RuntimeError with nft's message."""
    try:
        done = subprocess.run(
            [NFT, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run {NFT}: {exc}") from exc
    if done.returncode != 0:
        raise RuntimeError(f"{NFT} -f failed: {done.stderr.strip() or done.returncode}")


def table_exists(settings: TproxySettings) -> bool:
    done = subprocess.run(
        [NFT, "list", "table", "inet", settings.nft_table],
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT,
        check=False,
    )
    return done.returncode == 0


# --------------------------------------------------------------------------- routing

_IGNORED_ON_ADD: Final = frozenset({errno.EEXIST})
_IGNORED_ON_DEL: Final = frozenset({errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL})

_FAMILIES: Final = ((socket.AF_INET, "0.0.0.0/0"), (socket.AF_INET6, "::/0"))


def _families(settings: TproxySettings) -> list[tuple[socket.AddressFamily, str]]:
    return [(f, d) for f, d in _FAMILIES if f == socket.AF_INET or settings.ipv6]


def install_routing(settings: TproxySettings) -> list[str]:
    """Install the fwmark rule and the local route (IPv4, and IPv6 when enabled).

    Idempotent.  Returns warnings (IPv6 routing unavailable, ...); raises OSError or
    pyroute2's NetlinkError when IPv4 cannot be set up."""
    from pyroute2 import IPRoute  # type: ignore[import-untyped]
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    warnings: list[str] = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family, dst in _families(settings):
            try:
                try:
                    ipr.rule(
                        "add",
                        family=family,
                        fwmark=settings.mark,
                        fwmask=0xFFFFFFFF,
                        table=settings.route_table,
                        priority=settings.rule_priority,
                    )
                except NetlinkError as exc:
                    if exc.code not in _IGNORED_ON_ADD:
                        raise
                extra = {"scope": "host"} if family == socket.AF_INET else {}
                ipr.route(
                    "replace",
                    family=family,
                    dst=dst,
                    type="local",
                    table=settings.route_table,
                    oif=lo,
                    **extra,
                )
            except NetlinkError as exc:
                if family == socket.AF_INET:
                    raise
                warnings.append(f"IPv6 policy routing not installed: {exc}")
    return warnings


def remove_routing(settings: TproxySettings) -> None:
    """Remove what ``install_routing()`` installed; missing pieces are fine."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        for family, dst in _FAMILIES:
            # Up to a few copies (a crashed daemon's and ours); bounded.
            for _ in range(4):
                try:
                    ipr.rule(
                        "del",
                        family=family,
                        fwmark=settings.mark,
                        fwmask=0xFFFFFFFF,
                        table=settings.route_table,
                        priority=settings.rule_priority,
                    )
                except NetlinkError as exc:
                    if exc.code not in _IGNORED_ON_DEL and exc.code != errno.EAFNOSUPPORT:
                        log.warning("removing the fwmark rule: %s", exc)
                    break
            extra = {"scope": "host"} if family == socket.AF_INET else {}
            try:
                ipr.route(
                    "del",
                    family=family,
                    dst=dst,
                    type="local",
                    table=settings.route_table,
                    oif=lo,
                    **extra,
                )
            except NetlinkError as exc:
                if exc.code not in _IGNORED_ON_DEL and exc.code != errno.EAFNOSUPPORT:
                    log.warning("removing the local route: %s", exc)
