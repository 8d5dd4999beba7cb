"""The line-by-line reader of block-style manifests gives exactly the data and the node
count of the node-graph loader, and hands everything else back (None)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from gatewayd.routing.config import load
from gatewayd.routing.config.yamlblock import block_documents

ROOT = Path(__file__).resolve().parents[2]

READ = [
    "",
    "a: 1\n",
    "a: 1\nb: 0x1F\nc: 017\nd: 1_000\nf: +12\ng: 1.5\nh: .inf\ni: .nan\nj: 6.02e+23\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: False\ng: y\nn: ~\no: null\np:\n",
    "q: ''\nr: 'null'\ns: \"1\"\nt: \"a: b # c\"\nu: 'x' # comment\n",
    "---\n---\na: 1\n---\n# only a comment\n---\n[1, 2]\n---\n- 1\n- [2, 3]\n",
    "dup: 1\ndup: 2\n",
    "list:\n- a: 1\n  b: [x, y]\n- - nested\n  - seq\n",
    "key:\n- a:\n- b\n-\n-\n  c: 1\n",
    "  indented: 1\n  root: [a, 'b', \"c\"]\n",
    "url: http://example.com/a#frag\nplain: a, b [c] {d}\ncolon: a:b\nhash: a#b # comment\n",
    "80: x\ntrue: y\nnull: z\n1.5: w\non: v\n",
    "empty: []\nspaced: [ ]\nobj: {}\nobj2: {} # c\nflow: [ 1 , two,'3' ]\n",
    "a:\n  b:\n    c:\n    - d: 1\n      e:\n      - f\n  g: h\n",
    "scalar root\n",
    "- a\n- - b\n  - c\n-   d: 1\n    e: 2\n",
    "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  labels:\n"
    "    app.kubernetes.io/name: s\n    x_y-z.w: '1'\nspec:\n  ports:\n  - port: 80\n"
    "    targetPort: http # name\n",
    "date: 2001-12-14\n",  # a string: the loader resolves no timestamps
    "a: 1   \nb:   two  \n\n\n   # indented comment\nc: 3\n",
]

# Valid YAML this reader leaves to the parser (it returns None), and invalid YAML.
LEFT = [
    "a: &x [1, 2]\nb: *x\n",
    "a: !!str 1\n",
    "a: |\n  block\n",
    "a: >-\n  folded\n",
    "a: multi\n  line\n",
    "- multi\n  line\n",
    "a: 'it''s'\n",
    'a: "esc\\"aped"\n',
    "a:\tb\n",
    "a: 1\r\n",
    "\ufeffa: 1\n",
    "name: ünïcödé\n",
    "a: {b: c}\n",
    "a: [b, {c: d}]\n",
    "a: [b,\n  c]\n",
    "a: [b, ]\n",
    "a: [-1]\n",
    "a: -1\n",
    '"quoted key": 1\n',
    "? complex\n: v\n",
    "<<: {a: 1}\n",
    "a: =\n",
    "%YAML 1.1\n---\na: 1\n",
    "--- a\n",
    "a: 1\n...\n",
    "a: 1\n  b: 2\n",
    "a: b: c\n",
    "a: b:\n",
    "a:b\nc: d\n",
    "a: # comment only\n",
    "- # comment only\n",
    "a: 1\n b: 2\n",
    "-x\n",
]


def slow(text: str) -> tuple[list[object], int]:
    nodes = 0

    class Counting(load._NodeBudget):
        __slots__ = ()

        def charge(self, n: int, mark: yaml.Mark | None) -> None:
            nonlocal nodes
            nodes += n
            super().charge(n, mark)

    loader = load._LOADER(text, Counting(10**9))
    docs = []
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            docs.append(loader.get_data())  # type: ignore[no-untyped-call]
    finally:
        loader.dispose()
    return docs, nodes


def block(text: str) -> tuple[list[object] | None, int]:
    charged: list[int] = []
    docs = block_documents(text, load._RESOLVER, lambda n, mark: charged.append(n))
    return docs, sum(charged)


def same(text: str) -> None:
    docs, nodes = block(text)
    assert docs is not None, text
    want, want_nodes = slow(text)
    assert docs == want, text
    assert repr(docs) == repr(want), text  # the same types (1 is not 1.0 nor True)
    assert nodes == want_nodes, text


@pytest.mark.parametrize("text", READ)
def test_block_yaml_reads_the_same(text: str) -> None:
    same(text)


@pytest.mark.parametrize("text", LEFT)
def test_anything_else_is_left_to_the_parser(text: str) -> None:
    assert block(text)[0] is None


def test_every_manifest_in_the_repository_reads_the_same() -> None:
    files = [
        p
        for d in ("examples", "deploy", "tests", "compose", "docs")
        for p in sorted((ROOT / d).rglob("*.y*ml"))
    ]
    read = 0
    for path in files:
        text = path.read_text(errors="replace")
        try:
            want, want_nodes = slow(text)
        except yaml.YAMLError:
            assert block(text)[0] is None, path  # invalid YAML is never read here
            continue
        got, nodes = block(text)
        if got is not None:
            assert got == want and repr(got) == repr(want), path
            assert nodes == want_nodes, path
            read += 1
    assert read > 10


def test_generated_manifests_read_the_same() -> None:
    """Random block-style documents from a small grammar, with the spellings that
    matter (comments, quotes, flow lists, null values, same-column sequences)."""
    rng = random.Random(17)
    scalars = [
        "a",
        "web",
        "1",
        "0",
        "-",
        "true",
        "No",
        "~",
        "null",
        "1.5",
        "0x1F",
        "'q'",
        '"d q"',
        "'1'",
        "a b",
        "x # c",
        "/p/a",
        "http://h/x",
        "a:b",
        "[]",
        "[a, 1]",
        "{}",
        '["h.example", "*.x"]',
        "2001",
        "y",
        "on",
        "_x",
        "r1.scale.test",
    ]
    keys = ["name", "on", "1", "a.b/c", "x_y", "null", "kind", "value", "true"]

    def node(indent: int, depth: int) -> list[str]:
        pad = " " * indent
        if depth > 3 or rng.random() < 0.3:
            return [pad + rng.choice(scalars)]
        out: list[str] = []
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                key = rng.choice(keys)
                roll = rng.random()
                if roll < 0.5:
                    out.append(f"{pad}{key}: {rng.choice(scalars)}")
                elif roll < 0.6:
                    out.append(f"{pad}{key}:")
                elif roll < 0.8:
                    out.append(f"{pad}{key}:")
                    out += node(indent + 2, depth + 1)
                else:  # a sequence at the key's own column
                    out.append(f"{pad}{key}:")
                    out += seq(indent, depth + 1)
                if rng.random() < 0.1:
                    out.append(pad + "# a comment")
            return out
        return seq(indent, depth)

    def seq(indent: int, depth: int) -> list[str]:
        out: list[str] = []
        for _ in range(rng.randint(1, 3)):
            inner = node(indent + 2, depth + 1)
            first = inner[0][indent + 2 :]
            out.append(" " * indent + "- " + first)
            out += inner[1:]
        return out

    read = 0
    for _ in range(600):
        docs = ["\n".join(node(0, 0)) for _ in range(rng.randint(1, 3))]
        text = "\n---\n".join(docs) + "\n"
        try:
            slow(text)
        except yaml.YAMLError:
            assert block(text)[0] is None, text
            continue
        if block(text)[0] is not None:
            same(text)
            read += 1
    assert read > 300


def test_the_budget_is_charged_and_its_error_propagates() -> None:
    text = "items:\n" + "- a: 1\n" * 3000
    budget = load._NodeBudget(100)
    with pytest.raises(load._TooManyNodes):
        block_documents(text, load._RESOLVER, budget.charge)
