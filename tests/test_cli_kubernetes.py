"""``--kubernetes``: exclusive with ``--config``; --kubeconfig/--context need it; a
missing client configuration is one clear line and exit 1, for run and check."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gatewayd.cli import main


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--config", "examples", "--kubernetes"),
            "argument --kubernetes: not allowed with argument --config",
        ),
        ((), "one of the arguments --config --kubernetes is required"),
        (
            ("--config", "examples", "--kubeconfig", "k"),
            "--kubeconfig is only used with --kubernetes",
        ),
        (("--config", "examples", "--context", "c"), "--context is only used with --kubernetes"),
    ],
)
def test_source_flags_usage_errors(
    command: str, args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _without_cluster_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env["GATEWAYD_SERVICE_ACCOUNT_DIR"] = "/nonexistent"
    return env


def test_check_kubernetes_outside_a_cluster_says_so(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "--kubernetes"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_without_cluster_env(),
        check=False,
    )
    assert proc.returncode == 1, proc
    assert "in-cluster configuration: Service host/port is not set." in proc.stdout
    assert "outside a Pod, pass --kubeconfig" in proc.stdout


def test_run_kubernetes_with_a_missing_kubeconfig_exits_1(tmp_path: os.PathLike[str]) -> None:
    missing = os.path.join(tmp_path, "nope.yaml")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatewayd",
            "run",
            "--kubernetes",
            "--kubeconfig",
            missing,
            "--admin-address",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_without_cluster_env(),
        check=False,
    )
    assert proc.returncode == 1, proc
    assert f"cannot read the configuration: kubeconfig {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
