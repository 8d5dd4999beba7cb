"""Path normalization at the edge (issue 11 item 8) through ``gatewayd run``.

Routes: ``/admin`` -> backend A, ``/`` -> backend B (two recording backends), plus
``/rewrite`` -> A with a URLRewrite.  Spellings that mean ``/admin`` to common backends
must reach A, with the normalized path; each ``gatewayd run`` option turned off brings
the previous behaviour (the raw spelling reaches B) back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from e2e_kit import (
    Gatewayd,
    RecordingServer,
    backend_manifests,
    backend_ref,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    prometheus_samples,
    raw_exchange,
    request,
    rule,
)

pytestmark = pytest.mark.e2e

TIMEOUT = 5.0


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    a: RecordingServer
    b: RecordingServer

    def reach(self, path: str) -> tuple[str, str]:
        """(backend "A"/"B", path it received) of one GET of ``path`` sent verbatim."""
        before_a, before_b = len(self.a.snapshot()[1]), len(self.b.snapshot()[1])
        reply = request(self.port, path)
        assert reply.status == 200, (path, reply.status, reply.body[:200])
        got_a, got_b = self.a.snapshot()[1][before_a:], self.b.snapshot()[1][before_b:]
        assert len(got_a) + len(got_b) == 1, (path, got_a, got_b)
        return ("A", got_a[0].path) if got_a else ("B", got_b[0].path)


def docs(port: int, a: RecordingServer, b: RecordingServer) -> list[dict[str, object]]:
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/inner"}},
    }
    return [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *backend_manifests("svc-a", a.port),
        *backend_manifests("svc-b", b.port),
        http_route(
            "paths",
            [
                rule(matches=[match("/admin")], backends=[backend_ref("svc-a")]),
                rule(matches=[match("/")], backends=[backend_ref("svc-b")]),
                rule(
                    matches=[match("/rewrite")],
                    backends=[backend_ref("svc-a")],
                    filters=[rewrite],
                ),
            ],
        ),
    ]


def start(factory, recorders, args: Sequence[str] = ()) -> Env:  # type: ignore[no-untyped-def]
    a, b = recorders(), recorders()
    port = free_port()
    daemon = factory(docs(port, a, b), args=["--access-log", "off", *args])
    return Env(daemon, port, a, b)


@pytest.fixture(scope="module")
def env(module_recorders, module_gatewayd) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    yield start(module_gatewayd, module_recorders)


# The spellings of issue 11 item 8 and a few more, with the path A must receive.
SPELLINGS = [
    ("/%61dmin", "/admin"),
    ("//admin", "/admin"),
    ("///admin", "/admin"),
    ("/./admin", "/admin"),
    ("/%2e/admin", "/admin"),
    ("/x/../admin", "/admin"),
    ("/x/%2e%2e/admin", "/admin"),
    ("/x/%2E%2E/admin", "/admin"),
    ("/admin#frag", "/admin"),
    ("/admin/./", "/admin/"),
    ("/admin/x/..", "/admin/"),
    ("/x\\..\\admin", "/admin"),
    ("/%61dmin/a%3ab?q=%2F..//x", "/admin/a%3Ab?q=%2F..//x"),  # the query is untouched
    ("/admin?x=1#frag", "/admin?x=1"),
]


@pytest.mark.parametrize(("spelling", "normalized"), SPELLINGS)
def test_spellings_of_admin_reach_admin_with_the_normalized_path(
    env: Env, spelling: str, normalized: str
) -> None:
    assert env.reach(spelling) == ("A", normalized)


def test_case_is_significant(env: Env) -> None:
    assert env.reach("/ADMIN") == ("B", "/ADMIN")
    assert env.reach("/%41DMIN") == ("B", "/ADMIN")


@pytest.mark.parametrize(
    ("spelling", "location"),
    [
        ("/admin%2F", "/admin/"),
        ("/admin%2f?x=%2F", "/admin/?x=%2F"),
        ("/x%2F..%2Fadmin", "/admin"),
        ("/admin%5Cpanel", "/admin/panel"),
    ],
)
def test_escaped_slashes_redirect_to_the_unescaped_path(
    env: Env, spelling: str, location: str
) -> None:
    before = len(env.a.snapshot()[1]) + len(env.b.snapshot()[1])
    reply = request(env.port, spelling)
    assert reply.status == 307, (reply.status, reply.body)
    assert reply.header("location") == location
    # nothing was forwarded for the redirect itself ...
    assert len(env.a.snapshot()[1]) + len(env.b.snapshot()[1]) == before
    # ... and following it reaches the admin backend with that path
    assert env.reach(location) == ("A", location)


def test_grpc_is_refused_instead_of_redirected(env: Env) -> None:
    # Envoy: with UNESCAPE_AND_REDIRECT "gRPC requests will be rejected" (no redirects).
    # The rejection is a gRPC reply: HTTP 200, grpc-status 13 (INTERNAL, the gRPC
    # table's status for HTTP 400), trailers-only.
    reply = request(env.port, "/admin%2F", headers={"Content-Type": "application/grpc"})
    assert reply.status == 200
    assert reply.header("grpc-status") == "13"
    assert reply.header("content-type") == "application/grpc"
    assert reply.header("location") is None


@pytest.mark.parametrize("bad", ["/%zz", "/admin%4", "/%"])
def test_invalid_percent_encoding_is_400(env: Env, bad: str) -> None:
    before = len(env.a.snapshot()[1]) + len(env.b.snapshot()[1])
    reply = request(env.port, bad)
    assert reply.status == 400
    assert reply.body == b"invalid path"
    assert len(env.a.snapshot()[1]) + len(env.b.snapshot()[1]) == before
    samples = prometheus_samples(env.daemon.metrics(), "gatewayd_local_reply_total")
    assert any(labels.get("reason") == "path_normalization_failed" for labels, _ in samples)


def test_url_rewrite_applies_to_the_normalized_path(env: Env) -> None:
    assert env.reach("//x/../rewrite/%61") == ("A", "/inner/a")


def test_absolute_form_target_is_normalized(env: Env) -> None:
    data = f"GET http://127.0.0.1:{env.port}/x/../%61dmin HTTP/1.1\r\nHost: a\r\n"
    data += "Connection: close\r\n\r\n"
    result = raw_exchange(env.port, data.encode(), timeout=TIMEOUT)
    assert result.status == 200, result.data[:300]
    assert env.a.wait_for(lambda r: r.path == "/admin" and r.headers["host"] != "a", TIMEOUT)


# --------------------------------------------------------------------------- options off


def test_everything_off_restores_the_raw_path(recorders, gatewayd) -> None:  # type: ignore[no-untyped-def]
    off = start(
        gatewayd,
        recorders,
        [
            "--no-path-normalization",
            "--no-merge-slashes",
            "--escaped-slashes",
            "keep",
            "--keep-fragment",
        ],
    )
    for spelling in ("/%61dmin", "//admin", "/x/../admin", "/x/%2e%2e/admin", "/admin%2F"):
        assert off.reach(spelling) == ("B", spelling)
    assert off.reach("/%zz") == ("B", "/%zz")
    # the fragment stays part of the path ("/admin#frag" is not under the prefix /admin)
    assert off.reach("/admin#frag") == ("B", "/admin#frag")


@pytest.mark.parametrize(
    ("args", "cases"),
    [
        # each option on its own: its step is skipped, the others still run
        (
            ["--no-path-normalization"],
            [("/x/../admin", ("B", "/x/../admin")), ("//admin", ("A", "/admin"))],
        ),
        (
            ["--no-merge-slashes"],
            [("//admin", ("B", "//admin")), ("/%61dmin", ("A", "/admin"))],
        ),
        (
            ["--escaped-slashes", "keep"],
            [("/admin%2Fx", ("B", "/admin%2Fx")), ("/x%2F..%2Fadmin", ("B", "/x%2F..%2Fadmin"))],
        ),
        (
            ["--escaped-slashes", "unescape-and-forward"],
            [("/x%2F..%2Fadmin", ("A", "/admin")), ("/admin%2f", ("A", "/admin/"))],
        ),
    ],
)
def test_each_option_off(  # type: ignore[no-untyped-def]
    recorders, gatewayd, args: list[str], cases: list[tuple[str, tuple[str, str]]]
) -> None:
    env = start(gatewayd, recorders, args)
    for spelling, expected in cases:
        assert env.reach(spelling) == expected, spelling


def test_escaped_slashes_reject(recorders, gatewayd) -> None:  # type: ignore[no-untyped-def]
    env = start(gatewayd, recorders, ["--escaped-slashes", "reject"])
    assert request(env.port, "/admin%2Fx").status == 400
    assert env.reach("/x/../admin") == ("A", "/admin")
