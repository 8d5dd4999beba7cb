"""The loader's bounds: file sizes, the total size and YAML nodes (aliases expanded)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gatewayd.routing.config.load import ConfigLimits, load_documents, load_paths, read_config_files

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: ns}}
spec:
  parentRefs: [{{name: gw}}]
"""


# The "billion laughs": nine anchors, each repeating the previous one nine times, are
# 9**9 (387 million) strings from 1.4 KB of YAML.
ALIAS_BOMB = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bomb, namespace: ns}
spec:
  l0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  l1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]
  l2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]
  l3: &a3 [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]
  l4: &a4 [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]
  l5: &a5 [*a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4, *a4]
  l6: &a6 [*a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5, *a5]
  l7: &a7 [*a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6, *a6]
  l8: &a8 [*a7, *a7, *a7, *a7, *a7, *a7, *a7, *a7, *a7]
"""


def names(result: object) -> list[str]:
    return [r.meta.name for r in result.config.http_routes]  # type: ignore[attr-defined]


def test_alias_bomb_is_refused_quickly_and_names_the_file() -> None:
    bomb = ALIAS_BOMB
    assert len(bomb) < 1500
    start = time.monotonic()
    result = load_documents([("bomb.yaml", bomb), ("ok.yaml", ROUTE.format(name="ok"))])
    assert time.monotonic() - start < 1.0
    (problem,) = [str(p) for p in result.problems]
    assert problem.startswith("bomb.yaml:0: the configuration holds more than 1000000 YAML nodes")
    assert "--max-config-nodes" in problem and "the rest of this file is not read" in problem
    # The refused document gives its nodes back: the next file loads.
    assert names(result) == ["ok"]


def test_aliases_are_charged_what_they_expand_to() -> None:
    # The mapping, three keys, the anchored list (itself and 2 items: 3 nodes) and two
    # aliases repeating all 3: 1 + 3 + 3 + 3 * 2 = 13 nodes.
    text = "a: &x [1, 2]\nb: *x\nc: *x\n"
    fits = load_documents([("f.yaml", text)], limits=ConfigLimits(max_nodes=13)).problems
    assert [p.field for p in fits] == ["kind"]  # no YAML problem: only "kind is required"
    over = load_documents([("f.yaml", text)], limits=ConfigLimits(max_nodes=12)).problems
    assert [str(p) for p in over] == [
        "f.yaml:0: the configuration holds more than 12 YAML nodes, an alias counting as "
        "every node it repeats (raise --max-config-nodes if it is really this large) "
        "(at line 3, column 4); the rest of this file is not read"
    ]


def test_the_node_budget_spans_every_file() -> None:
    one = ROUTE.format(name="one")
    alone = load_documents([("a.yaml", one)], limits=ConfigLimits(max_nodes=10_000))
    assert names(alone) == ["one"]
    # Exactly what the first file needs: the second one is refused, by name.
    needed = 0
    while load_documents([("a.yaml", one)], limits=ConfigLimits(max_nodes=needed)).problems:
        needed += 1
    both = load_documents(
        [("a.yaml", one), ("b.yaml", ROUTE.format(name="two"))],
        limits=ConfigLimits(max_nodes=needed),
    )
    assert names(both) == ["one"]
    assert [p.source.file for p in both.problems if p.source] == ["b.yaml"]


def test_merge_keys_still_work_within_the_budget() -> None:
    text = ROUTE.format(name="merged") + "  x: &base {a: 1}\n  y: {<<: *base, b: 2}\n"
    result = load_documents([("f.yaml", text)], limits=ConfigLimits(max_nodes=100))
    # spec.x / spec.y are unknown fields: the merge itself loaded without a YAML problem.
    assert all("YAML" not in str(p) for p in result.problems), result.problems


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    result = load_documents([("loop.yaml", "a: &a [1, *a]\n")])
    assert [str(p) for p in result.problems] == [
        "loop.yaml:0: invalid YAML at line 1, column 11: alias *a refers to a node that "
        "contains it; the rest of this file is not read"
    ]


def test_earlier_documents_of_the_file_still_load() -> None:
    text = ROUTE.format(name="first") + "---\n" + ALIAS_BOMB
    result = load_documents([("f.yaml", text)])
    assert names(result) == ["first"]
    assert [str(p)[:9] for p in result.problems] == ["f.yaml:1:"]


def test_a_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ROUTE.format(name="small"))
    big = tmp_path / "b.yaml"
    big.write_text(ROUTE.format(name="big") + "# " + "x" * 2000 + "\n")
    limits = ConfigLimits(max_file_bytes=1024)
    read = read_config_files([tmp_path], limits)
    assert [Path(f).name for f, _ in read.files] == ["a.yaml"]
    (problem,) = [str(p) for p in read.problems]
    size = big.stat().st_size
    assert problem == (
        f"{big}:0: the file is {size} bytes, over the 1024-byte limit of one config file "
        "(--max-config-file-size); this file is not read"
    )
    result = load_paths([tmp_path], limits=limits)
    assert names(result) == ["small"]
    assert [str(p) for p in result.problems] == [problem]


def test_the_total_size_limit_names_the_first_file_beyond_it(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml").write_text(ROUTE.format(name=name))
    size = (tmp_path / "a.yaml").stat().st_size
    result = load_paths([tmp_path], limits=ConfigLimits(max_total_bytes=2 * size + 1))
    assert names(result) == ["a", "b"]
    (problem,) = [str(p) for p in result.problems]
    assert problem.startswith(f"{tmp_path / 'c.yaml'}:0: the config files read before it hold")
    assert "--max-config-size" in problem


def test_a_fifo_in_a_config_directory_is_not_opened(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ROUTE.format(name="a"))
    os.mkfifo(tmp_path / "pipe.yaml")  # opening it would block the load for good
    result = load_paths([tmp_path])
    assert names(result) == ["a"]
    assert [str(p) for p in result.problems] == [
        f"{tmp_path / 'pipe.yaml'}:0: not a regular file; this file is not read"
    ]


@pytest.mark.parametrize("limit", [0, 1])
def test_tiny_limits_refuse_everything_without_raising(tmp_path: Path, limit: int) -> None:
    (tmp_path / "a.yaml").write_text(ROUTE.format(name="a"))
    result = load_paths(
        [tmp_path],
        limits=ConfigLimits(max_file_bytes=limit, max_total_bytes=limit, max_nodes=limit),
    )
    assert names(result) == []
    assert len(result.problems) == 1
