"""gRPC facts the data plane needs (pure functions, no I/O).

- A gRPC request is recognised by its content type ("Content-Type →
  "application/grpc" [("+proto" / "+json" / {custom})]", gRPC over HTTP/2).
- Local replies to gRPC requests are *trailers-only* responses: HTTP status 200,
  ``content-type: application/grpc``, ``grpc-status`` and ``grpc-message`` in the one
  HEADERS frame ("Trailers-Only is permitted for calls that produce an immediate
  error").  The gRPC status follows the spec's HTTP-to-gRPC table
  (doc/http-grpc-status-mapping.md), except that the proxy's own timeout is
  DEADLINE_EXCEEDED, as Envoy answers it.
- ``grpc-timeout`` ("Timeout → "grpc-timeout" TimeoutValue TimeoutUnit", at most 8
  digits, units H M S m u n) bounds the request like Envoy's ``max_grpc_timeout``: the
  smaller of it and the route timeout applies.
"""

from __future__ import annotations

from typing import Final

GRPC_CONTENT_TYPE: Final = b"application/grpc"

# grpc-status codes (google.rpc.Code).
OK: Final = 0
UNKNOWN: Final = 2
DEADLINE_EXCEEDED: Final = 4
PERMISSION_DENIED: Final = 7
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
UNAUTHENTICATED: Final = 16

# "HTTP Status Code -> gRPC Status Code" (gRPC, http-grpc-status-mapping.md); any other
# status is UNKNOWN.
HTTP_TO_GRPC: Final = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}

_UNITS: Final = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def is_grpc(content_type: bytes | None) -> bool:
    """``application/grpc`` or ``application/grpc+<subtype>`` (any case)."""
    if content_type is None:
        return False
    ct = content_type.lower()
    return ct == GRPC_CONTENT_TYPE or ct.startswith((b"application/grpc+", b"application/grpc;"))


def grpc_status_for(http_status: int) -> int:
    return HTTP_TO_GRPC.get(http_status, UNKNOWN)


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value; None when it is malformed ("TimeoutValue →
    {positive integer as ASCII string of at most 8 digits}")."""
    if not 2 <= len(value) <= 9:
        return None
    digits = value[:-1]
    unit = _UNITS.get(value[-1])
    if unit is None or not digits.isdigit():
        return None
    return int(digits) * unit


def _percent_encode(message: str) -> bytes:
    """grpc-message: "Percent-Encoded" (unreserved printable ASCII kept, others %XX)."""
    out = bytearray()
    for b in message.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(b)
        else:
            out += b"%%%02X" % b
    return bytes(out)


def trailers_only(grpc_status: int, message: str) -> list[tuple[bytes, bytes]]:
    """The fields of a trailers-only gRPC reply (besides ``:status 200``)."""
    return [
        (b"content-type", GRPC_CONTENT_TYPE),
        (b"grpc-status", b"%d" % grpc_status),
        (b"grpc-message", _percent_encode(message)),
    ]
