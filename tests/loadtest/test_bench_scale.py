"""The scale parts of ``make bench`` (loadtest/bench_scale.py) keep measuring what they
say: the generated HTTPRoutes are valid and all accepted, the core list is read as
taskset reads it, and the reload request loop really sends requests, counts failures and
stops.  No figure is asserted: timing belongs to ``make bench``."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "loadtest"))

import bench_scale  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_generated_routes_and_the_added_one_are_all_accepted(tmp_path: Path) -> None:
    bench_scale.write_routes(tmp_path, 25, 8080, 9000)
    bench_scale.write_routes(tmp_path, 1, 8080, 9000, first=25)  # what the reload adds
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "--config", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    routes = [line.split() for line in out.stdout.splitlines() if line.startswith("HTTPRoute ")]
    assert len(routes) == 26
    assert {r[1] for r in routes} == {f"scale/r{i}" for i in range(26)}
    assert all(r[4] == "True" and r[6] == "True" for r in routes), out.stdout


def test_core_lists_read_like_taskset() -> None:
    assert bench_scale.parse_cores("0-1") == [0, 1]
    assert bench_scale.parse_cores("0,2-4, 6") == [0, 2, 3, 4, 6]
    assert bench_scale.parse_cores("3") == [3]
    with pytest.raises(ValueError):
        bench_scale.parse_cores(",")
    with pytest.raises(ValueError):
        bench_scale.parse_cores("a-b")


def test_request_loop_counts_answers_and_failures_and_stops(tmp_path: Path) -> None:
    port = _free_port()
    with open(tmp_path / "echo.log", "wb") as log:
        echo = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "echo", "--listen", f"127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert echo.poll() is None
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gatewayd echo did not listen"
                time.sleep(0.05)
        loop = bench_scale.RequestLoop(port)
        loop.start()
        time.sleep(0.5)
        ok = loop.stop()
        assert ok.requests > 0 and ok.errors == 0
        assert ok.longest_ms > 0 and ok.p99_ms is not None and ok.p99_ms <= ok.longest_ms
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    # Nothing listens any more: every request fails, and the loop still stops.
    loop = bench_scale.RequestLoop(port)
    loop.start()
    time.sleep(0.2)
    failed = loop.stop()
    assert failed.requests > 0 and failed.errors == failed.requests


def test_ten_thousand_routes_fit_the_per_file_limit(tmp_path: Path) -> None:
    bench_scale.write_routes(tmp_path, 10_000, 8080, 9000)
    files = sorted(tmp_path.glob("routes-*.yaml"))
    assert len(files) == 10
    # gatewayd's default --max-config-file-size is 4 MiB; all of it under the 16 MiB total.
    assert max(f.stat().st_size for f in files) < 4 * 1024 * 1024
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < 16 * 1024 * 1024
    assert sum(f.read_text().count("kind: HTTPRoute") for f in files) == 10_000
