"""Why a request goes where it goes: the trace behind ``gatewayd explain``.

Walks the same compiled tables the data plane reads (``table.HTTPRouteTable``,
``table.SNITable``) with the same selection code (``HostIndex.select``,
``candidates.values_hold``, the candidates' precompiled regexes and ranks) and, at each
step, records what was chosen, what lost and why.  The rule it reports as chosen is the
one ``RouteTable.lookup`` / ``SNITable.lookup_tls`` returns for the request (asked here,
once); the trace of the candidates is computed beside it and must agree: ``dataPlane``
says whether it does (the tests hold both to real requests through ``gatewayd run``).

Output is plain JSON-ready data; ``gatewayd/explaincli.py`` renders it as text.

Pure module: no I/O.  Off the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gatewayd.routing.snapshot.candidates import (
    GRPC_KEY_CRITERIA,
    HTTP_KEY_CRITERIA,
    Candidate,
    first_failure,
    parse_query,
)
from gatewayd.routing.snapshot.compiled import ListenerPort, Snapshot
from gatewayd.routing.snapshot.explain_rule import SPEC, explain_rule
from gatewayd.routing.snapshot.hostnames import hostname_matches, hostname_rank
from gatewayd.routing.snapshot.table import HTTPRouteTable, ListenerRoutes, SNITable, TLSListener

WILDCARD_ADDRESSES = ("0.0.0.0", "::")

Doc = dict[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExplainRequest:
    """A request as the data plane sees it once its head is parsed.

    ``host``: lower-case, without port; ``headers``: lower-case names, repeated fields
    joined with "," (as the data plane hands them to ``lookup``); ``address``: the
    address the connection arrives at (None: whichever address serves ``port``, if only
    one does); ``sni``: the ClientHello server name ("" none) when ``tls``."""

    port: int
    host: str = ""
    address: str | None = None
    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    tls: bool = False
    sni: str = ""

    def to_json(self) -> Doc:
        out: Doc = {
            "address": self.address,
            "port": self.port,
            "host": self.host,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": dict(self.headers),
            "tls": self.tls,
        }
        if self.tls:
            out["sni"] = self.sni
        return out


def _hn(hostname: str | None) -> str:
    return hostname if hostname is not None else "*"


def _port_json(lp: ListenerPort) -> Doc:
    return {
        "gateway": f"{lp.gateway_namespace}/{lp.gateway_name}",
        "address": lp.address,
        "port": lp.port,
        "protocol": lp.protocol,
        "listeners": list(lp.listener_names),
    }


# --------------------------------------------------------------------------- step 1: port


def _select_port(snapshot: Snapshot, req: ExplainRequest) -> tuple[ListenerPort | None, Doc]:
    """The socket the connection reaches: the Gateway address and port."""
    ports = list(snapshot.ports.values())
    same = [lp for lp in ports if lp.port == req.port]
    chosen: ListenerPort | None = None
    problem = ""
    if req.address is not None:
        exact = [lp for lp in same if lp.address == req.address]
        wild = [lp for lp in same if lp.address in WILDCARD_ADDRESSES]
        pick = exact or wild
        chosen = pick[0] if pick else None
        if chosen is None:
            problem = f"no Gateway listens on {req.address} port {req.port}"
            if same:
                served = ", ".join(sorted(lp.address for lp in same))
                problem += f" (port {req.port} is served on {served}: connect there)"
    elif len(same) == 1:
        chosen = same[0]
    elif same:
        problem = (
            f"{len(same)} Gateway addresses serve port {req.port} "
            f"({', '.join(sorted(lp.address for lp in same))}): say which with --address"
        )
    else:
        problem = f"no Gateway listens on port {req.port}"
    others: list[Doc] = []
    for lp in ports:
        if lp is chosen:
            continue
        doc = _port_json(lp)
        if lp.port != req.port:
            doc["lost"] = f"port {lp.port}, not {req.port}"
        elif chosen is not None or req.address is not None:
            doc["lost"] = f"address {lp.address}, not {req.address or (chosen and chosen.address)}"
        else:
            doc["lost"] = "ambiguous: several addresses serve this port"
        others.append(doc)
    section: Doc = {
        "chosen": _port_json(chosen) if chosen is not None else None,
        "others": others,
        "spec": SPEC["port"],
    }
    if problem:
        section["problem"] = problem
        section["ambiguous"] = req.address is None and len(same) > 1
    return chosen, section


# --------------------------------------------------------------------------- step 2: listener


def _host_verdict(hostname: str | None, host: str, chosen: bool, winner: str | None) -> str:
    if chosen:
        if hostname is None:
            return f"chosen: no hostname, matches any host, and none more specific matches {host!r}"
        return f"chosen: {hostname!r} is the most specific hostname matching {host!r}"
    if hostname is None or hostname_matches(hostname, host):
        return f"lost: matches {host!r}, but {_hn(winner)!r} is more specific"
    return f"lost: {hostname!r} does not match {host!r}"


def _http_listeners(table: HTTPRouteTable, name: str) -> tuple[Doc, ListenerRoutes | None]:
    """The listener of the port that ``name`` (Host, or SNI) selects, and why others lost."""
    chosen = table.listener_for(name)
    winner = chosen.hostname if chosen is not None else None
    rows: list[Doc] = [
        {
            "listeners": list(lr.names),
            "hostname": _hn(lr.hostname),
            "verdict": _host_verdict(lr.hostname, name, lr is chosen, winner),
        }
        for lr in table.listeners()
    ]
    return {"by": name, "listeners": rows, "spec": SPEC["listener"]}, chosen


# --------------------------------------------------------------------------- step 3: rules


def _decided_by(winner: Candidate, loser: Candidate) -> str:
    """The first precedence criterion on which ``winner`` beats ``loser``."""
    names = GRPC_KEY_CRITERIA if winner.route_kind == "GRPCRoute" else HTTP_KEY_CRITERIA
    for i, (a, b) in enumerate(zip(winner.key, loser.key, strict=True)):
        if a != b:
            return names[i]
    return "same key (listed first)"


def _candidate_json(c: Candidate) -> Doc:
    out: Doc = {
        "route": f"{c.route_kind} {c.route_name}",
        "rule": c.rule_index,
        "match": c.match_index,
        "rank": c.rank,
    }
    if c.hit.rule.rule_name is not None:
        out["ruleName"] = c.hit.rule.rule_name
    out.update(c.summary)
    return out


def _explain_rules(
    listener: ListenerRoutes, req: ExplainRequest, max_candidates: int
) -> tuple[Doc, Candidate | None]:
    host = req.host
    group = listener.groups.select(host)
    winner_name = group.hostname if group is not None else None
    groups: list[Doc] = [
        {
            "hostname": _hn(g.hostname),
            "candidates": len(g.candidates),
            "verdict": _host_verdict(g.hostname, host, g is group, winner_name),
        }
        for g in listener.ordered_groups()
    ]
    section: Doc = {"hostGroups": groups, "hostSpec": SPEC["route-hostname"]}
    if group is None:
        section["candidates"] = []
        return section, None
    params = parse_query(req.query)
    winner: Candidate | None = None
    rows: list[Doc] = []
    for c in group.candidates:  # rank order: the order lookup decides in
        fail = first_failure(c, req.path, req.method, req.headers, params)
        if fail is None and winner is None:
            winner = c
        if len(rows) >= max_candidates:
            if winner is not None:
                break
            continue
        row = _candidate_json(c)
        if fail is not None:
            row["result"] = "failed"
            row["matcher"], row["why"] = fail
        elif c is winner:
            row["result"] = "chosen"
        else:
            assert winner is not None
            row["result"] = "lost"
            row["decidedBy"] = _decided_by(winner, c)
        rows.append(row)
    if winner is not None and not any(r.get("result") == "chosen" for r in rows):
        row = _candidate_json(winner)
        row["result"] = "chosen"
        rows.append(row)
    section["candidates"] = rows
    section["omitted"] = len(group.candidates) - len(rows)
    kinds = {c.route_kind for c in group.candidates}
    section["spec"] = [
        SPEC["match-and"],
        *([SPEC["precedence-http"]] if "HTTPRoute" in kinds else []),
        *([SPEC["precedence-grpc"]] if "GRPCRoute" in kinds else []),
    ]
    section["tieSpec"] = SPEC["ties"]
    return section, winner


# --------------------------------------------------------------------------- TLS


def _tls_listener_for(table: SNITable, sni: str) -> TLSListener | None:
    """The TLS listener ``lookup_tls`` selects: its ``HostIndex`` over listener hostnames."""
    found = table.lookup_tls(sni)
    if found is not None:
        return found.listener
    best: TLSListener | None = None
    name = sni.lower()
    for listener in table.listeners():  # most specific first
        h = listener.hostname
        if (h is None or hostname_matches(h, name)) and (
            best is None or hostname_rank(h) > hostname_rank(best.hostname)
        ):
            best = listener
    return best


def _explain_sni(table: SNITable, sni: str) -> tuple[Doc, Doc | None]:
    """TLS listeners and TLSRoutes of a port, for one server name."""
    name = sni.lower()
    found = table.lookup_tls(name)
    chosen = _tls_listener_for(table, name)
    winner_h = chosen.hostname if chosen is not None else None
    listeners = [
        {
            "listener": listener.name,
            "hostname": _hn(listener.hostname),
            "mode": listener.mode,
            "verdict": _host_verdict(
                listener.hostname, name or "(no SNI)", listener is chosen, winner_h
            ),
        }
        for listener in table.listeners()
    ]
    routes: list[Doc] = []
    if chosen is not None:
        matching = [
            (h, r)
            for r in chosen.routes
            for h in (r.hostnames or (None,))
            if h is None or hostname_matches(h, name)
        ]
        best_h = max((hostname_rank(h) for h, _ in matching), default=None)
        ranked = sorted(
            (r for h, r in matching if hostname_rank(h) == best_h), key=lambda r: r.order
        )
        first = ranked[0] if ranked else None
        for r in chosen.routes:
            doc: Doc = {
                "route": f"TLSRoute {r.order[1]}",
                "hostnames": list(r.hostnames) or ["*"],
            }
            if found is not None and r.hit is found.hit:
                doc["result"] = "chosen"
            elif not any(rr is r for _, rr in matching):
                doc["result"] = "failed"
                doc["why"] = f"no hostname of the route matches {name or '(no SNI)'!r}"
            elif r not in ranked:
                doc["result"] = "lost"
                doc["why"] = "another route has a more specific matching hostname"
            else:
                doc["result"] = "lost"
                doc["why"] = (
                    "older route wins"
                    if first and first.order[0] != r.order[0]
                    else '"{namespace}/{name}" order'
                )
            routes.append(doc)
    section: Doc = {
        "sni": name,
        "listeners": listeners,
        "routes": routes,
        "spec": [SPEC["listener"], SPEC["tls-route"]],
    }
    if found is None:
        return section, None
    return section, {
        "route": f"TLSRoute {found.hit.rule.route_namespace}/{found.hit.rule.route_name}",
        "listener": found.listener.name,
        "mode": found.listener.mode,
        "rule": explain_rule(found.hit, req_method="", req_headers={}),
    }


# --------------------------------------------------------------------------- entry point


def explain(snapshot: Snapshot, req: ExplainRequest, *, max_candidates: int = 100) -> Doc:
    """The explanation of ``req`` against ``snapshot``.

    ``routed``: a rule (or TLSRoute) was chosen; otherwise ``outcome`` says what the
    data plane answers (404, 421, connection closed) and why.  ``max_candidates`` bounds
    the candidates listed (the chosen one always is); ``omitted`` counts the others."""
    doc: Doc = {"request": req.to_json(), "generation": snapshot.generation, "routed": False}
    lp, port_section = _select_port(snapshot, req)
    doc["port"] = port_section
    if lp is None:
        doc["outcome"] = {"status": None, "reason": str(port_section.get("problem"))}
        if port_section.get("ambiguous"):
            doc["ambiguous"] = True
        return doc
    table = lp.table
    if isinstance(table, SNITable) or (
        req.tls and lp.tls_table is not None and lp.tls_table.selects_tls(req.sni) is True
    ):
        sni_table = table if isinstance(table, SNITable) else lp.tls_table
        assert sni_table is not None
        if not req.tls:
            doc["outcome"] = {
                "status": None,
                "reason": "the port serves TLS listeners only: "
                "a connection without a TLS ClientHello is closed",
            }
            return doc
        section, tls_chosen = _explain_sni(sni_table, req.sni)
        if isinstance(table, HTTPRouteTable):
            # HTTPS listeners sharing the port lost to the TLS listener the SNI chose.
            rows = section["listeners"]
            assert isinstance(rows, list)
            tls_listener = _tls_listener_for(sni_table, req.sni)
            sni_winner = tls_listener.hostname if tls_listener is not None else None
            rows.extend(
                {
                    "listeners": list(lr.names),
                    "hostname": _hn(lr.hostname),
                    "verdict": _host_verdict(lr.hostname, req.sni, False, sni_winner),
                }
                for lr in table.listeners()
            )
        doc["tls"] = section
        if not req.sni:
            # TLSRoutes match on SNI only: without it nothing can match (tlsroute.py).
            doc["outcome"] = {
                "status": None,
                "reason": "a ClientHello without server name "
                "matches no TLSRoute: the connection is closed",
            }
            return doc
        if tls_chosen is None:
            doc["outcome"] = {
                "status": None,
                "reason": "no TLS listener or TLSRoute matches "
                f"the server name {req.sni or '(none)'!r}: the connection is closed",
            }
            return doc
        doc["routed"] = True
        doc["chosen"] = tls_chosen
        doc["outcome"] = {"status": None, "reason": "the TLS stream goes to the TLSRoute backend"}
        return doc
    if not isinstance(table, HTTPRouteTable):
        doc["outcome"] = {"status": None, "reason": f"a {type(table).__name__} port"}
        return doc
    if req.tls != bool(lp.terminate):
        doc["outcome"] = {
            "status": None,
            "reason": "the port terminates TLS: a cleartext request fails the handshake"
            if lp.terminate
            else "the port speaks cleartext HTTP: a TLS handshake fails",
        }
        return doc
    if req.tls:
        tls_doc, by_sni = _http_listeners(table, req.sni)
        if lp.tls_table is not None:
            # TLS listeners sharing the port lost to the HTTPS listener the SNI chose.
            sni_winner = by_sni.hostname if by_sni is not None else None
            rows = tls_doc["listeners"]
            assert isinstance(rows, list)
            rows.extend(
                {
                    "listeners": [t.name],
                    "hostname": _hn(t.hostname),
                    "mode": t.mode,
                    "verdict": _host_verdict(t.hostname, req.sni, False, sni_winner),
                }
                for t in lp.tls_table.listeners()
            )
        tls_doc["spec"] = [SPEC["listener"], SPEC["misdirected"]]
        doc["tls"] = tls_doc
        # The data plane's test (exchange.py): the Host must select the listener the
        # SNI selected, and must not select a TLS listener sharing the port.
        misdirected = table.misdirected(req.sni, req.host) or (
            lp.tls_table is not None and lp.tls_table.selects_tls(req.host) is True
        )
        if by_sni is None:
            doc["outcome"] = {
                "status": None,
                "reason": "no HTTPS listener matches the server "
                f"name {req.sni or '(none)'!r}: the handshake fails",
            }
            return doc
        if misdirected:
            doc["outcome"] = {
                "status": 421,
                "reason": f"Host {req.host!r} selects another "
                f"listener than the server name {req.sni!r} (misdirected request)",
            }
            return doc
    section, listener = _http_listeners(table, req.host)
    doc["listener"] = section
    if listener is None:
        doc["outcome"] = {
            "status": 404,
            "reason": f"no listener of the port matches host {req.host!r}",
            "spec": SPEC["no-route"],
        }
        return doc
    rules, winner = _explain_rules(listener, req, max_candidates)
    doc["rules"] = rules
    # The data plane's own answer, from the function that serves requests.
    hit = table.lookup(req.host, req.method, req.path, req.query, req.headers)
    agrees = (hit is None and winner is None) or (winner is not None and hit is winner.hit)
    doc["dataPlane"] = {
        "routeId": hit.rule.route_id if hit is not None else None,
        "agrees": agrees,
    }
    if hit is None:
        doc["outcome"] = {
            "status": 404,
            "reason": "no rule of the chosen host group matches"
            if rules["candidates"]
            else f"no route of listener {', '.join(listener.names)} accepts host {req.host!r}",
            "spec": SPEC["no-route"],
        }
        return doc
    doc["routed"] = True
    chosen: Doc = {
        "route": f"{hit.rule.route_kind} {hit.rule.route_namespace}/{hit.rule.route_name}",
        "routeId": hit.rule.route_id,
        "listener": hit.listener_name,
        "rule": explain_rule(hit, req_method=req.method, req_headers=req.headers),
    }
    if winner is not None:
        chosen["match"] = winner.match_index
    doc["chosen"] = chosen
    doc["outcome"] = chosen["rule"]["outcome"]  # type: ignore[index]
    return doc
