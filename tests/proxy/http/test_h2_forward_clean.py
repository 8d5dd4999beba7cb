"""HTTP/2 request heads and ``RequestHead.forward_clean`` (issue 12).

The server codec marks a request head ``forward_clean`` when none of its fields is one
the forwarding walk drops, keeps a copy of or replaces (``forwarded.FORWARD_WALKED``,
``x-envoy-*``), on a header block read for the first time and on one read again
(``KnownRequest``); the exchange then forwards without that walk.  Checked here: the
flag on both paths, the two paths giving the same head, and the bytes a backend gets
being the same whether the flag is set or not.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2_kit import ServerRig
from prometheus_client import CollectorRegistry
from transport_double import TransportDouble, one_rule_snapshot

from gatewayd.proxy.http.codec import HTTP_2, RequestHead, ServerStream
from gatewayd.proxy.http.h1_client import UpstreamConnection, endpoint_key
from gatewayd.proxy.metrics import ProxyMetrics
from gatewayd.proxy.server import HttpConnection, Proxy, ProxyOptions

CASES: list[tuple[list[tuple[bytes, bytes]], bool]] = [
    ([(b"user-agent", b"u"), (b"accept", b"*/*"), (b"x-custom", b"1")], True),
    ([], True),
    ([(b"host", b"example.com")], True),
    ([(b"cookie", b"a=1"), (b"cookie", b"b=2")], True),
    ([(b"x-forwarded-for", b"192.0.2.1")], False),
    ([(b"x-forwarded-proto", b"https")], False),
    ([(b"x-request-id", b"r")], False),
    ([(b"traceparent", b"t")], False),
    ([(b"tracestate", b"t")], False),
    ([(b"x-envoy-retry-on", b"5xx")], False),
    ([(b"x-envoy", b"1")], True),  # not the x-envoy- prefix
    ([(b"te", b"trailers")], False),
    ([(b"expect", b"100-continue")], False),
]


def _attrs(head: RequestHead) -> dict[str, Any]:
    return {name: getattr(head, name) for name in RequestHead.__slots__}


@pytest.mark.parametrize(("extra", "clean"), CASES)
def test_forward_clean_on_first_and_repeated_header_blocks(
    extra: list[tuple[bytes, bytes]], clean: bool
) -> None:
    rig = ServerRig()
    # The first block fills the client's HPACK table, the second is decoded and
    # remembered, the next ones are read again (``KnownRequest``).
    for _ in range(4):
        rig.request(b"/p?q=1", extra=extra)
        rig.pump()
    heads = [rec.head for rec in rig.exchanges]
    assert rig.server.h2.known_hits == 2
    first = _attrs(heads[0])
    assert first["forward_clean"] is clean, extra
    for head in heads[1:]:
        assert _attrs(head) == first
        assert head.headers is not heads[0].headers  # each exchange edits its own
    # The keyword constructor's attributes, but for the flag the codec found.
    built = RequestHead(
        b"GET",
        b"/p?q=1",
        list(heads[0].headers),
        authority=b"example.com",
        scheme=b"https",
        version=HTTP_2,
        body_length=0,
        end_stream=True,
    )
    built.forward_clean = clean
    assert first == _attrs(built)


def test_a_request_with_a_body_keeps_its_length_on_both_paths() -> None:
    rig = ServerRig()
    extra = [(b"content-length", b"2")]
    for _ in range(3):
        sid = rig.request(b"/b", method=b"POST", extra=extra, end=False)
        rig.send_body(sid, b"ok", end=True)
        rig.pump()
    a, b, c = (rec.head for rec in rig.exchanges)
    assert rig.server.h2.known_hits == 1
    assert _attrs(a) == _attrs(b) == _attrs(c)
    assert a.forward_clean and a.body_length == 2 and not a.end_stream


# --------------------------------------------------------------- through the proxy
LOCAL = "127.0.0.1"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _upstream_requests(fields: list[tuple[bytes, bytes]], force_walk: bool) -> list[bytes]:
    """What the backend reads for the same request sent three times on one h2c
    connection (decoded twice, then remembered), with the codec's ``forward_clean``
    or with it forced False."""
    holder, _ = one_rule_snapshot(LOCAL)
    proxy = Proxy(
        holder,
        ProxyOptions(access_log=None, h2c=True),
        ProxyMetrics(registry=CollectorRegistry()),
    )
    conn = HttpConnection(proxy, (LOCAL, 1), "test")
    down = TransportDouble(("192.0.2.7", 40000))
    conn.connection_made(down)  # type: ignore[arg-type]
    up = UpstreamConnection(proxy.pool, endpoint_key(LOCAL, 9, None), "be")
    up_t = TransportDouble(("192.0.2.7", 40000))
    up.connection_made(up_t)  # type: ignore[arg-type]
    proxy.pool.release(up, 0.0)
    client = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    client.initiate_connection()
    conn.data_received(client.data_to_send())
    h2s = conn.h2
    assert h2s is not None
    if force_walk:
        factory = h2s.factory

        def walked(stream: ServerStream, head: RequestHead) -> Any:
            head.forward_clean = False
            return factory(stream, head)

        h2s.factory = walked
    client.receive_data(down.take())
    h2s.data_received(client.data_to_send())
    sent: list[bytes] = []
    for _ in range(3):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, fields, end_stream=True)
        h2s.data_received(client.data_to_send())
        sent.append(up_t.take())
        up.data_received(ANSWER)
        await asyncio.sleep(0)  # the flush deferred to the end of the loop's turn
        events = client.receive_data(down.take())
        assert any(isinstance(e, h2.events.StreamEnded) for e in events), events
    assert h2s.h2.known_hits == 1
    # The request id and the trace are new on every request.
    return [
        re.sub(
            rb"(?im)^(traceparent: 00-)[0-9a-f]{32}-[0-9a-f]{16}-",
            rb"\1T-S-",
            re.sub(rb"(?im)^(x-request-id: )[^\r]*", rb"\1ID", s),
        )
        for s in sent
    ]


@pytest.mark.parametrize(("extra", "clean"), CASES)
def test_the_backend_reads_the_same_request_with_or_without_the_walk(
    extra: list[tuple[bytes, bytes]], clean: bool
) -> None:
    fields = [
        (b":method", b"GET"),
        (b":path", b"/small"),
        (b":scheme", b"http"),
        (b":authority", b"example.com"),
        *extra,
    ]
    fast = asyncio.run(_upstream_requests(fields, force_walk=False))
    walked = asyncio.run(_upstream_requests(fields, force_walk=True))
    assert fast == walked
    assert fast[0] == fast[1] == fast[2]
    assert b"\r\nx-envoy-external-address: 192.0.2.7\r\n" in fast[0]
