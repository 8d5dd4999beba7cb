from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.proxy.forwarded import (
    FORWARD_WALKED,
    HOP_BY_HOP,
    HOP_BY_HOP_AND_EXPECT,
    add_forwarding_headers,
    client_cert_details,
    forward_clean,
    forward_clean_wire,
    forward_fields,
    forward_request_headers,
    new_request_id,
    strip_hop_by_hop,
    strip_hop_by_hop_set,
)

Headers = list[tuple[bytes, bytes]]


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def forward(
    headers: Headers,
    *,
    hops: int = 0,
    peer: str = "192.0.2.5",
    scheme: bytes = b"http",
    preserve: bool = False,
    cert: bytes | None = None,
) -> bytes:
    return add_forwarding_headers(
        headers,
        peer_ip=peer,
        scheme=scheme,
        trusted_hops=hops,
        preserve_request_id=preserve,
        client_cert=cert,
    )


# --------------------------------------------------------------------------- XFF


def test_xff_created_when_absent() -> None:
    headers: Headers = [(b"host", b"a")]
    forward(headers)
    assert values(headers, b"x-forwarded-for") == [b"192.0.2.5"]
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]
    assert headers[0] == (b"host", b"a")


def test_xff_zero_trusted_hops_envoy_example_1() -> None:
    headers: Headers = [(b"x-forwarded-for", b"203.0.113.128, 203.0.113.10, 203.0.113.1")]
    forward(headers, hops=0)
    assert values(headers, b"x-forwarded-for") == [
        b"203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"
    ]
    # "Trusted client address = 192.0.2.5 (XFF is ignored)"
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]


def test_xff_two_trusted_hops_envoy_example_3() -> None:
    headers: Headers = [(b"x-forwarded-for", b"203.0.113.128, 203.0.113.10, 203.0.113.1")]
    forward(headers, hops=2)
    assert values(headers, b"x-forwarded-for") == [
        b"203.0.113.128, 203.0.113.10, 203.0.113.1, 192.0.2.5"
    ]
    # "Trusted client address = 203.0.113.10 (2nd to last address in XFF is trusted)"
    assert values(headers, b"x-envoy-external-address") == [b"203.0.113.10"]


def test_xff_one_trusted_hop_is_the_last_incoming_address() -> None:
    headers: Headers = [(b"x-forwarded-for", b"198.51.100.7, 203.0.113.1")]
    forward(headers, hops=1)
    assert values(headers, b"x-envoy-external-address") == [b"203.0.113.1"]


def test_xff_shorter_than_trusted_hops_falls_back_to_peer() -> None:
    headers: Headers = [(b"x-forwarded-for", b"203.0.113.1")]
    forward(headers, hops=2)
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]
    headers = []
    forward(headers, hops=1)
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]


def test_xff_trusted_entry_that_is_not_an_ip_falls_back_to_peer() -> None:
    headers: Headers = [(b"x-forwarded-for", b"unknown, 203.0.113.1")]
    forward(headers, hops=2)
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]


def test_multiple_xff_lines_are_joined_in_order() -> None:
    headers: Headers = [
        (b"x-forwarded-for", b"203.0.113.128"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"203.0.113.10,203.0.113.1"),
    ]
    forward(headers, hops=2, peer="2001:db8::1")
    assert values(headers, b"x-forwarded-for") == [
        b"203.0.113.128, 203.0.113.10,203.0.113.1, 2001:db8::1"
    ]
    assert values(headers, b"x-envoy-external-address") == [b"203.0.113.10"]
    assert values(headers, b"accept") == [b"*/*"]


def test_client_sent_envoy_headers_are_replaced() -> None:
    headers: Headers = [
        (b"x-envoy-external-address", b"6.6.6.6"),
        (b"x-envoy-internal", b"true"),
    ]
    forward(headers)
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]
    assert values(headers, b"x-envoy-internal") == []


# --------------------------------------------------------------------------- proto


def test_forwarded_proto_overwritten_without_trusted_hops() -> None:
    headers: Headers = [(b"x-forwarded-proto", b"https")]
    forward(headers, hops=0, scheme=b"http")
    assert values(headers, b"x-forwarded-proto") == [b"http"]


def test_forwarded_proto_trusted_with_trusted_hops() -> None:
    headers: Headers = [(b"x-forwarded-proto", b"HTTPS")]
    forward(headers, hops=1, scheme=b"http")
    assert values(headers, b"x-forwarded-proto") == [b"https"]
    headers = [(b"x-forwarded-proto", b"gopher")]
    forward(headers, hops=1, scheme=b"http")
    assert values(headers, b"x-forwarded-proto") == [b"http"]
    headers = []
    forward(headers, hops=1, scheme=b"https")
    assert values(headers, b"x-forwarded-proto") == [b"https"]


# --------------------------------------------------------------------------- request id


def test_client_request_id_is_replaced_by_default() -> None:
    # Envoy's edge default (preserve_external_request_id: false): a new id per request.
    sent = b"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"
    headers: Headers = [(b"x-request-id", sent), (b"x-request-id", b"second")]
    rid = forward(headers)
    assert rid != sent
    assert values(headers, b"x-request-id") == [rid]
    assert uuid.UUID(rid.decode()).version == 4


def test_valid_request_id_is_kept_and_returned_when_preserved() -> None:
    headers: Headers = [(b"x-request-id", b"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2")]
    rid = forward(headers, preserve=True)
    assert rid == b"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"
    assert values(headers, b"x-request-id") == [rid]


def test_duplicate_request_ids_collapse_to_the_first() -> None:
    headers: Headers = [(b"x-request-id", b"first"), (b"x-request-id", b"second")]
    assert forward(headers, preserve=True) == b"first"
    assert values(headers, b"x-request-id") == [b"first"]


@pytest.mark.parametrize("bad", [b"", b"has space", b"new\nline", b"x" * 129, b"\xff\xfe"])
def test_invalid_or_missing_request_id_is_generated(bad: bytes) -> None:
    headers: Headers = [(b"x-request-id", bad)]
    rid = forward(headers, preserve=True)
    assert rid != bad
    assert values(headers, b"x-request-id") == [rid]
    parsed = uuid.UUID(rid.decode())
    assert parsed.version == 4
    assert str(parsed).encode() == rid


def test_generated_request_ids_are_uuid4_and_unique() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in list(ids)[:50]:
        parsed = uuid.UUID(rid.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert len(rid) == 36


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_a_different_id_sequence() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and exit at once
        try:
            os.write(write_fd, new_request_id())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        child_id = os.read(read_fd, 64)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    assert len(child_id) == 36
    assert child_id != new_request_id()


# --------------------------------------------------------------------------- x-envoy-*


def test_client_x_envoy_headers_are_removed() -> None:
    headers: Headers = [
        (b"host", b"a"),
        (b"x-envoy-retry-on", b"5xx"),
        (b"x-envoy-upstream-rq-timeout-ms", b"1"),
        (b"x-envoy-max-retries", b"100"),
        (b"x-envoy-internal", b"true"),
        (b"x-envoy-external-address", b"10.0.0.1"),
        (b"x-envoy-original-path", b"/admin"),
        (b"x-envoyish", b"kept"),  # not the x-envoy- prefix
        (b"x-other", b"kept"),
    ]
    forward(headers)
    names = [n for n, _ in headers]
    assert [n for n in names if n.startswith(b"x-envoy-")] == [b"x-envoy-external-address"]
    assert values(headers, b"x-envoy-external-address") == [b"192.0.2.5"]
    assert values(headers, b"x-envoyish") == [b"kept"]
    assert values(headers, b"x-other") == [b"kept"]
    assert headers[0] == (b"host", b"a")


# --------------------------------------------------------------------------- XFCC


def test_client_xfcc_is_removed_without_a_client_certificate() -> None:
    headers: Headers = [(b"x-forwarded-client-cert", b'Hash=forged;Subject="CN=admin"')]
    forward(headers)
    assert values(headers, b"x-forwarded-client-cert") == []


def test_client_xfcc_is_replaced_by_the_verified_certificate() -> None:
    headers: Headers = [
        (b"x-forwarded-client-cert", b"Hash=forged"),
        (b"x-forwarded-client-cert", b"Hash=forged2"),
    ]
    forward(headers, cert=b"Hash=abc")
    assert values(headers, b"x-forwarded-client-cert") == [b"Hash=abc"]


def _cert_der(
    cn: str, *, dns: tuple[str, ...] = (), uris: tuple[str, ...] = (), org: str | None = None
) -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org is not None:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    name = x509.Name(attrs)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.DER)


def test_client_cert_details_envoy_format() -> None:
    import hashlib

    der = _cert_der(
        "client", org="Example", dns=("a.example", "b.example"), uris=("spiffe://td/ns/x",)
    )
    expected = (
        f"Hash={hashlib.sha256(der).hexdigest()};"
        'Subject="CN=client,O=Example";'
        "URI=spiffe://td/ns/x;DNS=a.example;DNS=b.example"
    )
    assert client_cert_details(der) == expected.encode()


def test_client_cert_details_quotes_and_escapes_hostile_names() -> None:
    import hashlib

    der = _cert_der('evil"\r\nx-admin: 1;Hash=0', uris=("urn:a;b=c",))
    value = client_cert_details(der)
    # RFC 4514 escapes '"' and ';' in the name, XFCC quoting escapes those backslashes
    # and the quote again; CR/LF become visible escapes, so no header can be injected.
    expected = (
        f"Hash={hashlib.sha256(der).hexdigest()};"
        + 'Subject="CN=evil\\\\\\"\\x0d\\x0ax-admin: 1\\\\;Hash=0";'
        + 'URI="urn:a;b=c"'
    )
    assert value == expected.encode()
    assert b"\r" not in value and b"\n" not in value


def test_client_cert_details_without_san() -> None:
    der = _cert_der("only-cn")
    assert client_cert_details(der).endswith(b';Subject="CN=only-cn"')


# --------------------------------------------------------------------------- hop-by-hop


def test_hop_by_hop_set() -> None:
    for name in (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    ):
        assert name in HOP_BY_HOP


def test_strip_hop_by_hop_removes_fixed_and_connection_named_headers() -> None:
    headers: Headers = [
        (b"host", b"a"),
        (b"connection", b"keep-alive, X-Custom, x-other"),
        (b"keep-alive", b"timeout=5"),
        (b"x-custom", b"1"),
        (b"x-other", b"2"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"proxy-connection", b"keep-alive"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"a"), (b"accept", b"*/*")]


def test_strip_hop_by_hop_multiple_connection_lines() -> None:
    headers: Headers = [
        (b"connection", b"x-a"),
        (b"x-a", b"1"),
        (b"x-b", b"2"),
        (b"connection", b" X-B ,"),
    ]
    assert strip_hop_by_hop(headers) == []


def test_connection_cannot_remove_framing_or_proxy_headers() -> None:
    headers: Headers = [
        (b"connection", b"content-length, host, x-forwarded-for, x-request-id"),
        (b"host", b"a"),
        (b"content-length", b"3"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"x-request-id", b"r"),
    ]
    assert strip_hop_by_hop(headers) == headers[1:]


def test_strip_hop_by_hop_returns_a_new_list_and_leaves_the_input_alone() -> None:
    headers: Headers = [(b"host", b"a"), (b"x-custom", b"1")]
    out = strip_hop_by_hop(headers)
    assert out == headers and out is not headers
    with_hop: Headers = [(b"host", b"a"), (b"connection", b"x-custom"), (b"x-custom", b"1")]
    out = strip_hop_by_hop(with_hop)
    assert out == [(b"host", b"a")]
    assert with_hop == [(b"host", b"a"), (b"connection", b"x-custom"), (b"x-custom", b"1")]


# --------------------------------------------------------------------------- one pass

_NAMES = [
    b"host",
    b"accept",
    b"connection",
    b"keep-alive",
    b"te",
    b"upgrade",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-request-id",
    b"x-envoy-retry-on",
    b"x-envoy-internal",
    b"x-forwarded-client-cert",
    b"content-length",
    b"x-custom",
]
_VALUES = [
    b"",
    b"a",
    b"203.0.113.7",
    b"198.51.100.1, 203.0.113.7",
    b"https",
    b"HTTP",
    b"x-custom, accept",
    b"close, x-forwarded-for, content-length",
    b"keep-alive , X-Custom",
    b"my-id-1",
    b"id with space",
]


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=10),
    hops=st.integers(min_value=0, max_value=3),
    preserve=st.booleans(),
    cert=st.sampled_from([None, b"Hash=ab"]),
    expect=st.booleans(),
)
def test_forward_request_headers_is_strip_then_add(
    headers: Headers, hops: int, preserve: bool, cert: bytes | None, expect: bool
) -> None:
    """The one-pass function gives what the two-step path gives (request id aside, which
    is new on each call unless preserved)."""
    received = list(headers)
    two = strip_hop_by_hop(headers)
    if expect:
        two = [h for h in two if h[0] != b"expect"]
    rid_two = forward(two, hops=hops, preserve=preserve, cert=cert)
    one, rid_one, tp, parent = forward_request_headers(
        headers,
        peer_ip="192.0.2.5",
        scheme=b"http",
        trusted_hops=hops,
        preserve_request_id=preserve,
        client_cert=cert,
        drop=HOP_BY_HOP_AND_EXPECT if expect else HOP_BY_HOP,
    )
    assert headers == received  # the input is left as received
    assert one[:-1] == two[:-1]
    assert one[-1][0] == two[-1][0] == b"x-request-id"
    assert one[-1][1] == rid_one
    if preserve and rid_two == rid_one:
        assert rid_one in {v for _, v in received}
    assert len(rid_one) == 36 or rid_one in {v for _, v in received}
    assert tp is None and parent == b""  # trace_flags None: no Trace Context work


def test_new_request_id_is_a_version_4_uuid() -> None:
    for _ in range(2000):
        rid = new_request_id()
        u = uuid.UUID(rid.decode("ascii"))
        assert u.version == 4
        assert u.variant == uuid.RFC_4122
        assert str(u).encode("ascii") == rid


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=10))
def test_strip_hop_by_hop_set_is_strip_then_set(headers: Headers) -> None:
    received = list(headers)
    two = strip_hop_by_hop(headers)
    for i, (n, _) in enumerate(two):
        if n == b"x-request-id":
            two[i] = (n, b"rid")
            break
    else:
        two.append((b"x-request-id", b"rid"))
    assert strip_hop_by_hop_set(headers, b"x-request-id", b"rid") == two
    assert headers == received


# --------------------------------------------------------------------------- clean lane

_CLEAN_NAMES = [b"host", b"accept", b"user-agent", b"x-custom", b"content-length", b"x-envoy"]


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(_CLEAN_NAMES), st.sampled_from(_VALUES)), max_size=8
    ),
    hops=st.integers(min_value=0, max_value=3),
    preserve=st.booleans(),
    cert=st.sampled_from([None, b"Hash=ab"]),
    scheme=st.sampled_from([b"http", b"https"]),
    peer=st.sampled_from(["192.0.2.5", "2001:db8::1"]),
    flags=st.sampled_from([None, b"00", b"01"]),
)
def test_forward_clean_is_forward_fields_on_clean_fields(
    headers: Headers,
    hops: int,
    preserve: bool,
    cert: bytes | None,
    scheme: bytes,
    peer: str,
    flags: bytes | None,
) -> None:
    """On fields without any of FORWARD_WALKED or x-envoy-*, ``forward_clean`` gives
    ``forward_fields``' fields (ids aside: new on each call), whatever the options."""
    assert not any(n in FORWARD_WALKED or n.startswith(b"x-envoy-") for n, _ in headers)
    received = list(headers)
    want, _, want_tp, _ = forward_fields(
        headers, peer, scheme, cert, HOP_BY_HOP, hops, preserve, flags, 1.0
    )
    got, rid, tp = forward_clean(headers, peer, scheme, cert, flags, 1.0)
    assert headers == received
    n = 1 if flags is None else 2
    assert got[:-n] == want[:-n]
    assert [name for name, _ in got[-n:]] == [name for name, _ in want[-n:]]
    assert got[-n] == (b"x-request-id", rid)
    u = uuid.UUID(rid.decode("ascii"))
    assert (u.version, u.variant) == (4, uuid.RFC_4122) and str(u).encode() == rid
    if flags is None:
        assert tp is None is want_tp
    else:
        assert got[-1] == (b"traceparent", tp)
        assert tp is not None and tp[3:35] == u.hex.encode()
        assert tp.endswith(b"-" + flags) and len(tp) == 55 and tp[36:52] != b"0" * 16


@settings(max_examples=100, deadline=None)
@given(
    headers=st.lists(
        st.tuples(st.sampled_from(_CLEAN_NAMES), st.sampled_from(_VALUES)), max_size=8
    ),
    cert=st.sampled_from([None, b"Hash=ab"]),
    scheme=st.sampled_from([b"http", b"https"]),
    peer=st.sampled_from(["192.0.2.5", "2001:db8::1"]),
    flags=st.sampled_from([None, b"00", b"01"]),
)
def test_forward_clean_wire_is_the_lines_of_the_fields_forward_clean_adds(
    headers: Headers, cert: bytes | None, scheme: bytes, peer: str, flags: bytes | None
) -> None:
    """``forward_clean_wire``'s pieces joined are exactly the fields ``forward_clean``
    adds after the request's own as HTTP/1.1 field lines, in order, then the added
    lines it is given; its ids are those lines' (new on each call)."""
    received = list(headers)
    got, _, _ = forward_clean(headers, peer, scheme, cert, flags, 1.0)
    for added in (b"", b"x-bench: 1\r\n"):
        rid, tp, wire = forward_clean_wire(peer, scheme, cert, flags, 1.0, added)
        assert headers == received
        n = 1 if flags is None else 2
        fields = [*got[len(headers) : -n], (b"x-request-id", rid)]
        if flags is None:
            assert tp is None
        else:
            assert tp is not None and len(tp) == 55 and tp.endswith(b"-" + flags)
            assert tp[3:35] == uuid.UUID(rid.decode("ascii")).hex.encode()
            fields.append((b"traceparent", tp))
        assert [name for name, _ in got[-n:]] == [name for name, _ in fields[-n:]]
        assert b"".join(wire) == b"".join(b"%s: %s\r\n" % f for f in fields) + added


def test_forward_clean_follows_the_connection_it_is_given() -> None:
    """The per-address cache never hands one connection's scheme or certificate to
    another from the same address."""
    h: Headers = [(b"host", b"a")]
    a, _, _ = forward_clean(h, "192.0.2.9", b"http", None, None, 1.0)
    b, _, _ = forward_clean(h, "192.0.2.9", b"https", b"Hash=cd", None, 1.0)
    c, _, _ = forward_clean(h, "192.0.2.9", b"http", None, None, 1.0)
    assert values(a, b"x-forwarded-proto") == [b"http"] == values(c, b"x-forwarded-proto")
    assert values(b, b"x-forwarded-proto") == [b"https"]
    assert values(b, b"x-forwarded-client-cert") == [b"Hash=cd"]
    assert values(a, b"x-forwarded-client-cert") == [] == values(c, b"x-forwarded-client-cert")


def test_new_traces_from_the_clean_lane_are_sampled_at_the_ratio() -> None:
    tps = [forward_clean([], "192.0.2.5", b"http", None, b"01", 0.25)[2] for _ in range(4000)]
    share = sum(1 for tp in tps if tp is not None and tp.endswith(b"-01")) / len(tps)
    assert 0.18 < share < 0.32, share


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_reuse_the_parents_batch_of_ids() -> None:
    forward_clean([], "192.0.2.5", b"http", None, b"00", 1.0)  # a batch is held now
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id and exit at once
        try:
            os.write(write_fd, forward_clean([], "192.0.2.5", b"http", None, b"00", 1.0)[1])
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        child_id = os.read(read_fd, 64)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    assert len(child_id) == 36
    assert child_id != forward_clean([], "192.0.2.5", b"http", None, b"00", 1.0)[1]


def test_ids_batches_are_unique_well_formed_and_never_carry_a_zero_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gatewayd.proxy import forwarded

    draws = iter([0])  # the first batch: every id all zeros (span ids included)
    calls: list[int] = []

    def getrandbits(k: int) -> int:
        calls.append(k)
        drawn = next(draws, None)
        return forwarded._rng.getrandbits(k) if drawn is None else drawn

    monkeypatch.setattr(forwarded, "_getrandbits", getrandbits)
    forwarded._drop_ids()
    seen = set()
    for _ in range(3 * forwarded.IDS_BATCH):
        rid, tp = forwarded._new_ids()
        u = uuid.UUID(rid.decode("ascii"))
        assert (u.version, u.variant) == (4, uuid.RFC_4122) and str(u).encode() == rid
        assert len(tp) == 53 and tp.startswith(b"00-") and tp.endswith(b"-")
        assert tp[3:35] == u.hex.encode() and tp[36:52] != b"0" * 16
        assert tp[35:36] == b"-"
        seen.add(rid)
    assert len(seen) == 3 * forwarded.IDS_BATCH
    assert calls[:2] == [192 * forwarded.IDS_BATCH] * 2  # the zero batch was redrawn
    forwarded._drop_ids()  # later tests draw from the real generator again
