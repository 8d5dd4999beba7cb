"""``gatewayd status``: table formatting (golden strings) and the CLI against a real admin."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from gatewayd.proxy.admin import AdminServer, AdminState, start_admin
from gatewayd.statuscli import format_status_table, normalize_what, status_main

# --------------------------------------------------------------------------- sample items
# ObjectStatus.as_item() dicts in the Kubernetes status shape, deliberately unsorted and
# with a kind (ReferenceGrant) that no table shows.

GV = "gateway.networking.k8s.io/v1"


def cond(
    ctype: str, status: str = "True", reason: str = "", message: str = ""
) -> dict[str, object]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason or ctype,
        "message": message,
        "observedGeneration": 1,
        "lastTransitionTime": "2024-01-01T00:00:00Z",
    }


def item(kind: str, namespace: str, name: str, status: dict[str, object]) -> dict[str, object]:
    meta: dict[str, object] = {"name": name, "generation": 1}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": GV, "kind": kind, "metadata": meta, "status": status}


def parent(
    ns: str | None, name: str, section: str | None = None, **conds: tuple[str, str]
) -> dict[str, object]:
    ref: dict[str, object] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name}
    if ns:
        ref["namespace"] = ns
    if section:
        ref["sectionName"] = section
    return {
        "parentRef": ref,
        "controllerName": "gatewayd.io/gateway-controller",
        "conditions": [cond(t, s, r) for t, (s, r) in conds.items()],
    }


def listener(name: str, attached: int) -> dict[str, object]:
    return {
        "name": name,
        "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
        "attachedRoutes": attached,
        "conditions": [cond("Accepted"), cond("Programmed")],
    }


SAMPLE: list[dict[str, object]] = [
    item(
        "HTTPRoute",
        "default",
        "web",
        {
            "parents": [
                parent(
                    None,
                    "gw",
                    "http",
                    Accepted=("True", "Accepted"),
                    ResolvedRefs=("True", "ResolvedRefs"),
                ),
                parent(
                    "infra",
                    "shared",
                    None,
                    Accepted=("False", "NotAllowedByListeners"),
                    ResolvedRefs=("True", "ResolvedRefs"),
                ),
            ]
        },
    ),
    item(
        "HTTPRoute",
        "apps",
        "api",
        {
            "parents": [
                parent(
                    "default",
                    "gw",
                    None,
                    Accepted=("True", "Accepted"),
                    ResolvedRefs=("False", "BackendNotFound"),
                ),
            ]
        },
    ),
    item(
        "GatewayClass",
        "",
        "gatewayd",
        {"conditions": [cond("Accepted")], "supportedFeatures": [{"name": "HTTPRoute"}]},
    ),
    item(
        "GatewayClass",
        "",
        "other",
        {"conditions": [cond("Accepted", "False", "InvalidParameters")]},
    ),
    item(
        "Gateway",
        "default",
        "gw",
        {
            "addresses": [{"type": "IPAddress", "value": "10.0.0.10"}],
            "conditions": [cond("Accepted"), cond("Programmed")],
            "listeners": [listener("http", 2), listener("https", 0)],
        },
    ),
    item(
        "Gateway",
        "infra",
        "shared",
        {
            "addresses": [],
            "conditions": [
                cond("Accepted", "False", "UnsupportedAddress"),
                cond("Programmed", "False", "Invalid"),
            ],
            "listeners": [],
        },
    ),
    item(
        "GRPCRoute",
        "default",
        "grpc",
        {
            "parents": [
                parent(
                    None,
                    "gw",
                    None,
                    Accepted=("True", "Accepted"),
                    ResolvedRefs=("True", "ResolvedRefs"),
                ),
            ]
        },
    ),
    item("TLSRoute", "default", "orphan", {"parents": []}),
    item("ReferenceGrant", "default", "ignored", {}),
]


# --------------------------------------------------------------------------- formatting

GOLDEN_GATEWAYCLASSES = """\
NAME       CONTROLLER   ACCEPTED
gatewayd   -            True
other      -            False(InvalidParameters)
"""

GOLDEN_GATEWAYS = """\
NAMESPACE   NAME     ADDRESS     PROGRAMMED       LISTENERS
default     gw       10.0.0.10   True             http:2,https:0
infra       shared   -           False(Invalid)   -
"""

GOLDEN_HTTPROUTES = """\
NAMESPACE   NAME   PARENTS           ACCEPTED                       RESOLVEDREFS
apps        api    default/gw        True                           False(BackendNotFound)
default     web    default/gw/http   True                           True
default     web    infra/shared      False(NotAllowedByListeners)   True
"""

GOLDEN_GRPCROUTES = """\
NAMESPACE   NAME   PARENTS      ACCEPTED   RESOLVEDREFS
default     grpc   default/gw   True       True
"""

GOLDEN_TLSROUTES = """\
NAMESPACE   NAME     PARENTS   ACCEPTED   RESOLVEDREFS
default     orphan   -         -          -
"""


@pytest.mark.parametrize(
    ("what", "golden"),
    [
        ("gatewayclasses", GOLDEN_GATEWAYCLASSES),
        ("gateways", GOLDEN_GATEWAYS),
        ("httproutes", GOLDEN_HTTPROUTES),
        ("grpcroutes", GOLDEN_GRPCROUTES),
        ("tlsroutes", GOLDEN_TLSROUTES),
    ],
)
def test_section_tables(what: str, golden: str) -> None:
    assert format_status_table(SAMPLE, what) == golden


def test_all_prints_every_non_empty_section_with_a_header() -> None:
    assert format_status_table(SAMPLE, "all") == (
        f"# gatewayclasses\n{GOLDEN_GATEWAYCLASSES}\n"
        f"# gateways\n{GOLDEN_GATEWAYS}\n"
        f"# httproutes\n{GOLDEN_HTTPROUTES}\n"
        f"# grpcroutes\n{GOLDEN_GRPCROUTES}\n"
        f"# tlsroutes\n{GOLDEN_TLSROUTES}"
    )
    only_gateways = [it for it in SAMPLE if it["kind"] == "Gateway"]
    assert format_status_table(only_gateways, "all") == f"# gateways\n{GOLDEN_GATEWAYS}"


def test_empty_and_missing_fields() -> None:
    assert format_status_table([], "all") == "No resources found.\n"
    assert format_status_table(SAMPLE, "gateways") != "No resources found.\n"
    assert format_status_table([it for it in SAMPLE if it["kind"] == "Gateway"], "httproutes") == (
        "No resources found.\n"
    )
    # No status at all, unknown condition status, controller from spec when present,
    # parent with a port and a non-Gateway kind.
    items: list[dict[str, object]] = [
        {"kind": "Gateway", "metadata": {"namespace": "ns", "name": "bare"}},
        {
            "kind": "GatewayClass",
            "metadata": {"name": "gc"},
            "spec": {"controllerName": "gatewayd.io/gateway-controller"},
            "status": {
                "conditions": [{"type": "Accepted", "status": "Unknown", "reason": "Pending"}]
            },
        },
        {
            "kind": "HTTPRoute",
            "metadata": {"namespace": "ns", "name": "r"},
            "status": {
                "parents": [
                    {
                        "parentRef": {"kind": "Service", "name": "svc", "port": 8080},
                        "conditions": [{"type": "Accepted", "status": "False"}],
                    }
                ]
            },
        },
    ]
    assert format_status_table(items, "gateways") == (
        "NAMESPACE   NAME   ADDRESS   PROGRAMMED   LISTENERS\n"
        "ns          bare   -         -            -\n"
    )
    assert format_status_table(items, "gatewayclasses") == (
        "NAME   CONTROLLER                       ACCEPTED\n"
        "gc     gatewayd.io/gateway-controller   Unknown(Pending)\n"
    )
    assert format_status_table(items, "httproutes") == (
        "NAMESPACE   NAME   PARENTS               ACCEPTED   RESOLVEDREFS\n"
        "ns          r      Service:ns/svc:8080   False      -\n"
    )


def ancestor(name: str, **conds: tuple[str, str]) -> dict[str, object]:
    entry = parent("default", name, None, **conds)
    return {"ancestorRef": entry.pop("parentRef"), **entry}


POLICIES = [
    item(
        "BackendTLSPolicy",
        "default",
        "tls",
        {
            "ancestors": [
                ancestor(
                    "gw", Accepted=("True", "Accepted"), ResolvedRefs=("True", "ResolvedRefs")
                ),
                ancestor(
                    "edge",
                    Accepted=("False", "Conflicted"),
                    ResolvedRefs=("True", "ResolvedRefs"),
                ),
            ]
        },
    ),
    item("BackendTLSPolicy", "default", "unused", {"ancestors": []}),
]

GOLDEN_POLICIES = """\
NAMESPACE   NAME     ANCESTORS      ACCEPTED            RESOLVEDREFS
default     tls      default/gw     True                True
default     tls      default/edge   False(Conflicted)   True
default     unused   -              -                   -
"""


def test_backend_tls_policies_table_has_a_row_per_ancestor() -> None:
    assert format_status_table(POLICIES, "backendtlspolicies") == GOLDEN_POLICIES
    assert format_status_table(POLICIES, "btlspolicy") == GOLDEN_POLICIES
    assert format_status_table([*SAMPLE, *POLICIES], "all").endswith(
        "# backendtlspolicies\n" + GOLDEN_POLICIES
    )


LISTENER_SETS = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gatewayd}
spec: {controllerName: gatewayd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: gatewayd
  allowedListeners: {namespaces: {from: Same}}
  listeners: [{name: own, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: team}
spec:
  parentRef: {name: gw}
  listeners: [{name: extra, port: 8080, protocol: HTTP}]
"""


def test_listener_sets_table() -> None:
    """A ListenerSet row: Accepted, Programmed and its listeners with their routes."""
    from gatewayd.routing.config.load import load_documents
    from gatewayd.routing.control.resolve import resolve

    loaded = load_documents([("ls.yaml", LISTENER_SETS)])
    assert loaded.problems == ()
    items = [st.as_item() for st in resolve(loaded.config).statuses]
    table = format_status_table(items, "lset")
    lines = table.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "ACCEPTED", "PROGRAMMED", "LISTENERS"]
    assert lines[1].split() == ["default", "team", "True", "True", "extra:0"], table
    assert "# listenersets\n" in format_status_table(items, "all")


def test_what_aliases() -> None:
    assert normalize_what("Gateway") == "gateways"
    assert normalize_what("gtw") == "gateways"
    assert normalize_what("gc") == "gatewayclasses"
    assert normalize_what("httproute") == "httproutes"
    assert normalize_what("all") == "all"
    with pytest.raises(ValueError, match="unknown resource type 'pods'"):
        normalize_what("pods")
    assert format_status_table(SAMPLE, "gateway") == GOLDEN_GATEWAYS


# --------------------------------------------------------------------------- the CLI


@contextmanager
def admin_in_thread(state: AdminState) -> Iterator[AdminServer]:
    """A real admin server on its own loop in a thread (status_main blocks on urllib)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    result: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            result["server"] = loop.run_until_complete(start_admin("127.0.0.1:0", state))
        except BaseException as exc:
            result["error"] = exc
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(result["server"].close())
        loop.close()

    thread = threading.Thread(target=run, name="admin", daemon=True)
    thread.start()
    assert started.wait(10), "admin server did not start"
    if "error" in result:
        thread.join(10)
        raise result["error"]
    try:
        yield result["server"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        assert not thread.is_alive()


def _state(status_items: Any) -> AdminState:
    return AdminState(ready=lambda: True, status_items=status_items, config_dump=dict)


@pytest.mark.parametrize("what", ["gateways", "httproutes", "all"])
def test_status_main_prints_the_table(what: str, capsys: pytest.CaptureFixture[str]) -> None:
    with admin_in_thread(_state(lambda: SAMPLE)) as server:
        rc = status_main([what, "--admin-address", server.address])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    assert out == format_status_table(SAMPLE, what)


def test_status_main_defaults_to_all_and_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    with admin_in_thread(_state(lambda: SAMPLE)) as server:
        assert status_main(["--admin-address", f"http://{server.address}"]) == 0
        out, _ = capsys.readouterr()
        assert out == format_status_table(SAMPLE, "all")
        assert status_main(["gateways", "-o", "json", "--admin-address", server.address]) == 0
        out, _ = capsys.readouterr()
    assert json.loads(out) == {"items": [it for it in SAMPLE if it["kind"] == "Gateway"]}


def test_status_main_reports_admin_errors(capsys: pytest.CaptureFixture[str]) -> None:
    def broken() -> list[dict[str, object]]:
        raise RuntimeError("boom")

    with admin_in_thread(_state(broken)) as server:
        rc = status_main(["--admin-address", server.address])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err.startswith(f"gatewayd admin at {server.address} answered HTTP 500: ")
    assert "RuntimeError: boom" in err


def test_status_main_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    # A bound socket that does not listen: connecting to it is refused, and nobody else
    # can take the port while we hold it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        rc = status_main(["gateways", "--admin-address", address])
    out, err = capsys.readouterr()
    assert (rc, out) == (1, "")
    assert err.startswith(f"cannot reach gatewayd admin at {address}: ")
    assert "refused" in err.lower()
    assert err.count("\n") == 1  # one line, no traceback


def test_status_main_rejects_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        status_main(["pods"])
    assert exc.value.code == 2
    assert "unknown resource type 'pods'" in capsys.readouterr().err


def test_status_main_reports_a_refused_reload(capsys: pytest.CaptureFixture[str]) -> None:
    state = AdminState(
        ready=lambda: True,
        status_items=lambda: SAMPLE,
        config_dump=dict,
        config_state=lambda: {
            "generation": 7,
            "lastReloadError": "routes.yaml:2: HTTPRoute default/web: spec.rules: boom",
        },
    )
    with admin_in_thread(state) as server:
        rc = status_main(["gateways", "--admin-address", server.address])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == format_status_table(SAMPLE, "gateways")
    assert err == (
        "last reload refused (generation 7 still serving): "
        "routes.yaml:2: HTTPRoute default/web: spec.rules: boom\n"
    )


@pytest.mark.parametrize(
    ("election", "note"),
    [
        (
            {"lease": "gatewayd-system/gatewayd-status", "holder": "pod-b", "leader": False},
            "this replica does not write status (Lease gatewayd-system/gatewayd-status is "
            "held by pod-b); the API server shows the leader's\n",
        ),
        ({"lease": "gatewayd-system/gatewayd-status", "holder": "pod-a", "leader": True}, ""),
        ({"enabled": False, "leader": True}, ""),
    ],
)
def test_status_main_says_when_another_replica_writes_status(
    election: dict[str, object], note: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = AdminState(
        ready=lambda: True,
        status_items=lambda: SAMPLE,
        config_dump=dict,
        config_state=lambda: {
            "generation": 3,
            "lastReloadError": None,
            "statusWriteback": {"leaderElection": election, "sink": {}},
        },
    )
    with admin_in_thread(state) as server:
        rc = status_main(["gateways", "--admin-address", server.address])
    out, err = capsys.readouterr()
    assert rc == 0
    assert out == format_status_table(SAMPLE, "gateways")
    assert err == note
