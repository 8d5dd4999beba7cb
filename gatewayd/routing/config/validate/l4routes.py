"""TCPRoute and UDPRoute (gateway.networking.k8s.io v1 and v1alpha2): parentRefs, rules.

Both kinds hold nothing but backendRefs: "Rules are a list of TCP matchers and actions.
+kubebuilder:validation:MinItems=1 +kubebuilder:validation:MaxItems=1" (v1; v1alpha2
allowed 16) and, per rule, "BackendRefs ... +kubebuilder:validation:MinItems=1
+kubebuilder:validation:MaxItems=16" (TCPRouteSpec, TCPRouteRule; UDPRouteSpec,
UDPRouteRule say the same).

Pure module: no I/O.
"""

from __future__ import annotations

from gatewayd.routing.config import model as m
from gatewayd.routing.config.validate.filters import parse_backend_refs
from gatewayd.routing.config.validate.reader import SECTION_NAME, Obj, read_spec, unique_names
from gatewayd.routing.config.validate.refs import parse_parent_refs

L4_ROUTE_SPEC_FIELDS = ("parentRefs", "rules")
L4_RULE_FIELDS = ("name", "backendRefs")


def _rules(spec: Obj, version: str) -> list[tuple[str | None, tuple[m.BackendRef, ...]]]:
    max_rules = 16 if version == "v1alpha2" else 1
    rules = [
        (
            r.str_("name", min_len=1, max_len=253, syntax=SECTION_NAME),
            parse_backend_refs(r, None, required=True, min_items=1),
        )
        for r in spec.objs("rules", L4_RULE_FIELDS, required=True, min_items=1, max_items=max_rules)
    ]
    # CEL: "Rule name must be unique within the route".
    unique_names(
        [(name, f"{spec.at('rules')}[{i}].name") for i, (name, _) in enumerate(rules)],
        spec.issues,
        "rule name",
    )
    return rules


def parse_tcp_route(meta: m.Meta, doc: Obj, version: str) -> m.TCPRoute:
    spec = read_spec(doc, L4_ROUTE_SPEC_FIELDS)
    rules = tuple(m.TCPRouteRule(name=n, backend_refs=b) for n, b in _rules(spec, version))
    return m.TCPRoute(meta=meta, parent_refs=parse_parent_refs(spec), rules=rules)


def parse_udp_route(meta: m.Meta, doc: Obj, version: str) -> m.UDPRoute:
    spec = read_spec(doc, L4_ROUTE_SPEC_FIELDS)
    rules = tuple(m.UDPRouteRule(name=n, backend_refs=b) for n, b in _rules(spec, version))
    return m.UDPRoute(meta=meta, parent_refs=parse_parent_refs(spec), rules=rules)
