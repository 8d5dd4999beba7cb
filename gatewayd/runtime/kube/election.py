"""Leader-election settings and client-go's defaults.

Apart from ``leader`` (which imports the Kubernetes client) so that the command line
can show and check them without loading the client library (a third of a second).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_LEASE_NAME",
    "DEFAULT_LEASE_NAMESPACE",
    "JITTER_FACTOR",
    "LEASE_DURATION",
    "RENEW_DEADLINE",
    "RETRY_PERIOD",
    "LeaderElectionSettings",
    "default_identity",
    "default_namespace",
]

# client-go's defaults (leaderelection.LeaderElectionConfig as controllers set it).
LEASE_DURATION: Final = 15.0
RENEW_DEADLINE: Final = 10.0
RETRY_PERIOD: Final = 2.0
JITTER_FACTOR: Final = 1.2

DEFAULT_LEASE_NAME: Final = "gatewayd-status"
DEFAULT_LEASE_NAMESPACE: Final = "gatewayd-system"
# The service account's directory, as the in-cluster client configuration reads it
# (runtime/kube/client.py; GATEWAYD_SERVICE_ACCOUNT_DIR overrides it there and here).
SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"


def default_namespace(path: str | None = None) -> str:
    """The pod's own namespace (its service account's ``namespace`` file), else
    ``gatewayd-system``."""
    if path is None:
        base = os.environ.get("GATEWAYD_SERVICE_ACCOUNT_DIR", SERVICE_ACCOUNT_DIR)
        path = os.path.join(base, "namespace")
    try:
        namespace = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return DEFAULT_LEASE_NAMESPACE
    return namespace or DEFAULT_LEASE_NAMESPACE


def default_identity() -> str:
    """``POD_NAME`` (the downward API) when set, else ``hostname_pid``: unique per
    replica, and recognisable in ``kubectl get lease -o yaml``."""
    pod = os.environ.get("POD_NAME", "").strip()
    if pod:
        return pod
    return f"{socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderElectionSettings:
    """``gatewayd run --kubernetes``'s leader-election flags (README, "Status write-back
    and leader election").  ``enabled=False`` (--no-leader-election): this replica
    writes status unconditionally, for a single replica."""

    enabled: bool = True
    namespace: str | None = None  # None: default_namespace()
    name: str = DEFAULT_LEASE_NAME
    identity: str | None = None  # None: default_identity()
    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD
