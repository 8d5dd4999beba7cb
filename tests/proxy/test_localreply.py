from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

import httptools
import pytest

from gatewayd.proxy import localreply
from gatewayd.proxy.localreply import (
    NO_HEALTHY_UPSTREAM,
    NO_ROUTE,
    REPLY_KINDS,
    STATUS_LINES,
    local_reply,
    reply_for,
    status_line,
)


class Parsed:
    """Collects what httptools' response parser reports for one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.status = b""

    def on_status(self, status: bytes) -> None:
        self.status += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True

    def header(self, name: bytes) -> bytes | None:
        found = [v for n, v in self.headers if n == name]
        assert len(found) <= 1
        return found[0] if found else None


def parse(data: bytes, *, head: bool = False) -> tuple[Parsed, int]:
    parsed = Parsed()
    parser = httptools.HttpResponseParser(parsed)
    if head:
        # A response to HEAD has no body whatever Content-Length says; llhttp needs to be
        # told, like any client that remembers its request method.
        head_end = data.index(b"\r\n\r\n") + 4
        parser.feed_data(data[:head_end])
        assert data[head_end:] == b""
        return parsed, parser.get_status_code()
    parser.feed_data(data)
    return parsed, parser.get_status_code()


def test_status_lines_cover_100_to_599() -> None:
    assert set(STATUS_LINES) == set(range(100, 600))
    assert status_line(200) == b"HTTP/1.1 200 OK\r\n"
    assert status_line(404) == b"HTTP/1.1 404 Not Found\r\n"
    assert status_line(503) == b"HTTP/1.1 503 Service Unavailable\r\n"
    assert status_line(599) == b"HTTP/1.1 599 Unknown\r\n"
    for line in STATUS_LINES.values():
        assert re.fullmatch(rb"HTTP/1\.1 [1-5]\d\d [ -~]+\r\n", line)


@pytest.mark.parametrize("bad", [0, 99, 600, -1])
def test_status_line_out_of_range(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        status_line(bad)


def test_local_reply_parses_and_keeps_alive() -> None:
    data = local_reply(503, b"no healthy upstream", keep_alive=True, request_id=b"rid-1")
    parsed, code = parse(data)
    assert code == 503
    assert parsed.status == b"Service Unavailable"
    assert parsed.complete
    assert parsed.body == b"no healthy upstream"
    assert parsed.header(b"content-length") == b"19"
    assert parsed.header(b"content-type") == b"text/plain"
    assert parsed.header(b"x-request-id") == b"rid-1"
    assert parsed.header(b"server") == b"gatewayd"
    assert parsed.header(b"connection") is None
    date = parsed.header(b"date")
    assert date is not None and parsedate_to_datetime(date.decode()).tzinfo is not None


def test_local_reply_close_and_extra_headers() -> None:
    data = local_reply(
        302,
        b"",
        keep_alive=False,
        extra_headers=[(b"location", b"https://example.org/x"), (b"x-a", b"1")],
    )
    parsed, code = parse(data)
    assert code == 302
    assert parsed.header(b"connection") == b"close"
    assert parsed.header(b"location") == b"https://example.org/x"
    assert parsed.header(b"x-a") == b"1"
    assert parsed.header(b"content-length") == b"0"
    assert parsed.header(b"content-type") is None  # no body, no type
    assert parsed.header(b"x-request-id") is None
    assert parsed.body == b""
    assert data.endswith(b"\r\n\r\n")


def test_local_reply_head_has_length_but_no_body() -> None:
    get = local_reply(404, b"not here", keep_alive=True)
    head = local_reply(404, b"not here", keep_alive=True, head=True)
    assert get.endswith(b"\r\n\r\nnot here")
    assert head.endswith(b"\r\n\r\n")
    parsed, code = parse(head, head=True)
    assert code == 404
    assert parsed.header(b"content-length") == b"8"


@pytest.mark.parametrize("status", [100, 204, 304])
def test_local_reply_bodyless_statuses(status: int) -> None:
    data = local_reply(status, b"ignored", keep_alive=True)
    assert b"content-length" not in data
    assert b"ignored" not in data
    assert data.endswith(b"\r\n\r\n")


def test_preflight_style_204_reply_parses() -> None:
    data = local_reply(
        204,
        b"",
        keep_alive=True,
        extra_headers=[(b"access-control-allow-origin", b"https://www.foo.com")],
    )
    parsed, code = parse(data)
    assert code == 204 and parsed.complete
    assert parsed.header(b"access-control-allow-origin") == b"https://www.foo.com"


def test_two_pipelined_replies_parse_back_to_back() -> None:
    # Keep-alive replies must be exactly delimited: the second one parses after the first.
    first = local_reply(404, b"a", keep_alive=True)
    second = local_reply(503, b"bc", keep_alive=True)
    results: list[tuple[int, bytes]] = []

    class Collect(Parsed):
        def on_message_complete(self) -> None:
            results.append((parser.get_status_code(), self.body))
            self.body = b""

    parser = httptools.HttpResponseParser(Collect())
    parser.feed_data(first + second)
    assert results == [(404, b"a"), (503, b"bc")]


def test_reply_kinds() -> None:
    flags = [k.flag for k in REPLY_KINDS]
    reasons = [k.reason for k in REPLY_KINDS]
    assert len(set(flags)) == len(flags) and len(set(reasons)) == len(reasons)
    assert NO_ROUTE.status == 404 and NO_ROUTE.flag == "NR"
    data = reply_for(NO_HEALTHY_UPSTREAM, keep_alive=True)
    parsed, code = parse(data)
    assert code == 503 and parsed.body == b"no healthy upstream"


def test_date_header_is_cached_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.1]
    monkeypatch.setattr(localreply, "_wall_clock", lambda: now[0])
    first = localreply.date_header()
    assert first == b"date: Tue, 14 Nov 2023 22:13:20 GMT\r\n"
    now[0] = 1_700_000_000.9
    assert localreply.date_header() is first
    now[0] = 1_700_000_001.0
    assert localreply.date_header() == b"date: Tue, 14 Nov 2023 22:13:21 GMT\r\n"
