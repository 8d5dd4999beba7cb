"""Optional OpenTelemetry export: one span per proxied request, sent over OTLP/HTTP
(protobuf) by the OpenTelemetry SDK's batch span processor.

Off by default (``gatewayd run --otlp-endpoint URL`` turns it on); the SDK is the
``otel`` install extra (``pip install gatewayd[otel]``) and is imported only then.

The span is gatewayd's hop of the W3C trace (``tracecontext.py``): its span id is the
parent id the backend received in ``traceparent``, its parent the caller's span (when
the request came with a valid ``traceparent``).  Sampling follows the caller's sampled
flag; a trace gatewayd starts is sampled.  On the request path a span is one tuple
in a bounded queue (``MAX_QUEUE`` spans, the overflow dropped as the SDK does); a
thread of this module builds the SDK's spans from it and hands them to the batch span
processor, whose own thread encodes and sends them in batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gatewayd.proxy.http.exchange import Exchange

log = logging.getLogger(__name__)

MAX_QUEUE = 2048  # spans waiting for export, per process (the SDK's default)
BATCH = 512  # spans per OTLP request (the SDK's default)
DELAY_MS = 1000  # longest wait before a partial batch is sent


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``endpoint``: a base URL (``http://collector:4318``)
    gets ``/v1/traces`` appended, as OTEL_EXPORTER_OTLP_ENDPOINT does; a URL with a
    path is used as given."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"OTLP endpoint must be an http(s) URL, not {endpoint!r}")
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def endpoint_problem(endpoint: str) -> str | None:
    """Why ``--otlp-endpoint endpoint`` cannot work (a usage error), or None."""
    try:
        traces_url(endpoint)
    except ValueError as exc:
        return str(exc)
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return "the OpenTelemetry SDK is not installed: pip install 'gatewayd[otel]'"
    return None


class SpanExport:
    """The batch span processor and the constants every span shares."""

    def __init__(self, endpoint: str, service_name: str = "gatewayd") -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
            from opentelemetry.trace.status import Status, StatusCode
        except ImportError as exc:
            raise RuntimeError(
                "--otlp-endpoint needs the OpenTelemetry SDK: pip install 'gatewayd[otel]'"
            ) from exc
        from gatewayd.proxy.metrics import VERSION

        self._processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(endpoint)),
            max_queue_size=MAX_QUEUE,
            schedule_delay_millis=DELAY_MS,
            max_export_batch_size=BATCH,
        )
        self._readable = ReadableSpan
        self._context = SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._server = SpanKind.SERVER
        self._resource = Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope("gatewayd", VERSION)
        self._ok = Status(StatusCode.UNSET)
        self._error = Status(StatusCode.ERROR)
        self._pending: deque[tuple[Any, ...]] = deque()
        self.dropped = 0  # spans not queued: MAX_QUEUE were waiting
        self._stop = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gatewayd-spans", daemon=True)
        self._thread.start()

    def export(self, ex: Exchange, duration: float) -> None:
        """Queue the span of a finished exchange (its ``traceparent`` is set).

        Request path: one tuple appended to a deque (thread-safe without a lock), about
        1 us.  The ``ReadableSpan`` is built in this exporter's thread: building and
        queueing it here cost 5-20 us a request on the shared test machine (its
        attributes are copied and checked; loadtest/README.md)."""
        tp = ex.traceparent
        if tp is None or tp[53:55] != b"01":
            return  # the caller did not sample this trace: nothing is recorded
        pending = self._pending
        if len(pending) >= MAX_QUEUE:
            self.dropped += 1
            return
        rule = ex.rule
        ep = ex.endpoint
        pending.append(
            (
                tp,
                ex.trace_parent,
                time.time_ns(),
                duration,
                ex.status,
                ex.method,
                ex.head.target,
                ex.host,
                ex.listener,
                rule.route_id if rule is not None else "",
                ex.request_id,
                ex.flags,
                (ep.address, ep.port) if ep is not None else None,
            )
        )
        if len(pending) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        pending = self._pending
        while True:
            self._wake.wait(DELAY_MS / 1000)
            self._wake.clear()
            stopping = self._stop
            while pending:
                try:
                    self._processor.on_end(self._span(pending.popleft()))
                except Exception:  # a span never stops the others
                    log.exception("span export failed")
            if stopping:
                return

    def _span(self, record: tuple[Any, ...]) -> Any:
        (tp, parent_id, end, duration, status, method_b, target, host, listener, route,
         request_id, flags, upstream) = record  # fmt: skip
        trace_id = int(tp[3:35], 16)
        context = self._context(trace_id, int(tp[36:52], 16), False, self._sampled)
        parent = None
        if parent_id:
            parent = self._context(trace_id, int(parent_id, 16), True, self._sampled)
        method = method_b.decode("latin-1")
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": target.decode("latin-1"),
            "http.response.status_code": status,
            "server.address": host,
            "gatewayd.listener": listener,
        }
        if route:
            attributes["gatewayd.route"] = route
        if request_id is not None:
            attributes["http.request.header.x-request-id"] = request_id.decode("latin-1")
        if flags:
            attributes["gatewayd.response_flags"] = flags
        if upstream is not None:
            attributes["server.upstream.address"] = upstream[0]
            attributes["server.upstream.port"] = upstream[1]
        return self._readable(
            name=f"{method} {route}" if route else method,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            kind=self._server,
            # "Span Status MUST be left unset if HTTP status code was in the 1xx, 2xx or
            # 3xx ranges, unless there was another error"; a server sets Error for 5xx
            # (and 0: no response) but not 4xx (OpenTelemetry HTTP conventions).
            status=self._error if status >= 500 or status == 0 else self._ok,
            start_time=end - int(duration * 1e9),
            end_time=end,
            instrumentation_scope=self._scope,
        )

    def shutdown(self) -> None:
        """Build and send what is queued (bounded by the exporter's timeout), then stop
        both threads."""
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._processor.shutdown()
