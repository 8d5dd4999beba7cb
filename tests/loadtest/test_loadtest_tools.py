"""The load-test tooling keeps working as gatewayd changes.

`make bench` and `make locust` are not run by the suite (they are measurements, not
tests); what they depend on is: the wrk output parser, the config the bench hands to
gatewayd (it must stay valid), the naive aiohttp baseline proxy, and the route-lookup
micro-benchmark's output.  No figure is asserted here: timing belongs to `make bench`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import tempfile
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


def test_small_request_checks_say_the_issue_targets() -> None:
    """Issue 17's small-request lines: 50% of nginx and 65% of the ceiling with the log
    off, 45% of nginx with the default text access log (the ``gatewayd1-log`` row)."""
    bench = _load("bench")
    assert "gatewayd1-log" in bench.DEFAULT_TARGETS
    summary = {
        "nginx": {"rps": 60000.0},
        "ceiling": {"rps": 40000.0, "rps_per_core": 40000.0},
        "gatewayd1": {"rps": 30000.0, "rps_per_core": 30000.0},
        "gatewayd1-log": {"rps": 26000.0},
    }
    lines = {c["check"]: c for c in bench.checks(summary, {}, {})}
    off = lines["gatewayd 1 worker req/s >= 50% of nginx (access log off)"]
    assert (off["value"], off["verdict"]) == (0.5, "PASS")
    ceiling = lines["gatewayd 1 worker req/s >= 65% of the Python ceiling"]
    assert (ceiling["value"], ceiling["verdict"]) == (0.75, "PASS")
    logged = lines["gatewayd 1 worker, default text access log, req/s >= 45% of nginx"]
    assert logged["verdict"] == "MISS" and logged["value"] == pytest.approx(26000 / 60000)
    assert "the log costs 13% of the log-off req/s" in logged["detail"]
    summary["gatewayd1-log"] = {"rps": 27000.0}
    lines = {c["check"]: c for c in bench.checks(summary, {}, {})}
    assert (
        lines["gatewayd 1 worker, default text access log, req/s >= 45% of nginx"]["verdict"]
        == "PASS"
    )
    del summary["gatewayd1-log"]
    lines = {c["check"]: c for c in bench.checks(summary, {}, {})}
    assert (
        lines["gatewayd 1 worker, default text access log, req/s >= 45% of nginx"]["verdict"]
        == "n/a"
    )


def test_p50_check_shows_the_ceilings_own_figure() -> None:
    """At 8 connections p50 follows from CPU per request, so the p50 line also says what
    the Python ceiling adds in the same run."""
    bench = _load("bench")
    summary = {
        "direct": {"p50_8conn_ms": 0.023},
        "ceiling": {"p50_8conn_ms": 0.134},
        "gatewayd1": {"p50_8conn_ms": 0.176},
    }
    lines = {c["check"]: c for c in bench.checks(summary, {}, {})}
    p50 = lines["p50 added over direct at 8 connections <= 0.12 ms"]
    assert p50["verdict"] == "MISS" and p50["value"] == pytest.approx(0.153)
    assert "the Python ceiling adds +0.111 ms" in p50["detail"]
    del summary["ceiling"]
    lines = {c["check"]: c for c in bench.checks(summary, {}, {})}
    assert "ceiling" not in lines["p50 added over direct at 8 connections <= 0.12 ms"]["detail"]


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


def test_route_bench_replays_the_bench_exchange_through_its_compiled_route() -> None:
    """``bench_h1_route_inproc.py`` compiles bench.py's configuration and replays wrk's
    request and nginx's answer through it (a response must come out every time)."""
    out = subprocess.run(
        [
            sys.executable,
            str(LOADTEST / "bench_h1_route_inproc.py"),
            "--rounds",
            "2",
            "--requests",
            "20",
            "--metrics",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    figures = out.split(" us per request (request ")
    assert len(figures) == 2 and float(figures[0]) > 0, out
    request, _, rest = figures[1].partition(" + response ")
    assert float(request) > 0 and float(rest.split(";")[0]) > 0, out


# --------------------------------------------------------------------------- HTTP/2 and gRPC rows

H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of \
main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 21275.00 req/s, 3.63MB/s
requests: 21275 total, 21279 started, 21275 done, 21270 succeeded, 5 failed, 5 errored, 0 timeout
status codes: 21270 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 3.63MB (3808323) total, 2.21MB (2318975) headers (space savings 40.11%), \
373.97KB (382860) data
                     min         max         mean         sd        +/- sd
time for request:       58us      5.41ms       170us       202us    98.58%
time for connect:      379us       411us       395us        22us   100.00%
time to 1st byte:     1.25ms      1.60ms      1.43ms       245us   100.00%
req/s           :   10632.25    10637.60    10634.93        3.78   100.00%
"""


def test_parse_h2load_reads_the_summary() -> None:
    bench = _load("bench")
    s = bench.parse_h2load(H2LOAD_OUTPUT)
    assert s.seconds == pytest.approx(1.0)
    assert s.rps == pytest.approx(21275.0)
    assert (s.done, s.succeeded, s.failed, s.status_2xx) == (21275, 21270, 5, 21270)
    assert s.traffic_bytes == 3808323
    assert s.data_bytes == 382860


def test_parse_h2load_refuses_unexpected_output() -> None:
    bench = _load("bench")
    with pytest.raises(RuntimeError, match="unexpected h2load output"):
        bench.parse_h2load("connect to 127.0.0.1:1 failed\n")


def test_h2load_log_gives_the_percentiles() -> None:
    bench = _load("bench")
    # start µs, status, µs to the end of the response: 1..1000 µs in a shuffled order.
    lines = [f"1796223444517525\t200\t{(i * 7919) % 1000 + 1}\n" for i in range(1000)]
    p50, p99, count = bench.parse_h2load_log([*lines, "\n"])
    assert count == 1000
    assert p50 == pytest.approx(0.501)  # ms
    assert p99 == pytest.approx(0.991)
    with pytest.raises(RuntimeError, match="no request"):
        bench.parse_h2load_log([])


def test_h2load_result_counts_answers_without_their_body_as_errors() -> None:
    bench = _load("bench")
    s = bench.parse_h2load(H2LOAD_OUTPUT)
    log = ["1\t200\t100\n", "2\t200\t300\n"]
    frame = len(bench.grpc_frame(bench.GRPC_REPLY))
    assert frame == 5 + 13
    # 382,860 bytes of DATA are 21,270 gRPC answers of 18 bytes: only the 5 failures count.
    r = bench.h2load_result(s, log, frame)
    assert (r.rps, r.requests, r.errors) == (21275.0, 21275, 5)
    assert r.transfer_mb_s == pytest.approx(3.808323)
    # Trailers-only answers (a gRPC error is a 200 without a message) are errors too.
    s.data_bytes = frame * 21000
    r = bench.h2load_result(s, log, frame, connections=16)
    assert r.errors == 5 + 270
    assert r.error_detail == {
        "failed": 5,
        "non_2xx": 0,
        "short_bodies": 270,
        "short_bodies_seen": 270,
    }
    # One answer per connection may straddle h2load's phase boundary without its bytes.
    s.data_bytes = frame * (21270 - 16)
    assert bench.h2load_result(s, log, frame, connections=16).errors == 5
    s.data_bytes = frame * (21270 - 17)
    assert bench.h2load_result(s, log, frame, connections=16).errors == 5 + 17


def test_h2load_command_line_for_a_grpc_call(tmp_path: Path) -> None:
    bench = _load("bench")
    kind = bench.H2_KINDS["grpc"]
    argv = bench.h2load_argv(
        "http://127.0.0.1:9" + kind.path,
        connections=16,
        streams=4,
        duration=2.0,
        threads=1,
        log_file=tmp_path / "log",
        data_file=tmp_path / "req",
        headers=kind.headers,
    )
    assert argv[0] == "h2load"
    assert {"-t1", "-c16", "-m4", "-D2", f"--log-file={tmp_path / 'log'}"} <= set(argv)
    assert argv[argv.index("-d") + 1] == str(tmp_path / "req")
    headers = [argv[i + 1] for i, a in enumerate(argv) if a == "-H"]
    assert headers == ["content-type: application/grpc", "te: trailers"]
    assert argv[-1] == "http://127.0.0.1:9/gatewayd.bench.Bench/Call"
    assert bench.grpc_frame(b"ping") == b"\x00\x00\x00\x00\x04ping"


def test_nginx_configs_render_the_h2c_listeners() -> None:
    bench = _load("bench")
    tmp = Path(tempfile.mkdtemp(prefix="bench-test-"))
    try:
        backend = bench.nginx_backend_conf(tmp, 1001, 1002).read_text()
        assert "listen 127.0.0.1:1001 backlog=4096;" in backend
        assert "listen 127.0.0.1:1002 http2 backlog=4096;" in backend
        assert f"location = {bench.GRPC_PATH} " in backend
        assert "add_trailer grpc-status 0 always;" in backend
        assert (tmp / "www" / "grpc-reply").read_bytes() == bench.grpc_frame(bench.GRPC_REPLY)
        proxy = bench.nginx_proxy_conf(tmp, 1003, 1001, 1004, 1002).read_text()
        assert "listen 127.0.0.1:1004 http2 backlog=4096;" in proxy
        assert "grpc_pass grpc://grpcbackend;" in proxy
        assert "server 127.0.0.1:1002;" in proxy  # the gRPC upstream is the backend's h2c
        # Both listeners reach the backend over kept-alive HTTP/1.1: one location, twice.
        assert proxy.count("proxy_pass http://backend;") == 2
        assert proxy.count('proxy_set_header Connection "";') == 2
        # Without h2 ports the HTTP/1.1-only configurations are what they were.
        assert "http2" not in bench.nginx_backend_conf(tmp, 1001).read_text()
        assert "http2" not in bench.nginx_proxy_conf(tmp, 1003, 1001).read_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is installed by make bench")
def test_nginx_h2c_backend_and_proxy_answer_h2_and_grpc(
    spawn: list[subprocess.Popen[bytes]],
) -> None:
    """The rendered configs really serve: an h2c GET and a grpcio unary call, direct and
    through the nginx proxy (which must add X-Bench on both)."""
    bench = _load("bench")
    tmp = Path(tempfile.mkdtemp(prefix="bench-test-"))  # readable by nginx's workers
    try:
        bport, bh2, pport, ph2 = (_free_port() for _ in range(4))
        for conf, port in (
            (bench.nginx_backend_conf(tmp, bport, bh2), bh2),
            (bench.nginx_proxy_conf(tmp, pport, bport, ph2, bh2), ph2),
        ):
            proc = subprocess.Popen(
                ["nginx", "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            spawn.append(proc)
            _wait_port(port, proc)
        for port, proxied in ((bh2, False), (ph2, True)):
            t = bench.Target("t", "t", f"http://127.0.0.1:{port}", proxied=proxied)
            headers, body, _ = bench.h2c_request(t.url, "/small")
            assert (headers[":status"], body) == ("200", bench.SMALL_BODY)
            assert headers.get("x-seen-bench") == ("1" if proxied else None)
            code, reply, meta, _ = bench.grpc_call(t.url)
            # grpcio accepts only an application/grpc answer with a grpc-status trailer.
            assert (code, reply) == ("OK", bench.GRPC_REPLY)
            assert meta.get("x-seen-bench") == ("1" if proxied else None)
            bench.verify_h2(t)
            bench.verify_grpc(t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_bench_config_with_the_grpc_listener_is_valid(tmp_path: Path) -> None:
    bench = _load("bench")
    cfg = bench.gatewayd_config(tmp_path, _free_port(), _free_port(), _free_port(), _free_port())
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    rows = {line.split()[0] + " " + line.split()[1]: line.split() for line in out.splitlines()[1:]}
    assert rows["listener http"][2:] == ["True", "True", "True"], out
    assert rows["listener grpc"][2:] == ["True", "True", "True"], out
    # "HTTPRoute bench/bench -> bench/bench/http  True  -  True"
    assert rows["HTTPRoute bench/bench"][3:5] == ["bench/bench/http", "True"], out
    # Accepted once gatewayd serves GRPCRoutes; its backend (an h2c Service) resolves now.
    grpc_route = rows["GRPCRoute bench/bench"]
    assert grpc_route[3] == "bench/bench/grpc" and grpc_route[-1] == "True", out


def test_baseline_tree_is_the_gatewayd_its_runs_import(tmp_path: Path) -> None:
    """--baseline REF runs gatewayd/ of an older commit: the export must be what
    `python -m gatewayd` imports from there, not this checkout's editable install."""
    bench = _load("bench")
    tree = bench.export_gatewayd("HEAD", tmp_path / "base")
    assert (tree / "gatewayd" / "__main__.py").is_file()
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "run", "--help"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--config" in out
    with pytest.raises(RuntimeError, match="git archive no-such-ref"):
        bench.export_gatewayd("no-such-ref", tmp_path / "other")


def test_tcp_bench_config_is_valid_for_gatewayd(tmp_path: Path) -> None:
    bench_tcp = _load("bench_tcp")
    cfg = bench_tcp.gatewayd_config(tmp_path, _free_port(), _free_port())
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "check", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "TCPRoute" in out.stdout


def test_tcp_bench_moves_every_byte_through_each_target() -> None:
    bench_tcp = _load("bench_tcp")
    results = bench_tcp.run(mib=4, parallel=2, log=lambda _msg: None)
    for name in ("direct", "gatewayd"):
        for run in ("single", "parallel"):
            assert results[name][run]["errors"] == [], results
            assert results[name][run]["mb_s"] > 0
    if shutil.which("haproxy"):
        assert results["haproxy"]["single"]["mb_s"] > 0
    else:
        assert "not installed" in results["haproxy"]["note"]
