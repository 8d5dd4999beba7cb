"""The pure parts of the Kubernetes source: backoff, the kinds table, references."""

from __future__ import annotations

from gatewayd.routing.config.load import _KINDS
from gatewayd.runtime.kube.informer import Backoff
from gatewayd.runtime.kube.kinds import KINDS, VERBS, Keep
from gatewayd.runtime.sources.kubernetes import secret_refs


def test_backoff_doubles_from_half_a_second_to_thirty_with_jitter() -> None:
    low = Backoff(0.5, 30.0, rand=lambda: 0.0)
    high = Backoff(0.5, 30.0, rand=lambda: 1.0)
    lows = [low.next() for _ in range(10)]
    highs = [high.next() for _ in range(10)]
    assert highs[:4] == [0.5, 1.0, 2.0, 4.0]
    assert highs[-1] == 30.0  # capped
    assert lows[:2] == [0.25, 0.5]  # jitter: down to half the delay
    high.reset()
    assert high.next() == 0.5


def test_kinds_table_covers_every_kind_the_loader_reads_at_its_versions() -> None:
    assert {k.kind for k in KINDS} == set(_KINDS)
    for k in KINDS:
        info = _KINDS[k.kind]
        assert k.group == info.group
        assert set(k.versions) == set(info.versions), k.kind
        assert k.namespaced == info.namespaced
    assert {k.kind for k in KINDS if k.keep is Keep.REFERENCED} == {"Secret", "ConfigMap"}
    assert VERBS == ("get", "list", "watch")


def test_kind_paths() -> None:
    by = {k.kind: k for k in KINDS}
    assert by["HTTPRoute"].path("v1") == "/apis/gateway.networking.k8s.io/v1/httproutes"
    assert by["Secret"].object_path("v1", "ns", "s") == "/api/v1/namespaces/ns/secrets/s"
    assert by["Namespace"].object_path("v1", "", "ns") == "/api/v1/namespaces/ns"


def test_secret_refs_of_gateways_and_policies() -> None:
    gateway_spec = {
        "listeners": [
            {
                "name": "https",
                "tls": {
                    "certificateRefs": [{"name": "cert"}, {"name": "other", "namespace": "certs"}],
                    "frontendValidation": {
                        "caCertificateRefs": [{"kind": "ConfigMap", "group": "", "name": "ca"}]
                    },
                },
            },
            {"name": "foreign", "tls": {"certificateRefs": [{"group": "x.io", "name": "no"}]}},
        ],
        "tls": {"backend": {"clientCertificateRef": {"name": "client"}}},
    }
    assert set(secret_refs(gateway_spec, "default")) == {
        ("Secret", "default", "cert"),
        ("Secret", "certs", "other"),
        ("ConfigMap", "default", "ca"),
        ("Secret", "default", "client"),
    }
    policy_spec = {"validation": {"caCertificateRefs": [{"kind": "Secret", "name": "ca2"}]}}
    assert set(secret_refs(policy_spec, "apps")) == {("Secret", "apps", "ca2")}
    assert list(secret_refs("garbage", "x")) == []
