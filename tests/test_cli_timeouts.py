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


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--request-headers-timeout", "0"),
        ("--upstream-connect-timeout", "0"),
        ("--max-headers", "0"),
        ("--max-header-bytes", "lots"),
    ],
)
def test_limits_that_cannot_be_off_are_usage_errors(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(flag, value)
    assert exc.value.code == 2
