"""HTTPRoute ``retry`` end to end, as the Gateway API conformance scenarios
HTTPRouteRetry, HTTPRouteRetryConnectionError and HTTPRouteRetryWithTimeouts
(HTTPRouteRetryBackendTimeout) drive it; plus the retry buffer limit and the retry
budget.

The backend is a flaky server of our own that counts the tries per request id (the
``uuid`` query parameter) and fails the first ``succeedAfter`` of them: with
``responseCode`` set it answers that status, else it resets the connection (TCP RST
once the request is read); ``delayRetry`` delays each failing try.  The rules and
expectations follow the upstream scenarios: ``attempts`` counts retries, so a request
needing ``attempts + 1`` failures fails.
"""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from e2e_kit import (
    LOCALHOST,
    Doc,
    Gatewayd,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    prometheus_samples,
    request,
    rule,
)
from test_e2e_h2c import H2cClient

pytestmark = pytest.mark.e2e


# --------------------------------------------------------------------------- backend


class FlakyBackend:
    """A threaded HTTP/1.1 keep-alive server failing the first tries of each request."""

    def __init__(self) -> None:
        self.tries: dict[str, int] = {}
        self.total = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                body = self._body()
                query = parse_qs(urlsplit(self.path).query)
                rid = query.get("uuid", [""])[0]
                succeed_after = int(query.get("succeedAfter", ["0"])[0])
                with owner.lock:
                    owner.total += 1
                    n = owner.tries.get(rid, 0)
                    failing = n < succeed_after
                    if failing:
                        owner.tries[rid] = n + 1
                if failing:
                    delay = query.get("delayRetry", [""])[0]
                    if delay:
                        threading.Event().wait(float(delay.removesuffix("ms")) / 1000.0)
                    code = query.get("responseCode", [""])[0]
                    if code:
                        self._answer(int(code), b"failing on purpose")
                    else:
                        # SO_LINGER 0: close() sends RST; the reader holds a reference
                        # to the socket, so it is closed first.
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                        self.close_connection = True
                        self.rfile.close()
                        self.connection.close()
                    return
                self._answer(200, b"ok after %d tries, body %d bytes" % (n + 1, len(body)))

            def _body(self) -> bytes:
                if "chunked" not in (self.headers.get("transfer-encoding") or "").lower():
                    length = int(self.headers.get("content-length") or 0)
                    return self.rfile.read(length) if length else b""
                # A body gatewayd re-chunked (an HTTP/2 client sent no length): at most
                # 1,000 chunks of at most 1 MiB each.
                out = bytearray()
                for _ in range(1000):
                    size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                    if size == 0 or size > 1 << 20:
                        self.rfile.readline(1024)  # the empty trailer section
                        break
                    out += self.rfile.read(size)
                    self.rfile.readline(3)
                return bytes(out)

            def _answer(self, code: int, payload: bytes) -> None:
                self.send_response(code)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the reset connections

        self.server = Server((LOCALHOST, 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    def tries_of(self, rid: str) -> int:
        with self.lock:
            return self.tries.get(rid, 0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    backend: FlakyBackend


def retry_rule(prefix: str, retry: Doc, timeouts: Doc | None = None) -> Doc:
    doc = rule(matches=[match(prefix)], backends=[backend_ref("flaky")], timeouts=timeouts)
    doc["retry"] = retry
    return doc


def manifests(port: int, backend_port: int) -> list[Doc]:
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    docs += backend_manifests("flaky", backend_port)
    docs.append(
        http_route(
            "retries",
            [
                retry_rule("/retry/code-500-attempts-3", {"codes": [500], "attempts": 3}),
                retry_rule(
                    "/retry/code-all-attempts-2", {"codes": [500, 502, 503, 504], "attempts": 2}
                ),
                retry_rule("/retry/no-status-code-attempts-3", {"attempts": 3}),
                retry_rule(
                    "/retry/backend-request-timeout-200ms",
                    {"attempts": 2},
                    {"backendRequest": "200ms"},
                ),
                retry_rule(
                    "/retry/request-timeout-200ms",
                    {"codes": [500], "attempts": 5},
                    {"backendRequest": "200ms", "request": "400ms"},
                ),
                rule(matches=[match("/no-retry")], backends=[backend_ref("flaky")]),
            ],
        )
    )
    return docs


@pytest.fixture(scope="module")
def env(module_gatewayd) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    backend = FlakyBackend()
    port = free_port()
    try:
        daemon = module_gatewayd(manifests(port, backend.port))
        yield Env(daemon, port, backend)
    finally:
        backend.close()


def call(
    env: Env, path: str, method: str = "GET", body: bytes | None = None, **params: str
) -> tuple[int, str]:
    rid = str(uuid.uuid4())
    query = urlencode({**params, "uuid": rid})
    reply = request(env.port, f"{path}?{query}", method=method, body=body, host="retry.example")
    return reply.status, rid


# --------------------------------------------------------------------------- HTTPRouteRetry


@pytest.mark.parametrize(
    ("path", "code", "succeed_after", "want"),
    [
        ("/retry/code-500-attempts-3", "500", 2, 200),
        ("/retry/code-500-attempts-3", "500", 4, 500),
        ("/retry/code-500-attempts-3", "503", 2, 503),  # 503 is not in codes
        ("/retry/code-all-attempts-2", "500", 1, 200),
        ("/retry/code-all-attempts-2", "500", 3, 500),
        ("/retry/code-all-attempts-2", "502", 1, 200),
        ("/retry/code-all-attempts-2", "502", 3, 502),
        ("/retry/code-all-attempts-2", "503", 1, 200),
        ("/retry/code-all-attempts-2", "503", 3, 503),
        ("/retry/code-all-attempts-2", "504", 1, 200),
        ("/retry/code-all-attempts-2", "504", 3, 504),
    ],
)
def test_retry_on_status_codes(
    env: Env, path: str, code: str, succeed_after: int, want: int
) -> None:
    status, rid = call(env, path, responseCode=code, succeedAfter=str(succeed_after))
    assert status == want, env.daemon.output()[-3000:]
    attempts = 3 if "attempts-3" in path else 2
    tries = env.backend.tries_of(rid)
    if want == 200:
        assert tries == succeed_after
    elif code == "503" and "code-500" in path:
        assert tries == 1  # not retried
    else:
        assert tries == attempts + 1  # the first try and every retry


def test_no_retry_without_a_retry_policy(env: Env) -> None:
    status, rid = call(env, "/no-retry", responseCode="500", succeedAfter="1")
    assert status == 500 and env.backend.tries_of(rid) == 1


# --------------------------------------------------------------------------- connection errors


def test_connection_error_retried_until_success(env: Env) -> None:
    status, rid = call(env, "/retry/no-status-code-attempts-3", succeedAfter="2")
    assert status == 200
    assert env.backend.tries_of(rid) == 2


def test_connection_error_retries_exhausted_is_503(env: Env) -> None:
    status, rid = call(env, "/retry/no-status-code-attempts-3", succeedAfter="4")
    # HTTPRouteRetryConnectionError accepts 500 or 503; gatewayd answers Envoy's 503.
    assert status == 503
    assert env.backend.tries_of(rid) == 4  # exactly attempts + 1 tries reached it


# --------------------------------------------------------------------------- with timeouts


def test_backend_request_timeout_retries_then_succeeds(env: Env) -> None:
    status, rid = call(
        env,
        "/retry/backend-request-timeout-200ms",
        responseCode="500",
        succeedAfter="2",
        delayRetry="300ms",
    )
    assert status == 200
    assert env.backend.tries_of(rid) == 2


def test_backend_request_timeout_retries_exhausted_is_504(env: Env) -> None:
    status, _ = call(
        env,
        "/retry/backend-request-timeout-200ms",
        responseCode="500",
        succeedAfter="3",
        delayRetry="300ms",
    )
    assert status == 504


def test_retries_within_the_request_timeout(env: Env) -> None:
    status, _ = call(env, "/retry/request-timeout-200ms", responseCode="500", succeedAfter="1")
    assert status == 200


def test_request_timeout_cuts_the_retries(env: Env) -> None:
    status, rid = call(
        env,
        "/retry/request-timeout-200ms",
        responseCode="500",
        succeedAfter="4",
        delayRetry="100ms",
    )
    assert status == 504
    assert env.backend.tries_of(rid) < 5  # 400 ms leave no room for all of them


# --------------------------------------------------------------------------- request bodies


def test_small_body_is_replayed_on_retry(env: Env) -> None:
    body = b"x" * 1000
    status, rid = call(
        env,
        "/retry/code-500-attempts-3",
        method="POST",
        body=body,
        responseCode="500",
        succeedAfter="1",
    )
    assert status == 200
    assert env.backend.tries_of(rid) == 1


def test_body_over_the_retry_buffer_limit_is_not_retried(env: Env) -> None:
    body = b"x" * (64 * 1024 + 1)  # one byte over the documented 64 KiB
    status, rid = call(
        env,
        "/retry/code-500-attempts-3",
        method="POST",
        body=body,
        responseCode="500",
        succeedAfter="1",
    )
    assert status == 500  # the backend's answer: the body could not be sent again
    assert env.backend.tries_of(rid) == 1


def test_retry_metrics(env: Env) -> None:
    call(env, "/retry/code-all-attempts-2", responseCode="500", succeedAfter="1")
    samples = prometheus_samples(env.daemon.metrics(), "gatewayd_upstream_rq_retry_total")
    assert any(
        v >= 1 for labels, v in samples if labels.get("backend", "").startswith("default/flaky")
    )


def test_retries_for_http2_clients(env: Env) -> None:
    """The retry logic is the exchange's, whatever the client speaks: streams of one
    HTTP/2 connection are retried independently (one with a body)."""
    client = H2cClient(env.port)
    try:
        ids = {}
        for i, (code, after) in enumerate((("500", "2"), ("502", "1"), ("500", "4"))):
            rid = str(uuid.uuid4())
            path = "/retry/code-500-attempts-3" if code == "500" else "/retry/code-all-attempts-2"
            query = urlencode({"responseCode": code, "succeedAfter": after, "uuid": rid})
            body = b"b" * 1000 if i == 0 else b""
            sid = client.send(
                f"{path}?{query}",
                method="POST" if body else "GET",
                authority="retry.example",
                body=body,
            )
            ids[sid] = (rid, after)
        answers = client.wait(list(ids))
    finally:
        client.close()
    got = [(answers[sid].status, env.backend.tries_of(rid)) for sid, (rid, _) in ids.items()]
    assert got == [(200, 2), (200, 1), (500, 4)], got
    first = next(iter(ids))
    assert answers[first].body.endswith(b"body 1000 bytes"), answers[first]


# --------------------------------------------------------------------------- retry budget


def test_retry_budget_stops_a_retry_storm(gatewayd) -> None:  # type: ignore[no-untyped-def]
    """20 requests at once to a backend failing every try slowly, attempts 3: without a
    budget the backend would see 80 tries; the budget (20 % of 20 active, at least 3)
    lets about 4 requests retry and answers the others with their first failure."""
    backend = FlakyBackend()
    try:
        port = free_port()
        daemon = gatewayd(manifests(port, backend.port))
        env = Env(daemon, port, backend)
        n = 20
        with ThreadPoolExecutor(n) as pool:
            futures = [
                pool.submit(
                    call,
                    env,
                    "/retry/code-500-attempts-3",
                    responseCode="500",
                    succeedAfter="9",
                    delayRetry="300ms",
                )
                for _ in range(n)
            ]
            statuses = [f.result(timeout=30)[0] for f in futures]
        assert statuses == [500] * n
        text = daemon.metrics()
        overflow = sum(
            v for _, v in prometheus_samples(text, "gatewayd_upstream_rq_retry_overflow_total")
        )
        retries = sum(v for _, v in prometheus_samples(text, "gatewayd_upstream_rq_retry_total"))
        assert overflow >= n // 2, text
        assert backend.total == n + retries
        assert backend.total <= n + 8 * 3, backend.total  # far below 80
    finally:
        backend.close()


def test_retry_budget_flags(gatewayd) -> None:  # type: ignore[no-untyped-def]
    """--retry-budget-percent 0 --retry-budget-min-retries 0: no retry is ever sent."""
    backend = FlakyBackend()
    try:
        port = free_port()
        daemon = gatewayd(
            manifests(port, backend.port),
            args=("--retry-budget-percent", "0", "--retry-budget-min-retries", "0"),
        )
        env = Env(daemon, port, backend)
        status, rid = call(env, "/retry/code-500-attempts-3", responseCode="500", succeedAfter="1")
        assert status == 500 and backend.tries_of(rid) == 1
        samples = prometheus_samples(daemon.metrics(), "gatewayd_upstream_rq_retry_overflow_total")
        assert sum(v for _, v in samples) == 1
    finally:
        backend.close()
