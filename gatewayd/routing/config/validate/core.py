"""Core kinds the Gateway API objects refer to: Service, EndpointSlice, Secret, ConfigMap,
Pod, Namespace.

Admission-style validation of one kind family (see ``reader`` for the rules and helpers).

Pure module: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import replace

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.reader import (
    CONFIG_KEY,
    Issues,
    Obj,
    check_str,
    describe,
    join,
    show,
    unique_names,
)
from gatewayd.routing.config.validate.refs import read_port
from gatewayd.routing.config.validate.routes import is_ip

# --------------------------------------------------------------------------- core kinds

SERVICE_SPEC_FIELDS = (
    "ports",
    "selector",
    "clusterIP",
    "clusterIPs",
    "type",
    "externalIPs",
    "sessionAffinity",
    "loadBalancerIP",
    "loadBalancerSourceRanges",
    "externalName",
    "externalTrafficPolicy",
    "healthCheckNodePort",
    "publishNotReadyAddresses",
    "sessionAffinityConfig",
    "ipFamilies",
    "ipFamilyPolicy",
    "allocateLoadBalancerNodePorts",
    "loadBalancerClass",
    "internalTrafficPolicy",
    "trafficDistribution",
)
SERVICE_PORT_FIELDS = ("name", "protocol", "appProtocol", "port", "targetPort", "nodePort")
PROTOCOLS = ("TCP", "UDP", "SCTP")


def parse_service(meta: m.Meta, doc: Obj, version: str) -> m.Service:
    spec = doc.sub("spec", SERVICE_SPEC_FIELDS) or Obj.empty(doc.at("spec"), doc.issues)
    ports: list[m.ServicePort] = []
    port_objs = spec.objs("ports", SERVICE_PORT_FIELDS)
    for p in port_objs:
        target: int | str | None = None
        raw_target = p.data.get("targetPort")
        if isinstance(raw_target, str):
            target = p.str_("targetPort", min_len=1, max_len=15)
        elif raw_target is not None:
            target = read_port(p, "targetPort")
        p.int_("nodePort", minimum=0, maximum=65535)
        ports.append(
            m.ServicePort(
                name=p.str_("name", max_len=63) or None,
                port=read_port(p, required=True) or 0,
                target_port=target,
                protocol=p.str_("protocol", choices=PROTOCOLS) or "TCP",
                app_protocol=p.str_("appProtocol"),
            )
        )
    unique_names(
        [(pt.name, o.at("name")) for pt, o in zip(ports, port_objs, strict=True)],
        spec.issues,
        "port name",
    )
    # spec.clusterIPs, else spec.clusterIP; "None" marks a headless Service.
    ips = spec.strs("clusterIPs", max_items=2)
    if not ips:
        single = spec.str_("clusterIP")
        ips = (single,) if single else ()
    return m.Service(
        meta=meta,
        type=spec.str_("type", choices=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"))
        or "ClusterIP",
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"),
        ports=tuple(ports),
        selector=spec.str_map("selector"),
    )


ENDPOINT_FIELDS = (
    "addresses",
    "conditions",
    "hostname",
    "targetRef",
    "nodeName",
    "zone",
    "hints",
    "deprecatedTopology",
)
ENDPOINT_CONDITION_FIELDS = ("ready", "serving", "terminating")
ENDPOINT_PORT_FIELDS = ("name", "protocol", "port", "appProtocol")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def parse_endpoint_slice(meta: m.Meta, doc: Obj, version: str) -> m.EndpointSlice:
    address_type = (
        doc.str_("addressType", required=True, choices=("IPv4", "IPv6", "FQDN")) or "IPv4"
    )
    ports = tuple(
        m.EndpointPort(
            # An empty name is the unnamed port: normalised to None.
            name=p.str_("name", max_len=63) or None,
            port=read_port(p),
            protocol=p.str_("protocol", choices=PROTOCOLS) or "TCP",
            app_protocol=p.str_("appProtocol"),
        )
        for p in doc.objs("ports", ENDPOINT_PORT_FIELDS, max_items=20000)
    )
    endpoints: list[m.Endpoint] = []
    for e in doc.objs("endpoints", ENDPOINT_FIELDS, max_items=1000):
        addresses = e.strs("addresses", required=True, min_items=1, max_items=100, min_len=1)
        if address_type in ("IPv4", "IPv6"):
            for i, a in enumerate(addresses):
                if not is_ip(a) or (address_type == "IPv4") != ("." in a and ":" not in a):
                    e.issues.add(
                        f"{e.at('addresses')}[{i}]", f"{show(a)} is not an {address_type} address"
                    )
        cond = e.sub("conditions", ENDPOINT_CONDITION_FIELDS) or Obj.empty(
            e.at("conditions"), e.issues
        )
        ready = cond.bool_("ready")
        serving = cond.bool_("serving")
        terminating = cond.bool_("terminating")
        target = e.sub("targetRef", None)
        target_name = target.str_("name") if target is not None else None
        endpoints.append(
            m.Endpoint(
                addresses=addresses,
                # "ready ... nil ... should be interpreted as ready".
                ready=True if ready is None else ready,
                serving=True if serving is None else serving,
                terminating=False if terminating is None else terminating,
                hostname=e.str_("hostname", max_len=63),
                target_ref_name=target_name,
            )
        )
    return m.EndpointSlice(
        meta=meta,
        service_name=meta.label_map().get(SERVICE_NAME_LABEL),
        address_type=address_type,
        ports=ports,
        endpoints=tuple(endpoints),
    )


def _data_keys(doc: Obj, key: str) -> list[tuple[str, object, str]]:
    value = doc.data.get(key)
    if value is None:
        return []
    path = doc.at(key)
    if not isinstance(value, Mapping):
        doc.issues.add(path, f"must be a mapping of keys to values, got {describe(value)}")
        return []
    out: list[tuple[str, object, str]] = []
    for k, v in value.items():
        if not isinstance(k, str):
            doc.issues.add(path, f"keys must be strings, got {describe(k)}")
            continue
        check_str(k, path, doc.issues, max_len=253, syntax=CONFIG_KEY)
        out.append((k, v, join(path, k)))
    return out


def _base64(value: object, path: str, issues: Issues) -> bytes | None:
    text = check_str(value, path, issues)
    if text is None:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        issues.add(
            path,
            "is not valid base64 (data values are base64-encoded; use stringData for plain text)",
        )
        return None


def parse_secret(meta: m.Meta, doc: Obj, version: str) -> m.Secret:
    data: dict[str, bytes] = {}
    for k, v, path in _data_keys(doc, "data"):
        decoded = _base64(v, path, doc.issues)
        if decoded is not None:
            data[k] = decoded
    # "stringData ... is merged into the data field on write, overwriting any existing
    # values."
    for k, v, path in _data_keys(doc, "stringData"):
        text = check_str(v, path, doc.issues)
        if text is not None:
            data[k] = text.encode("utf-8")
    doc.bool_("immutable")
    return m.Secret(
        meta=meta,
        type=doc.str_("type", min_len=1) or "Opaque",
        data=tuple(data.items()),
    )


def parse_config_map(meta: m.Meta, doc: Obj, version: str) -> m.ConfigMap:
    data: dict[str, str] = {}
    for k, v, path in _data_keys(doc, "data"):
        text = check_str(v, path, doc.issues)
        if text is not None:
            data[k] = text
    for k, v, path in _data_keys(doc, "binaryData"):
        if k in data:
            doc.issues.add(path, f"key {show(k)} is also in data; a key may appear in only one")
        decoded = _base64(v, path, doc.issues)
        if decoded is None:
            continue
        try:
            data[k] = decoded.decode("utf-8")
        except UnicodeDecodeError:
            doc.issues.add(
                path,
                "decodes to bytes that are not UTF-8 text; gatewayd reads ConfigMap values as text",
            )
    doc.bool_("immutable")
    return m.ConfigMap(meta=meta, data=tuple(data.items()))


def parse_pod(meta: m.Meta, doc: Obj, version: str) -> m.Pod:
    doc.sub("spec", None)  # admitted, not read
    status = doc.sub("status", None)
    ips: tuple[str, ...] = ()
    if status is not None:
        # status.podIPs, else status.podIP.
        found: list[str] = []
        for item in status.objs("podIPs", ("ip",)):
            ip = item.str_("ip", required=True, min_len=1)
            if ip is not None:
                found.append(ip)
        ips = tuple(found)
        if not ips:
            single = status.str_("podIP")
            ips = (single,) if single else ()
        for i, ip in enumerate(ips):
            if not is_ip(ip):
                status.issues.add(
                    join(status.path, f"podIPs[{i}]" if status.has("podIPs") else "podIP"),
                    f"{show(ip)} is not an IP address",
                )
    return m.Pod(meta=meta, pod_ips=ips)


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def parse_namespace(meta: m.Meta, doc: Obj, version: str) -> m.Namespace:
    doc.sub("spec", None)  # admitted, not read (finalizers)
    # "The Kubernetes control plane sets an immutable label kubernetes.io/metadata.name
    # on all namespaces", whatever the manifest says.
    labels = tuple((k, v) for k, v in meta.labels if k != NAMESPACE_NAME_LABEL)
    return m.Namespace(meta=replace(meta, labels=(*labels, (NAMESPACE_NAME_LABEL, meta.name))))
