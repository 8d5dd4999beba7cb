"""BackendTLSPolicy end to end through the pure pipeline: manifests -> load/validate ->
status (policy ancestors) -> compiled backends with their TLS settings."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import yaml

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import LoadResult, load_documents
from gatewayd.routing.control.bindings import Resolution
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.backends import BackendTLS
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.rules import CompiledBackend
from gatewayd.routing.snapshot.table import SNITable
from gatewayd.tls.certs import self_signed

CONTROLLER = "gatewayd.dev/gateway-controller"
GW = "gateway.networking.k8s.io/v1"
ADDRESS = "127.0.0.1"
ADDRESS2 = "127.0.0.2"
CA_PEM, _CA_KEY = self_signed(["ca.example"])
OTHER_CA_PEM, _ = self_signed(["other-ca.example"])
CLIENT_CERT, CLIENT_KEY = self_signed(["gateway.example"])

Doc = dict[str, Any]


# --------------------------------------------------------------------------- builders


def gateway(name: str = "gw", address: str = ADDRESS, client_cert: str | None = None) -> Doc:
    spec: Doc = {
        "gatewayClassName": "gatewayd",
        "addresses": [{"type": "IPAddress", "value": address}],
        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
    }
    if client_cert is not None:
        spec["tls"] = {"backend": {"clientCertificateRef": {"name": client_cert}}}
    return {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": name}, "spec": spec}


def route(
    name: str = "r",
    *,
    parent: str = "gw",
    backends: Sequence[tuple[str, int]] = (("svc", 443),),
    mirror: tuple[str, int] | None = None,
) -> Doc:
    rules: list[Doc] = []
    for i, (svc, port) in enumerate(backends):
        rule: Doc = {
            "matches": [{"path": {"type": "PathPrefix", "value": f"/{i}"}}],
            "backendRefs": [{"name": svc, "port": port}],
        }
        if mirror is not None:
            rule["filters"] = [
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": {"name": mirror[0], "port": mirror[1]}},
                }
            ]
        rules.append(rule)
    return {
        "apiVersion": GW,
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": [{"name": parent}], "rules": rules},
    }


def service(
    name: str = "svc", ports: Sequence[tuple[str, int]] = (("https", 443), ("http", 80))
) -> list[Doc]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"ports": [{"name": n, "port": p} for n, p in ports]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": n, "port": 8000 + p} for n, p in ports],
            "endpoints": [{"addresses": ["127.0.0.1"]}],
        },
    ]


def ca_map(name: str = "ca", pem: bytes | str = CA_PEM, key: str = "ca.crt") -> Doc:
    value = pem.decode() if isinstance(pem, bytes) else pem
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {key: value},
    }


def client_secret(name: str = "client") -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": CLIENT_CERT.decode(), "tls.key": CLIENT_KEY.decode()},
    }


def policy(
    name: str = "p",
    *,
    target: str = "svc",
    section: str | None = None,
    hostname: str = "backend.example",
    ca_refs: Sequence[Doc] | None = None,
    well_known: str | None = None,
    sans: Sequence[Doc] = (),
    created: str | None = None,
    api_version: str = GW,
    targets: Sequence[Doc] | None = None,
) -> Doc:
    target_ref: Doc = {"group": "", "kind": "Service", "name": target}
    if section is not None:
        target_ref["sectionName"] = section
    validation: Doc = {"hostname": hostname}
    if well_known is not None:
        validation["wellKnownCACertificates"] = well_known
    if ca_refs is None and well_known is None:
        ca_refs = [{"group": "", "kind": "ConfigMap", "name": "ca"}]
    if ca_refs is not None:
        validation["caCertificateRefs"] = list(ca_refs)
    if sans:
        validation["subjectAltNames"] = list(sans)
    meta: Doc = {"name": name}
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": api_version,
        "kind": "BackendTLSPolicy",
        "metadata": meta,
        "spec": {
            "targetRefs": list(targets) if targets is not None else [target_ref],
            "validation": validation,
        },
    }


def base(*extra: Doc | list[Doc]) -> list[Doc]:
    docs: list[Doc] = [
        {
            "apiVersion": GW,
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayd"},
            "spec": {"controllerName": CONTROLLER},
        },
        gateway(),
        route(backends=[("svc", 443), ("svc", 80)]),
        *service(),
        ca_map(),
    ]
    for e in extra:
        docs.extend(e if isinstance(e, list) else [e])
    return docs


def load(docs: Sequence[Doc]) -> LoadResult:
    return load_documents([("f.yaml", yaml.safe_dump_all(list(docs)))])


def run(docs: Sequence[Doc]) -> tuple[LoadResult, Resolution, Snapshot]:
    loaded = load(docs)
    assert [str(p) for p in loaded.problems] == []
    res = resolve(loaded.config, controller_name=CONTROLLER)
    return loaded, res, compile_snapshot(res, generation=1)


def policy_status(res: Resolution, name: str = "p") -> Mapping[str, Any]:
    for st in res.statuses:
        if st.kind == "BackendTLSPolicy" and st.name == name:
            return st.status
    raise AssertionError(f"no status for BackendTLSPolicy {name}")


def conditions(res: Resolution, name: str = "p", ancestor: int = 0) -> dict[str, tuple[str, str]]:
    anc = policy_status(res, name)["ancestors"][ancestor]
    return {c["type"]: (c["status"], c["reason"]) for c in anc["conditions"]}


def backend(snap: Snapshot, path: str = "/0", address: str = ADDRESS) -> CompiledBackend:
    hit = snap.ports[(address, 80)].table.lookup("h", "GET", path, "", {})
    assert hit is not None
    return hit.rule.backends[0]


def tls_of(snap: Snapshot, path: str = "/0", address: str = ADDRESS) -> BackendTLS:
    tls = backend(snap, path, address).tls
    assert tls is not None
    return tls


# --------------------------------------------------------------------------- load / validate


@pytest.mark.parametrize("version", ["v1", "v1alpha3"])
def test_policy_loads_in_both_served_versions(version: str) -> None:
    loaded = load([policy(api_version=f"gateway.networking.k8s.io/{version}")])
    assert loaded.problems == ()
    (p,) = loaded.config.backend_tls_policies
    assert p.validation.hostname == "backend.example"
    assert p.target_refs[0].name == "svc"
    assert p.validation.ca_certificate_refs[0].kind == "ConfigMap"


def test_unserved_version_is_reported() -> None:
    loaded = load([policy(api_version="gateway.networking.k8s.io/v1alpha2")])
    assert [str(p) for p in loaded.problems] == [
        'f.yaml:0: BackendTLSPolicy default/p: apiVersion: "gateway.networking.k8s.io/v1alpha2" '
        "is not served for BackendTLSPolicy; use gateway.networking.k8s.io/v1 or "
        "gateway.networking.k8s.io/v1alpha3"
    ]


def _problems(doc: Doc) -> list[str]:
    return [str(p) for p in load([doc]).problems]


PREFIX = "f.yaml:0: BackendTLSPolicy default/p: "


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda v: v.pop("hostname"),
            "spec.validation.hostname: is required",
        ),
        (
            lambda v: v.update(hostname="*.example.com"),
            'spec.validation.hostname: "*.example.com" is not a precise hostname',
        ),
        (
            lambda v: v.update(wellKnownCACertificates="System"),
            "spec.validation: must not contain both caCertificateRefs and wellKnownCACertificates",
        ),
        (
            lambda v: v.pop("caCertificateRefs"),
            "spec.validation: must specify either caCertificateRefs",
        ),
        (
            lambda v: (v.pop("caCertificateRefs"), v.update(wellKnownCACertificates="Mozilla")),
            "spec.validation.wellKnownCACertificates: must be one of System",
        ),
        (
            lambda v: v.update(subjectAltNames=[{"type": "Hostname"}]),
            "spec.validation.subjectAltNames[0].hostname: is required when type is Hostname",
        ),
        (
            lambda v: v.update(
                subjectAltNames=[{"type": "URI", "uri": "spiffe://a/b", "hostname": "a.b"}]
            ),
            "spec.validation.subjectAltNames[0].hostname: must not be set when type is URI",
        ),
        (
            lambda v: v.update(subjectAltNames=[{"type": "URI", "uri": "not-a-uri"}]),
            'spec.validation.subjectAltNames[0].uri: "not-a-uri" is not an absolute URI',
        ),
        (
            lambda v: v.update(subjectAltNames=[{"type": "IP", "hostname": "a.b"}]),
            "spec.validation.subjectAltNames[0].type: must be one of Hostname, URI",
        ),
        (
            lambda v: v.update(caCertificateRefs=[{"name": "ca"}]),
            "spec.validation.caCertificateRefs[0].group: is required",
        ),
    ],
)
def test_validation_errors_name_file_object_and_field(change: Any, expected: str) -> None:
    doc = policy()
    change(doc["spec"]["validation"])
    problems = _problems(doc)
    assert problems, "the policy should have been rejected"
    assert problems[0].startswith(PREFIX + expected), problems


def test_target_ref_rules() -> None:
    svc = {"group": "", "kind": "Service", "name": "svc"}
    assert _problems(policy(targets=[])) == [PREFIX + "spec.targetRefs: must have at least 1 item"]
    assert _problems(policy(targets=[svc, svc])) == [
        PREFIX + "spec.targetRefs[1]: sectionName must be unique when targetRefs includes 2 or "
        "more references to the same target (Service svc)"
    ]
    assert _problems(policy(targets=[svc, {**svc, "sectionName": "https"}])) == [
        PREFIX + "spec.targetRefs[1]: sectionName must be specified when targetRefs includes 2 "
        "or more references to the same target (Service svc)"
    ]
    two_ports = [{**svc, "sectionName": "https"}, {**svc, "sectionName": "http"}]
    assert _problems(policy(targets=two_ports)) == []
    assert _problems(policy(targets=[{"name": "svc"}]))[:2] == [
        PREFIX + "spec.targetRefs[0].group: is required",
        PREFIX + "spec.targetRefs[0].kind: is required",
    ]


# --------------------------------------------------------------------------- status + compile


def test_accepted_policy_turns_the_targeted_backend_to_tls() -> None:
    _, res, snap = run(base(policy(sans=[{"type": "Hostname", "hostname": "alt.example"}])))
    status = policy_status(res)
    (anc,) = status["ancestors"]
    assert anc["ancestorRef"] == {
        "group": "gateway.networking.k8s.io",
        "kind": "Gateway",
        "namespace": "default",
        "name": "gw",
    }
    assert anc["controllerName"] == CONTROLLER
    assert conditions(res) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }
    tls = tls_of(snap)
    assert tls.hostname == "backend.example"
    assert tls.ca_pem is not None and b"BEGIN CERTIFICATE" in tls.ca_pem
    assert tls.subject_alt_names == ("alt.example",)
    assert tls.client_certificate is None and tls.error is None
    assert tls.policy == "default/p"
    # Without sectionName the whole Service is targeted: both ports.
    assert backend(snap, "/1").tls == tls
    assert backend(snap).invalid_status is None


def test_no_policy_keeps_cleartext() -> None:
    _, res, snap = run(base())
    assert backend(snap).tls is None
    assert res.backend_tls == {}


def test_section_name_targets_one_port_and_wins_over_the_whole_service() -> None:
    _, res, snap = run(base(policy("port", section="https", hostname="port.example")))
    assert tls_of(snap).hostname == "port.example"
    assert backend(snap, "/1").tls is None
    _, res, snap = run(
        base(
            policy("port", section="https", hostname="port.example"),
            policy("whole", hostname="whole.example"),
        )
    )
    assert tls_of(snap).hostname == "port.example"
    assert tls_of(snap, "/1").hostname == "whole.example"
    assert conditions(res, "port")["Accepted"] == ("True", "Accepted")
    assert conditions(res, "whole")["Accepted"] == ("True", "Accepted")


def test_conflicting_policies_the_older_wins_then_the_name() -> None:
    _, res, snap = run(
        base(
            policy("a-newer", hostname="a.example", created="2024-01-02T00:00:00Z"),
            policy("z-older", hostname="z.example", created="2024-01-01T00:00:00Z"),
        )
    )
    assert conditions(res, "z-older")["Accepted"] == ("True", "Accepted")
    assert conditions(res, "a-newer")["Accepted"] == ("False", "Conflicted")
    assert "default/z-older takes precedence" in str(policy_status(res, "a-newer"))
    assert tls_of(snap).hostname == "z.example"
    _, res, snap = run(base(policy("b", hostname="b.example"), policy("a", hostname="a.example")))
    assert conditions(res, "a")["Accepted"] == ("True", "Accepted")
    assert conditions(res, "b")["Accepted"] == ("False", "Conflicted")
    assert tls_of(snap).hostname == "a.example"


@pytest.mark.parametrize(
    ("extra", "ref", "reason", "message"),
    [
        (
            [],
            {"group": "", "kind": "ConfigMap", "name": "missing"},
            "InvalidCACertificateRef",
            "not found",
        ),
        (
            [ca_map("nokey", key="other.crt")],
            {"group": "", "kind": "ConfigMap", "name": "nokey"},
            "InvalidCACertificateRef",
            "has no ca.crt key",
        ),
        (
            [ca_map("garbage", pem="not a certificate")],
            {"group": "", "kind": "ConfigMap", "name": "garbage"},
            "InvalidCACertificateRef",
            "ca.crt",
        ),
        (
            [],
            {"group": "invalid.io", "kind": "InvalidKind", "name": "x"},
            "InvalidKind",
            "unsupported kind",
        ),
        ([], {"group": "", "kind": "Secret", "name": "ca"}, "InvalidKind", "unsupported kind"),
    ],
)
def test_no_valid_ca_is_not_accepted_and_the_backend_answers_500(
    extra: list[Doc], ref: Doc, reason: str, message: str
) -> None:
    _, res, snap = run(base(*extra, policy(ca_refs=[ref])))
    assert conditions(res) == {
        "Accepted": ("False", "NoValidCACertificate"),
        "ResolvedRefs": ("False", reason),
    }
    resolved = policy_status(res)["ancestors"][0]["conditions"][1]
    assert message in resolved["message"] and "caCertificateRefs[0]" in resolved["message"]
    b = backend(snap)
    # "Connections using an invalid CACertificateRef MUST fail ... HTTP 5xx"
    assert b.invalid_status == 500
    assert b.tls is not None and b.tls.error is not None


def test_one_valid_ca_of_two_is_used_and_resolved_refs_says_what_is_wrong() -> None:
    refs = [
        {"group": "", "kind": "ConfigMap", "name": "missing"},
        {"group": "", "kind": "ConfigMap", "name": "ca"},
    ]
    _, res, snap = run(base(policy(ca_refs=refs)))
    assert conditions(res) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("False", "InvalidCACertificateRef"),
    }
    tls = tls_of(snap)
    assert tls.error is None and tls.ca_pem is not None
    assert backend(snap).invalid_status is None


def test_well_known_system_uses_the_system_store() -> None:
    _, res, snap = run(base(policy(ca_refs=[], well_known="System")))
    assert conditions(res)["Accepted"] == ("True", "Accepted")
    assert tls_of(snap).ca_pem is None


def test_uri_and_hostname_subject_alt_names() -> None:
    sans = [
        {"type": "URI", "uri": "spiffe://cluster.local/ns/default/sa/backend"},
        {"type": "Hostname", "hostname": "*.alt.example"},
    ]
    _, _, snap = run(base(policy(sans=sans)))
    assert tls_of(snap).subject_alt_names == (
        "spiffe://cluster.local/ns/default/sa/backend",
        "*.alt.example",
    )


def test_target_not_found() -> None:
    _, res, _ = run(base(route("r2", backends=[("ghost", 443)]), policy(target="ghost")))
    assert conditions(res)["Accepted"] == ("False", "TargetNotFound")
    _, res, snap = run(base(policy(section="nope")))
    assert conditions(res)["Accepted"] == ("False", "TargetNotFound")
    assert "no port named 'nope'" in str(policy_status(res))
    assert backend(snap).tls is None


def test_policy_without_a_route_of_ours_has_no_ancestor() -> None:
    _, res, _ = run(base(*service("lonely"), policy(target="lonely")))
    assert policy_status(res) == {"ancestors": []}
    assert res.backend_tls[("default", "lonely", 443)].hostname == "backend.example"


def test_gateway_client_certificate_goes_into_its_backends_only() -> None:
    docs = base(
        gateway("gw2", ADDRESS2, client_cert="client"),
        client_secret(),
        route("r2", parent="gw2"),
        policy(),
    )
    _, res, snap = run(docs)
    plain_gw = tls_of(snap, address=ADDRESS)
    mtls_gw = tls_of(snap, address=ADDRESS2)
    assert plain_gw.client_certificate is None
    assert mtls_gw.client_certificate is not None
    assert mtls_gw.client_certificate.chain_pem == CLIENT_CERT
    assert mtls_gw.client_certificate.key_pem == CLIENT_KEY
    assert mtls_gw.key != plain_gw.key  # pooled connections never mix the two
    ancestors = [a["ancestorRef"]["name"] for a in policy_status(res)["ancestors"]]
    assert ancestors == ["gw", "gw2"]


def test_unresolvable_client_certificate_is_not_used() -> None:
    docs = base(gateway("gw2", ADDRESS2, client_cert="absent"), route("r2", parent="gw2"), policy())
    _, res, snap = run(docs)
    assert tls_of(snap, address=ADDRESS2).client_certificate is None
    gw2 = next(st for st in res.statuses if st.kind == "Gateway" and st.name == "gw2")
    resolved = next(c for c in gw2.status["conditions"] if c["type"] == "ResolvedRefs")
    assert resolved["reason"] == "InvalidClientCertificateRef"


def test_mirror_to_a_tls_backend_carries_its_settings() -> None:
    docs = base(*service("shadow"), route("m", backends=[("svc", 80)], mirror=("shadow", 443)))
    docs = [d for d in docs if d["metadata"]["name"] != "r"]
    _, res, snap = run([*docs, policy(target="shadow", hostname="shadow.example")])
    hit = snap.ports[(ADDRESS, 80)].table.lookup("h", "GET", "/0", "", {})
    assert hit is not None
    (mirror,) = hit.rule.mirrors
    assert mirror.backend.tls is not None
    assert mirror.backend.tls.hostname == "shadow.example"
    assert conditions(res)["Accepted"] == ("True", "Accepted")


def test_snapshot_with_tls_settings_pickles() -> None:
    docs = base(
        gateway("gw2", ADDRESS2, client_cert="client"),
        client_secret(),
        route("r2", parent="gw2"),
        policy(),
    )
    _, _, snap = run(docs)
    copy = pickle.loads(pickle.dumps(snap))
    assert tls_of(copy, address=ADDRESS2) == tls_of(snap, address=ADDRESS2)
    assert tls_of(copy, address=ADDRESS2).key == tls_of(snap, address=ADDRESS2).key


def test_any_well_formed_ca_is_accepted_verification_happens_on_connect() -> None:
    other = [{"group": "", "kind": "ConfigMap", "name": "other"}]
    _, res, snap = run(base(ca_map("other", OTHER_CA_PEM), policy(ca_refs=other)))
    assert conditions(res)["Accepted"] == ("True", "Accepted")
    _, _, default_snap = run(base(policy()))
    assert tls_of(snap).ca_pem != tls_of(default_snap).ca_pem
    assert tls_of(snap).key != tls_of(default_snap).key


def _tls_entries(node: object) -> list[object]:
    if isinstance(node, dict):
        found = [node["tls"]] if isinstance(node.get("tls"), dict) else []
        return found + [t for v in node.values() for t in _tls_entries(v)]
    if isinstance(node, list):
        return [t for v in node for t in _tls_entries(v)]
    return []


def test_config_dump_shows_tls_settings_without_key_material() -> None:
    docs = base(
        gateway("gw2", ADDRESS2, client_cert="client"),
        client_secret(),
        route("r2", parent="gw2"),
        policy(sans=[{"type": "URI", "uri": "spiffe://a/b"}]),
    )
    _, _, snap = run(docs)
    dump = snap.to_json()
    assert "BEGIN" not in json.dumps(dump)  # no certificate, no private key
    entries = _tls_entries(dump)
    expected = {
        "policy": "default/p",
        "sni": "backend.example",
        "trust": "caCertificateRefs",
        "subjectAltNames": ["spiffe://a/b"],
    }
    assert {**expected, "clientCertificate": True} in entries  # gw2's backends
    assert {**expected, "clientCertificate": False} in entries  # gw's backends


def test_tls_passthrough_routes_ignore_the_policy() -> None:
    passthrough = gateway("tls-gw", ADDRESS2)
    passthrough["spec"]["listeners"] = [
        {"name": "tls", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}}
    ]
    tls_route = {
        "apiVersion": GW,
        "kind": "TLSRoute",
        "metadata": {"name": "t"},
        "spec": {
            "parentRefs": [{"name": "tls-gw"}],
            "hostnames": ["app.example"],
            "rules": [{"backendRefs": [{"name": "svc", "port": 443}]}],
        },
    }
    docs = [d for d in base(passthrough, tls_route, policy()) if d["metadata"]["name"] != "r"]
    _, res, snap = run(docs)
    table = snap.ports[(ADDRESS2, 443)].table
    assert isinstance(table, SNITable)
    hit = table.lookup_sni("app.example")
    assert hit is not None
    (b,) = hit.rule.backends
    assert b.tls is None  # the client's own TLS goes through untouched
    assert policy_status(res) == {"ancestors": []}


def tls_gateway(client_cert: str | None = None) -> list[Doc]:
    """A Gateway with a Terminate (8443) and a Passthrough (443) TLS listener, a TLSRoute
    to svc:443 on each, and the Terminate listener's certificate."""
    gw = gateway("tls-gw", ADDRESS2, client_cert=client_cert)
    gw["spec"]["listeners"] = [
        {
            "name": "term",
            "port": 8443,
            "protocol": "TLS",
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "gw-cert"}]},
        },
        {"name": "pass", "port": 443, "protocol": "TLS", "tls": {"mode": "Passthrough"}},
    ]

    def tls_route(name: str, section: str) -> Doc:
        return {
            "apiVersion": GW,
            "kind": "TLSRoute",
            "metadata": {"name": name},
            "spec": {
                "parentRefs": [{"name": "tls-gw", "sectionName": section}],
                "hostnames": ["app.example"],
                "rules": [{"backendRefs": [{"name": "svc", "port": 443}]}],
            },
        }

    return [gw, client_secret("gw-cert"), tls_route("t-term", "term"), tls_route("t-pass", "pass")]


def tls_backend(snap: Snapshot, port: int) -> CompiledBackend:
    table = snap.ports[(ADDRESS2, port)].table
    assert isinstance(table, SNITable)
    hit = table.lookup_sni("app.example")
    assert hit is not None
    (b,) = hit.rule.backends
    return b


def run_now(docs: Sequence[Doc]) -> tuple[Resolution, Snapshot]:
    """``run`` at the current time: the Terminate listener's certificate must be valid."""
    loaded = load(docs)
    assert [str(p) for p in loaded.problems] == []
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    res = resolve(loaded.config, controller_name=CONTROLLER, now=now)
    return res, compile_snapshot(res, generation=1)


def test_tls_terminate_routes_reencrypt_with_the_policy_passthrough_ones_do_not() -> None:
    extra = [*tls_gateway(client_cert="client"), client_secret("client"), policy()]
    docs = [d for d in base(*extra) if d["metadata"]["name"] != "r"]
    res, snap = run_now(docs)
    term = tls_backend(snap, 8443)
    assert term.tls is not None and term.invalid_status is None
    assert (term.tls.policy, term.tls.hostname, term.tls.ca_pem) == (
        "default/p",
        "backend.example",
        CA_PEM,
    )
    # The Gateway's client certificate is presented to the re-encrypted backend too.
    assert term.tls.client_certificate is not None
    assert term.tls.client_certificate.chain_pem == CLIENT_CERT
    # Passthrough: the client's own TLS stream goes through untouched.
    assert tls_backend(snap, 443).tls is None
    # Conformance BackendTLSPolicyTLSRouteTerminate: the Gateway is the ancestor.
    (ancestor,) = policy_status(res)["ancestors"]
    assert ancestor["ancestorRef"]["name"] == "tls-gw"
    assert conditions(res) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
    }


def test_tls_terminate_route_to_a_policy_without_valid_ca_is_rejected() -> None:
    bad = policy(ca_refs=[{"group": "", "kind": "ConfigMap", "name": "missing"}])
    docs = [d for d in base(*tls_gateway(), bad) if d["metadata"]["name"] != "r"]
    res, snap = run_now(docs)
    # "Connections using an invalid CACertificateRef MUST fail": the data plane rejects
    # connections to a backend with an invalid_status.
    assert tls_backend(snap, 8443).invalid_status == 500
    assert tls_backend(snap, 443).invalid_status is None
    assert conditions(res)["Accepted"] == ("False", "NoValidCACertificate")
