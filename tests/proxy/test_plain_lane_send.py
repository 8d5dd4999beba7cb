"""The plain lane's request without a body on a pooled connection
(``UpstreamConnection.send_request``: bind and the head's write in one call) and the
rule flag that lets the response head pass through (``CompiledRule.raw``, read into
``Exchange.raw_response`` at routing)."""

from __future__ import annotations

import asyncio
import dataclasses

from loop_kit import run
from test_server import (
    Client,
    Req,
    backend,
    hit,
    read_response,
    response,
    rule,
    start_backend,
    start_proxy,
)

from gatewayd.proxy.http.exchange import Exchange
from gatewayd.routing.snapshot.rules import HeaderOps

ADD = HeaderOps(add=(("x-added", "1"),))


def test_raw_rules() -> None:
    be = backend("b", 1)
    assert rule(be).raw
    assert rule(be, request_headers=ADD).raw  # the request side's filter only
    # Anything that reads or changes the response's fields: the field-by-field head.
    assert not rule(be, response_headers=ADD).raw
    assert not rule(backend("b", 1, response_headers=ADD)).raw
    # Not plain: the general path, never the pass-through lane.
    assert not dataclasses.replace(rule(be), request_timeout=5.0).raw
    assert not rule(backend("a", 1), backend("b", 2)).raw


def test_raw_response_is_decided_at_routing() -> None:
    """False until routed, then the rule's ``raw`` for an HTTP/1.x request that asks
    for no upgrade."""
    seen: list[tuple[bytes, bool, bool]] = []
    original = Exchange._forward_plain

    def spy(self: Exchange, *args: object) -> None:
        seen.append((self.head.target, self.raw_response, self.upgrade))
        original(self, *args)  # type: ignore[arg-type]

    async def main() -> None:
        be = await start_backend()
        proxy, port, _ = await start_proxy(
            {
                "/raw": hit(rule(backend("b", be.port))),
                "/fields": hit(rule(backend("b", be.port), response_headers=ADD)),
            }
        )
        c = await Client.open(port)
        assert (await c.get("/raw/x")).status == 200
        resp = await c.get("/fields/x")
        assert resp.status == 200 and resp.header("x-added") == "1"
        c.close()
        await proxy.close()
        await be.stop()

    Exchange._forward_plain = spy  # type: ignore[method-assign]
    try:
        run(main())
    finally:
        Exchange._forward_plain = original  # type: ignore[method-assign]
    assert seen == [(b"/raw/x", True, False), (b"/fields/x", False, False)]


def test_requests_without_a_body_share_one_pooled_connection() -> None:
    """GET, HEAD, GET and a POST with a body on one client connection: one backend
    connection carries them all (a HEAD response leaves the parser to be replaced
    before the next response), each answered as the backend answered it."""

    async def handler(req: Req, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        body = f"{req.method} {req.target} {req.body.decode()}".encode()
        if req.method == "HEAD":
            # The head a GET would get (content-length: 7), without its body.
            w.write(response(200, b"GET /h ")[: -len(b"GET /h ")])
            return
        w.write(response(200, body))

    async def main() -> None:
        be = await start_backend(handler)
        proxy, port, _ = await start_proxy({"/": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        assert (await c.get("/a")).body == b"GET /a "
        await c.send(b"HEAD /h HTTP/1.1\r\nhost: example.com\r\n\r\n")
        head = await read_response(c.reader, head_request=True)
        assert head.status == 200 and head.body == b""
        assert (await c.get("/b")).body == b"GET /b "
        await c.send(b"POST /p HTTP/1.1\r\nhost: example.com\r\ncontent-length: 3\r\n\r\nabc")
        assert (await read_response(c.reader)).body == b"POST /p abc"
        assert (await c.get("/c")).body == b"GET /c "
        assert [r.method for r in be.requests] == ["GET", "HEAD", "GET", "POST", "GET"]
        assert be.connections == 1
        c.close()
        await proxy.close()
        await be.stop()

    run(main())
