"""Stage 3, compile: a ``Resolution`` -> the frozen ``snapshot.compiled.Snapshot``.

Matchers, precedence keys and table inputs; the only stage that imports all others.
"""
