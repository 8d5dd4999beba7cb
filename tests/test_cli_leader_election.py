"""``run --kubernetes``'s leader-election flags: defaults are client-go's, the timing
rules are client-go's, and the flags are refused without --kubernetes."""

from __future__ import annotations

import pytest

from gatewayd.cli import _leader_election, build_parser, main
from gatewayd.runtime.kube.election import LeaderElectionSettings


def settings(*args: str) -> LeaderElectionSettings:
    parser = build_parser()
    return _leader_election(parser, parser.parse_args(["run", "--kubernetes", *args]))


def test_defaults_are_client_go_timings_and_the_documented_names() -> None:
    s = settings()
    assert s == LeaderElectionSettings()
    assert (s.lease_duration, s.renew_deadline, s.retry_period) == (15.0, 10.0, 2.0)
    assert s.enabled
    assert s.name == "gatewayd-status"
    assert s.namespace is None  # the pod's namespace, resolved at start
    assert s.identity is None  # $POD_NAME or hostname_pid, resolved at start


def test_flags_set_every_field() -> None:
    s = settings(
        "--leader-election-namespace",
        "edge",
        "--leader-election-name",
        "lease-x",
        "--leader-election-id",
        "node-1",
        "--leader-election-lease-duration",
        "3",
        "--leader-election-renew-deadline",
        "2",
        "--leader-election-retry-period",
        "0.5",
        "--no-leader-election",
    )
    assert s == LeaderElectionSettings(
        enabled=False,
        namespace="edge",
        name="lease-x",
        identity="node-1",
        lease_duration=3.0,
        renew_deadline=2.0,
        retry_period=0.5,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--kubernetes", "--leader-election-lease-duration", "10"),
            "--leader-election-lease-duration must exceed the renew deadline",
        ),
        (
            ("--kubernetes", "--leader-election-retry-period", "9"),
            "--leader-election-renew-deadline must exceed 1.2 x the retry period",
        ),
        (
            ("--config", "examples", "--leader-election-id", "x"),
            "--leader-election-id is only used with --kubernetes",
        ),
        (
            ("--config", "examples", "--no-leader-election"),
            "--no-leader-election is only used with --kubernetes",
        ),
    ],
)
def test_usage_errors(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_parser_takes_no_zero_timings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--kubernetes", "--leader-election-retry-period", "0"])
    assert exc.value.code == 2
    assert "must be at least 0.1" in capsys.readouterr().err
