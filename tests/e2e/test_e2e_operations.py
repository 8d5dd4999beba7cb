"""Operations acceptance: canary weight rewrites under load lose nothing, a broken edit
keeps the last good configuration, SIGTERM drains a slow request, worker processes share
the listeners and are restarted when they die.

Everything runs ``gatewayd run`` as a real subprocess on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_kit import (
    LOCALHOST,
    Client,
    Doc,
    EchoBackend,
    Gatewayd,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    prometheus_samples,
    request,
    rule,
    to_yaml,
)

pytestmark = pytest.mark.e2e

# 20 rewrites of the canary's weights, as a rollout (and a rollback) would do them.
WEIGHTS: tuple[tuple[int, int], ...] = (
    (90, 10),
    (75, 25),
    (50, 50),
    (25, 75),
    (0, 100),
    (100, 0),
    (10, 90),
    (60, 40),
    (40, 60),
    (100, 0),
    (0, 100),
    (80, 20),
    (20, 80),
    (50, 50),
    (70, 30),
    (30, 70),
    (95, 5),
    (5, 95),
    (100, 0),
    (50, 50),
)
SAMPLE = 200  # requests counted after each change to check the split
TOLERANCE = 0.12  # 200 samples: about 3.4 standard deviations at 50/50


def canary_docs(v1: EchoBackend, v2: EchoBackend, port: int, w1: int, w2: int) -> list[Doc]:
    return [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *v1.manifests(),
        *v2.manifests(),
        http_route(
            "canary",
            [rule(backends=[backend_ref("echo-v1", weight=w1), backend_ref("echo-v2", weight=w2)])],
        ),
    ]


def config_state(daemon: Gatewayd) -> dict[str, object]:
    code, body = daemon.admin_get("/status")
    assert code == 200, body
    state: dict[str, object] = json.loads(body)["config"]
    return state


def generation(daemon: Gatewayd) -> int:
    value = config_state(daemon)["generation"]
    assert isinstance(value, int)
    return value


def wait_generation_above(daemon: Gatewayd, previous: int, timeout: float) -> float:
    """Seconds until /status reports a generation above ``previous``."""
    start = time.monotonic()
    for _ in deadline_loop(timeout, interval=0.02):
        if generation(daemon) > previous:
            return time.monotonic() - start
    raise AssertionError(f"no new configuration generation within {timeout}s\n" + daemon.output())


def served_weights(daemon: Gatewayd) -> tuple[int, int] | None:
    """The (echo-v1, echo-v2) weights of the canary rule in the serving snapshot
    (/config_dump: what the workers acknowledged), or None while it has neither."""
    code, body = daemon.admin_get("/config_dump")
    assert code == 200, body
    found: dict[str, int] = {}
    stack: list[object] = [json.loads(body)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for backend in (
                item.get("backends", ()) if isinstance(item.get("backends"), list) else ()
            ):
                name = str(backend.get("name", ""))
                for wanted in ("echo-v1", "echo-v2"):
                    if wanted in name:
                        found[wanted] = int(backend["weight"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    if not found:
        return None
    # A weight-0 backendRef may be left out of the compiled rule.
    return found.get("echo-v1", 0), found.get("echo-v2", 0)


def wait_weights(daemon: Gatewayd, w1: int, w2: int, timeout: float) -> float:
    """Seconds until the serving snapshot splits w1:w2.  (A new generation alone is not
    enough: the watcher also sees a file that SIGHUP already loaded and reloads it once
    more, and that late reload of the previous weights can be the one a wait sees.)"""
    start = time.monotonic()
    for _ in deadline_loop(timeout, interval=0.02):
        served = served_weights(daemon)
        if served is not None and served[0] * w2 == served[1] * w1:
            return time.monotonic() - start
    raise AssertionError(f"weights {w1}/{w2} not served within {timeout}s\n" + daemon.output())


def write_atomically(path: Path, text: str) -> None:
    """What kubectl-style tools and editors that save by rename do."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Load:
    """Keep-alive clients hammering the gateway on threads until stopped (bounded)."""

    port: int
    clients: int = 2
    limit: int = 40_000  # per client: a bound, never reached in practice
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _run(self, index: int) -> None:
        # One keep-alive connection for the whole run: Client asserts it is never reopened.
        with Client(self.port, timeout=10.0) as client:
            for n in range(self.limit):
                if self.stop.is_set():
                    return
                try:
                    reply = client.request(f"/load/{index}/{n}")
                    ok = reply.status == 200
                    why = f"status {reply.status}"
                except (OSError, AssertionError) as exc:
                    ok, why = False, repr(exc)
                with self.lock:
                    self.sent += 1
                    if not ok:
                        self.failures.append(f"client {index} request {n}: {why}")
                if not ok:
                    return

    def __enter__(self) -> Load:
        for i in range(self.clients):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(15)


def observed_share(port: int, n: int) -> tuple[float, int]:
    """(share of echo-v1, requests) over ``n`` requests on one keep-alive connection."""
    v1 = 0
    with Client(port) as client:
        for _ in range(n):
            reply = client.request("/sample")
            assert reply.status == 200, reply.status
            if reply.echo()["pod"] == "echo-v1":
                v1 += 1
    return v1 / n, n


# --------------------------------------------------------------------------- hot reload


def test_canary_rewrites_under_load_lose_no_request(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = echoes.start("echo-v1", "echo-v2")
    port = free_port()
    daemon = gatewayd(canary_docs(v1, v2, port, 50, 50), args=["--workers", "2"])
    assert request(port, "/").status == 200
    sampled = 0
    watch_latency: list[float] = []
    with Load(port) as load:
        for i, (w1, w2) in enumerate(WEIGHTS):
            before = generation(daemon)
            text = to_yaml(canary_docs(v1, v2, port, w1, w2))
            if i % 2 == 0:
                # Picked up by the file watcher; alternate rename and in-place writes.
                if i % 4 == 0:
                    write_atomically(daemon.config, text)
                else:
                    daemon.config.write_text(text)
                watch_latency.append(wait_weights(daemon, w1, w2, 5.0))
            else:
                daemon.config.write_text(text)
                daemon.child.proc.send_signal(signal.SIGHUP)
                wait_generation_above(daemon, before, 5.0)
                wait_weights(daemon, w1, w2, 5.0)
            share, n = observed_share(port, SAMPLE)
            sampled += n
            expected = w1 / (w1 + w2)
            assert abs(share - expected) <= (0 if expected in (0.0, 1.0) else TOLERANCE), (
                f"change {i + 1} to {w1}/{w2}: echo-v1 took {share:.1%} of {n}"
            )

            if i == 9:
                # A broken edit half-way: the last good snapshot keeps serving ...
                good = generation(daemon)
                daemon.config.write_text(text + "---\nkind: HTTPRoute\nmetadata: [not, a, map\n")
                error = ""
                for _ in deadline_loop(5.0):
                    error = str(config_state(daemon).get("lastReloadError") or "")
                    if error:
                        break
                assert str(daemon.config) in error or "manifests.yaml" in error, error
                assert generation(daemon) == good
                failures = [
                    v
                    for labels, v in prometheus_samples(
                        daemon.metrics(), "gatewayd_config_reload_total"
                    )
                    if labels.get("result") == "failure"
                ]
                assert failures and failures[0] >= 1, failures
                share, n = observed_share(port, SAMPLE)
                sampled += n
                assert share == 1.0  # still the 100/0 of change 10
                # ... and fixing the file applies it (the next change does that below).
    assert not load.failures, load.failures[:5]
    total = load.sent + sampled
    assert total >= 4000, f"only {total} requests were driven"
    # A change is applied within 2 s of the write (watcher: 0.5 s polls, 0.3 s settle).
    assert max(watch_latency) < 2.0, watch_latency
    assert config_state(daemon)["lastReloadError"] is None


# --------------------------------------------------------------------------- graceful drain


def connect_refused(port: int, address: str = LOCALHOST) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_lets_a_slow_request_finish(echoes, gatewayd, workers: int) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *echo.manifests(),
        http_route("all", [rule(backends=[backend_ref("echo-v1")])]),
    ]
    daemon = gatewayd(docs, args=["--workers", str(workers), "--drain-timeout", "10"])
    idle = Client(port)
    assert idle.request("/warm").status == 200

    slow: dict[str, object] = {}

    def slow_request() -> None:
        start = time.monotonic()
        try:
            reply = request(port, "/slow?delay_ms=2000", timeout=15)
            slow["status"] = reply.status
            slow["path"] = reply.echo()["path"]
        except OSError as exc:
            slow["error"] = repr(exc)
        slow["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    time.sleep(0.5)  # the request is at the backend now
    sent = time.monotonic()
    daemon.child.proc.send_signal(signal.SIGTERM)

    # New connections are refused while the slow request is still in flight.
    refused_at = None
    for _ in deadline_loop(1.2, interval=0.02):
        if connect_refused(port):
            refused_at = time.monotonic() - sent
            break
    assert refused_at is not None, "the listener still accepted 1.2 s after SIGTERM"
    assert thread.is_alive(), "the slow request ended before the listener closed"

    # The idle keep-alive connection is closed politely (EOF, no reset).
    sock = idle.conn.sock
    assert sock is not None
    sock.settimeout(3.0)
    assert sock.recv(1) == b""
    idle.close()

    thread.join(10)
    assert slow.get("status") == 200, slow
    assert str(slow.get("path")).startswith("/slow")
    rc = daemon.child.proc.wait(10)
    exited = time.monotonic() - sent
    assert rc == 0, daemon.output()
    assert exited < 10, f"exit took {exited:.1f}s (drain timeout 10 s)"
    assert float(str(slow["elapsed"])) >= 2.0


# --------------------------------------------------------------------------- workers


def socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


def established_on(port: int) -> dict[int, int]:
    """inode -> client port of every ESTABLISHED TCP socket whose local port is ``port``."""
    out: dict[int, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        local, remote, state, inode = cols[1], cols[2], cols[3], int(cols[9])
        if state == "01" and int(local.split(":")[1], 16) == port:
            out[inode] = int(remote.split(":")[1], 16)
    return out


def owners(port: int, pids: list[int]) -> dict[int, set[int]]:
    """pid -> client ports of the gateway connections that process holds."""
    conns = established_on(port)
    return {pid: {conns[i] for i in socket_inodes(pid) if i in conns} for pid in pids}


def worker_pids(daemon: Gatewayd) -> list[int]:
    pids = config_state(daemon).get("workerPids")
    assert isinstance(pids, list), config_state(daemon)
    return [int(p) for p in pids]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return state in ("Z", "X")


@contextlib.contextmanager
def held_clients(port: int, count: int) -> Iterator[list[Client]]:
    clients = [Client(port) for _ in range(count)]
    try:
        for c in clients:
            assert c.request("/hold").status == 200
        yield clients
    finally:
        for c in clients:
            c.close()


def client_port(c: Client) -> int:
    assert c.conn.sock is not None
    port: int = c.conn.sock.getsockname()[1]
    return port


def test_workers_share_listeners_restart_and_sum_metrics(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *echo.manifests(),
        http_route("all", [rule(backends=[backend_ref("echo-v1")])]),
    ]
    daemon = gatewayd(docs, args=["--workers", "2"])
    pids = worker_pids(daemon)
    assert len(pids) == 2 and daemon.pid not in pids, pids

    with held_clients(port, 24) as clients:
        # Both workers take connections: they accept on the supervisor's one socket.
        held = owners(port, pids)
        assert all(held[p] for p in pids), held
        assert sum(len(v) for v in held.values()) == 24, held
        for c in clients:
            for _ in range(3):
                assert c.request("/more").status == 200
        # 24 * 4 requests on these connections, plus the one of the readiness check
        # (none: /ready is on the admin port): the sum of both workers.
        samples = prometheus_samples(daemon.metrics(), "gatewayd_downstream_rq_total")
        assert sum(v for _, v in samples) == 24 * 4, samples
        cx = prometheus_samples(daemon.metrics(), "gatewayd_downstream_cx_active")
        assert sum(v for _, v in cx) == 24, cx

        # Kill one worker: its connections go, the other worker's stay up.
        victim, survivor = pids
        survivor_ports = held[survivor]
        os.kill(victim, signal.SIGKILL)
        for _ in deadline_loop(5.0):
            if gone(victim):
                break
        assert gone(victim)
        for c in clients:
            if client_port(c) in survivor_ports:
                assert c.request("/after-kill").status == 200
        # The listener never disappears: new connections keep being served.
        for n in range(50):
            assert request(port, f"/new/{n}").status == 200

    # The supervisor logs the death, starts a new worker and hands it the snapshot.
    line = daemon.child.stderr.wait_for(lambda s: "restarted (pid" in s, timeout=10)
    assert line is not None, daemon.output()
    assert "exited with signal SIGKILL" in daemon.child.stderr.text(), daemon.output()
    now = worker_pids(daemon)
    assert len(now) == 2 and victim not in now and survivor in now, now
    assert daemon.admin_get("/ready")[0] == 200

    # The new worker takes traffic too.
    pids = worker_pids(daemon)
    with held_clients(port, 24):
        held = owners(port, pids)
        assert all(held[p] for p in pids), held


# --------------------------------------------------------------------------- files come and go


@pytest.mark.parametrize("workers", ["1", "2"])
def test_added_and_removed_files_bind_and_drain_only_their_listener(  # type: ignore[no-untyped-def]
    echoes, gatewayd, tmp_path: Path, workers: str
) -> None:
    v1, v2 = echoes.start("echo-v1", "echo-v2")
    B = "127.0.0.2"
    port_a, port_b = free_port(), free_port(B)
    extra = tmp_path / "conf.d"
    extra.mkdir()
    docs = [
        gateway_class(),
        gateway("gw-a", [listener("http", port_a)]),
        *v1.manifests(),
        *v2.manifests(),
        http_route("ra", [rule(backends=[backend_ref("echo-v1")])], parent="gw-a"),
    ]
    daemon = gatewayd(docs, args=["--config", str(extra), "--workers", workers])
    with Client(port_a) as steady:  # asserts the connection is never reopened
        assert steady.request("/a").echo()["pod"] == "echo-v1"

        # A new file brings a new Gateway: bound within 2 s, the other listener untouched.
        (extra / "b.yaml").write_text(
            to_yaml(
                [
                    # Each Gateway has an address of its own.
                    gateway("gw-b", [listener("http", port_b)], address=B),
                    http_route("rb", [rule(backends=[backend_ref("echo-v2")])], parent="gw-b"),
                ]
            )
        )
        written = time.monotonic()
        served = None
        for _ in deadline_loop(5.0):
            with contextlib.suppress(OSError):
                if request(port_b, "/b", address=B, timeout=1).echo()["pod"] == "echo-v2":
                    served = time.monotonic() - written
                    break
        assert served is not None and served < 2.0, (served, daemon.output())
        assert steady.request("/a").echo()["pod"] == "echo-v1"

        # Removing the file drains gw-b alone: its request in flight finishes.
        slow: dict[str, object] = {}

        def slow_request() -> None:
            try:
                slow["status"] = request(port_b, "/b?delay_ms=1500", address=B, timeout=10).status
            except OSError as exc:
                slow["error"] = repr(exc)

        thread = threading.Thread(target=slow_request, daemon=True)
        thread.start()
        time.sleep(0.3)
        (extra / "b.yaml").unlink()
        for _ in deadline_loop(5.0):
            if connect_refused(port_b, B):
                break
        assert connect_refused(port_b, B), "gw-b's listener still accepts after its file went"
        thread.join(10)
        assert slow.get("status") == 200, slow
        names = {(i["kind"], i["metadata"]["name"]) for i in daemon.status_items()}
        assert ("Gateway", "gw-b") not in names and ("HTTPRoute", "rb") not in names, names
        assert ("Gateway", "gw-a") in names
        assert steady.request("/a").echo()["pod"] == "echo-v1"
