"""``gatewayd run`` rejects out-of-range numeric options with a clear usage error."""

from __future__ import annotations

import pytest

from gatewayd.cli import build_parser


def parse(*args: str) -> object:
    return build_parser().parse_args(["run", "--config", "examples", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workers", "0"), "argument --workers: must be at least 1, not 0"),
        (("--workers", "two"), "argument --workers: not a number: 'two'"),
        (("--tcp-idle-timeout", "-1"), "argument --tcp-idle-timeout: must be at least 0, not -1"),
    ],
)
def test_out_of_range_options_are_usage_errors(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_valid_values_are_taken() -> None:
    ns = parse("--workers", "3", "--tcp-idle-timeout", "0")
    assert (ns.workers, ns.tcp_idle_timeout) == (3, 0.0)
    assert parse().workers is None  # default: one per CPU, decided at run
