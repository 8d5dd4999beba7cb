"""Hostname specificity as the route tables apply it at lookup time.

The one definition of "which hostname is more specific" shared by the table builder,
the reference matcher of the tests and the config dump.

Pure module: no I/O.
"""

from __future__ import annotations


def is_wildcard(hostname: str) -> bool:
    return hostname.startswith("*.")


def hostname_matches(pattern: str, host: str) -> bool:
    """Does a listener/route hostname ``pattern`` match a request ``host``?

    "Hostnames that are prefixed with a wildcard label (`*.`) are interpreted as a
    suffix match. That means that a match for `*.example.com` would match both
    `test.example.com`, and `foo.test.example.com`, but not `example.com`."
    Both sides are lower-case (the caller lower-cases the Host header).
    """
    if is_wildcard(pattern):
        suffix = pattern[1:]  # ".example.com"
        return len(host) > len(suffix) and host.endswith(suffix) and host[0] != "."
    return pattern == host


def hostname_rank(pattern: str | None) -> tuple[int, int]:
    """Specificity of a hostname pattern, larger is more specific.

    "precedence must be given to rules from the HTTPRoute with the largest number of:
    * Characters in a matching non-wildcard hostname.
    * Characters in a matching hostname."
    An exact name beats any wildcard, a longer wildcard beats a shorter one, and no
    hostname (match any host) comes last.
    """
    if pattern is None:
        return (0, 0)
    if is_wildcard(pattern):
        return (1, len(pattern))
    return (2, len(pattern))
