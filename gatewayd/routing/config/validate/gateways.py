"""GatewayClass and Gateway: listeners, TLS, allowedRoutes, addresses, frontend validation.

Admission-style validation of one kind family (see ``reader`` for the rules and helpers).

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.reader import (
    ADDRESS_TYPE,
    CONTROLLER_NAME,
    HOSTNAME,
    PROTOCOL,
    SECTION_NAME,
    Obj,
    read_spec,
    show,
)
from gatewayd.routing.config.validate.refs import (
    OBJECT_REF_FIELDS,
    SECRET_REF_FIELDS,
    parse_object_ref,
    parse_secret_ref,
    read_group,
    read_kind,
    read_port,
    read_ref_name,
    read_ref_namespace,
)
from gatewayd.routing.config.validate.routes import is_ip

# --------------------------------------------------------------------------- Gateway

GATEWAY_SPEC_FIELDS = (
    "gatewayClassName",
    "listeners",
    "addresses",
    "infrastructure",
    "tls",
    "backendTLS",
    "allowedListeners",
    "defaultScope",
)
LISTENER_FIELDS = ("name", "hostname", "port", "protocol", "tls", "allowedRoutes")
LISTENER_TLS_FIELDS = ("mode", "certificateRefs", "options", "frontendValidation")
FRONTEND_VALIDATION_FIELDS = ("caCertificateRefs", "mode")
ALLOWED_ROUTES_FIELDS = ("namespaces", "kinds")
ROUTE_NAMESPACES_FIELDS = ("from", "selector")
SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
SELECTOR_REQUIREMENT_FIELDS = ("key", "operator", "values")
ROUTE_GROUP_KIND_FIELDS = ("group", "kind")
ADDRESS_FIELDS = ("type", "value")
GATEWAY_TLS_FIELDS = ("backend", "frontend")
CLIENT_CERT_FIELDS = ("clientCertificateRef",)
FRONTEND_FIELDS = ("default", "perPort")
FRONTEND_TLS_FIELDS = ("validation",)
PER_PORT_FIELDS = ("port", "tls")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def parse_label_selector(o: Obj) -> m.LabelSelector:
    requirements: list[m.LabelSelectorRequirement] = []
    for r in o.objs("matchExpressions", SELECTOR_REQUIREMENT_FIELDS):
        op = r.str_("operator", required=True, choices=SELECTOR_OPERATORS)
        values = r.strs("values")
        # metav1.LabelSelectorRequirement: "If the operator is In or NotIn, the values
        # array must be non-empty. If the operator is Exists or DoesNotExist, the values
        # array must be empty."
        if op in ("In", "NotIn") and not values:
            r.add("values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            r.add("values", f"must be empty when operator is {op}")
        requirements.append(
            m.LabelSelectorRequirement(
                key=r.str_("key", required=True, min_len=1) or "",
                operator=op or "In",
                values=values,
            )
        )
    return m.LabelSelector(
        match_labels=o.str_map("matchLabels"), match_expressions=tuple(requirements)
    )


def parse_frontend_validation(o: Obj, *, max_refs: int) -> m.FrontendValidation:
    refs = tuple(
        parse_object_ref(r)
        for r in o.objs(
            "caCertificateRefs", OBJECT_REF_FIELDS, required=True, min_items=1, max_items=max_refs
        )
    )
    mode = o.str_("mode", choices=("AllowValidOnly", "AllowInsecureFallback"))
    return m.FrontendValidation(ca_certificate_refs=refs, mode=mode or "AllowValidOnly")


def parse_listener_tls(o: Obj) -> m.GatewayTLSConfig:
    mode = o.enum_("mode", m.TLSModeType) or m.TLSModeType.TERMINATE
    refs = tuple(
        parse_secret_ref(r) for r in o.objs("certificateRefs", SECRET_REF_FIELDS, max_items=64)
    )
    options = o.str_map("options", max_props=16, value_max_len=4096)
    # CEL: "certificateRefs or options must be specified when mode is Terminate".
    if mode is m.TLSModeType.TERMINATE and not refs and not options:
        o.add(
            "certificateRefs", "certificateRefs or options must be specified when mode is Terminate"
        )
    fv = o.sub("frontendValidation", FRONTEND_VALIDATION_FIELDS)
    return m.GatewayTLSConfig(
        mode=mode,
        certificate_refs=refs,
        frontend_validation=parse_frontend_validation(fv, max_refs=8) if fv is not None else None,
        options=options,
    )


def parse_allowed_routes(o: Obj) -> m.AllowedRoutes:
    ns = o.sub("namespaces", ROUTE_NAMESPACES_FIELDS)
    from_ = m.FromNamespaces.SAME
    selector: m.LabelSelector | None = None
    if ns is not None:
        from_ = ns.enum_("from", m.FromNamespaces) or m.FromNamespaces.SAME
        sel = ns.sub("selector", SELECTOR_FIELDS)
        selector = parse_label_selector(sel) if sel is not None else None
    kinds = tuple(
        m.RouteGroupKind(group=read_group(k, m.GATEWAY_GROUP), kind=read_kind(k, "", required=True))
        for k in o.objs("kinds", ROUTE_GROUP_KIND_FIELDS, max_items=8)
    )
    return m.AllowedRoutes(namespaces_from=from_, selector=selector, kinds=kinds)


def parse_listener(o: Obj) -> m.Listener:
    tls = o.sub("tls", LISTENER_TLS_FIELDS)
    routes = o.sub("allowedRoutes", ALLOWED_ROUTES_FIELDS)
    return m.Listener(
        name=o.str_("name", required=True, min_len=1, max_len=253, syntax=SECTION_NAME) or "",
        hostname=o.str_("hostname", min_len=1, max_len=253, syntax=HOSTNAME),
        port=read_port(o, required=True) or 0,
        # Protocol is not an enum: an unknown protocol is admitted and reported later
        # with the UnsupportedProtocol reason.
        protocol=o.str_("protocol", required=True, min_len=1, max_len=255, syntax=PROTOCOL) or "",
        tls=parse_listener_tls(tls) if tls is not None else None,
        # Default: allowedRoutes "namespaces: {from: Same}".
        allowed_routes=parse_allowed_routes(routes) if routes is not None else m.AllowedRoutes(),
    )


def check_listeners(
    spec: Obj, listeners: Sequence[m.Listener], objs: Sequence[Obj], *, owner: str = "Gateway"
) -> None:
    seen_names: set[str] = set()
    seen_combo: set[tuple[int, str, str | None]] = set()
    for listener, o in zip(listeners, objs, strict=True):
        proto = listener.protocol
        # CEL: "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']".
        if proto in ("HTTP", "TCP", "UDP") and o.has("tls"):
            o.add("tls", f"must not be specified for protocol {proto}")
        # CEL: "tls mode must be Terminate for protocol HTTPS".
        if (
            proto == "HTTPS"
            and listener.tls is not None
            and listener.tls.mode is not m.TLSModeType.TERMINATE
        ):
            o.add("tls.mode", "must be Terminate for protocol HTTPS")
        # CEL: "tls mode must be set for protocol TLS".
        if proto == "TLS" and listener.tls is None:
            o.add("tls", "is required for protocol TLS (with mode Terminate or Passthrough)")
        # CEL: "hostname must not be specified for protocols ['TCP', 'UDP']".
        if proto in ("TCP", "UDP") and listener.hostname is not None:
            o.add("hostname", f"must not be specified for protocol {proto}")
        # CEL: "Listener name must be unique within the Gateway".
        if listener.name and listener.name in seen_names:
            o.add(
                "name",
                f"duplicate listener name {show(listener.name)}; "
                f"listener names must be unique within the {owner}",
            )
        seen_names.add(listener.name)
        # CEL: "Combination of port, protocol and hostname must be unique for each
        # listener".
        combo = (listener.port, proto, listener.hostname)
        if combo in seen_combo:
            o.add(
                "",
                "the combination of port, protocol and hostname must be unique for each listener",
            )
        seen_combo.add(combo)


def _parse_addresses(spec: Obj) -> tuple[m.GatewayAddress, ...]:
    out: list[m.GatewayAddress] = []
    seen: set[tuple[str, str]] = set()
    for a in spec.objs("addresses", ADDRESS_FIELDS, max_items=16):
        atype = a.str_("type", min_len=1, max_len=253, syntax=ADDRESS_TYPE) or "IPAddress"
        value = a.str_("value", max_len=253) or ""
        if atype == "IPAddress" and a.has("value") and not is_ip(value):
            a.add("value", f"{show(value)} is not an IPv4 or IPv6 address (type IPAddress)")
        if atype == "Hostname" and value and not HOSTNAME.regex.fullmatch(value):
            a.add("value", f"{show(value)} is not {HOSTNAME.what} (type Hostname)")
        # CEL: "IPAddress values must be unique", "Hostname values must be unique".
        if atype in ("IPAddress", "Hostname") and value:
            if (atype, value) in seen:
                a.add(
                    "value", f"duplicate {atype} value {show(value)}; {atype} values must be unique"
                )
            seen.add((atype, value))
        out.append(m.GatewayAddress(type=atype, value=value))
    return tuple(out)


def _client_cert_ref(spec: Obj, key: str) -> m.SecretObjectReference | None:
    holder = spec.sub(key, CLIENT_CERT_FIELDS)
    if holder is None:
        return None
    ref = holder.sub("clientCertificateRef", SECRET_REF_FIELDS)
    return parse_secret_ref(ref) if ref is not None else None


def _gateway_frontend(
    tls: Obj | None,
) -> tuple[m.FrontendValidation | None, dict[int, m.FrontendValidation]]:
    """spec.tls.frontend: the default client validation and the per-port overrides."""
    if tls is None:
        return None, {}
    frontend = tls.sub("frontend", FRONTEND_FIELDS)
    if frontend is None:
        return None, {}
    default: m.FrontendValidation | None = None
    d = frontend.sub("default", FRONTEND_TLS_FIELDS, required=True)
    if d is not None:
        v = d.sub("validation", FRONTEND_VALIDATION_FIELDS)
        default = parse_frontend_validation(v, max_refs=16) if v is not None else None
    per_port: dict[int, m.FrontendValidation] = {}
    for p in frontend.objs("perPort", PER_PORT_FIELDS, max_items=64):
        port = read_port(p, required=True)
        t = p.sub("tls", FRONTEND_TLS_FIELDS, required=True)
        v = t.sub("validation", FRONTEND_VALIDATION_FIELDS) if t is not None else None
        if port is None or v is None:
            continue
        # CEL: "Port for TLS configuration must be unique within the Gateway".
        if port in per_port:
            p.add(
                "port",
                f"duplicate port {port}; "
                "the port for TLS configuration must be unique within the Gateway",
            )
        per_port[port] = parse_frontend_validation(v, max_refs=16)
    return default, per_port


def parse_gateway(meta: m.Meta, doc: Obj, version: str) -> m.Gateway:
    spec = read_spec(doc, GATEWAY_SPEC_FIELDS)
    objs = spec.objs("listeners", LISTENER_FIELDS, required=True, min_items=1, max_items=64)
    listeners = [parse_listener(o) for o in objs]
    check_listeners(spec, listeners, objs)
    tls = spec.sub("tls", GATEWAY_TLS_FIELDS)
    default_fv, per_port_fv = _gateway_frontend(tls)
    if default_fv is not None or per_port_fv:
        # spec.tls.frontend applies to every listener that terminates TLS; a listener's
        # own tls.frontendValidation (the older, per-listener field) takes precedence.
        for i, listener in enumerate(listeners):
            if listener.tls is None or listener.tls.frontend_validation is not None:
                continue
            fv = per_port_fv.get(listener.port, default_fv)
            if fv is not None:
                listeners[i] = replace(listener, tls=replace(listener.tls, frontend_validation=fv))
    client_cert = _client_cert_ref(tls, "backend") if tls is not None else None
    if client_cert is None:
        client_cert = _client_cert_ref(spec, "backendTLS")
    parameters_ref = None
    infra = spec.sub("infrastructure", INFRASTRUCTURE_FIELDS)
    if infra is not None:
        # labels and annotations are for resources an implementation creates for the
        # Gateway; gatewayd creates none.
        infra.sub("labels", None)
        infra.sub("annotations", None)
        params = infra.sub("parametersRef", LOCAL_PARAMETERS_REF_FIELDS)
        if params is not None:
            group = read_group(params, "", required=True)
            kind = read_kind(params, "", required=True)
            name = read_ref_name(params)
            parameters_ref = f"{group or 'core'}/{kind} {name}"
    spec.str_("defaultScope", choices=("All", "None"))
    return m.Gateway(
        meta=meta,
        gateway_class_name=spec.str_("gatewayClassName", required=True, min_len=1, max_len=253)
        or "",
        listeners=tuple(listeners),
        addresses=_parse_addresses(spec),
        backend_client_certificate_ref=client_cert,
        infrastructure_parameters_ref=parameters_ref,
        allowed_listeners=parse_allowed_listeners(spec),
    )


ALLOWED_LISTENERS_FIELDS = ("namespaces",)
LISTENER_NAMESPACES_FIELDS = ("from", "selector")
LISTENER_NAMESPACES_FROM = ("All", "Selector", "Same", "None")


def parse_allowed_listeners(spec: Obj) -> m.AllowedListeners:
    """spec.allowedListeners; "The default value is to allow no ListenerSets."."""
    allowed = spec.sub("allowedListeners", ALLOWED_LISTENERS_FIELDS)
    ns = allowed.sub("namespaces", LISTENER_NAMESPACES_FIELDS) if allowed is not None else None
    if ns is None:
        return m.AllowedListeners()
    sel = ns.sub("selector", SELECTOR_FIELDS)
    return m.AllowedListeners(
        namespaces_from=ns.str_("from", choices=LISTENER_NAMESPACES_FROM) or "None",
        selector=parse_label_selector(sel) if sel is not None else None,
    )


INFRASTRUCTURE_FIELDS = ("labels", "annotations", "parametersRef")
LOCAL_PARAMETERS_REF_FIELDS = ("group", "kind", "name")


# --------------------------------------------------------------------------- GatewayClass

GATEWAY_CLASS_SPEC_FIELDS = ("controllerName", "description", "parametersRef")
PARAMETERS_REF_FIELDS = ("group", "kind", "name", "namespace")


def parse_gateway_class(meta: m.Meta, doc: Obj, version: str) -> m.GatewayClass:
    spec = read_spec(doc, GATEWAY_CLASS_SPEC_FIELDS)
    params = spec.sub("parametersRef", PARAMETERS_REF_FIELDS)
    if params is not None:  # admitted, not used by gatewayd
        read_group(params, "", required=True)
        read_kind(params, "", required=True)
        read_ref_name(params)
        read_ref_namespace(params)
    return m.GatewayClass(
        meta=meta,
        controller_name=spec.str_(
            "controllerName", required=True, min_len=1, max_len=253, syntax=CONTROLLER_NAME
        )
        or "",
        description=spec.str_("description", max_len=64),
    )
