from __future__ import annotations

import os
import pickle
import platform
from importlib.metadata import version

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.proxy.metrics import ProxyMetrics, WorkerProcesses, render
from gatewayd.routing.snapshot.compiled import ListenerPort
from gatewayd.routing.snapshot.table import HTTPRouteTable


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = render(registry)
    assert content_type.startswith("text/plain")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


def port(*names: str, address: str = "127.0.0.1", number: int = 8080) -> ListenerPort:
    return ListenerPort(
        address=address,
        port=number,
        protocol="HTTP",
        gateway_namespace="infra",
        gateway_name="gw",
        listener_names=names,
        table=HTTPRouteTable([]),
    )


def test_downstream_requests_by_listener_route_rule_and_code(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    p = port("http", "admin")
    m.request(p, "http", "apps/web/rule/0", 200, 0.002)
    m.request(p, "http", "apps/web/rule/0", 200, 0.003)
    m.request(p, "http", "apps/web/rule/1", 503, 0.3)
    m.request(p, "admin", "apps/ops/rule/login", 204, 0.0001)
    m.request(p, "", "", 404, 0.00005)  # no route matched: the port's listeners
    got = samples(reg)
    rq = "gatewayd_downstream_rq_total"

    def key(
        listener: str, route: str, rule: str, code: str
    ) -> tuple[str, tuple[tuple[str, str], ...]]:
        labels = {"listener": listener, "route": route, "rule": rule, "code": code}
        return (rq, tuple(sorted(labels.items())))

    assert got[key("infra/gw/http", "apps/web", "0", "200")] == 2
    assert got[key("infra/gw/http", "apps/web", "1", "503")] == 1
    assert got[key("infra/gw/admin", "apps/ops", "login", "204")] == 1
    assert got[key("infra/gw/http,admin", "", "", "404")] == 1
    assert sum(v for (name, _), v in got.items() if name == rq) == 5
    # The two series that counted the same requests twice are gone.
    assert not any(name.startswith("gatewayd_downstream_rq_code") for name, _ in got)
    assert not any("code_class" in dict(labels) for _, labels in got)


def test_downstream_duration_histogram_has_sub_millisecond_buckets(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    p = port("l")
    for d in (0.00008, 0.0002, 0.0004, 0.002, 0.002, 0.3, 100.0):
        m.request(p, "l", "ns/r/rule/0", 200, d)
    got = samples(reg)
    h = "gatewayd_downstream_rq_duration_seconds"
    labs = (("listener", "infra/gw/l"), ("route", "ns/r"), ("rule", "0"))

    def bucket(le: str) -> float:
        return got[(h + "_bucket", tuple(sorted((("le", le), *labs))))]

    assert bucket("0.0001") == 1
    assert bucket("0.00025") == 2
    assert bucket("0.0005") == 3
    assert bucket("0.001") == 3
    assert bucket("0.0025") == 5
    assert bucket("0.25") == 5
    assert bucket("0.5") == 6
    assert bucket("60.0") == 6
    assert bucket("+Inf") == 7
    assert got[(h + "_count", labs)] == 7
    assert got[(h + "_sum", labs)] == pytest.approx(100.30468)


def test_requests_in_flight_and_build_info(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    m.rq_active += 3
    m.rq_active -= 1
    got = samples(reg)
    assert got[("gatewayd_downstream_rq_active", ())] == 2
    info = [labels for name, labels in got if name == "gatewayd_build_info"]
    assert len(info) == 1
    labels = dict(info[0])
    assert labels["version"] == version("gatewayd")
    assert labels["python"] == platform.python_version()
    assert got[("gatewayd_build_info", info[0])] == 1


def test_connection_series_are_named_by_gateway_listeners(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    m.downstream_cx("127.0.0.1:8080", 1)
    m.downstream_cx("[::1]:8080", 1)
    m.downstream_cx("127.0.0.1:9090", 1)
    m.tls_handshake_error("127.0.0.1:8080", "no_sni")
    m.name_ports([port("http", "https"), port("http", "https", address="::1")])
    got = samples(reg)
    # One Gateway's IPv4 and IPv6 sockets carry the same listeners: one summed series.
    assert got[("gatewayd_downstream_cx_active", (("listener", "infra/gw/http,https"),))] == 2
    assert got[("gatewayd_downstream_cx_total", (("listener", "infra/gw/http,https"),))] == 2
    # A socket no snapshot named keeps its address.
    assert got[("gatewayd_downstream_cx_active", (("listener", "127.0.0.1:9090"),))] == 1
    err = (("listener", "infra/gw/http,https"), ("reason", "no_sni"))
    assert got[("gatewayd_tls_handshake_error_total", err)] == 1


def test_workers_exports_sum_in_the_supervisor(reg: CollectorRegistry) -> None:
    workers = [ProxyMetrics(CollectorRegistry()) for _ in range(2)]
    p = port("http")
    for i, w in enumerate(workers):
        w.request(p, "http", "ns/r/rule/0", 200, 0.0002 * (i + 1))
        w.request(p, "http", "ns/r/rule/0", 502, 0.01)
        w.rq_active += i + 1
        w.downstream_cx("127.0.0.1:8080", 1)
        w.upstream_request("ns/svc:80", "ns/r/rule/0", 200, 0.001)
    supervisor = ProxyMetrics(CollectorRegistry())
    supervisor.name_ports([p])
    supervisor.config_loaded(7, ok=True)
    total = ProxyMetrics(reg)
    total.copy_config(supervisor)
    for w in workers:
        # What crosses the pipe from a worker is pickled.
        total.absorb(pickle.loads(pickle.dumps(w.export())))
    got = samples(reg)
    labs = (("listener", "infra/gw/http"), ("route", "ns/r"), ("rule", "0"))
    assert got[("gatewayd_downstream_rq_total", tuple(sorted((*labs, ("code", "200")))))] == 2
    assert got[("gatewayd_downstream_rq_total", tuple(sorted((*labs, ("code", "502")))))] == 2
    h = "gatewayd_downstream_rq_duration_seconds"
    assert got[(h + "_bucket", tuple(sorted((("le", "0.00025"), *labs))))] == 1
    assert got[(h + "_bucket", tuple(sorted((("le", "0.0005"), *labs))))] == 2
    assert got[(h + "_count", labs)] == 4
    assert got[("gatewayd_downstream_rq_active", ())] == 3
    assert got[("gatewayd_downstream_cx_active", (("listener", "infra/gw/http"),))] == 2
    assert got[("gatewayd_config_generation", ())] == 7
    b = ("backend", "ns/svc:80")
    assert got[("gatewayd_upstream_rq_total", (b, ("code", "200")))] == 2


def test_worker_process_series_read_each_pid(reg: CollectorRegistry) -> None:
    me = os.getpid()
    reg.register(WorkerProcesses([me, me]))
    got = samples(reg)
    for worker in ("0", "1"):
        rss = got[("gatewayd_worker_process_resident_memory_bytes", (("worker", worker),))]
        assert rss > 1_000_000
        assert got[("gatewayd_worker_process_cpu_seconds_total", (("worker", worker),))] > 0


def test_upstream_series(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    m.upstream_request("default/web:8080", "default/web/rule/0", 200, 0.01)
    m.upstream_request("default/web:8080", "default/web/rule/0", 200, 0.02)
    m.upstream_request("default/web:8080", "default/other/rule/1", 502, 0.03)
    m.upstream_connect_fail("default/web:8080")
    m.upstream_cx("default/web:8080", 1)
    m.upstream_cx("default/web:8080", 1)
    m.upstream_cx("default/web:8080", -1)
    got = samples(reg)
    b = ("backend", "default/web:8080")
    assert got[("gatewayd_upstream_rq_total", (b, ("code", "200")))] == 2
    assert got[("gatewayd_upstream_rq_total", (b, ("code", "502")))] == 1
    r0 = ("route", "default/web/rule/0")
    assert got[("gatewayd_route_upstream_rq_total", (("code", "200"), r0))] == 2
    r1 = ("route", "default/other/rule/1")
    assert got[("gatewayd_route_upstream_rq_total", (("code", "502"), r1))] == 1
    assert got[("gatewayd_upstream_cx_connect_fail_total", (b,))] == 1
    assert got[("gatewayd_upstream_cx_active", (b,))] == 1
    assert got[("gatewayd_upstream_rq_duration_seconds_count", (b,))] == 3
    assert got[("gatewayd_upstream_rq_duration_seconds_sum", (b,))] == pytest.approx(0.06)


def test_upstream_series_sum_own_and_absorbed_counts_and_reading_changes_nothing(
    reg: CollectorRegistry,
) -> None:
    # Counted per (backend, route) on the hot path, summed by backend and by route when
    # read; a supervisor's own responses add to what it absorbed from workers.
    worker = ProxyMetrics(CollectorRegistry())
    worker.upstream_request("ns/a:80", "ns/r/rule/0", 200, 0.001)
    worker.upstream_request("ns/b:80", "ns/r/rule/0", 200, 0.5)
    m = ProxyMetrics(reg)
    m.absorb(pickle.loads(pickle.dumps(worker.export())))
    m.upstream_request("ns/a:80", "ns/r/rule/1", 200, 0.002)
    m.upstream_request("ns/a:80", "ns/r/rule/0", 503, 0.003)
    for _ in range(2):  # a second scrape reads the same values
        got = samples(reg)
        a = ("backend", "ns/a:80")
        assert got[("gatewayd_upstream_rq_total", (a, ("code", "200")))] == 2
        assert got[("gatewayd_upstream_rq_total", (a, ("code", "503")))] == 1
        assert got[("gatewayd_upstream_rq_total", (("backend", "ns/b:80"), ("code", "200")))] == 1
        r0 = ("route", "ns/r/rule/0")
        assert got[("gatewayd_route_upstream_rq_total", (("code", "200"), r0))] == 2
        assert got[("gatewayd_route_upstream_rq_total", (("code", "503"), r0))] == 1
        r1 = ("route", "ns/r/rule/1")
        assert got[("gatewayd_route_upstream_rq_total", (("code", "200"), r1))] == 1
        h = "gatewayd_upstream_rq_duration_seconds"
        assert got[(h + "_count", (a,))] == 3
        assert got[(h + "_bucket", (a, ("le", "0.001")))] == 1
        assert got[(h + "_sum", (a,))] == pytest.approx(0.006)
        assert got[(h + "_count", (("backend", "ns/b:80"),))] == 1
    exported = m.export()
    assert exported["_us_rq"] == {("ns/a:80", 200): 2, ("ns/a:80", 503): 1, ("ns/b:80", 200): 1}


def test_connections_local_replies_and_config(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    m.downstream_cx("l", 1)
    m.downstream_cx("l", 1)
    m.downstream_cx("l", -1)
    m.local_reply("no_route")
    m.local_reply("no_route")
    m.local_reply("upstream_timeout")
    m.config_loaded(3, ok=True)
    m.config_loaded(3, ok=False)
    m.config_loaded(4, ok=True)
    got = samples(reg)
    assert got[("gatewayd_downstream_cx_active", (("listener", "l"),))] == 1
    assert got[("gatewayd_downstream_cx_total", (("listener", "l"),))] == 2
    assert got[("gatewayd_local_reply_total", (("reason", "no_route"),))] == 2
    assert got[("gatewayd_local_reply_total", (("reason", "upstream_timeout"),))] == 1
    assert got[("gatewayd_config_generation", ())] == 4
    assert got[("gatewayd_config_reload_total", (("result", "success"),))] == 2
    assert got[("gatewayd_config_reload_total", (("result", "failure"),))] == 1
    # config_reload_failures_total counted the same as result="failure": removed.
    assert not any(name.startswith("gatewayd_config_reload_failures") for name, _ in got)


def test_fresh_metrics_render_help_and_zero_values(reg: CollectorRegistry) -> None:
    ProxyMetrics(reg)
    body, _ = render(reg)
    text = body.decode()
    for name in (
        "gatewayd_downstream_rq_total",
        "gatewayd_downstream_rq_duration_seconds",
        "gatewayd_upstream_rq_total",
        "gatewayd_upstream_cx_connect_fail_total",
        "gatewayd_local_reply_total",
        "gatewayd_config_generation",
    ):
        assert f"# HELP {name.removesuffix('_total')}" in text or f"# HELP {name}" in text
    assert samples(reg)[("gatewayd_config_generation", ())] == 0


def test_registering_twice_in_one_registry_fails(reg: CollectorRegistry) -> None:
    ProxyMetrics(reg)
    with pytest.raises(ValueError, match="Duplicated"):
        ProxyMetrics(reg)


def test_render_defaults_to_the_global_registry() -> None:
    body, content_type = render()
    assert isinstance(body, bytes) and "version=" in content_type
