"""Session persistence through ``gatewayd run`` (issue 14): one Service with three
endpoints (three ``gatewayd echo`` pods), counted by the echo's "pod" field.

A request carrying the session cookie (or header) reaches the endpoint the session is
pinned to; without it requests spread.  Timeouts expire the session, a reload and a
restart (same ``--session-secret-file``) keep it, any worker honours it, and a killed
endpoint moves it (a new token).
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from e2e_kit import (
    LOCALHOST,
    Doc,
    EchoBackend,
    Gatewayd,
    Reply,
    assert_condition,
    backend_ref,
    deadline_loop,
    endpoint_slice,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    read_response_head,
    request,
    rule,
    run_cli,
    service,
    to_yaml,
)

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

SECRET = "c2Vzc2lvbiBzZWNyZXQgZm9yIHRoZSBlMmUgdGVzdHM="


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    docs: list[Doc]
    https_port: int


def app_manifests(backends: list[EchoBackend], name: str = "app") -> list[Doc]:
    """Service ``name`` with one EndpointSlice per echo (each its own port)."""
    docs: list[Doc] = [service(name, [("http", 80)])]
    docs += [
        endpoint_slice(name, [("http", b.port)], pod=b.name, slice_name=f"{name}-{b.name}")
        for b in backends
    ]
    return docs


def lb_policy(name: str, created: str, session: Doc, target: str = "lb-app") -> Doc:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1alpha2",
        "kind": "BackendLBPolicy",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": target}],
            "sessionPersistence": session,
        },
    }


def sticky_route(name: str, session: Doc | None, service: str = "app") -> Doc:
    route = http_route(name, [rule(backends=[backend_ref(service)])], hostnames=[f"{name}.example"])
    if session is not None:
        route["spec"]["rules"][0]["sessionPersistence"] = session
    return route


def session_docs(
    backends: list[EchoBackend], port: int, https_port: int | None = None
) -> list[Doc]:
    listeners = [listener("http", port)]
    extra: list[Doc] = []
    if https_port is not None:
        cert, key = self_signed(["cookie.example"])
        listeners.append(
            {
                "name": "https",
                "port": https_port,
                "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "cookie-cert"}]},
            }
        )
        extra.append(
            yaml.safe_load(secret_manifest(cert, key, name="cookie-cert", namespace="default"))
        )
    return [
        gateway_class(),
        gateway("gw", listeners),
        *extra,
        *app_manifests(backends),
        http_route("plain", [rule(backends=[backend_ref("app")])], hostnames=["plain.example"]),
        # The shape of Gateway API v1.2-1.4 (sessionName, cookieConfig).
        sticky_route("cookie", {"type": "Cookie", "sessionName": "sid"}),
        # The newer shape (header.name); the name the client must send back.
        sticky_route("header", {"type": "Header", "header": {"name": "X-Session"}}),
        sticky_route("short", {"absoluteTimeout": "1s"}),
        sticky_route("idle", {"sessionName": "idle", "idleTimeout": "1s"}),
        sticky_route(
            "permanent",
            {"absoluteTimeout": "1h", "cookieConfig": {"lifetimeType": "Permanent"}},
        ),
        # BackendLBPolicy: the older of two policies on Service "lb-app" wins; a rule's
        # own sessionPersistence takes precedence over it.
        *app_manifests(backends, "lb-app"),
        sticky_route("lb", None, "lb-app"),
        sticky_route("lb-rule", {"sessionName": "rule-sid"}, "lb-app"),
        lb_policy("lb-old", "2024-01-01T00:00:00Z", {"sessionName": "lbsid"}),
        lb_policy("lb-new", "2024-02-01T00:00:00Z", {"sessionName": "newer"}),
        lb_policy("lb-missing", "2024-01-01T00:00:00Z", {"sessionName": "x"}, target="gone"),
    ]


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    backends = module_echoes.start("pod-a", "pod-b", "pod-c")
    port, https_port = free_port(), free_port()
    docs = session_docs(backends, port, https_port)
    # Round robin: requests without a session spread over the three pods
    # deterministically (least request, the default, draws at random).
    daemon = module_gatewayd(docs, args=["--lb-policy", "round-robin"])
    return Env(daemon, port, docs, https_port)


def cookie_of(reply: Reply) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes) of the reply's one Set-Cookie."""
    values = reply.header_all("set-cookie")
    assert len(values) == 1, f"expected one Set-Cookie, got {values}"
    first, *attrs = (p.strip() for p in values[0].split(";"))
    name, _, value = first.partition("=")
    parsed = {}
    for a in attrs:
        k, _, v = a.partition("=")
        parsed[k.lower()] = v
    return name, value, parsed


def pods(port: int, host: str, n: int, headers: dict[str, str] | None = None) -> list[str]:
    """The pods of ``n`` requests, each on a fresh connection."""
    return [str(request(port, "/", host=host, headers=headers).echo()["pod"]) for _ in range(n)]


def start_session(port: int, host: str) -> tuple[str, str, str]:
    """(pod, cookie name, cookie value) of a first request without a session."""
    r = request(port, "/", host=host)
    name, value, _ = cookie_of(r)
    return str(r.echo()["pod"]), name, value


def test_routes_with_sessions_are_accepted(env: Env) -> None:
    for name in ("cookie", "header", "short", "idle", "permanent"):
        parent = env.daemon.status_of("HTTPRoute", name)["parents"][0]
        assert_condition(parent, "Accepted", "True", "Accepted")
        assert_condition(parent, "ResolvedRefs", "True", "ResolvedRefs")


def test_without_a_session_requests_spread(env: Env) -> None:
    seen = pods(env.port, "plain.example", 9)
    assert set(seen) == {"pod-a", "pod-b", "pod-c"}, seen
    r = request(env.port, "/", host="plain.example")
    assert r.header("set-cookie") is None
    # Sticky routes spread their first requests too (each starts its own session).
    firsts = [start_session(env.port, "cookie.example")[0] for _ in range(6)]
    assert len(set(firsts)) >= 2, firsts


def test_cookie_session_sticks_to_one_endpoint(env: Env) -> None:
    pod, name, value = start_session(env.port, "cookie.example")
    assert name == "sid"
    seen = pods(env.port, "cookie.example", 10, {"Cookie": f"other=1; {name}={value}"})
    assert seen == [pod] * 10, seen
    # A session cookie: no Expires or Max-Age; Path defaults to "/".
    _, _, attrs = cookie_of(request(env.port, "/", host="cookie.example"))
    assert "max-age" not in attrs and "expires" not in attrs, attrs
    assert attrs["path"] == "/" and "httponly" in attrs, attrs
    # Once established, the response does not set the cookie again.
    r = request(env.port, "/", host="cookie.example", headers={"Cookie": f"{name}={value}"})
    assert r.header("set-cookie") is None


def test_tampered_or_foreign_cookie_is_a_new_session(env: Env) -> None:
    _, name, value = start_session(env.port, "cookie.example")
    forged = value[:-2] + ("AA" if value[-2:] != "AA" else "BB")
    r = request(env.port, "/", host="cookie.example", headers={"Cookie": f"{name}={forged}"})
    assert r.status == 200
    assert cookie_of(r)[1] != forged  # refused: a fresh token
    # A token of another rule (another scope) is not honoured either.
    _, _, pvalue = start_session(env.port, "permanent.example")
    r = request(env.port, "/", host="cookie.example", headers={"Cookie": f"sid={pvalue}"})
    assert cookie_of(r)[0] == "sid" and cookie_of(r)[1] != pvalue


def test_https_session_cookie_is_secure(env: Env) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((LOCALHOST, env.https_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="cookie.example") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: cookie.example\r\nConnection: close\r\n\r\n")
        head, _ = read_response_head(tls)
    status, *fields = head.decode("latin-1").split("\r\n")
    assert status.startswith("HTTP/1.1 200"), head
    cookies = [f.split(":", 1)[1].strip() for f in fields if f.lower().startswith("set-cookie:")]
    assert len(cookies) == 1 and cookies[0].startswith("sid="), cookies
    assert cookies[0].endswith("; HttpOnly; SameSite=Strict; Secure"), cookies
    # Over cleartext HTTP the same cookie has no Secure (the client would not send it).
    _, _, attrs = cookie_of(request(env.port, "/", host="cookie.example"))
    assert "secure" not in attrs and attrs.get("samesite") == "Strict", attrs


def test_header_session_sticks(env: Env) -> None:
    r = request(env.port, "/", host="header.example")
    token = r.header("x-session")
    assert token, r.headers
    pod = str(r.echo()["pod"])
    seen = pods(env.port, "header.example", 10, {"X-Session": token})
    assert seen == [pod] * 10, seen


def test_permanent_cookie_has_max_age(env: Env) -> None:
    r = request(env.port, "/", host="permanent.example")
    name, _, attrs = cookie_of(r)
    assert name.startswith("gatewayd-session-"), name  # generated, unique per rule
    assert attrs.get("max-age") in ("3600", "3599"), attrs


def test_absolute_and_idle_timeouts_expire_the_session(env: Env) -> None:
    pod, name, short = start_session(env.port, "short.example")
    assert pods(env.port, "short.example", 3, {"Cookie": f"{name}={short}"}) == [pod] * 3
    # Idle: every response refreshes the token; used within 1 s it stays alive past 1 s.
    ipod, iname, first = start_session(env.port, "idle.example")
    latest = first
    for _ in range(4):
        time.sleep(0.35)
        r = request(env.port, "/", host="idle.example", headers={"Cookie": f"{iname}={latest}"})
        assert r.echo()["pod"] == ipod
        latest = cookie_of(r)[1]
    # ~1.4 s after it was minted: the first idle token and the absolute one are dead
    # (balanced again: spread over the pods), the refreshed one is alive.
    assert len(set(pods(env.port, "idle.example", 6, {"Cookie": f"{iname}={first}"}))) >= 2
    assert len(set(pods(env.port, "short.example", 6, {"Cookie": f"{name}={short}"}))) >= 2
    r = request(env.port, "/", host="idle.example", headers={"Cookie": f"{iname}={latest}"})
    assert r.echo()["pod"] == ipod


def test_reload_keeps_the_session(env: Env) -> None:
    pod, name, value = start_session(env.port, "cookie.example")
    before = generation(env.daemon)
    extra = http_route("extra", [rule(backends=[backend_ref("app")])], hostnames=["x.example"])
    env.daemon.config.write_text(to_yaml([*env.docs, extra]))
    env.daemon.child.proc.send_signal(signal.SIGHUP)
    for _ in deadline_loop(5.0):
        if (
            generation(env.daemon) > before
            and request(env.port, "/", host="x.example").status == 200
        ):
            break
    else:
        raise AssertionError("the reload was not served within 5 s\n" + env.daemon.output())
    assert pods(env.port, "cookie.example", 5, {"Cookie": f"{name}={value}"}) == [pod] * 5


def generation(daemon: Gatewayd) -> int:
    code, body = daemon.admin_get("/status")
    assert code == 200, body
    value = json.loads(body)["config"]["generation"]
    assert isinstance(value, int)
    return value


def test_restart_workers_and_killed_endpoint(echoes, gatewayd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    backends = echoes.start("pod-a", "pod-b", "pod-c")
    port = free_port()
    secret = tmp_path / "session.secret"
    secret.write_text(SECRET + "\n")
    args = ["--workers", "2", "--session-secret-file", str(secret)]
    docs = session_docs(backends, port)
    daemon = gatewayd(docs, args=args)
    pod, name, value = start_session(port, "cookie.example")
    # Fresh connections land on either worker: both honour the token.
    assert pods(port, "cookie.example", 10, {"Cookie": f"{name}={value}"}) == [pod] * 10
    daemon.stop()
    daemon = gatewayd(docs, args=args)
    assert pods(port, "cookie.example", 5, {"Cookie": f"{name}={value}"}) == [pod] * 5
    # The pinned endpoint dies (still in its EndpointSlice): the session moves.
    next(b for b in backends if b.name == pod).child.stop()
    r = request(port, "/", host="cookie.example", headers={"Cookie": f"{name}={value}"})
    moved = str(r.echo()["pod"])
    assert moved != pod
    new_name, new_value, _ = cookie_of(r)
    assert new_name == name and new_value != value
    assert pods(port, "cookie.example", 5, {"Cookie": f"{name}={new_value}"}) == [moved] * 5


def test_backend_lb_policy_sticks_every_route_to_its_service(env: Env) -> None:
    pod, name, value = start_session(env.port, "lb.example")
    assert name == "lbsid"  # the older policy's, not "newer"
    assert pods(env.port, "lb.example", 10, {"Cookie": f"{name}={value}"}) == [pod] * 10
    # The rule's own sessionPersistence takes precedence over the policy.
    assert start_session(env.port, "lb-rule.example")[1] == "rule-sid"
    # Status: one ancestor (the Gateway) per policy whose Service its HTTPRoutes use.
    old = env.daemon.status_of("BackendLBPolicy", "lb-old")["ancestors"]
    assert [a["ancestorRef"]["name"] for a in old] == ["gw"]
    assert_condition(old[0], "Accepted", "True", "Accepted")
    message = old[0]["conditions"][0]["message"]
    assert "HTTPRoute default/lb-rule rule 0 takes precedence" in message, message
    [new] = env.daemon.status_of("BackendLBPolicy", "lb-new")["ancestors"]
    assert_condition(new, "Accepted", "False", "Conflicted")
    assert "default/lb-old takes precedence" in new["conditions"][0]["message"]
    # A policy whose target no route uses has no ancestor to report on.
    assert env.daemon.status_of("BackendLBPolicy", "lb-missing")["ancestors"] == []


def test_a_short_or_missing_secret_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(to_yaml([gateway_class()]))
    short = tmp_path / "short"
    short.write_text("too short")
    for path, says in ((short, "needs at least 16 bytes"), (tmp_path / "nope", "No such file")):
        done = run_cli("run", "--config", str(config), "--session-secret-file", str(path))
        assert done.returncode != 0
        assert f"--session-secret-file {path}: " in done.stderr and says in done.stderr, done.stderr


def test_an_ejected_endpoint_moves_the_session(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    """Outlier detection (balancer.py) ejects the pinned endpoint after 5 gateway errors
    in a row: the next request with the session goes elsewhere and gets a new token."""
    backends = echoes.start("pod-a", "pod-b", "pod-c")
    port = free_port()
    gatewayd(session_docs(backends, port))
    pod, name, value = start_session(port, "cookie.example")
    cookie = {"Cookie": f"{name}={value}"}
    for _ in range(5):
        r = request(port, "/?status=503", host="cookie.example", headers=cookie)
        assert r.status == 503 and r.json()["pod"] == pod  # still pinned while it fails
    r = request(port, "/", host="cookie.example", headers=cookie)
    moved = str(r.echo()["pod"])
    assert moved != pod
    _, new_value, _ = cookie_of(r)
    assert pods(port, "cookie.example", 5, {"Cookie": f"{name}={new_value}"}) == [moved] * 5
