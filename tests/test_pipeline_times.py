"""A reload keeps each condition's ``lastTransitionTime`` unless its status flips
(metav1.Condition), in file mode as in Kubernetes mode: the pipeline carries the serving
statuses' times over to the next build."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd import pipeline as pipeline_module
from gatewayd.pipeline import ConfigPipeline

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gc}
spec: {controllerName: gatewayd.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: gc
  listeners: [{name: http, port: 18080, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: default}
spec: {ports: [{port: 80}]}
"""

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules: [{{backendRefs: [{{name: {backend}, port: 80}}]}}]
"""


def _conditions(built: object, kind: str) -> dict[str, tuple[str, str]]:
    """type -> (status, lastTransitionTime) of the first conditions list of ``kind``."""
    for status in built.resolution.statuses:  # type: ignore[attr-defined]
        if status.kind != kind:
            continue
        body = status.status
        conditions = body["parents"][0]["conditions"] if kind == "HTTPRoute" else body["conditions"]
        return {c["type"]: (c["status"], c["lastTransitionTime"]) for c in conditions}
    raise AssertionError(f"no {kind} status")


def test_a_reload_keeps_times_of_unchanged_conditions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gw.yaml").write_text(GATEWAY)
    route = tmp_path / "route.yaml"
    route.write_text(ROUTE.format(host="a.example", backend="svc"))
    clock = iter(["2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"])
    monkeypatch.setattr(pipeline_module, "utc_now", lambda: next(clock))
    pipe = ConfigPipeline([str(tmp_path)])

    first = pipe.build()
    pipe.commit(first)
    assert _conditions(first, "Gateway")["Accepted"] == ("True", "2026-01-01T00:00:00Z")

    # An edit that changes no condition's status: every time stays.
    route.write_text(ROUTE.format(host="b.example", backend="svc"))
    second = pipe.build()
    pipe.commit(second)
    assert _conditions(second, "Gateway") == _conditions(first, "Gateway")
    assert _conditions(second, "HTTPRoute") == _conditions(first, "HTTPRoute")

    # A missing backend flips ResolvedRefs: that condition alone takes the new time.
    route.write_text(ROUTE.format(host="b.example", backend="missing"))
    third = pipe.build()
    route_conditions = _conditions(third, "HTTPRoute")
    assert route_conditions["ResolvedRefs"] == ("False", "2026-01-01T00:02:00Z")
    assert route_conditions["Accepted"] == ("True", "2026-01-01T00:00:00Z")
    assert _conditions(third, "Gateway") == _conditions(first, "Gateway")


def test_an_uncommitted_build_lends_no_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a build that served (``commit``) gives its times to the next one."""
    (tmp_path / "gw.yaml").write_text(GATEWAY)
    clock = iter(["2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"])
    monkeypatch.setattr(pipeline_module, "utc_now", lambda: next(clock))
    pipe = ConfigPipeline([str(tmp_path)])
    pipe.build()  # refused, never served
    second = pipe.build()
    assert _conditions(second, "Gateway")["Accepted"] == ("True", "2026-01-01T00:05:00Z")
