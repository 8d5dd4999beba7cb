"""The request path's access log lines (``AccessLogger.add``: a record of the request,
its line formatted from the request's bytes in batches) against the text formatting
(``log``)."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gatewayd.proxy import accesslog
from gatewayd.proxy.accesslog import BUFFER_BYTES, PENDING_LINES, AccessLogger
from gatewayd.proxy.http.codec import HTTP_2, HTTP_10, HTTP_11, RequestHead
from gatewayd.routing.snapshot.backends import EndpointAddress
from gatewayd.routing.snapshot.rules import CompiledRule

START = 1460751420.310
EP = EndpointAddress(address="10.0.2.1", port=80)
TRACE = b"0af7651916cd43dd8448eb211c80319c"


def request(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "start_time": START,
        "method": b"POST",
        "path": b"/api/v1/locations",
        "protocol": b"HTTP/1.1",
        "status": 204,
        "flags": "",
        "ejected": False,
        "bytes_received": 154,
        "bytes_sent": 0,
        "duration_ms": 226,
        "upstream_ms": 100,
        "xff_in": b"",  # no X-Forwarded-For received
        "peer": "10.0.35.28",
        "user_agent": b"nsq2http",
        "request_id": b"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
        "authority": b"locations",
        "endpoint": EP,
        "route": "default/locations/rule/0",
        "traceparent": b"00-" + TRACE + b"-00f067aa0ba902b7-01",
        # The head as HTTP/1.1's codec makes it: forward_clean without a field the
        # forwarding walk handles, such as X-Forwarded-For (HTTP/2's: never).
        "clean": True,
    }
    fields.update(overrides)
    return fields


def fields(r: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The request's fields as received: User-Agent and X-Forwarded-For among others
    (a second of each, which the log does not read)."""
    out = [(b"host", b"locations"), (b"accept", b"*/*")]
    if r["xff_in"]:
        out += [(b"x-forwarded-for", r["xff_in"]), (b"x-forwarded-for", b"192.0.2.9")]
    return [*out, (b"user-agent", r["user_agent"]), (b"user-agent", b"second")]


VERSIONS = {b"HTTP/1.1": HTTP_11, b"HTTP/1.0": HTTP_10, b"HTTP/2": HTTP_2}


def rule(route_id: str) -> CompiledRule | None:
    if not route_id:
        return None
    return CompiledRule(
        route_kind="HTTPRoute", route_namespace="", route_name="", rule_index=0, route_id=route_id
    )


def call_http(logger: AccessLogger, r: dict[str, Any]) -> None:
    """The request path's record (``Exchange._record``) of the request ``r``."""
    # The record holds the wall clock at the end and the duration; half a millisecond
    # more shows the duration's truncation to whole milliseconds.
    duration = (r["duration_ms"] + 0.5) / 1000.0
    upstream_ms = r["upstream_ms"]
    head = RequestHead(
        r["method"],
        r["path"],
        fields(r),
        authority=r["authority"] or None,
        version=VERSIONS[r["protocol"]],
    )
    head.forward_clean = r["clean"] and not r["xff_in"]
    logger.add(
        (
            r["start_time"] + duration,
            duration,
            head,
            r["status"],
            r["flags"],
            r["ejected"],
            r["bytes_received"],
            r["bytes_sent"],
            -1.0 if upstream_ms is None else upstream_ms + 0.25,
            r["peer"],
            r["request_id"] or None,
            r["endpoint"],
            rule(r["route"]),
            r["traceparent"],
        )
    )


def call_log(logger: AccessLogger, r: dict[str, Any]) -> None:
    ep = r["endpoint"]
    xff_in = r["xff_in"].decode("latin-1")
    tp = r["traceparent"]
    logger.log(
        start_time=r["start_time"],
        method=r["method"].decode("latin-1"),
        path=r["path"].decode("latin-1"),
        protocol=r["protocol"].decode("latin-1"),
        status=r["status"],
        flags=f"{r['flags']},OE"
        if r["flags"] and r["ejected"]
        else "OE"
        if r["ejected"]
        else r["flags"],
        bytes_received=r["bytes_received"],
        bytes_sent=r["bytes_sent"],
        duration_ms=r["duration_ms"],
        upstream_ms=r["upstream_ms"],
        xff=f"{xff_in}, {r['peer']}" if xff_in else r["peer"],
        user_agent=r["user_agent"].decode("latin-1"),
        request_id=r["request_id"].decode("latin-1"),
        authority=r["authority"].decode("latin-1"),
        upstream_host="" if ep is None else accesslog.sockaddr_text((ep.address, ep.port)),
        route=r["route"],
        trace_id="" if tp is None else tp[3:35].decode("ascii"),
    )


def file_stream() -> io.TextIOWrapper:
    """Like stdout or an opened file: text over a binary buffer, UTF-8."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8")


def written(stream: io.TextIOWrapper) -> bytes:
    buffer = stream.buffer
    assert isinstance(buffer, io.BytesIO)
    return buffer.getvalue()


# Values that take each way through the bytes formatting: plain ASCII, the empty
# value, controls, DEL, quotes, backslashes, latin-1 and UTF-8 bytes.
ODD_VALUES = [
    b"plain",
    b"",
    b"evil\n[fake] line\x1b",
    b"del\x7f",
    b'quo"te',
    b"back\\slash",
    b"caf\xe9 \xa0nbsp \x85nel",
    "caf\u00e9 \u2603".encode(),
]
ODD_CASES = [
    request(),
    request(upstream_ms=None, flags="UF", endpoint=None, route="", traceparent=None),
    request(endpoint=EndpointAddress(address="fd00::1", port=8080), status=503, peer="::1"),
    request(route="default/caf\u00e9/rule/0"),
    # Read from the record when the line is formatted: the ejection flag, the
    # protocol by version, a missing authority, request id and user agent, numbers
    # past the small numbers' table, no traceparent, no client address.
    request(flags="UF", ejected=True),
    request(ejected=True, upstream_ms=0, duration_ms=0),
    request(protocol=b"HTTP/2", authority=b""),
    request(protocol=b"HTTP/1.0", request_id=b"", user_agent=b""),
    request(upstream_ms=1234, duration_ms=98765, bytes_sent=10**12, status=599),
    request(traceparent=None, peer="", xff_in=b"198.51.100.7"),
    request(clean=False),
    request(clean=False, user_agent=b""),
    *(request(user_agent=v) for v in ODD_VALUES),
    *(request(xff_in=v, authority=v) for v in ODD_VALUES),
    *(request(path=v, method=v, request_id=v) for v in ODD_VALUES),
]


@pytest.mark.parametrize(
    ("fmt", "trace_ids"), list(itertools.product(("text", "json"), (False, True)))
)
def test_bytes_lines_equal_text_lines(fmt: str, trace_ids: bool) -> None:
    """Byte for byte the line the text formatting writes, to a file and to a text-only
    stream, for every kind of value (escaping of controls, JSON escaping, latin-1)."""
    new_file, old_file = file_stream(), file_stream()
    new_text, old_text = io.StringIO(), io.StringIO()
    loggers = [
        AccessLogger(fmt, s, trace_ids=trace_ids) for s in (new_file, old_file, new_text, old_text)
    ]
    for case in ODD_CASES:
        call_http(loggers[0], case)
        call_log(loggers[1], case)
        call_http(loggers[2], case)
        call_log(loggers[3], case)
    for logger in loggers:
        logger.flush()
    assert written(new_file) == written(old_file)
    assert new_text.getvalue() == old_text.getvalue()
    assert written(new_file) == old_text.getvalue().encode()
    lines = old_text.getvalue().split("\n")[:-1]  # str.splitlines splits at \x85 too
    assert len(lines) == len(ODD_CASES)
    if fmt == "json":
        docs = [json.loads(line) for line in lines]
        assert docs[len(ODD_CASES) - len(ODD_VALUES) * 3 + 2]["user_agent"] == (
            "evil\n[fake] line\x1b"
        )
        assert docs[2]["upstream_host"] == "[fd00::1]:8080"
    else:
        assert '"evil\\x0a[fake] line\\x1b"' in lines[len(ODD_CASES) - len(ODD_VALUES) * 3 + 2]
        assert '"[fd00::1]:8080"' in lines[2]


def test_lines_wait_in_memory_until_a_second_or_a_full_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(accesslog, "_monotonic", lambda: clock[0])
    stream = file_stream()
    logger = AccessLogger("text", stream)
    line = io.StringIO()
    call_log(AccessLogger("text", line), request())
    size = len(line.getvalue())
    call_http(logger, request())
    assert written(stream) == b""  # no write on the request path
    # Lines are formatted PENDING_LINES at a time; a full buffer goes out in one
    # write of whole lines.
    n = 1
    for _ in range(2 * BUFFER_BYTES // size):
        if written(stream):
            break
        call_http(logger, request())
        n += 1
    out = written(stream)
    assert BUFFER_BYTES <= len(out) < BUFFER_BYTES + PENDING_LINES * size
    assert len(out) % size == 0 and out.endswith(b"\n")
    assert n % PENDING_LINES == 0 and len(out) == n * size
    call_http(logger, request())
    assert len(written(stream)) == n * size
    # A request a second after the last flush reads no clock: its line waits for the
    # proxy's periodic sweep (flush_due) ...
    clock[0] = 101.0
    call_http(logger, request())
    assert len(written(stream)) == n * size
    logger.flush_due()
    assert len(written(stream)) == (n + 2) * size
    # ... which writes nothing within the second, then everything.
    call_http(logger, request())
    logger.flush_due()
    assert len(written(stream)) == (n + 2) * size
    clock[0] = 102.0
    logger.flush_due()
    assert len(written(stream)) == (n + 3) * size
    # A batch of lines formatted a second after the last flush writes what waits.
    clock[0] = 103.0
    for _ in range(PENDING_LINES - 1):
        call_http(logger, request())
    assert len(written(stream)) == (n + 3) * size
    call_http(logger, request())
    assert len(written(stream)) == (n + 3 + PENDING_LINES) * size
    call_http(logger, request())
    logger.flush()  # shutdown
    assert written(stream) == line.getvalue().encode() * (n + 4 + PENDING_LINES)


def test_lines_keep_their_order_and_other_text_never_splits_one() -> None:
    """HTTP and L4 lines (text formatting, non-ASCII) share one buffer, in order; text
    written to the stream by anything else while lines wait goes out before them."""
    stream = file_stream()
    logger = AccessLogger("text", stream)
    call_http(logger, request(status=200))
    stream.write("between\n")
    call_http(logger, request(status=201))
    logger.log_l4(
        start_time=START,
        flags="",
        bytes_received=1,
        bytes_sent=2,
        duration_ms=3,
        downstream="10.0.35.28:51514",
        sni="caf\u00e9",
        upstream_host="",
        upstream_cluster="",
        route="",
        details="",
    )
    logger.flush()
    lines = written(stream).decode().splitlines()
    assert [line.split('" ')[1][:3] if line.startswith("[") else line for line in lines] == [
        "between",
        "200",
        "201",
        "0 -",
    ]
    assert '"caf\u00e9"' in lines[3]


def test_endpoint_and_route_caches_are_bounded() -> None:
    stream = file_stream()
    logger = AccessLogger("json", stream)
    endpoints = [
        EndpointAddress(address=f"10.1.{i // 256}.{i % 256}", port=80) for i in range(5000)
    ]
    for i, ep in enumerate(endpoints):
        call_http(logger, request(endpoint=ep, route=f"default/r{i}/rule/0"))
    assert len(logger._endpoints) <= 4096 and len(logger._routes) <= 4096
    logger.flush()
    docs = [json.loads(line) for line in written(stream).decode().splitlines()]
    assert len(docs) == 5000
    assert [(d["upstream_host"], d["route_name"]) for d in docs] == [
        (f"10.1.{i // 256}.{i % 256}:80", f"default/r{i}/rule/0") for i in range(5000)
    ]


def test_lines_waiting_at_interpreter_exit_are_written(tmp_path: Path) -> None:
    """A line logged after the proxy's last flush() still reaches the file when the
    process exits, as it did from the text stream's own buffer."""
    out = tmp_path / "access.log"
    code = (
        "import sys\n"
        "from gatewayd.proxy.accesslog import AccessLogger\n"
        "logger = AccessLogger('text', open(sys.argv[1], 'w'))\n"
        "logger.log_l4(start_time=1460751420.31, flags='', bytes_received=1,\n"
        "    bytes_sent=2, duration_ms=3, downstream='10.0.35.28:51514', sni='',\n"
        "    upstream_host='', upstream_cluster='', route='', details='')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == b""
    assert out.read_bytes() == (
        b'[2016-04-15T20:17:00.310Z] "- - -" 0 - 1 2 3 - "-" "-" "-" "-" "-" '
        b'10.0.35.28:51514 "-" "-" "-" "-"\n'
    )


@pytest.mark.parametrize(
    ("fmt", "trace_ids"), list(itertools.product(("text", "json"), (False, True)))
)
def test_batches_of_clean_and_odd_lines_with_l4_lines_between(fmt: str, trace_ids: bool) -> None:
    """Full batches with nothing to escape (one check for the whole batch), batches
    with an odd line among clean ones (each line on its own), L4 lines in between
    (they format what waits first): the same lines, in the same order, as the text
    formatting writes one by one."""
    new, old = file_stream(), io.StringIO()
    loggers = [AccessLogger(fmt, s, trace_ids=trace_ids) for s in (new, old)]
    cases = [request(status=200 + i % 7, bytes_sent=i) for i in range(2 * PENDING_LINES)]
    cases += [*ODD_CASES, *cases]
    for i, case in enumerate(cases):
        call_http(loggers[0], case)
        call_log(loggers[1], case)
        if i % 50 == 49:
            for logger in loggers:
                logger.log_l4(
                    start_time=START + i,
                    flags="",
                    bytes_received=i,
                    bytes_sent=2,
                    duration_ms=3,
                    downstream="10.0.35.28:51514",
                    sni="caf\u00e9" if i % 100 == 99 else "a.example",
                    upstream_host="10.0.2.1:443",
                    upstream_cluster="default/tls",
                    route="default/tls/rule/0",
                    details="",
                )
    for logger in loggers:
        logger.flush()
    assert written(new).decode() == old.getvalue()
    assert old.getvalue().count("\n") == len(cases) + len(cases) // 50


def test_the_request_path_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record costs an append: the flush a second after the last one is checked
    once a batch (and by the proxy's periodic sweep), not per request."""
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return 100.0

    monkeypatch.setattr(accesslog, "_monotonic", clock)
    logger = AccessLogger("text", file_stream())
    reads[0] = 0
    for _ in range(PENDING_LINES - 1):
        call_http(logger, request())
    assert reads[0] == 0 and len(logger.pending) == PENDING_LINES - 1
    call_http(logger, request())
    assert reads[0] == 1 and not logger.pending


def test_a_text_only_stream_gets_each_line_at_once() -> None:
    out = io.StringIO()
    logger = AccessLogger("text", out)
    call_http(logger, request())
    assert out.getvalue().count("\n") == 1 and not logger.pending


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_times_are_whole_milliseconds_as_the_text_formatting_writes_them(fmt: str) -> None:
    """The record's float durations and upstream service times go to ``%d`` as they
    are: truncated like int(), as the text formatting writes them, with and without an
    upstream service time in one batch."""
    new, old = file_stream(), file_stream()
    loggers = [AccessLogger(fmt, s, trace_ids=True) for s in (new, old)]
    for ms in [*range(0, 5000, 7), 10**6 + 3, None, 0, None]:
        case = request(upstream_ms=ms, duration_ms=(ms or 0) * 3)
        call_http(loggers[0], case)
        call_log(loggers[1], case)
    for logger in loggers:
        logger.flush()
    assert written(new) == written(old)
    assert b" 1001 " in written(new) or b":1001," in written(new)


def test_start_times_cut_in_floats_match_the_exact_way() -> None:
    """``_start_time_b``'s float path (a time in the last one's second) gives the
    millisecond the exact way gives (round to microseconds, then cut), near every
    edge of a millisecond and of a second, in any order."""
    rng = random.Random(7)
    base = 1764763200
    times = [START, 1460751420.0, 1460751420.9995, 1460751420.0005]
    for sec in (base, base + 1, base + 86399):
        for ms in (0, 1, 309, 310, 500, 998, 999):
            edge = sec + ms / 1000
            times += [edge + k * 1e-7 for k in range(-30, 31)]
        times += [sec + rng.random() for _ in range(2000)]
    rng.shuffle(times)
    logger = AccessLogger("text", file_stream())
    for t in [*sorted(times), *times]:
        ms = round(t * 1_000_000) // 1000
        second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        exact = f"{second}.{ms % 1000:03d}Z"
        assert logger._start_time_b(t).decode() == exact, t
        # The bounds a batch keeps: every time in them has this millisecond.
        lo, hi = logger._ms_lo, logger._ms_hi
        assert lo < hi
        for u in (lo, (lo + hi) / 2, math.nextafter(hi, 0.0)):
            assert round(u * 1_000_000) // 1000 == ms, (t, u)


@pytest.mark.parametrize(
    ("fmt", "trace_ids"), list(itertools.product(("text", "json"), (False, True)))
)
def test_a_batch_with_nothing_to_escape_is_checked_once(
    fmt: str, trace_ids: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain lines (with and without an upstream time, flags, ejections, an
    X-Forwarded-For, missing values) pass the batch's one check: none is formatted on
    its own (``_line``), which would still write the same line, only slower."""
    new, old = file_stream(), io.StringIO()
    loggers = [AccessLogger(fmt, s, trace_ids=trace_ids) for s in (new, old)]
    plain = [case for case in ODD_CASES[:10] if "\u00e9" not in case["route"]]

    def one_line(self: AccessLogger, record: object) -> bytes | str:
        raise AssertionError("a plain line was formatted on its own")

    # The other logger writes each line with the text formatting (``log``).
    monkeypatch.setattr(AccessLogger, "_line", one_line)
    cases = [*plain, *(request(status=200 + i % 3, bytes_sent=i % 2) for i in range(300))]
    for case in cases:
        call_http(loggers[0], case)
        call_log(loggers[1], case)
    for logger in loggers:
        logger.flush()
    assert written(new).decode() == old.getvalue()
