"""Session persistence tokens: encode, verify, tamper, expiry, and the endpoint pin."""

from __future__ import annotations

import base64
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.proxy.http.session import (
    MAX_TOKEN_CHARS,
    SessionCodec,
    SessionUse,
    find_value,
    lookup,
    pinned_endpoint,
    response_field,
    valid,
)
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.rules import CompiledBackend, SessionPolicy

SECRET = b"0123456789abcdef0123456789abcdef"
SCOPE = b"HTTPRoute default/r/rule/0"
NOW = 1_800_000_000_000  # ms

EPS = (
    EndpointAddress(address="10.0.0.1", port=8080),
    EndpointAddress(address="10.0.0.2", port=8080),
    EndpointAddress(address="fd00::3", port=9090),
)


def policy(**kw: object) -> SessionPolicy:
    base: dict[str, object] = {"name": "sid", "scope": SCOPE}
    base.update(kw)
    return SessionPolicy(**base)  # type: ignore[arg-type]


def test_round_trip_carries_endpoint_and_times() -> None:
    codec = SessionCodec(SECRET)
    token = codec.encode(SCOPE, "fd00::3", 9090, NOW - 5000, NOW)
    assert len(token) <= MAX_TOKEN_CHARS
    assert b"=" not in token and b";" not in token  # a valid cookie-octet run
    t = codec.decode(SCOPE, token)
    assert t is not None
    assert (t.address, t.port, t.issued_ms, t.used_ms) == ("fd00::3", 9090, NOW - 5000, NOW)


def test_the_mac_is_hmac_sha256_under_the_derived_key() -> None:
    token = SessionCodec(SECRET).encode(SCOPE, "10.0.0.1", 8080, NOW, NOW)
    raw = base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4))
    key = hmac.digest(SECRET, b"gatewayd session key\0" + SCOPE, "sha256")
    assert raw[-16:] == hmac.digest(key, raw[:-16], "sha256")[:16]


def test_another_secret_or_scope_refuses_the_token() -> None:
    token = SessionCodec(SECRET).encode(SCOPE, "10.0.0.1", 8080, NOW, NOW)
    assert SessionCodec(b"another secret of 32 bytes......").decode(SCOPE, token) is None
    # Two rules to the same Service never share a session.
    assert SessionCodec(SECRET).decode(b"HTTPRoute default/r/rule/1", token) is None
    # A restart with the same secret accepts it (no state besides the secret).
    assert SessionCodec(SECRET).decode(SCOPE, token) is not None


def test_tampered_tokens_are_refused() -> None:
    codec = SessionCodec(SECRET)
    token = codec.encode(SCOPE, "10.0.0.1", 8080, NOW, NOW)
    raw = bytearray(base64.urlsafe_b64decode(token + b"=" * (-len(token) % 4)))
    for i in range(len(raw)):  # every byte flipped: payload and MAC
        bad = bytearray(raw)
        bad[i] ^= 0x01
        value = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=")
        assert codec.decode(SCOPE, value) is None, i
    assert codec.decode(SCOPE, token[:-2]) is None  # truncated
    assert codec.decode(SCOPE, b"") is None
    assert codec.decode(SCOPE, b"!!not base64!!") is None
    assert codec.decode(SCOPE, b"A" * (MAX_TOKEN_CHARS + 1)) is None  # bounded, unread


@given(st.binary(max_size=200))
def test_decode_never_raises(value: bytes) -> None:
    # Random bytes never pass the MAC, and nothing but None comes out.
    assert SessionCodec(SECRET).decode(SCOPE, value) is None


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SessionCodec(b"short")


def test_absolute_and_idle_expiry() -> None:
    codec = SessionCodec(SECRET)
    t = codec.decode(SCOPE, codec.encode(SCOPE, "10.0.0.1", 8080, NOW - 10_000, NOW - 3_000))
    assert t is not None
    assert valid(policy(), t, NOW)
    assert valid(policy(absolute_timeout=10.0), t, NOW)
    assert not valid(policy(absolute_timeout=9.9), t, NOW)
    assert valid(policy(idle_timeout=3.0), t, NOW)
    assert not valid(policy(idle_timeout=2.9), t, NOW)
    # Issued in the future beyond the allowed clock skew: refused.
    t2 = codec.decode(SCOPE, codec.encode(SCOPE, "10.0.0.1", 8080, NOW + 120_000, NOW + 120_000))
    assert t2 is not None and not valid(policy(), t2, NOW)


def test_find_value_cookie_and_header() -> None:
    p = policy()
    headers = [
        (b"cookie", b"a=1; sidx=no"),
        (b"cookie", b'b=2;sid="tok" ; c=3'),
    ]
    assert find_value(headers, p) == b"tok"
    assert find_value([(b"cookie", b"a=1")], p) is None
    hp = policy(name="x-session", header=True)
    assert find_value([(b"x-session", b" tok2 ")], hp) == b"tok2"
    assert find_value([(b"cookie", b"x-session=tok")], hp) is None


def test_pinned_endpoint_and_available_hook() -> None:
    assert pinned_endpoint(EPS, "10.0.0.2", 8080) is EPS[1]
    assert pinned_endpoint(EPS, "10.0.0.2", 9999) is None  # gone from the slice
    # The health hook: an ejected endpoint moves the session.
    assert pinned_endpoint(EPS, "10.0.0.2", 8080, lambda ep: ep is not EPS[1]) is None


def test_lookup_across_a_traffic_split_and_response_field() -> None:
    codec = SessionCodec(SECRET)
    p = policy(absolute_timeout=60.0, permanent=True)
    a = CompiledBackend(name="a", endpoints=EPS[:1], session=p)
    b = CompiledBackend(name="b", endpoints=EPS[1:], session=p)
    assert lookup(codec, (a, b), [], NOW) is None
    # A fresh session: the response carries a permanent cookie for the endpoint used.
    field = response_field(codec, SessionUse(p), EPS[2], NOW, secure=True)
    assert field is not None and field[0] == b"set-cookie"
    attrs = field[1].split(b"; ")
    assert attrs[1:] == [b"Path=/", b"Max-Age=60", b"HttpOnly", b"SameSite=Strict", b"Secure"]
    name, _, value = attrs[0].partition(b"=")
    assert name == b"sid"
    use = lookup(codec, (a, b), [(b"cookie", b"sid=" + value)], NOW + 1000)
    assert use is not None and use.backend is b and use.pinned is EPS[2]
    # Same endpoint, no idle timeout: the client's cookie stays as it is.
    assert response_field(codec, use, EPS[2], NOW + 1000, secure=False) is None
    # Moved: a new token, and the session starts over.
    moved = response_field(codec, use, EPS[1], NOW + 2000, secure=False)
    assert moved is not None and b"Secure" not in moved[1]
    assert b"Max-Age=60" in moved[1]
    # Expired: no pin.
    assert lookup(codec, (a, b), [(b"cookie", b"sid=" + value)], NOW + 61_000) is None


def test_idle_timeout_refreshes_the_token_each_response() -> None:
    codec = SessionCodec(SECRET)
    p = policy(name="x-s", header=True, idle_timeout=2.0)
    be = CompiledBackend(name="a", endpoints=EPS, session=p)
    first = response_field(codec, SessionUse(p), EPS[0], NOW, secure=False)
    assert first is not None and first[0] == b"x-s"
    use = lookup(codec, (be,), [first], NOW + 1500)
    assert use is not None and use.pinned is EPS[0]
    again = response_field(codec, use, EPS[0], NOW + 1500, secure=False)
    assert again is not None and again[1] != first[1]
    # The refreshed token keeps the session alive past the first token's idle limit.
    assert lookup(codec, (be,), [again], NOW + 3000) is not None
    assert lookup(codec, (be,), [first], NOW + 3000) is None
