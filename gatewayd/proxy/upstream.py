"""Where the HTTP/1.1 upstream side used to live: now ``proxy/http/h1_client.py`` (the
connection, the client codec) and ``proxy/http/pool.py`` (the pool).  Re-exported for
the modules and tests that import it from here."""

from __future__ import annotations

from gatewayd.proxy.http.h1_client import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    WRITE_HIGH,
    WRITE_LOW,
    EndpointKey,
    UpstreamConnection,
    UpstreamHandler,
    UpstreamHeadersTooLarge,
    UpstreamProtocolError,
    endpoint_key,
)
from gatewayd.proxy.http.pool import MAX_IDLE_PER_ENDPOINT, UpstreamPool

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_IDLE_PER_ENDPOINT",
    "WRITE_HIGH",
    "WRITE_LOW",
    "EndpointKey",
    "UpstreamConnection",
    "UpstreamHandler",
    "UpstreamHeadersTooLarge",
    "UpstreamPool",
    "UpstreamProtocolError",
    "endpoint_key",
]
