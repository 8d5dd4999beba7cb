"""Session persistence (GEP-1619): the session token and the pinned endpoint.

"Persistence is an exception to load balancing: a persistent client request bypasses
the proxy's load balancing algorithm, going directly to a backend server it has
previously established a session with." (GEP-1619)

The token *is* the session: it carries the endpoint (address and port) the session is
pinned to, when the session began and when it was last used, authenticated by an
HMAC-SHA256.  No table is shared, so a session survives a reload (a new snapshot), a
restart (with the same ``--session-secret-file``) and lands on the same endpoint
whichever worker process serves it.

Layout before base64url (no padding), 31 + len(address) bytes::

    version (1) | issued, ms since the epoch (6) | last used, ms (6) | port (2)
    | address, ASCII (<= 45) | MAC (16: HMAC-SHA256 truncated)

The MAC key is derived per session scope from the process's secret:
``HMAC-SHA256(secret, "gatewayd session key" NUL scope)``, where the scope is the route
rule (``HTTPRoute ns/name/rule/N``) or the Service of a BackendLBPolicy.  "Route rules
referencing the same service MUST NOT share persistent sessions": a token minted for
one rule fails the MAC of any other.  A forged or stale token is never an error: the
request is balanced as if it had none and gets a new token.

A token only ever selects among the backend's current endpoints, so even a valid token
for an endpoint that left the EndpointSlice moves the session (new token).

The clock is the wall clock (``time.time()``): issue times must compare across
processes and restarts.  A token issued more than ``MAX_CLOCK_SKEW`` in the future
(clocks of replicas disagree) is refused.

No I/O: unit-tested in tests/proxy/http/test_session.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from gatewayd.routing.snapshot.backends import EndpointAddress
    from gatewayd.routing.snapshot.rules import CompiledBackend, SessionPolicy

Headers = list[tuple[bytes, bytes]]

VERSION: Final = 1
MAC_BYTES: Final = 16
_HEAD: Final = struct.Struct(">B6s6sH")
MAX_ADDRESS: Final = 45  # the longest textual IPv6 address (with an IPv4 tail)
# Encoded length of the longest valid token; anything longer is ignored unread (a
# client's bytes: bounded before base64 decoding or hashing).
MAX_TOKEN_CHARS: Final = (_HEAD.size + MAX_ADDRESS + MAC_BYTES) * 4 // 3 + 4
MAX_CLOCK_SKEW_MS: Final = 60_000
_KEY_LABEL: Final = b"gatewayd session key\0"
# Derived keys kept per scope; bounded (a snapshot has at most one scope per rule).
MAX_KEYS: Final = 4096


class Token:
    """A verified session token."""

    __slots__ = ("address", "issued_ms", "port", "used_ms")

    def __init__(self, address: str, port: int, issued_ms: int, used_ms: int) -> None:
        self.address = address
        self.port = port
        self.issued_ms = issued_ms
        self.used_ms = used_ms


class SessionCodec:
    """Mints and verifies session tokens with one secret (per process; every worker
    and every restart given the same secret agree)."""

    __slots__ = ("_keys", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        # scope -> the HMAC's inner and outer SHA-256 states after the padded key.
        self._keys: dict[bytes, tuple[Any, Any]] = {}

    def _mac(self, scope: bytes, payload: bytes) -> bytes:
        """HMAC-SHA256 (RFC 2104) of ``payload`` under the scope's key, truncated.
        The keyed inner and outer hash states are kept per scope and copied: one
        ``hmac.digest`` call costs ~2.5 times as much (OpenSSL 3 sets the key up on
        every call; measured 8.3 against 3.2 us on the loaded test machine)."""
        pads = self._keys.get(scope)
        if pads is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            key = hmac.digest(self._secret, _KEY_LABEL + scope, "sha256").ljust(64, b"\0")
            pads = (
                hashlib.sha256(bytes(b ^ 0x36 for b in key)),
                hashlib.sha256(bytes(b ^ 0x5C for b in key)),
            )
            self._keys[scope] = pads
        inner = pads[0].copy()
        inner.update(payload)
        outer = pads[1].copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_BYTES]  # type: ignore[no-any-return]

    def encode(self, scope: bytes, address: str, port: int, issued_ms: int, used_ms: int) -> bytes:
        addr = address.encode("ascii")
        payload = (
            _HEAD.pack(VERSION, issued_ms.to_bytes(6, "big"), used_ms.to_bytes(6, "big"), port)
            + addr
        )
        mac = self._mac(scope, payload)
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=")

    def decode(self, scope: bytes, value: bytes) -> Token | None:
        """The token in ``value`` if it is well formed and its MAC verifies; else None."""
        if not value or len(value) > MAX_TOKEN_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) <= _HEAD.size + MAC_BYTES or len(raw) > _HEAD.size + MAX_ADDRESS + MAC_BYTES:
            return None
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        want = self._mac(scope, payload)
        if not hmac.compare_digest(mac, want):
            return None
        version, issued, used, port = _HEAD.unpack_from(payload)
        if version != VERSION:
            return None
        try:
            address = payload[_HEAD.size :].decode("ascii")
        except UnicodeDecodeError:
            return None
        return Token(address, port, int.from_bytes(issued, "big"), int.from_bytes(used, "big"))


def find_value(headers: Headers, policy: SessionPolicy) -> bytes | None:
    """The session value the request carries: the named cookie (any ``cookie`` field,
    HTTP/2 may split them) or the named header.  The first occurrence wins."""
    if policy.header:
        name = policy.name.encode("latin-1")
        for n, v in headers:
            if n == name:
                return v.strip()
        return None
    cookie = policy.name.encode("latin-1")
    for n, v in headers:
        if n != b"cookie" or cookie not in v:
            continue
        # RFC 6265 5.4: cookie-pair *( ";" SP cookie-pair ).
        for pair in v.split(b";"):
            k, eq, val = pair.strip().partition(b"=")
            if eq and k == cookie:
                return val.strip().strip(b'"')
    return None


def valid(policy: SessionPolicy, token: Token, now_ms: int) -> bool:
    """Whether the session is still alive: "Once the AbsoluteTimeout duration has
    elapsed, the session becomes invalid"; "Once the session has been idle for more
    than the specified IdleTimeout duration, the session becomes invalid"."""
    if token.issued_ms > now_ms + MAX_CLOCK_SKEW_MS or token.used_ms < token.issued_ms:
        return False
    absolute = policy.absolute_timeout
    if absolute is not None and now_ms - token.issued_ms > absolute * 1000.0:
        return False
    idle = policy.idle_timeout
    return idle is None or now_ms - token.used_ms <= idle * 1000.0


def pinned_endpoint(
    endpoints: Sequence[EndpointAddress],
    address: str,
    port: int,
    available: Callable[[EndpointAddress], bool] | None = None,
) -> EndpointAddress | None:
    """The endpoint the session is pinned to, if the backend still has it and it is
    available; None lets the normal pick happen (and the response records the new
    pin).  ``available``: the health hook (an ejected endpoint moves the session);
    None: every endpoint of the EndpointSlice counts as available."""
    for ep in endpoints:
        if ep.port == port and ep.address == address:
            if available is not None and not available(ep):
                return None
            return ep
    return None


class SessionUse:
    """A request's session: the policy, the token it came with (if valid) and the
    endpoint it is pinned to (None once it must move)."""

    __slots__ = ("backend", "issued_ms", "pinned", "policy")

    def __init__(
        self,
        policy: SessionPolicy,
        backend: CompiledBackend | None = None,
        pinned: EndpointAddress | None = None,
        issued_ms: int = 0,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.pinned = pinned
        self.issued_ms = issued_ms

    def move(self) -> bool:
        """The pinned endpoint does not answer: unpin (True), once per request.  The
        next pick avoids the endpoint that failed (the balancer's ``avoid``)."""
        if self.pinned is None:
            return False
        self.pinned = None
        return True


def lookup(
    codec: SessionCodec,
    backends: Sequence[CompiledBackend],
    headers: Headers,
    now_ms: int,
    available: Callable[[EndpointAddress], bool] | None = None,
) -> SessionUse | None:
    """The backend and endpoint a valid session token of the request names, among a
    rule's backends with a session policy ("the persistence to a single backend MUST
    be maintained across services" of a traffic split); None when there is none."""
    seen: dict[int, Token | None] = {}
    for backend in backends:
        policy = backend.session
        if policy is None or backend.invalid_status is not None:
            continue
        key = id(policy)
        if key in seen:
            token = seen[key]
        else:
            value = find_value(headers, policy)
            token = codec.decode(policy.scope, value) if value is not None else None
            if token is not None and not valid(policy, token, now_ms):
                token = None
            seen[key] = token
        if token is None:
            continue
        ep = pinned_endpoint(backend.endpoints, token.address, token.port, available)
        if ep is not None:
            return SessionUse(policy, backend, ep, token.issued_ms)
    return None


def response_field(
    codec: SessionCodec,
    use: SessionUse,
    endpoint: EndpointAddress,
    now_ms: int,
    *,
    secure: bool,
) -> tuple[bytes, bytes] | None:
    """The ``set-cookie`` or session header to send with the response, or None when the
    client's token stays valid as it is (same endpoint, no idle timeout to refresh)."""
    policy = use.policy
    pinned = use.pinned
    # Compared by value: the endpoint may come from the balancer's per-process state,
    # which outlives a snapshot (an equal endpoint of an older one).
    same = (
        pinned is not None and pinned.port == endpoint.port and pinned.address == endpoint.address
    )
    if same and policy.idle_timeout is None:
        return None
    issued = use.issued_ms if same else now_ms
    token = codec.encode(policy.scope, endpoint.address, endpoint.port, issued, now_ms)
    if policy.header:
        return policy.name.encode("latin-1"), token
    parts = [policy.name.encode("latin-1") + b"=" + token, b"Path=" + policy.cookie_path.encode()]
    if policy.permanent and policy.absolute_timeout is not None:
        # "When set to "Permanent", AbsoluteTimeout indicates the cookie's lifetime via
        # the Expires or Max-Age cookie attributes": what is left of it.
        left = policy.absolute_timeout - (now_ms - issued) / 1000.0
        parts.append(b"Max-Age=%d" % max(0, int(left)))
    # "implementers SHOULD follow the security-by-default principle ... enabling Secure
    # and HttpOnly, and setting SameSite to Strict" (GEP-1619); Secure only where the
    # client reached us over TLS, or a cleartext client would never send it back.
    parts.append(b"HttpOnly")
    parts.append(b"SameSite=Strict")
    if secure:
        parts.append(b"Secure")
    return b"set-cookie", b"; ".join(parts)
