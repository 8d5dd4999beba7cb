"""The fast path of the manifest reader: libyaml's events straight to Python data.

Kubernetes manifests are plain YAML: mappings, sequences and strings, numbers, booleans
and nulls, no anchors, no tags.  For such a file, building PyYAML's node graph and then
constructing data from it (``yaml.SafeLoader``'s compose and construct) is two thirds of
the time spent reading 10,000 HTTPRoutes.  ``fast_documents`` turns libyaml's parser
events into the same data in one loop, with an explicit stack (no recursion: nesting is
bounded by the node budget, not by the C or Python stack), charging every node to the
same budget at the same point as the node-graph loader does.

Anything else (an anchor or alias, an explicit tag other than the standard ones, a merge
key ``<<``, a key that is a mapping or sequence) returns ``None``: the caller reads that
file with the node-graph loader, which handles all of YAML and reports the same errors.
The data is the same either way (``tests/routing/test_yamlfast.py`` compares both).

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor

# libyaml's parser (None where PyYAML was built without it: the node-graph loader reads).
CParser: Any = None
if yaml.__with_libyaml__:
    CParser = yaml.cyaml.CParser  # type: ignore[attr-defined]

_STR: Final = "tag:yaml.org,2002:str"
_MAP: Final = "tag:yaml.org,2002:map"
_SEQ: Final = "tag:yaml.org,2002:seq"
_NULL: Final = "tag:yaml.org,2002:null"
_BOOL: Final = "tag:yaml.org,2002:bool"
_INT: Final = "tag:yaml.org,2002:int"
_FLOAT: Final = "tag:yaml.org,2002:float"


_RESOLVE_CACHE: Final = 4096


class Unusual(Exception):
    """The document needs the node-graph loader (anchors, tags, merge keys...)."""


class _Scalars(SafeConstructor):
    """PyYAML's own scalar constructors (int, float, bool), called on a ScalarNode."""


_SCALARS = _Scalars()
_CONSTRUCT: dict[str, Callable[[yaml.ScalarNode], Any]] = {
    _BOOL: _SCALARS.construct_yaml_bool,
    _INT: _SCALARS.construct_yaml_int,
    _FLOAT: _SCALARS.construct_yaml_float,
}


def fast_documents(
    text: str,
    resolver: yaml.resolver.BaseResolver,
    charge: Callable[[int, Any], None],
) -> list[object] | None:
    """The documents of ``text`` as Python data, or None when the file is not plain
    (then nothing may be assumed about the budget: the caller restores it).

    ``charge(n, mark)`` is called for every node, in batches of at most
    ``_CHARGE_BATCH`` nodes and at the end of each document (so all of them are charged
    before a document is returned, and a huge document is stopped early); its exception
    (the budget ran out) and libyaml's (``yaml.MarkedYAMLError``) propagate; the caller
    turns them into problems after re-reading the file with the node-graph loader,
    which charges node by node and reports each at the same place."""
    if CParser is None:
        return None
    parser = CParser(text)
    try:
        return _documents(parser, resolver, charge)
    except Unusual:
        return None
    finally:
        parser.dispose()


def _documents(
    parser: Any,
    resolver: yaml.resolver.BaseResolver,
    charge: Callable[[int, Any], None],
) -> list[object]:
    resolve_tag = resolver.resolve
    # Resolution depends on the value and its style only: the same few values (kinds,
    # apiVersions, match types) repeat in every object.  Bounded: cleared when full.
    resolved: dict[tuple[str, tuple[bool, bool]], str] = {}
    # A plain scalar whose first character no implicit resolver is registered for is a
    # string whatever follows (Resolver.resolve looks resolvers up by that character),
    # and so is any quoted one: most values (names, hostnames) skip the lookup.  Only
    # when the resolver has no wildcard or path resolvers, which would look at more.
    firsts: Any = resolver.yaml_implicit_resolvers
    if None in firsts or getattr(resolver, "yaml_path_resolvers", None):
        firsts = _EVERY_CHARACTER

    docs: list[object] = []
    get_event = parser.get_event
    scalar_event = yaml.ScalarEvent
    mapping_start = yaml.MappingStartEvent
    sequence_start = yaml.SequenceStartEvent
    collection_end = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    # Nodes are counted here and charged in batches (at most _CHARGE_BATCH, and at the
    # end of each document): a call per node was a tenth of the time of this loop.  A
    # charge that fails sends the file to the node-graph loader, which charges node by
    # node and reports where the budget ran out.
    nodes = 0
    get_event()  # StreamStart
    while True:
        event = get_event()
        if isinstance(event, yaml.StreamEndEvent):
            return docs
        # DocumentStart; then exactly one node, then DocumentEnd.
        # The stack holds [container, pending key or marker] pairs.
        stack: list[list[Any]] = []
        root: object = None
        while True:
            event = get_event()
            cls = type(event)
            if cls is scalar_event:
                if event.anchor is not None:
                    raise Unusual
                nodes += 1
                tag = event.tag
                text = event.value
                if tag is None or tag == "!":
                    implicit = event.implicit
                    if not implicit[0] or text[:1] not in firsts:
                        tag = _STR
                    else:
                        key = (text, implicit)
                        tag = resolved.get(key)
                        if tag is None:
                            if len(resolved) >= _RESOLVE_CACHE:
                                resolved.clear()
                            tag = resolved[key] = resolve_tag(yaml.ScalarNode, text, implicit)  # type: ignore[no-untyped-call]
                if tag == _STR:
                    value: object = text
                elif tag == _NULL:
                    value = None
                else:
                    construct = _CONSTRUCT.get(tag)
                    if construct is None:
                        raise Unusual  # binary, merge key, a custom tag...
                    value = construct(yaml.ScalarNode(tag, text))
            elif cls is mapping_start or cls is sequence_start:
                if event.anchor is not None:
                    raise Unusual
                tag = event.tag
                plain = _MAP if cls is mapping_start else _SEQ
                if tag is not None and tag != "!" and tag != plain:
                    raise Unusual  # !!omap, !!set, a custom tag...
                nodes += 1
                if nodes >= _CHARGE_BATCH:
                    charge(nodes, event.start_mark)
                    nodes = 0
                stack.append([{} if cls is mapping_start else [], _NO_KEY])
                continue
            elif cls in collection_end:
                value = stack.pop()[0]
            elif cls is yaml.DocumentEndEvent:
                if nodes:
                    charge(nodes, event.start_mark)
                    nodes = 0
                docs.append(root)
                break
            else:
                raise Unusual  # AliasEvent
            # Place the finished value in its parent.
            if not stack:
                root = value
                continue
            top = stack[-1]
            container = top[0]
            if type(container) is list:
                container.append(value)
            elif top[1] is _NO_KEY:
                if type(value) is dict or type(value) is list:
                    raise Unusual  # a complex key: PyYAML's own error or data
                top[1] = value
            else:
                container[top[1]] = value
                top[1] = _NO_KEY


class _Every:
    """Contains every character: no scalar is assumed a string without the resolver."""

    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        return True


_EVERY_CHARACTER: Final = _Every()
_CHARGE_BATCH: Final = 4096


class _NoKey:
    __slots__ = ()


_NO_KEY: Final = _NoKey()
