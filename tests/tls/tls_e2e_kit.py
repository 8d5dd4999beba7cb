"""Backends and clients for the TLS listener end-to-end tests (tests/tls/*_e2e.py).

``EchoServer`` is an asyncio server on its own thread, TLS (a certificate from
``gatewayd.tls.certs.self_signed``) or plain TCP.  On each connection it first sends one
line naming itself -- ``<name> tls sni=<server name>`` or ``<name> plain`` -- then echoes
every byte back.  It counts connections and keeps the first bytes each one sent, so a
test can tell that a backend was never contacted, or that it received plaintext.

The clients speak real TLS with the standard ``ssl`` module; ``client_hello_bytes`` and
``finish_handshake`` drive a handshake through memory BIOs so that a test controls how
the ClientHello reaches the wire (1-byte writes, several TLS records).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from e2e_kit import LOCALHOST, Gatewayd, Reply, backend_manifests, prometheus_samples

from gatewayd.tls.certs import load_keypair, secret_manifest, self_signed
from gatewayd.tls.context import server_context

IO_TIMEOUT = 5.0


@dataclass
class Cert:
    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert_pem.decode("ascii"))

    def secret_yaml(self, name: str, namespace: str = "default") -> str:
        return secret_manifest(self.cert_pem, self.key_pem, name=name, namespace=namespace)


def make_cert(*hosts: str) -> Cert:
    cert, key = self_signed(list(hosts))
    return Cert(cert, key)


def server_ssl_context(cert: Cert) -> ssl.SSLContext:
    info = load_keypair(cert.cert_pem, cert.key_pem, now=dt.datetime.now(dt.UTC))
    return server_context(info, alpn=())


@dataclass
class EchoServer:
    name: str
    cert: Cert | None = None
    port: int = 0
    connections: int = 0
    first_bytes: list[bytes] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> EchoServer:
        ready = threading.Event()
        ctx = server_ssl_context(self.cert) if self.cert is not None else None
        if ctx is not None:

            def remember_sni(sslobj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
                sslobj.seen_sni = name

            ctx.sni_callback = remember_sni

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ctx)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.run_until_complete(_end_connections())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"echo-{self.name}", daemon=True)
        self._thread.start()
        assert ready.wait(10), f"echo server {self.name} did not start"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is not None:
            greeting = f"{self.name} tls sni={getattr(sslobj, 'seen_sni', None)}\n"
        else:
            greeting = f"{self.name} plain\n"
        first = True
        try:
            writer.write(greeting.encode())
            while data := await reader.read(65536):
                if first:
                    with self._lock:
                        self.first_bytes.append(data[:64])
                    first = False
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()  # also when the server stops (cancelled)

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)

    def manifests(self, service_port: int = 443) -> list[dict[str, Any]]:
        return backend_manifests(self.name, self.port, service_port=service_port, port_name="tls")


# --------------------------------------------------------------------------- manifests


def tls_listener(
    name: str, port: int, *, mode: str, hostname: str | None = None, secret: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "port": port, "protocol": "TLS", "tls": {"mode": mode}}
    if hostname is not None:
        doc["hostname"] = hostname
    if secret is not None:
        doc["tls"]["certificateRefs"] = [{"name": secret}]
    return doc


def tls_route(
    name: str,
    hostnames: list[str],
    backends: list[tuple[str, int]],
    *,
    parent: str = "gw",
    section: str | None = None,
    port: int = 443,
) -> dict[str, Any]:
    """A TLSRoute; ``backends`` are (service name, weight)."""
    parent_ref: dict[str, Any] = {"name": parent}
    if section is not None:
        parent_ref["sectionName"] = section
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "TLSRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "parentRefs": [parent_ref],
            "hostnames": hostnames,
            "rules": [
                {"backendRefs": [{"name": n, "port": port, "weight": w} for n, w in backends]}
            ],
        },
    }


# --------------------------------------------------------------------------- clients


def client_context() -> ssl.SSLContext:
    """Accepts any certificate: the tests compare the peer's DER with the one expected,
    which says exactly who answered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass
class Answer:
    greeting: str
    echoed: bytes
    peer_der: bytes


def read_line(tls: ssl.SSLSocket | socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = tls.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode()


def read_exactly(tls: ssl.SSLSocket | socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = tls.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


@contextlib.contextmanager
def tls_connection(port: int, sni: str | None) -> Iterator[ssl.SSLSocket]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        tls = client_context().wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise
    with tls:
        yield tls


def call(port: int, sni: str, payload: bytes = b"ping\n") -> Answer:
    """One TLS connection: read the greeting, send ``payload``, read it back."""
    with tls_connection(port, sni) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        greeting = read_line(tls)
        tls.sendall(payload)
        echoed = read_exactly(tls, len(payload))
    return Answer(greeting.strip(), echoed, der)


def refused(port: int, sni: str | None) -> str:
    """How a handshake that gatewayd must refuse ended (an exception name); fails the
    test when it completes."""
    try:
        with tls_connection(port, sni) as tls:
            line = read_line(tls)
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__
    raise AssertionError(f"handshake with sni={sni!r} completed; server said {line!r}")


def client_hello_bytes(sni: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A client SSLObject and the ClientHello it wants to send (whole records)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing, outgoing.read()


def split_records(hello: bytes, pieces: int) -> bytes:
    """The same handshake bytes re-framed as ``pieces`` TLS records (RFC 8446 5.1 allows
    a handshake message to span records)."""
    header, body = hello[:5], hello[5:]
    assert header[0] == 22 and int.from_bytes(header[3:5], "big") == len(body)
    size = -(-len(body) // pieces)
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += header[:3] + len(part).to_bytes(2, "big") + part
    return out


def finish_handshake(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    """Complete a memory-BIO handshake whose ClientHello was already sent."""
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pending = outgoing.read()
            if pending:
                sock.sendall(pending)
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            incoming.write(data)
            assert time.monotonic() < deadline, "handshake too slow"
            continue
        pending = outgoing.read()
        if pending:
            sock.sendall(pending)
        return


def bio_read_line(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO) -> str:
    data = b""
    while not data.endswith(b"\n"):
        try:
            data += obj.read(1)
        except ssl.SSLWantReadError:
            chunk = sock.recv(65536)
            if not chunk:
                break
            incoming.write(chunk)
    return data.decode().strip()


# --------------------------------------------------------------------------- HTTPS clients


async def _end_connections() -> None:
    """The connections still open when an in-test server stops: their handlers are
    cancelled and their transports closed on a loop turn before the loop closes (else
    the collector finds them later, a ResourceWarning in whatever test runs then)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)


class HttpsClient:
    """One keep-alive HTTPS connection to 127.0.0.1:``port`` with server name ``sni``
    (``ctx``: the client context, by default one that accepts any certificate)."""

    def __init__(
        self, port: int, sni: str | None, ctx: ssl.SSLContext | None = None, timeout: float = 5.0
    ) -> None:
        raw = socket.create_connection((LOCALHOST, port), timeout=timeout)
        try:
            self.tls = (ctx or client_context()).wrap_socket(raw, server_hostname=sni)
        except BaseException:
            raw.close()
            raise
        self.conn = http.client.HTTPConnection(LOCALHOST, port, timeout=timeout)
        self.conn.sock = self.tls

    @property
    def peer_der(self) -> bytes:
        der = self.tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def get(self, host: str, path: str = "/") -> Reply:
        self.conn.request("GET", path, headers={"Host": host})
        resp = self.conn.getresponse()
        return Reply(resp.status, list(resp.getheaders()), resp.read(), resp.will_close)

    def close(self) -> None:
        self.conn.close()
        self.tls.close()

    def __enter__(self) -> HttpsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- daemon state


def listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on 127.0.0.1:``port`` (state 0A in /proc/net/tcp):
    the same inodes after a reload mean the port was not bound again."""
    local = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def tls_route_results(daemon: Gatewayd, port: int) -> dict[str, float]:
    """``gatewayd_tls_route_cx_total`` of the listener port, by result."""
    samples = prometheus_samples(daemon.metrics(), "gatewayd_tls_route_cx_total")
    label = daemon.listener_label(port)
    return {s["result"]: v for s, v in samples if s.get("listener") == label}
