"""Field translation between HTTP/1.1 and HTTP/2 heads (codec concerns, pure functions).

HTTP/2 -> the exchange (and on to an HTTP/1.1 upstream): ``:authority`` is the head's
``authority`` (the HTTP/1.1 client writes it as Host), several ``cookie`` fields are
joined with "; " (RFC 9113 8.2.3: "these MUST be concatenated into a single octet
string using the two-octet delimiter of 0x3b, 0x20 (the ASCII string "; ") before
being passed into a non-HTTP/2 context"), and connection-specific fields cannot be
there (h2 refuses such a request).

The exchange -> HTTP/2 (requests upstream, responses downstream): names lower-case,
``host`` becomes ``:authority`` (RFC 9113 8.3.1), connection-specific fields dropped
(RFC 9113 8.2.2: "An endpoint MUST NOT generate an HTTP/2 message containing
connection-specific header fields"), ``te`` only as "trailers".
"""

from __future__ import annotations

from collections.abc import Iterable

from hpack import NeverIndexedHeaderTuple

from gatewayd.proxy.http.codec import Headers, te_for_h2

# RFC 9113 8.2.2 names these; ``host`` is carried as ``:authority`` instead.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Credentials stay out of HPACK's dynamic table (RFC 7541 7.1.3: "an encoder might
# choose not to index values for header fields that are considered to be highly
# valuable or sensitive to recovery"), as h2's own normalization and nghttp2 do:
# authorization fields, and cookies too short to resist guessing.
NEVER_INDEXED = frozenset({b"authorization", b"proxy-authorization"})
_SHORT_COOKIE = 20
_OWS = b" \t"


def join_cookies(headers: Headers) -> Headers:
    """One ``cookie`` field in place of several (order kept; a no-op with 0 or 1)."""
    first = -1
    parts: list[bytes] = []
    for i, (name, value) in enumerate(headers):
        if name == b"cookie":
            if first < 0:
                first = i
            parts.append(value)
    if len(parts) < 2:
        return headers
    out: Headers = []
    for i, (name, value) in enumerate(headers):
        if name == b"cookie":
            if i == first:
                out.append((b"cookie", b"; ".join(parts)))
        else:
            out.append((name, value))
    return out


def to_h2_fields(headers: Iterable[tuple[bytes, bytes]], *, request: bool) -> Headers:
    """Regular fields for an HTTP/2 HEADERS frame (pseudo-headers are the caller's).

    Fields named by ``Connection`` are dropped too (RFC 9110 7.6.1).  ``request``: keep
    ``te: trailers`` (RFC 9113 8.2.2 allows it in requests only).
    """
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    out: Headers = []
    for name, value in headers:
        lname = name.lower()
        if lname in CONNECTION_SPECIFIC or lname in named or lname == b"host":
            continue
        if lname == b"te":
            te = te_for_h2(value) if request else None
            if te is not None:
                out.append((b"te", te))
            continue
        # RFC 9113 8.2.1: "A field value MUST NOT start or end with an ASCII whitespace
        # character"; an HTTP/1.1 peer's optional whitespace is not part of it.
        value = value.strip(_OWS)
        if lname in NEVER_INDEXED or (lname == b"cookie" and len(value) < _SHORT_COOKIE):
            out.append(NeverIndexedHeaderTuple(lname, value))
        else:
            out.append((lname, value))
    return out


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The ``content-length`` value when it is one non-negative integer, else None."""
    for name, value in headers:
        if name == b"content-length":
            v = value.strip()
            return int(v) if v.isdigit() else None
    return None
