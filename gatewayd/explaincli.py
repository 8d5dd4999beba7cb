"""``gatewayd explain``: why a request goes where it goes.

    gatewayd explain http://example.com:8080/api -H 'x-env: canary' -X POST
    gatewayd explain https://app.example.com:8443/ --sni app.example.com --config examples/
    gatewayd explain http://127.0.0.1:8080/helloworld.Greeter/SayHello --grpc -o json

Against a running daemon (``POST /explain`` on its admin address, default
127.0.0.1:9901) or, with ``--config``, against the snapshot compiled from files exactly
as ``gatewayd run`` would compile it.  Both paths end in ``proxy.explain.explain_fields``
and the compiled tables' own lookup.

Exit status: 0 routed, 1 not routed (404, 421, no listener, connection closed), 2 usage
(bad arguments, several addresses serve the port, admin unreachable, config unreadable).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:9901"  # gatewayd.proxy.admin.DEFAULT_ADMIN_ADDRESS
_DEFAULT_PORTS = {"http": 80, "https": 443, "tls": 443}

EXIT_ROUTED, EXIT_NOT_ROUTED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="http://HOST[:PORT]/PATH?QUERY, https://... or tls://HOST:PORT")
    p.add_argument("-X", "--request", dest="method", default=None, metavar="METHOD")
    p.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable); a Host header overrides the URL's host",
    )
    p.add_argument(
        "--sni", default=None, metavar="NAME", help="TLS server name (default: URL host)"
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="IP",
        help="the Gateway address the connection reaches (default: the URL host when it "
        "is an IP address, else the one address serving the port)",
    )
    p.add_argument(
        "--grpc",
        action="store_true",
        help="a gRPC call: POST with content-type application/grpc (URL path /SERVICE/METHOD)",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--config",
        action="append",
        metavar="PATH",
        help="explain against these YAML files or directories instead of a running daemon",
    )
    source.add_argument(
        "--admin",
        default=None,
        metavar="URL",
        help=f"the running daemon's admin address (default {DEFAULT_ADMIN_ADDRESS})",
    )
    p.add_argument("--controller-name", default=None, help="with --config")
    p.add_argument("--address-pool", default=None, metavar="CIDR", help="with --config")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument(
        "--no-spec", action="store_true", help="text: leave out the spec sentence of each step"
    )
    p.add_argument(
        "--max-candidates",
        type=int,
        default=100,
        metavar="N",
        help="candidate matches listed (1..1000; the chosen one always is)",
    )


def request_fields(args: argparse.Namespace) -> dict[str, object]:
    """The JSON fields of ``POST /explain`` for the command line."""
    url = urllib.parse.urlsplit(args.url)
    scheme = url.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not url.hostname:
        raise UsageError(f"not an http://, https:// or tls:// URL with a host: {args.url!r}")
    try:
        port = url.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise UsageError(f"bad port in {args.url!r}") from None
    headers: list[list[str]] = []
    for h in args.headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"-H takes 'Name: value', not {h!r}")
        headers.append([name.strip(), value.strip()])
    method = args.method
    if args.grpc:
        method = method or "POST"
        if not any(n.lower() == "content-type" for n, _ in headers):
            headers.append(["content-type", "application/grpc"])
        headers.append(["te", "trailers"])
    target = url.path or "/"
    if url.query:
        target += "?" + url.query
    host = url.hostname
    authority = f"[{host}]" if ":" in host else host
    if url.port:
        authority += f":{url.port}"
    address = args.address
    if address is None and _is_ip(host):
        address = host
    return {
        "port": port,
        "host": authority,
        "address": address,
        "method": method or "GET",
        "target": target,
        "headers": headers,
        "tls": scheme in ("https", "tls"),
        # As curl: the server name is the URL's host (none for an IP address), whatever
        # Host header -H gives.
        "sni": args.sni if args.sni is not None else ("" if _is_ip(host) else host),
        "maxCandidates": args.max_candidates,
    }


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _admin_url(admin: str | None) -> str:
    base = admin or DEFAULT_ADMIN_ADDRESS
    if "://" not in base:
        base = "http://" + base
    return base.rstrip("/") + "/explain"


def explain_via_admin(admin: str | None, fields: Mapping[str, object]) -> dict[str, Any]:
    url = _admin_url(admin)
    data = json.dumps(fields).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    # Never through an http_proxy from the environment: the admin server is local.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10.0) as resp:
            body = resp.read(16 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        detail = exc.read(4096).decode("utf-8", "replace").strip()
        raise UsageError(f"gatewayd admin at {url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(
            f"cannot reach the gatewayd admin at {url}: {reason} "
            "(is `gatewayd run` serving? pass --admin URL, or --config PATH to explain "
            "against files)"
        ) from exc
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise UsageError(f"gatewayd admin at {url} answered something else than an object")
    return doc


def explain_via_config(args: argparse.Namespace, fields: Mapping[str, object]) -> dict[str, Any]:
    from gatewayd.pipeline import DEFAULT_ADDRESS_POOL, DEFAULT_CONTROLLER, ConfigPipeline
    from gatewayd.proxy.explain import ExplainError, explain_fields
    from gatewayd.routing.config.load import ConfigPathError

    pipeline = ConfigPipeline(
        list(args.config),
        controller_name=args.controller_name or DEFAULT_CONTROLLER,
        address_pool=args.address_pool or DEFAULT_ADDRESS_POOL,
    )
    try:
        built = pipeline.build()
    except ConfigPathError as exc:
        raise UsageError(str(exc)) from exc
    try:
        items = [status.as_item() for status in built.resolution.statuses]
        return explain_fields(built.snapshot, fields, status_items=items)
    except ExplainError as exc:
        raise UsageError(str(exc)) from exc


# --------------------------------------------------------------------------- text


def _w(out: TextIO, text: str = "") -> None:
    out.write(text + "\n")


def _conditions(c: Mapping[str, Any]) -> str:
    parts: list[str] = []
    grpc = c.get("grpcMethod")
    if isinstance(grpc, Mapping):
        parts.append(
            f"gRPC {grpc.get('type')} service={grpc.get('service') or '*'} "
            f"method={grpc.get('method') or '*'}"
        )
    else:
        path = c.get("path") or {}
        parts.append(f"{path.get('type')} {path.get('value')}")
        if c.get("method"):
            parts.append(f"method {c['method']}")
    for kind, key in (("header", "headers"), ("query", "queryParams")):
        for h in c.get(key) or ():
            op = "=" if h.get("type") == "Exact" else "~"
            parts.append(f"{kind} {h.get('name')}{op}{h.get('value')}")
    return ", ".join(parts)


def _spec(out: TextIO, spec: object) -> None:
    for s in spec if isinstance(spec, list) else [spec]:
        if s:
            _w(out, f"     spec: {s}")


def render_text(doc: Mapping[str, Any], out: TextIO, *, spec: bool = True) -> None:
    """The explanation as numbered steps; ``spec``: with the spec sentence of each."""

    def spec_lines(text: object) -> None:
        if spec:
            _spec(out, text)

    req = doc.get("request", {})
    tls = f", TLS SNI {req.get('sni') or '(none)'}" if req.get("tls") else ""
    query = f"?{req['query']}" if req.get("query") else ""
    _w(
        out,
        f"Request: {req.get('method')} {req.get('path')}{query}  Host {req.get('host') or '(none)'}"
        f"  port {req.get('port')}{tls}  (snapshot generation {doc.get('generation')})",
    )
    step = 0

    def head(title: str) -> None:
        nonlocal step
        step += 1
        _w(out)
        _w(out, f"{step}. {title}")

    port = doc.get("port")
    if isinstance(port, Mapping):
        head("Gateway address and port")
        chosen = port.get("chosen")
        if chosen:
            _w(
                out,
                f"   chosen  {chosen['address']}:{chosen['port']} {chosen['protocol']}"
                f"  Gateway {chosen['gateway']}  listeners {', '.join(chosen['listeners'])}",
            )
        for o in port.get("others", []):
            _w(
                out,
                f"   lost    {o['address']}:{o['port']} {o['protocol']}  Gateway {o['gateway']}"
                f"  listeners {', '.join(o['listeners'])}: {o['lost']}",
            )
        if port.get("problem"):
            _w(out, f"   {port['problem']}")
        spec_lines(port.get("spec"))
    tls_doc = doc.get("tls")
    if isinstance(tls_doc, Mapping):
        head(f"TLS: server name {tls_doc.get('sni', req.get('sni')) or '(none)'}")
        for x in tls_doc.get("listeners", []):
            names = x.get("listener") or ", ".join(x.get("listeners", []))
            mode = f", {x['mode']}" if x.get("mode") else ""
            _w(out, f"   listener {names} (hostname {x['hostname']}{mode}): {x['verdict']}")
        for r in tls_doc.get("routes", []):
            why = f": {r['why']}" if r.get("why") else ""
            _w(
                out,
                f"   [{r['result']}] {r['route']} hostnames {', '.join(r['hostnames'])}{why}",
            )
        spec_lines(tls_doc.get("spec"))
    listener = doc.get("listener")
    if isinstance(listener, Mapping):
        head(f"Listener, by Host {listener.get('by') or '(none)'}")
        for x in listener.get("listeners", []):
            _w(out, f"   {', '.join(x['listeners'])} (hostname {x['hostname']}): {x['verdict']}")
        spec_lines(listener.get("spec"))
    rules = doc.get("rules")
    if isinstance(rules, Mapping):
        head("Route hostnames (host groups)")
        for g in rules.get("hostGroups", []):
            _w(out, f"   {g['hostname']} ({g['candidates']} matches): {g['verdict']}")
        spec_lines(rules.get("hostSpec"))
        head("Rule matches, in precedence order")
        for c in rules.get("candidates", []):
            name = f" ({c['ruleName']})" if c.get("ruleName") else ""
            label = f"{c['route']} rule {c['rule']}{name} match {c['match']}"
            _w(out, f"   [{c['result']}] {label}: {_conditions(c)}")
            if c["result"] == "failed":
                _w(out, f"        {c['matcher']} failed: {c['why']}")
            elif c["result"] == "lost":
                _w(out, f"        matched, but loses on {c['decidedBy']}")
        if not rules.get("candidates"):
            _w(out, "   (none: no route hostname of this listener matches the Host)")
        if rules.get("omitted"):
            _w(out, f"   ... {rules['omitted']} more not listed (--max-candidates)")
        spec_lines(rules.get("spec"))
        spec_lines(rules.get("tieSpec"))
    chosen = doc.get("chosen")
    rule = chosen.get("rule") if isinstance(chosen, Mapping) else None
    if isinstance(rule, Mapping) and not str(rule.get("route")).startswith("TLSRoute"):
        head("Filters, in the order applied")
        for f in rule.get("filters", []):
            _w(out, f"   {f['filter']}: {f['effect']}")
        if not rule.get("filters"):
            _w(out, "   (none)")
        spec_lines(rule.get("filtersSpec"))
    if isinstance(rule, Mapping):
        head(f"Backends (total weight {rule.get('totalWeight')})")
        for b in rule.get("backends", []):
            eligible = "eligible" if b["eligible"] else "NOT eligible"
            eps = ", ".join(b["endpoints"]) or "-"
            _w(
                out,
                f"   {b['name']}  weight {b['weight']} ({b['share']:.0%})  {eligible}: "
                f"{b['why']}  endpoints {eps}",
            )
            for f in b.get("filters", []):
                _w(out, f"        {f}")
        if not rule.get("backends"):
            _w(out, "   (none)")
        spec_lines(rule.get("backendsSpec"))
    missing = doc.get("notServed")
    if missing:
        head("Not served on this Gateway (from status)")
        for m in missing:
            message = f": {m['message']}" if m.get("message") else ""
            _w(out, f"   {m['object']}: {m['condition']} False ({m['reason']}){message}")
    _w(out)
    outcome = doc.get("outcome") or {}
    status = outcome.get("status")
    status_text = f" {status}" if status is not None else ""
    if doc.get("routed") and isinstance(chosen, Mapping):
        _w(
            out,
            f"Result: routed to {chosen.get('route')} rule {rule and rule.get('rule')}"
            f" via listener {chosen.get('listener')}:{status_text} {outcome.get('reason')}",
        )
    else:
        _w(out, f"Result: not routed:{status_text} {outcome.get('reason')}")
    if outcome.get("spec"):
        spec_lines(outcome["spec"])
    dp = doc.get("dataPlane")
    if isinstance(dp, Mapping) and not dp.get("agrees"):
        _w(out, f"WARNING: the data plane's lookup chose {dp.get('routeId')}: report this bug")


def explain_main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out if out is not None else sys.stdout
    try:
        if not 1 <= args.max_candidates <= 1000:
            raise UsageError("--max-candidates: 1..1000")
        if args.config is None and (args.controller_name or args.address_pool):
            raise UsageError("--controller-name and --address-pool are used with --config")
        fields = request_fields(args)
        doc = (
            explain_via_config(args, fields)
            if args.config is not None
            else explain_via_admin(args.admin, fields)
        )
    except UsageError as exc:
        print(f"gatewayd explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if doc.get("ambiguous"):
        print(f"gatewayd explain: {doc['outcome']['reason']}", file=sys.stderr)
        return EXIT_USAGE
    if args.output == "json":
        json.dump(doc, out, indent=2)
        out.write("\n")
    else:
        render_text(doc, out, spec=not args.no_spec)
    return EXIT_ROUTED if doc.get("routed") else EXIT_NOT_ROUTED


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gatewayd explain")
    add_arguments(p)
    return explain_main(p.parse_args(argv))
