"""Session persistence, compiled: a ``sessionPersistence`` (of a route rule or of a
BackendLBPolicy) as the data plane reads it (``SessionPolicy``).

Pure module: no I/O.
"""

from __future__ import annotations

import hashlib

from gatewayd.routing.config.model import SessionPersistence
from gatewayd.routing.snapshot.rules import SessionPolicy

# CookieConfig.Name: "If not specified, a unique cookie name SHOULD be generated."
# gatewayd names it after what the session is bound to (the route rule, or the Service
# of a BackendLBPolicy): this prefix and 8 hex digits of a SHA-256 of that scope.
DEFAULT_SESSION_PREFIX = "gatewayd-session-"


def session_policy(session: SessionPersistence, *, scope: str, source: str) -> SessionPolicy:
    """The data plane's view of a ``sessionPersistence``: names and timeouts resolved."""
    scope_b = scope.encode()
    name = session.session_name
    if not name:
        name = DEFAULT_SESSION_PREFIX + hashlib.sha256(scope_b).hexdigest()[:8]
    header = session.type == "Header"
    return SessionPolicy(
        name=name.lower() if header else name,
        header=header,
        scope=scope_b,
        absolute_timeout=session.absolute_timeout,
        idle_timeout=session.idle_timeout,
        # "When set to "Permanent", AbsoluteTimeout indicates the cookie's lifetime via
        # the Expires or Max-Age cookie attributes and is required." (CookieConfig)
        permanent=session.cookie_lifetime_type == "Permanent"
        and session.absolute_timeout is not None,
        # "When not specified, implementations MUST default the cookie path to "/"."
        cookie_path=session.cookie_path or "/",
        source=source,
    )
