"""Connecting to the API server: in-cluster or kubeconfig configuration -> ``KubeClient``.

The configuration is ``kubernetes_asyncio``'s (the official client's loaders, ported):
a kubeconfig with client certificates, bearer tokens, or exec plugins; in a Pod, the
service account token and CA with ``KUBERNETES_SERVICE_HOST``/``PORT``, the token re-read
every minute (bound tokens rotate).  Requests go through the generated client's
``call_api`` (authentication, TLS), with the body read here, bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import ConfigException, load_kube_config
from kubernetes_asyncio.config.incluster_config import InClusterConfigLoader

from gatewayd.runtime.sources import SourceError

# Where the kubelet mounts the service account's token and CA; GATEWAYD_SERVICE_ACCOUNT_DIR
# overrides it (tests, or a projected volume mounted elsewhere).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

MIB = 1024 * 1024


class KubeConfigError(SourceError):
    """No usable client configuration (no kubeconfig, not in a cluster, bad context)."""


class ApiError(Exception):
    """An API request that failed: ``status`` is the HTTP status (0: no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TooLarge(Exception):
    """A response or watch line over its byte bound."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterInfo:
    server: str  # https://host:port
    context: str  # kubeconfig context, or "in-cluster"

    def __str__(self) -> str:
        return f"{self.server} (context {self.context})"


async def connect(kubeconfig: str | None, context: str | None) -> KubeClient:
    """A client from ``kubeconfig`` (and ``context``), or the in-cluster configuration
    when no kubeconfig is given."""
    configuration = Configuration()
    if kubeconfig is None:
        if context is not None:
            raise KubeConfigError("--context needs --kubeconfig")
        base = os.environ.get("GATEWAYD_SERVICE_ACCOUNT_DIR", SERVICE_ACCOUNT_DIR)
        loader = InClusterConfigLoader(
            token_filename=os.path.join(base, "token"),
            cert_filename=os.path.join(base, "ca.crt"),
        )
        try:
            loader.load_and_set(configuration)
        except (ConfigException, OSError) as exc:
            raise KubeConfigError(
                f"in-cluster configuration: {exc} (outside a Pod, pass --kubeconfig)"
            ) from exc
        name = "in-cluster"
    else:
        try:
            kube_loader = await load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, OSError, ValueError, KeyError) as exc:
            raise KubeConfigError(f"kubeconfig {kubeconfig}: {exc}") from exc
        current = kube_loader.current_context
        name = str(current["name"]) if current is not None else "(none)"
    return KubeClient(
        ApiClient(configuration), ClusterInfo(server=str(configuration.host), context=name)
    )


class KubeClient:
    """GETs of JSON and of watch streams, through the generated client."""

    def __init__(self, api: ApiClient, cluster: ClusterInfo) -> None:
        self.api = api
        self.cluster = cluster

    async def get_json(
        self,
        path: str,
        query: list[tuple[str, str]] | None = None,
        *,
        max_bytes: int,
        seconds: float = 60.0,
    ) -> dict[str, Any]:
        """GET ``path`` and decode its JSON object; ApiError for a non-2xx status,
        TooLarge past ``max_bytes``."""
        resp = await self._get(path, query, aiohttp.ClientTimeout(total=seconds))
        async with resp:
            body = await _read_bounded(resp, max_bytes)
            if not 200 <= resp.status <= 299:
                raise ApiError(resp.status, _status_message(resp.status, body))
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise ApiError(resp.status, f"GET {path}: not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ApiError(resp.status, f"GET {path}: not a JSON object")
        return data

    async def stream(
        self, path: str, query: list[tuple[str, str]], *, idle_seconds: float
    ) -> aiohttp.ClientResponse:
        """Open a watch: the response, status checked (ApiError), body unread."""
        bounds = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=idle_seconds)
        resp = await self._get(path, query, bounds)
        if not 200 <= resp.status <= 299:
            async with resp:
                body = await _read_bounded(resp, MIB)
            raise ApiError(resp.status, _status_message(resp.status, body))
        return resp

    async def _get(
        self, path: str, query: list[tuple[str, str]] | None, bounds: aiohttp.ClientTimeout
    ) -> aiohttp.ClientResponse:
        try:
            resp = await self.api.call_api(
                path,
                "GET",
                query_params=query or [],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=bounds,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiError(0, f"GET {path}: {type(exc).__name__}: {exc}") from exc
        assert isinstance(resp, aiohttp.ClientResponse)
        return resp

    async def close(self) -> None:
        await self.api.close()
        # The connector closes its sockets with ``transport.close()``, which completes on
        # a later loop iteration (TLS: after close_notify); give it those iterations so
        # no transport is left half-closed when the loop stops.
        await asyncio.sleep(0.05)


async def _read_bounded(resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    body = bytearray()
    try:
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > max_bytes:
                raise TooLarge(f"response over {max_bytes} bytes")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ApiError(0, f"reading the response: {type(exc).__name__}: {exc}") from exc
    return bytes(body)


def _status_message(status: int, body: bytes) -> str:
    """The ``message`` of a Kubernetes Status body, else the first bytes of the body."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return f"HTTP {status}: {data['message']}"
    except ValueError:
        pass
    return f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
