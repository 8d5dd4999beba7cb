"""The admin HTTP server: readiness, status, config dump and metrics.

Off the hot path, so it uses aiohttp.web.  It binds loopback by default
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
import dataclasses
import enum
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import dataclass

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = [
    "DEFAULT_ADMIN_ADDRESS",
    "AdminServer",
    "AdminState",
    "default_metrics",
    "json_default",
    "make_app",
    "parse_address",
    "start_admin",
]

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9901"

log = logging.getLogger(__name__)

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _json(status: int, doc: object) -> web.Response:
    return web.Response(status=status, text=_json_text(doc), content_type="application/json")


async def _json_off_loop(make: Callable[[], object]) -> web.Response:
    """200 with ``make()`` as JSON, both done on a thread: the dump of a 500-route
    snapshot takes ~0.1 s, which on the loop would stall the data plane it shares (one
    worker).  ``make`` only reads the daemon's current state: immutable snapshots and
    statuses, swapped by one reference assignment."""
    text = await asyncio.get_running_loop().run_in_executor(None, lambda: _json_text(make()))
    return web.Response(text=text, content_type="application/json")


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` (loopback) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"admin address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "127.0.0.1", int(port_text)


class _Routes:
    __slots__ = ("state",)

    def __init__(self, state: AdminState) -> None:
        self.state = state

    async def index(self, request: web.Request) -> web.Response:
        width = max(len(path) for path, _ in ENDPOINTS)
        lines = ["gatewayd admin commands are:"]
        lines += [f"  {path:<{width}}  {what}" for path, what in ENDPOINTS]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def ready(self, request: web.Request) -> web.Response:
        if self.state.ready():
            return web.Response(text="LIVE\n", content_type="text/plain")
        why = self.state.not_ready_reason() if self.state.not_ready_reason else ""
        text = f"INITIALIZING\n{why}\n" if why else "INITIALIZING\n"
        return web.Response(status=503, text=text, content_type="text/plain")

    def _status_doc(self) -> dict[str, object]:
        doc: dict[str, object] = {"items": list(self.state.status_items())}
        if self.state.config_state is not None:
            doc["config"] = dict(self.state.config_state())
        return doc

    async def status(self, request: web.Request) -> web.Response:
        return await _json_off_loop(self._status_doc)

    async def config_dump(self, request: web.Request) -> web.Response:
        return await _json_off_loop(self.state.config_dump)

    async def explain(self, request: web.Request) -> web.Response:
        explain = self.state.explain
        if explain is None:
            return _json(404, {"error": "Not Found"})
        if request.content_type != "application/json":
            return _json(415, {"error": "Unsupported Media Type: send application/json"})
        length = request.content_length
        if length is not None and length > MAX_EXPLAIN_BODY:
            return _json(413, {"error": f"Payload Too Large: at most {MAX_EXPLAIN_BODY} bytes"})
        body = bytearray()
        while True:  # bounded: stops past MAX_EXPLAIN_BODY
            chunk = await request.content.read(MAX_EXPLAIN_BODY + 1 - len(body))
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_EXPLAIN_BODY:
                return _json(413, {"error": f"Payload Too Large: at most {MAX_EXPLAIN_BODY} bytes"})
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

    async def prometheus(self, request: web.Request) -> web.Response:
        result = self.state.metrics()
        body, content_type = result if isinstance(result, tuple) else await result
        # Passed as a raw header: the exposition type carries parameters (version,
        # charset) that aiohttp's content_type argument does not take.
        return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _json(exc.status, {"error": exc.reason})
        raise
    except Exception as exc:
        log.exception("admin %s %s failed", request.method, request.path)
        return _json(500, {"error": f"{type(exc).__name__}: {exc}"})


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


def _host_check(bound: str) -> Middleware:
    """The middleware answering only requests whose Host names this server."""

    @web.middleware
    async def check(request: web.Request, handler: _Handler) -> web.StreamResponse:
        hosts = request.headers.getall("Host", [])
        if not hosts:
            # RFC 9112 section 3.2: "A server MUST respond with a 400 (Bad Request)
            # status code to any HTTP/1.1 request message that lacks a Host header
            # field".  An HTTP/1.0 client (no browser is one) may leave it out.
            if request.version >= (1, 1):
                return _json(400, {"error": "Bad Request: no Host header"})
            return await handler(request)
        if len(hosts) > 1:
            # ... "and to any request message that contains more than one Host header
            # field line".
            return _json(400, {"error": "Bad Request: more than one Host header"})
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        local, port = (str(sockname[0]), int(sockname[1])) if sockname else ("", -1)
        parts = _split_host(hosts[0].strip())
        if parts is None:
            return _json(400, {"error": "Bad Request: malformed Host header"})
        host, host_port = parts
        if _is_own_host(host, local, bound) and (not host_port or int(host_port) == port):
            return await handler(request)
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

    return check


class AdminServer:
    """A running admin server; ``port`` is the bound port (useful with port 0)."""

    __slots__ = ("_runner", "host", "port")

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> AdminServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def make_app(state: AdminState, *, bound_host: str = "127.0.0.1") -> web.Application:
    """The admin application; ``bound_host`` is the address it is served on (a Host
    naming it is answered, see ``_host_check``)."""
    routes = _Routes(state)
    app = web.Application(middlewares=[_host_check(bound_host), _errors])
    app.router.add_get("/", routes.index)
    app.router.add_get("/ready", routes.ready)
    app.router.add_get("/status", routes.status)
    app.router.add_get("/config_dump", routes.config_dump)
    app.router.add_get("/stats/prometheus", routes.prometheus)
    app.router.add_post("/explain", routes.explain)
    return app


async def start_admin(address: str, state: AdminState) -> AdminServer:
    """Bind ``address`` (``"127.0.0.1:9901"``, port 0 allowed) and serve the admin API
    on the running loop.  Raises OSError when the address cannot be bound."""
    host, port = parse_address(address)
    runner = web.AppRunner(make_app(state, bound_host=host), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return AdminServer(runner, host, int(runner.addresses[0][1]))
