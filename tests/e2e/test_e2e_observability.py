"""Metrics, W3C Trace Context and OTLP span export through ``gatewayd run``, and the
Grafana dashboard of deploy/ against a real scrape."""

from __future__ import annotations

import gzip
import http.server
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_kit import (
    LOCALHOST,
    Gatewayd,
    backend_manifests,
    backend_ref,
    echo_header,
    free_port,
    gateway,
    gateway_class,
    http_route,
    listener,
    match,
    prometheus_samples,
    request,
    rule,
    run_cli,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "gatewayd-dashboard.json"
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
MAX_OTLP_BODY = 4 * 1024 * 1024  # the receiver reads no more than this per request


# --------------------------------------------------------------------------- OTLP receiver


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on a thread: decodes each ExportTraceServiceRequest
    (protobuf, gzip or not) and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, str]] = []
        self.paths: list[str] = []
        self._cond = threading.Condition()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                if not 0 <= length <= MAX_OTLP_BODY:
                    self.send_error(413)
                    return
                body = self.rfile.read(length)
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)[: MAX_OTLP_BODY + 1]
                message = ExportTraceServiceRequest.FromString(body)
                owner._received(self.path, message)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _received(self, path: str, message: ExportTraceServiceRequest) -> None:
        with self._cond:
            self.paths.append(path)
            for rs in message.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append(span)
                        self.resources.append(attrs)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Span], bool], timeout: float) -> Span | None:
        with self._cond:
            found: list[Span] = []

            def done() -> bool:
                found[:] = [s for s in self.spans if predicate(s)]
                return bool(found)

            self._cond.wait_for(done, timeout)
            return found[0] if found else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.int_value if v.HasField("int_value") else v.string_value
    return out


# --------------------------------------------------------------------------- the daemon


@dataclass
class Env:
    daemon: Gatewayd
    port: int
    otlp: OtlpReceiver | None


def docs(echo: Any, port: int) -> list[dict[str, Any]]:
    api = rule(matches=[match("/api")], backends=[backend_ref("echo-v1")])
    dead = rule(matches=[match("/dead")], backends=[backend_ref("dead")])
    route = http_route("web", [api, dead], hostnames=["app.example"])
    return [
        gateway_class(),
        gateway("gw", [listener("http", port)]),
        *echo.manifests(),
        # Nothing listens there: connection refused, 503.
        *backend_manifests("dead", free_port()),
        route,
    ]


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def env(module_echoes, module_gatewayd, otlp: OtlpReceiver) -> Env:  # type: ignore[no-untyped-def]
    (echo,) = module_echoes.start("echo-v1")
    port = free_port()
    args = ["--access-log", "json", "--otlp-endpoint", f"http://{LOCALHOST}:{otlp.port}"]
    return Env(module_gatewayd(docs(echo, port), args=args), port, otlp)


def traffic(port: int) -> None:
    """Requests that leave a sample in every series the dashboard reads."""
    for _ in range(3):
        assert request(port, "/api/x", host="app.example").status == 200
    assert request(port, "/nowhere", host="app.example").status == 404
    assert request(port, "/dead", host="app.example").status == 503


def scrape(daemon: Gatewayd) -> tuple[str, set[str]]:
    text = daemon.metrics()
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    return text, names


# --------------------------------------------------------------------------- metrics


def test_request_series_are_labelled_by_gateway_listener_and_route_rule(env: Env) -> None:
    traffic(env.port)
    text, _ = scrape(env.daemon)
    by_labels = {
        (s["listener"], s["route"], s["rule"], s["code"]): v
        for s, v in prometheus_samples(text, "gatewayd_downstream_rq_total")
    }
    assert by_labels[("default/gw/http", "default/web", "0", "200")] >= 3
    assert by_labels[("default/gw/http", "default/web", "1", "503")] >= 1
    # No route matched: the listeners of the port, no route.
    assert by_labels[("default/gw/http", "", "", "404")] >= 1
    assert not any(":" in k[0] for k in by_labels), "an address in the listener label"
    buckets = {
        s["le"]
        for s, _ in prometheus_samples(text, "gatewayd_downstream_rq_duration_seconds_bucket")
    }
    assert {"0.0001", "0.00025", "0.0005", "0.001"} <= buckets
    (cx,) = prometheus_samples(text, "gatewayd_downstream_cx_total")
    assert cx[0] == {"listener": "default/gw/http"}
    # The duplicates are gone.
    assert "gatewayd_downstream_rq_code_total" not in text
    assert "gatewayd_config_reload_failures_total" not in text


def test_in_flight_returns_to_zero_and_process_series_exist(env: Env) -> None:
    traffic(env.port)
    text, names = scrape(env.daemon)
    # Every request above took back what it added, local replies included.
    assert prometheus_samples(text, "gatewayd_downstream_rq_active") == [({}, 0.0)]
    ((info, one),) = prometheus_samples(text, "gatewayd_build_info")
    assert one == 1 and info["version"] and info["python"]
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "python_info"} <= names


# --------------------------------------------------------------------------- tracing


def test_a_trace_starts_with_the_request_id_as_trace_id(env: Env) -> None:
    marker = f"/api/trace-{uuid.uuid4().hex}"
    doc = request(env.port, marker, host="app.example").echo()
    (tp,) = echo_header(doc, "traceparent")
    (rid,) = echo_header(doc, "x-request-id")
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", tp), tp  # sampled: exported
    assert tp[3:35] == rid.replace("-", "")
    line = env.daemon.child.stdout.wait_for(lambda s: marker in s, timeout=5)
    assert line is not None, env.daemon.output()
    entry = json.loads(line)
    assert entry["trace_id"] == tp[3:35] and entry["request_id"] == rid


def test_a_valid_trace_continues_and_its_span_is_exported(env: Env) -> None:
    assert env.otlp is not None
    trace = uuid.uuid4().hex
    sent = f"00-{trace}-{PARENT}-01"
    marker = f"/api/continued-{uuid.uuid4().hex}"
    doc = request(
        env.port,
        marker,
        host="app.example",
        headers={"traceparent": sent, "tracestate": "vendor=abc"},
    ).echo()
    (tp,) = echo_header(doc, "traceparent")
    assert tp[3:35] == trace and tp.endswith("-01")
    span_id = tp[36:52]
    assert span_id != PARENT
    assert echo_header(doc, "tracestate") == ["vendor=abc"]
    # gatewayd's span: the backend's parent, the caller's child.
    span = env.otlp.wait_for(lambda s: s.trace_id.hex() == trace, timeout=10)
    assert span is not None, env.daemon.output()
    assert span.span_id.hex() == span_id
    assert span.parent_span_id.hex() == PARENT
    assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    attrs = attributes(span)
    assert attrs["url.path"] == marker
    assert attrs["http.response.status_code"] == 200
    assert attrs["gatewayd.route"] == "default/web/rule/0"
    assert attrs["gatewayd.listener"] == "http"
    assert span.end_time_unix_nano > span.start_time_unix_nano
    assert "/v1/traces" in env.otlp.paths
    assert {"service.name": "gatewayd"}.items() <= env.otlp.resources[0].items()


def test_an_unsampled_trace_is_propagated_not_exported(env: Env) -> None:
    assert env.otlp is not None
    trace = uuid.uuid4().hex
    doc = request(
        env.port,
        "/api/unsampled",
        host="app.example",
        headers={"traceparent": f"00-{trace}-{PARENT}-00"},
    ).echo()
    (tp,) = echo_header(doc, "traceparent")
    assert tp[3:35] == trace and tp.endswith("-00")
    # A sampled request after it is exported; the unsampled one before it never is.
    marker = uuid.uuid4().hex
    request(
        env.port,
        "/api/after",
        host="app.example",
        headers={"traceparent": f"00-{marker}-{PARENT}-01"},
    )
    assert env.otlp.wait_for(lambda s: s.trace_id.hex() == marker, timeout=10) is not None
    assert env.otlp.wait_for(lambda s: s.trace_id.hex() == trace, timeout=0) is None


def test_an_invalid_traceparent_is_replaced(env: Env) -> None:
    doc = request(
        env.port,
        "/api/invalid",
        host="app.example",
        headers={"traceparent": f"00-{TRACE.upper()}-{PARENT}-01", "tracestate": "a=b"},
    ).echo()
    (tp,) = echo_header(doc, "traceparent")
    (rid,) = echo_header(doc, "x-request-id")
    assert tp[3:35] == rid.replace("-", "") != TRACE
    assert echo_header(doc, "tracestate") == []


def test_no_trace_context_forwards_both_headers_as_received(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    gatewayd(docs(echo, port), args=["--no-trace-context", "--access-log", "text"])
    doc = request(
        port, "/api/x", host="app.example", headers={"traceparent": "garbage", "tracestate": "a=b"}
    ).echo()
    assert echo_header(doc, "traceparent") == ["garbage"]
    assert echo_header(doc, "tracestate") == ["a=b"]
    assert echo_header(request(port, "/api/y", host="app.example").echo(), "traceparent") == []


def test_otlp_endpoint_must_be_a_url(tmp_path: Path) -> None:
    done = run_cli("run", "--config", str(tmp_path), "--otlp-endpoint", "collector:4318")
    assert done.returncode == 2
    assert "--otlp-endpoint" in done.stderr and "http(s) URL" in done.stderr


# --------------------------------------------------------------------------- dashboard

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
PROMQL_WORDS |= {"unless", "bool", "offset", "inf", "nan"}


def dashboard_expressions() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return exprs


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, or label names (inside {...} or by/without (...)), with ranges dropped."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"label_values\(([^,()]+),[^)]*\)", r" \1 ", text)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{x=~"b"}[5m])))'
        " / sum without (code) (rate(b_total[$__rate_interval])) or c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names('label_values(d_total{listener=~"$l"}, route)') == {"d_total"}


def check_dashboard(names: set[str], skip: Callable[[str], bool] = lambda n: False) -> None:
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    used = set().union(*(metric_names(e) for e in exprs))
    assert all(n.startswith(("gatewayd_", "process_")) for n in used), used
    missing = sorted(n for n in used if n not in names and not skip(n))
    assert not missing, f"dashboard metrics absent from the scrape: {missing}"


def test_dashboard_metrics_exist_in_a_scrape(env: Env) -> None:
    traffic(env.port)
    _, names = scrape(env.daemon)
    # One process: no worker series (process_* is that process).
    check_dashboard(names, skip=lambda n: n.startswith("gatewayd_worker_process_"))


def test_workers_sum_and_the_dashboard_with_worker_processes(echoes, gatewayd) -> None:  # type: ignore[no-untyped-def]
    (echo,) = echoes.start("echo-v1")
    port = free_port()
    daemon = gatewayd(docs(echo, port), args=["--workers", "2", "--access-log", "off"])
    for _ in range(4):  # new connections: both workers may take some
        traffic(port)
    text, names = scrape(daemon)
    total = sum(v for _, v in prometheus_samples(text, "gatewayd_downstream_rq_total"))
    assert total == 20
    workers = {
        s["worker"]
        for s, _ in prometheus_samples(text, "gatewayd_worker_process_cpu_seconds_total")
    }
    assert workers == {"0", "1"}
    assert prometheus_samples(text, "gatewayd_downstream_rq_active") == [({}, 0.0)]
    check_dashboard(names)


def test_trace_sample_ratio_must_be_a_share(tmp_path: Path) -> None:
    done = run_cli("run", "--config", str(tmp_path), "--trace-sample-ratio", "1.5")
    assert done.returncode == 2
    assert "--trace-sample-ratio" in done.stderr and "from 0 to 1" in done.stderr
