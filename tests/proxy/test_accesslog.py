from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from gatewayd.proxy import accesslog
from gatewayd.proxy.accesslog import AccessLogger

# 2016-04-15T20:17:00.310Z, the timestamp of Envoy's documented example line.
START = 1460751420.310


def entry(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "start_time": START,
        "method": "POST",
        "path": "/api/v1/locations",
        "protocol": "HTTP/1.1",
        "status": 204,
        "flags": "",
        "bytes_received": 154,
        "bytes_sent": 0,
        "duration_ms": 226,
        "upstream_ms": 100,
        "xff": "10.0.35.28",
        "user_agent": "nsq2http",
        "request_id": "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
        "authority": "locations",
        "upstream_host": "10.0.2.1:80",
        "route": "default/locations/rule/0",
    }
    fields.update(overrides)
    return fields


def test_text_line_matches_envoy_default_format() -> None:
    out = io.StringIO()
    AccessLogger("text", out).log(**entry())
    assert out.getvalue() == (
        '[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/1.1" 204 - 154 0 226 100 '
        '"10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" '
        '"10.0.2.1:80"\n'
    )


def test_text_line_dashes_for_empty_fields() -> None:
    out = io.StringIO()
    AccessLogger("text", out).log(
        **entry(
            status=404,
            flags="NR",
            upstream_ms=None,
            xff="",
            user_agent="",
            upstream_host="",
            bytes_received=0,
        )
    )
    assert out.getvalue() == (
        '[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/1.1" 404 NR 0 0 226 - '
        '"-" "-" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" "-"\n'
    )


def test_text_line_escapes_control_characters() -> None:
    out = io.StringIO()
    AccessLogger("text", out).log(**entry(user_agent="evil\n[fake] line\x1b"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert '"evil\\x0a[fake] line\\x1b"' in lines[0]


def test_json_line_has_all_fields() -> None:
    out = io.StringIO()
    AccessLogger("json", out).log(**entry(flags="UF", upstream_ms=None, user_agent=""))
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert json.loads(text) == {
        "start_time": "2016-04-15T20:17:00.310Z",
        "method": "POST",
        "path": "/api/v1/locations",
        "protocol": "HTTP/1.1",
        "response_code": 204,
        "response_flags": "UF",
        "bytes_received": 154,
        "bytes_sent": 0,
        "duration": 226,
        "upstream_service_time": None,
        "x_forwarded_for": "10.0.35.28",
        "user_agent": "-",
        "request_id": "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2",
        "authority": "locations",
        "upstream_host": "10.0.2.1:80",
        "route_name": "default/locations/rule/0",
    }


def test_json_keeps_one_line_with_newlines_in_values() -> None:
    out = io.StringIO()
    AccessLogger("json", out).log(**entry(user_agent='a\nb"c'))
    assert out.getvalue().count("\n") == 1
    assert json.loads(out.getvalue())["user_agent"] == 'a\nb"c'


def test_start_time_milliseconds_and_second_cache() -> None:
    out = io.StringIO()
    logger = AccessLogger("text", out)
    for t in (START, START + 0.5, START + 1.0, 1460751420.0):
        logger.log(**entry(start_time=t))
    stamps = re.findall(r"^\[([^\]]+)\]", out.getvalue(), flags=re.M)
    assert stamps == [
        "2016-04-15T20:17:00.310Z",
        "2016-04-15T20:17:00.810Z",
        "2016-04-15T20:17:01.310Z",
        "2016-04-15T20:17:00.000Z",
    ]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_flushes_at_most_once_a_second_and_on_demand(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(accesslog, "_monotonic", lambda: clock[0])
    stream = CountingStream()
    logger = AccessLogger("text", stream)
    for _ in range(5):
        logger.log(**entry())
    assert stream.flushes == 0
    clock[0] = 101.0
    logger.log(**entry())
    assert stream.flushes == 1
    logger.log(**entry())
    assert stream.flushes == 1
    logger.flush()
    assert stream.flushes == 2
    assert stream.getvalue().count("\n") == 7
    # The periodic sweep's flush_due(): nothing within a second of the last flush ...
    logger.log(**entry())
    clock[0] = 101.5
    logger.flush_due()
    assert stream.flushes == 2
    # ... then the last line goes out although no new request came.
    clock[0] = 102.0
    logger.flush_due()
    assert stream.flushes == 3


def test_default_stream_is_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    logger = AccessLogger("text")
    logger.log(**entry())
    logger.flush()
    assert capsys.readouterr().out.startswith("[2016-04-15T20:17:00.310Z] ")


def test_unknown_format_is_rejected() -> None:
    with pytest.raises(ValueError, match="text' or 'json"):
        AccessLogger("xml", io.StringIO())


# --------------------------------------------------------------------------- L4 lines


def l4_entry(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "start_time": START,
        "flags": "",
        "bytes_received": 517,
        "bytes_sent": 4210,
        "duration_ms": 1503,
        "downstream": "10.0.35.28:51514",
        "sni": "db.example.com",
        "upstream_host": "10.0.2.7:5432",
        "upstream_cluster": "default/db:5432",
        "route": "default/db/rule/0",
        "details": "",
    }
    fields.update(overrides)
    return fields


def test_l4_text_line_is_envoys_tcp_line_plus_connection_fields() -> None:
    out = io.StringIO()
    AccessLogger("text", out).log_l4(**l4_entry())
    assert out.getvalue() == (
        '[2016-04-15T20:17:00.310Z] "- - -" 0 - 517 4210 1503 - "-" "-" "-" "-" '
        '"10.0.2.7:5432" 10.0.35.28:51514 "db.example.com" "default/db:5432" '
        '"default/db/rule/0" "-"\n'
    )


def test_l4_text_line_of_a_refused_connection() -> None:
    out = io.StringIO()
    AccessLogger("text", out).log_l4(
        **l4_entry(
            flags="NR",
            bytes_sent=0,
            duration_ms=2,
            sni="nobody\nhere",
            upstream_host="",
            upstream_cluster="",
            route="",
            details="no_route",
        )
    )
    assert out.getvalue() == (
        '[2016-04-15T20:17:00.310Z] "- - -" 0 NR 517 0 2 - "-" "-" "-" "-" "-" '
        '10.0.35.28:51514 "nobody\\x0ahere" "-" "-" "no_route"\n'
    )


def test_l4_json_line_has_the_http_keys_and_the_connection_keys() -> None:
    out = io.StringIO()
    AccessLogger("json", out).log_l4(**l4_entry(flags="UF", details="upstream_connect_failure"))
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    http = io.StringIO()
    AccessLogger("json", http).log(**entry())
    assert set(json.loads(http.getvalue())) <= set(line)  # one schema for both kinds
    assert line == {
        "start_time": "2016-04-15T20:17:00.310Z",
        "method": "-",
        "path": "-",
        "protocol": "-",
        "response_code": 0,
        "response_flags": "UF",
        "bytes_received": 517,
        "bytes_sent": 4210,
        "duration": 1503,
        "upstream_service_time": None,
        "x_forwarded_for": "-",
        "user_agent": "-",
        "request_id": "-",
        "authority": "-",
        "upstream_host": "10.0.2.7:5432",
        "route_name": "default/db/rule/0",
        "downstream_remote_address": "10.0.35.28:51514",
        "requested_server_name": "db.example.com",
        "upstream_cluster": "default/db:5432",
        "connection_termination_details": "upstream_connect_failure",
    }


def test_host_port_brackets_ipv6() -> None:
    assert accesslog.sockaddr_text(("10.0.0.1", 443)) == "10.0.0.1:443"
    assert accesslog.sockaddr_text(("::1", 443, 0, 0)) == "[::1]:443"
    assert accesslog.sockaddr_text(None) == ""


def test_trace_id_field_with_trace_context() -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    out = io.StringIO()
    logger = AccessLogger("text", out, trace_ids=True)
    logger.log(**entry(trace_id=trace))
    logger.log(**entry())  # none sent (a request answered before routing): "-"
    first, second = out.getvalue().splitlines()
    assert first.endswith(f'"10.0.2.1:80" {trace}')
    assert second.endswith('"10.0.2.1:80" -')
    out = io.StringIO()
    logger = AccessLogger("json", out, trace_ids=True)
    logger.log(**entry(trace_id=trace))
    logger.log(**entry())
    first_doc, second_doc = (json.loads(line) for line in out.getvalue().splitlines())
    assert first_doc["trace_id"] == trace and second_doc["trace_id"] == "-"


def test_no_trace_id_field_without_trace_context() -> None:
    out = io.StringIO()
    AccessLogger("json", out).log(**entry(trace_id="0af7651916cd43dd8448eb211c80319c"))
    assert "trace_id" not in json.loads(out.getvalue())
