"""Which version of each kind the cluster serves (``GET /api/v1``, ``/apis``, and
``/apis/{group}/{version}`` for each group gatewayd reads).

For each kind: the first of its versions (in gatewayd's preference order) whose
group/version lists the kind's resource.  A kind with none (its CRD is not installed,
or only at versions gatewayd does not model) is missing: the source treats it as empty.
"""

from __future__ import annotations

from collections.abc import Sequence

from gatewayd.runtime.kube.client import MIB, ApiError, KubeClient
from gatewayd.runtime.kube.kinds import WatchedKind

MAX_DISCOVERY_BYTES = 4 * MIB


async def discover(client: KubeClient, kinds: Sequence[WatchedKind]) -> dict[str, str | None]:
    """kind -> the version to read it at, or None when the cluster does not serve it."""
    served_groups = await _group_versions(client)
    resources: dict[tuple[str, str], set[str]] = {}
    chosen: dict[str, str | None] = {}
    for wk in kinds:
        chosen[wk.kind] = None
        for version in wk.versions:
            if version not in served_groups.get(wk.group, ()):
                continue
            gv = (wk.group, version)
            if gv not in resources:
                resources[gv] = await _resources(client, wk.group, version)
            if wk.plural in resources[gv]:
                chosen[wk.kind] = version
                break
    return chosen


async def _group_versions(client: KubeClient) -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {"": ("v1",)}
    data = await client.get_json("/apis", max_bytes=MAX_DISCOVERY_BYTES)
    for group in data.get("groups") or ():
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            continue
        versions = tuple(
            str(v.get("version"))
            for v in group.get("versions") or ()
            if isinstance(v, dict) and v.get("version")
        )
        groups[group["name"]] = versions
    return groups


async def _resources(client: KubeClient, group: str, version: str) -> set[str]:
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    try:
        data = await client.get_json(path, max_bytes=MAX_DISCOVERY_BYTES)
    except ApiError as exc:
        if exc.status == 404:
            return set()
        raise
    return {
        str(r["name"])
        for r in data.get("resources") or ()
        if isinstance(r, dict) and isinstance(r.get("name"), str) and "/" not in r["name"]
    }
