"""``gatewayd explain`` requests: from untrusted fields to ``snapshot.explain``.

One entry point, ``explain_fields``, serves both the admin endpoint ``POST /explain``
(a running daemon's snapshot) and ``gatewayd explain --config`` (a snapshot compiled
from files): the fields are checked and bounded here, the Host and the path are read as
the data plane reads them (``exchange._host_only``, ``pathnorm`` with the daemon's
``PathPolicy``, ``HeaderView`` joining repeated fields), then the compiled tables are
asked (``routing.snapshot.explain``).

Fields (JSON object)::

    {"port": 8080, "host": "example.com", "address": "127.0.0.1" | null,
     "method": "GET", "target": "/path?query", "headers": [["name", "value"], ...],
     "tls": false, "sni": "example.com" | null, "maxCandidates": 100}

``host``: the URL's authority (a ``Host`` header among ``headers`` wins, as it does on
the wire); ``sni`` null with ``tls``: the URL host unless it is an IP address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Final

from gatewayd.proxy.http.exchange import HeaderView, _host_only
from gatewayd.proxy.pathnorm import (
    EDGE_PATH_POLICY,
    PathError,
    PathPolicy,
    needs_normalizing,
    normalize_path,
    split_target,
)
from gatewayd.routing.snapshot.compiled import Snapshot
from gatewayd.routing.snapshot.explain import ExplainRequest, explain

# Bounds on what an explain request may carry (the admin endpoint reads untrusted
# bytes): the body, the header list, each string, the candidates listed.
MAX_BODY_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
MAX_STRING: Final = 8192
MAX_CANDIDATES: Final = 1000
DEFAULT_CANDIDATES: Final = 100

_TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


class ExplainError(ValueError):
    """The fields do not describe a request (the admin answers 400, the CLI exits 2)."""


def _string(fields: Mapping[str, object], name: str, default: str | None = None) -> str | None:
    value = fields.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ExplainError(f"{name}: a string is expected")
    if len(value) > MAX_STRING:
        raise ExplainError(f"{name}: longer than {MAX_STRING} characters")
    return value


def _headers(raw: object) -> list[tuple[bytes, bytes]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ExplainError("headers: a list of [name, value] pairs is expected")
    if len(raw) > MAX_HEADERS:
        raise ExplainError(f"headers: more than {MAX_HEADERS}")
    out: list[tuple[bytes, bytes]] = []
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) and len(x) <= MAX_STRING for x in item)
        ):
            raise ExplainError("headers: each entry is [name, value], strings")
        name, value = item[0].strip().lower(), item[1].strip()
        if not name or not set(name) <= _TOKEN_CHARS:
            raise ExplainError(f"headers: {item[0]!r} is not a header name")
        try:
            out.append((name.encode("ascii"), value.encode("latin-1")))
        except UnicodeEncodeError:
            raise ExplainError(f"headers: the value of {name} is not latin-1 text") from None
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def build_request(
    fields: Mapping[str, object], policy: PathPolicy = EDGE_PATH_POLICY
) -> tuple[ExplainRequest, dict[str, object] | None]:
    """The request as the data plane would see it, and the local reply the path
    normalization answers instead of routing (400 / 307), if any.  Raises
    ``ExplainError``."""
    port = fields.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ExplainError("port: an integer 1..65535 is expected")
    method = _string(fields, "method", "GET") or "GET"
    if not set(method) <= _TOKEN_CHARS or len(method) > 32:
        raise ExplainError(f"method: {method!r} is not an HTTP method")
    target = _string(fields, "target", "/") or "/"
    if not target.startswith("/"):
        raise ExplainError("target: the path must start with '/'")
    headers = _headers(fields.get("headers"))
    authority = _string(fields, "host", "") or ""
    for name, value in headers:
        if name == b"host":
            authority = value.decode("latin-1")
            break
    else:
        if authority:
            headers.append((b"host", authority.encode("latin-1", "replace")))
    address = _string(fields, "address")
    if address is not None:
        address = address.strip("[]")
    tls = fields.get("tls", False)
    if not isinstance(tls, bool):
        raise ExplainError("tls: true or false")
    host = _host_only(authority.encode("latin-1", "replace")) if authority else ""
    sni = _string(fields, "sni")
    if sni is None:
        sni = "" if _is_ip(host) else host
    try:
        path_b, query_b = split_target(
            target.encode("latin-1"), strip_fragment=policy.strip_fragment
        )
    except UnicodeEncodeError:
        raise ExplainError("target: not latin-1 text") from None
    reply: dict[str, object] | None = None
    if policy.active and needs_normalizing(path_b) is not None:
        try:
            norm_b, redirect = normalize_path(path_b, policy)
        except PathError as exc:
            reply = {"status": 400, "reason": f"path normalization refuses the path: {exc}"}
        else:
            if redirect:
                reply = {
                    "status": 307,
                    "reason": "the path has escaped slashes: redirect to "
                    f"{norm_b.decode('latin-1')!r} (path normalization)",
                }
            path_b = norm_b
    req = ExplainRequest(
        port=port,
        host=host,
        address=address,
        method=method,
        path=path_b.decode("latin-1"),
        query=query_b.decode("latin-1"),
        headers=dict(HeaderView(headers)),
        tls=tls,
        sni=sni.lower(),
    )
    return req, reply


_ROUTE_KINDS = ("HTTPRoute", "GRPCRoute", "TLSRoute")
MAX_NOT_SERVED = 50


def _false_conditions(status: object) -> list[Mapping[str, object]]:
    if not isinstance(status, Mapping):
        return []
    raw = status.get("conditions")
    if not isinstance(raw, list):
        return []
    return [
        c
        for c in raw
        if isinstance(c, Mapping)
        and c.get("status") == "False"
        and c.get("type") in ("Accepted", "Programmed", "ResolvedRefs")
    ]


def not_served(
    items: Sequence[Mapping[str, object]], gateway: str | None
) -> list[dict[str, object]]:
    """What the status says is not served on ``gateway`` ("namespace/name"; None: every
    Gateway): its listeners, and the routes naming it as parent, whose Accepted,
    Programmed or ResolvedRefs condition is False, with reason and message.  A route that
    is not attached is the usual answer to "why does my route not match"."""
    out: list[dict[str, object]] = []

    def add(obj: str, cond: Mapping[str, object]) -> None:
        out.append(
            {
                "object": obj,
                "condition": cond.get("type"),
                "reason": cond.get("reason"),
                "message": cond.get("message", ""),
            }
        )

    for item in items:
        kind = item.get("kind")
        meta = item.get("metadata")
        status = item.get("status")
        if not isinstance(meta, Mapping) or not isinstance(status, Mapping):
            continue
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if kind == "Gateway" and gateway in (None, f"{ns}/{name}"):
            for cond in _false_conditions(status):
                add(f"Gateway {ns}/{name}", cond)
            listeners = status.get("listeners")
            for listener in listeners if isinstance(listeners, list) else ():
                if isinstance(listener, Mapping):
                    for cond in _false_conditions(listener):
                        add(f"Gateway {ns}/{name} listener {listener.get('name')}", cond)
        elif kind in _ROUTE_KINDS:
            parents = status.get("parents")
            for parent in parents if isinstance(parents, list) else ():
                if not isinstance(parent, Mapping):
                    continue
                ref = parent.get("parentRef")
                if not isinstance(ref, Mapping) or ref.get("kind", "Gateway") != "Gateway":
                    continue
                target = f"{ref.get('namespace') or ns}/{ref.get('name')}"
                if gateway not in (None, target):
                    continue
                section = f" (sectionName {ref['sectionName']})" if ref.get("sectionName") else ""
                for cond in _false_conditions(parent):
                    add(f"{kind} {ns}/{name} -> Gateway {target}{section}", cond)
        if len(out) >= MAX_NOT_SERVED:
            break
    return out[:MAX_NOT_SERVED]


def explain_fields(
    snapshot: Snapshot,
    fields: Mapping[str, object],
    policy: PathPolicy = EDGE_PATH_POLICY,
    status_items: Sequence[Mapping[str, object]] = (),
) -> dict[str, object]:
    """``snapshot.explain`` of the request the fields describe, with what ``status_items``
    (``ObjectStatus.as_item()`` dicts) say is not served on the Gateway of the chosen
    port (or on every Gateway when no port is chosen).  Raises ``ExplainError``."""
    limit = fields.get("maxCandidates", DEFAULT_CANDIDATES)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CANDIDATES:
        raise ExplainError(f"maxCandidates: an integer 1..{MAX_CANDIDATES} is expected")
    req, reply = build_request(fields, policy)
    if reply is not None:
        return {
            "request": req.to_json(),
            "generation": snapshot.generation,
            "routed": False,
            "outcome": reply,
        }
    doc = explain(snapshot, req, max_candidates=limit)
    port = doc.get("port")
    chosen = port.get("chosen") if isinstance(port, Mapping) else None
    gateway = chosen.get("gateway") if isinstance(chosen, Mapping) else None
    doc["notServed"] = not_served(status_items, str(gateway) if gateway is not None else None)
    return doc
