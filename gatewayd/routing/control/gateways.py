"""GatewayClass and Gateway status: conditions, listeners[], addresses, and bind failures.

Pure module: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gatewayd.routing.config.model import Gateway, GatewayClass
from gatewayd.routing.control.addressing import AddressOutcome
from gatewayd.routing.control.bindings import ObjectStatus, Resolution
from gatewayd.routing.control.conditions import (
    ACCEPTED,
    ADDRESS_NOT_ASSIGNED,
    ADDRESS_NOT_USABLE,
    API_VERSION,
    CONFIGURATION_CHANGED,
    CONFLICTED,
    INSECURE_FRONTEND_VALIDATION_MODE,
    INVALID,
    INVALID_CLIENT_CERTIFICATE_REF,
    INVALID_PARAMETERS,
    LISTENERS_NOT_RESOLVED,
    LISTENERS_NOT_VALID,
    NO_CONFLICTS,
    PENDING,
    PROGRAMMED,
    RESOLVED_REFS,
    UNSUPPORTED_ADDRESS,
    Verdict,
    condition,
    dicts,
    failed,
    find_condition,
    passed,
)
from gatewayd.routing.control.listeners import ListenerState, Refs, secret_ref_problem
from gatewayd.routing.snapshot.backends import ClientCertificate

# TLSRoute is served as gateway.networking.k8s.io/v1 since Gateway API v1.5 (standard
# channel); v1alpha2/v1alpha3 manifests are the same object, reported as v1.  TCPRoute
# and UDPRoute the same since v1.6 (v1alpha2 before).

# Conformance feature names (pkg/features) this implementation claims on its
# GatewayClasses, sorted as "It MUST be sorted in ascending alphabetical order by the
# Name key." (GatewayClassStatus.SupportedFeatures).  Only what the data plane serves
# today, each with its end-to-end test: GRPCRoute and GRPCRouteNamedRouteRule
# (tests/e2e/test_e2e_grpc.py, grpcio through h2c), HTTPRouteBackendProtocolH2C
# (tests/e2e/test_e2e_h2_upstream.py), ListenerSet (tests/e2e/test_e2e_listenersets.py,
# the upstream ListenerSet* scenarios), TCPRoute and UDPRoute (tests/e2e/
# test_e2e_tcproute.py, test_e2e_udproute.py), HTTPRouteRetry* (tests/e2e/
# test_e2e_retry.py), GatewayHTTPListenerIsolation and HTTPRouteDestinationPortMatching
# (tests/e2e/test_e2e_isolation.py).
SUPPORTED_FEATURES: tuple[str, ...] = tuple(
    sorted(
        (
            "BackendTLSPolicy",
            "BackendTLSPolicySANValidation",
            "Gateway",
            "GatewayAddressEmpty",
            "GatewayBackendClientCertificate",
            "GatewayFrontendClientCertificateValidation",
            "GatewayFrontendClientCertificateValidationInsecureFallback",
            "GatewayHTTPListenerIsolation",
            "GatewayHTTPSAndTLSPassthroughSamePort",
            "GatewayHTTPSListenerDetectMisdirectedRequests",
            "GatewayPort8080",
            "GatewayStaticAddresses",
            "GRPCRoute",
            "GRPCRouteNamedRouteRule",
            "HTTPRoute",
            "HTTPRoute303RedirectStatusCode",
            "HTTPRoute307RedirectStatusCode",
            "HTTPRoute308RedirectStatusCode",
            "HTTPRouteBackendProtocolH2C",
            "HTTPRouteBackendProtocolWebSocket",
            "HTTPRouteBackendRequestRedirect",
            "HTTPRouteBackendRequestHeaderModification",
            "HTTPRouteBackendTimeout",
            "HTTPRouteBackendURLRewrite",
            "HTTPRouteCORS",
            "HTTPRouteDestinationPortMatching",
            "HTTPRouteHostRewrite",
            "HTTPRouteMethodMatching",
            "HTTPRouteNamedRouteRule",
            "HTTPRouteParentRefPort",
            "HTTPRoutePathRedirect",
            "HTTPRoutePathRewrite",
            "HTTPRoutePortRedirect",
            "HTTPRouteQueryParamMatching",
            "HTTPRouteRequestMirror",
            "HTTPRouteRequestMultipleMirrors",
            "HTTPRouteRequestPercentageMirror",
            "HTTPRouteRequestTimeout",
            "HTTPRouteResponseHeaderModification",
            "HTTPRouteRetry",
            "HTTPRouteRetryBackendTimeout",
            "HTTPRouteRetryConnectionError",
            "HTTPRouteSchemeRedirect",
            "ListenerSet",
            "Mesh",
            "MeshClusterIPMatching",
            "MeshConsumerRoute",
            "ReferenceGrant",
            "TCPRoute",
            "TLSRoute",
            "TLSRouteModeMixed",
            "TLSRouteModeTerminate",
            "UDPRoute",
        )
    )
)


# --------------------------------------------------------------------------- gateways


@dataclass(slots=True)
class GatewayState:
    gateway: Gateway
    listeners: list[ListenerState]
    address: AddressOutcome = field(default_factory=AddressOutcome)
    accepted: Verdict = field(default_factory=lambda: passed(ACCEPTED, "Gateway is accepted"))
    programmed: Verdict = field(default_factory=lambda: passed(PROGRAMMED, "Gateway is programmed"))
    resolved: Verdict = field(
        default_factory=lambda: passed(RESOLVED_REFS, "All references are resolved")
    )
    client_certificate: ClientCertificate | None = None  # spec.tls.backend, when usable
    # status.attachedListenerSets; None when spec.allowedListeners allows none (left out).
    attached_listener_sets: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.gateway.meta.namespace, self.gateway.meta.name)


def gateway_conditions(gs: GatewayState, refs: Refs) -> None:
    gw = gs.gateway
    not_accepted = [s for s in gs.listeners if not s.accepted.ok]
    if gw.infrastructure_parameters_ref is not None:
        # "If the referent cannot be found, refers to an unsupported kind, or when the
        # data within that resource is malformed, the Gateway SHOULD be rejected with
        # the "Accepted" status condition set to "False" and an "InvalidParameters"
        # reason." (GatewayInfrastructure.ParametersRef)  gatewayd supports no kind.
        gs.accepted = failed(
            INVALID_PARAMETERS,
            f"spec.infrastructure.parametersRef {gw.infrastructure_parameters_ref}: gatewayd "
            "supports no parameters kind; remove the reference to serve this Gateway",
        )
    elif gs.address.unsupported is not None:
        # "the Gateway could not be accepted because an address that was provided is a
        # type which is not supported by the implementation." (UnsupportedAddress)
        gs.accepted = failed(UNSUPPORTED_ADDRESS, gs.address.unsupported)
    elif not_accepted:
        listed = "; ".join(f"{s.name}: {s.accepted.reason}" for s in not_accepted)
        if len(not_accepted) == len(gs.listeners):
            # Conformance (GatewayListenerUnsupportedProtocol): "The Gateway itself should
            # only be Accepted if at least one of its listeners is accepted."
            gs.accepted = failed(LISTENERS_NOT_VALID, f"no listener is accepted ({listed})")
        else:
            # "The implementation MUST set a "ListenersNotValid" condition on the Gateway
            # Status when the Gateway contains Conflicted Listeners whether or not they
            # accept the Gateway." (GatewaySpec.Listeners)
            accepted = ", ".join(s.name for s in gs.listeners if s.accepted.ok)
            gs.accepted = passed(
                LISTENERS_NOT_VALID,
                f"some listeners are not accepted ({listed}); accepted: {accepted}",
            )

    if not gs.accepted.ok:
        gs.programmed = failed(INVALID, f"Gateway is not accepted: {gs.accepted.message}")
    elif gs.address.not_usable is not None:
        gs.programmed = failed(ADDRESS_NOT_USABLE, gs.address.not_usable)
    elif gs.address.not_assigned is not None:
        gs.programmed = failed(ADDRESS_NOT_ASSIGNED, gs.address.not_assigned)
    elif not any(s.programmable for s in gs.listeners):
        gs.programmed = failed(INVALID, "no listener can be programmed")

    if not gs.programmed.ok:
        for s in gs.listeners:
            if s.programmed.ok:
                # Pending: "the Listener is either not yet reconciled or not yet not
                # online and ready to accept client traffic" (ListenerReasonPending, sic).
                reason = PENDING if gs.accepted.ok else INVALID
                s.programmed = failed(reason, f"Gateway is not programmed: {gs.programmed.message}")

    # Gateway ResolvedRefs: the backend client certificate, then a summary of the
    # listeners ("a positive-polarity summary of Listener's "ResolvedRefs" condition").
    client_ref = gw.backend_client_certificate_ref
    problem = None
    if client_ref is not None:
        problem = secret_ref_problem(
            gw,
            client_ref,
            refs,
            "spec.tls.backend.clientCertificateRef",
            INVALID_CLIENT_CERTIFICATE_REF,
        )
    unresolved = [s.name for s in gs.listeners if not s.refs.ok]
    if client_ref is not None and problem is None:
        secret = refs.secrets[(client_ref.namespace or gw.meta.namespace, client_ref.name)]
        gs.client_certificate = ClientCertificate(
            chain_pem=secret.get("tls.crt") or b"", key_pem=secret.get("tls.key") or b""
        )
    if problem is not None:
        gs.resolved = problem
    elif unresolved:
        gs.resolved = failed(
            LISTENERS_NOT_RESOLVED, f"listeners with unresolved references: {', '.join(unresolved)}"
        )


# --------------------------------------------------------------------------- status JSON


def gateway_class_status(gc: GatewayClass, now: str) -> ObjectStatus:
    gen = gc.meta.generation
    return ObjectStatus(
        api_version=API_VERSION,
        kind="GatewayClass",
        namespace="",
        name=gc.meta.name,
        generation=gen,
        status={
            "conditions": [
                condition(ACCEPTED, True, "Accepted", f"Handled by {gc.controller_name}", gen, now)
            ],
            "supportedFeatures": [{"name": name} for name in SUPPORTED_FEATURES],
        },
    )


def listener_status(s: ListenerState, gen: int, now: str) -> dict[str, object]:
    conflict = s.conflict
    return {
        "name": s.name,
        "supportedKinds": [{"group": k.group, "kind": k.kind} for k in s.kinds],
        "attachedRoutes": len(s.routes),
        "conditions": [
            condition(ACCEPTED, s.accepted.ok, s.accepted.reason, s.accepted.message, gen, now),
            condition(
                PROGRAMMED, s.programmed.ok, s.programmed.reason, s.programmed.message, gen, now
            ),
            condition(RESOLVED_REFS, s.refs.ok, s.refs.reason, s.refs.message, gen, now),
            condition(
                CONFLICTED,
                conflict is not None,
                conflict.reason if conflict is not None else NO_CONFLICTS,
                conflict.message if conflict is not None else "No conflicts",
                gen,
                now,
            ),
        ],
    }


def insecure_fallback_ports(gs: GatewayState) -> list[int]:
    """Ports whose frontend validation (spec.tls.frontend default or perPort, or a
    listener's own) is AllowInsecureFallback."""
    ports: set[int] = set()
    for s in gs.listeners:
        tls = s.listener.tls
        fv = tls.frontend_validation if tls is not None else None
        if fv is not None and fv.mode == "AllowInsecureFallback":
            ports.add(s.listener.port)
    return sorted(ports)


def gateway_status(gs: GatewayState, now: str) -> ObjectStatus:
    gw = gs.gateway
    gen = gw.meta.generation
    status: dict[str, object] = {}
    # "Addresses lists the network addresses that have been bound to the Gateway."
    # (GatewayStatus.Addresses) -- only a programmed Gateway binds anything.
    if gs.programmed.ok and gs.address.addresses:
        status["addresses"] = [{"type": "IPAddress", "value": a} for a in gs.address.addresses]
    conditions = [
        condition(ACCEPTED, gs.accepted.ok, gs.accepted.reason, gs.accepted.message, gen, now),
        condition(
            PROGRAMMED, gs.programmed.ok, gs.programmed.reason, gs.programmed.message, gen, now
        ),
        condition(RESOLVED_REFS, gs.resolved.ok, gs.resolved.reason, gs.resolved.message, gen, now),
    ]
    status["conditions"] = conditions
    insecure = insecure_fallback_ports(gs)
    if insecure:
        # "This condition is true when the Gateway FrontendValidationModeType is
        # configured to allow insecure fallback behavior ... removed as soon as
        # FrontendValidationModeType is changed back to `AllowValidOnly`."
        ports = ", ".join(str(p) for p in insecure)
        conditions.append(
            condition(
                INSECURE_FRONTEND_VALIDATION_MODE,
                True,
                CONFIGURATION_CHANGED,
                f"client certificate validation mode AllowInsecureFallback on port {ports}: "
                "clients without a valid certificate are served",
                gen,
                now,
            )
        )
    status["listeners"] = [listener_status(s, gen, now) for s in gs.listeners]
    if gs.attached_listener_sets is not None:
        status["attachedListenerSets"] = gs.attached_listener_sets
    return ObjectStatus(
        api_version=API_VERSION,
        kind="Gateway",
        namespace=gw.meta.namespace,
        name=gw.meta.name,
        generation=gen,
        status=status,
    )


# --------------------------------------------------------------------------- bind failures


def with_listener_failures(
    resolution: Resolution, failures: Mapping[tuple[str, str, str], str]
) -> Resolution:
    """Report listeners the data plane could not program (e.g. a failed bind).

    ``failures`` maps (gateway namespace, gateway name, listener name) to a message.
    Each such listener becomes Programmed False with reason Invalid and that message,
    and its ListenerBindings are dropped.  A Gateway left with no programmed listener
    becomes Programmed False (Invalid).  Accepted conditions, attachedRoutes and route
    statuses are unchanged: "Listener or Route status does not impact successful
    attachment" (ListenerStatus.AttachedRoutes).
    """
    if not failures:
        return resolution
    kept = tuple(
        b
        for b in resolution.listeners
        if (b.gateway_namespace, b.gateway_name, b.listener_name) not in failures
    )
    serving = {(b.gateway_namespace, b.gateway_name) for b in kept}
    affected = {(ns, name) for ns, name, _ in failures}
    by_name = {name: message for (_, _, name), message in failures.items()}
    statuses: list[ObjectStatus] = []
    for st in resolution.statuses:
        key = (st.namespace, st.name)
        if st.kind == "ListenerSet":
            statuses.append(_listener_set_failures(st, by_name))
            continue
        if st.kind != "Gateway" or key not in affected:
            statuses.append(st)
            continue
        status = copy.deepcopy(dict(st.status))
        failed_here: list[str] = []
        for ls in dicts(status.get("listeners")):
            message = failures.get((st.namespace, st.name, str(ls.get("name"))))
            if message is None:
                continue
            cond = find_condition(ls, PROGRAMMED)
            if cond is None or cond.get("status") != "True":
                continue  # not programmed anyway: its own reason stands
            failed_here.append(f"{ls.get('name')}: {message}")
            cond.update(status="False", reason=INVALID, message=message)
        gw_programmed = find_condition(status, PROGRAMMED)
        if failed_here and gw_programmed is not None and gw_programmed.get("status") == "True":
            if key in serving:
                gw_programmed["message"] = (
                    f"Gateway is programmed; listeners not programmed: {'; '.join(failed_here)}"
                )
            else:
                gw_programmed.update(
                    status="False",
                    reason=INVALID,
                    message=f"no listener could be programmed: {'; '.join(failed_here)}",
                )
                # Nothing is bound any more ("addresses that have been bound").
                status.pop("addresses", None)
        statuses.append(replace(st, status=status))
    return replace(resolution, listeners=kept, statuses=tuple(statuses))


def _listener_set_failures(st: ObjectStatus, by_name: Mapping[str, str]) -> ObjectStatus:
    """``with_listener_failures`` for a ListenerSet's listeners, served under the name
    "{namespace}/{name}/{listener}" (control.listenersets.listener_binding_name)."""
    prefix = f"{st.namespace}/{st.name}/"
    if not any(name.startswith(prefix) for name in by_name):
        return st
    status = copy.deepcopy(dict(st.status))
    failed_here: list[str] = []
    still_programmed = False
    for ls in dicts(status.get("listeners")):
        cond = find_condition(ls, PROGRAMMED)
        if cond is None or cond.get("status") != "True":
            continue
        message = by_name.get(f"{prefix}{ls.get('name')}")
        if message is None:
            still_programmed = True
            continue
        failed_here.append(f"{ls.get('name')}: {message}")
        cond.update(status="False", reason=INVALID, message=message)
    top = find_condition(status, PROGRAMMED)
    if failed_here and top is not None and top.get("status") == "True" and not still_programmed:
        top.update(
            status="False",
            reason=INVALID,
            message=f"no listener could be programmed: {'; '.join(failed_here)}",
        )
    return replace(st, status=status)
