"""The route table's view of the request fields (exchange.HeaderView), built lazily."""

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
