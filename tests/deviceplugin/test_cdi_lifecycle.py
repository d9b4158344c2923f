"""CDI spec files follow the devices a manager advertises; oversized snapshots are reported."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from host.deviceplugin import DeviceInfo
from host.deviceplugin._service import KUBELET_MAX_MESSAGE, DevicePluginService
from host.testing import FakeKubelet

from .conftest import QueueScanner, ServeFn
from .helpers import info, tree_of


def spec(name: str, env: str) -> dict[str, Any]:
    return {
        "cdiVersion": "0.5.0",
        "kind": "example.com/dev",
        "devices": [{"name": name, "containerEdits": {"env": [env]}}],
    }


def spec_files(cdi_dir: Path) -> dict[str, Any]:
    if not cdi_dir.exists():
        return {}
    return {p.name: json.loads(p.read_text()) for p in cdi_dir.iterdir()}


@pytest.mark.asyncio
class TestCdiFiles:
    async def test_written_updated_and_removed_with_the_device(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """A spec appears with its device, changes with it, and goes when the device goes."""
        cdi_dir = short_dir / "cdi"
        scanner = QueueScanner(tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=1"))}}))
        await serve("ex.com", scanner, cdi_dir=cdi_dir)
        await kubelet.wait_for_resource("ex.com/a", count=1)
        (name,) = spec_files(cdi_dir)
        assert (cdi_dir / name).stat().st_mode & 0o777 == 0o644
        response = await kubelet.allocate("ex.com/a", ["d0"])
        assert [d.name for d in response.container_responses[0].cdi_devices] == [
            "example.com/dev=d0"
        ]

        scanner.trees.put_nowait(tree_of({"a": {"d0": info(cdi_spec=spec("d0", "V=2"))}}))
        await kubelet.wait_for(
            lambda: spec_files(cdi_dir)[name]["devices"][0]["containerEdits"]["env"] == ["V=2"]
        )

        scanner.trees.put_nowait(tree_of({"a": {"d1": info()}}))
        await kubelet.wait_for_resource("ex.com/a", count=1)
        await kubelet.wait_for(lambda: spec_files(cdi_dir) == {})

    async def test_shared_spec_lives_while_any_holder_does(
        self, kubelet: FakeKubelet, serve: ServeFn, short_dir: Path
    ) -> None:
        """Shares carrying one spec keep one file until the last share is gone."""
        cdi_dir = short_dir / "cdi"
        shared = info(cdi_spec=spec("card0", "V=1"))
        scanner = QueueScanner(tree_of({"a": {"card0-0": shared, "card0-1": shared}}))
        await serve("ex.com", scanner, cdi_dir=cdi_dir)
        await kubelet.wait_for_resource("ex.com/a", count=2)
        assert len(spec_files(cdi_dir)) == 1
        scanner.trees.put_nowait(tree_of({"a": {"card0-1": shared}}))
        await kubelet.wait_for_resource("ex.com/a", count=1)
        assert len(spec_files(cdi_dir)) == 1
        scanner.trees.put_nowait(tree_of({"a": {"x": info()}}))
        await kubelet.wait_for(lambda: spec_files(cdi_dir) == {})


class TestSnapshotSize:
    def test_oversized_snapshot_is_logged_with_name_and_size(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A device list over kubelet's 4 MiB limit is reported as an error."""
        caplog.set_level(logging.ERROR)
        service = DevicePluginService("ex.com/huge", object())
        one = DeviceInfo()
        service.update({f"{i:0>100}": one for i in range(45_000)})
        assert service.snapshot.ByteSize() > KUBELET_MAX_MESSAGE
        assert "ex.com/huge" in caplog.text
        assert str(service.snapshot.ByteSize()) in caplog.text
        caplog.clear()
        service.update({"small": one})
        assert caplog.text == ""
