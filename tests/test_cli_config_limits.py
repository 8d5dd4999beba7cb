"""``--max-config-file-size``, ``--max-config-size`` and ``--max-config-nodes`` on
``gatewayd run`` and ``gatewayd check``."""

from __future__ import annotations

import argparse

import pytest

from gatewayd.cli import _limits, build_parser
from gatewayd.routing.config.load import MIB, ConfigLimits


def parse(command: str, *args: str) -> argparse.Namespace:
    return build_parser().parse_args([command, "--config", "examples", *args])


@pytest.mark.parametrize("command", ["run", "check"])
def test_defaults_are_the_loader_defaults(command: str) -> None:
    limits = _limits(parse(command))
    assert limits == ConfigLimits()
    assert (limits.max_file_bytes, limits.max_total_bytes, limits.max_nodes) == (
        4 * MIB,
        16 * MIB,
        1_000_000,
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("100", 100), ("7B", 7), ("512KiB", 512 * 1024), ("8mib", 8 * MIB), ("2M", 2_000_000)],
)
def test_sizes_take_units(text: str, size: int) -> None:
    ns = parse("check", "--max-config-file-size", text, "--max-config-size", text)
    assert _limits(ns).max_file_bytes == size
    assert _limits(ns).max_total_bytes == size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-config-file-size", "4TiB"), "not a size such as 4MiB: '4TiB'"),
        (("--max-config-size", "-1"), "not a size such as 4MiB: '-1'"),
        (("--max-config-nodes", "0"), "argument --max-config-nodes: must be at least 1, not 0"),
    ],
)
def test_bad_values_are_usage_errors(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse("run", *args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
