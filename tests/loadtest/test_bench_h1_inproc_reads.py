"""``loadtest/bench_h1_inproc.py --read-size``: the backend's answer in several reads
(a 64 KiB body the way a socket hands it over) still comes out whole, every time.
No figure is asserted: timing belongs to the benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"


@pytest.mark.parametrize("read_size", ["0", "65536", "1000"])
def test_answer_in_reads_of_read_size(read_size: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(LOADTEST / "bench_h1_inproc.py"),
            "--rounds",
            "2",
            "--requests",
            "16",
            "--metrics",
            "--nginx-head",
            "--body-size",
            "65536",
            "--read-size",
            read_size,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,  # the bench asserts that every response reached the client
    ).stdout
    assert float(out.split()[0]) > 0, out
    assert ("reads of" in out) == (read_size != "0"), out
