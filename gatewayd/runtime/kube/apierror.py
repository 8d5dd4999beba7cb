"""One line for an API error a user reads in the log."""

from __future__ import annotations

import json

from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["api_error"]


def api_error(exc: ApiException) -> str:
    """``HTTP 403 Forbidden: <the API server's message>``: the Status body's message says
    what is wrong (a missing RBAC rule, a namespace that does not exist)."""
    text = f"HTTP {exc.status} {exc.reason}"
    try:
        doc = json.loads(exc.body) if exc.body else None
    except (ValueError, TypeError):
        doc = None
    message = doc.get("message") if isinstance(doc, dict) else None
    return f"{text}: {message}" if isinstance(message, str) and message else text
