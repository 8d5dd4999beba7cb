"""Network namespaces for the node-local (TPROXY + GAMMA) tests.

Topology (every name carries a random ``gwd-<hex>`` prefix; every address lives only
inside these namespaces)::

    client-a 10.231.1.2 --+
                          +-- node 10.231.{1,2,3}.1 (gatewayd --tproxy, ip_forward)
    client-b 10.231.2.2 --+          |
                                     +-- backends 10.231.3.2 (+ ClusterIPs 10.96.0.x on lo)

Clients route everything through ``node``; ``node`` routes 10.96.0.0/16 to
``backends``, where the ClusterIPs are local addresses (what kube-proxy would do for a
connection nobody diverts).  The Gateway address 10.232.0.1 is an address of ``node``.

Where the kernel has IPv6 TPROXY (``tproxy6_probe()``), the same links are dual-stack:
fd00:231:{1,2,3}::/64 on the three veths (client ``::2``, node ``::1``), IPv6
ClusterIPs in fd00:96::/112 on the backends' lo and the IPv6 Gateway address
fd00:232::1 on the node's lo.  DAD is off in these namespaces: a tentative address can
be neither bound nor chosen as a TPROXY local address, and waiting for DAD costs
seconds.

``Topology.destroy()`` kills every process started in the namespaces and deletes them
(their veths go with them); it is safe to call twice and after a partial ``create()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = sys.executable

CLIENT_A_IP = "10.231.1.2"
CLIENT_B_IP = "10.231.2.2"
NODE_IP_A = "10.231.1.1"
NODE_IP_B = "10.231.2.1"
NODE_IP_BACKENDS = "10.231.3.1"
BACKENDS_IP = "10.231.3.2"
GATEWAY_IP = "10.232.0.1"
BOOKSTORE_IP = "10.96.0.10"
BOOKSTORE_V1_IP = "10.96.0.11"
BOOKSTORE_V2_IP = "10.96.0.12"
REVIEWS_IP = "10.96.0.20"
CMD_TIMEOUT = 15.0

# IPv6 (added only where tproxy6_probe() passes).
CLIENT_A_IP6 = "fd00:231:1::2"
CLIENT_B_IP6 = "fd00:231:2::2"
NODE_IP6_A = "fd00:231:1::1"
NODE_IP6_B = "fd00:231:2::1"
NODE_IP6_BACKENDS = "fd00:231:3::1"
BACKENDS_IP6 = "fd00:231:3::2"
GATEWAY_IP6 = "fd00:232::1"
SERVICE_CIDR6 = "fd00:96::/112"
BOOKSTORE_IP6 = "fd00:96::10"
BOOKSTORE_V1_IP6 = "fd00:96::11"
BOOKSTORE_V2_IP6 = "fd00:96::12"
REVIEWS_IP6 = "fd00:96::20"


def child_env() -> dict[str, str]:
    """The environment of every command run in a namespace: this checkout's package
    first on PYTHONPATH, so a child ``python -m gatewayd`` (or ``-c "import gatewayd"``)
    runs the code under test even where another checkout is installed editable."""
    env = dict(os.environ)
    parts = [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        input=input,
        env=child_env(),
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def tproxy_probe() -> str | None:
    """None when this kernel can run the tests, else the reason it cannot: creates an
    nft table with a ``tproxy`` statement in a throwaway namespace."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} is not installed (make test installs iproute2 and nftables)"
    name = f"gwd-probe-{secrets.token_hex(3)}"
    try:
        run(["ip", "netns", "add", name])
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        script = (
            "table inet gwdprobe {\n chain p {\n"
            "  type filter hook prerouting priority mangle; policy accept;\n"
            "  ip daddr 10.96.0.1 tcp dport 80 tproxy ip to :15001 meta mark set 1 accept\n"
            " }\n}\n"
        )
        try:
            run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=script)
        except RuntimeError as exc:
            return f"the kernel lacks nftables TPROXY support: {exc}"
        return None
    finally:
        run(["ip", "netns", "del", name], check=False)


def tproxy6_probe() -> str | None:
    """None when this kernel can also run the IPv6 tests (IPv6 enabled, nftables
    ``tproxy ip6``), else the reason it cannot.  Assumes ``tproxy_probe()`` passed."""
    if not Path("/proc/net/if_inet6").exists():
        return "the kernel has no IPv6 (no /proc/net/if_inet6: booted with ipv6.disable=1?)"
    name = f"gwd-probe6-{secrets.token_hex(3)}"
    try:
        run(["ip", "netns", "add", name])
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        try:
            run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
            run(
                ["ip", "netns", "exec", name, "ip", "-6", "addr", "add", "fd00::1/128", "dev", "lo"]
            )
        except RuntimeError as exc:
            return f"IPv6 is disabled in new network namespaces: {exc}"
        script = (
            "table inet gwdprobe {\n chain p {\n"
            "  type filter hook prerouting priority mangle; policy accept;\n"
            "  ip6 daddr fd00:96::1 tcp dport 80 tproxy ip6 to :15001 meta mark set 1 accept\n"
            " }\n}\n"
        )
        try:
            run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=script)
        except RuntimeError as exc:
            return f"the kernel lacks nftables IPv6 TPROXY support (nf_tproxy_ipv6): {exc}"
        return None
    finally:
        run(["ip", "netns", "del", name], check=False)


class Proc:
    """A process in a namespace; its output is collected for failure reports."""

    def __init__(self, ns: str, argv: Sequence[str], label: str) -> None:
        self.label = label
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.popen = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=child_env(),
            start_new_session=True,
        )
        assert self.popen.stdout is not None
        self._pump = threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True)
        self._pump.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))
            self._ready.set()

    def wait_line(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in line for line in self.lines):
                return True
            if self.popen.poll() is not None:
                return any(needle in line for line in self.lines)
            self._ready.clear()
            self._ready.wait(0.05)
        return False

    def output(self) -> str:
        return f"--- {self.label} ---\n" + "\n".join(self.lines[-80:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        self._pump.join(2.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return self.popen.returncode


class Topology:
    def __init__(self, *, no_ipv6: str | None = "IPv6 was not requested") -> None:
        # Dual-stack links unless ``no_ipv6`` says why not (tproxy6_probe()'s reason).
        self.no_ipv6 = no_ipv6
        self.ipv6 = no_ipv6 is None
        self.prefix = f"gwd-{secrets.token_hex(3)}"
        self.client_a = f"{self.prefix}-client-a"
        self.client_b = f"{self.prefix}-client-b"
        self.node = f"{self.prefix}-node"
        self.backends = f"{self.prefix}-backends"
        self.created: list[str] = []
        self.procs: list[Proc] = []

    # ------------------------------------------------------------------ lifecycle

    def ns_exec(self, ns: str, *argv: str, check: bool = True, input: str | None = None) -> str:
        return run(["ip", "netns", "exec", ns, *argv], check=check, input=input)

    def create(self) -> None:
        for ns in (self.client_a, self.client_b, self.node, self.backends):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
            self.ns_exec(ns, "ip", "link", "set", "lo", "up")
            if self.ipv6:
                # Before the veths exist, so their link-local addresses skip DAD too:
                # neighbour discovery of forwarded packets sends from them.
                for key in ("all", "default"):
                    self.ns_exec(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.accept_dad=0")
        links = [
            (self.client_a, CLIENT_A_IP, "ca", NODE_IP_A),
            (self.client_b, CLIENT_B_IP, "cb", NODE_IP_B),
            (self.backends, BACKENDS_IP, "be", NODE_IP_BACKENDS),
        ]
        for ns, ip, node_if, node_ip in links:
            # Both ends are created inside their namespaces: no name in the host's.
            run(
                [
                    "ip",
                    "link",
                    "add",
                    node_if,
                    "netns",
                    self.node,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "n0",
                    "netns",
                    ns,
                ]
            )
            self.ns_exec(ns, "ip", "addr", "add", f"{ip}/24", "dev", "n0")
            self.ns_exec(ns, "ip", "link", "set", "n0", "up")
            self.ns_exec(ns, "ip", "route", "add", "default", "via", node_ip)
            self.ns_exec(self.node, "ip", "addr", "add", f"{node_ip}/24", "dev", node_if)
            self.ns_exec(self.node, "ip", "link", "set", node_if, "up")
        for key in (
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ):
            self.ns_exec(self.node, "sysctl", "-q", "-w", key)
        self.ns_exec(self.node, "ip", "route", "add", "10.96.0.0/16", "via", BACKENDS_IP)
        self.ns_exec(self.node, "ip", "addr", "add", f"{GATEWAY_IP}/32", "dev", "lo")
        for ip in (BOOKSTORE_IP, BOOKSTORE_V1_IP, BOOKSTORE_V2_IP, REVIEWS_IP):
            self.ns_exec(self.backends, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        if self.ipv6:
            self._create_ipv6()

    def _create_ipv6(self) -> None:
        links = [
            (self.client_a, CLIENT_A_IP6, "ca", NODE_IP6_A),
            (self.client_b, CLIENT_B_IP6, "cb", NODE_IP6_B),
            (self.backends, BACKENDS_IP6, "be", NODE_IP6_BACKENDS),
        ]
        for ns, ip, node_if, node_ip in links:
            self.ns_exec(ns, "ip", "-6", "addr", "add", f"{ip}/64", "dev", "n0", "nodad")
            self.ns_exec(ns, "ip", "-6", "route", "add", "default", "via", node_ip)
            self.ns_exec(
                self.node, "ip", "-6", "addr", "add", f"{node_ip}/64", "dev", node_if, "nodad"
            )
        self.ns_exec(self.node, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
        self.ns_exec(self.node, "ip", "-6", "route", "add", SERVICE_CIDR6, "via", BACKENDS_IP6)
        self.ns_exec(self.node, "ip", "-6", "addr", "add", f"{GATEWAY_IP6}/128", "dev", "lo")
        for ip in (BOOKSTORE_IP6, BOOKSTORE_V1_IP6, BOOKSTORE_V2_IP6, REVIEWS_IP6):
            self.ns_exec(self.backends, "ip", "-6", "addr", "add", f"{ip}/128", "dev", "lo")

    def destroy(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self.procs.clear()
        for ns in reversed(self.created):
            # Any process still inside (a leaked child) would keep the namespace alive.
            pids = run(["ip", "netns", "pids", ns], check=False).split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns], check=False)
        self.created.clear()

    def leftovers(self) -> list[str]:
        names = run(["ip", "netns", "list"], check=False)
        return [line.split()[0] for line in names.splitlines() if self.prefix in line]

    # ------------------------------------------------------------------ processes

    def spawn(self, ns: str, argv: Sequence[str], label: str) -> Proc:
        proc = Proc(ns, argv, label)
        self.procs.append(proc)
        return proc

    def forget(self, proc: Proc) -> None:
        if proc in self.procs:
            self.procs.remove(proc)

    def http(
        self, ns: str, url: str, *, count: int = 1, host: str | None = None
    ) -> list[dict[str, Any]]:
        argv = [PYTHON, str(HERE / "netclient.py"), "http", url, "--count", str(count)]
        if host:
            argv += ["--host", host]
        out: list[dict[str, Any]] = json.loads(self.ns_exec(ns, *argv))
        return out

    def tcp(self, ns: str, host: str, port: int, send: str = "") -> dict[str, Any]:
        argv = [PYTHON, str(HERE / "netclient.py"), "tcp", host, str(port), "--send", send]
        out: dict[str, Any] = json.loads(self.ns_exec(ns, *argv))
        return out

    def outputs(self) -> str:
        return "\n".join(p.output() for p in self.procs)
