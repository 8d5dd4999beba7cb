"""Node-local mode in the daemon: transparent listeners plus the kernel rules.

``start()`` binds the transparent listeners (IPv4 and, where the kernel has it, IPv6),
marks the proxy's upstream sockets and installs the policy routing; ``apply(snapshot)``
(after every successful reload) replaces the nftables ruleset when the diversion
targets changed; ``close()`` removes the ruleset and the routing, then stops the
listeners.  The kernel calls (nft, netlink) block briefly and run in a thread so the
event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from typing import TYPE_CHECKING, TextIO

from gatewayd.proxy.transparent import TransparentListener
from gatewayd.tproxy.rules import (
    TproxySettings,
    desired_targets,
    install_routing,
    remove_routing,
    render_removal,
    render_ruleset,
    run_nft,
)
from gatewayd.tproxy.sockets import transparent_listener

if TYPE_CHECKING:
    from gatewayd.proxy.server import Proxy
    from gatewayd.routing.snapshot.compiled import Snapshot

log = logging.getLogger("gatewayd.tproxy")


class TproxyRuntime:
    def __init__(self, settings: TproxySettings, proxy: Proxy) -> None:
        self.settings = settings
        self.proxy = proxy
        self.listener = TransparentListener(
            proxy, own_port=settings.port, mark=settings.bypass_mark
        )
        self.servers: list[asyncio.AbstractServer] = []
        self.ruleset: str | None = None
        self.families: list[str] = []
        self._routing = False

    async def start(self) -> None:
        """Bind the listeners and install the routing.  Raises OSError/RuntimeError
        (with everything already done undone) when the kernel refuses."""
        loop = asyncio.get_running_loop()
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    sock = transparent_listener(family, self.settings.port)
                except OSError as exc:
                    if family == socket.AF_INET:
                        raise OSError(
                            exc.errno,
                            f"cannot bind the transparent listener on port "
                            f"{self.settings.port}: {exc.strerror} (needs CAP_NET_ADMIN)",
                        ) from exc
                    log.warning("tproxy: no IPv6 transparent listener: %s", exc)
                    continue
                server = await loop.create_server(self.listener.factory, sock=sock, backlog=1024)
                self.servers.append(server)
                self.families.append("ipv6" if family == socket.AF_INET6 else "ipv4")
            self.proxy.pool.mark = self.settings.bypass_mark
            self._routing = True
            for warning in await asyncio.to_thread(install_routing, self.settings):
                log.warning("tproxy: %s", warning)
        except BaseException:
            await self.close()
            raise
        log.info(
            "tproxy: transparent listener on port %d (%s), fwmark 0x%x -> table %d",
            self.settings.port,
            ", ".join(self.families),
            self.settings.mark,
            self.settings.route_table,
        )

    async def apply(self, snapshot: Snapshot) -> None:
        """Divert exactly what ``snapshot`` serves.  Raises RuntimeError if nft fails
        (the previous ruleset stays in place)."""
        targets = desired_targets(snapshot)
        ruleset = render_ruleset(targets, self.settings)
        if ruleset == self.ruleset:
            return
        await asyncio.to_thread(run_nft, ruleset)
        self.ruleset = ruleset
        log.info(
            "tproxy: nftables table inet %s diverts %d address:port(s)",
            self.settings.nft_table,
            len(targets),
        )

    async def close(self) -> None:
        """Remove the ruleset and the routing, stop the listeners.  Never raises."""
        if self.ruleset is not None:
            try:
                await asyncio.to_thread(run_nft, render_removal(self.settings))
            except Exception as exc:
                log.error("tproxy: removing the nftables table failed: %s", exc)
            self.ruleset = None
        if self._routing:
            try:
                await asyncio.to_thread(remove_routing, self.settings)
            except Exception as exc:
                log.error("tproxy: removing the policy routing failed: %s", exc)
            self._routing = False
        for server in self.servers:
            server.close()
        self.servers.clear()
        with contextlib.suppress(Exception):
            await self.listener.close()

    def to_json(self) -> dict[str, object]:
        return {
            "port": self.settings.port,
            "mark": self.settings.mark,
            "families": list(self.families),
            **self.listener.to_json(),
        }


def dry_run(
    paths: list[str],
    *,
    controller_name: str,
    address_pool: str,
    settings: TproxySettings,
    out: TextIO | None = None,
) -> int:
    """`gatewayd run --tproxy-dry-run`: build the configuration once and print what
    --tproxy would install (policy routing, then the nft script), touching nothing."""
    from gatewayd.pipeline import ConfigPipeline
    from gatewayd.routing.config.load import ConfigPathError
    from gatewayd.tproxy.rules import render_routing

    stream = out if out is not None else sys.stdout
    pipeline = ConfigPipeline(paths, controller_name=controller_name, address_pool=address_pool)
    try:
        built = pipeline.build()
    except ConfigPathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for problem in built.load.problems:
        print(f"config: {problem}", file=sys.stderr)
    targets = desired_targets(built.snapshot)
    stream.write(f"# gatewayd --tproxy: {len(targets)} diverted address:port(s)\n")
    stream.write("# policy routing (installed over netlink):\n")
    for line in render_routing(settings).splitlines():
        stream.write(f"#   {line}\n")
    stream.write(
        f"# nftables (nft -f -); SO_MARK of gatewayd's own upstream connections: "
        f"0x{settings.bypass_mark:x}\n"
    )
    stream.write(render_ruleset(targets, settings))
    stream.flush()
    return 0
