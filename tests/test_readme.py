"""The README against the code: the "Supported features" table and the GatewayClass
supportedFeatures list, the kinds `gatewayd status` is documented to take, `make lint`
as the Makefile runs it, and the LICENSE pyproject.toml names."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest

from gatewayd.cli import build_parser
from gatewayd.routing.control.gateways import SUPPORTED_FEATURES
from gatewayd.statuscli import SECTIONS, normalize_what

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def feature_rows() -> list[tuple[str, str, str]]:
    rows = re.findall(
        r"^\| `([A-Za-z0-9]+)` \| ([a-z]+) \| (.*) \|$", section("Supported features"), re.M
    )
    assert rows, "no feature rows"
    return rows


def test_supported_rows_are_the_gateway_class_supported_features() -> None:
    rows = feature_rows()
    supported = [name for name, support, _ in rows if support == "supported"]
    assert sorted(supported) == sorted(SUPPORTED_FEATURES)


def test_every_feature_row_says_how_and_why() -> None:
    rows = feature_rows()
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)), "a feature listed twice"
    assert names == sorted(names)
    for name, support, why in rows:
        assert support in ("supported", "partly", "not"), name
        assert len(why.strip()) > 10, name
    # Conformance names and nothing else: every one is a Gateway API kind's feature.
    prefixes = (
        "Backend",
        "Gateway",
        "GRPCRoute",
        "HTTPRoute",
        "Listener",
        "Mesh",
        "Reference",
        "TCPRoute",
        "TLSRoute",
        "UDPRoute",
    )
    assert all(name.startswith(prefixes) for name in names)


def test_status_takes_every_kind_the_readme_lists() -> None:
    documented = re.search(r"`gatewayd status \[([a-z|\\]+)\]", README)
    assert documented is not None
    kinds = documented.group(1).replace("\\", "").split("|")
    assert set(kinds) == {"all", *SECTIONS}
    for kind in kinds:
        assert normalize_what(kind) == kind
    parser = build_parser()
    for output in ("table", "wide", "json", "yaml"):
        args = parser.parse_args(["status", kinds[-1], "-o", output])
        assert (args.what, args.output) == (kinds[-1], output)


def test_make_lint_is_described_as_the_makefile_runs_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None
    commands = [shlex.split(line.strip()) for line in recipe.group(1).splitlines()]
    ruff = next(c for c in commands if c[0].endswith("ruff"))
    assert any(c[0].endswith("mypy") for c in commands)
    described = README[README.index("`make lint` runs") :].split("\n\n")[0]
    for path in ruff[2:]:
        assert f"`{path}`" in described, path
    mypy_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    for path in mypy_files:
        if path.endswith(".py"):
            continue  # the codec modules, named together
        assert f"`{path}`" in described, path


def test_license_is_the_apache_2_text_pyproject_names() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    numbered = re.findall(r"^   (\d)\. ([A-Z][A-Za-z ]+)\.", text, re.M)
    assert [n for n, _ in numbered] == [str(i) for i in range(1, 10)]
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.parametrize("title", ["What gatewayd reads", "Your first Gateway"])
def test_new_user_sections_come_before_the_reference(title: str) -> None:
    assert README.index(f"\n## {title}\n") < README.index("\n## Commands\n")
