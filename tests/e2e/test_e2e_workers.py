"""The supervisor/worker protocol and listener ownership of ``gatewayd run --workers N``.

- A snapshot of 10,000 HTTPRoutes reaches every worker, at start and on a reload.
- HTTPS listeners whose Gateway-level frontend validation names a missing ConfigMap, a
  Service and a cross-namespace ConfigMap start cleanly, three times in a row.
- A worker killed with SIGKILL is restarted with the current snapshot; the listening
  socket stays the same.
- A second instance on a busy admin address exits 1 with one line; a second instance on
  the same listener ports cannot take a single request of the first.

Everything runs ``gatewayd run`` as a real subprocess on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_kit import (
    LOCALHOST,
    Child,
    Client,
    Doc,
    EchoBackend,
    Gatewayd,
    backend_ref,
    conditions,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    gatewayd_argv,
    http_route,
    listener,
    match,
    prometheus_samples,
    request,
    rule,
    to_yaml,
)
from test_e2e_operations import gone, owners, worker_pids

from gatewayd.tls.certs import secret_manifest, self_signed

pytestmark = pytest.mark.e2e

# A snapshot of 1,000 routes pickles to ~290 KiB, past the ~208 KiB a socket pair
# buffers, which is what broke the old pipe; 10,000 routes (~2.9 MiB) take ~25 s to
# build twice on two shared cores, so that run is marked slow (``make test`` runs it;
# ``pytest -m 'not slow'`` skips it locally).
ROUTE_COUNTS = [1_000, pytest.param(10_000, marks=pytest.mark.slow)]


# --------------------------------------------------------------------------- helpers


def many_routes(port: int, echo: EchoBackend, count: int, *extra: str) -> str:
    """A Gateway with one HTTP listener and ``count`` HTTPRoutes (``/r<i>``, Exact) plus
    one route per ``extra`` path.  JSON documents are YAML too, and dumping them is ~30
    times faster than yaml.safe_dump for 10,000 routes."""
    docs: list[Doc] = [gateway_class(), gateway("gw", [listener("http", port)])]
    docs += echo.manifests()
    paths = [f"/r{i}" for i in range(count)] + list(extra)
    docs += [
        http_route(
            f"r{i}",
            [rule(matches=[match(path, type="Exact")], backends=[backend_ref(echo.name)])],
        )
        for i, path in enumerate(paths)
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


@contextlib.contextmanager
def one_client_per_worker(port: int, pids: list[int]) -> Iterator[dict[int, Client]]:
    """A served keep-alive connection held by each worker: the workers accept on one
    shared socket, so connections are opened (at most 60) until every worker has one."""
    opened: list[Client] = []
    try:
        held: dict[int, set[int]] = {}
        for _ in range(60):
            c = Client(port)
            opened.append(c)
            assert c.request("/warm-up").status in (200, 404)
            held = owners(port, pids)
            if all(held[p] for p in pids):
                break
        assert all(held[p] for p in pids), f"not every worker accepted: {held}"
        by_port = {c.conn.sock.getsockname()[1]: c for c in opened if c.conn.sock is not None}
        yield {pid: by_port[min(held[pid])] for pid in pids}
    finally:
        for c in opened:
            c.close()


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (state 0A in /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == port:
            found.add(int(cols[9]))
    return found


def requests_total(daemon: Gatewayd) -> float:
    return sum(v for _, v in prometheus_samples(daemon.metrics(), "gatewayd_downstream_rq_total"))


def wait_status(daemon: Gatewayd, port: int, path: str, status: int, timeout: float) -> None:
    last = None
    for _ in deadline_loop(timeout, 0.1):
        last = request(port, path).status
        if last == status:
            return
    raise AssertionError(f"{path} answered {last}, not {status}, in {timeout}s\n{daemon.output()}")


PROTOCOL_TROUBLE = ("Traceback", "apply failed", "failed:", "restarting", "giving up")


def assert_no_protocol_trouble(daemon: Gatewayd) -> None:
    text = daemon.child.stderr.text()
    bad = [line for line in text.splitlines() if any(t in line for t in PROTOCOL_TROUBLE)]
    assert not bad, daemon.output()


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("routes", ROUTE_COUNTS)
def test_thousands_of_routes_reach_every_worker_and_so_does_a_reload(  # type: ignore[no-untyped-def]
    echoes, tmp_path: Path, routes: int
) -> None:
    (echo,) = echoes.start("echo")
    port = free_port()
    manifests = many_routes(port, echo, routes)
    started = time.monotonic()
    daemon = Gatewayd(
        tmp_path / "d",
        manifests,
        args=["--workers", "2", "--no-watch", "--access-log", "off"],
        timeout=60.0,  # building 10,000 routes takes ~12 s on a busy machine
    )
    try:
        ready_after = time.monotonic() - started
        reloaded_after = serve_many_routes_and_reload(daemon, port, echo, routes)
    finally:
        daemon.stop()
    print(f"{routes} routes, 2 workers: ready {ready_after:.1f}s, reload {reloaded_after:.1f}s")


def serve_many_routes_and_reload(
    daemon: Gatewayd, port: int, echo: EchoBackend, routes: int
) -> float:
    """Check every worker serves the first and the last route, then that a reload adding
    one route reaches every worker; the seconds the reload took."""
    pids = worker_pids(daemon)
    assert len(pids) == 2, pids
    assert "config generation 1 serving 1 listener socket(s)" in daemon.child.stderr.text()
    with one_client_per_worker(port, pids) as clients:
        for c in clients.values():
            assert c.request("/r0").status == 200
            assert c.request(f"/r{routes - 1}").status == 200
            assert c.request("/added").status == 404
        # A reload with one more route: every worker takes the new snapshot (the held
        # connections, one per worker, see the route), none is lost or restarted.
        daemon.config.write_text(many_routes(port, echo, routes, "/added"))
        reload_sent = time.monotonic()
        daemon.child.proc.send_signal(signal.SIGHUP)
        wait_status(daemon, port, "/added", 200, 60.0)
        # The supervisor logs once every worker answered.  Until then a worker may still
        # be unpickling the new snapshot, serving the old one meanwhile (off its loop).
        line = daemon.child.stderr.wait_for(
            lambda s: "config generation 2 serving" in s, timeout=60
        )
        assert line is not None and line.endswith("serving 1 listener socket(s)"), daemon.output()
        reloaded_after = time.monotonic() - reload_sent
        for c in clients.values():
            assert c.request("/added").status == 200
            assert c.request(f"/r{routes - 1}").status == 200
    assert worker_pids(daemon) == pids
    assert daemon.admin_get("/ready")[0] == 200
    assert_no_protocol_trouble(daemon)
    return reloaded_after


def frontend_validation_manifests(echo: EchoBackend, http: int, ports: list[int]) -> str:
    """The Gateway of the report: HTTPS listeners on four ports whose spec.tls.frontend
    per-port validation names a missing ConfigMap, a Service and a ConfigMap in another
    namespace (no ReferenceGrant); the fourth port takes the default validation (a
    valid ConfigMap).  Beside them an HTTP listener and a route on it and the fourth."""
    cert, key = self_signed(["workers.example"])
    listeners = [listener("http", http)] + [
        {
            "name": f"https-{i}",
            "port": p,
            "protocol": "HTTPS",
            "hostname": "workers.example",
            "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]},
        }
        for i, p in enumerate(ports)
    ]
    gw = gateway("gw", listeners)
    bad: list[Doc] = [
        {"group": "", "kind": "ConfigMap", "name": "missing-ca"},
        {"group": "", "kind": "Service", "name": echo.name},
        {"group": "", "kind": "ConfigMap", "name": "ca", "namespace": "elsewhere"},
    ]
    gw["spec"]["tls"] = {
        "frontend": {
            "default": {
                "validation": {
                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "ca"}]
                }
            },
            "perPort": [
                {"port": p, "tls": {"validation": {"caCertificateRefs": [ref]}}}
                for p, ref in zip(ports, bad, strict=False)
            ],
        }
    }

    def config_map(namespace: str) -> Doc:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "ca", "namespace": namespace},
            "data": {"ca.crt": cert.decode()},
        }

    namespace: Doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}}
    route = http_route("app", [rule(backends=[backend_ref(echo.name)])])
    route["spec"]["parentRefs"] = [
        {"name": "gw", "sectionName": "http"},
        {"name": "gw", "sectionName": "https-3"},
    ]
    docs = [gateway_class(), gw, namespace, config_map("elsewhere"), config_map("default")]
    docs += [*echo.manifests(), route]
    return to_yaml(docs) + "---\n" + secret_manifest(cert, key, name="cert", namespace="default")


def test_https_frontend_validation_with_bad_references_starts_three_times(  # type: ignore[no-untyped-def]
    echoes, gatewayd
) -> None:
    (echo,) = echoes.start("echo")
    http, ports = free_port(), [free_port() for _ in range(4)]
    manifests = frontend_validation_manifests(echo, http, ports)
    expected = {
        "https-0": "InvalidCACertificateRef",
        "https-1": "InvalidCACertificateKind",
        "https-2": "RefNotPermitted",
        "https-3": "ResolvedRefs",
        "http": "ResolvedRefs",
    }
    for attempt in range(3):
        daemon = gatewayd(manifests, args=["--workers", "2", "--no-watch"])
        assert len(worker_pids(daemon)) == 2
        status = daemon.status_of("Gateway", "gw")
        reasons = {
            ls["name"]: conditions(ls)["ResolvedRefs"]["reason"] for ls in status["listeners"]
        }
        assert reasons == expected, (attempt, status)
        # The two valid listeners serve, each port bound once; the others are not bound.
        assert request(http, "/").status == 200
        assert len(listening_inodes(ports[3])) == 1
        assert not any(listening_inodes(p) for p in ports[:3])
        assert "serving 2 listener socket(s)" in daemon.child.stderr.text()
        assert_no_protocol_trouble(daemon)
        rc = daemon.stop()
        assert rc == 0, daemon.output()


# --------------------------------------------------------------------------- restarts


def test_killed_worker_restarts_with_the_current_snapshot(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo")
    port = free_port()
    daemon = gatewayd(many_routes(port, echo, 3), args=["--workers", "2", "--no-watch"])
    sockets = listening_inodes(port)
    assert len(sockets) == 1, sockets  # bound once, by the supervisor
    # Generation 2 adds /added; the restarted worker must serve it, not generation 1.
    daemon.config.write_text(many_routes(port, echo, 3, "/added"))
    daemon.child.proc.send_signal(signal.SIGHUP)
    daemon.child.stderr.wait_for(lambda s: "config generation 2 serving" in s, timeout=10)
    pids = worker_pids(daemon)
    victim, survivor = pids
    os.kill(victim, signal.SIGKILL)
    for _ in deadline_loop(5.0):
        if gone(victim):
            break
    line = daemon.child.stderr.wait_for(
        lambda s: "serving configuration generation 2" in s, timeout=10
    )
    assert line is not None, daemon.output()
    assert "exited with signal SIGKILL" in daemon.child.stderr.text()
    now = worker_pids(daemon)
    assert survivor in now and victim not in now and len(now) == 2, now
    with one_client_per_worker(port, now) as clients:
        for c in clients.values():
            assert c.request("/added").status == 200
            assert c.request("/r2").status == 200
    assert listening_inodes(port) == sockets  # the worker's death closed nothing


# --------------------------------------------------------------------------- item 11


def simple_docs(port: int, echo: EchoBackend) -> list[Doc]:
    return [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *echo.manifests(),
        http_route("all", [rule(backends=[backend_ref(echo.name)])]),
    ]


def test_second_instance_on_a_busy_admin_address_exits_1_with_one_line(  # type: ignore[no-untyped-def]
    echoes, gatewayd, tmp_path: Path
) -> None:
    (echo,) = echoes.start("echo")
    port = free_port()
    first = gatewayd(simple_docs(port, echo), args=["--workers", "2"])
    config = tmp_path / "second.yaml"
    config.write_text(to_yaml(simple_docs(port, echo)))
    admin = f"127.0.0.1:{first.admin_port}"
    started = time.monotonic()
    second = Child(
        gatewayd_argv("run", "--config", str(config), "--admin-address", admin, "--workers", "2"),
        "second",
        cwd=tmp_path,  # not the checkout: ``python -m`` imports from the working directory
    )
    try:
        rc = second.proc.wait(10)
    finally:
        second.stop()
    took = time.monotonic() - started
    assert rc == 1, second.output()
    assert took < 5, f"exit took {took:.1f}s"
    lines = [line for line in second.stderr.text().splitlines() if line.strip()]
    assert len(lines) == 1, second.output()
    assert f"cannot listen on the admin address {admin}: Address already in use" in lines[0]
    # It started nothing and took nothing: the first instance serves on.
    assert request(port, "/still-first").status == 200
    assert first.admin_get("/ready")[0] == 200


def test_second_instance_on_the_same_listener_port_takes_no_request(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo")
    port = free_port()
    first = gatewayd(simple_docs(port, echo), args=["--workers", "2"])
    second = gatewayd(simple_docs(port, echo), args=["--workers", "2"], wait="status")
    # The second cannot bind the port and says so, in its log and in the status.
    line = second.child.stderr.wait_for(lambda s: f"cannot bind 127.0.0.1:{port}" in s, timeout=10)
    assert line is not None and "Address already in use" in line, second.output()
    for _ in deadline_loop(10.0, 0.1):
        listeners = second.status_of("Gateway", "gw").get("listeners", [])
        programmed = conditions(listeners[0]).get("Programmed", {}) if listeners else {}
        if programmed.get("status") == "False":
            break
    assert programmed.get("status") == "False", second.status_of("Gateway", "gw")
    assert "cannot bind" in str(programmed.get("message")), programmed
    assert "0 listener socket(s)" in second.child.stderr.text()

    before_first, before_second = requests_total(first), requests_total(second)
    for n in range(100):
        assert request(port, f"/n/{n}").status == 200
    assert requests_total(first) - before_first == 100
    assert requests_total(second) == before_second == 0
    assert listening_inodes(port) and len(listening_inodes(port)) == 1


# --------------------------------------------------------------------------- reloads


def test_a_port_turning_https_keeps_its_socket_and_every_worker_serves_it(  # type: ignore[no-untyped-def]
    echoes, gatewayd
) -> None:
    (echo,) = echoes.start("echo")
    port = free_port()
    cert, key = self_signed(["workers.example"])
    daemon = gatewayd(simple_docs(port, echo), args=["--workers", "2", "--no-watch"])
    sockets = listening_inodes(port)
    assert len(sockets) == 1, sockets
    https = {
        "name": "http",
        "port": port,
        "protocol": "HTTPS",
        "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert"}]},
    }
    docs = simple_docs(port, echo)
    docs[1] = gateway("gw", [https])
    daemon.config.write_text(
        to_yaml(docs) + "---\n" + secret_manifest(cert, key, name="cert", namespace="default")
    )
    daemon.child.proc.send_signal(signal.SIGHUP)
    line = daemon.child.stderr.wait_for(lambda s: "config generation 2 serving" in s, timeout=10)
    assert line is not None and line.endswith("serving 1 listener socket(s)"), daemon.output()
    # Each worker serves TLS now: enough fresh connections that both took some.
    pids = worker_pids(daemon)
    context = ssl.create_default_context(cadata=cert.decode())
    seen: set[int] = set()
    for n in range(60):
        with (
            socket.create_connection((LOCALHOST, port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="workers.example") as tls,
        ):
            tls.sendall(b"GET /tls/%d HTTP/1.1\r\nHost: workers.example\r\n\r\n" % n)
            assert tls.recv(12) == b"HTTP/1.1 200"
            local = tls.getsockname()[1]
            seen |= {pid for pid, ports in owners(port, pids).items() if local in ports}
        if seen == set(pids):
            break
    assert seen == set(pids), seen
    assert listening_inodes(port) == sockets  # the same socket, never bound again
    assert_no_protocol_trouble(daemon)
