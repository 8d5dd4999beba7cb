"""Manifest fuzzing: mutated valid manifests never make the config flow raise.

Hypothesis takes a set of valid manifests (the examples plus one of every other kind
the loader reads), mutates them (fields dropped or replaced by values of the wrong
type, huge strings, odd Unicode, nulls, deep nesting, out-of-range numbers; raw text
cut or spliced) and runs each result through ``load_documents`` -> ``resolve`` ->
``compile_snapshot`` -> ``to_json`` and a pickle round trip (what the daemon does with
a snapshot).  Whatever is wrong must come back as ``Problem``s and conditions, never as
an exception: the daemon survives any edit of its config.  Bounded: a fixed number of
examples per run (well under 20 s together).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.routing.compile.compiler import compile_snapshot
from gatewayd.routing.config.load import load_documents
from gatewayd.routing.control.resolve import resolve
from gatewayd.tls.certs import self_signed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NOW = "2024-06-01T00:00:00Z"
GW = "gateway.networking.k8s.io/v1"

_CERT, _KEY = self_signed(
    ["example.com", "*.example.com"], days=3650, now=dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
)


def _extra_docs() -> list[dict[str, Any]]:
    """One valid object of each kind the examples leave out."""
    cert = _CERT.decode()
    key = _KEY.decode()
    return [
        {
            "apiVersion": GW,
            "kind": "Gateway",
            "metadata": {"name": "fuzz", "namespace": "demo"},
            "spec": {
                "gatewayClassName": "gatewayd",
                "allowedListeners": {"namespaces": {"from": "Same"}},
                "listeners": [
                    {"name": "http", "port": 8081, "protocol": "HTTP"},
                    {
                        "name": "https",
                        "port": 8444,
                        "protocol": "HTTPS",
                        "hostname": "*.example.com",
                        "tls": {"certificateRefs": [{"name": "fuzz-cert"}]},
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    },
                    {
                        "name": "tls",
                        "port": 8445,
                        "protocol": "TLS",
                        "hostname": "tls.example.com",
                        "tls": {"mode": "Passthrough"},
                    },
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "fuzz-cert", "namespace": "demo"},
            "stringData": {"tls.crt": cert, "tls.key": key},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "fuzz-ca", "namespace": "demo"},
            "data": {"ca.crt": cert},
        },
        {
            "apiVersion": GW,
            "kind": "HTTPRoute",
            "metadata": {"name": "fuzz-all", "namespace": "demo"},
            "spec": {
                "parentRefs": [{"name": "fuzz", "sectionName": "http"}],
                "hostnames": ["a.example.com", "*.example.org"],
                "rules": [
                    {
                        "name": "first",
                        "matches": [
                            {
                                "path": {"type": "RegularExpression", "value": r"/v[0-9]+/(a+)+"},
                                "headers": [
                                    {"name": "x-a", "value": "1"},
                                    {"type": "RegularExpression", "name": "x-b", "value": "b.*"},
                                ],
                                "queryParams": [
                                    {"type": "RegularExpression", "name": "q", "value": "[0-9]+"}
                                ],
                                "method": "GET",
                            },
                            {"path": {"type": "Exact", "value": "/exact"}},
                        ],
                        "filters": [
                            {
                                "type": "RequestHeaderModifier",
                                "requestHeaderModifier": {
                                    "set": [{"name": "x-set", "value": "1"}],
                                    "remove": ["x-gone"],
                                },
                            },
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": {"name": "echo-v2", "port": 80},
                                    "percent": 50,
                                },
                            },
                        ],
                        "backendRefs": [
                            {"name": "echo-v1", "port": 80, "weight": 3},
                            {"name": "echo-v2", "port": 80, "weight": 1},
                        ],
                        "timeouts": {"request": "10s", "backendRequest": "2s"},
                        "retry": {"codes": [503], "attempts": 2, "backoff": "100ms"},
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
                        "filters": [
                            {
                                "type": "URLRewrite",
                                "urlRewrite": {
                                    "hostname": "new.example.com",
                                    "path": {
                                        "type": "ReplacePrefixMatch",
                                        "replacePrefixMatch": "/new",
                                    },
                                },
                            }
                        ],
                        "backendRefs": [{"name": "echo-v1", "port": 80}],
                        "sessionPersistence": {"sessionName": "s", "type": "Cookie"},
                    },
                ],
            },
        },
        {
            "apiVersion": GW,
            "kind": "HTTPRoute",
            "metadata": {"name": "fuzz-mesh", "namespace": "demo"},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "echo-v1", "port": 80}],
                "rules": [{"backendRefs": [{"name": "echo-v2", "port": 80}]}],
            },
        },
        {
            "apiVersion": GW,
            "kind": "GRPCRoute",
            "metadata": {"name": "fuzz-grpc", "namespace": "demo"},
            "spec": {
                "parentRefs": [{"name": "fuzz"}],
                "rules": [
                    {
                        "matches": [
                            {
                                "method": {
                                    "type": "RegularExpression",
                                    "service": r"pkg\.S.*",
                                    "method": "Get.*",
                                },
                                "headers": [{"name": "x-a", "value": "1"}],
                            }
                        ],
                        "backendRefs": [{"name": "echo-v1", "port": 80}],
                    }
                ],
            },
        },
        {
            "apiVersion": GW,
            "kind": "TLSRoute",
            "metadata": {"name": "fuzz-tls", "namespace": "demo"},
            "spec": {
                "parentRefs": [{"name": "fuzz", "sectionName": "tls"}],
                "hostnames": ["tls.example.com"],
                "rules": [{"backendRefs": [{"name": "echo-v1", "port": 80}]}],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1beta1",
            "kind": "ReferenceGrant",
            "metadata": {"name": "fuzz-grant", "namespace": "demo"},
            "spec": {
                "from": [
                    {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "x"}
                ],
                "to": [{"group": "", "kind": "Service"}],
            },
        },
        {
            "apiVersion": GW,
            "kind": "BackendTLSPolicy",
            "metadata": {"name": "fuzz-btls", "namespace": "demo"},
            "spec": {
                "targetRefs": [{"group": "", "kind": "Service", "name": "echo-v2"}],
                "validation": {
                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "fuzz-ca"}],
                    "hostname": "echo.example.com",
                },
            },
        },
        {
            "apiVersion": GW,
            "kind": "ListenerSet",
            "metadata": {"name": "fuzz-ls", "namespace": "demo"},
            "spec": {
                "parentRef": {"name": "fuzz"},
                "listeners": [
                    {"name": "extra", "port": 8081, "protocol": "HTTP", "hostname": "ls.example"},
                    {
                        "name": "extra-tls",
                        "port": 8444,
                        "protocol": "HTTPS",
                        "hostname": "ls.example.com",
                        "tls": {"certificateRefs": [{"name": "fuzz-cert"}]},
                    },
                ],
            },
        },
        {
            "apiVersion": GW,
            "kind": "HTTPRoute",
            "metadata": {"name": "fuzz-ls-route", "namespace": "demo"},
            "spec": {
                "parentRefs": [{"kind": "ListenerSet", "name": "fuzz-ls", "sectionName": "extra"}],
                "rules": [{"backendRefs": [{"name": "echo-v1", "port": 80}]}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "client", "namespace": "demo"},
            "status": {"podIPs": [{"ip": "10.9.0.1"}]},
        },
    ]


def _seed_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
    docs.extend(_extra_docs())
    return docs


SEEDS = _seed_docs()


def _run(text: str) -> None:
    """The whole config flow on one file; any exception fails the test."""
    loaded = load_documents([("fuzz.yaml", text)])
    res = resolve(loaded.config, now=NOW)
    snapshot = compile_snapshot(res, generation=1)
    json.dumps(snapshot.to_json(), default=str)
    for st_ in res.statuses:
        json.dumps(st_.as_item(), default=str)
    for p in (*loaded.problems, *res.problems):
        assert str(p)
    pickle.loads(pickle.dumps(snapshot))


def test_seeds_are_valid_and_serve() -> None:
    loaded = load_documents([("seed.yaml", yaml.safe_dump_all(SEEDS))])
    assert loaded.problems == (), [str(p) for p in loaded.problems]
    res = resolve(loaded.config, now=NOW)
    snapshot = compile_snapshot(res, generation=1)
    assert snapshot.ports, "the seeds must program listeners (else the fuzz tests little)"


# --------------------------------------------------------------------------- mutations

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_weird_text = st.one_of(
    _text,
    st.just(""),
    st.just("\u202e\u0000\ufeff\U0001f600"),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "a" * n),
    st.sampled_from(["(a+)+$", "(?=x)", r"(a)\1", "[", "*", "/../..", "%2F", "-1", "1e999"]),
)
_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 65535, 65536, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, _weird_text)


def _deep(depth: int) -> object:
    value: object = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.dictionaries(_text, _scalars, max_size=4),
    st.integers(min_value=10, max_value=60).map(_deep),
    st.integers(min_value=17, max_value=80).map(lambda n: [{"name": f"n{i}"} for i in range(n)]),
)


def _containers(node: object, out: list[object]) -> None:
    if isinstance(node, dict):
        out.append(node)
        for v in node.values():
            _containers(v, out)
    elif isinstance(node, list):
        out.append(node)
        for v in node:
            _containers(v, out)


@st.composite
def _mutated(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs = copy.deepcopy(SEEDS)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        doc = draw(st.sampled_from(docs))
        spots: list[object] = []
        _containers(doc, spots)
        spot = draw(st.sampled_from(spots))
        if isinstance(spot, dict):
            if not spot:
                spot["k"] = draw(_values)
                continue
            key = draw(st.sampled_from(sorted(spot, key=str)))
            action = draw(st.sampled_from(["drop", "replace", "add"]))
            if action == "drop":
                del spot[key]
            elif action == "replace":
                spot[key] = draw(_values)
            else:
                spot[draw(_text)] = draw(_values)
        elif isinstance(spot, list):
            action = draw(st.sampled_from(["drop", "replace", "append", "duplicate"]))
            if not spot or action == "append":
                spot.append(draw(_values))
            elif action == "drop":
                spot.pop(draw(st.integers(min_value=0, max_value=len(spot) - 1)))
            elif action == "replace":
                spot[draw(st.integers(min_value=0, max_value=len(spot) - 1))] = draw(_values)
            else:
                spot.extend(copy.deepcopy(spot))
    return docs


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(_mutated())
def test_mutated_manifests_never_raise(docs: list[dict[str, Any]]) -> None:
    _run(yaml.safe_dump_all(docs, allow_unicode=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.floats(min_value=0.0, max_value=1.0),
    splice=st.text(max_size=30),
)
def test_cut_and_spliced_text_never_raises(cut: float, splice: str) -> None:
    text = yaml.safe_dump_all(SEEDS)
    at = int(len(text) * cut)
    _run(text[:at] + splice + text[at:])
    _run(text[:at])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "---\n---\n",
        "[]",
        "- 1\n- 2\n",
        "kind: HTTPRoute\n",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nspec: 5\n",
        "apiVersion: v1\nkind: List\nitems: [1, null, {kind: Service}]\n",
        "a: &a [*a]\n",  # a self-referencing alias
        "\ufeffkind: Gateway\n",
        "{" * 500 + "}" * 500,
    ],
)
def test_odd_documents_never_raise(text: str) -> None:
    _run(text)
