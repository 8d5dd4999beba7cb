"""Prometheus metrics of the proxy, with the meaning of Envoy's HTTP statistics.

Series (``gatewayd_`` prefix; Envoy stat in brackets):

- ``downstream_rq_total{listener,code_class}`` (http.*.downstream_rq_2xx ...) and
  ``downstream_rq_code_total{listener,code}`` (http.*.downstream_rq_<code>)
- ``downstream_rq_duration_seconds{listener}`` histogram (downstream_rq_time)
- ``downstream_cx_total{listener}``, ``downstream_cx_active{listener}``
- ``upstream_rq_total{backend,code}`` (cluster.*.upstream_rq_<code>)
- ``route_upstream_rq_total{route,code}`` (vhost.*.route.*.upstream_rq_<code>)
- ``upstream_rq_duration_seconds{backend}`` histogram (upstream_rq_time)
- ``upstream_cx_active{backend}``, ``upstream_cx_connect_fail_total{backend}``
- ``outlier_ejections_total{backend}`` (cluster.*.outlier_detection.ejections_enforced_total)
  and ``outlier_ejected{backend}`` (outlier_detection.ejections_active): endpoints
  ejected by passive health checking, and those ejected now (summed over workers: each
  worker ejects on its own)
- ``upstream_rq_retry_total{backend}`` (cluster.*.upstream_rq_retry) and
  ``upstream_rq_retry_overflow_total{backend}`` (upstream_rq_retry_overflow): retries
  sent, and retries the retry budget refused
- ``local_reply_total{reason}`` (see ``localreply`` for the reasons)
- ``config_generation``, ``config_reload_total{result}`` (result: success | failure),
  ``config_reload_failures_total`` (reloads whose new config was refused; the last good
  snapshot kept serving)
- ``tls_handshake_error_total{listener,reason}`` (listener.*.ssl.connection_error,
  ssl.fail_verify_*): TLS handshakes that failed, by short reason
- ``tls_route_cx_total{listener,result}`` (tcp.*.downstream_cx_total with
  tls_inspector's sni_found / sni_not_found): connections of TLS listeners (TLSRoute) by
  outcome: passthrough, terminate, or why they were closed without reaching a backend
- ``tcp_route_cx_total{listener,result}`` (tcp.*.downstream_cx_total): connections of
  TCP listeners (TCPRoute): spliced, or why they were closed (proxy/tcproute.py)
- ``udp_flows_total{listener}``, ``udp_flows_active{listener}`` (udp.*.downstream_sess_*):
  UDPRoute client flows; ``udp_datagrams_total{listener,direction}`` (rx from clients,
  tx to them) and ``udp_dropped_total{listener,reason}`` (proxy/udp.py)

The hot path only bumps plain ints in dicts (a few hundred ns per request); the
prometheus families are built from them when the registry is scraped.  prometheus
client's own ``Counter.labels(...).inc()`` takes a lock and resolves the labels on every
call, which costs several microseconds per request.  Everything is meant to be called
from the event loop thread; a scrape from another thread only reads snapshots
(``list(d.items())`` is atomic under the GIL).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Request durations from 0.5 ms to 60 s: proxy overhead to slow backends.
BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_LE = (*(repr(float(b)) for b in BUCKETS), "+Inf")  # le="0.0005" ... "60.0"


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket (not cumulative); last: +Inf
        self.total = 0.0

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for le, n in zip(_LE, list(self.counts), strict=True):
            running += n
            out.append((le, float(running)))
        return out


def _code_class(status: int) -> str:
    return f"{status // 100}xx"  # 0 (no response sent) -> "0xx"


class ProxyMetrics(Collector):
    """The proxy's metrics; registers itself with ``registry`` (default: the global
    prometheus ``REGISTRY``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._ds_rq: dict[tuple[str, int], int] = {}
        self._ds_time: dict[str, _Histogram] = {}
        self._ds_cx: dict[str, int] = {}
        self._ds_cx_total: dict[str, int] = {}
        self._us_rq: dict[tuple[str, int], int] = {}
        self._route_rq: dict[tuple[str, int], int] = {}
        self._us_time: dict[str, _Histogram] = {}
        self._us_cx: dict[str, int] = {}
        self._tunnels: dict[str, int] = {}  # open WebSocket tunnels per backend
        self._tunnels_total: dict[str, int] = {}
        self._us_fail: dict[str, int] = {}
        self._retry: dict[tuple[str, str], int] = {}  # (backend, "retry" | "overflow")
        self._local: dict[str, int] = {}
        self._generation = 0
        self._reloads: dict[str, int] = {"success": 0, "failure": 0}
        self._tls_err: dict[tuple[str, str], int] = {}
        self._tls_cx: dict[tuple[str, str], int] = {}
        self._pp_refused: dict[tuple[str, str], int] = {}
        self._tcp_cx: dict[tuple[str, str], int] = {}
        self._udp_flows: dict[str, int] = {}
        self._udp_flows_total: dict[str, int] = {}
        self._udp_dgrams: dict[tuple[str, str], int] = {}
        self._udp_drops: dict[tuple[str, str], int] = {}
        self._ejections: dict[str, int] = {}
        self._ejected: dict[str, int] = {}
        (registry if registry is not None else REGISTRY).register(self)

    # ------------------------------------------------------------------ hot path

    def downstream_request(self, listener: str, status: int, duration_s: float) -> None:
        """A request answered (or abandoned: status 0) on ``listener``."""
        key = (listener, status)
        rq = self._ds_rq
        rq[key] = rq.get(key, 0) + 1
        hist = self._ds_time.get(listener)
        if hist is None:
            hist = self._ds_time[listener] = _Histogram()
        hist.counts[bisect_left(BUCKETS, duration_s)] += 1
        hist.total += duration_s

    def upstream_request(self, backend: str, route: str, status: int, duration_s: float) -> None:
        """An upstream response (its status) received from ``backend`` for a request
        routed by ``route`` (the rule's "namespace/name/rule/N")."""
        key = (backend, status)
        rq = self._us_rq
        rq[key] = rq.get(key, 0) + 1
        rkey = (route, status)
        route_rq = self._route_rq
        route_rq[rkey] = route_rq.get(rkey, 0) + 1
        hist = self._us_time.get(backend)
        if hist is None:
            hist = self._us_time[backend] = _Histogram()
        hist.counts[bisect_left(BUCKETS, duration_s)] += 1
        hist.total += duration_s

    def upstream_connect_fail(self, backend: str) -> None:
        fails = self._us_fail
        fails[backend] = fails.get(backend, 0) + 1

    def outlier_ejection(self, backend: str, delta: int) -> None:
        """+1 when outlier detection ejects an endpoint of ``backend``, -1 when that
        ejection ends (or the endpoint leaves the configuration)."""
        ej = self._ejected
        ej[backend] = ej.get(backend, 0) + delta
        if delta > 0:
            total = self._ejections
            total[backend] = total.get(backend, 0) + delta
    def upstream_retry(self, backend: str, result: str) -> None:
        """A retry to ``backend`` was sent (``retry``) or refused by the retry budget
        (``overflow``)."""
        key = (backend, result)
        retry = self._retry
        retry[key] = retry.get(key, 0) + 1

    def local_reply(self, reason: str) -> None:
        local = self._local
        local[reason] = local.get(reason, 0) + 1

    def downstream_cx(self, listener: str, delta: int) -> None:
        """+1 when a connection is accepted, -1 when it closes."""
        cx = self._ds_cx
        cx[listener] = cx.get(listener, 0) + delta
        if delta > 0:
            total = self._ds_cx_total
            total[listener] = total.get(listener, 0) + delta

    def upstream_cx(self, backend: str, delta: int) -> None:
        cx = self._us_cx
        cx[backend] = cx.get(backend, 0) + delta

    def tunnel(self, backend: str, delta: int) -> None:
        """+1 when a WebSocket upgrade to ``backend`` opens a tunnel, -1 when it ends."""
        t = self._tunnels
        t[backend] = t.get(backend, 0) + delta
        if delta > 0:
            total = self._tunnels_total
            total[backend] = total.get(backend, 0) + delta

    def tls_handshake_error(self, listener: str, reason: str) -> None:
        """A TLS handshake on ``listener`` failed; ``reason`` is a short word
        (no_sni, unknown_sni, bad_client_cert, protocol, timeout, ...)."""
        key = (listener, reason)
        errs = self._tls_err
        errs[key] = errs.get(key, 0) + 1

    def proxy_protocol_refused(self, listener: str, reason: str) -> None:
        """A connection on ``listener`` closed for its PROXY protocol header
        (``untrusted``, ``timeout``, ``invalid``)."""
        key = (listener, reason)
        refused = self._pp_refused
        refused[key] = refused.get(key, 0) + 1

    def tls_route_cx(self, listener: str, result: str) -> None:
        """A connection of a TLS listener was spliced (``passthrough``/``terminate``)
        or closed (``no_sni``, ``no_route``, ``timeout``, ...); see proxy/tlsroute.py."""
        key = (listener, result)
        cx = self._tls_cx
        cx[key] = cx.get(key, 0) + 1

    def tcp_route_cx(self, listener: str, result: str) -> None:
        """A connection of a TCP listener was spliced or closed; see proxy/tcproute.py."""
        key = (listener, result)
        cx = self._tcp_cx
        cx[key] = cx.get(key, 0) + 1

    def udp_flow(self, listener: str, delta: int) -> None:
        """+1 when a UDP client flow opens, -1 when it ends."""
        flows = self._udp_flows
        flows[listener] = flows.get(listener, 0) + delta
        if delta > 0:
            total = self._udp_flows_total
            total[listener] = total.get(listener, 0) + delta

    def udp_datagram(self, listener: str, direction: str) -> None:
        """A datagram forwarded: ``rx`` (client to backend) or ``tx`` (back)."""
        key = (listener, direction)
        d = self._udp_dgrams
        d[key] = d.get(key, 0) + 1

    def udp_dropped(self, listener: str, reason: str) -> None:
        """A datagram not forwarded (too_big, table_full, no_route, ...)."""
        key = (listener, reason)
        d = self._udp_drops
        d[key] = d.get(key, 0) + 1

    def copy_config(self, other: ProxyMetrics) -> None:
        """Take ``other``'s generation and reload results (the supervisor's, when the
        workers' counters are summed)."""
        self._generation = other._generation
        self._reloads = dict(other._reloads)

    def config_loaded(self, generation: int, ok: bool) -> None:
        """After each configuration (re)load; ``generation`` is the serving one."""
        self._generation = generation
        self._reloads["success" if ok else "failure"] += 1

    # ------------------------------------------------------------------ workers

    _SUMMED = (
        "_ds_rq",
        "_ds_cx",
        "_ds_cx_total",
        "_us_rq",
        "_route_rq",
        "_us_cx",
        "_tunnels",
        "_tunnels_total",
        "_us_fail",
        "_retry",
        "_local",
        "_tls_err",
        "_tls_cx",
        "_pp_refused",
        "_tcp_cx",
        "_udp_flows",
        "_udp_flows_total",
        "_udp_dgrams",
        "_udp_drops",
        "_ejections",
        "_ejected",
    )

    def export(self) -> dict[str, object]:
        """Plain copies of the counters (picklable), for a supervisor to sum."""
        out: dict[str, object] = {name: dict(getattr(self, name)) for name in self._SUMMED}
        out["_ds_time"] = {k: (list(h.counts), h.total) for k, h in self._ds_time.items()}
        out["_us_time"] = {k: (list(h.counts), h.total) for k, h in self._us_time.items()}
        return out

    def absorb(self, exported: dict[str, object]) -> None:
        """Add another process's ``export()`` into these counters (gauges sum too:
        open connections of all workers)."""
        for name in self._SUMMED:
            mine: dict[object, int] = getattr(self, name)
            theirs = exported.get(name)
            if isinstance(theirs, dict):
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
        for name in ("_ds_time", "_us_time"):
            hists: dict[str, _Histogram] = getattr(self, name)
            theirs = exported.get(name)
            if isinstance(theirs, dict):
                for key, (counts, total) in theirs.items():
                    hist = hists.get(key)
                    if hist is None:
                        hist = hists[key] = _Histogram()
                    hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
                    hist.total += total

    # ------------------------------------------------------------------ collection

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering twice in one registry fails loudly.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> Iterator[Metric]:
        ds_rq = list(self._ds_rq.items())
        by_class: dict[tuple[str, str], int] = {}
        by_code = CounterMetricFamily(
            "gatewayd_downstream_rq_code",
            "Downstream requests by response status code.",
            labels=("listener", "code"),
        )
        for (listener, status), n in sorted(ds_rq):
            by_code.add_metric((listener, str(status)), n)
            cls_key = (listener, _code_class(status))
            by_class[cls_key] = by_class.get(cls_key, 0) + n
        ds_class = CounterMetricFamily(
            "gatewayd_downstream_rq",
            "Downstream requests by response status class.",
            labels=("listener", "code_class"),
        )
        for (listener, code_class), n in sorted(by_class.items()):
            ds_class.add_metric((listener, code_class), n)
        yield ds_class
        yield by_code
        yield _histogram(
            "gatewayd_downstream_rq_duration_seconds",
            "Time from the first byte of a request to the last byte of its response.",
            "listener",
            self._ds_time,
        )
        yield _gauge(
            "gatewayd_downstream_cx_active",
            "Open downstream connections.",
            "listener",
            self._ds_cx,
        )
        yield _counter(
            "gatewayd_downstream_cx",
            "Accepted downstream connections.",
            ("listener",),
            {(k,): v for k, v in list(self._ds_cx_total.items())},
        )
        yield _counter(
            "gatewayd_upstream_rq",
            "Upstream responses by status code.",
            ("backend", "code"),
            {(b, str(s)): n for (b, s), n in list(self._us_rq.items())},
        )
        yield _counter(
            "gatewayd_route_upstream_rq",
            "Upstream responses by route rule and status code.",
            ("route", "code"),
            {(r, str(s)): n for (r, s), n in list(self._route_rq.items())},
        )
        yield _histogram(
            "gatewayd_upstream_rq_duration_seconds",
            "Time from sending a request upstream to the end of its response.",
            "backend",
            self._us_time,
        )
        yield _gauge(
            "gatewayd_upstream_cx_active",
            "Open upstream connections.",
            "backend",
            self._us_cx,
        )
        yield _gauge(
            "gatewayd_upstream_tunnels_active",
            "Open WebSocket tunnels (upgraded connections).",
            "backend",
            self._tunnels,
        )
        yield _counter(
            "gatewayd_upstream_tunnels",
            "WebSocket tunnels opened (backend answered 101).",
            ("backend",),
            {(k,): v for k, v in list(self._tunnels_total.items())},
        )
        yield _counter(
            "gatewayd_upstream_cx_connect_fail",
            "Failed upstream connection attempts.",
            ("backend",),
            {(k,): v for k, v in list(self._us_fail.items())},
        )
        retries = list(self._retry.items())
        yield _counter(
            "gatewayd_upstream_rq_retry",
            "Retries sent to a backend (HTTPRoute retry).",
            ("backend",),
            {(b,): n for (b, r), n in retries if r == "retry"},
        )
        yield _counter(
            "gatewayd_upstream_rq_retry_overflow",
            "Retries not sent because the retry budget was spent.",
            ("backend",),
            {(b,): n for (b, r), n in retries if r == "overflow"},
        )
        yield _counter(
            "gatewayd_outlier_ejections",
            "Endpoints ejected by outlier detection (passive health checking).",
            ("backend",),
            {(k,): v for k, v in list(self._ejections.items())},
        )
        yield _gauge(
            "gatewayd_outlier_ejected",
            "Endpoints ejected by outlier detection now (summed over workers).",
            "backend",
            self._ejected,
        )
        yield _counter(
            "gatewayd_local_reply",
            "Responses generated by gatewayd itself, by reason.",
            ("reason",),
            {(k,): v for k, v in list(self._local.items())},
        )
        yield GaugeMetricFamily(
            "gatewayd_config_generation",
            "Generation of the configuration snapshot being served.",
            value=self._generation,
        )
        yield _counter(
            "gatewayd_config_reload",
            "Configuration loads by result.",
            ("result",),
            {(k,): v for k, v in list(self._reloads.items())},
        )
        yield _counter(
            "gatewayd_config_reload_failures",
            "Reloads refused because the new configuration had errors; the last good "
            "snapshot kept serving.",
            (),
            {(): self._reloads["failure"]},
        )
        yield _counter(
            "gatewayd_tls_handshake_error",
            "Failed downstream TLS handshakes, by listener and reason.",
            ("listener", "reason"),
            {k: v for k, v in list(self._tls_err.items())},
        )
        yield _counter(
            "gatewayd_tls_route_cx",
            "Connections of TLS listeners (TLSRoute), by listener and outcome.",
            ("listener", "result"),
            {k: v for k, v in list(self._tls_cx.items())},
        )
        yield _counter(
            "gatewayd_proxy_protocol_refused",
            "Connections closed for their PROXY protocol header, by listener and reason "
            "(untrusted: a header from a source not trusted to send one; timeout; invalid).",
            ("listener", "reason"),
            {k: v for k, v in list(self._pp_refused.items())},
        )
        yield _counter(
            "gatewayd_tcp_route_cx",
            "Connections of TCP listeners (TCPRoute), by listener and outcome.",
            ("listener", "result"),
            {k: v for k, v in list(self._tcp_cx.items())},
        )
        yield _counter(
            "gatewayd_udp_flows",
            "UDP client flows opened (UDPRoute), by listener.",
            ("listener",),
            {(k,): v for k, v in list(self._udp_flows_total.items())},
        )
        yield _gauge(
            "gatewayd_udp_flows_active",
            "Open UDP client flows.",
            "listener",
            self._udp_flows,
        )
        yield _counter(
            "gatewayd_udp_datagrams",
            "UDP datagrams forwarded, by listener and direction (rx: from clients).",
            ("listener", "direction"),
            {k: v for k, v in list(self._udp_dgrams.items())},
        )
        yield _counter(
            "gatewayd_udp_dropped",
            "UDP datagrams dropped, by listener and reason.",
            ("listener", "reason"),
            {k: v for k, v in list(self._udp_drops.items())},
        )


def _counter(
    name: str, doc: str, labels: tuple[str, ...], values: dict[tuple[str, ...], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(key, n)
    return family


def _gauge(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=(label,))
    for key, n in sorted(list(values.items())):
        family.add_metric((key,), n)
    return family


def _histogram(
    name: str, doc: str, label: str, values: dict[str, _Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=(label,))
    for key, hist in sorted(list(values.items()), key=lambda kv: kv[0]):
        family.add_metric((key,), hist.cumulative(), hist.total)
    return family


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` (default: the global REGISTRY),
    with its content type, for /stats/prometheus."""
    return generate_latest(registry if registry is not None else REGISTRY), CONTENT_TYPE_LATEST
