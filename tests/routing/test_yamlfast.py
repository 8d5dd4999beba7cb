"""The manifest reader's fast path (libyaml events straight to data) gives exactly the
data, the node count and the marks of the node-graph loader, and hands every file that
is not plain YAML back to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gatewayd.routing.config import load
from gatewayd.routing.config.yamlfast import fast_documents

ROOT = Path(__file__).resolve().parents[2]

PLAIN = [
    "a: 1\nb: 0x1F\nc: 017\nd: 1_000\ne: -0b101\nf: +12\n",
    "a: 1.5\nb: .inf\nc: -.Inf\nd: .nan\ne: 6.02e+23\nf: 1e3\ng: 1:30\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: False\ng: y\n",
    "a: ~\nb: null\nc:\nd: ''\ne: 'null'\nf: \"1\"\ng: !!str 12\nh: !!int '7'\n",
    "t: 2001-12-14t21:59:43.10-05:00\nd: 2002-12-14\n",
    "x: |\n  line one\n  line two\ny: >-\n  folded\n  text\nz: [a, {b: c}, [d, e]]\n",
    "---\n---\na: 1\n---\n# only a comment\n---\n- 1\n- [2, 3]\n",
    "",
    "name: ünïcödé ✓\nkey with spaces: v\n? explicit\n: value\n",
    "dup: 1\ndup: 2\n",
    "list:\n- a: 1\n  b: [x, y]\n- - nested\n  - seq\n",
    "!!map {a: !!seq [1, 2]}\n",
    # Strings the resolver is not asked about (first character, or quoted) beside ones
    # it resolves.
    "a: hello\nb: 'quoted'\nc: \"dq: x\"\nd: _x\ne: /p\nf: '*.x.io'\ng: Yes\nh: 'yes'\ni: r1.a\n",
    # More nodes than one charge batch, in one document.
    "- x\n" * 5000,
]

UNUSUAL = [
    "a: &x [1, 2]\nb: *x\n",
    "base: &b {a: 1}\nderived: {<<: *b, c: 2}\n",
    "a: !!binary aGVsbG8=\n",
    "a: !!set {x, y}\n",
    "a: !!omap [x: 1]\n",
    "? [complex, key]\n: v\n",
    "a: !custom 1\n",
    "a: =\n",
]


def slow(text: str) -> tuple[list[object], list[tuple[int, int]]]:
    marks: list[tuple[int, int]] = []

    class Recording(load._NodeBudget):
        __slots__ = ()

        def charge(self, nodes: int, mark: object) -> None:
            marks.append((mark.line, mark.column))  # type: ignore[attr-defined]
            super().charge(nodes, mark)  # type: ignore[arg-type]

    budget = Recording(10**9)
    loader = load._LOADER(text, budget)
    docs = []
    try:
        while loader.check_data():
            docs.append(loader.get_data())
    finally:
        loader.dispose()
    return docs, marks


def fast(text: str) -> tuple[list[object] | None, int]:
    """The documents, and the nodes charged (in batches: ``fast_documents``)."""
    charged: list[int] = []
    docs = fast_documents(text, load._RESOLVER, lambda n, mark: charged.append(n))
    return docs, sum(charged)


@pytest.mark.parametrize("text", PLAIN)
def test_plain_yaml_reads_the_same(text: str) -> None:
    docs, charged = fast(text)
    assert docs is not None
    want_docs, want_marks = slow(text)
    assert docs == want_docs
    assert [type(x) for x in docs] == [type(x) for x in want_docs]
    assert charged == len(want_marks)  # as many nodes charged


@pytest.mark.parametrize("text", UNUSUAL)
def test_unusual_yaml_goes_to_the_node_graph_loader(text: str) -> None:
    assert fast(text)[0] is None


def test_every_manifest_in_the_repository_reads_the_same() -> None:
    files = [
        p
        for d in ("examples", "deploy", "tests/routing/data", "compose")
        for p in sorted((ROOT / d).rglob("*.yaml"))
    ]
    assert len(files) > 10
    compared = 0
    for path in files:
        text = path.read_text()
        try:
            want, _ = slow(text)
        except yaml.YAMLError:
            continue  # the invalid-YAML fixtures: the fast path must not read them either
        got, _ = fast(text)
        if got is not None:
            assert got == want, path
            compared += 1
    assert compared > 10


def test_types_survive_exactly() -> None:
    (doc,) = fast("a: 1\nb: '1'\nc: 1.0\nd: true\ne: null\n")[0] or [None]
    assert doc == {"a": 1, "b": "1", "c": 1.0, "d": True, "e": None}
    assert type(doc["a"]) is int and type(doc["d"]) is bool  # type: ignore[index]


def test_errors_are_left_to_the_node_graph_loader() -> None:
    with pytest.raises(yaml.MarkedYAMLError):
        fast("a: [1\nb: 2\n")


def test_nesting_is_bounded_by_libyaml() -> None:
    depth = 900
    docs, _ = fast("[" * depth + "]" * depth)
    assert docs is not None
    node = docs[0]
    for _ in range(depth - 1):
        node = node[0]  # type: ignore[index]
    assert node == []
    # Deeper than libyaml's limit (1,000): its error, never a stack overflow.
    with pytest.raises(yaml.MarkedYAMLError, match="nesting depth"):
        fast("[" * 100_000 + "]" * 100_000)
    problems = load.load_documents([("deep.yaml", "[" * 100_000)]).problems
    assert [str(p)[:30] for p in problems] == ["deep.yaml:0: invalid YAML at l"]
