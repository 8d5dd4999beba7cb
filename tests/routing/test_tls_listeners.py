"""TLS listeners end to end through the pure pipeline: status -> bindings -> SNITable.

Passthrough and Terminate listeners on one port (TLSRouteModeMixed), certificates
carried as PEM bytes, hostname intersection of TLSRoutes with listener hostnames and
backendRef weights.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
from typing import Any

from status_builders import (
    backend,
    config,
    endpoint_slice,
    gateway,
    listener,
    parent,
    passthrough,
    service,
    terminate,
)

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.model import (
    BackendRef,
    ConfigMap,
    Endpoint,
    EndpointPort,
    FrontendValidation,
    GatewayTLSConfig,
    Meta,
    ObjectReference,
    Secret,
    ServicePort,
    TLSRoute,
    TLSRouteRule,
)
from gatewayd.routing.control.gateways import SUPPORTED_FEATURES
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.table import SNITable
from gatewayd.tls.certs import self_signed

ADDRESS = "127.0.0.9"
NOW = "2030-01-01T00:00:00Z"
CERT, KEY = self_signed(["tls.example.com"], now=dt.datetime(2029, 12, 1, tzinfo=dt.UTC))


def pem_secret(name: str, cert: bytes = CERT, key: bytes = KEY) -> Secret:
    return Secret(
        meta=Meta(namespace="default", name=name),
        type="kubernetes.io/tls",
        data=(("tls.crt", cert), ("tls.key", key)),
    )


def _route(
    name: str, *hostnames: str, backends: tuple[BackendRef, ...] = (), **kw: Any
) -> TLSRoute:
    return TLSRoute(
        meta=Meta(namespace="default", name=name),
        parent_refs=(parent(**kw),),
        hostnames=hostnames,
        rules=(TLSRouteRule(backend_refs=backends or (backend("svc", 443),)),),
    )


def _backends(*names: str) -> list[object]:
    objs: list[object] = []
    for i, name in enumerate(names):
        objs.append(service(name, ports=(ServicePort(name="tls", port=443, target_port=9443),)))
        objs.append(
            endpoint_slice(
                f"{name}-1",
                name,
                ports=(EndpointPort(name="tls", port=9000 + i),),
                endpoints=(Endpoint(addresses=("127.0.0.1",), ready=True),),
            )
        )
    return objs


def _compile(*objects: object) -> tuple[SNITable, Snapshot]:
    res = resolve(config(*objects), now=NOW)
    snap = compile_snapshot(res, generation=1)
    port = snap.ports[(ADDRESS, 8443)]
    assert port.protocol == "TLS"
    assert isinstance(port.table, SNITable)
    return port.table, snap


def test_mixed_modes_on_one_port_pick_the_listener_by_sni() -> None:
    gw = gateway(
        "gw",
        listener("term", 8443, "TLS", "tls.example.com", tls=terminate("cert")),
        listener("pass", 8443, "TLS", "abc.example.com", tls=passthrough()),
        addresses=[ADDRESS],
    )
    table, snap = _compile(
        gw,
        pem_secret("cert"),
        *_backends("svc"),
        _route("t", "tls.example.com"),
        _route("p", "abc.example.com"),
    )
    term = table.lookup_tls("TLS.example.com")
    assert term is not None
    assert term.listener.mode == "Terminate" and term.listener.name == "term"
    assert [c.dns_names for c in term.listener.certificates] == [("tls.example.com",)]
    assert term.listener.certificates[0].pem_chain.startswith(b"-----BEGIN CERTIFICATE")
    assert term.hit.rule.route_name == "t"
    pas = table.lookup_tls("abc.example.com")
    assert pas is not None
    assert pas.listener.mode == "Passthrough" and pas.listener.certificates == ()
    assert pas.hit.rule.route_name == "p"
    assert table.lookup_tls("other.example.com") is None
    assert table.lookup_tls("") is None
    # The snapshot still pickles (worker processes) and dumps.
    again = pickle.loads(pickle.dumps(snap))
    assert again.ports[(ADDRESS, 8443)].table.lookup_tls("abc.example.com") is not None
    dump = json.dumps(snap.to_json())
    assert term.listener.certificates[0].fingerprint_sha256 in dump
    assert "PRIVATE KEY" not in dump


def test_route_hostnames_intersect_with_the_listener_hostname() -> None:
    gw = gateway(
        "gw",
        listener("wild", 8443, "TLS", "*.example.com", tls=passthrough()),
        addresses=[ADDRESS],
    )
    table, _ = _compile(
        gw,
        *_backends("svc", "deep"),
        # Only a.example.com survives the intersection; other.org is dropped.
        _route("a", "a.example.com", "other.org"),
        # A wider route wildcard narrows to the listener's *.example.com.
        _route("wide", "*.com", backends=(backend("deep", 443),)),
    )
    a = table.lookup_tls("a.example.com")
    assert a is not None and a.hit.rule.route_name == "a"
    assert table.lookup_tls("other.org") is None
    b = table.lookup_tls("x.y.example.com")
    assert b is not None and b.hit.rule.route_name == "wide"
    assert table.lookup_tls("example.com") is None


def test_listener_without_hostname_takes_the_route_hostnames() -> None:
    gw = gateway("gw", listener("any", 8443, "TLS", tls=passthrough()), addresses=[ADDRESS])
    table, _ = _compile(gw, *_backends("svc"), _route("r", "*.example.net"))
    hit = table.lookup_tls("db.example.net")
    assert hit is not None and hit.listener.hostname is None
    assert table.lookup_tls("example.net") is None


def test_backend_weights_compile_cumulatively() -> None:
    gw = gateway("gw", listener("pass", 8443, "TLS", tls=passthrough()), addresses=[ADDRESS])
    refs = (
        BackendRef(ref=backend("one", 443).ref, weight=1),
        BackendRef(ref=backend("two", 443).ref, weight=3),
        BackendRef(ref=backend("zero", 443).ref, weight=0),
    )
    table, _ = _compile(
        gw, *_backends("one", "two", "zero"), _route("r", "w.example.com", backends=refs)
    )
    found = table.lookup_tls("w.example.com")
    assert found is not None
    rule = found.hit.rule
    assert [b.name for b in rule.backends] == ["default/one:443", "default/two:443"]
    assert rule.cumulative_weights == (1, 4) and rule.total_weight == 4
    picked = rule.pick_backend(0.2)
    assert picked is not None and picked.name == "default/one:443"
    picked = rule.pick_backend(0.3)
    assert picked is not None and picked.name == "default/two:443"
    assert [(e.address, e.port) for e in rule.backends[1].endpoints] == [("127.0.0.1", 9001)]


def test_tls_route_features_are_claimed() -> None:
    assert {"TLSRoute", "TLSRouteModeTerminate", "TLSRouteModeMixed"} <= set(SUPPORTED_FEATURES)
    assert list(SUPPORTED_FEATURES) == sorted(SUPPORTED_FEATURES)


def test_terminate_listener_keeps_its_frontend_validation() -> None:
    tls = GatewayTLSConfig(
        certificate_refs=terminate("cert").certificate_refs,
        frontend_validation=FrontendValidation(
            ca_certificate_refs=(ObjectReference(name="client-ca"),)
        ),
    )
    gw = gateway(
        "gw", listener("term", 8443, "TLS", "tls.example.com", tls=tls), addresses=[ADDRESS]
    )
    ca = ConfigMap(
        meta=Meta(namespace="default", name="client-ca"), data=(("ca.crt", CERT.decode()),)
    )
    table, snap = _compile(
        gw, pem_secret("cert"), ca, *_backends("svc"), _route("t", "tls.example.com")
    )
    found = table.lookup_tls("tls.example.com")
    assert found is not None
    assert found.listener.client_auth == "require"
    assert found.listener.client_ca_pem is not None
    assert b"BEGIN CERTIFICATE" in found.listener.client_ca_pem
    assert '"clientAuth": "require"' in json.dumps(snap.to_json())


# --------------------------------------------------------------------------- shared with HTTPS


def test_https_and_tls_listeners_share_a_port_with_one_precedence() -> None:
    """GatewayHTTPSAndTLSPassthroughSamePort: the server name selects the most specific
    listener across both protocols (exact, then the longest wildcard, then none)."""
    gw = gateway(
        "gw",
        listener("web", 8443, "HTTPS", "*.example.com", tls=terminate("cert")),
        listener("web-exact", 8443, "HTTPS", "www.db.example.com", tls=terminate("cert")),
        listener("pass", 8443, "TLS", "abc.example.com", tls=passthrough()),
        listener("pass-wild", 8443, "TLS", "*.db.example.com", tls=passthrough()),
        listener("pass-any", 8443, "TLS", tls=passthrough()),
        addresses=[ADDRESS],
    )
    res = resolve(
        config(gw, pem_secret("cert"), *_backends("svc"), _route("p", "abc.example.com")),
        now=NOW,
    )
    snap = compile_snapshot(res, generation=1)
    (lp,) = snap.ports.values()
    assert lp.protocol == "HTTPS"
    assert [t.listener_name for t in lp.terminate] == ["web", "web-exact"]
    assert lp.listener_names == ("web", "web-exact", "pass", "pass-wild", "pass-any")
    table = lp.tls_table
    assert isinstance(table, SNITable) and table.shared_with_https
    cases = {
        "abc.example.com": True,  # exact TLS over the HTTPS wildcard
        "ABC.example.com": True,
        "other.example.com": False,  # HTTPS wildcard
        "x.db.example.com": True,  # the longer TLS wildcard
        "www.db.example.com": False,  # exact HTTPS over the longer TLS wildcard
        "example.org": True,  # only the TLS listener without hostname matches
        "": True,
    }
    assert {name: table.selects_tls(name) for name in cases} == cases
    found = table.lookup_tls("abc.example.com")
    assert found is not None and found.listener.name == "pass"
    # Worker processes get the snapshot pickled.
    again = pickle.loads(pickle.dumps(snap))
    assert again.ports[(ADDRESS, 8443)].tls_table.selects_tls("other.example.com") is False


def test_https_port_without_a_catch_all_has_no_listener_for_unknown_names() -> None:
    gw = gateway(
        "gw",
        listener("web", 8443, "HTTPS", "*.example.com", tls=terminate("cert")),
        listener("pass", 8443, "TLS", "abc.example.com", tls=passthrough()),
        addresses=[ADDRESS],
    )
    res = resolve(
        config(gw, pem_secret("cert"), *_backends("svc"), _route("p", "abc.example.com")),
        now=NOW,
    )
    (lp,) = compile_snapshot(res, generation=1).ports.values()
    assert lp.tls_table is not None
    assert lp.tls_table.selects_tls("example.org") is None
    assert lp.tls_table.selects_tls("") is None


def test_https_and_tls_same_port_feature_is_claimed() -> None:
    assert "GatewayHTTPSAndTLSPassthroughSamePort" in SUPPORTED_FEATURES
