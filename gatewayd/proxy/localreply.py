"""Responses the proxy writes itself (no route, no healthy upstream, timeouts, ...).

Each kind of local reply has an Envoy response flag (logged as %RESPONSE_FLAGS% and
known to anyone who reads Envoy access logs), a metrics label, a default status and a
default body, mirroring Envoy's own local replies:

====  ==========================  ======  ============================================
flag  reason (metrics label)      status  when
====  ==========================  ======  ============================================
NR    no_route                    404     no route matches the request
NC    invalid_backend             500     the rule has no usable backend (backendRef
                                          unresolved, or no backendRefs at all)
UH    no_healthy_upstream         503     the chosen backend has no ready endpoint
UF    upstream_connect_failure    503     connecting to the endpoint failed
UC    upstream_reset              502     the upstream closed/reset before a response
UPE   upstream_protocol_error     502     the upstream sent an invalid response
UT    upstream_timeout            504     the request or backend timeout expired
UO    overflow                    503     a connection limit was reached
URX   retry_limit_exceeded        503     the rule's retries ran out and the last try
                                          was reset before a response
DPE   downstream_protocol_error   400     the client sent an invalid request
DC    downstream_disconnect       (none)  the client went away; only logged
OE    (none)                      (none)  added to the flag of a request whose failure
                                          ejected its endpoint (gatewayd's own flag;
                                          balancer.py), e.g. "UF,OE"
====  ==========================  ======  ============================================
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

# --------------------------------------------------------------------------- status lines


def _reason(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        # RFC 9112 4: the reason-phrase is optional; a fixed word keeps old clients that
        # split on it happy (Envoy writes "Unknown" too).
        return "Unknown"


STATUS_LINES: dict[int, bytes] = {
    code: f"HTTP/1.1 {code} {_reason(code)}\r\n".encode("ascii") for code in range(100, 600)
}


def status_line(status: int) -> bytes:
    """``b"HTTP/1.1 404 Not Found\\r\\n"``; ValueError outside 100-599."""
    try:
        return STATUS_LINES[status]
    except KeyError:
        raise ValueError(f"HTTP status out of range: {status}") from None


# --------------------------------------------------------------------------- reasons


@dataclass(frozen=True, slots=True)
class ReplyKind:
    flag: str  # Envoy %RESPONSE_FLAGS% code
    reason: str  # label of gatewayd_local_reply_total
    status: int  # 0: nothing is sent (the client is gone)
    body: bytes


NO_ROUTE = ReplyKind("NR", "no_route", 404, b"")
INVALID_BACKEND = ReplyKind("NC", "invalid_backend", 500, b"")
NO_HEALTHY_UPSTREAM = ReplyKind("UH", "no_healthy_upstream", 503, b"no healthy upstream")
UPSTREAM_CONNECT_FAILURE = ReplyKind(
    "UF",
    "upstream_connect_failure",
    503,
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
)
# An FQDN endpoint whose name does not resolve at connect time (Envoy's DF flag,
# "dns_resolution_failure" in %RESPONSE_CODE_DETAILS%).
DNS_RESOLUTION_FAILURE = ReplyKind(
    "DF", "dns_resolution_failure", 503, b"no healthy upstream: dns resolution failure"
)
UPSTREAM_RESET = ReplyKind(
    "UC",
    "upstream_reset",
    502,  # the contract: "upstream reset before the response 502" (Envoy answers 503)
    b"upstream connect error or disconnect/reset before headers. "
    b"reset reason: connection termination",
)
UPSTREAM_PROTOCOL_ERROR = ReplyKind(
    "UPE", "upstream_protocol_error", 502, b"upstream sent an invalid HTTP response"
)
UPSTREAM_TIMEOUT = ReplyKind("UT", "upstream_timeout", 504, b"upstream request timeout")
OVERFLOW = ReplyKind("UO", "overflow", 503, b"upstream connection limit reached")
# A rule with ``retry`` whose last try was reset before a response: Envoy's flag URX
# (UpstreamRetryLimitExceeded) and its 503, which the Gateway API retry conformance
# scenario (HTTPRouteRetryConnectionError) expects ("500 or 503").
RETRY_LIMIT_EXCEEDED = ReplyKind(
    "URX",
    "retry_limit_exceeded",
    503,
    b"upstream connect error or disconnect/reset before headers. retried and the latest "
    b"reset reason: connection termination",
)
DOWNSTREAM_PROTOCOL_ERROR = ReplyKind("DPE", "downstream_protocol_error", 400, b"Bad Request")
DOWNSTREAM_DISCONNECT = ReplyKind("DC", "downstream_disconnect", 0, b"")

REPLY_KINDS: tuple[ReplyKind, ...] = (
    NO_ROUTE,
    INVALID_BACKEND,
    NO_HEALTHY_UPSTREAM,
    UPSTREAM_CONNECT_FAILURE,
    DNS_RESOLUTION_FAILURE,
    UPSTREAM_RESET,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_TIMEOUT,
    OVERFLOW,
    RETRY_LIMIT_EXCEEDED,
    DOWNSTREAM_PROTOCOL_ERROR,
    DOWNSTREAM_DISCONNECT,
)

# --------------------------------------------------------------------------- Date

_date_second = -1
_date_line = b""
_wall_clock = time.time  # module-level: one global lookup per call, and patchable in tests


def date_header() -> bytes:
    """``b"date: <IMF-fixdate>\\r\\n"``, formatted at most once per second.

    RFC 9110 6.6.1: "An origin server with a clock ... MUST generate a Date header field"
    for 2xx-4xx responses, and a local reply is generated here, not upstream."""
    global _date_second, _date_line
    now = int(_wall_clock())
    if now != _date_second:
        _date_line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        _date_second = now
    return _date_line


# --------------------------------------------------------------------------- replies

_FIXED = b"server: gatewayd\r\n"
_TEXT = b"content-type: text/plain\r\n"
_CLOSE = b"connection: close\r\n"


def local_reply(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    request_id: bytes | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> bytes:
    """A complete HTTP/1.1 response.

    ``head``: the answer to a HEAD request: the same headers (Content-Length of the body
    a GET would get) and no body.  1xx, 204 and 304 carry neither a body nor a
    Content-Length (RFC 9110 8.6: "A server MUST NOT send a Content-Length
    header field in any response with a status code of 1xx (Informational) or 204 (No
    Content)").  ``connection: close`` when not ``keep_alive``.
    """
    parts = [status_line(status), date_header(), _FIXED]
    if status < 200 or status == 204 or status == 304:
        # 304's Content-Length would describe the representation, which a local
        # reply does not have, so it is omitted as well.
        body = b""
    else:
        if body:
            parts.append(_TEXT)
        parts.append(b"content-length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(_CLOSE)
    if request_id:
        parts.append(b"x-request-id: " + request_id + b"\r\n")
    for name, value in extra_headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    if body and not head:
        parts.append(body)
    return b"".join(parts)


def reply_for(
    kind: ReplyKind,
    *,
    keep_alive: bool,
    request_id: bytes | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> bytes:
    """``local_reply`` with the kind's default status and body."""
    return local_reply(
        kind.status,
        kind.body,
        keep_alive=keep_alive,
        request_id=request_id,
        extra_headers=extra_headers,
        head=head,
    )
