"""An HTTPS listener and a TLS Passthrough listener on one port, end to end (conformance
GatewayHTTPSAndTLSPassthroughSamePort): ``gatewayd run`` subprocesses, real handshakes
on 127.0.0.1.

The port has an HTTPS listener ``*.example.com`` (gatewayd's certificate, an HTTPRoute
to a ``gatewayd echo`` backend) and a TLS Passthrough listener ``abc.example.com`` (a
TLSRoute to a TLS echo backend with its own certificate).  Overlapping hostnames are
told apart by the ClientHello's server name, the more specific listener winning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from e2e_kit import (
    Doc,
    EchoBackend,
    EchoFactory,
    Gatewayd,
    backend_ref,
    conditions,
    deadline_loop,
    echo_header,
    free_port,
    gateway,
    gateway_class,
    to_yaml,
)
from tls_e2e_kit import (
    Cert,
    EchoServer,
    HttpsClient,
    call,
    make_cert,
    refused,
    tls_route,
    tls_route_results,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0


def listeners(port: int, *, with_tls: bool = True) -> list[Doc]:
    out: list[Doc] = [
        {
            "name": "https-terminate",
            "port": port,
            "protocol": "HTTPS",
            "hostname": "*.example.com",
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "gw-cert"}]},
        }
    ]
    if with_tls:
        out.append(
            {
                "name": "tls-passthrough",
                "port": port,
                "protocol": "TLS",
                "hostname": "abc.example.com",
                "tls": {"mode": "Passthrough"},
            }
        )
    return out


@dataclass
class Setup:
    port: int
    echo: EchoBackend
    backend: EchoServer
    gw_cert: Cert
    backend_cert: Cert
    tmp: Path

    def manifests(self, *, with_tls: bool = True) -> str:
        docs: list[Doc] = [
            gateway_class(),
            gateway("gw", listeners(self.port, with_tls=with_tls)),
            *self.echo.manifests(),
            *self.backend.manifests(),
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {
                    "parentRefs": [{"name": "gw", "sectionName": "https-terminate"}],
                    "rules": [{"backendRefs": [backend_ref("echo")]}],
                },
            },
            tls_route("pass", ["abc.example.com"], [("tls-echo", 1)], section="tls-passthrough"),
        ]
        secret: Doc = yaml.safe_load(self.gw_cert.secret_yaml("gw-cert"))
        return to_yaml([*docs, secret])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    echoes = EchoFactory()
    backend_cert = make_cert("abc.example.com")
    backend = EchoServer("tls-echo", backend_cert).start()
    try:
        (echo,) = echoes.start("echo")
        yield Setup(
            port=free_port(),
            echo=echo,
            backend=backend,
            gw_cert=make_cert("other.example.com"),
            backend_cert=backend_cert,
            tmp=tmp_path_factory.mktemp("sameport"),
        )
    finally:
        backend.stop()
        echoes.close()


@pytest.fixture(scope="module")
def daemon(setup: Setup) -> Iterator[Gatewayd]:
    d = Gatewayd(setup.tmp / "gatewayd", setup.manifests(), args=("--workers", "1"))
    try:
        yield d
    finally:
        d.stop()


def test_both_listeners_are_accepted_with_one_route_each(daemon: Gatewayd) -> None:
    status = daemon.status_of("Gateway", "gw")
    by_name = {ls["name"]: ls for ls in status["listeners"]}
    assert set(by_name) == {"https-terminate", "tls-passthrough"}
    for ls in by_name.values():
        c = conditions(ls)
        assert (c["Accepted"]["status"], c["Accepted"]["reason"]) == ("True", "Accepted")
        assert c["Conflicted"]["status"] == "False"
        assert c["Programmed"]["status"] == "True"
        assert ls["attachedRoutes"] == 1
    assert by_name["tls-passthrough"]["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "TLSRoute"}
    ]
    features = daemon.status_of("GatewayClass", "gatewayd", namespace=None)["supportedFeatures"]
    assert {"name": "GatewayHTTPSAndTLSPassthroughSamePort"} in features


def test_wildcard_sni_is_terminated_by_gatewayd(setup: Setup, daemon: Gatewayd) -> None:
    with HttpsClient(setup.port, "other.example.com") as c:
        assert c.peer_der == setup.gw_cert.der
        first = c.get("other.example.com").echo()
        assert echo_header(first, "x-forwarded-proto") == ["https"]
        # Keep-alive: the second request rides the same TLS connection.
        second = c.get("other.example.com")
        assert not second.will_close
        assert second.echo()["pod"] == first["pod"]
        # The Host abc.example.com selects the TLS listener: misdirected.
        assert c.get("abc.example.com").status == 421


def test_exact_sni_is_passed_through_to_the_tls_backend(setup: Setup, daemon: Gatewayd) -> None:
    before = tls_route_results(daemon, setup.port).get("passthrough", 0.0)
    answer = call(setup.port, "abc.example.com")
    assert answer.peer_der == setup.backend_cert.der
    assert answer.greeting == "tls-echo tls sni=abc.example.com"
    assert answer.echoed == b"ping\n"
    for _ in deadline_loop(TIMEOUT):
        if tls_route_results(daemon, setup.port).get("passthrough", 0.0) == before + 1:
            break
    else:
        raise AssertionError(daemon.metrics())


def test_server_name_of_no_listener_is_closed(setup: Setup, daemon: Gatewayd) -> None:
    connections = setup.backend.connections
    assert refused(setup.port, "example.org")
    assert refused(setup.port, None)
    assert setup.backend.connections == connections


def test_adding_the_tls_listener_to_an_https_port_serves_both(setup: Setup, tmp_path: Path) -> None:
    port = free_port()
    one = Setup(
        port=port,
        echo=setup.echo,
        backend=setup.backend,
        gw_cert=setup.gw_cert,
        backend_cert=setup.backend_cert,
        tmp=tmp_path,
    )
    d = Gatewayd(tmp_path / "d", one.manifests(with_tls=False), args=("--workers", "1"))
    try:
        with HttpsClient(port, "abc.example.com") as c:
            # HTTPS only: the wildcard listener takes abc.example.com as well.
            assert c.peer_der == setup.gw_cert.der
            assert c.get("abc.example.com").status == 200
        d.config.write_text(one.manifests())
        der = b""
        for _ in deadline_loop(15.0, 0.1):
            try:
                der = call(port, "abc.example.com").peer_der
            except (OSError, AssertionError):
                continue
            if der == setup.backend_cert.der:
                break
        assert der == setup.backend_cert.der, d.output()
        with HttpsClient(port, "other.example.com") as c:
            assert c.get("other.example.com").status == 200
    finally:
        d.stop()
