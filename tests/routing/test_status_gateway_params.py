"""Gateway conditions from spec.infrastructure.parametersRef and the frontend
validation mode (InvalidParameters, InsecureFrontendValidationMode)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from status_builders import (
    ca_pem,
    cond,
    config,
    gateway,
    listener,
    status_of,
    tls_secret,
)

from gatewayd.routing.config.load import load_documents
from gatewayd.routing.config.model import (
    ConfigMap,
    FrontendValidation,
    GatewayTLSConfig,
    Meta,
    ObjectReference,
    SecretObjectReference,
)
from gatewayd.routing.control.resolve import resolve


def test_parameters_ref_makes_the_gateway_not_accepted_and_unbound() -> None:
    gw = replace(
        gateway("gw", listener()), infrastructure_parameters_ref="invalid.io/Params invalid"
    )
    res = resolve(config(gw))
    st = status_of(res, "Gateway", "gw")
    assert cond(st, "Accepted") == ("False", "InvalidParameters")
    assert cond(st, "Programmed") == ("False", "Invalid")
    assert res.listeners == ()


def test_parameters_ref_is_read_from_the_manifest() -> None:
    text = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: gatewayd
  infrastructure:
    labels: {team: a}
    parametersRef: {group: example.io, kind: Params, name: p}
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""
    loaded = load_documents([("gw.yaml", text)])
    assert loaded.problems == ()
    (gw,) = loaded.config.gateways
    assert gw.infrastructure_parameters_ref == "example.io/Params p"


def _https(port: int, mode: str | None) -> object:
    fv = (
        FrontendValidation(ca_certificate_refs=(ObjectReference(name="ca"),), mode=mode)
        if mode is not None
        else None
    )
    tls = GatewayTLSConfig(
        certificate_refs=(SecretObjectReference(name="cert"),), frontend_validation=fv
    )
    return listener(f"https-{port}", port, "HTTPS", tls=tls)


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (("AllowInsecureFallback", "AllowValidOnly"), "443"),
        (("AllowValidOnly", None), None),
        ((None, None), None),
    ],
)
def test_insecure_frontend_validation_mode_condition(
    modes: tuple[str | None, str | None], expected: str | None
) -> None:
    ca = ConfigMap(meta=Meta(namespace="default", name="ca"), data=(("ca.crt", ca_pem()),))
    gw = gateway("gw", _https(443, modes[0]), _https(8443, modes[1]))  # type: ignore[arg-type]
    res = resolve(config(gw, ca, tls_secret("cert")))
    st = status_of(res, "Gateway", "gw")
    types = {c["type"]: c for c in st["conditions"]}
    if expected is None:
        assert "InsecureFrontendValidationMode" not in types
    else:
        c = types["InsecureFrontendValidationMode"]
        assert (c["status"], c["reason"]) == ("True", "ConfigurationChanged")
        assert expected in c["message"] and "8443" not in c["message"]
    assert cond(st, "Accepted") == ("True", "Accepted")
