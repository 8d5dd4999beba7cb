"""ReferenceGrant checks for cross-namespace references.

Gateway API (apis/v1/referencegrant_types.go, ReferenceGrant):

    "ReferenceGrant identifies kinds of resources in other namespaces that are trusted
    to reference the specified kinds of resources in the same namespace as the policy."

    "Each ReferenceGrant can be used to represent a unique trust relationship.
    Additional Reference Grants can be used to add to the set of trusted sources of
    inbound references for the namespace they are defined within."

A reference is allowed when it stays in its namespace, or when some ReferenceGrant in
the *target* namespace lists the source (group, kind, namespace) in ``from`` and the
target (group, kind, and the name when the grant names one) in ``to``.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gatewayd.routing.config.model import ReferenceGrant
from gatewayd.routing.snapshot.frozen import fast_init


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RefFrom:
    group: str
    kind: str
    namespace: str


@fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RefTo:
    group: str
    kind: str
    namespace: str
    name: str


class ReferenceGrants:
    """An index of ReferenceGrants by the namespace they protect."""

    __slots__ = ("_by_namespace",)

    def __init__(self, grants: Iterable[ReferenceGrant]) -> None:
        by_ns: dict[str, list[ReferenceGrant]] = {}
        for grant in grants:
            by_ns.setdefault(grant.meta.namespace, []).append(grant)
        self._by_namespace = by_ns

    def allows(self, source: RefFrom, target: RefTo) -> bool:
        """True when ``source`` may reference ``target``."""
        if source.namespace == target.namespace:
            return True
        for grant in self._by_namespace.get(target.namespace, ()):
            if not any(
                f.group == source.group
                and f.kind == source.kind
                and f.namespace == source.namespace
                for f in grant.from_
            ):
                continue
            # "When unspecified, this policy refers to all resources of the specified Group
            # and Kind in the local namespace." (ReferenceGrantTo.Name)
            if any(
                t.group == target.group
                and t.kind == target.kind
                and (t.name is None or t.name == "" or t.name == target.name)
                for t in grant.to
            ):
                return True
        return False
