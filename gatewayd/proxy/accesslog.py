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

import atexit
import codecs
import contextlib
import sys
import time
import weakref
from collections import namedtuple
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, BinaryIO, TextIO

from gatewayd.proxy.balancer import FLAG_EJECTED
from gatewayd.routing.snapshot.addresses import host_port

if TYPE_CHECKING:
    from gatewayd.proxy.http.codec import RequestHead
    from gatewayd.routing.snapshot.backends import EndpointAddress
    from gatewayd.routing.snapshot.rules import CompiledRule

    # One request's record, what the request path keeps for its line (``AccessLogger``
    # reads the rest from these objects, none of which changes after the request):
    # wall clock at the end (time.time()), duration (s), the request head as received
    # (method, original path, version, authority, fields: X-Forwarded-For and
    # User-Agent), status, flags ("" for none), whether the request ejected its
    # endpoint (flag OE), bytes received, bytes sent, ms to the upstream's response
    # head (negative: none), the client's address, X-Request-Id, the endpoint, the
    # rule (its route id), the traceparent sent upstream.
    Record = tuple[
        float,
        float,
        RequestHead,
        int,
        str,
        bool,
        int,
        int,
        float,
        str,
        bytes | None,
        EndpointAddress | None,
        CompiledRule | None,
        bytes | None,
    ]

# The names of a record's items, for the rare paths that read a few of them by name
# (the request path appends plain tuples: a named tuple costs more to make).
RecordView = namedtuple(
    "RecordView",
    "wall duration head status flags ejected bytes_received bytes_sent upstream_ms"
    " peer_ip request_id endpoint rule traceparent",
)

# Control characters are escaped in the text format so a header value can never start
# a forged log line; JSON escapes them by itself.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


_monotonic = time.monotonic  # module-level: patchable in tests

# The request path formats a line as bytes (%-formatting of bytes needs no decode) and
# writes it as it is when it is plain ASCII with nothing to escape; any other line is
# decoded as latin-1 and goes through the text formatting, so both give the same line.
# To escape, text: controls and DEL; JSON: controls, backslashes and quotes (a value's
# quote shows as more quotes than the format's own).  One C pass deletes them; a line
# that loses more than its newline (and, in JSON, its own quotes) has one: 0.14 us
# where a regex search took 0.57 us (measured).
_TEXT_ESCAPED = bytes([*range(0x20), 0x7F])
_JSON_ESCAPED = bytes([*range(0x20), 0x22, 0x5C])
# A line is formatted from pieces: the start time, the request's own bytes, and
# three pieces kept from the line before when they are the same (``_bytes_lines``):
# the counts (status, flags, bytes each way), the times (duration, upstream service
# time) and the upstream (endpoint and, in JSON, route name).
_TEXT_B = (
    b'[%s] "%s %s %s" %s %s "%s" "%s" "%s" "%s" "%s"%.0s\n',
    b'[%s] "%s %s %s" %s %s "%s" "%s" "%s" "%s" "%s" %s\n',
)  # %.0s: the trace id, without trace ids
_TEXT_PIECES = (b"%d %s %d %d", b"%d %d", b"%d -", b"%s%.0s")
_JSON_HEAD = (
    b'{"start_time":"%s","method":"%s","path":"%s","protocol":"%s",'
    b'"response_code":%s,"duration":%s,"x_forwarded_for":"%s","user_agent":"%s",'
    b'"request_id":"%s","authority":"%s","upstream_host":"%s"'
)
_JSON_B = (_JSON_HEAD + b"%.0s}\n", _JSON_HEAD + b',"trace_id":"%s"}\n')
_JSON_PIECES = (
    b'%d,"response_flags":"%s","bytes_received":%d,"bytes_sent":%d',
    b'%d,"upstream_service_time":%d',
    b'%d,"upstream_service_time":null',
    b'%s","route_name":"%s',
)


# Lines wait in memory up to this size (or a second) and go to the file in one write.
BUFFER_BYTES = 64 * 1024
# Requests whose lines wait as their records, formatted together (memory: this many
# request heads at most, each bounded by the request head limits; typically ~1 KB a
# record).  Each batch formatted between requests slows the next few of them down
# (caches): in process, batches of 16 cost ~0.8 us a request more than of 64, and 128
# ~0.25 us less in text, ~0.1 in JSON (bench_h1_inproc's request, one process, the
# configurations alternated); 256 and 512 were no better.
PENDING_LINES = 128


class _Protocols(dict[str, bytes]):
    """The protocol field by RequestHead.version (codec's HTTP_10, HTTP_11, HTTP_2),
    HTTP/1.1 for anything else: a subscript, ~0.02 us less than ``.get(v, default)``."""

    def __missing__(self, version: str) -> bytes:
        return b"HTTP/1.1"


# ".000Z" to ".999Z": a start time's millisecond and zone (``_start_time_b``).
_MILLIS = [b".%03dZ" % i for i in range(1000)]

# No endpoint or rule: the first line's differ from it.
_NOTHING = object()

_PROTOCOLS = _Protocols({"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0", "2": b"HTTP/2"})
# Encodings in which an ASCII line is its own bytes.
_ASCII_SUPERSETS = frozenset({"utf-8", "ascii", "iso8859-1", "latin-1", "cp1252"})
_q: Callable[[str], str] = encode_basestring  # C: '"' + escaped + '"'


def _ascii(text: str) -> bytes:
    """``text`` for a bytes line: "-" for "", and a non-ASCII byte for a name outside
    ASCII, which sends the line down the text formatting (it writes the name itself)."""
    if not text:
        return b"-"
    return text.encode("ascii") if text.isascii() else b"\xff"


def _flush_at_exit(ref: weakref.ref[AccessLogger]) -> None:
    logger = ref()
    if logger is not None and (logger._buf or logger.pending) and not logger._stream.closed:
        with contextlib.suppress(OSError, ValueError):  # the file is gone
            logger.flush()


def sockaddr_text(sockaddr: object) -> str:
    """``host:port`` of a socket address (``[v6]:port`` for IPv6), ``""`` without one."""
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return host_port(str(sockaddr[0]), int(sockaddr[1]))
    return ""


class AccessLogger:
    """Writes access log lines to ``stream`` (default: ``sys.stdout``).

    A stream with a binary buffer in an ASCII-compatible encoding (stdout, a file, a
    pipe) gets the lines as bytes: a request leaves a record (``add``), ``PENDING_LINES``
    records are formatted together, and the lines go to the stream's buffer in one write
    of up to ``BUFFER_BYTES`` (64 KiB) of whole lines, so the request path formats
    nothing and does no I/O.  Any other stream (``io.StringIO``) gets each line as text
    at once.  Either way the lines reach the file when a batch (or an L4 line) is
    formatted a second or more after the previous flush, on ``flush()`` (at shutdown)
    and on ``flush_due()`` (from the proxy's periodic sweep, so no line waits for more
    than about two seconds).
    """

    __slots__ = (
        "__weakref__",
        "_binary",
        "_buf",
        "_encoding",
        "_endpoints",
        "_errors",
        "_escaped",
        "_held",
        "_json_format",
        "_last_flush",
        "_line_b",
        "_ms_b",
        "_ms_hi",
        "_ms_lo",
        "_own",
        "_pieces",
        "_routes",
        "_sec",
        "_sec_b",
        "_sec_f",
        "_stream",
        "_times_zero",
        "_trace_ids",
        "batch",
        "pending",
    )

    def __init__(self, fmt: str, stream: TextIO | None = None, *, trace_ids: bool = False) -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"access log format must be 'text' or 'json', not {fmt!r}")
        self._json_format = fmt == "json"
        # The trace id field (text: one more field at the end; JSON: "trace_id"), on
        # every line when the proxy sends traceparent, so the columns never shift.
        self._trace_ids = trace_ids
        self._stream = stream = stream if stream is not None else sys.stdout
        self._line_b = (_JSON_B if self._json_format else _TEXT_B)[trace_ids]
        self._pieces = pieces = _JSON_PIECES if self._json_format else _TEXT_PIECES
        # The times of a request answered within a millisecond.
        self._times_zero = pieces[1] % (0, 0)
        # What the check deletes from a line with nothing to escape: its newline and, in
        # JSON, the format's own quotes, its pieces' among them (the counts, one of the
        # two times, the upstream).
        self._escaped = _JSON_ESCAPED if self._json_format else _TEXT_ESCAPED
        self._own = 1
        if self._json_format:
            counts, times, _, upstream = pieces
            self._own += sum(f.count(b'"') for f in (self._line_b, counts, times, upstream))
        encoding = getattr(stream, "encoding", None)
        self._encoding = encoding if isinstance(encoding, str) else "utf-8"
        errors = getattr(stream, "errors", None)
        self._errors = errors if isinstance(errors, str) else "strict"
        self._binary: BinaryIO | None = None
        buffer = getattr(stream, "buffer", None)
        if buffer is not None and isinstance(encoding, str):
            try:
                name = codecs.lookup(encoding).name
            except LookupError:
                name = ""
            if name in _ASCII_SUPERSETS:
                self._binary = buffer
                # Lines still waiting when the interpreter exits without flush() (a
                # line logged after the proxy's last flush) are written, as the text
                # stream's own buffer would have been.
                atexit.register(_flush_at_exit, weakref.ref(self))
        self._buf = bytearray()
        # Records waiting for their lines, formatted ``batch`` at a time (a text-only
        # stream gets each line at once).
        self.pending: list[Record] = []
        self.batch = PENDING_LINES if self._binary is not None else 1
        # "host:port" of the endpoints seen and their rules' route ids, as bytes, by
        # id(): ``_held`` holds the objects, so an id found is the object's own (no
        # identity check); id(None) gives "-" (no test for None).  Bounded.
        self._endpoints: dict[int, bytes] = {}
        self._routes: dict[int, bytes] = {}
        self._held: list[object] = []
        self._forget()
        self._last_flush = _monotonic()
        self._sec = -1
        self._sec_f = -2.0  # no time falls in it
        self._sec_b = b""
        self._ms_b = b""
        # Wall-clock times certain to fall in the millisecond of ``_ms_b``
        # (``_start_time_b``).
        self._ms_lo = 0.0
        self._ms_hi = 0.0

    def _start_time(self, start_time: float) -> str:
        """%START_TIME% as text (the text formatting and L4 lines)."""
        return self._start_time_b(start_time).decode("ascii")

    def _start_time_b(self, start_time: float) -> bytes:
        """%START_TIME%: ISO 8601 UTC with milliseconds, e.g. 2016-04-15T20:17:00.310Z:
        the time rounded to microseconds, then cut to the millisecond (the exact way,
        below: a float of the epoch holds .310 as .30999994).  Kept per millisecond: a
        batch reads the bounds ``_ms_lo``/``_ms_hi``.

        A time in the last one's second and not within 2 us of a millisecond's edge
        is cut in floats, with no integer of the epoch's microseconds: where the exact
        way could round elsewhere (<= 0.7 us off) is left to it.  A line in a new
        millisecond then costs ~3,400 instructions more than one in the same one, where
        the exact way's integers and an f-string took ~9,300 (callgrind, a batch of
        lines 1.3 ms apart: lines of many clients, whose start times go back and
        forth, or any line under valgrind)."""
        # start_time - second: exact (two floats this close); * 1000: off by ~1e-13 ms.
        f = (start_time - self._sec_f) * 1000.0
        if 0.0 <= f < 1000.0:
            i = int(f)
            if 0.002 <= f - i < 0.997:
                # Bounds within ~0.5 us of i ms + 2 us and + 997 us: still more than
                # the exact way's 0.7 us inside millisecond i.
                base = self._sec_f + i / 1000.0
                self._ms_lo = base + 2e-6
                self._ms_hi = base + 997e-6
                self._ms_b = text = self._sec_b + _MILLIS[i]
                return text
        ms = round(start_time * 1_000_000) // 1000
        sec, frac = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._sec_f = float(sec)
            self._sec_b = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        # Two microseconds in from each end: what float error and the rounding above
        # could move across a bound stays out of the fast path.
        self._ms_lo = (ms * 1000 + 2) / 1e6
        self._ms_hi = (ms * 1000 + 997) / 1e6
        self._ms_b = text = self._sec_b + _MILLIS[frac]
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
        self._write(
            self._text_line(
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
        )

    def add(self, record: Record) -> None:
        """Log one request from its record (``Record``: what ``Exchange._record``
        appends to ``pending`` itself, the same two lines inlined).  The record's objects
        must not change afterwards: the line is formatted from them later."""
        pending = self.pending
        pending.append(record)
        if len(pending) >= self.batch:
            self.format_pending()

    def format_pending(self) -> None:
        """The waiting records' lines into the buffer (to the stream, for a text-only
        stream), and a flush when the last one is a second old: checked here, once a
        batch, rather than on each request (~0.07 us a request; the proxy's sweep calls
        ``flush_due`` for a daemon that went quiet)."""
        self._format_pending()
        if _monotonic() - self._last_flush >= 1.0:
            self.flush()

    def _format_pending(self) -> None:
        pending = self.pending
        if not pending:
            return
        try:
            if self._binary is None:
                write = self._stream.write
                for record in pending:
                    line = self._line(record)
                    write(line if isinstance(line, str) else line.decode("ascii"))
            else:
                self._format_batch(pending)
        finally:
            pending.clear()
        if len(self._buf) >= BUFFER_BYTES:
            self._drain()

    def _format_batch(self, pending: list[Record]) -> None:
        """The lines of ``pending`` into the buffer: formatted together as bytes
        (``_bytes_lines``), one join, and one check of the whole batch for anything to
        escape or outside ASCII (then each line on its own, ``_line``): the batch check
        costs 0.11 us a line where a check of each line took 0.18 (timeit)."""
        lines = self._bytes_lines(pending)
        chunk = b"".join(lines)
        buf = self._buf
        if chunk.isascii() and len(chunk.translate(None, self._escaped)) == len(chunk) - (
            self._own * len(lines)
        ):
            buf += chunk
            return
        # Something to escape somewhere: each line on its own.
        for record in pending:
            line = self._line(record)
            buf += line if isinstance(line, bytes) else self._encode(line)

    def _bytes_lines(self, pending: Sequence[Record]) -> list[bytes]:
        """Each record's line formatted as bytes from the request's own bytes, nothing
        escaped (the callers check).  The loop keeps the formatting's code and data
        warm: one line formatted between two requests cost twice as much as in a loop
        (measured; see ``PENDING_LINES``)."""
        lines: list[bytes] = []
        append = lines.append
        line_b = self._line_b
        counts_fmt, times_fmt, times_no_up, upstream_fmt = self._pieces
        times_zero = self._times_zero
        # The trace id out of traceparent ("00-<trace id>-<span id>-<flags>"); without
        # trace ids the format drops the field, so an empty cut (no copy of the id).
        trace_id = slice(3, 35) if self._trace_ids else slice(0)
        endpoints = self._endpoints
        routes = self._routes
        protocols = _PROTOCOLS
        lo = self._ms_lo
        hi = self._ms_hi
        ms_b = self._ms_b
        # The pieces of the line before and what they were made of: lines in a row
        # share them (a keep-alive connection's requests; one endpoint, or few; a
        # status and sizes that repeat), and a few compares cost less than formatting
        # the values again: the counts ~500 instructions less than three ``%d`` in the
        # line, the upstream ~0.025 us less than the endpoint's table (callgrind and
        # timeit, batches of bench_h1_inproc's records).
        last_peer: str | None = None
        last_endpoint: object = _NOTHING
        last_rule: object = _NOTHING
        last_flags: str | None = None
        last_status = last_received = last_sent = -1
        peer = counts = upstream = b""
        for (
            wall,
            duration,
            head,
            status,
            flags,
            ejected,
            bytes_received,
            bytes_sent,
            upstream_ms,
            peer_ip,
            request_id,
            endpoint,
            rule,
            traceparent,
        ) in pending:
            start_time = wall - duration
            if not lo <= start_time < hi:
                # Outside the millisecond of the last line (the bounds are a
                # microsecond inside it, so rounding cannot move a time between them
                # elsewhere): two compares where ``_start_time``'s rounding took ~0.1 us.
                ms_b = self._start_time_b(start_time)
                lo = self._ms_lo
                hi = self._ms_hi
            # X-Forwarded-For as forwarded (Envoy logs the header after appending the
            # client address to it): the first incoming one, then the client.
            xff_in = user_agent = None
            if head.forward_clean:
                # No X-Forwarded-For came (``RequestHead.forward_clean``: none of the
                # fields the forwarding walk handles): the first User-Agent only.
                for name, value in head.headers:
                    if name == b"user-agent":
                        user_agent = value
                        break
            else:
                for name, value in head.headers:
                    if name == b"user-agent":
                        if user_agent is None:
                            user_agent = value
                    elif name == b"x-forwarded-for" and xff_in is None:
                        xff_in = value
            if (
                ejected
                or flags is not last_flags
                or status != last_status
                or bytes_received != last_received
                or bytes_sent != last_sent
            ):
                last_flags = flags
                last_status = status
                last_received = bytes_received
                last_sent = bytes_sent
                if ejected:
                    flags = f"{flags},{FLAG_EJECTED}" if flags else FLAG_EJECTED
                    last_flags = None  # the next line makes its own
                counts = counts_fmt % (
                    status,
                    flags.encode("latin-1") if flags else b"-",
                    bytes_received,
                    bytes_sent,
                )
            # The duration and upstream service time: "0 0" for a request answered
            # within a millisecond, as most are on a local network, without formatting
            # two numbers (~1,500 instructions less; ~700 more for a slower request,
            # whose numbers take a second ``%``; callgrind, batches of 128).
            ms = duration * 1000.0
            if ms < 1.0 and 0.0 <= upstream_ms < 1.0:
                times = times_zero
            elif upstream_ms >= 0.0:
                times = times_fmt % (ms, upstream_ms)
            else:
                times = times_no_up % ms
            if peer_ip is not last_peer:
                last_peer = peer_ip
                peer = peer_ip.encode()
            if endpoint is not last_endpoint or rule is not last_rule:
                last_endpoint = endpoint
                last_rule = rule
                upstream = upstream_fmt % (
                    endpoints.get(id(endpoint)) or self._endpoint(endpoint),
                    routes.get(id(rule)) or self._route(rule),
                )
            # The trace id is formatted on every line and dropped by the format without
            # trace ids (``%.0s``): one tuple, one format.
            append(
                line_b
                % (
                    ms_b,
                    head.method or b"-",
                    head.target or b"-",
                    protocols[head.version],
                    counts,
                    times,
                    xff_in + b", " + peer if xff_in else peer or b"-",
                    user_agent or b"-",
                    request_id or b"-",
                    head.authority or b"-",
                    upstream,
                    traceparent[trace_id] if traceparent is not None else b"-",
                )
            )
        return lines

    def _line(self, record: Record) -> bytes | str:
        """One request's line: bytes when it is plain ASCII with nothing to escape
        (``_bytes_lines``, from the request's own bytes, no decode), else the text
        formatting's str."""
        line = self._bytes_lines((record,))[0]
        if line.isascii() and len(line.translate(None, self._escaped)) == len(line) - self._own:
            return line
        # Something to escape (or a byte outside ASCII): the text formatting.
        r = RecordView._make(record)
        head = r.head
        xff_in = user_agent = None
        for name, value in head.headers:
            if name == b"user-agent":
                if user_agent is None:
                    user_agent = value
            elif name == b"x-forwarded-for" and xff_in is None:
                xff_in = value
        peer_ip = r.peer_ip
        xff = peer_ip if not xff_in else f"{xff_in.decode('latin-1')}, {peer_ip}"
        flags = r.flags
        if r.ejected:
            flags = f"{flags},{FLAG_EJECTED}" if flags else FLAG_EJECTED
        return self._text_line(
            r.wall - r.duration,
            head.method.decode("latin-1"),
            head.target.decode("latin-1"),
            _PROTOCOLS[head.version].decode("latin-1"),
            r.status,
            flags,
            r.bytes_received,
            r.bytes_sent,
            int(r.duration * 1000.0),
            int(r.upstream_ms) if r.upstream_ms >= 0 else None,
            xff,
            (user_agent or b"").decode("latin-1"),
            (r.request_id or b"").decode("latin-1"),
            (head.authority or b"").decode("latin-1"),
            "" if r.endpoint is None else host_port(r.endpoint.address, r.endpoint.port),
            r.rule.route_id if r.rule is not None else "",
            r.traceparent[3:35].decode("latin-1") if r.traceparent is not None else "",
        )

    def _endpoint(self, endpoint: EndpointAddress | None) -> bytes:
        """``endpoint``'s "host:port" for a bytes line, kept by its id()."""
        if endpoint is None:
            return b"-"
        if len(self._endpoints) >= 4096:
            self._forget()
        text = _ascii(host_port(endpoint.address, endpoint.port))
        self._endpoints[id(endpoint)] = text
        self._held.append(endpoint)
        return text

    def _route(self, rule: CompiledRule | None) -> bytes:
        """``rule``'s route id for a bytes line, kept by its id()."""
        if rule is None:
            return b"-"
        if len(self._routes) >= 4096:
            self._forget()
        text = _ascii(rule.route_id)
        self._routes[id(rule)] = text
        self._held.append(rule)
        return text

    def _forget(self) -> None:
        """Empties the endpoint and route caches (bounded: a snapshot's objects live as
        long as the snapshot, and a new snapshot brings new ones)."""
        self._held.clear()
        # id(None) stays: None stands for no endpoint or no route.
        self._endpoints.clear()
        self._endpoints[id(None)] = b"-"
        self._routes.clear()
        self._routes[id(None)] = b"-"

    def _text_line(
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
        trace_id: str,
    ) -> str:
        ts = self._start_time(start_time)
        if self._json_format:
            # Hand-built rather than json.dumps(dict): same JSON, a third of the cost.
            # encode_basestring quotes and escapes (controls, quotes, backslashes).
            up = "null" if upstream_ms is None else int(upstream_ms)
            return (
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
        return line + "\n"

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
        if self._binary is None:
            self._stream.write(line)
        else:
            if self.pending:
                self._format_pending()  # in order
            buf = self._buf
            buf += self._encode(line)
            if len(buf) >= BUFFER_BYTES:
                self._drain()
        now = _monotonic()
        if now - self._last_flush >= 1.0:
            self.flush()

    def _encode(self, line: str) -> bytes:
        """A text line (an escaped or L4 line) in the stream's encoding."""
        return line.encode("ascii") if line.isascii() else line.encode(self._encoding, self._errors)

    def _drain(self) -> None:
        """The waiting lines to the stream's buffer, in one write."""
        buf = self._buf
        binary = self._binary
        if buf and binary is not None:
            # Text written to the same stream by anything else goes first.
            self._stream.flush()
            try:
                binary.write(buf)
            finally:
                buf.clear()

    def flush(self) -> None:
        self._last_flush = _monotonic()
        self._format_pending()
        self._drain()
        self._stream.flush()

    def flush_due(self) -> None:
        """Flush if the last flush is a second old.  The proxy's periodic sweep calls it,
        so the last lines of a daemon that went quiet do not wait in the buffer."""
        if _monotonic() - self._last_flush >= 1.0:
            self.flush()
