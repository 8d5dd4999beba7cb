"""A small echo backend, modelled on the Gateway API conformance echo server.

Used as the upstream in tests, demos and load tests: ``gatewayd echo --listen
127.0.0.1:3000 --name echo-v1 --namespace default``.  It is tooling, not the hot path,
so it is written on aiohttp's low-level server (no router: any method, any path).

Every request is answered with a JSON document shaped like the conformance echo
server's ``RequestAssertions`` (so tests can assert the same way the conformance suite
does)::

    {"path": "/a?b=c",            # the request-target exactly as received (RequestURI)
     "host": "example.com",       # the Host header
     "method": "GET",
     "proto": "HTTP/1.1",
     "headers": {"X-Foo": ["1", "2"]},   # Go http.Header: canonical names, value lists
     "namespace": "default",      # --namespace, else $NAMESPACE, else ""
     "pod": "echo-v1",            # --name, else $POD_NAME, else the hostname
     "body_bytes": 1234,          # request body bytes read (counted, never held)
     "transfer_encoding": ["chunked"]}   # Go's Request.TransferEncoding

Like Go's server, ``Host`` and ``Transfer-Encoding`` are not listed in ``headers``
(Go moves them to ``Request.Host`` / ``Request.TransferEncoding``).

Test helpers (query parameters, may be combined):

- ``?status=NNN``     answer with that status code (100..599 except 101) instead of 200.
- ``?delay_ms=N``     wait N milliseconds (after reading the body) before answering.
- ``?delay=1.5s``     the same with a Go duration, as the conformance echo server takes
                      it (``ms``, ``s``, ``m``, ``us``, ``ns``, ``h`` units, combinable).
- ``?size=N``         the body is N bytes of ``x`` (``text/plain``) instead of the JSON.
- ``?chunked=1``      send the response with ``Transfer-Encoding: chunked`` (HTTP/1.1).

Header helpers:

- ``x-echo-set-<name>: value``  is answered as the response header ``<name>: value``
  (each occurrence adds one header line), handy for response-filter tests.
- ``X-Echo-Set-Header: name:value,name2:value2``  the conformance echo server's form of
  the same thing, also honoured.

``Expect: 100-continue`` is answered with an interim ``100 Continue`` before the body is
read, as a real backend would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.helpers import must_be_empty_body

_new_loop: Callable[[], asyncio.AbstractEventLoop]
try:
    import uvloop

    _new_loop = uvloop.new_event_loop
except ImportError:  # pragma: no cover - a dependency, but the echo server works without
    _new_loop = asyncio.new_event_loop

__all__ = [
    "EchoServer",
    "canonical_header_key",
    "echo_main",
    "parse_go_duration",
    "parse_listen",
    "run_echo",
    "serve_echo",
]

_READ_CHUNK = 64 * 1024
_WRITE_CHUNK = 64 * 1024
_SET_PREFIX = "x-echo-set-"
_MAX_DELAY = 600.0  # seconds: a typo must not park a connection forever

# RFC 9110 section 5.6.2: token = 1*tchar
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def canonical_header_key(name: str) -> str:
    """Go's ``textproto.CanonicalMIMEHeaderKey``: ``x-foo-BAR`` -> ``X-Foo-Bar``.

    The conformance suite compares echoed headers through Go's ``http.Header``, which
    stores keys in this form; like Go, a name holding a non-token byte is left as is.
    """
    if not name or any(c not in _TCHAR for c in name):
        return name
    out = []
    upper = True
    for c in name:
        out.append(c.upper() if upper else c.lower())
        upper = c == "-"
    return "".join(out)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string such as ``1s``, ``1m30s``, ``250ms``.

    Raises ValueError for anything else ("0" alone is accepted, as in Go)."""
    text = text.strip()
    if text == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"invalid duration {text!r}")
    return total


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {listen!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"listen address {listen!r}: port out of range")
    return host or "0.0.0.0", port


class _BadRequest(Exception):
    pass


class _Options:
    __slots__ = ("chunked", "delay", "size", "status")

    def __init__(self, request: web.BaseRequest) -> None:
        q = request.query
        self.status = 200
        self.delay = 0.0
        self.size: int | None = None
        self.chunked = q.get("chunked", "") not in ("", "0", "false")
        try:
            if "status" in q:
                self.status = int(q["status"])
                if not 100 <= self.status <= 599 or self.status == 101:
                    raise _BadRequest(f"status {self.status} out of range")
            if "delay_ms" in q:
                self.delay = int(q["delay_ms"]) / 1000.0
            elif "delay" in q:
                self.delay = parse_go_duration(q["delay"])
            if "size" in q:
                self.size = int(q["size"])
                if self.size < 0:
                    raise _BadRequest("size must be >= 0")
        except ValueError as exc:
            raise _BadRequest(str(exc)) from exc
        if not 0.0 <= self.delay <= _MAX_DELAY:
            raise _BadRequest(f"delay must be within 0..{_MAX_DELAY:g}s")


class _EchoHandler:
    __slots__ = ("namespace", "pod")

    def __init__(self, namespace: str, pod: str) -> None:
        self.namespace = namespace
        self.pod = pod

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if (
            request.version >= (1, 1)
            and request.headers.get("Expect", "").lower() == "100-continue"
        ):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        # Read and count the whole body in chunks first: answering before the body is
        # consumed would leave it on a keep-alive connection.
        body_bytes = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                break
            body_bytes += len(chunk)

        try:
            opts = _Options(request)
        except _BadRequest as exc:
            return _json_response(request, 400, {"message": str(exc)}, chunked=False)

        if opts.delay:
            await asyncio.sleep(opts.delay)

        headers: dict[str, list[str]] = {}
        transfer_encoding: list[str] = []
        set_headers: list[tuple[str, str]] = []
        for raw_name, raw_value in request.raw_headers:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1")
            lname = name.lower()
            if lname == "host":
                continue
            if lname == "transfer-encoding":
                transfer_encoding.extend(v.strip() for v in value.split(",") if v.strip())
                continue
            headers.setdefault(canonical_header_key(name), []).append(value)
            if lname == "x-echo-set-header":
                # Conformance form: "name:value,name2:value2".
                for pair in value.split(","):
                    hname, _, hvalue = pair.strip().partition(":")
                    if hname:
                        set_headers.append((hname, hvalue.strip()))
            elif lname.startswith(_SET_PREFIX) and len(name) > len(_SET_PREFIX):
                set_headers.append((name[len(_SET_PREFIX) :], value))

        doc: dict[str, object] = {
            "path": request.raw_path,
            "host": request.headers.get("Host", ""),
            "method": request.method,
            "proto": f"HTTP/{request.version.major}.{request.version.minor}",
            "headers": headers,
            "namespace": self.namespace,
            "pod": self.pod,
            "body_bytes": body_bytes,
            "transfer_encoding": transfer_encoding,
        }
        chunked = opts.chunked and request.version >= (1, 1)
        if opts.size is None:
            resp = _json_response(request, opts.status, doc, chunked=chunked)
            for hname, hvalue in set_headers:
                resp.headers.add(hname, hvalue)
            return resp
        return await _sized_response(request, opts, set_headers, chunked=chunked)


def _json_response(
    request: web.BaseRequest, status: int, doc: object, *, chunked: bool
) -> web.Response:
    body = json.dumps(doc, indent=1).encode()
    resp = web.Response(status=status, body=body, content_type="application/json")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    if chunked and not must_be_empty_body(request.method, status):
        resp.enable_chunked_encoding()
    return resp


async def _sized_response(
    request: web.BaseRequest,
    opts: _Options,
    set_headers: list[tuple[str, str]],
    *,
    chunked: bool,
) -> web.StreamResponse:
    size = opts.size or 0
    resp = web.StreamResponse(status=opts.status)
    resp.content_type = "text/plain"
    for hname, hvalue in set_headers:
        resp.headers.add(hname, hvalue)
    empty = must_be_empty_body(request.method, opts.status)
    if chunked and not empty:
        resp.enable_chunked_encoding()
    else:
        resp.content_length = size
    await resp.prepare(request)
    if not empty:
        block = b"x" * min(size, _WRITE_CHUNK)
        left = size
        while left > 0:
            n = min(left, len(block))
            await resp.write(block if n == len(block) else block[:n])
            left -= n
    await resp.write_eof()
    return resp


def _default_pod() -> str:
    return os.environ.get("POD_NAME") or socket.gethostname()


class EchoServer:
    """A running echo server: ``port`` is the bound port (useful with port 0)."""

    __slots__ = ("_runner", "host", "namespace", "pod", "port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, namespace: str, pod: str
    ) -> None:
        self._runner = runner
        self.host = host
        self.port = port
        self.namespace = namespace
        self.pod = pod

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> EchoServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_echo(
    host: str,
    port: int,
    *,
    name: str | None = None,
    namespace: str | None = None,
) -> EchoServer:
    """Start an echo server on the running loop; ``await server.close()`` stops it."""
    pod = name or _default_pod()
    ns = namespace or os.environ.get("NAMESPACE", "")
    server = web.Server(
        _EchoHandler(ns, pod),
        # A proxy that gives up (timeout tests) closes the connection: stop the handler.
        handler_cancellation=True,
        access_log=None,
        # Counted bytes are the bytes on the wire, not a decompressed body.
        auto_decompress=False,
        max_line_size=65536,
        max_field_size=65536,
        max_headers=1024,
    )
    runner = web.ServerRunner(server, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0]
    return EchoServer(runner, host, int(bound[1]), ns, pod)


async def _run_until_signal(host: str, port: int, name: str | None, namespace: str | None) -> int:
    try:
        server = await serve_echo(host, port, name=name, namespace=namespace)
    except OSError as exc:
        print(f"echo: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        shown = f"[{host}]" if ":" in host else host
        print(f"echo {server.pod} listening on {shown}:{server.port}", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.close()
    return 0


def run_echo(listen: str, *, name: str | None, namespace: str | None) -> int:
    """Blocking entry of ``gatewayd echo``: serve until SIGTERM/SIGINT, return 0.

    Prints ``echo <pod> listening on host:port`` (flushed) once the socket is bound, so a
    parent process can wait for that line (and read the port when it asked for 0).
    Returns 2 for a malformed address and 1 when the address cannot be bound.
    """
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        print(f"echo: {exc}", file=sys.stderr, flush=True)
        return 2
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(_run_until_signal(host, port, name, namespace))


def echo_main(argv: Sequence[str]) -> int:
    """``gatewayd echo [--listen HOST:PORT] [--name NAME] [--namespace NS]``."""
    parser = argparse.ArgumentParser(
        prog="gatewayd echo", description="Run an echo backend for tests and demos."
    )
    parser.add_argument("--listen", default="127.0.0.1:3000", help="host:port to bind")
    parser.add_argument("--name", default=None, help="pod name to report ($POD_NAME)")
    parser.add_argument("--namespace", default=None, help="namespace to report ($NAMESPACE)")
    args = parser.parse_args(list(argv))
    return run_echo(args.listen, name=args.name, namespace=args.namespace)


if __name__ == "__main__":
    sys.exit(echo_main(sys.argv[1:]))
