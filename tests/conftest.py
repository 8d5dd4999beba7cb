"""Suite-wide fixtures.

pytest (prepend import mode, no __init__.py files) puts this directory on ``sys.path``,
so test modules anywhere under tests/ can ``from kits.apiserver import ApiServerDouble``.
tests/e2e keeps importing ``e2e_kit`` through its own conftest's directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kits.apiserver import ApiServerDouble


@pytest.fixture
def apiserver() -> Iterator[ApiServerDouble]:
    """A started Kubernetes API-server double (HTTPS, bearer token), stopped afterwards.

    Teardown fails the test if the double itself hit an unexpected exception.
    """
    with ApiServerDouble() as double:
        yield double
    assert double.errors == [], "the API-server double failed internally"


@pytest.fixture
def apiserver_kubeconfig(apiserver: ApiServerDouble, tmp_path: Path) -> Path:
    """A kubeconfig file for the ``apiserver`` double (``--kubeconfig PATH``)."""
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")
