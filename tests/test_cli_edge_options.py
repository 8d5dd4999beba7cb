"""``gatewayd run``'s header-trust and path-normalization flags and their defaults."""

from __future__ import annotations

import argparse

import pytest

from gatewayd.cli import _path_policy, build_parser
from gatewayd.proxy.pathnorm import EDGE_PATH_POLICY, EscapedSlashes, PathPolicy
from gatewayd.proxy.server import ProxyOptions


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", "--config", "examples", *args])


def test_defaults_are_the_edge_defaults() -> None:
    ns = parse()
    assert ns.preserve_request_id is False
    assert _path_policy(ns) == EDGE_PATH_POLICY == ProxyOptions().path
    assert (
        PathPolicy(
            normalize=True,
            merge_slashes=True,
            escaped_slashes=EscapedSlashes.UNESCAPE_AND_REDIRECT,
            strip_fragment=True,
        )
        == EDGE_PATH_POLICY
    )
    assert ProxyOptions().preserve_request_id is False
    assert ns.xfcc == "sanitize-set" and ProxyOptions().xfcc_set is True


def test_every_flag_turns_its_step_off() -> None:
    ns = parse(
        "--preserve-request-id",
        "--no-path-normalization",
        "--no-merge-slashes",
        "--escaped-slashes",
        "keep",
        "--keep-fragment",
        "--xfcc",
        "sanitize",
    )
    assert ns.preserve_request_id is True
    assert ns.xfcc == "sanitize"
    policy = _path_policy(ns)
    assert policy == PathPolicy(
        normalize=False,
        merge_slashes=False,
        escaped_slashes=EscapedSlashes.KEEP,
        strip_fragment=False,
    )
    assert not policy.active


@pytest.mark.parametrize("action", [a.value for a in EscapedSlashes])
def test_escaped_slashes_choices(action: str) -> None:
    assert _path_policy(parse("--escaped-slashes", action)).escaped_slashes.value == action


def test_unknown_escaped_slashes_action_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("--escaped-slashes", "decode")
    assert exc.value.code == 2
    assert "argument --escaped-slashes: invalid choice: 'decode'" in capsys.readouterr().err
