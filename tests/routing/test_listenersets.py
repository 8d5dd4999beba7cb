"""ListenerSet: loading (admission rules) and status (precedence, references, parents)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from status_builders import (
    backend,
    config,
    gateway,
    grant,
    http_route,
    listener,
    listener_set,
    namespace,
    parent,
    terminate,
    tls_secret,
)

from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import load_documents
from gatewayd.routing.control.resolve import resolve

NOW = "2024-01-01T00:00:00Z"

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra}
spec:
  gatewayClassName: gatewayd
  allowedListeners: %s
  listeners: [{name: http, port: 80, protocol: HTTP}]
"""

LISTENER_SET = """\
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: ls, namespace: team}
spec: %s
"""


def load(*texts: str) -> tuple[m.Config, list[str]]:
    result = load_documents([("f.yaml", "---\n".join(texts))])
    return result.config, [str(p) for p in result.problems]


# --------------------------------------------------------------------------- loading


def test_listener_set_and_allowed_listeners_are_read() -> None:
    cfg, problems = load(
        GATEWAY % "{namespaces: {from: Selector, selector: {matchLabels: {team: 'yes'}}}}",
        LISTENER_SET
        % """
  parentRef: {name: gw, namespace: infra}
  listeners:
  - {name: web, port: 8080, protocol: HTTP, hostname: web.example.com}
  - name: tls
    port: 8443
    protocol: HTTPS
    tls: {certificateRefs: [{name: cert}]}
""",
    )
    assert problems == []
    (gw,) = cfg.gateways
    assert gw.allowed_listeners.namespaces_from == "Selector"
    assert gw.allowed_listeners.selector is not None
    assert gw.allowed_listeners.selector.match_labels == (("team", "yes"),)
    (ls,) = cfg.listener_sets
    assert ls.parent_ref == m.ParentGatewayReference(name="gw", namespace="infra")
    assert [(li.name, li.port, li.protocol) for li in ls.listeners] == [
        ("web", 8080, "HTTP"),
        ("tls", 8443, "HTTPS"),
    ]
    # the ListenerSet's namespace is implied (and so is the parent's)
    assert {"team", "infra"} <= {n.meta.name for n in cfg.namespaces}


def test_allowed_listeners_default_to_none() -> None:
    cfg, problems = load(GATEWAY % "{}")
    assert problems == []
    assert cfg.gateways[0].allowed_listeners == m.AllowedListeners(namespaces_from="None")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("{listeners: [{name: a, port: 80, protocol: HTTP}]}", "spec.parentRef: is required"),
        ("{parentRef: {name: gw}}", "spec.listeners: is required"),
        (
            "{parentRef: {name: gw}, listeners: [{name: a, port: 80, protocol: HTTP},"
            " {name: a, port: 81, protocol: HTTP}]}",
            "listener names must be unique within the ListenerSet",
        ),
        (
            "{parentRef: {name: gw}, listeners: [{name: a, port: 80, protocol: HTTP,"
            " tls: {mode: Passthrough}}]}",
            "must not be specified for protocol HTTP",
        ),
        ("{parentRef: {name: gw}, listeners: [{name: a, port: 0, protocol: HTTP}]}", "port"),
    ],
)
def test_invalid_listener_sets_are_problems(spec: str, fragment: str) -> None:
    cfg, problems = load(LISTENER_SET % spec)
    assert cfg.listener_sets == ()
    assert any(fragment in p and "ListenerSet team/ls" in p for p in problems), problems


def test_invalid_allowed_listeners_from_is_a_problem() -> None:
    _, problems = load(GATEWAY % "{namespaces: {from: Everyone}}")
    assert any("allowedListeners.namespaces.from" in p for p in problems), problems


# --------------------------------------------------------------------------- status


def allowing(gw: m.Gateway, from_: str = "All") -> m.Gateway:
    return replace(gw, allowed_listeners=m.AllowedListeners(namespaces_from=from_))


def statuses(cfg: m.Config) -> dict[tuple[str, str, str], Any]:
    res = resolve(cfg, now=NOW)
    return {(s.kind, s.namespace, s.name): s.status for s in res.statuses}


def cond(obj: Any, ctype: str) -> tuple[str, str]:
    (c,) = [c for c in obj["conditions"] if c["type"] == ctype]
    return c["status"], c["reason"]


def listener_status(status: Any, name: str) -> Any:
    (li,) = [li for li in status["listeners"] if li["name"] == name]
    return li


def test_older_listener_set_wins_whatever_its_name() -> None:
    cfg = config(
        allowing(gateway("gw")),
        listener_set("a-newer", "gw", listener("x", 80, hostname="x.test"), creation_timestamp="2"),
        listener_set("z-older", "gw", listener("x", 80, hostname="x.test"), creation_timestamp="1"),
    )
    st = statuses(cfg)
    assert cond(st[("ListenerSet", "default", "z-older")], "Accepted") == ("True", "Accepted")
    newer = st[("ListenerSet", "default", "a-newer")]
    assert cond(newer, "Accepted") == ("False", "ListenersNotValid")
    assert cond(listener_status(newer, "x"), "Conflicted") == ("True", "HostnameConflict")
    assert st[("Gateway", "default", "gw")]["attachedListenerSets"] == 1


def test_same_creation_time_orders_by_namespace_then_name() -> None:
    cfg = config(
        allowing(gateway("gw")),
        listener_set("b", "gw", listener("x", 80, hostname="x.test"), parent_namespace="default"),
        listener_set(
            "a",
            "gw",
            listener("x", 80, hostname="x.test"),
            namespace="zz",
            parent_namespace="default",
        ),
        listener_set(
            "c",
            "gw",
            listener("x", 80, hostname="x.test"),
            namespace="aa",
            parent_namespace="default",
        ),
    )
    st = statuses(cfg)
    assert cond(st[("ListenerSet", "aa", "c")], "Accepted")[0] == "True"
    assert cond(st[("ListenerSet", "default", "b")], "Accepted")[0] == "False"
    assert cond(st[("ListenerSet", "zz", "a")], "Accepted")[0] == "False"


def test_parent_not_accepted_and_not_programmed() -> None:
    refused = allowing(gateway("bad", listener("t", 9000, "example.com/SCTP")))
    cfg = config(refused, listener_set("ls", "bad", listener("x", 80)))
    st = statuses(cfg)
    assert cond(st[("ListenerSet", "default", "ls")], "Accepted") == ("False", "ParentNotAccepted")
    # A Gateway whose address cannot be used is accepted but not programmed.
    remote = allowing(gateway("remote", addresses=["192.0.2.1"]))
    res = resolve(
        config(remote, listener_set("ls", "remote", listener("x", 81))),
        now=NOW,
        is_local_address=lambda a: a.startswith("127."),
    )
    (ls,) = [s.status for s in res.statuses if s.kind == "ListenerSet"]
    assert cond(ls, "Accepted") == ("True", "Accepted")
    assert cond(ls, "Programmed") == ("False", "ParentNotProgrammed")
    assert cond(listener_status(ls, "x"), "Programmed") == ("False", "Pending")
    assert res.listeners == ()


def test_gateway_grants_are_not_inherited_by_listener_sets() -> None:
    ref = m.SecretObjectReference(name="cert", namespace="vault")
    cfg = config(
        namespace("vault"),
        allowing(gateway("gw", listener("https", 443, "HTTPS", "gw.test", tls=terminate(ref)))),
        listener_set("ls", "gw", listener("https", 443, "HTTPS", "ls.test", tls=terminate(ref))),
        tls_secret("cert", "vault"),
        grant("vault", from_kind="Gateway", from_namespace="default", to_kind="Secret"),
    )
    st = statuses(cfg)
    gw = st[("Gateway", "default", "gw")]
    assert cond(listener_status(gw, "https"), "ResolvedRefs") == ("True", "ResolvedRefs")
    ls = st[("ListenerSet", "default", "ls")]
    assert cond(listener_status(ls, "https"), "ResolvedRefs") == ("False", "RefNotPermitted")
    assert "ListenerSets from 'default'" in listener_status(ls, "https")["conditions"][2]["message"]


def test_listener_set_certificate_in_its_own_namespace_needs_no_grant() -> None:
    cfg = config(
        allowing(gateway("gw")),
        listener_set(
            "ls",
            "gw",
            listener("https", 443, "HTTPS", "ls.test", tls=terminate("cert")),
            namespace="team",
            parent_namespace="default",
        ),
        tls_secret("cert", "team"),
    )
    res = resolve(cfg, now=NOW)
    (binding,) = [b for b in res.listeners if b.port == 443]
    assert binding.listener_name == "team/ls/https"
    assert binding.certificates


def test_allowed_routes_same_means_the_listener_sets_namespace() -> None:
    cfg = config(
        allowing(gateway("gw", namespace="infra")),
        listener_set(
            "ls",
            "gw",
            listener("x", 80, hostname="x.test"),
            namespace="team",
            parent_namespace="infra",
        ),
        http_route(
            "in-team",
            parent("ls", "team", kind="ListenerSet"),
            namespace="team",
            backends=[backend()],
        ),
        http_route(
            "in-infra",
            parent("ls", "team", kind="ListenerSet"),
            namespace="infra",
            backends=[backend()],
        ),
    )
    st = statuses(cfg)
    assert cond(st[("HTTPRoute", "team", "in-team")]["parents"][0], "Accepted")[0] == "True"
    infra = st[("HTTPRoute", "infra", "in-infra")]["parents"][0]
    assert cond(infra, "Accepted") == ("False", "NotAllowedByListeners")
    assert listener_status(st[("ListenerSet", "team", "ls")], "x")["attachedRoutes"] == 1


def test_listener_set_of_another_controllers_gateway_gets_no_status() -> None:
    other = m.GatewayClass(
        meta=m.Meta(namespace="", name="other"), controller_name="example.com/other"
    )
    cfg = config(
        allowing(gateway("theirs", class_name="other")),
        listener_set("ls", "theirs", listener("x", 80)),
        http_route("r", parent("ls", kind="ListenerSet")),
        classes=[other],
    )
    res = resolve(cfg, now=NOW)
    assert res.statuses == ()
    assert res.problems == ()
    assert res.listeners == ()


def test_bind_failures_reach_the_listener_set_status() -> None:
    from gatewayd.routing.control.gateways import with_listener_failures

    cfg = config(
        allowing(gateway("gw", listener("own", 80, hostname="own.test"))),
        listener_set("ls", "gw", listener("x", 8080), listener("y", 80, hostname="y.test")),
    )
    res = resolve(cfg, now=NOW)
    names = sorted(b.listener_name for b in res.listeners)
    assert names == ["default/ls/x", "default/ls/y", "own"]
    failed = with_listener_failures(res, {("default", "gw", "default/ls/x"): "address in use"})
    assert [b.listener_name for b in failed.listeners if b.port == 8080] == []
    (ls,) = [s.status for s in failed.statuses if s.kind == "ListenerSet"]
    assert cond(listener_status(ls, "x"), "Programmed") == ("False", "Invalid")
    assert cond(listener_status(ls, "y"), "Programmed") == ("True", "Programmed")
    assert cond(ls, "Programmed") == ("True", "Programmed")  # "y" still serves
    (gw,) = [s.status for s in failed.statuses if s.kind == "Gateway"]
    assert cond(gw, "Programmed") == ("True", "Programmed")
    every = with_listener_failures(
        res,
        {("default", "gw", f"default/ls/{n}"): "address in use" for n in ("x", "y")},
    )
    (ls,) = [s.status for s in every.statuses if s.kind == "ListenerSet"]
    assert cond(ls, "Programmed") == ("False", "Invalid")


def test_an_invalid_listener_set_is_reported_in_its_own_status() -> None:
    gateway_class = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n"
        "metadata: {name: gatewayd}\nspec: {controllerName: gatewayd.dev/gateway-controller}\n"
    )
    route = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: team}
spec: {parentRefs: [{kind: ListenerSet, name: ls}]}
"""
    cfg, problems = load(
        gateway_class,
        GATEWAY % "{namespaces: {from: All}}",
        LISTENER_SET
        % (
            "{parentRef: {name: gw, namespace: infra},"
            " listeners: [{name: a, port: 0, protocol: HTTP}]}"
        ),
        route,
    )
    assert any("ListenerSet team/ls: spec.listeners[0].port" in p for p in problems), problems
    assert cfg.listener_sets == ()
    assert [r.kind for r in cfg.rejected] == [m.Kind.LISTENER_SET]
    res = resolve(cfg, now=NOW)
    st = {(s.kind, s.name): s.status for s in res.statuses}
    ls = st[("ListenerSet", "ls")]
    assert cond(ls, "Accepted") == ("False", "Invalid")
    assert cond(ls, "Programmed") == ("False", "Invalid")
    assert "spec.listeners[0].port" in ls["conditions"][0]["message"]
    assert ls["listeners"] == []
    # It exists: a route naming it gets no "not found" problem, and nothing attaches.
    assert [str(p) for p in res.problems] == []
    assert st[("Gateway", "gw")].get("attachedListenerSets") == 0


def test_an_invalid_listener_set_of_another_gateway_gets_no_status() -> None:
    cfg, _ = load(LISTENER_SET % "{parentRef: {name: elsewhere}, listeners: []}")
    assert [r.kind for r in cfg.rejected] == [m.Kind.LISTENER_SET]
    assert resolve(cfg, now=NOW).statuses == ()


def test_an_invalid_route_to_a_listener_set_is_reported_for_it() -> None:
    gateway_class = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\n"
        "metadata: {name: gatewayd}\nspec: {controllerName: gatewayd.dev/gateway-controller}\n"
    )
    bad_route = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: team}
spec:
  parentRefs: [{kind: ListenerSet, name: ls}, {kind: ListenerSet, name: unknown}]
  rules: [{matches: [{path: {type: PathPrefix, value: no-slash}}]}]
"""
    cfg, _ = load(
        gateway_class,
        GATEWAY % "{namespaces: {from: All}}",
        LISTENER_SET
        % (
            "{parentRef: {name: gw, namespace: infra},"
            " listeners: [{name: a, port: 80, protocol: HTTP}]}"
        ),
        bad_route,
    )
    res = resolve(cfg, now=NOW)
    (route,) = [s.status for s in res.statuses if s.kind == "HTTPRoute"]
    (entry,) = route["parents"]
    assert entry["parentRef"]["kind"] == "ListenerSet"
    assert entry["parentRef"]["name"] == "ls"
    assert cond(entry, "Accepted") == ("False", "UnsupportedValue")


def test_thousands_of_listener_sets_resolve_in_linear_time() -> None:
    """A Gateway open to every namespace may take any number of ListenerSets: each
    listener is checked against those before it by lookups, never by a scan (5000 on one
    port took 0.4 s here; a scan of every earlier listener is 12.5 million checks)."""
    import time

    from gatewayd.routing.compile.compiler import compile_snapshot

    n = 5000
    sets = [
        listener_set(f"ls-{i:05d}", "gw", listener("x", 80, hostname=f"h{i}.test"))
        for i in range(n)
    ]
    late = listener_set("zz-late", "gw", listener("x", 80, hostname="h7.test"))
    cfg = config(allowing(gateway("gw")), *sets, late)
    started = time.perf_counter()
    res = resolve(cfg, now=NOW)
    compile_snapshot(res, generation=1)
    elapsed = time.perf_counter() - started
    assert len(res.listeners) == n + 1  # the Gateway's listener and every set's
    st = {(s.kind, s.name): s.status for s in res.statuses}
    assert cond(st[("ListenerSet", "zz-late")], "Accepted") == ("False", "ListenersNotValid")
    assert st[("Gateway", "gw")]["attachedListenerSets"] == n
    assert elapsed < 10.0, elapsed
