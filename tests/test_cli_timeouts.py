"""The request timeouts of ``gatewayd run``: Envoy's edge defaults, the same in the
command line and in ``ProxyOptions``, and 0 to disable."""

from __future__ import annotations

import pytest

from gatewayd.cli import build_parser
from gatewayd.proxy.server import ProxyOptions


def parse(*args: str) -> object:
    return build_parser().parse_args(["run", "--config", "examples", *args])


def test_defaults_are_envoys() -> None:
    # Envoy: route timeout 15 s, stream_idle_timeout 5 min.
    assert (ProxyOptions().route_timeout, ProxyOptions().stream_idle_timeout) == (15.0, 300.0)
    ns = parse()
    assert (ns.route_timeout, ns.stream_idle_timeout) == (15.0, 300.0)


def test_values_and_zero_are_taken() -> None:
    ns = parse("--route-timeout", "0.5", "--stream-idle-timeout", "0")
    assert (ns.route_timeout, ns.stream_idle_timeout) == (0.5, 0.0)


@pytest.mark.parametrize("flag", ["--route-timeout", "--stream-idle-timeout"])
def test_negative_is_a_usage_error(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(flag, "-1")
    assert exc.value.code == 2
    assert f"argument {flag}: must be at least 0, not -1" in capsys.readouterr().err


def test_head_limits_and_edge_timeouts_reach_proxy_options() -> None:
    defaults = parse()
    assert (
        defaults.max_header_bytes,
        defaults.max_headers,
        defaults.request_headers_timeout,
        defaults.upstream_connect_timeout,
    ) == (
        ProxyOptions().max_header_bytes,
        ProxyOptions().max_headers,
        ProxyOptions().header_timeout,
        ProxyOptions().upstream_connect_timeout,
    )
    ns = parse(
        "--max-header-bytes",
        "8KiB",
        "--max-headers",
        "20",
        "--request-headers-timeout",
        "2.5",
        "--upstream-connect-timeout",
        "1",
    )
    assert (ns.max_header_bytes, ns.max_headers) == (8192, 20)
    assert (ns.request_headers_timeout, ns.upstream_connect_timeout) == (2.5, 1.0)


def test_h2_limit_defaults_are_envoys_edge_values() -> None:
    from gatewayd.proxy.http.h2_limits import EDGE_H2_LIMITS

    ns = parse()
    assert (
        ns.h2_max_concurrent_streams,
        ns.h2_initial_stream_window,
        ns.h2_initial_connection_window,
    ) == (100, 64 * 1024, 1024 * 1024)
    assert ProxyOptions().h2 == EDGE_H2_LIMITS
    assert (
        EDGE_H2_LIMITS.max_concurrent_streams,
        EDGE_H2_LIMITS.initial_stream_window,
        EDGE_H2_LIMITS.connection_window,
    ) == (100, 64 * 1024, 1024 * 1024)
    ns = parse(
        "--h2-max-concurrent-streams", "10",
        "--h2-initial-stream-window", "1MiB",
        "--h2-initial-connection-window", "2147483647",
    )  # fmt: skip
    assert (
        ns.h2_max_concurrent_streams,
        ns.h2_initial_stream_window,
        ns.h2_initial_connection_window,
    ) == (10, 1024 * 1024, 2**31 - 1)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--request-headers-timeout", "0"),
        ("--upstream-connect-timeout", "0"),
        ("--max-headers", "0"),
        ("--max-header-bytes", "lots"),
        ("--h2-max-concurrent-streams", "0"),
        ("--h2-initial-stream-window", "65534"),  # under the protocol's initial 65535
        ("--h2-initial-stream-window", "2GiB"),  # over 2^31-1 (RFC 9113 6.9.1)
        ("--h2-initial-connection-window", "1KiB"),
        ("--h2-initial-connection-window", "lots"),
    ],
)
def test_limits_that_cannot_be_off_are_usage_errors(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(flag, value)
    assert exc.value.code == 2


def test_h2_header_limits_and_upstream_flags_reach_the_limits() -> None:
    from gatewayd.cli import h2_limits, upstream_h2_limits
    from gatewayd.proxy.http.h2_limits import EDGE_H2_LIMITS, UPSTREAM_H2_LIMITS

    ns = parse()
    # Defaults: the limits the codecs had before the flags (Envoy's edge values; the
    # upstream stream count is the backend's SETTINGS alone).
    assert h2_limits(ns) == EDGE_H2_LIMITS
    assert upstream_h2_limits(ns) == UPSTREAM_H2_LIMITS
    assert UPSTREAM_H2_LIMITS.max_concurrent_streams == 2**31 - 1
    assert (ns.upstream_h2_max_connections, ns.upstream_idle_floor, ns.upstream_idle_ceiling) == (
        1024,
        64,
        1024,
    )
    assert (
        ProxyOptions().upstream_h2_max_connections,
        ProxyOptions().upstream_idle_floor,
        ProxyOptions().upstream_idle_ceiling,
    ) == (1024, 64, 1024)
    ns = parse(
        "--max-header-bytes", "8KiB",
        "--max-headers", "20",
        "--h2-hpack-table-size", "0",
        "--upstream-h2-max-concurrent-streams", "7",
        "--upstream-h2-initial-stream-window", "256KiB",
        "--upstream-h2-initial-connection-window", "8MiB",
    )  # fmt: skip
    down, up = h2_limits(ns), upstream_h2_limits(ns)
    for limits in (down, up):
        assert (limits.max_header_list_bytes, limits.max_headers, limits.header_table_size) == (
            8192,
            20,
            0,
        )
        assert limits.max_header_block_bytes == 8192 + 4096
    assert down.max_concurrent_streams == 100
    assert (up.max_concurrent_streams, up.initial_stream_window, up.connection_window) == (
        7,
        256 * 1024,
        8 * 1024 * 1024,
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--h2-hpack-table-size", "65KiB"),
        ("--h2-hpack-table-size", "lots"),
        ("--upstream-h2-max-concurrent-streams", "0"),
        ("--upstream-h2-initial-stream-window", "1KiB"),
        ("--upstream-h2-initial-connection-window", "2GiB"),
        ("--upstream-h2-max-connections", "0"),
        ("--upstream-idle-floor", "-1"),
        ("--upstream-idle-ceiling", "-1"),
    ],
)
def test_h2_limit_flags_out_of_range_are_usage_errors(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(flag, value)
    assert exc.value.code == 2
