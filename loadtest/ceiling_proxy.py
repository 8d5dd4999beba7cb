"""The "Python ceiling": the smallest uvloop + httptools HTTP/1.1 reverse proxy doing the
wire work gatewayd does on a plain proxied request, so ``make bench`` can show how far
gatewayd's own overhead is from what Python allows (issue 17).

Per request it parses both heads (httptools), drops the hop-by-hop request and response
fields (RFC 9110 7.6.1: Connection, the fields it names, Keep-Alive, Proxy-Connection,
TE, Trailer, Transfer-Encoding, Upgrade), appends the client address to
X-Forwarded-For, sets one request header (``--set-header``), relays bodies (a body of
known length as it is, anything else re-chunked), reuses kept-alive upstream
connections from a pool, and applies flow control both ways: a transport whose write
buffer passes its high-water mark pauses reading on the other side until it drains.

It is a measuring instrument, not a product: one upstream, no routing, no timeouts, no
HEAD, Upgrade or 1xx handling.  It bounds what a client can make it hold: a request head
over ``MAX_HEAD`` bytes is answered 431, and pipelined requests waiting behind the one
in flight over ``MAX_PENDING`` bytes pause reading.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from typing import cast

import httptools

MAX_HEAD = 64 * 1024  # bytes of one request head (request line and fields)
MAX_PENDING = 256 * 1024  # bytes of pipelined requests buffered behind the one in flight
HIGH_WATER = 256 * 1024  # transport write buffer: pause the other side's reading above
LOW_WATER = 64 * 1024  # ... and resume below
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection te trailer transfer-encoding upgrade".split()
)
REASONS = {200: b"OK", 404: b"Not Found", 431: b"Request Header Fields Too Large"}


def _hop_set(fields: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The hop-by-hop names: the fixed ones plus those the Connection field lists."""
    named = [
        t.strip().lower() for k, v in fields if k.lower() == b"connection" for t in v.split(b",")
    ]
    return HOP_BY_HOP.union(named) if named else HOP_BY_HOP


class Upstream(asyncio.Protocol):
    """One kept-alive connection to the backend; relays one response at a time."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: Downstream | None = None
        self.fields: list[tuple[bytes, bytes]] = []
        self.chunked = False  # re-chunk the response body to the client
        self.keep_alive = True
        # The response has neither a length nor chunks: it ends when the backend closes.
        self.until_close = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.keep_alive = False
        self.proxy.forget(self)
        client, self.client = self.client, None
        if client is not None and self.until_close:
            client.out.append(b"0\r\n\r\n")  # the end of a body delimited by the close
            client.response_done()
            client.flush()
        elif client is not None:
            client.upstream_failed()

    def data_received(self, data: bytes) -> None:
        client = self.client  # on_message_complete lets go of it
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()
            return
        if client is not None:
            client.flush()

    # The client's reading waits while this connection's write buffer is full.
    def pause_writing(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.fields = []
        self.until_close = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        client = self.client
        if client is None:
            return
        code = self.parser.get_status_code()
        hop = _hop_set(self.fields)
        has_length = chunked_in = False
        head = [b"HTTP/1.1 %d %s\r\n" % (code, REASONS.get(code, b"Status"))]
        for k, v in self.fields:
            lk = k.lower()
            if lk in hop:
                chunked_in = chunked_in or lk == b"transfer-encoding"
                continue
            has_length = has_length or lk == b"content-length"
            head.append(b"%s: %s\r\n" % (k, v))
        self.chunked = not has_length and code not in (204, 304)
        self.until_close = self.chunked and not chunked_in
        if self.chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        if not client.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        client.out.append(b"".join(head))
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.client is not None:
            if self.chunked:
                self.client.out += (b"%x\r\n" % len(body), body, b"\r\n")
            else:
                self.client.out.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if self.chunked:
            client.out.append(b"0\r\n\r\n")
        if self.keep_alive:
            self.proxy.idle.append(self)
        else:
            assert self.transport is not None
            self.transport.close()
        client.response_done()


class Downstream(asyncio.Protocol):
    """One client connection: requests are relayed one at a time, in order; request
    bodies stream to the upstream as they arrive."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.out: list[bytes] = []  # bytes for the client, written once per event
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.keep_alive = True  # of the request being relayed
        self.upstream: Upstream | None = None
        self.chunked_body = False  # re-chunk the request body being parsed
        # Bytes of the request in flight not yet written upstream; the request being
        # parsed writes into ``parsing`` (the same list, or one queued behind it).
        self.req: list[bytes] = []
        self.parsing: list[bytes] = self.req
        self.queue: collections.deque[tuple[list[bytes], bool]] = collections.deque()
        self.pending = 0  # bytes queued behind the request in flight
        self.busy = False  # a request is in flight (sent or being sent upstream)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        t = self.transport = cast(asyncio.Transport, transport)
        t.set_write_buffer_limits(HIGH_WATER, LOW_WATER)
        peer = t.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b"unknown"

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        upstream, self.upstream = self.upstream, None
        if upstream is not None and upstream.client is self:
            upstream.client = None  # its response is not complete: drop the connection
            assert upstream.transport is not None
            upstream.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.local_reply(501)
            return
        except httptools.HttpParserError:
            self.local_reply(431 if self.head_bytes > MAX_HEAD else 400)
            return
        self.send_upstream()
        self.flush()

    def send_upstream(self) -> None:
        up = self.upstream
        if self.req and up is not None and up.transport is not None:
            up.transport.write(b"".join(self.req))
            self.req.clear()

    def flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
            self.out.clear()

    # The upstream's reading waits while the client's write buffer is full.
    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    def local_reply(self, code: int) -> None:
        self.out.append(
            b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            % (code, REASONS.get(code, b"Error"))
        )
        self.flush()
        if self.transport is not None:
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.fields = []
        self.url = b""
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD:
            raise ValueError("head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_HEAD:
            raise ValueError("head too large")
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        hop = _hop_set(self.fields)
        set_name = self.proxy.set_header[0]
        xff = b""
        head = [b"%s %s HTTP/1.1\r\n" % (p.get_method(), self.url)]
        chunked = False
        for k, v in self.fields:
            lk = k.lower()
            if lk in hop or lk == set_name:
                chunked = chunked or lk == b"transfer-encoding"
                continue
            if lk == b"x-forwarded-for":
                xff = v + b", "  # appended to, in one field of our own below
                continue
            head.append(b"%s: %s\r\n" % (k, v))
        self.chunked_body = chunked
        head.append(b"x-forwarded-for: %s%s\r\n%s\r\n" % (xff, self.peer, self.proxy.set_line))
        if chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        keep = bool(p.should_keep_alive())
        if self.busy:  # pipelined behind the request in flight
            self.parsing = [b"".join(head)]
            self.queue.append((self.parsing, keep))
            self.count_pending(len(self.parsing[0]))
            return
        self.busy, self.keep_alive = True, keep
        self.parsing = self.req
        self.req.append(b"".join(head))
        self.start()

    def on_body(self, body: bytes) -> None:
        if self.chunked_body:
            self.parsing += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.parsing.append(body)
        if self.parsing is self.req:
            if len(self.req) > 64:  # a long body in one read: keep the list short
                self.send_upstream()
        else:
            self.count_pending(len(body))

    def on_message_complete(self) -> None:
        if self.chunked_body:
            self.parsing.append(b"0\r\n\r\n")

    def count_pending(self, n: int) -> None:
        self.pending += n
        if self.pending > MAX_PENDING and self.transport is not None:
            self.transport.pause_reading()

    def start(self) -> None:
        """Relay the request in ``req``: on an idle pooled connection, else a new one."""
        idle = self.proxy.idle
        while idle:
            up = idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                up.client = self
                self.upstream = up
                return  # its bytes go out after this read (send_upstream)
        self.proxy.connect(self)

    def attach(self, up: Upstream) -> None:
        up.client = self
        self.upstream = up
        self.send_upstream()

    def upstream_failed(self) -> None:
        self.upstream = None
        if self.out:  # the response head went out: the client sees a truncated response
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        self.local_reply(502)

    def response_done(self) -> None:
        self.upstream = None
        self.busy = False
        if not self.keep_alive:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        if self.queue:
            request, keep = self.queue.popleft()
            self.pending -= sum(map(len, request))
            # ``request`` may still be being parsed: it becomes ``req`` in place.
            self.req.clear()
            self.req.extend(request)
            if self.parsing is request:
                self.parsing = self.req
            self.busy, self.keep_alive = True, keep
            self.start()
            self.send_upstream()
        if self.transport is not None and self.pending <= MAX_PENDING:
            self.transport.resume_reading()


class Proxy:
    """The shared state: the upstream address, the idle pool, the header to set."""

    def __init__(self, upstream: tuple[str, int], set_header: tuple[str, str]) -> None:
        self.upstream = upstream
        self.idle: list[Upstream] = []
        self.set_header = (set_header[0].lower().encode(), set_header[1].encode())
        self.set_line = b"%s: %s" % (set_header[0].encode(), self.set_header[1])
        self.tasks: set[asyncio.Task[None]] = set()

    def forget(self, up: Upstream) -> None:
        if up in self.idle:
            self.idle.remove(up)

    def connect(self, client: Downstream) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect(self, client: Downstream) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Upstream(self), *self.upstream)
        except OSError:
            client.upstream_failed()
            return
        if client.transport is None or client.transport.is_closing():
            self.idle.append(up)
            return
        client.attach(up)


async def serve(listen: tuple[str, int], proxy: Proxy) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Downstream(proxy), *listen, backlog=4096)
    async with server:
        await server.serve_forever()


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=_addr, required=True, help="HOST:PORT to serve")
    ap.add_argument("--upstream", type=_addr, required=True, help="HOST:PORT of the backend")
    ap.add_argument("--set-header", default="X-Bench: 1", help="request header to set")
    ap.add_argument("--asyncio", action="store_true", help="plain asyncio loop, not uvloop")
    args = ap.parse_args(argv)
    name, _, value = args.set_header.partition(":")
    proxy = Proxy(args.upstream, (name.strip(), value.strip()))
    if args.asyncio:
        asyncio.run(serve(args.listen, proxy))
    else:
        import uvloop

        uvloop.run(serve(args.listen, proxy))


if __name__ == "__main__":
    main()
