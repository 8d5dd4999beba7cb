"""TCP and UDP backends and manifests for the TCPRoute / UDPRoute end-to-end tests.

Backends run on threads in the test process, on loopback, port 0.  Every loop is
bounded (socket timeouts, counted iterations).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Sequence
from typing import Any

from e2e_kit import LOCALHOST, Doc


def free_udp_port(host: str = LOCALHOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_tcp_and_udp_port(host: str = LOCALHOST, tries: int = 50) -> int:
    """A port number free for both TCP and UDP on ``host``.  A UDP port the kernel
    picks may be the local port of a TCP connection another test holds (both come from
    the ephemeral range): then the TCP bind fails (a CI run saw EADDRINUSE), so the
    number is checked for both and another is taken, at most ``tries`` times."""
    for _ in range(tries):
        port = free_udp_port(host)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free for both TCP and UDP in {tries} tries")


# --------------------------------------------------------------------------- TCP


class _TCPHandler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        owner = self.server.owner
        with owner.lock:
            owner.accepted += 1
        try:
            if owner.mode == "echo":
                # Greets with its name, echoes until the client's FIN, then says bye
                # (the other direction stays open after a half-close).
                sock.sendall(owner.name.encode() + b"\n")
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    sock.sendall(data)
                sock.sendall(b"bye from " + owner.name.encode() + b"\n")
            elif owner.mode == "stream":
                # Sends ``owner.stream_bytes`` of a repeating pattern, then closes.
                chunk = bytes(range(256)) * 256  # 64 KiB
                left = owner.stream_bytes
                while left > 0:
                    part = chunk[: min(left, len(chunk))]
                    sock.sendall(part)
                    left -= len(part)
        except OSError:
            pass
        finally:
            sock.close()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: TCPBackend) -> None:
        super().__init__((LOCALHOST, 0), _TCPHandler)
        self.owner = owner


class TCPBackend:
    """``mode``: "echo" (greets with ``name``, echoes, "bye" after the client's FIN) or
    "stream" (sends ``stream_bytes`` then closes)."""

    def __init__(self, name: str, mode: str = "echo", stream_bytes: int = 0) -> None:
        self.name = name
        self.mode = mode
        self.stream_bytes = stream_bytes
        self.accepted = 0
        self.lock = threading.Lock()
        self.server = _TCPServer(self)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------- UDP


class UDPBackend:
    """Answers every datagram with ``name + b":" + datagram`` and records, per source
    address, the datagrams in the order they arrived."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.seen: dict[tuple[str, int], list[bytes]] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        prefix = self.name.encode() + b":"
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.seen.setdefault(addr, []).append(data)
            try:
                self.sock.sendto(prefix + data, addr)
            except OSError:
                continue

    def sources(self) -> set[tuple[str, int]]:
        with self.lock:
            return set(self.seen)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


def udp_ask(sock: socket.socket, payload: bytes, timeout: float = 2.0) -> bytes | None:
    """Send one datagram from ``sock`` (connected to the listener) and read the answer;
    None when none arrives within ``timeout``."""
    sock.settimeout(timeout)
    sock.send(payload)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None


# --------------------------------------------------------------------------- manifests


def l4_backend(
    name: str, port: int, *, protocol: str = "TCP", namespace: str = "default"
) -> list[Doc]:
    """A Service (port 80, ``protocol``) with one 127.0.0.1 endpoint on ``port``."""
    ports = [{"name": "p", "port": 80, "protocol": protocol}]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"app": name}, "ports": ports},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-1",
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [LOCALHOST], "conditions": {"ready": True}}],
        },
    ]


def l4_route(
    kind: str,
    name: str,
    backends: Sequence[tuple[str, int | None] | tuple[str, int | None, str]],
    *,
    gateway: str = "gw",
    section: str | None = None,
    port: int | None = None,
    namespace: str = "default",
    created: str | None = None,
    version: str = "v1alpha2",
) -> Doc:
    """A TCPRoute or UDPRoute; ``backends``: (service, weight[, namespace])."""
    parent: dict[str, Any] = {"name": gateway}
    if section is not None:
        parent["sectionName"] = section
    if port is not None:
        parent["port"] = port
    refs: list[Doc] = []
    for entry in backends:
        ref: Doc = {"name": entry[0], "port": 80}
        if entry[1] is not None:
            ref["weight"] = entry[1]
        if len(entry) == 3:
            ref["namespace"] = entry[2]
        refs.append(ref)
    meta: Doc = {"name": name, "namespace": namespace}
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": f"gateway.networking.k8s.io/{version}",
        "kind": kind,
        "metadata": meta,
        "spec": {"parentRefs": [parent], "rules": [{"backendRefs": refs}]},
    }
