"""The load-test tooling keeps working as gatewayd changes.

`make bench` and `make locust` are not run by the suite (they are measurements, not
tests); what they depend on is: the wrk output parser, the config the bench hands to
gatewayd (it must stay valid), the naive aiohttp baseline proxy, and the route-lookup
micro-benchmark's output.  No figure is asserted here: timing belongs to `make bench`.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOADTEST = ROOT / "loadtest"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"loadtest_{name}", LOADTEST / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"process exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port} after {timeout} s")


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8000/small
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.51ms  310.00us  12.03ms   91.20%
    Req/Sec    25.61k     1.02k   27.01k    80.00%
  Latency Distribution
     50%    2.45ms
     75%    2.60ms
     90%    2.80ms
     99%    1.20s
  254871 requests in 10.00s, 41.07MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  25487.10
Transfer/sec:      4.11MB
"""


def test_parse_wrk_reads_every_figure() -> None:
    bench = _load("bench")
    r = bench.parse_wrk(WRK_OUTPUT)
    assert r.rps == pytest.approx(25487.10)
    assert r.p50_ms == pytest.approx(2.45)
    assert r.p99_ms == pytest.approx(1200.0)  # "1.20s" is converted to milliseconds
    assert r.requests == 254871
    assert r.errors == 2 + 1 + 4  # socket errors and non-2xx/3xx responses
    assert r.transfer_mb_s == pytest.approx(4.11 * 1024**2 / 1e6)


def test_parse_wrk_refuses_unexpected_output() -> None:
    bench = _load("bench")
    with pytest.raises(RuntimeError, match="unexpected wrk output"):
        bench.parse_wrk("unable to connect to 127.0.0.1:8000 Connection refused\n")


def test_bench_config_is_valid_for_gatewayd(tmp_path: Path) -> None:
    bench = _load("bench")
    cfg = bench.gatewayd_config(tmp_path, _free_port(), _free_port())
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "HTTPRoute" in out.stdout


def test_naive_proxy_forwards_and_adds_the_header(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    echo_port, proxy_port = _free_port(), _free_port()
    echo = subprocess.Popen(
        [sys.executable, "-m", "gatewayd", "echo", "--listen", f"127.0.0.1:{echo_port}"],
        stdout=subprocess.DEVNULL,
    )
    spawn.append(echo)
    proxy = subprocess.Popen(
        [
            sys.executable,
            str(LOADTEST / "naive_proxy.py"),
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--upstream",
            f"http://127.0.0.1:{echo_port}",
        ],
        stdout=subprocess.DEVNULL,
    )
    spawn.append(proxy)
    _wait_port(echo_port, echo)
    _wait_port(proxy_port, proxy)
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/a/b?x=1", timeout=5) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
    assert body["path"] == "/a/b?x=1"
    headers = {k.lower(): v for k, v in body["headers"].items()}
    assert headers["x-bench"] in ("1", ["1"])


def test_lookup_benchmark_reports_10_and_1000_routes() -> None:
    out = subprocess.run(
        [sys.executable, str(LOADTEST / "bench_lookup.py"), "--seconds", "0.02"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line for line in out.splitlines() if "routes" in line and "µs" not in line]
    assert any(line.startswith("10 routes") for line in rows), out
    assert any(line.startswith("1,000 routes") for line in rows), out
    for line in rows:
        # "<table>  <requests>  <µs per lookup>  (<compile ms>)": a positive figure.
        figure = float(line.split()[-2])
        assert figure > 0, line
