"""The ``gatewayd`` console script stays light to import: multiprocessing runs it again
in every spawned ``--workers N`` worker (as ``__mp_main__``), so whatever it imports,
each worker holds (the command line and the configuration pipeline: ~4.5 MB of RSS
each).  Checked in a fresh interpreter doing what the generated script does."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What a worker never needs: the command line, the configuration pipeline, YAML.
SUPERVISOR_ONLY = ("gatewayd.cli", "gatewayd.pipeline", "gatewayd.routing.config", "yaml")


def test_the_console_script_imports_no_supervisor_module_when_run_as_mp_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["gatewayd"].partition(":")
    # The body of the script pip generates, run the way multiprocessing's spawn runs
    # the parent's main script in a worker.
    script = f"from {module} import {function}\nif __name__ == '__main__':\n    raise SystemExit\n"
    code = (
        "import json, runpy, sys, tempfile\n"
        "with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:\n"
        f"    f.write({script!r})\n"
        "runpy.run_path(f.name, run_name='__mp_main__')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = json.loads(out.stdout)
    assert module in modules  # the script's own import happened
    loaded = [m for m in modules if m.startswith(SUPERVISOR_ONLY)]
    assert not loaded, loaded
