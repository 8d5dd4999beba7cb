"""RE2 regular expressions for RegularExpression path, header and query matches.

A backtracking engine (Python ``re``) lets one crafted request pin a worker: ``(a+)+$``
against 28 characters ending in a non-match takes seconds.  RE2 matches in time linear
in the input and bounds the memory of each compiled expression, which is why Envoy
matches with it ("The engine is designed to complete execution in linear time as well
as limit the amount of memory used.", RegexMatcher.GoogleRE2).  The Gateway API leaves
the dialect open: "Since `"RegularExpression"` has implementation-specific conformance,
implementations can support POSIX, PCRE, RE2 or any other regular expression dialect.
Please read the implementation's documentation to determine the supported dialect."
(PathMatchRegularExpression)  gatewayd's dialect is RE2, as Envoy-based ones.

This is the one place that touches the untyped ``google-re2`` binding, so the rest of
routing/ stays ``mypy --strict`` clean.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import re2  # type: ignore[import-untyped]  # google-re2 ships no type stubs

# Memory budget of one compiled expression or set (its program plus the lazily built
# DFA cache), RE2's ``max_mem``.  RE2's own default is 8 MiB; with one budget per regex
# per worker, 1 MiB keeps a table of many regex routes small while still compiling
# realistic patterns (3,000 alternated 12-character words, a 35,700-instruction
# program, compiles; measured) and refusing explosive ones (ten alternated `.{1000}`:
# each `.` is several UTF-8 instructions) with "pattern too large - compile failed",
# reported on the route.  When a search fills the DFA cache, a single regex falls back
# to RE2's NFA and a set flushes and rebuilds its cache ("RE2::Set cannot fall back"):
# both stay linear in the input and within the budget.
MAX_MEM: Final = 1 << 20

# The binding's low-level objects (``re2._re2``), not the ``re``-like wrapper: the
# wrapper's fullmatch builds a match object and maps byte offsets back to characters,
# 1.8 us a call against 0.6 us for the bare RE2::Match (measured, 28-byte input); a
# route lookup only needs a yes or no.
_ANCHOR_BOTH: Final[Any] = re2._re2.RE2.Anchor.ANCHOR_BOTH
_NO_MATCH: Final = (-1, -1)
_SYNTAX_URL: Final = "https://github.com/google/re2/wiki/Syntax"


class RegexError(ValueError):
    """A pattern RE2 cannot compile; the message is RE2's reason."""


def _options() -> Any:
    options = re2.Options()
    # Match tests only: no capture groups to track (smaller program, faster DFA use).
    options.never_capture = True
    # RE2 logs every rejected pattern to stderr; the caller reports it instead.
    options.log_errors = False
    options.max_mem = MAX_MEM
    return options


_OPTIONS: Final[Any] = _options()


def _compile(pattern: str) -> Any:
    try:
        data = pattern.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RegexError(f"not valid Unicode text ({exc.reason})") from exc
    compiled = re2._re2.RE2(data, _OPTIONS)
    if not compiled.ok():
        raise RegexError(compiled.error().decode("utf-8", "replace"))
    return compiled


class Regex:
    """One compiled RE2 expression that must match a whole value.

    Picklable (snapshots travel to worker processes pickled): a worker recompiles the
    pattern, which cannot fail there since the same options compiled it here.
    """

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        """Raises ``RegexError`` when RE2 rejects ``pattern``."""
        self.pattern = pattern
        self._compiled = _compile(pattern)

    def fullmatch(self, text: str) -> bool:
        """Whether ``text`` matches as a whole (RE2 ANCHOR_BOTH), in linear time."""
        # The data plane hands latin-1 decoded strings, so each character is matched as
        # itself (UTF-8 on both sides); surrogatepass makes encoding total, never a raise
        # on the request path.
        data = text.encode("utf-8", "surrogatepass")
        spans = self._compiled.Match(_ANCHOR_BOTH, data, 0, len(data))
        return bool(spans[0] != _NO_MATCH)

    def __reduce__(self) -> tuple[type[Regex], tuple[str]]:
        return (Regex, (self.pattern,))

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


class RegexSet:
    """Several patterns matched against one text in a single RE2 pass (RE2::Set).

    A route table holds its path regexes in precedence order; asking each in turn costs
    one RE2 call per regex (20 regexes: 14 us a lookup against 2.4 us on Python ``re``,
    measured), asking the set costs one call for all of them (about 1 us for 20).
    Raises ``RegexError`` when the patterns do not fit one set's memory budget; the
    caller then falls back to one ``Regex`` at a time.
    """

    __slots__ = ("_set", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        compiled = re2._re2.Set(_ANCHOR_BOTH, _OPTIONS)
        for pattern in self.patterns:
            try:
                data = pattern.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise RegexError(f"not valid Unicode text ({exc.reason})") from exc
            if compiled.Add(data) < 0:
                raise RegexError(f"RE2 cannot compile {pattern!r}")
        if not compiled.Compile():
            raise RegexError("the patterns together exceed the RE2 memory budget")
        self._set = compiled

    def matching(self, text: str) -> list[int]:
        """Indices (into ``patterns``, ascending) of the patterns matching all of ``text``."""
        data = text.encode("utf-8", "surrogatepass")
        hits: list[int] = self._set.Match(data)
        if len(hits) > 1:
            hits.sort()
        return hits

    def __reduce__(self) -> tuple[type[RegexSet], tuple[tuple[str, ...]]]:
        return (RegexSet, (self.patterns,))


def regex_problem(pattern: str) -> str | None:
    """Why RE2 rejects ``pattern`` (a message for the user), or None when it compiles."""
    try:
        _compile(pattern)
    except RegexError as exc:
        return (
            f"RE2 cannot compile it: {exc} (RE2 syntax has no backreferences or "
            f"lookaround, and a pattern must fit {MAX_MEM // 1024} KiB once compiled; "
            f"see {_SYNTAX_URL})"
        )
    return None


def escape(text: str) -> str:
    """``text`` as an RE2 pattern matching exactly it (RE2's QuoteMeta)."""
    return str(re2.escape(text))


# Matches nothing: the regex slot of candidates that have no regex (the lookup loop
# then needs no None check).  An empty character class is valid RE2 and never matches.
NEVER: Final = Regex(r"[^\x00-\x{10FFFF}]")

__all__ = ["MAX_MEM", "NEVER", "Regex", "RegexError", "RegexSet", "escape", "regex_problem"]
