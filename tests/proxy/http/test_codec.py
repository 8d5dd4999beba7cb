"""The codec seam's shared policy: heads and the codec-aware hop-by-hop sets."""

from __future__ import annotations

from gatewayd.proxy.forwarded import HOP_BY_HOP
from gatewayd.proxy.http.codec import (
    HOP_BY_HOP_H1,
    HOP_BY_HOP_H2,
    RequestHead,
    ResponseHead,
    hop_by_hop_for,
    te_for_h2,
)


def test_te_for_h2_keeps_trailers_only() -> None:
    assert te_for_h2(b"trailers") == b"trailers"
    assert te_for_h2(b"gzip, Trailers") == b"trailers"
    assert te_for_h2(b"deflate;q=0.5, trailers;q=1") == b"trailers"
    assert te_for_h2(b"gzip") is None
    assert te_for_h2(b"") is None


def test_hop_by_hop_sets_per_codec() -> None:
    assert hop_by_hop_for(False) is HOP_BY_HOP_H1 == HOP_BY_HOP
    assert hop_by_hop_for(True) is HOP_BY_HOP_H2
    # RFC 9113 8.2.2: everything connection-specific stays out of HTTP/2, but te.
    assert {b"te"} == HOP_BY_HOP_H1 - HOP_BY_HOP_H2
    for name in (b"connection", b"keep-alive", b"proxy-connection", b"upgrade"):
        assert name in HOP_BY_HOP_H2
    assert b"transfer-encoding" in HOP_BY_HOP_H2


def test_heads_default_to_a_bodiless_http11_message() -> None:
    h = RequestHead(b"GET", b"/", [(b"host", b"a")])
    assert (h.version, h.body_length, h.end_stream, h.keep_alive) == ("1.1", None, False, True)
    assert h.authority is None and h.scheme is None and h.protocol is None
    r = ResponseHead(204, [], end_stream=True)
    assert r.status == 204 and r.body_length is None and r.end_stream


def test_request_head_is_the_keyword_constructor() -> None:
    from gatewayd.proxy.http.codec import request_head

    for args in (
        (b"", b"", [], None, False, None),
        (b"POST", b"/p?q", [(b"host", b"h")], None, False, b"gzip, chunked"),
        (b"GET", b"/", [], 0, True, None),
    ):
        method, target, headers, body_length, end_stream, codings = args
        fast = request_head(method, target, headers, body_length, end_stream, codings)
        slow = RequestHead(
            method,
            target,
            headers,
            body_length=body_length,
            end_stream=end_stream,
            transfer_codings=codings,
        )
        assert fast.headers is headers
        assert {a: getattr(fast, a) for a in RequestHead.__slots__} == {
            a: getattr(slow, a) for a in RequestHead.__slots__
        }
