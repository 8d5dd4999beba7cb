"""The admin HTTP server: readiness, status, config dump and metrics.

Off the hot path: a small HTTP/1.1 server on asyncio streams (``AdminServer``).  It
binds loopback by default
(``DEFAULT_ADMIN_ADDRESS``): like Envoy's admin interface it exposes the whole
configuration and must not be reachable from outside the node unless asked for.

Routes (GET and HEAD):

- ``/``                  a plain-text index of these endpoints (like Envoy's admin page)
- ``/ready``             200 ``LIVE`` once a config is loaded, every bindable listener
                         is bound and at least one is served, else 503 ``INITIALIZING``
                         (Envoy's wording) and a line saying why
- ``/status``            ``{"items": [ObjectStatus.as_item(), ...], "config": {...}}``
- ``/config_dump``       the snapshot as JSON (``Snapshot.to_json()`` and whatever else
                         the daemon adds)
- ``/stats/prometheus``  the Prometheus text exposition, with its own content type
- ``POST /explain``      ``gatewayd explain``: why a request (JSON fields, see
                         ``proxy/explain.py``) goes where it goes in the serving snapshot;
                         ``application/json`` only (a cross-site form cannot send it
                         without a CORS preflight, which this server never grants), body
                         at most 64 KiB

Anything else is 404.  A state callable that raises is answered 500 with
``{"error": "..."}`` and logged; the client never sees a traceback.

Only requests naming this server in ``Host`` are answered (``_host_check``): a web page
that points a DNS name of its own at 127.0.0.1 (DNS rebinding) would otherwise read
``/config_dump`` through the victim's browser.  Accepted: ``localhost``, a loopback
address, the bound address or the address the connection arrived at, each with no port
or the admin's port; anything else is 421.  An IP address in Host is never a rebinding:
the browser then knows it talks to that address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import dataclass
from http import HTTPStatus

import prometheus_client

__all__ = [
    "DEFAULT_ADMIN_ADDRESS",
    "AdminServer",
    "AdminState",
    "default_metrics",
    "json_default",
    "parse_address",
    "start_admin",
]

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9901"

log = logging.getLogger(__name__)


def default_metrics() -> tuple[bytes, str]:
    """The default prometheus_client registry in the text exposition format."""
    return prometheus_client.generate_latest(), prometheus_client.CONTENT_TYPE_LATEST


@dataclass(slots=True, kw_only=True)
class AdminState:
    """What the admin server asks the daemon; each callable is called per request.

    ``ready``: config loaded and every bindable listener bound.
    ``status_items``: ``[ObjectStatus.as_item(), ...]``.
    ``config_dump``: ``Snapshot.to_json()`` plus anything else worth showing.
    ``metrics``: ``(body, content_type)`` of the Prometheus exposition, or an awaitable
    of it (the supervisor of several workers asks each worker first).
    """

    ready: Callable[[], bool]
    status_items: Callable[[], list[dict[str, object]]]
    config_dump: Callable[[], Mapping[str, object]]
    metrics: Callable[[], tuple[bytes, str] | Awaitable[tuple[bytes, str]]] = default_metrics
    # ``{"generation": N, "lastReloadError": str | None, ...}``, shown beside the items of
    # /status so a refused reload is visible where operators look.
    config_state: Callable[[], Mapping[str, object]] | None = None
    # ``POST /explain``: the explanation of the request the JSON fields describe against
    # the serving snapshot; raises ValueError for fields that describe no request.
    explain: Callable[[Mapping[str, object]], Mapping[str, object]] | None = None
    # Why ``ready()`` is False, one line for the body of a 503 /ready (None: no reason).
    not_ready_reason: Callable[[], str] | None = None


# (path, description) in index order.
ENDPOINTS: tuple[tuple[str, str], ...] = (
    ("/", "this page"),
    ("/ready", "200 LIVE when a config is loaded and serves a listener, else 503 and why"),
    ("/status", "Gateway API status of every object, as JSON {items: [...]}"),
    ("/config_dump", "the compiled snapshot being served, as JSON"),
    ("/stats/prometheus", "metrics in the Prometheus text exposition format"),
    ("/explain", "POST: why a request is routed where it is (gatewayd explain)"),
)

# ``POST /explain`` body bound (the fields of one request; proxy/explain.py bounds each).
MAX_EXPLAIN_BODY = 64 * 1024


def json_default(obj: object) -> object:
    """``json.dumps`` fallback for what the model uses: read-only mappings, tuples,
    sets, dataclasses, enums.  Anything else is shown with ``str``."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, Set):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    return str(obj)


def _json_text(doc: object) -> str:
    return json.dumps(doc, indent=2, default=json_default) + "\n"


_JSON = "application/json; charset=utf-8"
_TEXT = "text/plain; charset=utf-8"


class _Reply:
    """One response: status, body, content type and any other headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _json(status: int, doc: object, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, _json_text(doc).encode(), _JSON, headers)


def _text(status: int, text: str) -> _Reply:
    return _Reply(status, text.encode(), _TEXT)


async def _json_off_loop(make: Callable[[], object]) -> _Reply:
    """200 with ``make()`` as JSON, both done on a thread: the dump of a 500-route
    snapshot takes ~0.1 s, which on the loop would stall the data plane it shares (one
    worker).  ``make`` only reads the daemon's current state: immutable snapshots and
    statuses, swapped by one reference assignment."""
    text = await asyncio.get_running_loop().run_in_executor(None, lambda: _json_text(make()))
    return _Reply(200, text.encode(), _JSON)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` (loopback) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"admin address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port_text)


class _BadRequest(Exception):
    """The request cannot be read: answered 400 (or ``status``) and the connection
    closed."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class _Request:
    """One parsed request head, and the body reader once the head is read."""

    __slots__ = ("_body_read", "_reader", "_writer", "headers", "method", "path", "version")

    def __init__(
        self,
        method: str,
        path: str,
        version: tuple[int, int],
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.method = method
        self.path = path
        self.version = version
        self.headers = headers  # (lower-case name, value), in order
        self._reader = reader
        self._writer = writer
        self._body_read = False

    def getall(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def get(self, name: str) -> str | None:
        values = self.getall(name)
        return values[0] if values else None

    @property
    def chunked(self) -> bool:
        te = self.get("transfer-encoding")
        return te is not None and te.strip().lower() == "chunked"

    @property
    def content_length(self) -> int | None:
        value = self.get("content-length")
        return None if value is None else int(value)  # checked in _read_head

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case (``application/octet-stream``
        when none is given, RFC 9110 section 8.3)."""
        value = self.get("content-type")
        if value is None:
            return "application/octet-stream"
        return value.partition(";")[0].strip().lower()

    @property
    def sockname(self) -> object:
        return self._writer.get_extra_info("sockname")

    async def read_body(self, limit: int) -> bytes | None:
        """The body, or None when it is longer than ``limit`` (the rest is left unread:
        the connection is closed after the answer)."""
        if (self.get("expect") or "").lower() == "100-continue":
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        async with asyncio.timeout(BODY_TIMEOUT):
            if not self.chunked:
                length = self.content_length or 0
                if length > limit:
                    return None
                data = await self._reader.readexactly(length)
                self._body_read = True
                return data
            body = bytearray()
            while True:  # bounded: stops past ``limit``
                line = await self._reader.readuntil(b"\r\n")
                size_text = line[:-2].partition(b";")[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _BadRequest("malformed chunk size") from None
                if size < 0:
                    raise _BadRequest("malformed chunk size")
                if size == 0:
                    while (await self._reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailer fields, ignored (bounded by the stream's limit)
                    self._body_read = True
                    return bytes(body)
                if len(body) + size > limit:
                    return None
                body += await self._reader.readexactly(size)
                if await self._reader.readexactly(2) != b"\r\n":
                    raise _BadRequest("malformed chunk")

    @property
    def body_left(self) -> bool:
        """A body was sent that the handler did not read: the connection cannot carry
        another request."""
        return self.has_body and not self._body_read


_Handler = Callable[[_Request], Awaitable[_Reply]]

# Bounds of one request head: the admin server is a local operator's tool, but a
# client that sends without end must not grow its buffers.
MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
# Seconds a connection may stay idle between requests (aiohttp's default, which served
# this before) and the time the first request head, or a body, may take.
KEEPALIVE_TIMEOUT = 75.0
HEAD_TIMEOUT = 30.0
BODY_TIMEOUT = 30.0
# What a refused request may still send before its connection is closed (``_refuse``).
LINGER_BYTES = 1024 * 1024
LINGER_TIMEOUT = 2.0
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _parse_head(head: bytes) -> tuple[str, str, tuple[int, int], list[tuple[str, str]]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN:
        raise _BadRequest("malformed request line")
    method, target, proto = parts
    if proto not in (b"HTTP/1.1", b"HTTP/1.0") or not target.startswith(b"/"):
        raise _BadRequest("malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise _BadRequest(f"more than {MAX_HEADERS} header fields", 431)
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not set(name) <= _TOKEN:
            raise _BadRequest("malformed header field")  # also obs-fold (RFC 9112 5.2)
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    path = target.decode("latin-1").partition("?")[0]
    version = (1, 1) if proto == b"HTTP/1.1" else (1, 0)
    te = [v for k, v in headers if k == "transfer-encoding"]
    cl = [v for k, v in headers if k == "content-length"]
    if te and (cl or len(te) > 1 or te[0].strip().lower() != "chunked"):
        raise _BadRequest("unsupported Transfer-Encoding", 501 if not cl else 400)
    if cl and (len(set(cl)) > 1 or not cl[0].isascii() or not cl[0].isdigit()):
        raise _BadRequest("malformed Content-Length")
    return method.decode("ascii"), path, version, headers


def _encode(reply: _Reply, *, head_only: bool, close: bool) -> bytes:
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {reply.status} {reason}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
    ]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + reply.body


class _Routes:
    __slots__ = ("by_path", "state")

    def __init__(self, state: AdminState) -> None:
        self.state = state
        # path -> (method, handler); GET paths answer HEAD as well.
        self.by_path: dict[str, tuple[str, _Handler]] = {
            "/": ("GET", self.index),
            "/ready": ("GET", self.ready),
            "/status": ("GET", self.status),
            "/config_dump": ("GET", self.config_dump),
            "/stats/prometheus": ("GET", self.prometheus),
            "/explain": ("POST", self.explain),
        }

    async def dispatch(self, request: _Request) -> _Reply:
        route = self.by_path.get(request.path)
        if route is None:
            return _json(404, {"error": "Not Found"})
        method, handler = route
        allowed = ("GET", "HEAD") if method == "GET" else (method,)
        if request.method not in allowed:
            return _json(405, {"error": "Method Not Allowed"}, (("Allow", ",".join(allowed)),))
        return await handler(request)

    async def index(self, request: _Request) -> _Reply:
        width = max(len(path) for path, _ in ENDPOINTS)
        lines = ["gatewayd admin commands are:"]
        lines += [f"  {path:<{width}}  {what}" for path, what in ENDPOINTS]
        return _text(200, "\n".join(lines) + "\n")

    async def ready(self, request: _Request) -> _Reply:
        if self.state.ready():
            return _text(200, "LIVE\n")
        why = self.state.not_ready_reason() if self.state.not_ready_reason else ""
        return _text(503, f"INITIALIZING\n{why}\n" if why else "INITIALIZING\n")

    def _status_doc(self) -> dict[str, object]:
        doc: dict[str, object] = {"items": list(self.state.status_items())}
        if self.state.config_state is not None:
            doc["config"] = dict(self.state.config_state())
        return doc

    async def status(self, request: _Request) -> _Reply:
        return await _json_off_loop(self._status_doc)

    async def config_dump(self, request: _Request) -> _Reply:
        return await _json_off_loop(self.state.config_dump)

    async def explain(self, request: _Request) -> _Reply:
        explain = self.state.explain
        if explain is None:
            return _json(404, {"error": "Not Found"})
        if request.content_type != "application/json":
            return _json(415, {"error": "Unsupported Media Type: send application/json"})
        too_large = {"error": f"Payload Too Large: at most {MAX_EXPLAIN_BODY} bytes"}
        length = request.content_length
        if length is not None and length > MAX_EXPLAIN_BODY:
            return _json(413, too_large)
        body = await request.read_body(MAX_EXPLAIN_BODY)
        if body is None:
            return _json(413, too_large)
        try:
            fields = json.loads(body)
        except (ValueError, RecursionError):
            return _json(400, {"error": "Bad Request: the body is not JSON"})
        if not isinstance(fields, dict):
            return _json(400, {"error": "Bad Request: a JSON object is expected"})
        try:
            # On a thread: a table of thousands of candidates takes milliseconds to
            # trace, which the data plane sharing this loop should not wait for.
            doc = await asyncio.get_running_loop().run_in_executor(None, explain, fields)
        except ValueError as exc:
            return _json(400, {"error": f"Bad Request: {exc}"})
        return _json(200, doc)

    async def prometheus(self, request: _Request) -> _Reply:
        result = self.state.metrics()
        body, content_type = result if isinstance(result, tuple) else await result
        # The exposition's own type, parameters (version, charset) included.
        return _Reply(200, body, content_type)


def _split_host(value: str) -> tuple[str, str] | None:
    """``host[:port]`` / ``[v6][:port]`` -> (host without brackets, port or ""); None
    when malformed."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
    else:
        host, _, port = value.partition(":")
    if not host or (port and not (port.isascii() and port.isdigit() and len(port) <= 5)):
        return None
    return host.lower(), port


def _is_own_host(host: str, local: str, bound: str = "") -> bool:
    """``localhost``, a loopback address, ``bound`` (the address the admin was told to
    bind, even 0.0.0.0) or ``local`` (the address the connection arrived at, which for a
    wildcard bind is the interface address the client used)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: the rebinding case
    own: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in (local, bound):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers so
        own.add(address)
    return ip.is_loopback or ip in own


def _host_check(request: _Request, bound: str) -> _Reply | None:
    """None when the request's Host names this server, else the answer refusing it."""
    hosts = request.getall("host")
    if not hosts:
        # RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request)
        # status code to any HTTP/1.1 request message that lacks a Host header
        # field".  An HTTP/1.0 client (no browser is one) may leave it out.
        if request.version >= (1, 1):
            return _json(400, {"error": "Bad Request: no Host header"})
        return None
    if len(hosts) > 1:
        # ... "and to any request message that contains more than one Host header
        # field line".
        return _json(400, {"error": "Bad Request: more than one Host header"})
    sockname = request.sockname
    local, port = (str(sockname[0]), int(sockname[1])) if isinstance(sockname, tuple) else ("", -1)
    parts = _split_host(hosts[0].strip())
    if parts is None:
        return _json(400, {"error": "Bad Request: malformed Host header"})
    host, host_port = parts
    if _is_own_host(host, local, bound) and (not host_port or int(host_port) == port):
        return None
    # RFC 9110 section 15.5.20: 421 "indicates that the request was directed at a
    # server that is unable or unwilling to produce an authoritative response for
    # the target URI".
    return _json(
        421,
        {
            "error": "Misdirected Request: the admin server answers Host localhost, "
            "a loopback address or its own address only"
        },
    )


class AdminServer:
    """A running admin server; ``port`` is the bound port (useful with port 0).

    HTTP/1.1 on asyncio streams, one request at a time per connection, keep-alive.
    (It was aiohttp.web: importing that cost a daemon ~80 ms of start-up and 16 MB of
    RSS, for six endpoints.)"""

    __slots__ = ("_connections", "_routes", "_server", "bound", "host", "port")

    def __init__(self, state: AdminState, host: str) -> None:
        self._routes = _Routes(state)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.bound = host  # the address it was told to bind (``_host_check``)
        self.host = host
        self.port = 0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def _start(self, port: int) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, port, reuse_address=True, limit=MAX_HEAD
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> AdminServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away or sent too much or too slowly: nothing to answer
        except asyncio.CancelledError:
            pass  # close()
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            try:
                # The first head must come soon; later ones may wait for keep-alive.
                async with asyncio.timeout(HEAD_TIMEOUT if first else KEEPALIVE_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # closed between requests
            except asyncio.LimitOverrunError:
                reply = _json(431, {"error": "Request Header Fields Too Large"})
                await _refuse(reader, writer, reply)
                return
            first = False
            try:
                method, path, version, headers = _parse_head(head)
            except _BadRequest as exc:
                reply = _json(exc.status, {"error": f"{HTTPStatus(exc.status).phrase}: {exc}"})
                await _refuse(reader, writer, reply)
                return
            request = _Request(method, path, version, headers, reader, writer)
            try:
                reply = await self._answer(request)
            except _BadRequest as exc:
                reply = _json(exc.status, {"error": f"{HTTPStatus(exc.status).phrase}: {exc}"})
                await _refuse(reader, writer, reply)
                return
            if request.body_left:
                # A body it did not read (a 405, a 413...): the client may still be
                # sending it.
                await _refuse(reader, writer, reply, head_only=method == "HEAD")
                return
            connection = (request.get("connection") or "").lower()
            close = connection == "close" or (version == (1, 0) and connection != "keep-alive")
            writer.write(_encode(reply, head_only=method == "HEAD", close=close))
            await writer.drain()
            if close:
                return

    async def _answer(self, request: _Request) -> _Reply:
        refused = _host_check(request, self.bound)
        if refused is not None:
            return refused
        try:
            return await self._routes.dispatch(request)
        except (_BadRequest, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            raise
        except Exception as exc:
            log.exception("admin %s %s failed", request.method, request.path)
            return _json(500, {"error": f"{type(exc).__name__}: {exc}"})


async def _refuse(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: _Reply,
    *,
    head_only: bool = False,
) -> None:
    """Answer ``reply`` and close, reading what the client still sends for a while.

    Closing a socket with unread bytes resets the connection: a client still sending a
    body it was refused (a 413 after 64 KiB of a chunked one) then fails with a broken
    pipe before it reads the answer.  So the answer goes out with our side shut for
    writing, and the rest is read and dropped until the client closes, at most
    ``LINGER_BYTES`` or ``LINGER_TIMEOUT`` seconds (Envoy and nginx linger likewise)."""
    writer.write(_encode(reply, head_only=head_only, close=True))
    if writer.can_write_eof():
        writer.write_eof()
    left = LINGER_BYTES
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(LINGER_TIMEOUT):
            while left > 0:
                data = await reader.read(min(left, 65536))
                if not data:
                    break
                left -= len(data)


async def start_admin(address: str, state: AdminState) -> AdminServer:
    """Bind ``address`` (``"127.0.0.1:9901"``, port 0 allowed) and serve the admin API
    on the running loop.  Raises OSError when the address cannot be bound."""
    host, port = parse_address(address)
    server = AdminServer(state, host)
    await server._start(port)
    return server
