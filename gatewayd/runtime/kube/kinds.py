"""The kinds ``gatewayd run --kubernetes`` reads: one table, and every API call made.

Calls, all GETs (the RBAC a deployment needs is exactly this; status write-back and
leases are the status sink's, not listed here):
- discovery: ``GET /api/v1``, ``GET /apis``, ``GET /apis/{group}/{version}`` (verb-less
  non-resource URLs, allowed to every authenticated user by ``system:discovery``);
- ``list`` and ``watch`` of every kind below, cluster-wide
  (``GET /api/v1/{plural}``, ``GET /apis/{group}/{version}/{plural}``, ``?watch=1``);
- ``get`` of single Secrets and ConfigMaps
  (``GET /api/v1/namespaces/{ns}/secrets/{name}``) when a Gateway or BackendTLSPolicy
  starts to reference one whose data was not kept.

Secrets and ConfigMaps are listed and watched like the rest (a watch is the only way to
learn of a change), but only those referenced by a Gateway (``certificateRefs``,
``frontendValidation.caCertificateRefs``, ``backendClientCertificateRef``) or a
BackendTLSPolicy (``caCertificateRefs``) keep their data: every other one is kept as its
name and resourceVersion only, so their size does not count.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

GATEWAY_GROUP = "gateway.networking.k8s.io"


class Keep(enum.Enum):
    """Which objects of a kind keep their whole body in the cache."""

    ALL = "all"
    REFERENCED = "referenced"  # only those Gateways and BackendTLSPolicies reference


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchedKind:
    kind: str
    group: str  # "" for the core group
    versions: tuple[str, ...]  # the versions gatewayd models, most preferred first
    plural: str  # the resource name in URLs and RBAC rules
    namespaced: bool
    keep: Keep = Keep.ALL
    crd: bool = False  # installed by a CRD: may be missing from a cluster

    def path(self, version: str) -> str:
        """The cluster-wide collection URL at ``version``."""
        base = f"/api/{version}" if not self.group else f"/apis/{self.group}/{version}"
        return f"{base}/{self.plural}"

    def object_path(self, version: str, namespace: str, name: str) -> str:
        base = f"/api/{version}" if not self.group else f"/apis/{self.group}/{version}"
        if self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}/{name}"
        return f"{base}/{self.plural}/{name}"

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


KINDS: tuple[WatchedKind, ...] = (
    WatchedKind(
        kind="GatewayClass",
        group=GATEWAY_GROUP,
        versions=("v1", "v1beta1"),
        plural="gatewayclasses",
        namespaced=False,
        crd=True,
    ),
    WatchedKind(
        kind="Gateway",
        group=GATEWAY_GROUP,
        versions=("v1", "v1beta1"),
        plural="gateways",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="HTTPRoute",
        group=GATEWAY_GROUP,
        versions=("v1", "v1beta1"),
        plural="httproutes",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="GRPCRoute",
        group=GATEWAY_GROUP,
        versions=("v1", "v1alpha2"),
        plural="grpcroutes",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="TLSRoute",
        group=GATEWAY_GROUP,
        versions=("v1", "v1alpha3", "v1alpha2"),
        plural="tlsroutes",
        namespaced=True,
        crd=True,
    ),
    # TCPRoute and UDPRoute: v1 since Gateway API v1.6, v1alpha2 (experimental) before.
    WatchedKind(
        kind="TCPRoute",
        group=GATEWAY_GROUP,
        versions=("v1", "v1alpha2"),
        plural="tcproutes",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="UDPRoute",
        group=GATEWAY_GROUP,
        versions=("v1", "v1alpha2"),
        plural="udproutes",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="ReferenceGrant",
        group=GATEWAY_GROUP,
        versions=("v1beta1", "v1", "v1alpha2"),
        plural="referencegrants",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="BackendTLSPolicy",
        group=GATEWAY_GROUP,
        versions=("v1", "v1alpha3"),
        plural="backendtlspolicies",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="ListenerSet",
        group=GATEWAY_GROUP,
        versions=("v1",),
        plural="listenersets",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        # Experimental channel of Gateway API v1.2-v1.3 only: a missing CRD is skipped.
        kind="BackendLBPolicy",
        group=GATEWAY_GROUP,
        versions=("v1alpha2",),
        plural="backendlbpolicies",
        namespaced=True,
        crd=True,
    ),
    WatchedKind(
        kind="Namespace", group="", versions=("v1",), plural="namespaces", namespaced=False
    ),
    WatchedKind(kind="Service", group="", versions=("v1",), plural="services", namespaced=True),
    WatchedKind(
        kind="EndpointSlice",
        group="discovery.k8s.io",
        versions=("v1",),
        plural="endpointslices",
        namespaced=True,
    ),
    WatchedKind(
        kind="Secret",
        group="",
        versions=("v1",),
        plural="secrets",
        namespaced=True,
        keep=Keep.REFERENCED,
    ),
    WatchedKind(
        kind="ConfigMap",
        group="",
        versions=("v1",),
        plural="configmaps",
        namespaced=True,
        keep=Keep.REFERENCED,
    ),
    WatchedKind(kind="Pod", group="", versions=("v1",), plural="pods", namespaced=True),
)

BY_KIND = {k.kind: k for k in KINDS}

# The verbs used on the kinds above (for RBAC rules: deploy/ and its test).
VERBS = ("get", "list", "watch")
