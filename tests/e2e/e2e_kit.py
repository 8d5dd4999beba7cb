"""Helpers for the end-to-end suite: processes, manifests, HTTP clients, backends.

Everything here drives gatewayd from the outside, as a user would: ``python -m gatewayd``
subprocesses, YAML files, TCP sockets.  Nothing imports gatewayd itself.

Imported by conftest.py (fixtures) and the test modules (builders and clients); the
directory is on ``sys.path`` because pytest inserts a conftest's directory (prepend mode).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONTROLLER = "gatewayd.dev/gateway-controller"
GATEWAY_API = "gateway.networking.k8s.io/v1"
LOCALHOST = "127.0.0.1"

ECHO_READY_TIMEOUT = 10.0
DAEMON_READY_TIMEOUT = 15.0
STOP_GRACE = 5.0

Doc = dict[str, Any]


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago on ``host`` (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def deadline_loop(timeout: float, interval: float = 0.05) -> Iterator[float]:
    """Yield the time left until ``timeout`` elapses, pausing ``interval`` between yields.

    For conditions that have no event to wait on (an HTTP endpoint turning 200, a file
    in /proc): a bounded poll."""
    end = time.monotonic() + timeout
    first = True
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        if not first:
            time.sleep(min(interval, left))
        first = False
        yield left


# --------------------------------------------------------------------------- processes


class OutputPump:
    """Drains a child's pipe into a list of lines on a thread (so the child never blocks
    on a full pipe) and lets the test wait for a line."""

    def __init__(self, stream: Any, label: str) -> None:
        self.label = label
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._stream = stream
        self._thread = threading.Thread(target=self._run, name=f"pump-{label}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float, start: int = 0
    ) -> str | None:
        """The first line from line number ``start`` on (already seen or future)
        satisfying ``predicate``, or None on timeout or end of stream."""
        end = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = end - time.monotonic()
                if self._closed or left <= 0:
                    return None
                self._cond.wait(left)

    def mark(self) -> int:
        """The number of lines so far, to wait for lines after this point."""
        with self._cond:
            return len(self.lines)

    def count(self, predicate: Callable[[str], bool]) -> int:
        with self._cond:
            return sum(1 for line in self.lines if predicate(line))

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._stream.close()


class Child:
    """A subprocess with both pipes pumped; stopped with SIGTERM then SIGKILL."""

    def __init__(self, argv: Sequence[str], label: str, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.label = label
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )
        self.stdout = OutputPump(self.proc.stdout, f"{label}-out")
        self.stderr = OutputPump(self.proc.stderr, f"{label}-err")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return (
            f"--- {self.label} argv: {' '.join(self.argv)}\n"
            f"--- {self.label} exit code: {self.proc.poll()}\n"
            f"--- {self.label} stdout:\n{self.stdout.text()[-20000:]}\n"
            f"--- {self.label} stderr:\n{self.stderr.text()[-20000:]}"
        )

    def stop(self) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_GRACE)
        self.stdout.join()
        self.stderr.join()
        return self.proc.returncode


def gatewayd_argv(*args: str) -> list[str]:
    """``python -m gatewayd ARGS``; $GATEWAYD_E2E_COMMAND (shell words) replaces the
    ``python -m gatewayd`` part, e.g. to test an installed ``gatewayd`` script."""
    command = os.environ.get("GATEWAYD_E2E_COMMAND")
    base = shlex.split(command) if command else [sys.executable, "-m", "gatewayd"]
    return [*base, *args]


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a short-lived ``gatewayd`` command and capture its output."""
    return subprocess.run(
        gatewayd_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


# --------------------------------------------------------------------------- echo


@dataclass
class EchoBackend:
    name: str
    namespace: str
    host: str
    port: int
    child: Child

    def manifests(
        self, service: str | None = None, *, service_port: int = 80, ready: bool = True
    ) -> list[Doc]:
        """Service + EndpointSlice pointing at this echo (Service name = echo name)."""
        return backend_manifests(
            service or self.name,
            self.port,
            namespace=self.namespace,
            service_port=service_port,
            ready=ready,
            pod=self.name,
        )


class EchoFactory:
    """Starts ``gatewayd echo`` processes; ``close()`` stops them all."""

    def __init__(self) -> None:
        self.backends: list[EchoBackend] = []

    def start(self, *names: str, namespace: str = "default") -> list[EchoBackend]:
        """Start one echo per name (in parallel) and wait for each "listening" line.

        Each binds 127.0.0.1 port 0 and reports the port it got, so no port race."""
        children = [
            (
                name,
                Child(
                    gatewayd_argv(
                        "echo",
                        "--listen",
                        f"{LOCALHOST}:0",
                        "--name",
                        name,
                        "--namespace",
                        namespace,
                    ),
                    f"echo-{name}",
                ),
            )
            for name in names
        ]
        started: list[EchoBackend] = []
        failures: list[str] = []
        for name, child in children:
            line = child.stdout.wait_for(lambda s: "listening on" in s, ECHO_READY_TIMEOUT)
            m = re.search(r"listening on \[?([0-9a-fA-F.:]+?)\]?:(\d+)\s*$", line or "")
            if m is None:
                failures.append(child.output())
                child.stop()
                continue
            backend = EchoBackend(name, namespace, m.group(1), int(m.group(2)), child)
            started.append(backend)
            self.backends.append(backend)
        if failures:
            raise AssertionError("echo backend(s) did not start:\n" + "\n".join(failures))
        return started

    def close(self) -> None:
        for b in self.backends:
            b.child.stop()
        self.backends.clear()


# --------------------------------------------------------------------------- recording backend


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection_id: int


class _RecordingHandler(socketserver.StreamRequestHandler):
    server: _RecordingTCPServer

    def handle(self) -> None:
        owner = self.server.owner
        conn_id = owner._new_connection(self.connection)
        try:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    continue
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    return
                method, path, _ = parts
                headers: dict[str, str] = {}
                while True:
                    h = self.rfile.readline(65537)
                    if not h or h in (b"\r\n", b"\n"):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    key = name.strip().lower()
                    value = value.strip()
                    headers[key] = f"{headers[key]},{value}" if key in headers else value
                if owner.mode == "close":
                    return
                if owner.mode == "reset":
                    # SO_LINGER 0: close() sends RST instead of FIN.
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    return
                body = self._read_body(headers)
                owner._record(Recorded(method, path, headers, body, conn_id))
                payload = json.dumps({"path": path, "connection": conn_id}).encode()
                self.wfile.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )
                self.wfile.flush()
                if owner.mode == "oneshot" or headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ValueError):
            return

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = bytearray()
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(3)
        length = int(headers.get("content-length", "0") or "0")
        return self.rfile.read(length) if length else b""


class _RecordingTCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, owner: RecordingServer) -> None:
        self.owner = owner
        super().__init__((LOCALHOST, 0), _RecordingHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer that goes away mid-request is not a test failure here

    def shutdown_request(self, request: Any) -> None:
        if self.owner.mode == "reset":
            # no shutdown(SHUT_WR) first: that would send a FIN before the RST
            self.close_request(request)
        else:
            super().shutdown_request(request)
        self.owner._closed_connection()


class RecordingServer:
    """A tiny HTTP/1.1 keep-alive backend on a thread that records what it receives.

    ``mode``: "ok" answers 200 with a small JSON body; "oneshot" does the same but then
    closes the connection without having announced it (no ``Connection: close``), as an
    idle-timeout would; "close" closes the connection once the request head is read (no
    response); "reset" does the same with a TCP RST.
    ``connections`` counts accepted TCP connections (to observe upstream keep-alive)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[Recorded] = []
        self.connections = 0
        self.closed = 0
        self._socks: list[socket.socket] = []
        self._cond = threading.Condition()
        self._server = _RecordingTCPServer(self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def _new_connection(self, sock: socket.socket) -> int:
        with self._cond:
            self.connections += 1
            self._socks.append(sock)
            return self.connections

    def _closed_connection(self) -> None:
        with self._cond:
            self.closed += 1
            self._cond.notify_all()

    def wait_closed(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` connections have been closed by this server's side."""
        end = time.monotonic() + timeout
        with self._cond:
            while self.closed < count:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _record(self, rec: Recorded) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float) -> Recorded | None:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for rec in self.requests:
                    if predicate(rec):
                        return rec
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def snapshot(self) -> tuple[int, list[Recorded]]:
        with self._cond:
            return self.connections, list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        with self._cond:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(5)


# --------------------------------------------------------------------------- manifests


def to_yaml(docs: Iterable[Doc]) -> str:
    return yaml.safe_dump_all(list(docs), sort_keys=False)


def gateway_class(name: str = "gatewayd", controller: str = CONTROLLER) -> Doc:
    return {
        "apiVersion": GATEWAY_API,
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller},
    }


def listener(
    name: str,
    port: int,
    *,
    hostname: str | None = None,
    protocol: str = "HTTP",
    from_namespaces: str = "Same",
) -> Doc:
    doc: Doc = {"name": name, "port": port, "protocol": protocol}
    if hostname is not None:
        doc["hostname"] = hostname
    if from_namespaces != "Same":
        doc["allowedRoutes"] = {"namespaces": {"from": from_namespaces}}
    return doc


def gateway(
    name: str,
    listeners: Sequence[Doc],
    *,
    namespace: str = "default",
    address: str | None = LOCALHOST,
    class_name: str = "gatewayd",
) -> Doc:
    """A Gateway; ``address=None`` leaves spec.addresses out (pool allocation)."""
    spec: Doc = {"gatewayClassName": class_name, "listeners": list(listeners)}
    if address is not None:
        spec["addresses"] = [{"type": "IPAddress", "value": address}]
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def service(
    name: str,
    ports: Sequence[tuple[str, int]],
    *,
    namespace: str = "default",
) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": pname, "port": port, "protocol": "TCP"} for pname, port in ports],
        },
    }


def endpoint_slice(
    service_name: str,
    ports: Sequence[tuple[str, int]],
    *,
    namespace: str = "default",
    addresses: Sequence[str] = (LOCALHOST,),
    ready: bool = True,
    pod: str | None = None,
    slice_name: str | None = None,
) -> Doc:
    endpoint: Doc = {"addresses": list(addresses), "conditions": {"ready": ready}}
    if pod is not None:
        endpoint["targetRef"] = {"kind": "Pod", "name": pod, "namespace": namespace}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name or f"{service_name}-1",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": pname, "port": port, "protocol": "TCP"} for pname, port in ports],
        "endpoints": [endpoint],
    }


def backend_manifests(
    service_name: str,
    target_port: int,
    *,
    namespace: str = "default",
    service_port: int = 80,
    port_name: str = "http",
    ready: bool = True,
    pod: str | None = None,
) -> list[Doc]:
    """A Service (port ``service_port`` named ``port_name``) and its EndpointSlice with one
    127.0.0.1 endpoint on ``target_port``."""
    return [
        service(service_name, [(port_name, service_port)], namespace=namespace),
        endpoint_slice(
            service_name,
            [(port_name, target_port)],
            namespace=namespace,
            ready=ready,
            pod=pod,
        ),
    ]


def backend_ref(
    name: str,
    *,
    port: int = 80,
    weight: int | None = None,
    filters: Sequence[Doc] | None = None,
    namespace: str | None = None,
    kind: str | None = None,
) -> Doc:
    doc: Doc = {"name": name, "port": port}
    if kind is not None:
        doc["kind"] = kind
    if namespace is not None:
        doc["namespace"] = namespace
    if weight is not None:
        doc["weight"] = weight
    if filters:
        doc["filters"] = list(filters)
    return doc


def match(
    path: str | None = None,
    *,
    type: str = "PathPrefix",
    headers: Sequence[tuple[str, str]] | Sequence[tuple[str, str, str]] = (),
    query: Sequence[tuple[str, str]] | Sequence[tuple[str, str, str]] = (),
    method: str | None = None,
) -> Doc:
    """An HTTPRouteMatch.  Header/query tuples: (name, value) or (type, name, value)."""
    doc: Doc = {}
    if path is not None:
        doc["path"] = {"type": type, "value": path}

    def _entries(items: Sequence[tuple[str, ...]]) -> list[Doc]:
        out = []
        for item in items:
            if len(item) == 2:
                out.append({"name": item[0], "value": item[1]})
            else:
                out.append({"type": item[0], "name": item[1], "value": item[2]})
        return out

    if headers:
        doc["headers"] = _entries(headers)
    if query:
        doc["queryParams"] = _entries(query)
    if method is not None:
        doc["method"] = method
    return doc


def rule(
    *,
    matches: Sequence[Doc] | None = None,
    backends: Sequence[Doc] | None = None,
    filters: Sequence[Doc] | None = None,
    timeouts: Doc | None = None,
) -> Doc:
    doc: Doc = {}
    if matches is not None:
        doc["matches"] = list(matches)
    if filters:
        doc["filters"] = list(filters)
    if backends is not None:
        doc["backendRefs"] = list(backends)
    if timeouts is not None:
        doc["timeouts"] = timeouts
    return doc


def http_route(
    name: str,
    rules: Sequence[Doc],
    *,
    hostnames: Sequence[str] = (),
    parent: str = "gw",
    section: str | None = None,
    namespace: str = "default",
    created: str | None = None,
    parent_namespace: str | None = None,
) -> Doc:
    parent_ref: Doc = {"name": parent}
    if parent_namespace is not None:
        parent_ref["namespace"] = parent_namespace
    if section is not None:
        parent_ref["sectionName"] = section
    meta: Doc = {"name": name, "namespace": namespace}
    if created is not None:
        meta["creationTimestamp"] = created
    spec: Doc = {"parentRefs": [parent_ref], "rules": list(rules)}
    if hostnames:
        spec["hostnames"] = list(hostnames)
    return {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": meta, "spec": spec}


def reference_grant(
    name: str,
    namespace: str,
    *,
    from_namespace: str,
    from_kind: str = "HTTPRoute",
    to_kind: str = "Service",
    to_name: str | None = None,
) -> Doc:
    """A ReferenceGrant in ``namespace`` letting ``from_kind`` objects of
    ``from_namespace`` refer to its ``to_kind`` objects."""
    to: Doc = {"group": "", "kind": to_kind}
    if to_name is not None:
        to["name"] = to_name
    return {
        "apiVersion": "gateway.networking.k8s.io/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "from": [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": from_kind,
                    "namespace": from_namespace,
                }
            ],
            "to": [to],
        },
    }


def ca_config_map(name: str, ca_pem: bytes, namespace: str = "default") -> Doc:
    """A ConfigMap holding a CA bundle under ``ca.crt`` (BackendTLSPolicy validation)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"ca.crt": ca_pem.decode()},
    }


def backend_tls_policy(
    name: str, service: str, *, hostname: str, ca: str, namespace: str = "default"
) -> Doc:
    """A BackendTLSPolicy on ``service``: verify against ConfigMap ``ca`` and ``hostname``."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "BackendTLSPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": service}],
            "validation": {
                "hostname": hostname,
                "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": ca}],
            },
        },
    }


def header_filter(
    kind: str = "RequestHeaderModifier",
    *,
    set: Sequence[tuple[str, str]] = (),
    add: Sequence[tuple[str, str]] = (),
    remove: Sequence[str] = (),
) -> Doc:
    body: Doc = {}
    if set:
        body["set"] = [{"name": n, "value": v} for n, v in set]
    if add:
        body["add"] = [{"name": n, "value": v} for n, v in add]
    if remove:
        body["remove"] = list(remove)
    key = "requestHeaderModifier" if kind == "RequestHeaderModifier" else "responseHeaderModifier"
    return {"type": kind, key: body}


# --------------------------------------------------------------------------- the daemon


class Gatewayd:
    """A running ``gatewayd run`` with its manifests in ``workdir``."""

    # Daemons alive right now, so a failing test's report can show their logs.
    live: list[Gatewayd] = []

    def __init__(
        self,
        workdir: Path,
        docs: Sequence[Doc] | str,
        *,
        args: Sequence[str] = (),
        wait: str = "ready",
        timeout: float = DAEMON_READY_TIMEOUT,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "manifests.yaml"
        self.config.write_text(docs if isinstance(docs, str) else to_yaml(docs))
        self.admin_port = free_port()
        self.admin = f"http://{LOCALHOST}:{self.admin_port}"
        argv = gatewayd_argv(
            "run",
            "--config",
            str(self.config),
            "--admin-address",
            f"{LOCALHOST}:{self.admin_port}",
            # One worker process unless a test asks for more: the default is one per CPU.
            *(() if "--workers" in args else ("--workers", "1")),
            *args,
        )
        self.child = Child(argv, "gatewayd", cwd=workdir)
        Gatewayd.live.append(self)
        try:
            if wait == "ready":
                self._wait_ready(timeout)
            elif wait == "status":
                self._wait_status(timeout)
        except BaseException:
            self.stop()
            raise

    # -- lifecycle -----------------------------------------------------------------
    def _wait_ready(self, timeout: float) -> None:
        last = "no answer"
        for _ in deadline_loop(timeout):
            if not self.child.alive():
                break
            code, body = self.admin_get("/ready", timeout=1.0)
            if code == 200:
                return
            last = f"{code} {body[:200]!r}"
        raise AssertionError(
            f"gatewayd /ready did not turn 200 within {timeout}s (last: {last})\n"
            + self.child.output()
        )

    def _wait_status(self, timeout: float) -> None:
        for _ in deadline_loop(timeout):
            if not self.child.alive():
                break
            code, body = self.admin_get("/status", timeout=1.0)
            if code == 200 and json.loads(body).get("items"):
                return
        raise AssertionError(
            f"gatewayd /status had no items within {timeout}s\n" + self.child.output()
        )

    def stop(self) -> int:
        if self in Gatewayd.live:
            Gatewayd.live.remove(self)
        return self.child.stop()

    @property
    def pid(self) -> int:
        return self.child.pid

    def output(self) -> str:
        return self.child.output()

    # -- admin ---------------------------------------------------------------------
    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) of an admin GET; (0, reason) when nothing answers."""
        try:
            with urllib.request.urlopen(self.admin + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()
        except (OSError, http.client.HTTPException) as exc:
            return 0, str(exc)

    def status_items(self) -> list[Doc]:
        code, body = self.admin_get("/status")
        assert code == 200, f"/status answered {code}: {body}\n{self.output()}"
        items: list[Doc] = json.loads(body)["items"]
        return items

    def status_of(self, kind: str, name: str, namespace: str | None = "default") -> Doc:
        items = self.status_items()
        for item in items:
            meta = item.get("metadata", {})
            if (
                item.get("kind") == kind
                and meta.get("name") == name
                and (namespace is None or meta.get("namespace", "") in (namespace, ""))
            ):
                status: Doc = item.get("status", {})
                return status
        raise AssertionError(f"no {kind} {namespace}/{name} in /status: {json.dumps(items)}")

    def metrics(self) -> str:
        code, body = self.admin_get("/stats/prometheus")
        assert code == 200, f"/stats/prometheus answered {code}: {body}"
        return body

    def listener_label(self, port: int) -> str:
        """The ``listener`` label of the connection series of the socket on ``port``:
        "namespace/gateway/listener[,listener...]", the Gateway listeners sharing it."""
        code, body = self.admin_get("/config_dump")
        assert code == 200, f"/config_dump answered {code}: {body}"
        for lp in json.loads(body)["listeners"]:
            if lp["port"] == port:
                return f"{lp['gateway']}/{','.join(lp['listeners'])}"
        raise AssertionError(f"no listener port {port} in /config_dump")

    # -- memory ----------------------------------------------------------------------
    def memory_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in kB summed over the daemon and its descendants."""
        rss = hwm = 0
        for pid in process_tree(self.pid):
            fields = proc_status(pid)
            rss += fields.get("VmRSS", 0)
            hwm += fields.get("VmHWM", 0)
        return rss, hwm


def proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    i = 0
    while i < len(pids):
        p = pids[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            pids.extend(int(c) for c in children if int(c) not in pids)
    return pids


class MemorySampler:
    """Samples the daemon's RSS on a thread while a transfer runs; ``peak_growth_kb()``
    is the highest RSS (or the new high-water mark) above the RSS before it started."""

    def __init__(self, daemon: Gatewayd, interval: float = 0.02) -> None:
        self.daemon = daemon
        self.interval = interval
        self.baseline_rss, self.baseline_hwm = daemon.memory_kb()
        self.peak_rss = self.baseline_rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss, _ = self.daemon.memory_kb()
            self.peak_rss = max(self.peak_rss, rss)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        rss, hwm = self.daemon.memory_kb()
        self.peak_rss = max(self.peak_rss, rss)
        if hwm > self.baseline_hwm:  # a new peak was reached during the transfer
            self.peak_rss = max(self.peak_rss, hwm)

    def peak_growth_kb(self) -> int:
        return self.peak_rss - self.baseline_rss


# --------------------------------------------------------------------------- status


def conditions(obj: dict[str, object]) -> dict[str, dict[str, object]]:
    conds = obj.get("conditions") or []
    assert isinstance(conds, list)
    return {str(c["type"]): c for c in conds}


def assert_condition(
    obj: dict[str, object], ctype: str, status: str, reason: str | None = None
) -> None:
    conds = conditions(obj)
    assert ctype in conds, f"no {ctype} condition in {json.dumps(obj)}"
    assert conds[ctype]["status"] == status, f"{ctype}: {conds[ctype]}"
    if reason is not None:
        assert conds[ctype]["reason"] == reason, f"{ctype}: {conds[ctype]}"


# --------------------------------------------------------------------------- HTTP clients


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    will_close: bool = False

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Doc:
        try:
            doc: Doc = json.loads(self.body)
        except ValueError as exc:
            raise AssertionError(
                f"expected a JSON body, got {self.status} {self.body[:300]!r}"
            ) from exc
        return doc

    def echo(self) -> Doc:
        """The echo backend's JSON document, asserting the request reached it."""
        assert self.status == 200, (
            f"expected 200 from the echo, got {self.status}: {self.body[:300]!r}"
        )
        doc = self.json()
        assert "pod" in doc, f"not an echo answer: {doc}"
        return doc


def echo_header(doc: Doc, name: str) -> list[str]:
    """Values of request header ``name`` as the echo saw it (case-insensitive), with
    comma-joined values split, so "a, b" and ["a", "b"] compare the same."""
    out: list[str] = []
    for k, values in doc.get("headers", {}).items():
        if k.lower() == name.lower():
            for v in values:
                out.extend(part.strip() for part in v.split(","))
    return out


HeaderList = Sequence[tuple[str, str]] | dict[str, str]


def _header_pairs(headers: HeaderList | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


class Client:
    """One keep-alive HTTP/1.1 client connection (http.client), reused across requests.

    ``request()`` fails if the connection had to be reopened, so keep-alive is asserted
    implicitly unless ``allow_reconnect`` is set."""

    def __init__(
        self,
        port: int,
        address: str = LOCALHOST,
        timeout: float = 10.0,
        allow_reconnect: bool = False,
    ) -> None:
        self.conn = http.client.HTTPConnection(address, port, timeout=timeout)
        self.allow_reconnect = allow_reconnect
        self.first_sock: socket.socket | None = None
        self.requests = 0

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        host: str | None = None,
        headers: HeaderList | None = None,
        body: bytes | None = None,
    ) -> Reply:
        conn = self.conn
        pairs = _header_pairs(headers)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if not any(k.lower() == "host" for k, _ in pairs):
            conn.putheader("Host", host or f"{conn.host}:{conn.port}")
        for k, v in pairs:
            conn.putheader(k, v)
        if body is not None and not any(k.lower() == "content-length" for k, _ in pairs):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        if not self.allow_reconnect:
            if self.first_sock is None:
                self.first_sock = conn.sock
            else:
                assert conn.sock is self.first_sock, (
                    f"client connection was not kept alive (request #{self.requests + 1})"
                )
        resp = conn.getresponse()
        data = resp.read()
        self.requests += 1
        return Reply(resp.status, list(resp.getheaders()), data, resp.will_close)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    host: str | None = None,
    headers: HeaderList | None = None,
    body: bytes | None = None,
    address: str = LOCALHOST,
    timeout: float = 10.0,
) -> Reply:
    """One request on a fresh connection."""
    with Client(port, address, timeout=timeout, allow_reconnect=True) as c:
        return c.request(path, method=method, host=host, headers=headers, body=body)


@dataclass
class RawResult:
    data: bytes
    closed: bool  # the server closed the connection (EOF or reset) within the timeout
    reset: bool = False
    elapsed: float = 0.0

    @property
    def status(self) -> int | None:
        m = re.match(rb"HTTP/1\.[01] (\d{3})", self.data)
        return int(m.group(1)) if m else None

    def status_lines(self) -> list[bytes]:
        return re.findall(rb"HTTP/1\.[01] \d{3}[^\r\n]*", self.data)


def raw_exchange(
    port: int,
    data: bytes,
    *,
    address: str = LOCALHOST,
    timeout: float = 5.0,
) -> RawResult:
    """Send ``data`` as is and read until the server closes or ``timeout`` passes."""
    start = time.monotonic()
    received = bytearray()
    closed = reset = False
    with socket.create_connection((address, port), timeout=timeout) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        end = start + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    return RawResult(bytes(received), closed, reset, time.monotonic() - start)


def read_response_head(sock: socket.socket, limit: int = 65536) -> tuple[bytes, bytes]:
    """Read from ``sock`` until the end of a response head: (head, body bytes after)."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before the response head: {bytes(buf)!r}")
        buf += chunk
        assert len(buf) < limit, "response head too large"
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    return head, rest


@dataclass
class Counter:
    values: dict[str, int] = field(default_factory=dict)

    def add(self, key: str) -> None:
        self.values[key] = self.values.get(key, 0) + 1


def prometheus_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in a Prometheus text exposition."""
    out: list[tuple[dict[str, str], float]] = []
    pattern = re.compile(r"^" + re.escape(name) + r"(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
    for line in text.splitlines():
        m = pattern.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group("labels") or ""))
        out.append((labels, float(m.group("value"))))
    return out
