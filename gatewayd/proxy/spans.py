"""Optional OpenTelemetry export: one span per proxied request, sent over OTLP/HTTP
(protobuf) by the OpenTelemetry SDK's batch span processor.

Off by default (``gatewayd run --otlp-endpoint URL`` turns it on); the SDK is the
``otel`` install extra (``pip install gatewayd[otel]``) and is imported only then.

The span is gatewayd's hop of the W3C trace (``tracecontext.py``): its span id is the
parent id the backend received in ``traceparent``, its parent the caller's span (when
the request came with a valid ``traceparent``).  Sampling follows the caller's sampled
flag; a trace gatewayd starts is sampled.  On the request path a span is one
``ReadableSpan`` handed to the processor's bounded queue (``MAX_QUEUE`` spans, the
overflow dropped as the SDK does); encoding and sending run in the processor's thread,
in batches.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gatewayd.proxy.http.exchange import Exchange

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

    def export(self, ex: Exchange, duration: float) -> None:
        """Queue the span of a finished exchange (its ``traceparent`` is set)."""
        tp = ex.traceparent
        if tp is None or tp[53:55] != b"01":
            return  # the caller did not sample this trace: nothing is recorded
        trace_id = int(tp[3:35], 16)
        context = self._context(trace_id, int(tp[36:52], 16), False, self._sampled)
        parent = None
        if ex.trace_parent:
            parent = self._context(trace_id, int(ex.trace_parent, 16), True, self._sampled)
        end = time.time_ns()
        status = ex.status
        rule = ex.rule
        head = ex.head
        attributes: dict[str, Any] = {
            "http.request.method": ex.method.decode("latin-1"),
            "url.path": head.target.decode("latin-1"),
            "http.response.status_code": status,
            "server.address": ex.host,
            "gatewayd.listener": ex.listener,
        }
        if rule is not None:
            attributes["gatewayd.route"] = rule.route_id
        if ex.request_id is not None:
            attributes["http.request.header.x-request-id"] = ex.request_id.decode("latin-1")
        if ex.flags:
            attributes["gatewayd.response_flags"] = ex.flags
        ep = ex.endpoint
        if ep is not None:
            attributes["server.upstream.address"] = ep.address
            attributes["server.upstream.port"] = ep.port
        self._processor.on_end(
            self._readable(
                name=f"{attributes['http.request.method']} {attributes['gatewayd.route']}"
                if rule is not None
                else attributes["http.request.method"],
                context=context,
                parent=parent,
                resource=self._resource,
                attributes=attributes,
                kind=self._server,
                # "Span Status MUST be left unset if HTTP status code was in the 1xx, 2xx
                # or 3xx ranges, unless there was another error"; a server sets Error for
                # 5xx (and 0: no response) but not 4xx (OpenTelemetry HTTP conventions).
                status=self._error if status >= 500 or status == 0 else self._ok,
                start_time=end - int(duration * 1e9),
                end_time=end,
                instrumentation_scope=self._scope,
            )
        )

    def shutdown(self) -> None:
        """Send what is queued (bounded by the exporter's timeout) and stop the thread."""
        self._processor.shutdown()
