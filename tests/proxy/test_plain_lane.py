"""The request path's lean lane (``Exchange._forward_plain``): which rules take it
(``CompiledRule.plain``) and that a request forwarded through it reaches the backend
exactly as through the general path."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from loop_kit import run
from test_server import (
    Client,
    Req,
    backend,
    hit,
    rule,
    start_backend,
    start_proxy,
)

from gatewayd.proxy.balancer import ROUND_ROBIN, OutlierOptions
from gatewayd.routing.snapshot.rules import (
    Cors,
    HeaderOps,
    Mirror,
    PathModifier,
    Redirect,
    Retry,
    Rewrite,
)

ADD = HeaderOps(add=(("x-bench", "1"),), set=(("x-set", "s"),), remove=("x-drop",))


def test_plain_rules() -> None:
    be = backend("b", 1)
    assert rule(be).plain
    assert rule(be, request_headers=ADD).plain
    # Response-side filters leave the request path as it is.
    assert rule(be, response_headers=ADD).plain


@pytest.mark.parametrize(
    "change",
    [
        {"route_kind": "GRPCRoute"},
        {"cors": Cors(allow_origins=("*",))},
        {"redirect": Redirect(status_code=302)},
        {"direct_status": 500},
        {"rewrite": Rewrite(path=PathModifier(type="ReplaceFullPath", value="/x"))},
        {"mirrors": (Mirror(backend=backend("m", 2)),)},
        {"sticky": True},
        {"retry": Retry(attempts=1)},
        {"request_timeout": 5.0},
        {"request_timeout": 0.0},
        {"backend_request_timeout": 1.0},
        {"total_weight": 0},
    ],
)
def test_rules_that_need_the_general_path(change: dict[str, Any]) -> None:
    assert not dataclasses.replace(rule(backend("b", 1)), **change).plain


@pytest.mark.parametrize(
    "backend_kw",
    [
        {"invalid_status": 500},
        {"http2": True},
        {"request_headers": ADD},
        {"rewrite": Rewrite(hostname="h")},
        {"redirect": Redirect(status_code=302)},
        {"mirrors": (Mirror(backend=backend("m", 2)),)},
    ],
)
def test_backends_that_need_the_general_path(backend_kw: dict[str, Any]) -> None:
    assert not rule(backend("b", 1, **backend_kw)).plain
    # Two backendRefs: a weighted pick.
    assert not rule(backend("a", 1), backend("b", 2)).plain


REQUEST_FIELDS = (
    "x-forwarded-for: 10.0.0.1\r\n"
    "x-forwarded-for: 10.0.0.2\r\n"
    "x-request-id: client-chosen\r\n"
    "x-envoy-retry-on: 5xx\r\n"
    "x-forwarded-proto: https\r\n"
    "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    "tracestate: a=1\r\n"
    "connection: keep-alive, x-hop\r\n"
    "keep-alive: timeout=5\r\n"
    "x-hop: 1\r\n"
    "te: trailers\r\n"
    "x-drop: 1\r\n"
    "x-set: old\r\n"
    "user-agent: t\r\n"
)

_SPAN = re.compile(r"^(00-[0-9a-f]{32}-)[0-9a-f]{16}(-0[01])$")


def _seen(req: Req) -> list[tuple[str, str]]:
    """The request as the backend saw it, its per-request random parts blanked: the
    request id and traceparent's parent id (the trace id and flags are kept)."""
    out = []
    for n, v in req.headers:
        if n == "x-request-id":
            assert re.fullmatch(r"[0-9a-f-]{36}", v)
            v = "<id>"
        elif n == "traceparent":
            m = _SPAN.match(v)
            assert m is not None, v
            v = m.group(1) + "<span>" + m.group(2)
        out.append((n, v))
    return out


def test_plain_and_general_path_forward_the_same_request() -> None:
    async def main() -> None:
        be = await start_backend()
        plain = rule(backend("b", be.port), request_headers=ADD)
        # The same rule with a route timeout of its own: the general path.
        general = dataclasses.replace(plain, request_timeout=30.0)
        assert plain.plain and not general.plain
        proxy, port, _ = await start_proxy({"/plain": hit(plain), "/general": hit(general)})
        c = await Client.open(port)
        for path in ("/plain", "/general"):
            resp = await c.get(path + "/x?q=1", extra=REQUEST_FIELDS)
            assert resp.status == 200
            assert resp.header("x-request-id") == be.requests[-1].header("x-request-id")
            # A body with a Content-Length, and Expect: 100-continue answered here.
            body = b"0123456789"
            await c.send(
                f"POST {path}/y HTTP/1.1\r\nhost: example.com\r\ncontent-length: 10\r\n"
                f"expect: 100-continue\r\n{REQUEST_FIELDS}\r\n".encode()
            )
            assert (await c.reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
            await c.send(body)
            resp = await c.reader.readuntil(b"\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 200 ")
            length = int(re.search(rb"content-length: (\d+)", resp, re.I).group(1))  # type: ignore[union-attr]
            await c.reader.readexactly(length)
            assert be.requests[-1].body == body
        p_get, p_post, g_get, g_post = be.requests
        assert (p_get.target, g_get.target) == ("/plain/x?q=1", "/general/x?q=1")
        assert _seen(p_get) == _seen(g_get)
        assert _seen(p_post) == _seen(g_post)
        fields = dict(_seen(p_get))
        assert fields["x-forwarded-for"] == "10.0.0.1, 10.0.0.2, 127.0.0.1"
        assert fields["x-forwarded-proto"] == "http"
        assert fields["x-bench"] == "1" and fields["x-set"] == "s"
        for gone in ("x-drop", "x-hop", "keep-alive", "te", "connection", "x-envoy-retry-on"):
            assert gone not in fields
        assert "expect" not in dict(_seen(p_post))
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_plain_rule_with_several_endpoints_is_balanced() -> None:
    async def main() -> None:
        one, two = await start_backend(), await start_backend()
        r = rule(backend("b", one.port, two.port))
        assert r.plain
        proxy, port, _ = await start_proxy(
            {"/": hit(r)}, outlier=OutlierOptions(lb_policy=ROUND_ROBIN)
        )
        c = await Client.open(port)
        for i in range(4):
            resp = await c.get(f"/n{i}")
            assert resp.status == 200 and resp.body == f"GET /n{i} 0".encode()
        assert len(one.requests) == len(two.requests) == 2
        c.close()
        await proxy.close()
        await one.stop()
        await two.stop()

    run(main())


def test_a_repeated_target_is_matched_and_forwarded_as_the_first_time() -> None:
    """The second request for a target takes its pieces from the exchange's target
    cache (only targets already normal and without a fragment are kept): the table is
    asked the same, the backend gets the same; a clean request (no field the
    forwarding walk handles) and one with such fields are forwarded alike."""
    from gatewayd.proxy.http import exchange

    async def main() -> None:
        be = await start_backend()
        proxy, port, table = await start_proxy({"/p": hit(rule(backend("b", be.port)))})
        c = await Client.open(port)
        targets = ("/p/x?q=1&r", "/p//a/./b?q", "/p/c#frag", "/p/d?")
        for target in targets:
            for extra in ("", "user-agent: t\r\n", REQUEST_FIELDS):
                assert (await c.get(target, extra=extra)).status == 200
        assert [r.target for r in be.requests] == [
            t for t in ("/p/x?q=1&r", "/p/a/b?q", "/p/c", "/p/d") for _ in range(3)
        ]
        asked = [s[2:4] for s in table.seen]
        assert asked == [
            a
            for a in (("/p/x", "q=1&r"), ("/p/a/b", "q"), ("/p/c", ""), ("/p/d", ""))
            for _ in range(3)
        ]
        assert exchange._target_cache[b"/p/x?q=1&r"] == (b"/p/x", b"q=1&r", "/p/x", "q=1&r")
        assert b"/p//a/./b?q" not in exchange._target_cache  # normalized every time
        assert b"/p/c#frag" not in exchange._target_cache
        # The trace id is new on each request without a traceparent: blanked too.
        seen = [
            [(n, "<trace>" if n == "traceparent" else v) for n, v in _seen(r)] for r in be.requests
        ]
        for i in range(0, len(seen), 3):
            assert seen[i] == [(n, v) for n, v in seen[i + 1] if n != "user-agent"]
            assert ("traceparent", "<trace>") in seen[i]
            # The third request's fields went through the walk.
            assert dict(seen[i + 2])["x-forwarded-for"] == "10.0.0.1, 10.0.0.2, 127.0.0.1"
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


def test_a_clean_request_without_filters_is_forwarded_as_by_the_general_path() -> None:
    """A request with no field the forwarding walk handles, on a plain rule without
    header filters: its fields go to the HTTP/1.1 client as ready-made lines
    (``codec.WireRequestHead``).  The backend gets what the general path sends, with
    and without a body, on one pooled connection."""

    async def main() -> None:
        be = await start_backend()
        plain = rule(backend("b", be.port))
        general = dataclasses.replace(plain, request_timeout=30.0)
        assert plain.plain and not general.plain
        proxy, port, _ = await start_proxy({"/plain": hit(plain), "/general": hit(general)})
        c = await Client.open(port)
        extra = "user-agent: t\r\nx-custom: a, b\r\naccept: */*\r\n"
        for path in ("/plain", "/general"):
            resp = await c.get(path + "/x?q=1", extra=extra)
            assert resp.status == 200
            assert resp.header("x-request-id") == be.requests[-1].header("x-request-id")
            await c.send(
                f"POST {path}/y HTTP/1.1\r\nhost: example.com\r\ncontent-length: 3\r\n"
                f"{extra}\r\nabc".encode()
            )
            resp = await c.reader.readuntil(b"\r\n\r\n")
            assert resp.startswith(b"HTTP/1.1 200 ")
            length = int(re.search(rb"content-length: (\d+)", resp, re.I).group(1))  # type: ignore[union-attr]
            await c.reader.readexactly(length)
            assert be.requests[-1].body == b"abc"
        # The trace id is new on each request without a traceparent: blanked too.
        seen = [
            [(n, "<trace>" if n == "traceparent" else v) for n, v in _seen(r)] for r in be.requests
        ]
        p_get, p_post, g_get, g_post = seen
        assert p_get == g_get
        assert p_post == g_post
        assert ("traceparent", "<trace>") in p_get
        fields = dict(p_get)
        assert fields["x-forwarded-for"] == "127.0.0.1" == fields["x-envoy-external-address"]
        assert fields["x-forwarded-proto"] == "http"
        assert (fields["user-agent"], fields["x-custom"]) == ("t", "a, b")
        assert len({r.conn_id for r in be.requests}) == 1
        c.close()
        await proxy.close()
        await be.stop()

    run(main())


@pytest.mark.parametrize(
    "ops",
    [
        HeaderOps(add=(("x-bench", "1"), ("x-two", "a: b"))),  # lines made once per rule
        HeaderOps(add=(("user-agent", "also"),)),  # a name the client sent
        HeaderOps(set=(("user-agent", "s"),)),  # sets and removes need the field list
        HeaderOps(remove=("x-custom",)),
    ],
)
def test_a_clean_request_with_header_filters_is_forwarded_as_by_the_general_path(
    ops: HeaderOps,
) -> None:
    """A clean request on a plain rule with a RequestHeaderModifier: one that only adds
    fields keeps the ready-made lines (the added fields' lines made once per modifier),
    any other takes the field list; the backend gets what the general path sends."""
    from gatewayd.proxy.http import exchange

    async def main() -> None:
        be = await start_backend()
        plain = rule(backend("b", be.port), request_headers=ops)
        general = dataclasses.replace(plain, request_timeout=30.0)
        assert plain.plain and not general.plain
        proxy, port, _ = await start_proxy({"/plain": hit(plain), "/general": hit(general)})
        c = await Client.open(port)
        extra = "user-agent: t\r\nx-custom: a, b\r\n"
        for path in ("/plain", "/general", "/plain"):
            assert (await c.get(path + "/x", extra=extra)).status == 200
        known = exchange._added_lines[id(ops)]
        assert known[0] is ops
        assert (known[1] is not None) == (not ops.set and not ops.remove)
        seen = [
            [(n, "<trace>" if n == "traceparent" else v) for n, v in _seen(r)] for r in be.requests
        ]
        assert seen[0] == seen[1] == seen[2]
        names = [n for n, _ in seen[0]]
        for name, value in ops.add:
            assert (name, value) in seen[0]
            assert names.index(name, names.index("traceparent")) > names.index("traceparent")
        for name, value in ops.set:
            assert (name, value) in seen[0] and names.count(name) == 1
        for name in ops.remove:
            assert name not in names
        c.close()
        await proxy.close()
        await be.stop()

    run(main())
