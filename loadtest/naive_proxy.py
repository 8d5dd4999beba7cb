"""The naive baseline: what a reverse proxy looks like when written in ten minutes.

A plain ``aiohttp.web`` server plus one shared ``aiohttp.ClientSession``: every request
is read whole, forwarded (method, path and query, headers, body) to one upstream with
one request header added, and the upstream's response is read whole and returned.
No streaming, no route table, no uvloop unless ``--uvloop`` is given.  ``make bench``
uses it as the "naive aiohttp proxy" row the issue's ">= 3x naive" target refers to.

    python loadtest/naive_proxy.py --listen 127.0.0.1:8000 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable

import aiohttp
from aiohttp import web

# RFC 9110 7.6.1: hop-by-hop fields are meant for one connection only and are not
# forwarded; Content-Length / Transfer-Encoding are recomputed by aiohttp on each side.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)


def _filter(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in items if k.lower() not in HOP_BY_HOP]


def make_app(upstream: str, added: tuple[str, str]) -> web.Application:
    upstream = upstream.rstrip("/")
    app = web.Application(client_max_size=64 * 1024 * 1024)
    state: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(_app: web.Application) -> None:
        # limit=0: no cap on pooled upstream connections (one per concurrent request).
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        state["session"] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def on_cleanup(_app: web.Application) -> None:
        await state["session"].close()

    async def proxy(request: web.Request) -> web.StreamResponse:
        headers = _filter(request.headers.items())
        headers.append(added)
        body = await request.read() if request.body_exists else None
        try:
            async with state["session"].request(
                request.method,
                upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=body,
                allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                return web.Response(
                    status=resp.status, headers=_filter(resp.headers.items()), body=payload
                )
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"upstream error: {exc}\n")

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8000", metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="URL")
    parser.add_argument(
        "--add-header", default="X-Bench: 1", metavar="NAME: VALUE", help="request header added"
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (default: asyncio)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    name, _, value = args.add_header.partition(":")
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # access_log=None: the gatewayd and nginx rows run without access logs too.
    web.run_app(
        make_app(args.upstream, (name.strip(), value.strip())),
        host=host,
        port=int(port),
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
