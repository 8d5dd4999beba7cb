"""Access log: one line per request, Envoy's default format or JSON with the same fields.

Text (Envoy's default format string)::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
    %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %TRACE_ID%

then, when gatewayd sends W3C Trace Context (the default; ``--no-trace-context`` drops
the field), one field of its own: the trace id sent upstream in ``traceparent`` (32
hex digits; ``-`` when none was sent), so a log line leads to its trace and, with
X-Request-Id, to the backend's own lines.

JSON: one object per line with snake_case keys (start_time, method, path, protocol,
response_code, response_flags, bytes_received, bytes_sent, duration,
upstream_service_time, x_forwarded_for, user_agent, request_id, authority,
upstream_host, route_name, and trace_id with Trace Context); numbers are JSON
numbers (like Envoy's typed JSON), an unknown upstream service time is null.

L4 connections (TLS listener connections, node-local pass-through splices) get one line
when the connection ends, as Envoy's tcp_proxy writes them: the default format with
``"- - -" 0`` for the request line and response code, the connection's bytes and
duration, then five fields of its own::

    ... "%UPSTREAM_HOST%" %DOWNSTREAM_REMOTE_ADDRESS% "%REQUESTED_SERVER_NAME%"
    "%UPSTREAM_CLUSTER%" "route" "%CONNECTION_TERMINATION_DETAILS%"

In JSON, the HTTP keys (method, path, protocol "-"; response_code 0;
upstream_service_time null) plus downstream_remote_address, requested_server_name,
upstream_cluster and connection_termination_details.

"if a value is not set/empty, the logs will contain a ``-`` character or, for JSON logs,
the string ``"-"``" (Envoy access log docs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import TextIO

from gatewayd.routing.snapshot.addresses import host_port

# Control characters are escaped in the text format so a header value can never start
# a forged log line; JSON escapes them by itself.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


_monotonic = time.monotonic  # module-level: patchable in tests
_q: Callable[[str], str] = encode_basestring  # C: '"' + escaped + '"'


def sockaddr_text(sockaddr: object) -> str:
    """``host:port`` of a socket address (``[v6]:port`` for IPv6), ``""`` without one."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return host_port(str(sockaddr[0]), int(sockaddr[1]))
    return ""


class AccessLogger:
    """Writes access log lines to ``stream`` (default: ``sys.stdout``).

    Lines go through the stream's own buffer; the stream is flushed when a line is
    written a second or more after the previous flush, on ``flush()`` (at shutdown) and
    on ``flush_due()`` (from the proxy's periodic sweep, so no line waits for the next
    request for more than about two seconds).
    """

    __slots__ = (
        "_json_format",
        "_last_flush",
        "_ms",
        "_ms_text",
        "_sec",
        "_sec_text",
        "_stream",
        "_trace_ids",
    )

    def __init__(self, fmt: str, stream: TextIO | None = None, *, trace_ids: bool = False) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"access log format must be 'text' or 'json', not {fmt!r}")
        self._json_format = fmt == "json"
        # The trace id field (text: one more field at the end; JSON: "trace_id"), on
        # every line when the proxy sends traceparent, so the columns never shift.
        self._trace_ids = trace_ids
        self._stream = stream if stream is not None else sys.stdout
        self._last_flush = _monotonic()
        self._sec = -1
        self._sec_text = ""
        self._ms = -1
        self._ms_text = ""

    def _start_time(self, start_time: float) -> str:
        # %START_TIME%: ISO 8601 UTC with milliseconds, e.g. 2016-04-15T20:17:00.310Z.
        # Rounded to microseconds first: a float of the epoch holds .310 as .30999994.
        # The text is kept per millisecond (many lines share one under load) and
        # strftime runs once per second: 1.27 -> 0.2 us a line (measured).
        ms = round(start_time * 1_000_000) // 1000
        if ms == self._ms:
            return self._ms_text
        sec, frac = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        self._ms = ms
        self._ms_text = text = f"{self._sec_text}.{frac:03d}Z"
        return text

    def log(
        self,
        *,
        start_time: float,
        method: str,
        path: str,
        protocol: str,
        status: int,
        flags: str,
        bytes_received: int,
        bytes_sent: int,
        duration_ms: int,
        upstream_ms: int | None,
        xff: str,
        user_agent: str,
        request_id: str,
        authority: str,
        upstream_host: str,
        route: str,
        trace_id: str = "",
    ) -> None:
        """Log one request.  ``start_time``: wall clock (time.time()) at the first byte;
        ``path``: the original path (before any URLRewrite, like
        X-ENVOY-ORIGINAL-PATH?:PATH); ``flags``: Envoy response flags ("" for none);
        ``upstream_ms``: time to the upstream's response headers, None without one."""
        self.http(
            start_time,
            method,
            path,
            protocol,
            status,
            flags,
            bytes_received,
            bytes_sent,
            duration_ms,
            upstream_ms,
            xff,
            user_agent,
            request_id,
            authority,
            upstream_host,
            route,
            trace_id,
        )

    def http(
        self,
        start_time: float,
        method: str,
        path: str,
        protocol: str,
        status: int,
        flags: str,
        bytes_received: int,
        bytes_sent: int,
        duration_ms: int,
        upstream_ms: int | None,
        xff: str,
        user_agent: str,
        request_id: str,
        authority: str,
        upstream_host: str,
        route: str,
        trace_id: str = "",
        /,
    ) -> None:
        """``log()`` with positional arguments, for the request path: sixteen keyword
        arguments cost about 0.5 us a call more (measured)."""
        ts = self._start_time(start_time)
        if self._json_format:
            # Hand-built rather than json.dumps(dict): same JSON, a third of the cost.
            # encode_basestring quotes and escapes (controls, quotes, backslashes).
            up = "null" if upstream_ms is None else int(upstream_ms)
            line = (
                f'{{"start_time":"{ts}","method":{_q(method or "-")},'
                f'"path":{_q(path or "-")},"protocol":{_q(protocol or "-")},'
                f'"response_code":{int(status)},"response_flags":{_q(flags or "-")},'
                f'"bytes_received":{int(bytes_received)},"bytes_sent":{int(bytes_sent)},'
                f'"duration":{int(duration_ms)},"upstream_service_time":{up},'
                f'"x_forwarded_for":{_q(xff or "-")},"user_agent":{_q(user_agent or "-")},'
                f'"request_id":{_q(request_id or "-")},"authority":{_q(authority or "-")},'
                f'"upstream_host":{_q(upstream_host or "-")},"route_name":{_q(route or "-")}'
                + (f',"trace_id":"{trace_id or "-"}"}}\n' if self._trace_ids else "}\n")
            )
        else:
            line = (
                f'[{ts}] "{method or "-"} {path or "-"} {protocol or "-"}" {status} '
                f"{flags or '-'} {bytes_received} {bytes_sent} {duration_ms} "
                f"{'-' if upstream_ms is None else upstream_ms} "
                f'"{xff or "-"}" "{user_agent or "-"}" "{request_id or "-"}" '
                f'"{authority or "-"}" "{upstream_host or "-"}"'
            )
            if self._trace_ids:
                line += f" {trace_id or '-'}"
            if not line.isprintable():
                line = line.translate(_ESCAPES)
            line += "\n"
        # Inlined rather than self._write(line): this runs once per HTTP request.
        stream = self._stream
        stream.write(line)
        now = _monotonic()
        if now - self._last_flush >= 1.0:
            self._last_flush = now
            stream.flush()

    def log_l4(
        self,
        *,
        start_time: float,
        flags: str,
        bytes_received: int,
        bytes_sent: int,
        duration_ms: int,
        downstream: str,
        sni: str,
        upstream_host: str,
        upstream_cluster: str,
        route: str,
        details: str,
    ) -> None:
        """Log one L4 connection when it ends.  ``start_time``: wall clock at accept;
        ``bytes_received``/``bytes_sent``: from/to the client; ``downstream``: the
        client's address:port; ``sni``: the ClientHello's server name;
        ``upstream_cluster``: the backend; ``details``: why gatewayd ended it, if it did."""
        ts = self._start_time(start_time)
        if self._json_format:
            line = (
                f'{{"start_time":"{ts}","method":"-","path":"-","protocol":"-",'
                f'"response_code":0,"response_flags":{_q(flags or "-")},'
                f'"bytes_received":{int(bytes_received)},"bytes_sent":{int(bytes_sent)},'
                f'"duration":{int(duration_ms)},"upstream_service_time":null,'
                f'"x_forwarded_for":"-","user_agent":"-","request_id":"-","authority":"-",'
                f'"upstream_host":{_q(upstream_host or "-")},"route_name":{_q(route or "-")},'
                f'"downstream_remote_address":{_q(downstream or "-")},'
                f'"requested_server_name":{_q(sni or "-")},'
                f'"upstream_cluster":{_q(upstream_cluster or "-")},'
                f'"connection_termination_details":{_q(details or "-")}}}\n'
            )
        else:
            line = (
                f'[{ts}] "- - -" 0 {flags or "-"} {bytes_received} {bytes_sent} '
                f'{duration_ms} - "-" "-" "-" "-" "{upstream_host or "-"}" '
                f'{downstream or "-"} "{sni or "-"}" "{upstream_cluster or "-"}" '
                f'"{route or "-"}" "{details or "-"}"'
            )
            if not line.isprintable():
                line = line.translate(_ESCAPES)
            line += "\n"
        self._write(line)

    def _write(self, line: str) -> None:
        stream = self._stream
        stream.write(line)
        now = _monotonic()
        if now - self._last_flush >= 1.0:
            self._last_flush = now
            stream.flush()

    def flush(self) -> None:
        self._last_flush = _monotonic()
        self._stream.flush()

    def flush_due(self) -> None:
        """Flush if the last flush is a second old.  The proxy's periodic sweep calls it,
        so the last lines of a daemon that went quiet do not wait in the buffer."""
        if _monotonic() - self._last_flush >= 1.0:
            self.flush()
