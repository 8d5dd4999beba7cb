"""What the exchange hands the route table: the request fields (HeaderView, built
lazily) and the host (through a bounded cache)."""

from __future__ import annotations

from gatewayd.proxy.http.exchange import HeaderView


def test_header_view_joins_repeated_fields_and_reads_like_a_dict() -> None:
    view = HeaderView([(b"host", b"a"), (b"x-v", b"1"), (b"accept", b"*/*"), (b"x-v", b"2")])
    assert view.get("x-v") == "1,2"
    assert view["host"] == "a"
    assert view.get("missing") is None
    assert view.get("missing", "d") == "d"
    assert "accept" in view
    assert "Accept" not in view  # names arrive lower-case from the codecs
    assert dict(view) == {"host": "a", "x-v": "1,2", "accept": "*/*"}
    assert len(view) == 3


def test_header_view_builds_nothing_until_read() -> None:
    fields = [(b"x-\xff", b"\xe9")]
    view = HeaderView(fields)
    assert view._map is None
    assert view.get("x-\xff") == "\xe9"  # latin-1, byte for byte
    assert view._map == {"x-\xff": "\xe9"}


def test_host_cache_is_bounded_and_agrees_with_host_only() -> None:
    from gatewayd.proxy.http import exchange

    for i in range(3 * exchange.HOST_CACHE_SIZE):
        value = b"Host-%d.Example:8080" % i
        assert exchange._host_key(value) == exchange._host_only(value) == f"host-{i}.example"
        assert len(exchange._host_cache) <= exchange.HOST_CACHE_SIZE
    long_host = b"a" * (exchange.HOST_CACHE_LEN + 1)
    assert exchange._host_key(long_host) == "a" * (exchange.HOST_CACHE_LEN + 1)
    assert long_host not in exchange._host_cache  # long values are never kept
    assert exchange._host_key(b"[::1]:80") == "[::1]"
