"""The HTTP/1.1 response pass-through lane (``h1_client.UpstreamConnection._raw_take``):
a backend's field lines written to an HTTP/1.1 client as they arrived, minus the
hop-by-hop lines, plus the request id and the framing the server codec adds.

Each test runs the client codec, the exchange and the upstream codec in one process
over transport doubles (as ``loadtest/bench_h1_inproc.py`` does), and most compare
what the client receives with the lane on and off (``RAW_HEAD_MIN`` out of reach):
the same status, fields (names compared case-insensitively: the lane keeps the
backend's case), body and connection fate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transport_double import TransportDouble, one_rule_snapshot, run_in_loop

import gatewayd.proxy.http.h1_client as h1_client
from gatewayd.proxy.http.codec import ClientCallbacks
from gatewayd.proxy.http.h1_client import RAW_HEAD_MIN, UpstreamConnection, endpoint_key
from gatewayd.proxy.http.pool import UpstreamPool
from gatewayd.proxy.server import HttpConnection, Proxy, ProxyOptions
from gatewayd.routing.snapshot.rules import HeaderOps

LOCAL = "127.0.0.1"
GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"

# nginx's answer to /small in make bench (Content-Length first, as the bench sends it).
NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 20:39:13 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n"
    b"X-Seen-Bench: 1\r\n\r\nhello, world\n"
)


@dataclass
class Run:
    """What one scripted conversation produced."""

    client: bytes = b""  # every byte the client received
    client_closed: bool = False
    upstream_requests: bytes = b""
    upstream_reused: list[bool] = field(default_factory=list)  # pooled after each reply
    lanes: list[bool] = field(default_factory=list)  # _raw_take's answers
    remembered: list[bool] = field(default_factory=list)  # taken as the head before


def converse(
    exchanges: Sequence[tuple[bytes, Sequence[bytes]]],
    *,
    raw: bool = True,
    rule_filters: HeaderOps | None = None,
    monkeypatch: pytest.MonkeyPatch,
    **options: int,
) -> Run:
    """Each (request, response reads): the request from the client, then the backend's
    answer in those reads, on one client connection and one pooled backend connection
    (a new one when the last was not given back to the pool)."""
    run = Run()
    with monkeypatch.context() as mp:
        if not raw:
            mp.setattr(h1_client, "RAW_HEAD_MIN", 1 << 30)
        take = UpstreamConnection._raw_take

        def spy(self: UpstreamConnection, h: ClientCallbacks, data: bytes) -> bool:
            got = take(self, h, data)
            run.lanes.append(got)
            run.remembered.append(got and not self.raw_low)
            return got

        mp.setattr(UpstreamConnection, "_raw_take", spy)

        async def main() -> None:
            holder, _ = one_rule_snapshot(LOCAL, response_headers=rule_filters)
            proxy = Proxy(holder, ProxyOptions(access_log=None, **options))  # type: ignore[arg-type]
            down = TransportDouble()
            conn = HttpConnection(proxy, (LOCAL, 1), "test")
            conn.connection_made(down)  # type: ignore[arg-type]
            up: UpstreamConnection | None = None
            up_t = TransportDouble()
            for request, reads in exchanges:
                if up is None or up.closed:
                    up = UpstreamConnection(proxy.pool, endpoint_key(LOCAL, 9, None), "be")
                    up_t = TransportDouble()
                    up.connection_made(up_t)  # type: ignore[arg-type]
                    proxy.pool.release(up, 0.0)
                conn.data_received(request)
                await asyncio.sleep(0)
                run.upstream_requests += up_t.take()
                for data in reads:
                    if up.closed:
                        break
                    up.data_received(data)
                    await asyncio.sleep(0)
                run.upstream_reused.append(not up.closed and up.handler is None)
                if down.closed:
                    break
            run.client = down.take()
            run.client_closed = down.closed
            proxy.pool.close()

        run_in_loop(main)
    return run


def compare(
    exchanges: Sequence[tuple[bytes, Sequence[bytes]]],
    monkeypatch: pytest.MonkeyPatch,
    **options: int,
) -> tuple[Run, Run]:
    """Both lanes over the same conversation: what the client gets is the same but for
    the case of field names, and the connections end the same way."""
    on = converse(exchanges, raw=True, monkeypatch=monkeypatch, **options)
    off = converse(exchanges, raw=False, monkeypatch=monkeypatch, **options)
    assert not any(off.lanes)
    assert statuses(on.client) == statuses(off.client)
    assert fields_of(on.client) == fields_of(off.client)
    assert on.client_closed == off.client_closed
    assert on.upstream_reused == off.upstream_reused
    assert on.upstream_requests.count(b"\r\n\r\n") == off.upstream_requests.count(b"\r\n\r\n")
    return on, off


def split_responses(wire: bytes) -> Iterator[bytes]:
    """Each response head of ``wire`` (status line and field lines)."""
    for part in wire.split(b"HTTP/1.1 ")[1:]:
        yield b"HTTP/1.1 " + part.split(b"\r\n\r\n", 1)[0]


def statuses(wire: bytes) -> list[int]:
    return [int(h[9:12]) for h in split_responses(wire)]


def fields_of(wire: bytes) -> list[list[tuple[bytes, bytes]]]:
    """Field names lower-cased, values without leading whitespace, request ids
    replaced, and the Date of gatewayd's own replies (a 502) replaced: the two lanes'
    runs of a conversation may fall in different seconds.  What a client can tell of
    the heads in ``wire``."""
    out = []
    for h in split_responses(wire):
        fields = []
        for line in h.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.lower()
            fields.append((name, b"<id>" if name == b"x-request-id" else value.lstrip(b" \t")))
        if (b"server", b"gatewayd") in fields:
            fields = [(n, b"<date>" if n == b"date" else v) for n, v in fields]
        out.append(fields)
    return out


def body_of(wire: bytes) -> bytes:
    return wire.split(b"\r\n\r\n", 1)[1]


# --------------------------------------------------------------------------- the lane


def test_nginx_answer_passes_through_as_its_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    run = converse([(GET, [NGINX])], monkeypatch=monkeypatch)
    assert run.lanes == [True]
    head, body = run.client.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    # The backend's lines in its own case and order, its Connection line cut out,
    # then the request id; nothing else.
    assert lines[:6] == [
        b"HTTP/1.1 200 OK",
        b"Server: nginx/1.22.1",
        b"Date: Wed, 02 Dec 2026 20:39:13 GMT",
        b"Content-Type: text/plain",
        b"Content-Length: 13",
        b"X-Seen-Bench: 1",
    ]
    assert len(lines) == 7 and lines[6].startswith(b"x-request-id: ")
    assert body == b"hello, world\n"
    assert run.upstream_reused == [True]
    assert not run.client_closed


def test_short_heads_take_the_field_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert short.find(b"\r\n\r\n") < RAW_HEAD_MIN
    run = converse([(GET, [short])], monkeypatch=monkeypatch)
    assert run.lanes == []  # not even looked at: shorter than RAW_HEAD_MIN in all
    assert b"\r\ncontent-length: 2\r\n" in run.client


def test_same_answer_in_both_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    on, off = compare([(GET, [NGINX])], monkeypatch)
    assert on.lanes == [True]
    assert body_of(on.client) == body_of(off.client) == b"hello, world\n"


def test_connection_close_from_backend_is_cut_and_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answer = NGINX.replace(b"Connection: keep-alive", b"CONNECTION:  Close ")
    on, _ = compare([(GET, [answer]), (GET, [NGINX])], monkeypatch)
    assert on.lanes == [True, True]
    assert on.upstream_reused == [False, True]
    assert b"close" not in on.client.lower()  # the client's connection stays open
    assert not on.client_closed


@pytest.mark.parametrize(
    "line",
    [
        b"Connection: keep-alive, X-Drop",
        b"Connection: X-Drop",
        b"Keep-Alive: timeout=5",
        b"Proxy-Connection: keep-alive",
        b"TE: trailers",
        b"Upgrade: h2c",
        b"Trailer: X-Checksum",
        b"X-Request-Id: from-the-backend",
    ],
)
def test_fields_to_remove_or_replace_take_the_field_lane(
    line: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = NGINX.replace(b"X-Seen-Bench: 1\r\n", b"X-Drop: 1\r\n" + line + b"\r\n")
    on, _ = compare([(GET, [answer])], monkeypatch)
    assert on.lanes == [False]
    names = [n for n, _ in fields_of(on.client)[0]]
    assert line.split(b":")[0].lower() not in names or names.count(b"x-request-id") == 1
    for hop in (b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"trailer"):
        assert hop not in names
    if b"X-Drop" in line:
        assert b"x-drop" not in names  # nominated by Connection
    assert dict(fields_of(on.client)[0])[b"x-request-id"] == b"<id>"
    assert b"from-the-backend" not in on.client


def test_two_connection_lines_take_the_field_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = NGINX.replace(b"X-Seen-Bench: 1\r\n", b"Connection: close\r\n")
    on, _ = compare([(GET, [answer])], monkeypatch)
    assert on.lanes == [False]
    assert on.upstream_reused == [False]


def test_chunked_and_trailers_take_the_field_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    answer = (
        NGINX.split(b"Content-Length")[0] + b"Transfer-Encoding: chunked\r\n"
        b"X-Seen-Bench: 1\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 9\r\n\r\n"
    )
    on, _ = compare([(GET, [answer]), (GET, [NGINX])], monkeypatch)
    assert on.lanes == [False, True]
    assert b"\r\n5\r\nhello\r\n0\r\nx-sum: 9\r\n\r\n" in on.client


def test_interim_response_takes_the_field_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    on, _ = compare(
        [(GET, [b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + NGINX])], monkeypatch
    )
    assert on.lanes == [False]
    assert statuses(on.client) == [200]


def test_head_request_never_takes_the_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    head = GET.replace(b"GET", b"HEAD")
    on, _ = compare(
        [(head, [NGINX.split(b"\r\n\r\n")[0] + b"\r\n\r\n"]), (GET, [NGINX])], monkeypatch
    )
    assert on.lanes == [False, True]
    assert on.upstream_reused == [True, True]


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_no_content_statuses(status: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    answer = (
        b"HTTP/1.1 " + status + b"\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 "
        b'20:39:13 GMT\r\nETag: "6b10815b-10000"\r\nConnection: keep-alive\r\n\r\n'
    )
    on, _ = compare([(GET, [answer]), (GET, [NGINX])], monkeypatch)
    assert on.lanes == [True, True]
    assert body_of(on.client).startswith(b"HTTP/1.1 200")  # nothing after the 204/304 head


def test_head_split_over_two_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    cut = RAW_HEAD_MIN + 20  # offered, but the empty line is in the next read
    on, _ = compare([(GET, [NGINX[:cut], NGINX[cut:]]), (GET, [NGINX])], monkeypatch)
    assert on.lanes == [False, True]
    assert on.upstream_reused == [True, True]


def test_body_after_the_head_in_later_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    big = b"x" * (h1_client.BODY_READ_MIN * 2)
    answer = NGINX.replace(b"Content-Length: 13", b"Content-Length: %d" % len(big))
    head, _ = answer.split(b"\r\n\r\n", 1)
    reads = [head + b"\r\n\r\n" + big[:100], big[100:]]
    # The second read skips the parser (_body_read): the pass-through parser is
    # replaced, and the next answer takes the lane again on a clean one.
    on, _ = compare([(GET, reads), (GET, [NGINX]), (GET, [NGINX])], monkeypatch)
    assert on.lanes == [True, True, True]
    assert on.upstream_reused == [True, True, True]
    assert on.client.count(big) == 1


def test_lanes_alternate_on_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    chunked = NGINX.replace(b"Content-Length: 13", b"Transfer-Encoding: chunked").replace(
        b"hello, world\n", b"2\r\nok\r\n0\r\n\r\n"
    )
    script = [(GET, [NGINX]), (GET, [short]), (GET, [NGINX]), (GET, [chunked]), (GET, [NGINX])]
    on, _ = compare(script, monkeypatch)
    assert on.lanes == [True, True, False, True]  # the short one is not offered
    assert on.upstream_reused == [True] * 5


def test_bytes_after_the_response_make_the_connection_unusable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on, _ = compare([(GET, [NGINX + b"HTTP/1.1 200 OK\r\n"]), (GET, [NGINX])], monkeypatch)
    assert on.lanes == [True, True]
    assert on.upstream_reused == [False, True]
    assert statuses(on.client) == [200, 200]


def test_the_same_head_again_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    later = NGINX.replace(b"20:39:13", b"20:39:14")
    other_body = NGINX.replace(b"hello, world\n", b"HELLO, WORLD\n")
    script = [(GET, [NGINX]), (GET, [other_body]), (GET, [later]), (GET, [later])]
    on, _ = compare(script, monkeypatch)
    assert on.lanes == [True] * 4
    assert on.remembered == [False, True, False, True]
    assert [body_of(h) for h in on.client.split(b"HTTP/1.1 ")[1:]] == [
        b"hello, world\n",
        b"HELLO, WORLD\n",
        b"hello, world\n",
        b"hello, world\n",
    ]
    assert on.client.count(b"20:39:14") == 2


def test_a_refused_head_is_not_remembered() -> None:
    # _raw_take looks at the head before llhttp reads it: a head it would take but
    # llhttp refuses (a second Content-Length) is never remembered.
    twice = NGINX.replace(b"X-Seen-Bench: 1", b"Content-Length: 13")

    class Handler:
        raw_response = True
        lost: list[object] = []

        def on_response_head(self, stream: object, head: object) -> None:
            raise AssertionError("no head")

        def on_stream_lost(self, stream: object, exc: object, got: bool) -> None:
            self.lost.append(exc)

        def on_flush(self) -> None:
            pass

    async def main() -> None:
        pool = UpstreamPool()
        conn = UpstreamConnection(pool, ("127.0.0.1", 80, ""), "be")
        conn.connection_made(TransportDouble())  # type: ignore[arg-type]
        conn.bind(Handler(), False)  # type: ignore[arg-type]
        conn.data_received(twice)
        assert conn.parser is conn.rparser  # the lane's parser read it
        assert conn.raw_seen == b"" and conn.closed
        assert len(Handler.lost) == 1
        pool.close()

    run_in_loop(main)


def test_too_many_fields_is_the_same_502(monkeypatch: pytest.MonkeyPatch) -> None:
    on, _ = compare([(GET, [NGINX])], monkeypatch, max_headers=5)
    assert on.lanes == [False]
    assert statuses(on.client) == [502]


def test_too_many_bytes_is_the_same_502(monkeypatch: pytest.MonkeyPatch) -> None:
    on, _ = compare([(GET, [NGINX])], monkeypatch, max_header_bytes=120)
    assert on.lanes == [False]
    assert statuses(on.client) == [502]


def test_a_head_just_within_the_limits_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    end = NGINX.find(b"\r\n\r\n")
    on, _ = compare([(GET, [NGINX])], monkeypatch, max_header_bytes=end + 4, max_headers=6)
    assert on.lanes == [True]
    assert statuses(on.client) == [200]


def test_a_broken_head_is_the_same_502(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = NGINX.replace(b"X-Seen-Bench: 1", b"X-Seen-Bench : 1")
    on, _ = compare([(GET, [broken])], monkeypatch)
    assert on.lanes == [True]  # llhttp, reading it, refuses it: the same as without
    assert on.upstream_reused == [False]


def test_http10_client_gets_keep_alive_framing(monkeypatch: pytest.MonkeyPatch) -> None:
    req = b"GET /x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    on, _ = compare([(req, [NGINX]), (req, [NGINX])], monkeypatch)
    assert on.lanes == [True, True]
    assert on.client.count(b"connection: keep-alive") == 2


def test_response_filters_keep_the_field_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = HeaderOps(set=(("x-seen-bench", "2"),))
    run = converse([(GET, [NGINX])], rule_filters=ops, monkeypatch=monkeypatch)
    assert run.lanes == [False]  # the exchange does not take raw heads
    assert b"\r\nx-seen-bench: 2\r\n" in run.client
    assert b"\r\nserver: nginx/1.22.1\r\n" in run.client  # names lower-cased there


# --------------------------------------------------------------------------- random heads

_NAMES = [
    b"Server",
    b"date",
    b"Content-Type",
    b"ETAG",
    b"X-Custom",
    b"Set-Cookie",
    b"Vary",
    b"Cache-Control",
    b"Connection",
    b"Keep-Alive",
    b"Transfer-Encoding",
    b"Upgrade",
    b"Trailer",
    b"TE",
    b"Proxy-Connection",
    b"X-Request-Id",
    b"Content-Length",
    b"Connection-Extra",
    b"X-Te",
]
_VALUES = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if 0x21 <= c <= 0x7E or c == 0x20).strip()
)
_CONNECTION = st.sampled_from(
    [b"keep-alive", b"close", b"Keep-Alive", b" close ", b"x-custom", b"vary, keep-alive", b""]
)


@st.composite
def backend_answers(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from([200, 201, 204, 301, 304, 404, 500, 503]))
    lines = []
    has_length = False
    for name in draw(st.lists(st.sampled_from(_NAMES), max_size=12)):
        if name == b"Content-Length" or name == b"Transfer-Encoding":
            if has_length:
                continue
            has_length = True
            if name == b"Transfer-Encoding":
                lines.append(b"Transfer-Encoding: chunked")
                continue
            lines.append(b"Content-Length: 5")
            continue
        value = draw(_CONNECTION) if name == b"Connection" else draw(_VALUES)
        ows = draw(st.sampled_from([b" ", b"", b"  ", b"\t"]))
        lines.append(name + b":" + ows + value)
    lines += [b"X-Filler: " + b"f" * draw(st.integers(0, 80))]
    body = b""
    if status not in (204, 304):
        if b"Transfer-Encoding: chunked" in lines:
            body = b"5\r\nhello\r\n0\r\n\r\n"
        elif has_length:
            body = b"hello"
    reason = {200: b"OK", 304: b"Not Modified"}.get(status, b"X")
    return (
        b"HTTP/1.1 %d %s\r\n" % (status, reason)
        + b"".join(line + b"\r\n" for line in lines)
        + b"\r\n"
        + body
    )


@settings(max_examples=150, deadline=None)
@given(first=backend_answers(), second=backend_answers())
def test_random_heads_same_in_both_lanes(first: bytes, second: bytes) -> None:
    with pytest.MonkeyPatch.context() as mp:
        compare([(GET, [first]), (GET, [second]), (GET, [NGINX])], mp)


def test_a_long_head_is_taken_but_not_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A head over RAW_REMEMBER_MAX goes through the lane each time, looked at each time:
    # no pooled connection keeps more than RAW_REMEMBER_MAX bytes of a backend's head.
    long_head = NGINX.replace(
        b"X-Seen-Bench: 1", b"X-Seen-Bench: " + b"v" * h1_client.RAW_REMEMBER_MAX
    )
    on, _ = compare([(GET, [long_head]), (GET, [long_head])], monkeypatch)
    assert on.lanes == [True, True]
    assert on.remembered == [False, False]
    assert statuses(on.client) == [200, 200]
