"""routing/ is pure: it must never import I/O or clock/randomness modules (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROUTING = Path(__file__).resolve().parents[2] / "gatewayd" / "routing"
FORBIDDEN = {"asyncio", "socket", "ssl", "time", "random", "subprocess", "selectors", "uvloop"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path", sorted(ROUTING.rglob("*.py")), ids=lambda p: str(p.relative_to(ROUTING))
)
def test_routing_module_imports_no_io(path: Path) -> None:
    bad = _imported_modules(path) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}; routing/ must stay pure"


def test_purity_check_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import socket\nfrom time import monotonic\n")
    assert _imported_modules(sample) >= {"socket", "time"}
