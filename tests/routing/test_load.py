"""Document-level loading: files, YAML streams, Lists, kinds, namespaces, generations."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.routing.config import model as m
from gatewayd.routing.config.load import (
    ConfigPathError,
    LoadResult,
    load_documents,
    load_paths,
    read_config_files,
    spec_digest,
)

DATA = Path(__file__).parent / "data"

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}
  namespace: {ns}
spec:
  parentRefs: [{{name: gw}}]
"""

GATEWAY_CLASS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gc}
spec: {controllerName: example.com/gc}
"""


def route(name: str = "r", ns: str = "ns") -> str:
    return ROUTE.format(name=name, ns=ns)


def texts(result: LoadResult) -> list[str]:
    return [str(p) for p in result.problems]


def load_text(text: str, filename: str = "f.yaml") -> LoadResult:
    return load_documents([(filename, text)])


# --------------------------------------------------------------------------- streams


def test_multi_document_and_empty_documents() -> None:
    text = "---\n" + route("a") + "---\n---\n# only a comment\n---\n" + route("b") + "...\n"
    result = load_text(text)
    assert texts(result) == []
    assert [(r.meta.name, r.meta.source.index) for r in result.config.http_routes] == [
        ("a", 0),
        ("b", 3),
    ]
    assert all(r.meta.source.file == "f.yaml" for r in result.config.http_routes)


def test_list_kind_items_use_the_document_index() -> None:
    items = [
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "svc"},
            "spec": {"ports": [{"port": "http"}]},
        },
        "not an object",
    ]
    text = (
        GATEWAY_CLASS + "---\n" + json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    result = load_text(text)
    assert [r.meta.name for r in result.config.http_routes] == ["a"]
    assert result.config.http_routes[0].meta.source == m.Source(file="f.yaml", index=1)
    assert texts(result) == [
        "f.yaml:1: Service default/svc: items[1].spec.ports[0].port: must be an integer, got "
        'string "http"',
        'f.yaml:1: items[2]: must be an object with apiVersion and kind, got string "not an '
        'object"',
    ]


def test_typed_list_kind_is_accepted() -> None:
    doc = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRouteList",
        "items": [
            json.loads(
                json.dumps(
                    {
                        "apiVersion": "gateway.networking.k8s.io/v1",
                        "kind": "HTTPRoute",
                        "metadata": {"name": "a"},
                        "spec": {},
                    }
                )
            )
        ],
    }
    result = load_text(json.dumps(doc))
    assert texts(result) == []
    assert [r.meta.name for r in result.config.http_routes] == ["a"]


def test_unknown_kinds_get_one_notice_per_kind() -> None:
    docs = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"d{i}"}}
        for i in range(3)
    ] + [
        {
            "apiVersion": "gateway.networking.k8s.io/v1alpha2",
            "kind": "BackendTrafficPolicy",
            "metadata": {"name": "t"},
        },
        # Another project's kind that happens to be called Service: not ours, skipped.
        {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "k"}},
    ]
    result = load_text("\n---\n".join(json.dumps(d) for d in docs))
    assert result.problems == ()
    assert result.notices == (
        "skipped 3 Deployment objects: not a kind gatewayd reads",
        "skipped 1 BackendTrafficPolicy object: not a kind gatewayd reads",
        "skipped 1 Service (serving.knative.dev/v1) object: not a kind gatewayd reads",
    )


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [
        (
            "gateway.networking.k8s.io/v1alpha1",
            "HTTPRoute",
            'f.yaml:0: HTTPRoute default/x: apiVersion: "gateway.networking.k8s.io/v1alpha1" is '
            "not served for "
            "HTTPRoute; use gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1beta1",
        ),
        (
            "v1",
            "Gateway",
            'f.yaml:0: Gateway default/x: apiVersion: "v1" is not served for Gateway; use '
            "gateway.networking.k8s.io/v1 or gateway.networking.k8s.io/v1beta1",
        ),
        (
            "discovery.k8s.io/v1beta1",
            "EndpointSlice",
            "f.yaml:0: EndpointSlice default/x: apiVersion: "
            '"discovery.k8s.io/v1beta1" is not served for EndpointSlice; use discovery.k8s.io/v1',
        ),
        (
            "gateway.networking.k8s.io/v1",
            "Service",
            'f.yaml:0: Service default/x: apiVersion: "gateway.networking.k8s.io/v1" is not '
            "served for Service; use v1",
        ),
    ],
)
def test_wrong_api_version_is_a_problem(api_version: str, kind: str, expected: str) -> None:
    result = load_text(
        json.dumps({"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}, "spec": {}})
    )
    assert texts(result) == [expected]
    assert result.notices == ()


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            {"apiVersion": "v1", "metadata": {"name": "n"}},
            "f.yaml:0: kind: is required: a string such as HTTPRoute",
        ),
        (
            {"apiVersion": "v1", "kind": 3},
            "f.yaml:0: kind: is required: a string such as HTTPRoute, got integer 3",
        ),
        (
            {"kind": "Service", "metadata": {"name": "n"}},
            "f.yaml:0: Service n: apiVersion: is required: a string such as "
            "gateway.networking.k8s.io/v1",
        ),
        (
            ["a", "list"],
            "f.yaml:0: a document must be a mapping with apiVersion and kind, got a list",
        ),
        (
            "just text",
            'f.yaml:0: a document must be a mapping with apiVersion and kind, got string "just '
            'text"',
        ),
    ],
)
def test_documents_without_identity(doc: object, expected: str) -> None:
    assert texts(load_text(json.dumps(doc))) == [expected]


def test_broken_yaml_names_file_and_line_and_other_files_still_load() -> None:
    broken = (
        route("before") + "---\nkind: HTTPRoute\nmetadata: {name: [oops\n---\n" + route("after")
    )
    result = load_documents([("a.yaml", broken), ("b.yaml", route("other"))])
    assert [r.meta.name for r in result.config.http_routes] == ["before", "other"]
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert problem.source == m.Source(file="a.yaml", index=1)
    assert str(problem).startswith("a.yaml:1: invalid YAML at line ")
    assert "the rest of this file is not read" in problem.message


def test_yaml_error_reports_its_line() -> None:
    result = load_text("a: 1\nb: [1\nc: 'x\n")
    assert len(result.problems) == 1
    assert "invalid YAML at line 3, column 2" in result.problems[0].message


def test_timestamps_stay_strings() -> None:
    text = route() + "  hostnames: [a.example]\n"
    text = text.replace(
        "  namespace: ns\n", "  namespace: ns\n  creationTimestamp: 2024-05-01T10:00:00Z\n"
    )
    result = load_text(text)
    assert texts(result) == []
    assert result.config.http_routes[0].meta.creation_timestamp == "2024-05-01T10:00:00Z"


def test_unknown_top_level_and_metadata_fields() -> None:
    text = route() + "extra: 1\n"
    text = text.replace("  namespace: ns\n", "  namespace: ns\n  namepsace: other\n")
    result = load_text(text)
    assert texts(result) == [
        'f.yaml:0: HTTPRoute ns/r: metadata: unknown field "namepsace" (did you mean '
        '"namespace"?); allowed: '
        "annotations, creationTimestamp, deletionGracePeriodSeconds, deletionTimestamp, "
        "finalizers, "
        "generateName, generation, labels, managedFields, name, namespace, ownerReferences, "
        "resourceVersion, selfLink, uid",
        'f.yaml:0: HTTPRoute ns/r: unknown field "extra"; allowed: apiVersion, kind, metadata, '
        "spec, status",
    ]
    assert result.config.http_routes == ()


@pytest.mark.parametrize(
    ("metadata", "field", "fragment"),
    [
        (None, "metadata", "is required"),
        ([], "metadata", "must be a mapping, got a list"),
        ({}, "metadata.name", "is required"),
        ({"name": 5}, "metadata.name", "must be a string, got integer 5"),
        ({"name": "Bad_Name"}, "metadata.name", "is not a DNS subdomain"),
        ({"name": "a" * 254}, "metadata.name", "at most 253 characters"),
        ({"name": "a", "namespace": "Bad"}, "metadata.namespace", "is not a DNS label"),
        (
            {"name": "a", "labels": ["x"]},
            "metadata.labels",
            "must be a mapping of strings, got a list",
        ),
        (
            {"name": "a", "labels": {"on": True}},
            "metadata.labels.on",
            "must be a string, got boolean true",
        ),
        ({"name": "a", "generation": "2"}, "metadata.generation", "must be an integer"),
        ({"name": "a", "generation": 0}, "metadata.generation", "must be at least 1"),
    ],
)
def test_metadata_problems(metadata: object, field: str, fragment: str) -> None:
    doc: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "spec": {},
    }
    if metadata is not None:
        doc["metadata"] = metadata
    result = load_text(json.dumps(doc))
    assert result.config.http_routes == ()
    assert any(p.field == field and fragment in p.message for p in result.problems), texts(result)


# --------------------------------------------------------------------------- never raise

WEIRD_SPECS: list[object] = [
    [],
    "spec",
    5,
    None,
    True,
    {"rules": "x"},
    {"rules": [None, 1, [], "a"]},
    {"rules": [{"matches": {"path": "/"}}]},
    {"rules": [{"matches": [{"path": []}]}]},
    {"rules": [{"backendRefs": [{"name": ["x"], "port": {"a": 1}, "weight": 1.5}]}]},
    {"rules": [{"filters": [{"type": ["RequestRedirect"]}]}]},
    {"rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": "yes"}]}]},
    {"rules": [{"timeouts": {"request": 5}}]},
    {"parentRefs": {"name": "gw"}},
    {"hostnames": "a.example"},
    {"listeners": [{"tls": {"options": ["a"]}}]},
    {1: "int key"},
    {"rules": [{"matches": [{"headers": [{"name": None, "value": None}]}]}]},
    {"rules": [{"retry": {"codes": "500"}}]},
    {"rules": [{"sessionPersistence": []}]},
]
KINDS = [
    "GatewayClass",
    "Gateway",
    "HTTPRoute",
    "GRPCRoute",
    "TLSRoute",
    "ReferenceGrant",
    "ListenerSet",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", WEIRD_SPECS, ids=range(len(WEIRD_SPECS)))
def test_wrong_types_never_raise(kind: str, spec: object) -> None:
    doc = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": spec,
    }
    # safe_dump keeps the integer key of one case an integer in the YAML.
    result = load_text(yaml.safe_dump(doc))
    assert result.problems, "every one of these specs is invalid"
    # Nothing loads; a kind whose status gatewayd writes is kept as rejected, alone.
    assert replace(result.config, rejected=()) == m.Config()
    reported = kind in ("Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute", "ListenerSet")
    assert [(r.kind.value, r.meta.name) for r in result.config.rejected] == (
        [(kind, "x")] if reported else []
    )
    for p in result.problems:
        assert p.source == m.Source(file="f.yaml", index=0)
        assert p.kind == kind and p.name == "x" and p.message
        assert "could not read this object" not in p.message


@pytest.mark.parametrize(
    "text",
    [
        "[" * 5000,  # deeper than the YAML composer recurses
        "a: &a [*a]\n",  # a recursive alias
        "apiVersion: v1\nkind: ConfigMap\nmetadata: &m {name: c, labels: *m}\n",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: !!binary aGVsbG8=\n",
        "? [a, b]\n: c\n",  # an unhashable key
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: !!set {a, b}\n",
        "\x00\x01",
        "apiVersion: v1\nkind: List\nitems: [{kind: List, apiVersion: v1, items: []}]\n",
        "apiVersion: v1\nkind: List\nitems: 3\n",
    ],
)
def test_hostile_yaml_never_raises(text: str) -> None:
    result = load_text(text)
    assert result.problems, "expected the input to be reported"


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 70000)
    | st.text(max_size=8)
    | st.sampled_from(
        ["/", "Exact", "PathPrefix", "RequestRedirect", "HTTPS", "TLS", "Service", "80"]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "name",
                    "rules",
                    "matches",
                    "path",
                    "value",
                    "type",
                    "filters",
                    "backendRefs",
                    "port",
                    "listeners",
                    "protocol",
                    "tls",
                    "mode",
                    "hostnames",
                    "parentRefs",
                    "requestRedirect",
                    "headers",
                    "weight",
                    "from",
                    "to",
                    "method",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(
        [*KINDS, "Service", "EndpointSlice", "Secret", "ConfigMap", "Pod", "Namespace"]
    ),
    body=JSONISH,
)
def test_random_bodies_never_raise(kind: str, body: object) -> None:
    api = {
        "Service": "v1",
        "Secret": "v1",
        "ConfigMap": "v1",
        "Pod": "v1",
        "Namespace": "v1",
        "EndpointSlice": "discovery.k8s.io/v1",
    }.get(kind, "gateway.networking.k8s.io/v1")
    doc = {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": "x"},
        "spec": body,
        "data": body,
        "endpoints": body,
    }
    result = load_text(json.dumps(doc))
    assert all("could not read this object" not in p.message for p in result.problems), texts(
        result
    )


# --------------------------------------------------------------------------- namespaces


def test_missing_namespace_means_default_and_cluster_scoped_get_empty() -> None:
    text = (
        route().replace("  namespace: ns\n", "")
        + "---\n"
        + GATEWAY_CLASS.replace("metadata: {name: gc}", "metadata: {name: gc, namespace: ignored}")
    )
    result = load_text(text)
    assert texts(result) == []
    assert result.config.http_routes[0].meta.namespace == "default"
    assert result.config.gateway_classes[0].meta.namespace == ""
    assert [n.meta.name for n in result.config.namespaces] == ["default"]


def test_implied_namespaces_and_their_labels() -> None:
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "declared",
                "labels": {"team": "a", "kubernetes.io/metadata.name": "wrong"},
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "gws"},
            "spec": {
                "gatewayClassName": "gc",
                "listeners": [
                    {
                        "name": "s",
                        "port": 443,
                        "protocol": "HTTPS",
                        "tls": {"certificateRefs": [{"name": "c", "namespace": "certs"}]},
                    }
                ],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "declared"},
            "spec": {
                "parentRefs": [
                    {"name": "gw", "namespace": "gws"},
                    {"name": "gw2", "namespace": "parents"},
                ],
                "rules": [
                    {
                        "backendRefs": [{"name": "s", "namespace": "backends", "port": 80}],
                        "filters": [
                            {
                                "type": "RequestMirror",
                                "requestMirror": {
                                    "backendRef": {"name": "m", "namespace": "mirrors", "port": 80}
                                },
                            }
                        ],
                    }
                ],
            },
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1beta1",
            "kind": "ReferenceGrant",
            "metadata": {"name": "g", "namespace": "backends"},
            "spec": {
                "from": [
                    {
                        "group": "gateway.networking.k8s.io",
                        "kind": "HTTPRoute",
                        "namespace": "grantees",
                    }
                ],
                "to": [{"group": "", "kind": "Service"}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "configs"},
        },
    ]
    result = load_text("\n---\n".join(json.dumps(d) for d in docs))
    assert texts(result) == []
    namespaces = {n.meta.name: n.meta.labels for n in result.config.namespaces}
    assert namespaces == {
        "declared": (("team", "a"), ("kubernetes.io/metadata.name", "declared")),
        **{
            name: (("kubernetes.io/metadata.name", name),)
            for name in ("backends", "certs", "configs", "grantees", "gws", "mirrors", "parents")
        },
    }
    assert result.config.namespaces[0].meta.name == "declared"
    assert all(n.meta.namespace == "" for n in result.config.namespaces)


def test_rejected_objects_imply_no_namespace() -> None:
    result = load_text(route("r", "lonely").replace("parentRefs: [{name: gw}]", "parentRefs: 5"))
    assert result.problems and result.config.namespaces == ()


# --------------------------------------------------------------------------- Secret / ConfigMap


def test_secret_data_and_string_data() -> None:
    text = """\
apiVersion: v1
kind: Secret
metadata: {name: tls, namespace: web}
type: kubernetes.io/tls
data:
  tls.crt: Y2VydA==
  tls.key: a2V5
  wrapped: |
    aGVs
    bG8=
stringData:
  tls.key: plain-key
  note: héllo
"""
    result = load_text(text)
    assert texts(result) == []
    secret = result.config.secrets[0]
    assert secret.type == "kubernetes.io/tls"
    assert secret.get("tls.crt") == b"cert"
    assert secret.get("tls.key") == b"plain-key"  # stringData wins over data
    assert secret.get("wrapped") == b"hello"
    assert secret.get("note") == "héllo".encode()
    assert secret.get("missing") is None


def test_secret_default_type_and_invalid_base64() -> None:
    ok = load_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    assert ok.config.secrets[0].type == "Opaque" and ok.config.secrets[0].data == ()
    bad = load_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: 'a=b'}\n")
    assert texts(bad) == [
        "f.yaml:0: Secret default/s: data.k: is not valid base64 (data values are "
        "base64-encoded; use stringData for plain text)"
    ]
    assert bad.config.secrets == ()


def test_config_map_data_and_binary_data() -> None:
    result = load_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        "data: {ca.crt: PEM}\nbinaryData: {other: aGk=}\n"
    )
    assert texts(result) == []
    cm = result.config.config_maps[0]
    assert cm.get("ca.crt") == "PEM" and cm.get("other") == "hi"


# --------------------------------------------------------------------------- duplicates


def test_duplicate_objects_first_wins() -> None:
    first = route("r").replace("name: gw", "name: first")
    second = route("r").replace("name: gw", "name: second")
    result = load_documents(
        [("a.yaml", first), ("b.yaml", "---\n" + GATEWAY_CLASS + "---\n" + second)]
    )
    assert texts(result) == [
        "b.yaml:1: HTTPRoute ns/r: already defined at a.yaml:0; this later definition is ignored"
    ]
    assert [r.parent_refs[0].name for r in result.config.http_routes] == ["first"]


def test_same_name_in_other_namespace_or_kind_is_not_a_duplicate() -> None:
    text = (
        route("r", "a") + "---\n" + route("r", "b") + "---\n" + GATEWAY_CLASS.replace("gc}", "r}")
    )
    result = load_text(text)
    assert texts(result) == []
    assert len(result.config.http_routes) == 2 and len(result.config.gateway_classes) == 1


# --------------------------------------------------------------------------- generations


def test_generation_tracking_across_loads() -> None:
    v1 = route("r") + "  hostnames: [a.example]\n"
    first = load_text(v1)
    assert first.config.http_routes[0].meta.generation == 1
    key = ("HTTPRoute", "ns", "r")
    assert first.generations[key] == (spec_digest(_doc(v1)), 1)

    # Same spec, other metadata/status or another file: unchanged generation.
    relabelled = (
        v1.replace("  namespace: ns\n", "  namespace: ns\n  labels: {a: b}\n") + "status: {x: 1}\n"
    )
    again = load_documents([("moved.yaml", relabelled)], previous=first.generations)
    assert again.config.http_routes[0].meta.generation == 1
    assert again.generations == first.generations

    # Changed spec: previous + 1, and again + 1 on the next change.
    v2 = v1.replace("a.example", "b.example")
    second = load_documents([("f.yaml", v2)], previous=first.generations)
    assert second.config.http_routes[0].meta.generation == 2
    v3 = v1.replace("a.example", "c.example")
    third = load_documents([("f.yaml", v3)], previous=second.generations)
    assert third.config.http_routes[0].meta.generation == 3
    unchanged = load_documents([("f.yaml", v3)], previous=third.generations)
    assert unchanged.config.http_routes[0].meta.generation == 3

    # A rejected update keeps the last generation; fixing it is one change.
    broken = v1.replace("hostnames: [a.example]", "hostnames: [Bad]")
    rejected = load_documents([("f.yaml", broken)], previous=third.generations)
    assert rejected.config.http_routes == ()
    assert rejected.generations[key] == third.generations[key]
    fixed = load_documents(
        [("f.yaml", v1.replace("a.example", "d.example"))], previous=rejected.generations
    )
    assert fixed.config.http_routes[0].meta.generation == 4

    # An object that is gone is forgotten.
    assert load_documents(
        [("f.yaml", GATEWAY_CLASS)], previous=fixed.generations
    ).generations.keys() == {("GatewayClass", "", "gc")}


def test_generation_from_the_file_wins() -> None:
    text = route().replace("  namespace: ns\n", "  namespace: ns\n  generation: 7\n")
    result = load_documents([("f.yaml", text)], previous={("HTTPRoute", "ns", "r"): ("old", 2)})
    assert result.config.http_routes[0].meta.generation == 7
    assert result.generations[("HTTPRoute", "ns", "r")][1] == 7


def test_spec_digest_is_stable_and_ignores_metadata() -> None:
    a = {"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"b": 1, "a": [1, 2]}}
    b = {
        "spec": {"a": [1, 2], "b": 1},
        "kind": "X",
        "apiVersion": "v2",
        "metadata": {"name": "z"},
        "status": {},
    }
    assert spec_digest(a) == spec_digest(b)
    assert spec_digest(a) != spec_digest({**a, "spec": {"b": 2, "a": [1, 2]}})
    assert len(spec_digest(a)) == 64


def _doc(text: str) -> dict[str, object]:
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


# --------------------------------------------------------------------------- files


def test_read_config_paths_recurses_sorted_and_skips_hidden(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.yml").write_text(route("two"))
    (tmp_path / "b" / "1.yaml").write_text(route("one"))
    (tmp_path / "a.yaml").write_text(route("zero"))
    (tmp_path / "notes.txt").write_text("not yaml")
    (tmp_path / ".hidden.yaml").write_text(route("hidden"))
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "x.yaml").write_text(route("mounted"))
    single = tmp_path / "single.conf"
    single.write_text(route("single"))

    docs = read_config_files([tmp_path, str(single)]).files
    names = [Path(name).relative_to(tmp_path).as_posix() for name, _ in docs]
    assert names == ["a.yaml", "b/1.yaml", "b/2.yml", "single.conf"]
    assert docs[0][1] == route("zero")

    result = load_paths([tmp_path])
    assert [r.meta.name for r in result.config.http_routes] == ["zero", "one", "two"]
    assert result.config.http_routes[1].meta.source.file == str(tmp_path / "b" / "1.yaml")


def test_same_file_twice_is_read_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(route())
    assert len(read_config_files([tmp_path, tmp_path / "a.yaml"]).files) == 1


def test_missing_path_raises_config_path_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigPathError, match="does not exist"):
        read_config_files([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigPathError, match="does not exist"):
        load_paths([str(tmp_path / "nope")])


def test_unreadable_file_raises_config_path_error(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing-target.yaml", tmp_path / "dangling.yaml")
    with pytest.raises(ConfigPathError, match=r"cannot read config file .*dangling\.yaml"):
        read_config_files([tmp_path])
    binary = tmp_path / "other"
    binary.mkdir()
    (binary / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigPathError, match="not UTF-8 text"):
        read_config_files([binary])


def test_examples_load_cleanly() -> None:
    examples = Path(__file__).parents[2] / "examples"
    if not examples.is_dir():
        pytest.skip("no examples directory")
    result = load_paths([examples])
    assert texts(result) == []
    assert result.config.gateways and result.config.http_routes


# --------------------------------------------------------------------------- golden


def test_golden_invalid_config() -> None:
    source = DATA / "invalid-config.yaml"
    golden = DATA / "invalid-config.problems.txt"
    result = load_documents([(source.name, source.read_text(encoding="utf-8"))])
    rendered = (
        "\n".join(
            [
                *(str(p) for p in result.problems),
                "-- notices",
                *result.notices,
                "-- loaded",
                *(
                    f"{type(o).__name__} {o.meta.namespace}/{o.meta.name}"
                    for o in _all(result.config)
                ),
            ]
        )
        + "\n"
    )
    if os.environ.get("GATEWAYD_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered, encoding="utf-8")
    assert rendered == golden.read_text(encoding="utf-8")


def _all(config: m.Config) -> list[Any]:
    return [
        *config.gateway_classes,
        *config.gateways,
        *config.http_routes,
        *config.grpc_routes,
        *config.tls_routes,
        *config.reference_grants,
        *config.namespaces,
        *config.services,
        *config.endpoint_slices,
        *config.secrets,
        *config.config_maps,
        *config.pods,
    ]


def test_symlinked_directories_are_followed_once(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "r.yaml").write_text(route("linked"))
    conf = tmp_path / "conf"
    conf.mkdir()
    os.symlink(real, conf / "link")
    os.symlink(conf, conf / "loop")  # a loop back to the top
    names = [Path(name).relative_to(conf).as_posix() for name, _ in read_config_files([conf]).files]
    assert names == ["link/r.yaml"]


BACKEND_LB_POLICY = """
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: BackendLBPolicy
metadata: {name: lb, namespace: default}
spec:
  targetRefs:
  - {group: "", kind: Service, name: app}
  sessionPersistence:
    sessionName: sid
    absoluteTimeout: 1h
    idleTimeout: 10m
    cookieConfig: {lifetimeType: Permanent}
"""


def test_backend_lb_policy_loads() -> None:
    result = load_text(BACKEND_LB_POLICY)
    assert result.problems == ()
    [policy] = result.config.backend_lb_policies
    assert [(t.kind, t.name) for t in policy.target_refs] == [("Service", "app")]
    assert policy.session_persistence == m.SessionPersistence(
        session_name="sid",
        absolute_timeout=3600.0,
        idle_timeout=600.0,
        cookie_lifetime_type="Permanent",
    )


@pytest.mark.parametrize(
    ("spec_change", "where"),
    [
        # "+listType=map" keyed by group, kind, name: a target at most once.
        ('  - {group: "", kind: Service, name: app}\n', "spec.targetRefs[1]"),
        # CEL: AbsoluteTimeout must be specified when the lifetimeType is Permanent.
        ("absoluteTimeout", "spec.sessionPersistence.absoluteTimeout"),
    ],
)
def test_invalid_backend_lb_policy_is_rejected_alone(spec_change: str, where: str) -> None:
    if spec_change == "absoluteTimeout":
        text = BACKEND_LB_POLICY.replace("    absoluteTimeout: 1h\n", "")
    else:
        text = BACKEND_LB_POLICY.replace(
            "  sessionPersistence:", spec_change + "  sessionPersistence:"
        )
    result = load_text(text)
    assert result.config.backend_lb_policies == ()
    assert any(where in str(p) for p in result.problems), result.problems
    # Kept as rejected: its own status says why (ancestors: control/rejected.py).
    assert [(r.kind.value, r.meta.name) for r in result.config.rejected] == [
        ("BackendLBPolicy", "lb")
    ]
    [rejected] = result.config.rejected
    assert {t.name for t in rejected.target_refs} == {"app"}
