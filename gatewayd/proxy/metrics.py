"""Prometheus metrics of the proxy, with the meaning of Envoy's HTTP statistics.

Series (``gatewayd_`` prefix; Envoy stat in brackets).  ``listener`` is the Gateway
listener, "namespace/gateway/listener"; where no listener was chosen yet (connection
series, requests no route matched) the listeners sharing the socket, comma-separated.
``route`` is "namespace/name", ``rule`` the rule index:

- ``downstream_rq_total{listener,route,rule,code}`` (http.*.downstream_rq_<code>)
- ``downstream_rq_duration_seconds{listener,route,rule}`` histogram (downstream_rq_time),
  buckets from 0.1 ms
- ``downstream_rq_active`` (downstream_rq_active): routed, not yet answered
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
- ``config_generation``, ``config_reload_total{result}`` (result: success | failure, a
  refused reload whose last good snapshot kept serving)
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
- ``build_info{version,python}``; with workers, ``worker_process_*{worker}``
  (``WorkerProcesses``)

Renamed: ``downstream_rq_code_total`` became ``downstream_rq_total{code}`` (the old
``downstream_rq_total{code_class}`` counted the same requests again), and
``config_reload_failures_total`` went (``config_reload_total{result="failure"}``).

The hot path only bumps plain ints in dicts; the prometheus families are built from
them when the registry is scraped.  prometheus client's own ``Counter.labels(...).inc()``
takes a lock and resolves the labels on every call, which costs several microseconds per
request.  A proxied request is not even counted in place: ``Exchange`` appends one
record (``ExchangeRecord``) to ``pending`` and the records are added to the counters
a few hundred at a time (exchange.METRICS_BATCH), in a loop that keeps its code and
data warm, and on every read (scrape, export).  Counted one at a time between two requests, the two
upstream/downstream slot updates cost ~1.4 us per request against ~0.4 us in a loop
(bench_h1_inproc --metrics, timed around each call).  Everything is meant to be called
from the event loop thread; a scrape from another thread only reads snapshots
(``list(d.items())`` is atomic under the GIL) and adds the waiting records to copies.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Hashable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Final, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gatewayd.routing.snapshot.addresses import host_port

if TYPE_CHECKING:
    from gatewayd.routing.snapshot.compiled import ListenerPort

K = TypeVar("K", bound=Hashable)

try:
    VERSION = version("gatewayd")
except PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"

# Request durations from 0.1 ms to 60 s: a proxied small request on loopback takes
# 0.1-0.5 ms, so three buckets below 1 ms tell the proxy's overhead apart; the rest
# follow Prometheus' 1-2.5-5 steps up to slow backends.
BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
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
_LE = (*(repr(float(b)) for b in BUCKETS), "+Inf")  # le="0.0001" ... "60.0"


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


class _Requests(_Histogram):
    """The requests of one (Gateway listener, route rule): counts by status code and
    their durations.  Allocated on a key's first request and kept; a request then costs
    a dict lookup, two list/dict increments and a float add."""

    __slots__ = ("codes",)

    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[int, int] = {}

    def copy(self) -> _Requests:
        out = _Requests()
        out.codes = dict(self.codes)
        out.counts = list(self.counts)
        out.total = self.total
        return out


# A request's slot key: (Gateway namespace, Gateway name, listener name, route id).  The
# listener name is "" for a request no route matched (the port's listeners are named at
# scrape time) and the route id "" as well.
RequestKey = tuple[str, str, str, str]

# One proxied request as ``Exchange`` hands it over: its ``RequestKey``'s four strings
# (the listener name is the port's listeners, comma-separated, when no route matched),
# status, duration s, backend name or None, upstream response duration s or a negative
# number when no upstream response is counted.  ``request`` and ``upstream_request`` in
# one, holding no snapshot object (a waiting record keeps no replaced snapshot alive).
ExchangeRecord = tuple[str, str, str, str, int, float, "str | None", float]


# The first four bucket bounds (``_count``'s inline bisect).
_B0, _B1, _B2, _B3 = BUCKETS[:4]
# ``_count``'s "no slot yet" (never counted into: a slot of its own, not None, so that
# the loop's slot variable keeps one type).
_NO_SLOT: Final = _Requests()


def _count(
    rq: dict[RequestKey, _Requests],
    up: dict[tuple[str, str], _Requests],
    records: Iterable[ExchangeRecord],
) -> None:
    """Add ``records`` to the request slots ``rq`` and upstream slots ``up``.

    Inlined (no call per slot) and with the slot of the record before kept while the
    key's strings are the same objects (the exchange hands over the port's and the
    rule's own strings, so a batch mostly repeats one key): identity tests instead of
    a tuple, its hash and a dict lookup; the common buckets found by comparisons.
    212 ns per record against 395 ns with a call, a lookup and a bisect per slot
    (timeit, 256 records of one key)."""
    slot = uslot = _NO_SLOT
    codes = ucodes = slot.codes
    counts = ucounts = slot.counts
    p_ns = p_gateway = p_listener = p_route = p_backend = p_uroute = ""
    for ns, gateway, listener, route_id, status, duration_s, backend, up_s in records:
        if (
            slot is _NO_SLOT
            or ns is not p_ns
            or gateway is not p_gateway
            or listener is not p_listener
            or route_id is not p_route
        ):
            key = (ns, gateway, listener, route_id)
            got = rq.get(key)
            if got is None:
                got = rq[key] = _Requests()
            slot = got
            codes = got.codes
            counts = got.counts
            p_ns, p_gateway, p_listener, p_route = ns, gateway, listener, route_id
        try:
            codes[status] += 1
        except KeyError:  # a status's first response in this slot
            codes[status] = 1
        # ``bisect_left(BUCKETS, duration_s)``, its common range (up to 1 ms) in
        # inline comparisons: 3.11 specializes float comparisons, where bisect_left's
        # call with its rich comparisons costs ~60 ns (timeit).
        if duration_s <= _B1:
            counts[0 if duration_s <= _B0 else 1] += 1
        elif duration_s <= _B3:
            counts[2 if duration_s <= _B2 else 3] += 1
        else:
            counts[bisect_left(BUCKETS, duration_s)] += 1
        slot.total += duration_s
        if backend is not None and up_s >= 0.0:
            if uslot is _NO_SLOT or backend is not p_backend or route_id is not p_uroute:
                ukey = (backend, route_id)
                got = up.get(ukey)
                if got is None:
                    got = up[ukey] = _Requests()
                uslot = got
                ucodes = got.codes
                ucounts = got.counts
                p_backend, p_uroute = backend, route_id
            try:
                ucodes[status] += 1
            except KeyError:
                ucodes[status] = 1
            if up_s <= _B1:
                ucounts[0 if up_s <= _B0 else 1] += 1
            elif up_s <= _B3:
                ucounts[2 if up_s <= _B2 else 3] += 1
            else:
                ucounts[bisect_left(BUCKETS, up_s)] += 1
            uslot.total += up_s


def _joined(port: ListenerPort) -> str:
    return ",".join(port.listener_names)


def _route_labels(route_id: str) -> tuple[str, str]:
    """("namespace/name", rule) of a route id "namespace/name/rule/N" (or ".../rule/<name>")."""
    head, sep, rule = route_id.rpartition("/rule/")
    return (head, rule) if sep else (route_id, "")


class ProxyMetrics(Collector):
    """The proxy's metrics; registers itself with ``registry`` (default: the global
    prometheus ``REGISTRY``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Proxied requests not counted yet (``ExchangeRecord``; the exchange appends,
        # and calls ``count_pending`` when enough wait).
        self.pending: list[ExchangeRecord] = []
        self._rq: dict[RequestKey, _Requests] = {}
        self.rq_active = 0  # requests routed and not yet answered (all listeners)
        self._ds_cx: dict[str, int] = {}
        self._ds_cx_total: dict[str, int] = {}
        # Upstream responses: this process's, per (backend, route) (``upstream_request``)
        # and those ``absorb`` added from other processes, by backend or route.
        self._up: dict[tuple[str, str], _Requests] = {}
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
        # Connection-level series are counted under the socket's address (the hot path
        # has it at hand) and named in Gateway API words at scrape time: address label
        # -> "namespace/gateway/listener[,listener...]" (``name_ports``).
        self._port_names: dict[str, str] = {}
        (registry if registry is not None else REGISTRY).register(self)

    # ------------------------------------------------------------------ hot path

    def request(
        self,
        port: ListenerPort | None,
        listener: str,
        route_id: str,
        status: int,
        duration_s: float,
    ) -> None:
        """A request answered (or abandoned: status 0) on Gateway listener ``listener``
        of ``port`` (``""``: no route matched), routed by ``route_id`` (``""``: none)."""
        if port is None:
            key: RequestKey = ("", "", listener, route_id)
        elif not listener:
            # No route matched, so no listener was chosen: the listeners sharing the
            # port, comma-separated (only requests answered locally take this branch).
            key = (port.gateway_namespace, port.gateway_name, _joined(port), route_id)
        else:
            key = (port.gateway_namespace, port.gateway_name, listener, route_id)
        slot = self._rq.get(key)
        if slot is None:
            slot = self._rq[key] = _Requests()
        codes = slot.codes
        codes[status] = codes.get(status, 0) + 1
        slot.counts[bisect_left(BUCKETS, duration_s)] += 1
        slot.total += duration_s

    def count_pending(self) -> None:
        """Add the waiting records to the counters (event loop thread only)."""
        batch = self.pending
        self.pending = []
        _count(self._rq, self._up, batch)

    def _slots(self) -> tuple[dict[RequestKey, _Requests], dict[tuple[str, str], _Requests]]:
        """The request and upstream slots with the waiting records added: the slots
        themselves when none waits, else copies (a read never changes the counters, so
        a scrape from any thread is safe)."""
        batch = list(self.pending)
        if not batch:
            return self._rq, self._up
        rq = {k: slot.copy() for k, slot in list(self._rq.items())}
        up = {k: slot.copy() for k, slot in list(self._up.items())}
        _count(rq, up, batch)
        return rq, up

    def upstream_request(self, backend: str, route: str, status: int, duration_s: float) -> None:
        """An upstream response (its status) received from ``backend`` for a request
        routed by ``route`` (the rule's "namespace/name/rule/N")."""
        # One slot per (backend, route): a single tuple-keyed lookup per response, the
        # per-backend and per-route series are summed from the slots when read.  Three
        # tuple-keyed counters (each hashed twice: get, then set) cost ~0.7 us more
        # per request (bench_h1_inproc --metrics, no-op comparison).
        key = (backend, route)
        slot = self._up.get(key)
        if slot is None:
            slot = self._up[key] = _Requests()
        codes = slot.codes
        codes[status] = codes.get(status, 0) + 1
        slot.counts[bisect_left(BUCKETS, duration_s)] += 1
        slot.total += duration_s

    def _upstream_series(
        self,
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int], dict[str, _Histogram]]:
        """Upstream responses by (backend, status), by (route, status), and their
        durations by backend: what ``absorb`` added plus this process's slots.  New
        dicts and histograms, read from snapshots (``list(...)``), nothing mutated."""
        us_rq = dict(self._us_rq)
        route_rq = dict(self._route_rq)
        us_time: dict[str, _Histogram] = {}
        for backend, h in list(self._us_time.items()):
            mine = us_time[backend] = _Histogram()
            mine.counts = list(h.counts)
            mine.total = h.total
        for (backend, route), slot in list(self._slots()[1].items()):
            for status, n in list(slot.codes.items()):
                k = (backend, status)
                us_rq[k] = us_rq.get(k, 0) + n
                k = (route, status)
                route_rq[k] = route_rq.get(k, 0) + n
            hist = us_time.get(backend)
            if hist is None:
                hist = us_time[backend] = _Histogram()
            hist.counts = [a + b for a, b in zip(hist.counts, list(slot.counts), strict=True)]
            hist.total += slot.total
        return us_rq, route_rq, us_time

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
        """Take ``other``'s generation, reload results and port names (the
        supervisor's, when the workers' counters are summed)."""
        self._generation = other._generation
        self._reloads = dict(other._reloads)
        self._port_names = dict(other._port_names)

    def config_loaded(self, generation: int, ok: bool) -> None:
        """After each configuration (re)load; ``generation`` is the serving one."""
        self._generation = generation
        self._reloads["success" if ok else "failure"] += 1

    def name_ports(self, ports: Iterable[ListenerPort]) -> None:
        """Name the sockets of a serving snapshot in Gateway API words, for the
        connection-level series (counted under the socket's address).  A port that left
        the configuration keeps its last name: its counters still exist."""
        names = self._port_names
        for lp in ports:
            name = f"{lp.gateway_namespace}/{lp.gateway_name}/{_joined(lp)}"
            names[host_port(lp.address, lp.port)] = name
            names[f"{lp.address}:{lp.port}"] = name  # PortTLS's label

    # ------------------------------------------------------------------ workers

    _SUMMED = (
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
        out["_rq"] = {
            k: (dict(r.codes), list(r.counts), r.total) for k, r in list(self._slots()[0].items())
        }
        us_rq, route_rq, us_time = self._upstream_series()
        out["_us_rq"] = us_rq
        out["_route_rq"] = route_rq
        out["_us_time"] = {k: (h.counts, h.total) for k, h in us_time.items()}
        out["rq_active"] = self.rq_active
        return out

    def absorb(self, exported: dict[str, object]) -> None:
        """Add another process's ``export()`` into these counters (gauges sum too:
        open connections and requests in flight of all workers)."""
        for name in self._SUMMED:
            mine: dict[object, int] = getattr(self, name)
            theirs = exported.get(name)
            if isinstance(theirs, dict):
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
        rq = exported.get("_rq")
        if isinstance(rq, dict):
            for key, (codes, counts, total) in rq.items():
                slot = self._rq.get(key)
                if slot is None:
                    slot = self._rq[key] = _Requests()
                for code, n in codes.items():
                    slot.codes[code] = slot.codes.get(code, 0) + n
                slot.counts = [a + b for a, b in zip(slot.counts, counts, strict=True)]
                slot.total += total
        us_time = exported.get("_us_time")
        if isinstance(us_time, dict):
            for key, (counts, total) in us_time.items():
                hist = self._us_time.get(key)
                if hist is None:
                    hist = self._us_time[key] = _Histogram()
                hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
                hist.total += total
        active = exported.get("rq_active")
        if isinstance(active, int):
            self.rq_active += active

    # ------------------------------------------------------------------ collection

    def describe(self) -> Iterable[Metric]:
        # Names only, so that registering twice in one registry fails loudly.
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def _port(self, label: str) -> str:
        return self._port_names.get(label, label)

    def _families(self) -> Iterator[Metric]:
        yield _build_info()
        by_code = CounterMetricFamily(
            "gatewayd_downstream_rq",
            "Downstream requests by Gateway listener, route rule and response status code "
            "(0: no response was sent).",
            labels=("listener", "route", "rule", "code"),
        )
        durations = HistogramMetricFamily(
            "gatewayd_downstream_rq_duration_seconds",
            "Time from the first byte of a request to the last byte of its response.",
            labels=("listener", "route", "rule"),
        )
        for (ns, gateway, listener, route_id), slot in sorted(list(self._slots()[0].items())):
            name = f"{ns}/{gateway}/{listener}" if ns or gateway else listener
            route, rule = _route_labels(route_id)
            for code, n in sorted(list(slot.codes.items())):
                by_code.add_metric((name, route, rule, str(code)), n)
            durations.add_metric((name, route, rule), slot.cumulative(), slot.total)
        yield by_code
        yield durations
        yield GaugeMetricFamily(
            "gatewayd_downstream_rq_active",
            "Requests being served: routed and not yet answered (WebSocket tunnels included).",
            value=self.rq_active,
        )
        port = self._port
        us_rq, route_rq, us_time = self._upstream_series()
        yield _gauge(
            "gatewayd_downstream_cx_active",
            "Open downstream connections, by the Gateway listeners of their socket.",
            "listener",
            _summed((port(k), v) for k, v in list(self._ds_cx.items())),
        )
        yield _counter(
            "gatewayd_downstream_cx",
            "Accepted downstream connections, by the Gateway listeners of their socket.",
            ("listener",),
            _summed(((port(k),), v) for k, v in list(self._ds_cx_total.items())),
        )
        yield _counter(
            "gatewayd_upstream_rq",
            "Upstream responses by status code.",
            ("backend", "code"),
            {(b, str(s)): n for (b, s), n in us_rq.items()},
        )
        yield _counter(
            "gatewayd_route_upstream_rq",
            "Upstream responses by route rule and status code.",
            ("route", "code"),
            {(r, str(s)): n for (r, s), n in route_rq.items()},
        )
        yield _histogram(
            "gatewayd_upstream_rq_duration_seconds",
            "Time from sending a request upstream to the end of its response.",
            "backend",
            us_time,
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
            "Configuration loads by result (failure: the new configuration was refused "
            "and the last good snapshot kept serving).",
            ("result",),
            {(k,): v for k, v in list(self._reloads.items())},
        )
        yield _counter(
            "gatewayd_tls_handshake_error",
            "Failed downstream TLS handshakes, by the Gateway listeners of the socket and reason.",
            ("listener", "reason"),
            _summed(((port(k[0]), k[1]), v) for k, v in list(self._tls_err.items())),
        )
        yield _counter(
            "gatewayd_tls_route_cx",
            "Connections of TLS listeners (TLSRoute), by the Gateway listeners of the "
            "socket and outcome.",
            ("listener", "result"),
            _summed(((port(k[0]), k[1]), v) for k, v in list(self._tls_cx.items())),
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


class WorkerProcesses(Collector):
    """prometheus-client's process collector read for each worker process
    (``/proc/<pid>``), as ``gatewayd_worker_process_*{worker="N"}``: with ``--workers``
    the supervisor's own ``process_*`` say nothing of where the requests are served."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for index, pid in enumerate(self._pids):
            reader = ProcessCollector(
                namespace="gatewayd_worker", pid=lambda p=pid: p, registry=None
            )
            for family in reader.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    out.add_sample(sample.name, {"worker": str(index)}, sample.value)
        return list(merged.values())


def _build_info() -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "gatewayd_build_info",
        "Always 1: the running gatewayd's version and Python.",
        labels=("version", "python"),
    )
    family.add_metric((VERSION, platform.python_version()), 1)
    return family


def _counter(
    name: str, doc: str, labels: tuple[str, ...], values: dict[tuple[str, ...], int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, n in sorted(values.items()):
        family.add_metric(key, n)
    return family


def _summed(values: Iterable[tuple[K, int]]) -> dict[K, int]:
    """Counts by key, summed: two sockets (a Gateway's IPv4 and IPv6 addresses) can
    carry the same listener names."""
    out: dict[K, int] = {}
    for k, v in values:
        out[k] = out.get(k, 0) + v
    return out


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
