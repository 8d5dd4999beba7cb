"""Fixtures of the end-to-end suite: echo backends, recording backends, the daemon.

Module-scoped variants let one daemon (and its backends) serve every test of a module,
which keeps the whole suite within a couple of minutes.  Every process started here is
stopped at teardown (SIGTERM, then SIGKILL after 5 s).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path

import pytest
from e2e_kit import Doc, EchoFactory, Gatewayd, RecordingServer, free_port

DaemonFactory = Callable[..., Gatewayd]


class _Daemons:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[Gatewayd] = []

    def __call__(
        self,
        docs: Sequence[Doc] | str,
        *,
        args: Sequence[str] = (),
        wait: str = "ready",
    ) -> Gatewayd:
        """Write ``docs`` to a fresh directory, start ``gatewayd run`` on it and wait for
        /ready 200 (``wait="status"``: for /status to list objects; ``"none"``: no wait)."""
        workdir = self.base / f"gatewayd-{len(self.started)}"
        daemon = Gatewayd(workdir, docs, args=args, wait=wait)
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for d in self.started:
            d.stop()


class _Recorders:
    def __init__(self) -> None:
        self.started: list[RecordingServer] = []

    def __call__(self, mode: str = "ok") -> RecordingServer:
        server = RecordingServer(mode)
        self.started.append(server)
        return server

    def close(self) -> None:
        for s in self.started:
            s.close()


@pytest.fixture(scope="module")
def module_echoes() -> Iterator[EchoFactory]:
    """``module_echoes.start("echo-v1", "echo-v2")`` -> backends living for the module."""
    factory = EchoFactory()
    yield factory
    factory.close()


@pytest.fixture
def echoes() -> Iterator[EchoFactory]:
    factory = EchoFactory()
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_recorders() -> Iterator[_Recorders]:
    rec = _Recorders()
    yield rec
    rec.close()


@pytest.fixture
def recorders() -> Iterator[_Recorders]:
    rec = _Recorders()
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def module_gatewayd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonFactory]:
    """Start daemons that live for the whole module: ``module_gatewayd(docs, args=...)``.

    Declare it after the backend fixtures it uses so it is torn down before them."""
    daemons = _Daemons(tmp_path_factory.mktemp("gatewayd"))
    yield daemons
    daemons.close()


@pytest.fixture
def gatewayd(tmp_path: Path) -> Iterator[DaemonFactory]:
    daemons = _Daemons(tmp_path)
    yield daemons
    daemons.close()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the logs of the running daemons to a failing e2e test's report."""
    report = yield
    if report.failed and item.get_closest_marker("e2e") is not None:
        for i, daemon in enumerate(list(Gatewayd.live)):
            report.sections.append((f"gatewayd #{i} output (tail)", daemon.output()[-6000:]))
    return report
