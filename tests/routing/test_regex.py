"""RE2 matching for RegularExpression matches: linear time, bounded memory, RE2's
verdict on patterns (issue 11 item 6)."""

from __future__ import annotations

import json
import pickle
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from route_builders import REGEX, get, http, match, rule, table

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import load_documents
from gatewayd.routing.control.resolve import resolve
from gatewayd.routing.snapshot.regex import (
    MAX_MEM,
    NEVER,
    Regex,
    RegexError,
    RegexSet,
    escape,
    regex_problem,
)

# Patterns that backtrack exponentially in Python ``re`` on a near-miss input.
CATASTROPHIC = [r"(a+)+$", r"(a|aa)+$", r"(a|a?)+$", r"(\w+\s?)+$", r"(.*a){12}"]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_match_in_linear_time(pattern: str) -> None:
    rx = Regex(pattern)
    # 28..40 characters ending in a character that makes the whole match fail: on
    # Python re the 28-character case of (a+)+$ alone took 7.7 s in the issue.
    for n in (28, 34, 40):
        assert not rx.fullmatch("a" * n + "!")
    # 4,000 tries of the worst input: a backtracking engine could not finish one; RE2
    # needs about 2 us each (bound 100x that, for a loaded shared machine).
    start = time.perf_counter()
    for _ in range(4_000):
        rx.fullmatch("a" * 40 + "!")
    assert time.perf_counter() - start < 1.0
    assert rx.fullmatch("a" * 40)


def test_fullmatch_is_anchored_at_both_ends() -> None:
    rx = Regex(r"/v[0-9]+/items")
    assert rx.fullmatch("/v2/items")
    assert not rx.fullmatch("/v2/items/x")
    assert not rx.fullmatch("x/v2/items")
    # An alternation is anchored as a whole, not only its first branch.
    alt = Regex(r"/a|/b")
    assert alt.fullmatch("/b")
    assert not alt.fullmatch("/bc")


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "invalid escape sequence"),  # backreference
        (r"/a(?=b)", "invalid perl operator"),  # lookahead
        (r"(?<!x)/a", "invalid"),  # lookbehind
        (r"/a\Z", "invalid escape sequence"),  # Python-only escape
        (r"/a([", "missing"),
        (r"a{1001}", "invalid repetition size"),
    ],
)
def test_re2_rejects_what_it_cannot_run(pattern: str, reason: str) -> None:
    with pytest.raises(RegexError, match=re.escape(reason)):
        Regex(pattern)
    problem = regex_problem(pattern)
    assert problem is not None
    assert reason in problem
    assert "RE2" in problem


def test_pattern_over_the_memory_budget_is_rejected() -> None:
    # 80 alternated blocks of 1,000 any-characters: far over MAX_MEM once compiled.
    huge = "(?:" + "|".join(f"{i}.{{1000}}" for i in range(80)) + ")"
    problem = regex_problem(huge)
    assert problem is not None
    assert "pattern too large" in problem
    assert f"{MAX_MEM // 1024} KiB" in problem


def test_large_legal_pattern_compiles_and_matches() -> None:
    words = [f"/w{i:04d}" for i in range(2_000)]
    rx = Regex("(?:" + "|".join(words) + ")+")
    assert regex_problem(rx.pattern) is None
    assert rx.fullmatch("".join(words[::7]))
    assert not rx.fullmatch("".join(words[::7]) + "/nope")


def test_regex_pickles_by_pattern() -> None:
    rx = Regex(r"/api/[a-z]+")
    back = pickle.loads(pickle.dumps(rx))
    assert isinstance(back, Regex)
    assert back.pattern == rx.pattern
    assert back.fullmatch("/api/users")
    assert not back.fullmatch("/api/Users")


def test_unicode_and_unencodable_text_never_raise() -> None:
    rx = Regex("/caf\u00e9.*")
    assert rx.fullmatch("/caf\u00e9/menu")
    # Lone surrogates cannot be UTF-8 encoded strictly; matching must still answer.
    assert not rx.fullmatch("/\ud800")
    assert regex_problem("\ud800") is not None


def test_escape_matches_the_literal() -> None:
    text = "a.b*c(d)[e]{f}|g^h$i\\j?k+"
    assert Regex(escape(text)).fullmatch(text)
    assert not Regex(escape(text)).fullmatch("aXb*c(d)[e]{f}|g^h$i\\j?k+")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=64))
def test_never_matches_nothing(text: str) -> None:
    assert not NEVER.fullmatch(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab/-", max_size=24))
def test_agrees_with_python_re_on_shared_syntax(text: str) -> None:
    for pattern in (r"/a+(/b)?", r"(a|b)*/", r"[ab]{2,4}-?", r"/(?:ab)+/?"):
        assert Regex(pattern).fullmatch(text) == (re.fullmatch(pattern, text) is not None)


# --------------------------------------------------------------------------- sets

# Patterns whose DFA needs many states ('a' exactly N characters before the end), the
# case where a set's DFA cache fills up and must still answer.
DFA_HEAVY = [f"/[ab]*a[ab]{{{n}}}" for n in (8, 15, 21)] + ["/(a+)+", "/b.*", "/[ab]{3}"]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab", max_size=3000).map(lambda t: "/" + t))
def test_set_agrees_with_each_regex(text: str) -> None:
    regex_set = RegexSet(DFA_HEAVY)
    want = [i for i, p in enumerate(DFA_HEAVY) if Regex(p).fullmatch(text)]
    assert regex_set.matching(text) == want


def test_set_pickles_by_patterns() -> None:
    regex_set = RegexSet(["/a+", "/b+", "/a.*"])
    back = pickle.loads(pickle.dumps(regex_set))
    assert back.patterns == regex_set.patterns
    assert back.matching("/aaa") == [0, 2]
    assert back.matching("/c") == []


def _big(tag: str) -> str:
    # Fits MAX_MEM alone (each '.' is several UTF-8 instructions), but two do not fit
    # one set.
    return f"/{tag}(?:" + "|".join(f"{i}.{{1000}}" for i in range(5)) + ")"


def test_set_over_budget_is_refused_and_the_table_asks_each_regex() -> None:
    assert regex_problem(_big("a")) is None
    with pytest.raises(RegexError, match="memory budget"):
        RegexSet([_big("a"), _big("b")])
    t = table(
        http("big-a", rule(match(_big("a"), REGEX))), http("big-b", rule(match(_big("b"), REGEX)))
    )
    assert get(t, "/b3" + "x" * 1000) == "big-b/0"
    assert get(t, "/a0" + "x" * 1000) == "big-a/0"
    assert get(t, "/a0" + "x" * 999) is None


def test_table_with_many_regexes_matches_like_one_at_a_time() -> None:
    routes = [http(f"r{i}", rule(match(f"/api/v{i}/[a-z]+/[0-9]+", REGEX))) for i in range(20)]
    t = table(*routes)
    assert get(t, "/api/v7/users/12") == "r7/0"
    assert get(t, "/api/v19/users/12") == "r19/0"
    assert get(t, "/api/v7/Users/12") is None


# --------------------------------------------------------------------------- status

M0 = "rules[0].matches[0]"


def _docs(kind: str, rule: dict[str, Any], name: str = "r") -> str:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "gatewayd"},
            "spec": {"controllerName": "gatewayd.dev/gateway-controller"},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "ns"},
            "spec": {
                "gatewayClassName": "gatewayd",
                "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [rule]},
        },
    ]
    return "\n---\n".join(json.dumps(d) for d in docs)


def _accepted(kind: str, rule: dict[str, Any]) -> dict[str, Any]:
    loaded = load_documents([("t.yaml", _docs(kind, rule))])
    # Admitted: the CRD has no rule for RegularExpression values.
    assert loaded.problems == (), [str(p) for p in loaded.problems]
    res = resolve(loaded.config)
    [st] = [s for s in res.statuses if s.kind == kind]
    parents: list[dict[str, Any]] = st.status["parents"]  # type: ignore[assignment]
    accepted: list[dict[str, Any]] = [
        c for c in parents[0]["conditions"] if c["type"] == "Accepted"
    ]
    return accepted[0]


@pytest.mark.parametrize(
    ("match", "field"),
    [
        ({"path": {"type": "RegularExpression", "value": "/a(?=b)"}}, f"{M0}.path.value"),
        (
            {"headers": [{"type": "RegularExpression", "name": "x", "value": r"(a)\1"}]},
            f"{M0}.headers[0].value",
        ),
        (
            {"queryParams": [{"type": "RegularExpression", "name": "q", "value": "(?!x)"}]},
            f"{M0}.queryParams[0].value",
        ),
    ],
    ids=["path", "header", "query"],
)
def test_re2_invalid_pattern_refuses_the_route(match: dict[str, Any], field: str) -> None:
    cond = _accepted("HTTPRoute", {"matches": [{"path": {"value": "/ok"}}, match]})
    field = field.replace("matches[0]", "matches[1]")
    assert cond["status"] == "False"
    assert cond["reason"] == "UnsupportedValue"
    assert cond["message"].startswith(f"{field}: invalid regular expression")
    assert "RE2 cannot compile it" in cond["message"]


def test_re2_valid_patterns_are_accepted() -> None:
    cond = _accepted(
        "HTTPRoute",
        {
            "matches": [
                {
                    "path": {"type": "RegularExpression", "value": r"/v[0-9]+/\pL+"},
                    "headers": [{"type": "RegularExpression", "name": "x", "value": "(a+)+$"}],
                }
            ]
        },
    )
    assert (cond["status"], cond["reason"]) == ("True", "Accepted")


def test_grpc_method_regex_is_checked_with_re2() -> None:
    rule = {"matches": [{"method": {"type": "RegularExpression", "method": "(?=Get)"}}]}
    cond = _accepted("GRPCRoute", rule)
    assert (cond["status"], cond["reason"]) == ("False", "UnsupportedValue")
    assert cond["message"].startswith("rules[0].matches[0].method.method: invalid regular")
    assert "RE2 cannot compile it" in cond["message"]


def test_compiled_table_skips_nothing_valid_and_serves_re2_syntax() -> None:
    loaded = load_documents(
        [
            (
                "t.yaml",
                _docs(
                    "HTTPRoute",
                    {"matches": [{"path": {"type": "RegularExpression", "value": r"/\pL+/(a+)+"}}]},
                ),
            )
        ]
    )
    snapshot = compile_snapshot(resolve(loaded.config), generation=1)
    [listener_port] = snapshot.ports.values()
    table = listener_port.table
    assert table.lookup("x", "GET", "/\u00e9t\u00e9/aaaa", "", {}) is not None
    assert table.lookup("x", "GET", "/1/aaaa", "", {}) is None
    assert table.lookup("x", "GET", "/abc/" + "a" * 40 + "!", "", {}) is None
