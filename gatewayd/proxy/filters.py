"""HTTPRoute filters on the request path: header modifiers, redirects, URL rewrites, CORS.

Headers on the hot path are ``list[tuple[bytes, bytes]]`` with lower-case names.  The
compiled filter objects (``gatewayd.routing.snapshot.rules``) hold ``str``; each one is turned
into bytes once and cached by object identity (see ``_IdentityCache``), never per
request.

Pure module: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gatewayd.routing.snapshot.rules import Cors, HeaderOps, PathModifier, Redirect

Headers = list[tuple[bytes, bytes]]

K = TypeVar("K")
V = TypeVar("V")

# --------------------------------------------------------------------------- caching


class _IdentityCache(Generic[K, V]):
    """Compiled views keyed by ``id()`` of a frozen compiled object.

    Why not ``functools.lru_cache``: hashing a frozen dataclass hashes every field (nested
    tuples of strings) on every call, which costs more than the work it saves.  An id
    lookup plus an identity check is ~60 ns.  The entry keeps a reference to its key
    object, so an id cannot be reused while its entry exists; the cache is dropped
    wholesale when it grows past ``limit`` (old snapshots' objects after many reloads).
    """

    __slots__ = ("_build", "_entries", "_limit")

    def __init__(self, build: Callable[[K], V], limit: int = 4096) -> None:
        self._entries: dict[int, tuple[K, V]] = {}
        self._build = build
        self._limit = limit

    def get(self, obj: K) -> V:
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = self._build(obj)
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[id(obj)] = (obj, value)
        return value


_UNSAFE_VALUE = re.compile(r"[\r\n\x00]")


def _value_bytes(value: str) -> bytes:
    # Validation should already reject CR/LF/NUL in header values; replacing them here
    # as well makes header injection impossible even if a bad value slips through.
    return _UNSAFE_VALUE.sub(" ", value.strip()).encode("utf-8")


def _name_bytes(name: str) -> bytes:
    # "Note that the header names are case-insensitive" (HTTPHeaderFilter.Remove); the
    # hot path keeps names lower-case, so compiled names are lower-cased too.
    return name.strip().lower().encode("ascii", "replace")


# --------------------------------------------------------------------------- header ops


@dataclass(frozen=True, slots=True)
class _CompiledHeaderOps:
    drop: frozenset[bytes]  # names removed before anything is appended
    append: tuple[tuple[bytes, bytes], ...]  # set entries, then add entries


def _compile_header_ops(ops: HeaderOps) -> _CompiledHeaderOps:
    set_pairs = tuple((_name_bytes(n), _value_bytes(v)) for n, v in ops.set)
    add_pairs = tuple((_name_bytes(n), _value_bytes(v)) for n, v in ops.add)
    # "set" replaces every existing entry of the name with one entry, so its names are
    # dropped together with "remove"'s names, then appended once.
    drop = frozenset(_name_bytes(n) for n in ops.remove) | frozenset(n for n, _ in set_pairs)
    return _CompiledHeaderOps(drop=drop, append=set_pairs + add_pairs)


_header_ops_cache: _IdentityCache[HeaderOps, _CompiledHeaderOps] = _IdentityCache(
    _compile_header_ops
)


def apply_header_ops(headers: Headers, ops: HeaderOps) -> None:
    """Apply a Request/ResponseHeaderModifier in place, in the spec's order.

    remove: every entry of each name; set: "Set overwrites the request with the given
    header (name, value)": all entries of the name are replaced by one (appended when
    absent); add: "It appends to any existing values associated with the header name":
    on HTTP/1.1 a new field line with the same name is the same list value (RFC 9110
    5.3), so add appends one entry.  A name both set and added ends as "set, add".
    """
    compiled = _header_ops_cache.get(ops)
    drop = compiled.drop
    if drop:
        # One rebuild pass is cheaper than scanning first and rebuilding on a hit.
        headers[:] = [h for h in headers if h[0] not in drop]
    if compiled.append:
        headers.extend(compiled.append)


# --------------------------------------------------------------------------- paths

_WELL_KNOWN_PORTS = {"http": 80, "https": 443}


def rewrite_path(mod: PathModifier, path: str, prefix: str | None) -> str:
    """The path after a URLRewrite/RequestRedirect path modifier.

    ``prefix`` is the PathPrefix value that matched the request (``RouteHit.prefix``).
    ReplacePrefixMatch "matches full path elements ... When specified, a trailing `/` is
    ignored" (HTTPPathModifier), which gives the spec's table, e.g. with prefix /foo:
    /foo/bar + /xyz -> /xyz/bar, /foo/ + /xyz -> /xyz/, /foo + "" or / -> /.
    """
    if mod.type == "ReplaceFullPath":
        value = mod.value
        return value if value.startswith("/") else "/" + value
    if mod.type != "ReplacePrefixMatch" or prefix is None:
        # "ReplacePrefixMatch is only compatible with a `PathPrefix` HTTPRouteMatch";
        # without a matched prefix there is nothing to replace.
        return path
    matched = prefix.rstrip("/")  # "/" -> "": every path starts with it
    if not path.startswith(matched):
        return path  # defensive: the router matched on another form of the path
    rest = path[len(matched) :]
    if rest and rest[0] != "/":
        return path  # "/abcd" is not under "/abc": not an element boundary
    if not matched and rest == "/":
        rest = ""  # the path is exactly the "/" prefix, like "/foo" under "/foo"
    new = mod.value.rstrip("/") + rest
    if not new:
        return "/"
    return new if new[0] == "/" else "/" + new


def _host_without_port(host: str) -> str:
    if host.endswith("]"):  # "[::1]" (IPv6 literal without a port)
        return host
    colon = host.rfind(":")
    if colon == -1:
        return host
    if host.startswith("["):  # "[::1]:8080"
        return host[:colon]
    if host.find(":") != colon:
        return host  # a bare IPv6 address; there is no port to strip
    return host[:colon]


def redirect_location(
    redirect: Redirect,
    *,
    scheme: str,
    host: str,
    port: int | None,
    path: str,
    query: str,
    prefix: str | None,
) -> str:
    """The absolute URL of the ``Location`` header for a RequestRedirect filter.

    ``scheme``: the request's ("http"/"https"); ``host``: the request's Host (a port in
    it is ignored); ``port``: the Gateway listener port (None: unknown, omitted);
    ``path``: as received, without the query; ``query``: raw, without '?'; ``prefix``:
    the PathPrefix that matched.
    """
    # "Scheme ... When empty, the scheme of the request is used."
    new_scheme = redirect.scheme.lower() if redirect.scheme else scheme.lower()
    # "Hostname ... When empty, the hostname in the `Host` header of the request is used."
    hostname = redirect.hostname or _host_without_port(host)
    if ":" in hostname and not hostname.startswith("["):
        hostname = f"[{hostname}]"
    if redirect.port is not None:
        new_port: int | None = redirect.port
    elif redirect.scheme:
        # "If redirect scheme is not-empty, the redirect port MUST be the well-known port
        # associated with the redirect scheme ... If the redirect scheme does not have a
        # well-known port, the listener port of the Gateway SHOULD be used."
        new_port = _WELL_KNOWN_PORTS.get(new_scheme, port)
    else:
        # "If redirect scheme is empty, the redirect port MUST be the Gateway Listener port."
        new_port = port
    # "Implementations SHOULD NOT add the port number in the 'Location' header" when it
    # is the well-known port of the scheme (80 for http, 443 for https).
    if new_port is not None and new_port == _WELL_KNOWN_PORTS.get(new_scheme):
        new_port = None
    # "Path ... When empty, the request path is used as-is."
    new_path = path if redirect.path is None else rewrite_path(redirect.path, path, prefix)
    if not new_path.startswith("/"):
        new_path = "/" + new_path
    authority = hostname if new_port is None else f"{hostname}:{new_port}"
    if query:
        return f"{new_scheme}://{authority}{new_path}?{query}"
    return f"{new_scheme}://{authority}{new_path}"


# --------------------------------------------------------------------------- CORS

_HOST_CHARS = r"[a-z0-9.\-]+"


def _normalize_origin(origin: str) -> str:
    """Lower-case, default port removed: "if not included, port `80` is assumed for
    `http` scheme origins, and port `443` is assumed for `https` origins"."""
    origin = origin.strip().lower()
    if origin.startswith("https://") and origin.endswith(":443"):
        return origin[:-4]
    if origin.startswith("http://") and origin.endswith(":80"):
        return origin[:-3]
    return origin


@dataclass(slots=True)
class _CompiledCors:
    any_origin: bool
    exact: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    credentials: bool
    methods: bytes | None  # Access-Control-Allow-Methods value; None: omit
    methods_wildcard: bool
    headers: bytes | None
    headers_wildcard: bool
    expose: bytes | None
    max_age: bytes
    seen: dict[bytes, bool]  # request Origin -> allowed, bounded

    def allows(self, origin: bytes) -> bool:
        known = self.seen.get(origin)
        if known is not None:
            return known
        allowed = self._match(origin)
        if len(self.seen) >= 1024:
            self.seen.clear()
        self.seen[origin] = allowed
        return allowed

    def _match(self, origin: bytes) -> bool:
        if self.any_origin:
            return True
        normalized = _normalize_origin(origin.decode("latin-1"))
        if normalized in self.exact:
            return True
        return any(p.fullmatch(normalized) for p in self.patterns)


def _join(values: tuple[str, ...]) -> bytes:
    return ", ".join(v.strip() for v in values).encode("latin-1", "replace")


def _compile_cors(cors: Cors) -> _CompiledCors:
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    any_origin = False
    for raw in cors.allow_origins:
        origin = _normalize_origin(raw)
        if origin == "*":
            # "An origin value that includes _only_ the `*` character indicates requests
            # from all `Origin`s are allowed."
            any_origin = True
        elif "*" in origin:
            # "`*` is a greedy match to the _left_, including any number of DNS labels to
            # the left of its position": it stands for host characters only, so it can
            # never swallow a scheme, a port or a path.
            parts = [re.escape(p) for p in origin.split("*")]
            patterns.append(re.compile(_HOST_CHARS.join(parts)))
        else:
            exact.add(origin)
    methods_wildcard = "*" in cors.allow_methods
    headers_wildcard = "*" in cors.allow_headers
    expose: bytes | None = _join(cors.expose_headers) if cors.expose_headers else None
    if "*" in cors.expose_headers and cors.allow_credentials:
        # "If the configuration contains the wildcard `*` in `exposeHeaders` and
        # `allowCredentials` is set to `true`, the gateway cannot use the `*`": the
        # response headers are not known here, so the header is omitted.
        expose = None
    return _CompiledCors(
        any_origin=any_origin,
        exact=frozenset(exact),
        patterns=tuple(patterns),
        credentials=cors.allow_credentials,
        methods=_join(cors.allow_methods) if cors.allow_methods else None,
        methods_wildcard=methods_wildcard,
        headers=_join(cors.allow_headers) if cors.allow_headers else None,
        headers_wildcard=headers_wildcard,
        expose=expose,
        max_age=str(cors.max_age).encode("ascii"),
        seen={},
    )


_cors_cache: _IdentityCache[Cors, _CompiledCors] = _IdentityCache(_compile_cors)

_ACAO = b"access-control-allow-origin"
_ACAC = (b"access-control-allow-credentials", b"true")
_VARY_ORIGIN = (b"vary", b"Origin")


def _origin_headers(c: _CompiledCors, origin: bytes, out: Headers) -> None:
    if c.any_origin and not c.credentials:
        # "If the configuration contains the wildcard `*` in `allowOrigins` and
        # `allowCredentials` is set to `false`, the `Access-Control-Allow-Origin`
        # response header may either contain the wildcard `*` or echo the value".
        out.append((_ACAO, b"*"))
        return
    # "the gateway sets the response header `Access-Control-Allow-Origin` to the same
    # value as the `Origin` header provided by the client"; the answer then depends on
    # Origin, so caches must know (Fetch standard, CORS protocol and HTTP caches).
    out.append((_ACAO, origin))
    out.append(_VARY_ORIGIN)
    if c.credentials:
        # "When set to true, the gateway will include the
        # `Access-Control-Allow-Credentials` response header with value true".
        out.append(_ACAC)


def cors_preflight(cors: Cors, origin: bytes, method: bytes, request_headers: bytes) -> Headers:
    """Headers of gatewayd's answer to a CORS preflight (OPTIONS with Origin and
    Access-Control-Request-Method): none when Origin is not allowed, and the preflight
    is answered all the same (never forwarded).

    "The status code of a successful response to a "preflight" request is always an OK
    status (i.e., 204 or 200)"; for a denied origin "the gateway returns 204/200 response
    but doesn't set the relevant cross-origin response headers" (HTTPCORSFilter).
    ``request_headers`` is the Access-Control-Request-Headers value (b"" when absent).
    """
    c = _cors_cache.get(cors)
    if not origin or not c.allows(origin):
        return []
    out: Headers = []
    _origin_headers(c, origin, out)
    # "If the `Access-Control-Request-Method` header is not present in the request, the
    # gateway must omit the `Access-Control-Allow-Methods` response header."
    if method and c.methods is not None:
        if c.methods_wildcard:
            # With credentials "the gateway must not return `*` ... it must return a
            # single HTTP method matching the value of the Access-Control-Request-Method".
            out.append((b"access-control-allow-methods", method if c.credentials else b"*"))
        else:
            out.append((b"access-control-allow-methods", c.methods))
    # "If the `Access-Control-Request-Headers` header is not present in the request, the
    # gateway must omit the `Access-Control-Allow-Headers` response header."
    if request_headers and c.headers is not None:
        if c.headers_wildcard:
            allow = request_headers if c.credentials else b"*"
            out.append((b"access-control-allow-headers", allow))
        else:
            out.append((b"access-control-allow-headers", c.headers))
    if c.expose is not None:
        out.append((b"access-control-expose-headers", c.expose))
    # "When the `MaxAge` field is unspecified, the gateway sets the response header
    # "Access-Control-Max-Age: 5" by default" (the compiler fills in 5).
    out.append((b"access-control-max-age", c.max_age))
    return out


def cors_response_headers(cors: Cors, origin: bytes) -> Headers:
    """CORS headers added to the response of an actual (non-preflight) request; empty
    when the request has no Origin or it is not allowed."""
    c = _cors_cache.get(cors)
    if not origin or not c.allows(origin):
        return []
    out: Headers = []
    _origin_headers(c, origin, out)
    if c.expose is not None:
        out.append((b"access-control-expose-headers", c.expose))
    return out
