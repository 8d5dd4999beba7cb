"""Helpers of the status write-back and leader-election tests: a real kubernetes_asyncio
client configured from the API-server double's kubeconfig, and status objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kits.apiserver import ApiServerDouble
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from gatewayd.routing.control.bindings import ObjectStatus
from gatewayd.routing.control.conditions import condition

GW = "gateway.networking.k8s.io"
OURS = "gatewayd.dev/gateway-controller"
OTHER = "example.net/other-controller"


async def kube_client(api: ApiServerDouble, directory: Path) -> ApiClient:
    """A client the way gatewayd builds one: from a kubeconfig (CA data, bearer token)."""
    path = api.write_kubeconfig(directory / "kubeconfig")
    configuration = Configuration()
    await kube_config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return ApiClient(configuration=configuration)


async def close_client(api: ApiServerDouble, client: ApiClient) -> None:
    """Close ``client`` and wait until the double saw its connections go (their TLS
    close_notify exchange must finish before the test's event loop closes)."""
    await client.close()
    await api.async_wait_disconnected()


def gateway_class(name: str, controller: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GW}/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller},
    }


def gateway(name: str, class_name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": f"{GW}/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "gatewayClassName": class_name,
            "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def http_route(
    name: str, parents: list[str], status: dict[str, Any] | None = None
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": f"{GW}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"parentRefs": [{"name": p} for p in parents], "rules": [{}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


def gw_ref(name: str) -> dict[str, object]:
    return {"group": GW, "kind": "Gateway", "namespace": "default", "name": name}


def route_parent(gw: str, controller: str, ok: bool, now: str) -> dict[str, object]:
    reason = "Accepted" if ok else "NotAllowedByListeners"
    return {
        "parentRef": gw_ref(gw),
        "controllerName": controller,
        "conditions": [
            condition("Accepted", ok, reason, "accepted" if ok else "refused", 1, now),
            condition("ResolvedRefs", True, "ResolvedRefs", "resolved", 1, now),
        ],
    }


def statuses(now: str, *, route_ok: bool = True, with_route: bool = True) -> list[ObjectStatus]:
    """What resolve() would say of class "ours", Gateway "gw" and HTTPRoute "r"."""
    out = [
        ObjectStatus(
            api_version=f"{GW}/v1",
            kind="GatewayClass",
            namespace="",
            name="ours",
            generation=1,
            status={
                "conditions": [condition("Accepted", True, "Accepted", "Handled", 1, now)],
                "supportedFeatures": [{"name": "Gateway"}, {"name": "HTTPRoute"}],
            },
        ),
        ObjectStatus(
            api_version=f"{GW}/v1",
            kind="Gateway",
            namespace="default",
            name="gw",
            generation=1,
            status={
                "addresses": [{"type": "IPAddress", "value": "127.0.10.1"}],
                "conditions": [
                    condition("Accepted", True, "Accepted", "ok", 1, now),
                    condition("Programmed", True, "Programmed", "ok", 1, now),
                ],
                "listeners": [
                    {
                        "name": "http",
                        "supportedKinds": [{"group": GW, "kind": "HTTPRoute"}],
                        "attachedRoutes": 1 if with_route else 0,
                        "conditions": [condition("Programmed", True, "Programmed", "ok", 1, now)],
                    }
                ],
            },
        ),
    ]
    if with_route:
        out.append(
            ObjectStatus(
                api_version=f"{GW}/v1",
                kind="HTTPRoute",
                namespace="default",
                name="r",
                generation=1,
                status={"parents": [route_parent("gw", OURS, route_ok, now)]},
            )
        )
    return out
