"""Memory of ``gatewayd run --workers 1``: what an idle keep-alive connection costs, and
what a file-mode daemon leaves unimported.

The figures behind the bounds (README "Performance", loadtest/README.md): 10,000 idle
keep-alive connections cost 2.1 KB each (3.4 KB before the parser of an idle connection
was released and the pipelining queue became a list), on a 54 MB daemon (99 MB while
the Kubernetes client and cryptography were imported in file mode).
"""

from __future__ import annotations

import re
import resource
import socket
import time
from collections.abc import Iterator

import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    read_response_head,
    rule,
)

pytestmark = pytest.mark.e2e

# Idle keep-alive connections held at once (bounded: the test holds one socket each,
# the daemon one more).
IDLE_CONNECTIONS = 2000
# Connections opened, used and closed first, so that the allocations any first requests
# make (free lists, the connection set's growth) are behind the baseline.
WARM_CONNECTIONS = 200
# Bound on RSS growth per idle keep-alive connection, README "Security and limits".
# Measured 1.5-1.6 KB here (2,000 connections) and 2.1 KB at 10,000 (make bench-idle);
# before the parser release and the list queue: 3.0 KB here, 3.4 KB at 10,000.
IDLE_CONNECTION_BOUND_KB = 2.5
# The deadline sweep releases idle parsers at most 1 s apart (defaults): a few sweeps.
SETTLE_SECONDS = 3.0

REQUEST = b"GET /idle HTTP/1.1\r\nHost: idle.example\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def exchange(sock: socket.socket) -> bytes:
    """One GET on a kept-alive connection; the response head (its body read whole)."""
    sock.sendall(REQUEST)
    head, rest = read_response_head(sock)
    m = CONTENT_LENGTH.search(head)
    assert m is not None, head
    left = int(m.group(1)) - len(rest)
    assert 0 <= left < 1 << 20, head
    while left > 0:
        chunk = sock.recv(min(left, 65536))
        assert chunk, "closed inside the body"
        left -= len(chunk)
    return head


def open_used(port: int) -> socket.socket:
    sock = socket.create_connection((LOCALHOST, port), timeout=10)
    try:
        head = exchange(sock)
    except BaseException:
        sock.close()
        raise
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for the test's sockets and, inherited, the daemon's."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * IDLE_CONNECTIONS + 1024
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need} descriptors")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_keepalive_connections_cost_a_bounded_rss_each(
    descriptors: None,
    echoes,  # type: ignore[no-untyped-def]
    gatewayd,
) -> None:
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs += [http_route("echo", [rule(backends=[backend_ref("echo-v1")])])]
    daemon: Gatewayd = gatewayd(docs, args=["--idle-timeout", "600"])
    for _ in range(WARM_CONNECTIONS):
        open_used(port).close()
    time.sleep(0.5)  # the daemon sees those closes (no event tells the client side)
    before, _ = daemon.memory_kb()
    held: list[socket.socket] = []
    try:
        held.extend(open_used(port) for _ in range(IDLE_CONNECTIONS))
        # Let the sweep pass over every connection; keep the highest reading.
        after = 0
        for _ in deadline_loop(SETTLE_SECONDS, 0.25):
            after = max(after, daemon.memory_kb()[0])
        per_conn = (after - before) / IDLE_CONNECTIONS
        assert per_conn <= IDLE_CONNECTION_BOUND_KB, (
            f"{IDLE_CONNECTIONS} idle keep-alive connections grew RSS from {before} kB "
            f"to {after} kB: {per_conn:.2f} kB each"
        )
        # Every one of them is still kept alive and answers a second request (with a
        # parser made again where the idle one was released).
        for sock in held:
            head = exchange(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        for sock in held:
            sock.close()
    assert daemon.child.alive(), daemon.output()


# Packages a daemon reading files, without TLS, OTLP or --kubernetes, must not import:
# together about 48 MB of its RSS.
NOT_IMPORTED = ("kubernetes_asyncio", "kubernetes_validate", "opentelemetry", "cryptography")
IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", re.MULTILINE)


def test_a_file_mode_daemon_does_not_import_kubernetes_otel_or_cryptography(
    echoes,  # type: ignore[no-untyped-def]
    gatewayd,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)]), *echo.manifests()]
    docs += [http_route("echo", [rule(backends=[backend_ref("echo-v1")])])]
    # The interpreter itself reports every module the daemon process imports (on its
    # stderr, one line each), whenever it happens: at start, at load, on a request.
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    daemon: Gatewayd = gatewayd(docs)
    with open_used(port):
        pass
    assert daemon.metrics()  # the admin's scrape path too
    assert daemon.stop() == 0, daemon.output()
    modules = set(IMPORTED.findall(daemon.child.stderr.text()))
    # The report is there: what the daemon does need was imported and listed.
    assert {"gatewayd.daemon", "gatewayd.proxy.server", "yaml"} <= modules, sorted(modules)
    unexpected = sorted(m for m in modules if m.split(".")[0] in NOT_IMPORTED)
    assert not unexpected, unexpected
