"""The fastest path of the manifest reader: block-style YAML read line by line.

Most manifests are written the way ``kubectl`` and editors write them: block mappings
and sequences, one ``key: value`` per line, plain or simply quoted scalars, short flow
sequences such as ``hostnames: ["a.example"]``, comments.  For those, even libyaml's
parser (``yamlfast``) spends most of its time making an event object, with two marks,
per node: 375 ms of the 616 ms it took to read 10,000 HTTPRoutes.  ``block_documents``
reads such text a line at a time instead, with the same scalar resolution.

It is strict: anything else (a tab, a non-ASCII or control character, a block or
multi-line scalar, an escape, a flow mapping, an anchor, a tag, a directive, a complex
or quoted key, an indentation it does not expect, a line it cannot place) returns
``None`` and the caller reads the file with ``yamlfast`` (then the node-graph loader),
which handles all of YAML and reports errors where they are.  What it returns is the
data PyYAML's loader gives for the same text (``tests/routing/test_yamlblock.py``
compares both on every manifest of the repository and on generated ones).

Pure module: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import yaml

from gatewayd.routing.config.yamlfast import _CONSTRUCT, _NULL, _STR

# Printable ASCII and newlines only: no tab (indentation rules), no CR, no BOM or
# character libyaml might refuse or normalise.
_UNUSUAL_CHARACTER: Final = re.compile(r"[^\n\x20-\x7e]")
# ``key:`` or ``key: value``; the keys Kubernetes objects use (field names, label and
# annotation keys).  Anything else (quoted, ``<<``, ``? ``) is not read here.
_KEY_LINE: Final = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_./-]*):(?: +(.*))?")
# A plain scalar may not start with an indicator (``-`` too: ``-1`` and ``- x`` are
# left to the parser), nor be or contain what ends or comments it.
_PLAIN_START_INDICATORS: Final = frozenset("-?:,[]{}#&*!|>'\"%@`")
# Flow-context plain scalars: no flow indicators or ``:`` / ``#`` at all.
_FLOW_PLAIN: Final = re.compile(r"[A-Za-z0-9_./+=~^$()<>;\\][^,\[\]{}:#'\"]*")
_CHARGE_BATCH: Final = 4096


class Unusual(Exception):
    """The text needs a real YAML parser."""


def block_documents(
    text: str,
    resolver: yaml.resolver.BaseResolver,
    charge: Callable[[int, Any], None],
) -> list[object] | None:
    """The documents of ``text`` as Python data, or None when the text is not of the
    block subset read here (then nothing may be assumed about the budget: the caller
    restores it).

    ``charge(n, None)`` is called for every node (each mapping, sequence and scalar,
    keys included, as the node-graph loader counts them), in batches; its exception
    propagates, and the caller then reads the file with a loader that reports where."""
    if _UNUSUAL_CHARACTER.search(text) is not None:
        return None
    try:
        return _Reader(resolver, charge).documents(text)
    except (Unusual, RecursionError):
        return None


class _Reader:
    __slots__ = ("_charge", "_firsts", "_keys", "_nodes", "_resolve", "_resolved", "lines")

    def __init__(
        self, resolver: yaml.resolver.BaseResolver, charge: Callable[[int, Any], None]
    ) -> None:
        self._resolve = resolver.resolve
        firsts: Any = resolver.yaml_implicit_resolvers
        if None in firsts or getattr(resolver, "yaml_path_resolvers", None):
            raise Unusual  # a resolver that looks at more than the first character
        self._firsts = firsts
        self._resolved: dict[str, object] = {}
        # Mapping keys as read: the same few field names repeat in every object.
        self._keys: dict[str, object] = {}
        self._charge = charge
        self._nodes = 0
        # (indent, content) of the current document's lines, comments and blanks left
        # out; a sequence item's content replaces its line (``_sequence``).
        self.lines: list[tuple[int, str]] = []

    def documents(self, text: str) -> list[object]:
        docs: list[object] = []
        lines: list[tuple[int, str]] = []
        explicit = False  # the current document began with ``---``
        for raw in text.split("\n"):
            content = raw.lstrip(" ")
            if not content or content[0] == "#":
                continue
            indent = len(raw) - len(content)
            if indent == 0 and raw.startswith(("---", "...", "%")):
                if raw.rstrip(" ") != "---":
                    raise Unusual  # content after ``---``, ``...``, a directive
                if lines or explicit:
                    docs.append(self._document(lines))
                lines = []
                explicit = True
                continue
            lines.append((indent, content.rstrip(" ")))
        if lines or explicit:
            docs.append(self._document(lines))
        if self._nodes:
            self._charge(self._nodes, None)
        return docs

    def _document(self, lines: list[tuple[int, str]]) -> object:
        if not lines:
            self._nodes += 1  # an empty document is one null node
            return None
        self.lines = lines
        value, end = self._node(0, lines[0][0])
        if end != len(lines):
            raise Unusual  # a line the document's structure does not take
        return value

    def _charge_batch(self) -> None:
        """Charge the nodes counted so far once there are a batch of them (called at
        each mapping key and sequence item: the nodes counted in between are bounded by
        what one line can hold)."""
        if self._nodes >= _CHARGE_BATCH:
            self._charge(self._nodes, None)
            self._nodes = 0

    def _node(self, i: int, indent: int) -> tuple[object, int]:
        """The node starting at line ``i``, which is at ``indent``; (value, next line)."""
        content = self.lines[i][1]
        if content[0] == "-" and (len(content) == 1 or content[1] == " "):
            return self._sequence(i, indent)
        if _KEY_LINE.fullmatch(content) is not None:
            return self._mapping(i, indent)
        value = self._inline(content)
        return value, i + 1

    def _mapping(self, i: int, indent: int) -> tuple[dict[object, object], int]:
        self._nodes += 1
        lines = self.lines
        n = len(lines)
        out: dict[object, object] = {}
        keys = self._keys
        while i < n:
            self._charge_batch()
            at, content = lines[i]
            if at != indent:
                if at > indent:
                    raise Unusual  # more indented than a key: a continuation line...
                break
            match = _KEY_LINE.fullmatch(content)
            if match is None:
                break  # the caller decides (a sequence item of an outer level...)
            name = match[1]
            key = keys.get(name, _MISSING)
            if key is _MISSING:
                key = self._plain(name)
                if len(keys) < _RESOLVE_CACHE:
                    keys[name] = key
            else:
                self._nodes += 1
            rest = match[2]
            i += 1
            if rest:
                out[key] = self._inline(rest)
                continue
            # ``key:`` then a node below it, or a sequence at the same indentation
            # (``key:\n- item``), or nothing (null).
            if i < n:
                below, below_content = lines[i]
                if below > indent:
                    out[key], i = self._node(i, below)
                    continue
                if (
                    below == indent
                    and below_content[0] == "-"
                    and (len(below_content) == 1 or below_content[1] == " ")
                ):
                    out[key], i = self._sequence(i, indent)
                    continue
            self._nodes += 1
            out[key] = None
        return out, i

    def _sequence(self, i: int, indent: int) -> tuple[list[object], int]:
        self._nodes += 1
        lines = self.lines
        n = len(lines)
        out: list[object] = []
        while i < n:
            self._charge_batch()
            at, content = lines[i]
            if at != indent:
                if at > indent:
                    raise Unusual
                break
            if content[0] != "-" or (len(content) > 1 and content[1] != " "):
                break
            item = content[1:].lstrip(" ")
            if not item:
                # ``-`` alone: the item is the node below it, or null.
                i += 1
                if i < n and lines[i][0] > indent:
                    value, i = self._node(i, lines[i][0])
                else:
                    self._nodes += 1
                    value = None
                out.append(value)
                continue
            # The item's content stands for its line, at its own column: a mapping
            # item goes on with its next keys at that column.
            item_indent = indent + len(content) - len(item)
            lines[i] = (item_indent, item)
            value, i = self._node(i, item_indent)
            out.append(value)
        return out, i

    def _inline(self, text: str) -> object:
        """A value written on its line: a quoted or plain scalar or a flow sequence."""
        first = text[0]
        if first == '"' or first == "'":
            end = text.find(first, 1)
            if end < 0 or (first == '"' and "\\" in text[:end]):
                raise Unusual  # multi-line, or escapes
            after = text[end + 1 :]
            if after and not (after.lstrip(" ").startswith("#") and after[0] == " "):
                raise Unusual  # ``'it''s'`` or anything else after the closing quote
            self._nodes += 1
            return text[1:end]
        if first == "[":
            return self._flow_sequence(text)
        if first == "{":
            if text == "{}" or (text.startswith("{}") and _is_comment_after(text, 2)):
                self._nodes += 1
                return {}
            raise Unusual
        cut = text.find(" #")
        if cut >= 0:
            text = text[:cut].rstrip(" ")
        if first in _PLAIN_START_INDICATORS or ": " in text or text.endswith(":"):
            raise Unusual
        return self._plain(text)

    def _flow_sequence(self, text: str) -> list[object]:
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_comment_after(text, end + 1)):
            raise Unusual
        inner = text[1:end]
        self._nodes += 1
        if not inner.strip(" "):
            return []
        out: list[object] = []
        for part in inner.split(","):
            item = part.strip(" ")
            if not item:
                raise Unusual  # ``[a, ]``, ``[, a]``: left to the parser
            first = item[0]
            if first == '"' or first == "'":
                if len(item) < 2 or item[-1] != first or first in item[1:-1] or "\\" in item:
                    raise Unusual
                self._nodes += 1
                out.append(item[1:-1])
            elif _FLOW_PLAIN.fullmatch(item) is not None and "[" not in item:
                out.append(self._plain(item))
            else:
                raise Unusual
        return out

    def _plain(self, text: str) -> object:
        """A plain scalar's value, resolved as the loader resolves it."""
        self._nodes += 1
        if text[:1] not in self._firsts:
            return text
        hit = self._resolved.get(text, _MISSING)
        if hit is not _MISSING:
            return hit
        tag = self._resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        if tag == _STR:
            value: object = text
        elif tag == _NULL:
            value = None
        else:
            construct = _CONSTRUCT.get(tag)
            if construct is None:
                raise Unusual  # a merge key, a timestamp resolver...
            value = construct(yaml.ScalarNode(tag, text))
        if len(self._resolved) < _RESOLVE_CACHE:
            self._resolved[text] = value
        return value


def _is_comment_after(text: str, at: int) -> bool:
    """``text[at:]`` is spaces then a comment."""
    rest = text[at:]
    return rest[:1] == " " and rest.lstrip(" ").startswith("#")


_MISSING: Final = object()
_RESOLVE_CACHE: Final = 4096
