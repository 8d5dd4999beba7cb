"""BackendTLSPolicy end to end: ``gatewayd run`` (a subprocess, one worker) in front of
real TLS backends on loopback, with real handshakes.

The backends are small threaded HTTP/1.1 servers in this module (``gatewayd echo``
speaks cleartext only).  Each records the SNI it was asked for, the client certificate
it got, every TCP connection it accepted and every handshake that failed, so the tests
can check what gatewayd did on the wire, not only what the client saw.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from conftest import PKI, Issued

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import e2e_kit as kit

pytestmark = pytest.mark.e2e

LOCALHOST = kit.LOCALHOST
SECOND_ADDRESS = "127.0.0.2"  # the Gateway without a client certificate
SPIFFE = "spiffe://cluster.local/ns/default/sa/backend"

Doc = dict[str, Any]


# --------------------------------------------------------------------------- TLS backend


@dataclass
class Handshake:
    sni: str | None
    client_cn: str | None


@dataclass
class TLSBackend:
    """A threaded HTTP/1.1 server, TLS when ``ctx`` is given, keep-alive, JSON answers."""

    name: str
    ctx: ssl.SSLContext | None
    accepted: int = 0  # TCP connections accepted
    handshakes: list[Handshake] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _snis: dict[int, str | None] = field(default_factory=dict)
    _conns: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.create_server((LOCALHOST, 0))
        self.port: int = self.sock.getsockname()[1]
        if self.ctx is not None:
            self.ctx.sni_callback = self._on_sni
        self.thread = threading.Thread(target=self._accept, name=f"tls-{self.name}", daemon=True)
        self.thread.start()

    def _on_sni(self, sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        with self.lock:
            self._snis[id(sslobj)] = server_name

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10.0)
        stream: socket.socket = conn
        handshake = Handshake(sni=None, client_cn=None)
        try:
            if self.ctx is not None:
                try:
                    stream = self.ctx.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    with self.lock:
                        self.failures.append(str(exc))
                    return
                with self.lock:
                    self._conns.append(stream)
                    handshake.sni = self._snis.pop(id(stream), None)
                peer = stream.getpeercert()
                if peer:
                    subject = dict(x[0] for x in peer.get("subject", ()))
                    handshake.client_cn = subject.get("commonName")
                with self.lock:
                    self.handshakes.append(handshake)
            self._http(stream, handshake)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _http(self, stream: socket.socket, handshake: Handshake) -> None:
        reader = stream.makefile("rb")
        while True:
            line = reader.readline(65536)
            if not line:
                return
            path = line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "?"
            length = 0
            while True:
                header = reader.readline(65536)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                reader.read(length)
            body = json.dumps(
                {
                    "backend": self.name,
                    "path": path,
                    "sni": handshake.sni,
                    "client_cn": handshake.client_cn,
                    "tls": self.ctx is not None,
                }
            ).encode()
            stream.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                c.close()
        self.thread.join(5.0)


def server_context(leaf: Issued, client_ca: Issued | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*_pem_files(leaf))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.cert_pem.decode())
    return ctx


_PEM_DIR: list[Path] = []


def _pem_files(leaf: Issued) -> tuple[str, str]:
    base = _PEM_DIR[0]
    n = len(list(base.iterdir()))
    cert, key = base / f"{n}.crt", base / f"{n}.key"
    cert.write_bytes(leaf.cert_pem)
    key.write_bytes(leaf.key_pem)
    return str(cert), str(key)


# --------------------------------------------------------------------------- manifests


def ca_config_map(name: str, ca: Issued) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"ca.crt": ca.cert_pem.decode()},
    }


def tls_secret(name: str, leaf: Issued) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()},
    }


def policy(
    name: str,
    service: str,
    *,
    hostname: str,
    ca: str | None = "ca",
    sans: Sequence[Doc] = (),
) -> Doc:
    validation: Doc = {"hostname": hostname}
    if ca is not None:
        validation["caCertificateRefs"] = [{"group": "", "kind": "ConfigMap", "name": ca}]
    if sans:
        validation["subjectAltNames"] = list(sans)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": service}],
            "validation": validation,
        },
    }


def gateway(name: str, port: int, address: str, client_cert: str | None) -> Doc:
    doc = kit.gateway(name, [kit.listener("http", port)], address=address)
    if client_cert is not None:
        doc["spec"]["tls"] = {"backend": {"clientCertificateRef": {"name": client_cert}}}
    return doc


def route(name: str, parent: str, paths: Sequence[tuple[str, str]]) -> Doc:
    return kit.http_route(
        name,
        [
            kit.rule(
                matches=[kit.match(path, type="Exact")],
                backends=[kit.backend_ref(service, port=443)],
            )
            for path, service in paths
        ],
        parent=parent,
    )


# --------------------------------------------------------------------------- the setup


@dataclass
class Setup:
    daemon: kit.Gatewayd
    port: int
    backend: TLSBackend  # CA-signed backend.example (+ the SPIFFE URI)
    mtls: TLSBackend  # mtls.example, requires a client certificate from the client CA
    reuse: TLSBackend  # like ``backend``, used only by the reuse test
    plain: TLSBackend  # cleartext


# path -> Service; every Service listens on 443 and points at one of the backends.
PATHS = {
    "/good": "svc-good",
    "/wrong-ca": "svc-wrong-ca",
    "/wrong-host": "svc-wrong-host",
    "/san": "svc-san",
    "/san-uri": "svc-san-uri",
    "/no-ca": "svc-no-ca",
    "/plain": "svc-plain",
    "/mtls": "svc-mtls",
    "/reuse": "svc-reuse",
}


@pytest.fixture(scope="module")
def setup(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    _PEM_DIR[:] = [tmp_path_factory.mktemp("pem")]
    ca = pki.ca("backend CA")
    other_ca = pki.ca("some other CA")
    client_ca = pki.ca("gateway client CA")
    leaf = pki.leaf(ca, ("backend.example",), uris=(SPIFFE,))
    mtls_leaf = pki.leaf(ca, ("mtls.example",))
    client_leaf = pki.leaf(client_ca, ("gatewayd-client",), cn="gatewayd-client")

    backends = [
        TLSBackend("backend", server_context(leaf)),
        TLSBackend("mtls", server_context(mtls_leaf, client_ca)),
        TLSBackend("reuse", server_context(leaf)),
        TLSBackend("plain", None),
    ]
    backend, mtls, reuse, plain = backends
    target = {
        "svc-good": backend,
        "svc-wrong-ca": backend,
        "svc-wrong-host": backend,
        "svc-san": backend,
        "svc-san-uri": backend,
        "svc-no-ca": backend,
        "svc-plain": plain,
        "svc-mtls": mtls,
        "svc-reuse": reuse,
    }
    port = kit.free_port()
    docs: list[Doc] = [
        kit.gateway_class(),
        gateway("gw", port, LOCALHOST, "client-cert"),
        gateway("gw-no-client", port, SECOND_ADDRESS, None),
        route("r", "gw", list(PATHS.items())),
        route("r-no-client", "gw-no-client", [("/mtls", "svc-mtls")]),
        ca_config_map("ca", ca),
        ca_config_map("other-ca", other_ca),
        tls_secret("client-cert", client_leaf),
        policy("good", "svc-good", hostname="backend.example"),
        policy("wrong-ca", "svc-wrong-ca", hostname="backend.example", ca="other-ca"),
        policy("wrong-host", "svc-wrong-host", hostname="elsewhere.example"),
        # The hostname is only the SNI here: the SAN list is what is verified.
        policy(
            "san",
            "svc-san",
            hostname="sni-only.example",
            sans=[{"type": "Hostname", "hostname": "backend.example"}],
        ),
        policy(
            "san-uri",
            "svc-san-uri",
            hostname="sni-only.example",
            sans=[{"type": "URI", "uri": SPIFFE}],
        ),
        policy("no-ca", "svc-no-ca", hostname="backend.example", ca="missing"),
        policy("mtls", "svc-mtls", hostname="mtls.example"),
        policy("reuse", "svc-reuse", hostname="backend.example"),
    ]
    for service, be in target.items():
        docs += kit.backend_manifests(service, be.port, service_port=443, port_name="https")
    daemon = kit.Gatewayd(tmp_path_factory.mktemp("gatewayd"), docs)
    try:
        yield Setup(daemon=daemon, port=port, backend=backend, mtls=mtls, reuse=reuse, plain=plain)
    finally:
        daemon.stop()
        for be in backends:
            be.close()


def get(setup: Setup, path: str, address: str = LOCALHOST) -> kit.Reply:
    return kit.request(setup.port, path, host="app.example", address=address)


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """The backend threads record a failed handshake after the alert went out, which may
    be after gatewayd already answered the client: wait for it."""
    for _ in kit.deadline_loop(timeout, interval=0.01):
        if predicate():
            return True
    return predicate()


def connect_failures(setup: Setup, service: str) -> float:
    samples = kit.prometheus_samples(
        setup.daemon.metrics(), "gatewayd_upstream_cx_connect_fail_total"
    )
    return sum(v for labels, v in samples if labels.get("backend") == f"default/{service}:443")


# --------------------------------------------------------------------------- tests


def test_ca_and_matching_hostname_reach_the_backend_over_tls(setup: Setup) -> None:
    reply = get(setup, "/good")
    assert reply.status == 200, reply
    body = reply.json()
    assert body["backend"] == "backend" and body["tls"] is True and body["path"] == "/good"
    # "Hostname MUST be used as the SNI to connect to the backend (RFC 6066)."
    assert body["sni"] == "backend.example"
    status = setup.daemon.status_of("BackendTLSPolicy", "good")
    (ancestor,) = status["ancestors"]
    assert ancestor["ancestorRef"]["name"] == "gw"
    assert kit.conditions(ancestor)["Accepted"]["status"] == "True"


def test_unknown_ca_is_refused_and_counted(setup: Setup) -> None:
    before = connect_failures(setup, "svc-wrong-ca")
    failed = len(setup.backend.failures)
    reply = get(setup, "/wrong-ca")
    # Envoy answers an upstream TLS failure like any connect failure: 503, flag UF.
    assert reply.status == 503, reply
    assert connect_failures(setup, "svc-wrong-ca") == before + 1
    assert eventually(lambda: len(setup.backend.failures) > failed)  # it reached the backend


def test_hostname_mismatch_is_refused(setup: Setup) -> None:
    before = connect_failures(setup, "svc-wrong-host")
    reply = get(setup, "/wrong-host")
    assert reply.status == 503, reply
    assert connect_failures(setup, "svc-wrong-host") == before + 1


@pytest.mark.parametrize("path", ["/san", "/san-uri"])
def test_subject_alt_names_pass_where_the_hostname_would_not(setup: Setup, path: str) -> None:
    # The certificate does not cover sni-only.example; a listed SAN (the DNS name or the
    # SPIFFE URI it does carry) is what authenticates it.
    reply = get(setup, path)
    assert reply.status == 200, reply
    assert reply.json()["sni"] == "sni-only.example"


def test_policy_without_a_valid_ca_answers_500(setup: Setup) -> None:
    reply = get(setup, "/no-ca")
    assert reply.status == 500, reply
    status = setup.daemon.status_of("BackendTLSPolicy", "no-ca")
    conds = kit.conditions(status["ancestors"][0])
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == (
        "False",
        "NoValidCACertificate",
    )
    assert conds["ResolvedRefs"]["reason"] == "InvalidCACertificateRef"


def test_no_policy_stays_cleartext(setup: Setup) -> None:
    reply = get(setup, "/plain")
    assert reply.status == 200, reply
    assert reply.json()["tls"] is False


def test_gateway_client_certificate_is_presented_and_required(setup: Setup) -> None:
    reply = get(setup, "/mtls")
    assert reply.status == 200, reply
    assert reply.json()["client_cn"] == "gatewayd-client"
    failed = len(setup.mtls.failures)
    # The other Gateway has no client certificate: the backend refuses the handshake.
    # With TLS 1.3 the client finishes its side first and the refusal arrives as an
    # alert on the first read, so gatewayd reports an upstream reset.
    reply = get(setup, "/mtls", address=SECOND_ADDRESS)
    assert reply.status == 502, reply
    assert eventually(lambda: len(setup.mtls.failures) == failed + 1)
    assert "certificate" in setup.mtls.failures[-1].lower()


def test_keep_alive_requests_reuse_one_upstream_tls_connection(setup: Setup) -> None:
    before = setup.reuse.accepted
    with kit.Client(setup.port) as client:
        replies = [client.request("/reuse", host="app.example") for _ in range(4)]
    assert [r.status for r in replies] == [200] * 4
    assert setup.reuse.accepted - before == 1
    assert len(setup.reuse.handshakes) == 1
