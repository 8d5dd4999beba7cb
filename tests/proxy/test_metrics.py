from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.proxy.metrics import ProxyMetrics, render


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


def test_downstream_requests_by_class_and_code(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    m.downstream_request("gw/http", 200, 0.002)
    m.downstream_request("gw/http", 204, 0.004)
    m.downstream_request("gw/http", 503, 0.3)
    m.downstream_request("gw/other", 404, 0.0001)
    got = samples(reg)
    rq = "gatewayd_downstream_rq_total"
    assert got[(rq, (("code_class", "2xx"), ("listener", "gw/http")))] == 2
    assert got[(rq, (("code_class", "5xx"), ("listener", "gw/http")))] == 1
    assert got[(rq, (("code_class", "4xx"), ("listener", "gw/other")))] == 1
    code = "gatewayd_downstream_rq_code_total"
    assert got[(code, (("code", "204"), ("listener", "gw/http")))] == 1
    assert got[(code, (("code", "503"), ("listener", "gw/http")))] == 1


def test_downstream_duration_histogram(reg: CollectorRegistry) -> None:
    m = ProxyMetrics(reg)
    for d in (0.0004, 0.002, 0.002, 0.3, 100.0):
        m.downstream_request("l", 200, d)
    got = samples(reg)
    h = "gatewayd_downstream_rq_duration_seconds"
    lab = ("listener", "l")
    assert got[(h + "_bucket", (("le", "0.0005"), lab))] == 1
    assert got[(h + "_bucket", (("le", "0.0025"), lab))] == 3
    assert got[(h + "_bucket", (("le", "0.25"), lab))] == 3
    assert got[(h + "_bucket", (("le", "0.5"), lab))] == 4
    assert got[(h + "_bucket", (("le", "60.0"), lab))] == 4
    assert got[(h + "_bucket", (("le", "+Inf"), lab))] == 5
    assert got[(h + "_count", (lab,))] == 5
    assert got[(h + "_sum", (lab,))] == pytest.approx(100.3044)


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
