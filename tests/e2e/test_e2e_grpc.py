"""GRPCRoute end to end: the real grpcio client through `gatewayd run` (h2c downstream)
to grpcio servers (h2c upstream).  The scenarios follow the upstream conformance tests
(GRPCExactMethodMatching, GRPCRouteHeaderMatching, GRPCRouteListenerHostnameMatching,
GRPCRouteWeight, GRPCRouteNamedRule, GRPCRouteRequestHeaderModifier,
GRPCRouteResponseHeaderModifier, GRPCRouteRequestMirror) in our e2e style."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from e2e_kit import (
    Gatewayd,
    backend_manifests,
    backend_ref,
    deadline_loop,
    free_port,
    gateway,
    gateway_class,
    header_filter,
    listener,
)
from grpc_kit import (
    GrpcBackend,
    channel,
    failure,
    grpc_route,
    method_match,
    raw_grpc_call,
    unary,
)

pytestmark = pytest.mark.e2e

NAMES = ("grpc-v1", "grpc-v2", "grpc-v3", "grpc-mirror")


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    backends: dict[str, GrpcBackend]


@pytest.fixture(scope="module")
def grpc_backends() -> Iterator[dict[str, GrpcBackend]]:
    backends = {name: GrpcBackend(name) for name in NAMES}
    yield backends
    for b in backends.values():
        b.close()


@pytest.fixture(scope="module")
def env(grpc_backends: dict[str, GrpcBackend], module_gatewayd) -> Env:  # type: ignore[no-untyped-def]
    port = free_port()
    docs = [gateway_class(), gateway("gw", [listener("http", port)])]
    for name, b in grpc_backends.items():
        docs += backend_manifests(name, b.port, port_name="grpc")
    docs += [
        grpc_route(
            "exact",
            [
                {
                    "matches": [method_match("pkg.Exact", "Unary")],
                    "backendRefs": [backend_ref("grpc-v1")],
                },
                {
                    "matches": [method_match("pkg.Exact", "Other")],
                    "backendRefs": [backend_ref("grpc-v2")],
                },
                {
                    # Service only: every method of it.
                    "matches": [method_match("pkg.Streams")],
                    "backendRefs": [backend_ref("grpc-v1")],
                },
            ],
            hostnames=("exact.example",),
        ),
        grpc_route(
            "regex",
            [
                {
                    "matches": [method_match(r"pkg\.Re[a-z]+", "Get.*", type="RegularExpression")],
                    "backendRefs": [backend_ref("grpc-v3")],
                }
            ],
            hostnames=("regex.example",),
        ),
        grpc_route(
            "headers",
            [
                {
                    "matches": [method_match(headers=(("version", "two"),))],
                    "backendRefs": [backend_ref("grpc-v2")],
                },
                {"backendRefs": [backend_ref("grpc-v1")]},
            ],
            hostnames=("headers.example",),
        ),
        grpc_route(
            "modifiers",
            [
                {
                    "name": "mod-rule",
                    "filters": [
                        header_filter(
                            set=(("x-set", "s"),), add=(("x-add", "a"),), remove=("x-gone",)
                        ),
                        header_filter(
                            "ResponseHeaderModifier", set=(("x-resp", "r"),), remove=("x-backend",)
                        ),
                    ],
                    "backendRefs": [backend_ref("grpc-v1")],
                }
            ],
            hostnames=("modifiers.example",),
        ),
        grpc_route(
            "weights",
            [
                {
                    "backendRefs": [
                        backend_ref("grpc-v1", weight=90),
                        backend_ref("grpc-v2", weight=10),
                    ]
                }
            ],
            hostnames=("weights.example",),
        ),
        grpc_route(
            "mirror",
            [
                {
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {"backendRef": {"name": "grpc-mirror", "port": 80}},
                        }
                    ],
                    "backendRefs": [backend_ref("grpc-v3")],
                }
            ],
            hostnames=("mirror.example",),
        ),
        grpc_route(
            "down",
            [{"backendRefs": [backend_ref("grpc-gone")]}],
            hostnames=("down.example",),
        ),
    ]
    # A Service with no ready endpoint: UNAVAILABLE.
    docs += backend_manifests("grpc-gone", free_port(), port_name="grpc", ready=False)
    return Env(module_gatewayd(docs), port, grpc_backends)


def test_unary_exact_method_match(env: Env) -> None:
    with channel(env.port, "exact.example") as ch:
        answer, meta = unary(ch, "/pkg.Exact/Unary", b"hello")
        assert answer["backend"] == "grpc-v1"
        assert answer["body"] == "hello"
        assert answer["method"] == "/pkg.Exact/Unary"
        assert meta["x-backend"] == "grpc-v1"
        answer, _ = unary(ch, "/pkg.Exact/Other")
        assert answer["backend"] == "grpc-v2"
        # No rule matches this method: UNIMPLEMENTED (a trailers-only local reply).
        err = failure(ch, "/pkg.Exact/Missing")
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unknown_hostname_is_unimplemented(env: Env) -> None:
    with channel(env.port, "nowhere.example") as ch:
        err = failure(ch, "/pkg.Exact/Unary")
        assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_regex_method_match(env: Env) -> None:
    with channel(env.port, "regex.example") as ch:
        answer, _ = unary(ch, "/pkg.Regex/GetThing")
        assert answer["backend"] == "grpc-v3"
        assert failure(ch, "/pkg.Regex/PutThing").code() == grpc.StatusCode.UNIMPLEMENTED
        assert failure(ch, "/pkg.Other/GetThing").code() == grpc.StatusCode.UNIMPLEMENTED


def test_header_match(env: Env) -> None:
    with channel(env.port, "headers.example") as ch:
        answer, _ = unary(ch, "/any.Svc/M", metadata=(("version", "two"),))
        assert answer["backend"] == "grpc-v2"
        answer, _ = unary(ch, "/any.Svc/M", metadata=(("version", "one"),))
        assert answer["backend"] == "grpc-v1"


def test_header_modifiers(env: Env) -> None:
    with channel(env.port, "modifiers.example") as ch:
        answer, meta = unary(
            ch, "/pkg.Mod/Unary", metadata=(("x-add", "client"), ("x-gone", "bye"), ("x-set", "c"))
        )
    got = answer["metadata"]
    assert got["x-set"] == "s"
    assert got["x-add"] == "client,a"
    assert "x-gone" not in got
    assert meta["x-resp"] == "r"
    assert "x-backend" not in meta


def test_weights_90_10(env: Env) -> None:
    counts = {"grpc-v1": 0, "grpc-v2": 0}
    with channel(env.port, "weights.example") as ch:
        for _ in range(200):
            answer, _ = unary(ch, "/pkg.W/Unary")
            counts[answer["backend"]] += 1
    # 90/10 over 200 calls: 180 expected for v1; far outside chance either way.
    assert 155 <= counts["grpc-v1"] <= 197, counts
    assert counts["grpc-v2"] >= 3, counts


def test_mirror(env: Env) -> None:
    mirror = env.backends["grpc-mirror"]
    before = len(mirror.calls)
    with channel(env.port, "mirror.example") as ch:
        answer, _ = unary(ch, "/pkg.Mirror/Unary", b"copy me")
    assert answer["backend"] == "grpc-v3"
    for _ in deadline_loop(10):
        if len(mirror.calls) > before:
            break
    assert mirror.calls[-1]["method"] == "/pkg.Mirror/Unary"


def test_no_healthy_backend_is_unavailable(env: Env) -> None:
    with channel(env.port, "down.example") as ch:
        err = failure(ch, "/pkg.Down/Unary")
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_backend_status_is_relayed(env: Env) -> None:
    with channel(env.port, "exact.example") as ch:
        err = failure(ch, "/pkg.Streams/Fail", b"NOT_FOUND")
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "failed as asked"


def test_server_streaming(env: Env) -> None:
    with channel(env.port, "exact.example") as ch:
        got = list(ch.unary_stream("/pkg.Streams/ServerStream")(b"50", timeout=10))
    assert got == [b"chunk-%d" % i for i in range(50)]


def test_client_streaming(env: Env) -> None:
    with channel(env.port, "exact.example") as ch:
        parts = [b"p%d" % i for i in range(30)]
        got = ch.stream_unary("/pkg.Streams/ClientStream")(iter(parts), timeout=10)
    assert got == b"|".join(parts)


def test_bidi_streaming_is_interactive(env: Env) -> None:
    """Each message goes through and its echo comes back before the next is sent:
    the proxy relays a stream as it flows, it does not wait for the request's end."""
    sent: list[bytes] = []
    ready = threading.Semaphore(0)

    def requests() -> Iterator[bytes]:
        for i in range(20):
            msg = b"m%d" % i
            sent.append(msg)
            yield msg
            assert ready.acquire(timeout=10), f"no echo for {msg!r}"

    got: list[bytes] = []
    with channel(env.port, "exact.example") as ch:
        for reply in ch.stream_stream("/pkg.Streams/Bidi")(requests(), timeout=20):
            got.append(reply)
            ready.release()
    assert got == [b"echo:" + m for m in sent]
    assert len(got) == 20


def test_large_messages_both_ways(env: Env) -> None:
    """Bodies far over the 64 KiB stream window on both hops: flow control per stream."""
    big = b"x" * (3 * 1024 * 1024)
    with channel(env.port, "exact.example") as ch:
        answer, _ = unary(ch, "/pkg.Exact/Unary", big)
    assert len(answer["body"]) == len(big)


def test_no_route_is_a_trailers_only_unimplemented(env: Env) -> None:
    """gRPC over HTTP/2: "Trailers-Only is permitted for calls that produce an immediate
    error": HTTP 200, content-type application/grpc, grpc-status in the one HEADERS
    frame that ends the stream."""
    a = raw_grpc_call(env.port, "/pkg.Exact/Missing", authority="exact.example")
    assert a.headers[":status"] == "200"
    assert a.headers["content-type"] == "application/grpc"
    assert a.headers["grpc-status"] == "12"  # UNIMPLEMENTED
    assert a.headers["grpc-message"]
    assert a.headers_ended and a.ended and not a.data and not a.trailers


def test_no_backend_is_a_trailers_only_unavailable(env: Env) -> None:
    a = raw_grpc_call(env.port, "/pkg.Down/Unary", authority="down.example")
    assert (a.headers[":status"], a.headers["grpc-status"]) == ("200", "14")
    assert a.headers_ended


def test_grpc_timeout_shorter_than_the_backend_is_deadline_exceeded(env: Env) -> None:
    """grpc-timeout bounds the call at the proxy (the raw client has no deadline of its
    own): the backend sleeps 3 s, the proxy answers DEADLINE_EXCEEDED after ~300 ms."""
    a = raw_grpc_call(
        env.port,
        "/pkg.Streams/Sleep",
        authority="exact.example",
        headers=(("grpc-timeout", "300m"),),
        message=b"3",
    )
    assert (a.headers[":status"], a.headers["grpc-status"]) == ("200", "4")
    assert 0.25 <= a.elapsed < 2.5, a.elapsed


def test_grpcio_deadline_through_the_proxy(env: Env) -> None:
    with channel(env.port, "exact.example") as ch:
        err = failure(ch, "/pkg.Streams/Sleep", b"3", timeout=0.4)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_timeout_longer_than_the_call_is_no_limit(env: Env) -> None:
    a = raw_grpc_call(
        env.port,
        "/pkg.Streams/Sleep",
        authority="exact.example",
        headers=(("grpc-timeout", "5S"),),
        message=b"0.2",
    )
    assert a.headers[":status"] == "200"
    assert a.trailers["grpc-status"] == "0"
    assert a.data  # the answer message


def test_grpc_timeout_during_a_stream_ends_it_with_deadline_exceeded(env: Env) -> None:
    """The response has started (a first message went through): the proxy ends the
    stream with grpc-status 4 in trailers rather than resetting it."""
    a = raw_grpc_call(
        env.port,
        "/pkg.Streams/SlowStream",
        authority="exact.example",
        headers=(("grpc-timeout", "400m"),),
        message=b"3",
    )
    assert a.headers[":status"] == "200" and not a.headers_ended
    assert b"first" in a.data and b"second" not in a.data
    assert a.trailers["grpc-status"] == "4"
    assert a.ended and a.reset is None
    assert a.elapsed < 2.5, a.elapsed
