"""``gatewayd run``'s balancing and outlier detection flags reach ``OutlierOptions``,
with the documented defaults."""

from __future__ import annotations

import pytest

from gatewayd.cli import build_parser, outlier_options
from gatewayd.proxy.balancer import OutlierOptions
from gatewayd.proxy.server import ProxyOptions


def parse(*args: str) -> OutlierOptions:
    return outlier_options(build_parser().parse_args(["run", "--config", "examples", *args]))


def test_defaults() -> None:
    opts = parse()
    assert opts == OutlierOptions() == ProxyOptions().outlier
    assert (
        opts.lb_policy,
        opts.consecutive_5xx,
        opts.base_ejection_time,
        opts.max_ejection_time,
        opts.max_ejection_percent,
        opts.panic_threshold,
    ) == ("least-request", 5, 30.0, 300.0, 50, 50)


def test_values_are_taken() -> None:
    opts = parse(
        "--lb-policy",
        "round-robin",
        "--outlier-consecutive-5xx",
        "0",
        "--outlier-base-ejection-time",
        "2.5",
        "--outlier-max-ejection-time",
        "60",
        "--outlier-max-ejection-percent",
        "100",
    )
    assert (
        opts.lb_policy,
        opts.consecutive_5xx,
        opts.base_ejection_time,
        opts.max_ejection_time,
        opts.max_ejection_percent,
    ) == ("round-robin", 0, 2.5, 60.0, 100)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--lb-policy", "random"), "invalid choice: 'random'"),
        (("--outlier-consecutive-5xx", "-1"), "must be at least 0, not -1"),
        (("--outlier-base-ejection-time", "0"), "must be at least 0.001, not 0"),
        (("--outlier-max-ejection-percent", "101"), "must be 0 to 100, not 101"),
        (("--outlier-max-ejection-percent", "half"), "not a whole number: 'half'"),
    ],
)
def test_bad_values_are_usage_errors(
    args: tuple[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
