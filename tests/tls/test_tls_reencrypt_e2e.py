"""BackendTLSPolicy on TLSRoute backends behind a Terminate listener, end to end
(conformance BackendTLSPolicyTLSRouteTerminate): ``gatewayd run`` as a subprocess, real
handshakes over loopback, the echo servers of tls_e2e_kit.py.

One Terminate listener (gatewayd's certificate for *.example.com), three TLSRoutes:

- good.example.com -> echo-tls, a TLS backend a policy targets (its CA, hostname
  backend.example): gatewayd re-encrypts;
- wrong.example.com -> echo-wrong, a TLS backend whose policy trusts another CA;
- plain.example.com -> echo-plain, no policy: the decrypted bytes go in plaintext.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    conditions,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    prometheus_samples,
    to_yaml,
)
from tls_e2e_kit import (
    EchoServer,
    call,
    make_cert,
    read_line,
    tls_connection,
    tls_listener,
    tls_route,
)

pytestmark = pytest.mark.e2e

Doc = dict[str, Any]


def ca_config_map(name: str, pem: bytes) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"ca.crt": pem.decode()},
    }


def policy(name: str, service: str, ca: str) -> Doc:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": service, "sectionName": "tls"}],
            "validation": {
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca}],
                "hostname": "backend.example",
            },
        },
    }


class Env:
    def __init__(self, tmp: Path) -> None:
        self.cert_gw = make_cert("*.example.com")
        # Self-signed: each backend's certificate is its own CA.
        self.cert_backend = make_cert("backend.example")
        self.cert_other = make_cert("backend.example")
        self.tls = EchoServer("echo-tls", self.cert_backend).start()
        self.wrong = EchoServer("echo-wrong", self.cert_backend).start()
        self.plain = EchoServer("echo-plain").start()
        self.port = free_port()
        docs: list[Doc] = [
            gateway_class(),
            gateway(
                "gw",
                [tls_listener("term", self.port, mode="Terminate", secret="gw-cert")],
                address=LOCALHOST,
            ),
            *self.tls.manifests(),
            *self.wrong.manifests(),
            *self.plain.manifests(),
            tls_route("r-good", ["good.example.com"], [("echo-tls", 1)]),
            tls_route("r-wrong", ["wrong.example.com"], [("echo-wrong", 1)]),
            tls_route("r-plain", ["plain.example.com"], [("echo-plain", 1)]),
            ca_config_map("ca-backend", self.cert_backend.cert_pem),
            ca_config_map("ca-other", self.cert_other.cert_pem),
            policy("p-good", "echo-tls", "ca-backend"),
            policy("p-wrong", "echo-wrong", "ca-other"),
        ]
        self.daemon = Gatewayd(
            tmp / "gatewayd", to_yaml(docs) + "---\n" + self.cert_gw.secret_yaml("gw-cert")
        )

    def close(self) -> None:
        self.daemon.stop()
        for s in (self.tls, self.wrong, self.plain):
            s.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e: Env | None = None
    try:
        e = Env(tmp_path_factory.mktemp("reencrypt"))
        yield e
    finally:
        if e is not None:
            e.close()


def connect_failures(env: Env, service: str) -> float:
    samples = prometheus_samples(env.daemon.metrics(), "gatewayd_upstream_cx_connect_fail_total")
    return sum(v for labels, v in samples if labels.get("backend") == f"default/{service}:443")


def kit_conditions(ancestor: Doc) -> dict[str, tuple[str, str]]:
    return {k: (str(c["status"]), str(c["reason"])) for k, c in conditions(ancestor).items()}


def test_bytes_round_trip_over_a_second_tls_connection_with_the_policy_sni(env: Env) -> None:
    answer = call(env.port, "good.example.com", b"re-encrypted ping\n")
    assert answer.peer_der == env.cert_gw.der  # the client talks TLS with gatewayd
    # The backend's own TLS connection, with the policy hostname as SNI (conformance:
    # "Hostname: abc.example.com" in the echo server's TLS assertions).
    assert answer.greeting == "echo-tls tls sni=backend.example"
    assert answer.echoed == b"re-encrypted ping\n"
    assert b"re-encrypted ping\n" in env.tls.first_bytes


def test_the_gateway_is_the_policy_ancestor(env: Env) -> None:
    status = env.daemon.status_of("BackendTLSPolicy", "p-good")
    (ancestor,) = status["ancestors"]
    assert ancestor["ancestorRef"]["kind"] == "Gateway"
    assert ancestor["ancestorRef"]["name"] == "gw"
    conds = kit_conditions(ancestor)
    assert conds["Accepted"] == ("True", "Accepted")
    assert conds["ResolvedRefs"] == ("True", "ResolvedRefs")


def test_untrusted_backend_closes_the_client_and_gets_no_data(env: Env) -> None:
    out = env.daemon.child.stdout
    before = connect_failures(env, "echo-wrong")
    with tls_connection(env.port, "wrong.example.com") as tls:
        client = f"{LOCALHOST}:{tls.getsockname()[1]}"
        assert tls.getpeercert(binary_form=True) == env.cert_gw.der
        # gatewayd's verification of echo-wrong fails: the client connection is closed.
        assert read_line(tls) == ""
    # The backend's handshake never completed: no connection served, no byte received.
    assert env.wrong.connections == 0 and env.wrong.first_bytes == []
    for _ in deadline_loop(5):
        if connect_failures(env, "echo-wrong") == before + 1:
            break
    assert connect_failures(env, "echo-wrong") == before + 1
    line = out.wait_for(lambda s: f" {client} " in s, timeout=5)
    assert line is not None, "no access log line on stdout\n" + env.daemon.output()
    assert ' "- - -" 0 UF ' in line and line.endswith('"upstream_connect_failure"')


def test_no_policy_stays_plaintext(env: Env) -> None:
    answer = call(env.port, "plain.example.com", b"in the clear\n")
    assert answer.peer_der == env.cert_gw.der
    assert answer.greeting == "echo-plain plain"
    assert answer.echoed == b"in the clear\n"
    assert b"in the clear\n" in env.plain.first_bytes
