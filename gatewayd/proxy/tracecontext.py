"""W3C Trace Context (https://www.w3.org/TR/trace-context/) for the upstream hop.

gatewayd is one hop of a trace.  For each proxied request it sends the backend a
``traceparent`` with the trace id it received (or a new one when none or an invalid one
came) and a new parent id: the id of gatewayd's own span for that request, so the
backend's span is its child.  ``tracestate`` is forwarded as received, only beside a
valid incoming ``traceparent`` ("If the vendor failed to parse traceparent, it MUST NOT
attempt to parse tracestate").  Pure functions on bytes; ``forwarded.py`` calls them from
its one walk over the request fields.
"""

from __future__ import annotations

from typing import Final

TRACEPARENT: Final = b"traceparent"
TRACESTATE: Final = b"tracestate"

_HEX_OR_DASH = b"0123456789abcdef-"
_DASH = ord("-")
_ODD = b"13579bdf"  # the sampled bit (0x01) is the low bit of the last flags digit
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
SAMPLED: Final = b"01"
NOT_SAMPLED: Final = b"00"


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent`` (lower-case hex),
    else None.  ``flags`` keeps the sampled bit only ("00" or "01"): version 00 defines
    no other flag, and gatewayd forwards version 00.

    Version 00 is exactly 55 characters; a higher version may be longer, and is read as
    version 00 ("If a higher version is detected, the implementation SHOULD try to parse
    it by trying the following: If the size of the header is shorter than 55 characters,
    the vendor should not parse the header and should restart the trace ... Parse
    trace-id ..., parent-id ... and sampled bit of flags"); version ff is invalid.
    An all-zero trace-id or parent-id is invalid."""
    n = len(value)
    if n < 55 or value[2] != _DASH or value[35] != _DASH or value[52] != _DASH:
        return None
    version = value[:2]
    if version == b"00":
        if n != 55:
            return None
    elif version == b"ff" or (n > 55 and value[55] != _DASH):
        return None
    # One C call checks all 55 characters: lower-case hex ("HEXDIGLC") or the three
    # dashes already placed above.
    if value[:55].translate(None, _HEX_OR_DASH):
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, SAMPLED if value[54] in _ODD else NOT_SAMPLED


def traceparent(trace_id: bytes, span_id: int, flags: bytes) -> bytes:
    """Version 00 ``traceparent`` with a 64-bit ``span_id`` (non-zero)."""
    return b"00-%s-%016x-%s" % (trace_id, span_id, flags)
