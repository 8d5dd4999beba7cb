"""``Daemon.load`` builds on its builder thread, never on the serving event loop, and
leaves the GC thresholds (nothing frozen) and switch interval as it found them, even on
failure."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from pathlib import Path

import pytest

from gatewayd.daemon import BUILD_SWITCH_INTERVAL, Daemon, RunOptions
from gatewayd.pipeline import Built

CONFIG = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: gc}
spec: {controllerName: gatewayd.dev/gateway-controller}
"""


def test_the_build_runs_off_the_loop_and_restores_gc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "c.yaml").write_text(CONFIG)
    seen: dict[str, object] = {}
    # One Daemon per process: its metrics live in the default Prometheus registry.
    daemon = Daemon(RunOptions(config=[str(tmp_path)], workers=1))
    real_build = daemon.pipeline._build

    def build() -> Built:
        seen["thread"] = threading.current_thread()
        seen["gc"] = gc.isenabled()
        seen["interval"] = sys.getswitchinterval()
        return real_build()

    def broken() -> Built:
        raise RuntimeError("boom")

    async def main() -> tuple[bool, bool, str | None]:
        try:
            monkeypatch.setattr(daemon.pipeline, "_build", build)
            first = await daemon.load(initial=True)
            monkeypatch.setattr(daemon.pipeline, "_build", broken)
            second = await daemon.load(initial=False)
            return first, second, daemon.last_error
        finally:
            await daemon.proxy.close(0)

    interval = sys.getswitchinterval()
    thresholds = gc.get_threshold()
    first, second, error = asyncio.run(main())
    assert first
    assert seen["thread"] is not threading.main_thread()
    # No collection while building (a third of a large build's time); on again after.
    assert seen["gc"] is False
    assert seen["interval"] == BUILD_SWITCH_INTERVAL
    # The failed reload restored them too, and kept the first configuration.
    assert not second
    assert error == "internal error while building config: boom"
    assert daemon.holder.current.generation == 1
    assert gc.get_threshold() == thresholds
    assert gc.isenabled()
    assert sys.getswitchinterval() == interval
    # The serving build is kept out of the collector's walks (frozen); what connections
    # leave in the frozen set is reclaimed every FULL_COLLECTION_INTERVAL
    # (tests/test_pipeline_gc.py).
    assert daemon.pipeline.frozen is not None
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
