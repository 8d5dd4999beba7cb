"""What a load made of each config file, reused by the next load while the file's
text is unchanged (issue 17: 10,000 HTTPRoutes reload in under 2 s).

Reading YAML and validating objects is three quarters of a build, and a reload usually
changes one file of many.  A ``LoadCache`` remembers, per file name, the text read and
the objects it gave: when a later load reads the same text for that name, the objects
are taken as they are instead of parsing and validating the file again.

Only a *clean* file is remembered: every document one object (or empty), with no
problem, no skipped kind and no rejected object.  A file with
anything to report is read again each time, so every problem and status is produced
by the same code as without a cache.  An entry is used only when everything the
objects depend on is the same: the text, the YAML node budget left (each file's nodes
are charged again), no object already defined by an earlier file, and the same
``metadata.generation`` against the previous load's generations; otherwise the file is
read again.  The objects are frozen model values, so sharing them between loads is safe.

``ObjectCache`` does the same for objects an API server returned, per object: keyed by
its ``Source`` (``k8s:Kind/namespace/name``), its ``apiVersion`` and kind, and its
``uid`` and ``resourceVersion`` (which every write of the object changes, its status's
included), or, without those, its whole content as canonical JSON; so an EndpointSlice
change re-reads that EndpointSlice only.

Pure module: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from gatewayd.routing.config import model as m
from gatewayd.routing.snapshot.frozen import fast_init

GenerationKey = tuple[str, str, str]  # (kind, namespace, name), as in load.py


@fast_init
@dataclass(frozen=True, slots=True)
class CachedObject:
    """One object a clean document gave: enough to add it to a load again."""

    kind: m.Kind
    key: GenerationKey
    digest: str  # the spec digest (generation tracking)
    given: int | None  # metadata.generation written in the file, if any
    generation: int  # the generation it was given
    obj: object  # the validated model object


@dataclass(frozen=True, slots=True)
class CachedFile:
    text: str
    nodes: int  # YAML nodes the file charged to the load's budget
    objects: tuple[CachedObject | None, ...]  # per document; None: an empty document


class LoadCache:
    """File name -> what its last clean read gave.  Holds the files of the last load
    only (``begin`` / ``end`` bracket a load), so a file that went away is forgotten."""

    __slots__ = ("_files", "_next", "hits", "misses")

    def __init__(self) -> None:
        self._files: dict[str, CachedFile] = {}
        self._next: dict[str, CachedFile] = {}
        self.hits = 0  # files taken from the cache by the last load
        self.misses = 0  # files read (and validated) by the last load

    def begin(self) -> None:
        self._next = {}
        self.hits = self.misses = 0

    def get(self, filename: str, text: str) -> CachedFile | None:
        entry = self._files.get(filename)
        if entry is None or entry.text != text:
            return None
        return entry

    def keep(self, filename: str, entry: CachedFile) -> None:
        self._next[filename] = entry

    def end(self) -> None:
        self._files, self._next = self._next, {}

    def __len__(self) -> int:
        return len(self._files)


class ObjectCache:
    """Object ``Source`` -> (its content as canonical JSON, what reading it gave), for the
    objects of the last load only; only objects read without any problem."""

    __slots__ = ("_next", "_objects", "hits", "misses")

    def __init__(self) -> None:
        self._objects: dict[m.Source, tuple[str, CachedObject]] = {}
        self._next: dict[m.Source, tuple[str, CachedObject]] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def content(data: Mapping[object, object]) -> str | None:
        """What identifies the object's content: its ``metadata.uid`` and
        ``resourceVersion`` when it has both (the API server gives every write of an
        object a new resourceVersion, and canonical JSON would cost half the first
        load's time); else its canonical JSON; None when it is not JSON data (then it is
        read every time)."""
        md = data.get("metadata")
        if isinstance(md, Mapping):
            uid, version = md.get("uid"), md.get("resourceVersion")
            if isinstance(uid, str) and uid and isinstance(version, str) and version:
                # The same stored object read at another API version (a kind whose
                # served version changed) is read again: the version is part of it.
                return f"{data.get('apiVersion')!r} {data.get('kind')!r} {uid}@{version}"
        try:
            return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            return None

    def begin(self) -> None:
        self._next = {}
        self.hits = self.misses = 0

    def get(self, source: m.Source, content: str | None) -> CachedObject | None:
        if content is None:
            return None
        entry = self._objects.get(source)
        if entry is None or entry[0] != content:
            return None
        return entry[1]

    def keep(self, source: m.Source, content: str | None, record: CachedObject) -> None:
        if content is not None:
            self._next[source] = (content, record)

    def end(self) -> None:
        self._objects, self._next = self._next, {}

    def __len__(self) -> int:
        return len(self._objects)
