"""Every built-in plugin's generated fake tree, scanned once, publishes valid ResourceSlices."""

from __future__ import annotations

import asyncio
import importlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from host import PluginConfig
from host._host import scan_all
from host._loader import ScannerRecord
from host.dra import ResourceSlicePublisher, device_names
from host.testing import FakeApiServer
from host.testing._sysfs import Symlink, build_tree
from hostplugins.fpga.fakedev import FakeFpga, FakeFpgaTree, write_fpga_tree
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.dra.schema import assert_schema_valid
from tests.hostplugins.test_dlb import FakeDlb, add_dlbs
from tests.hostplugins.test_idxd import FakeWq, make_wqs
from tests.hostplugins.test_npu import FakeNpu, add_npus
from tests.hostplugins.test_qat import FakePf, make_qat
from tests.hostplugins.test_sgx import add_nodes

NODE = "worker-7"


def char_device_node(dev: Path, rel: str, char: str) -> None:
    """A real character device (/dev/null) under the fake devfs, with its dev/char link."""
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        pytest.skip("/dev/null is not a character device here")
    build_tree(dev, {rel: Symlink("/dev/null"), f"char/{char}": Symlink(f"../{rel}")})


def gpu_tree(root: Path) -> dict[str, Any]:
    cards = [FakeGpu(driver="i915", numa_node=0), FakeGpu(driver="xe", numa_node=1)]
    write_gpu_tree(root, FakeGpuTree(cards=cards))
    return {"shared-dev-num": 2}


def fpga_tree(root: Path) -> dict[str, Any]:
    write_fpga_tree(root, FakeFpgaTree(devices=[FakeFpga(numa_node=0), FakeFpga()]))
    return {}


def npu_tree(root: Path) -> dict[str, Any]:
    add_npus(root, FakeNpu(index=0, numa_node="0"), FakeNpu(index=1))
    return {"shared-dev-num": 2}


def dlb_tree(root: Path) -> dict[str, Any]:
    add_dlbs(root, FakeDlb(index=0, numa_node="0"), FakeDlb(index=1, numvfs=None))
    return {}


def sgx_tree(root: Path) -> dict[str, Any]:
    add_nodes(root / "dev")
    return {"enclave-limit": 3, "provision-limit": 2}


def dsa_tree(root: Path) -> dict[str, Any]:
    make_wqs(root, FakeWq(name="wq0.0", mode="shared", node=False))
    char_device_node(root / "dev", "dsa/wq0.0", "1:3")
    return {"shared-dev-num": 2}


def iaa_tree(root: Path) -> dict[str, Any]:
    make_wqs(root, FakeWq(device="iax1", name="wq1.0", mode="shared", node=False))
    char_device_node(root / "dev", "iax/wq1.0", "1:3")
    return {"shared-dev-num": 3}


def qat_tree(root: Path) -> dict[str, Any]:
    make_qat(root, FakePf())
    build_tree(root / "dev", {"vfio/vfio": "", "vfio/1": "", "vfio/2": ""})
    return {}


def generic_tree(root: Path) -> dict[str, Any]:
    for name in ("ttyUSB0", "ttyUSB1", "kvm"):
        (root / "dev").mkdir(parents=True, exist_ok=True)
        (root / "dev" / name).symlink_to("/dev/null")
    return {
        "devices": [
            {"name": "serial", "paths": ["/dev/ttyUSB*"]},
            {"name": "kvm", "paths": ["/dev/kvm"], "count": 3},
        ]
    }


TREES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "gpu": gpu_tree,
    "fpga": fpga_tree,
    "npu": npu_tree,
    "dlb": dlb_tree,
    "sgx": sgx_tree,
    "dsa": dsa_tree,
    "iaa": iaa_tree,
    "qat": qat_tree,
    "generic": generic_tree,
}


def test_every_built_in_plugin_has_a_tree() -> None:
    """The table covers every plugin registered in the devplugin.scanners entry points."""
    from importlib.metadata import entry_points

    builtin = {
        ep.name
        for ep in entry_points(group="devplugin.scanners")
        if ep.value.startswith("hostplugins.")
    }
    assert builtin == set(TREES)


@pytest.mark.asyncio
@pytest.mark.parametrize("plugin", sorted(TREES))
async def test_fake_tree_publishes_valid_slices(
    plugin: str, tmp_path: Path, apiserver: FakeApiServer, apiserver_kubeconfig: Path
) -> None:
    """Scan the plugin's fake tree once; serve each namespace as a DRA driver; all accepted."""
    options = TREES[plugin](tmp_path)
    module = importlib.import_module(f"hostplugins.{plugin}")
    config = PluginConfig(
        name=plugin, options=options, sysfs_root=tmp_path / "sys", devfs_root=tmp_path / "dev"
    )
    records = [
        ScannerRecord(plugin, ns, scanner)
        for ns, scanner in module.devplugin_scanners(config=config)
    ]
    assert records, f"{plugin}: no scanner"
    apiserver.add_node(NODE)
    total = 0
    for outcome in await scan_all(records, 5):
        assert outcome.tree is not None, outcome.error
        snapshot = {t: dict(ids) for t, ids in outcome.tree.items()}
        count = sum(len(ids) for ids in snapshot.values())
        driver = outcome.record.namespace
        publisher = ResourceSlicePublisher(
            driver, NODE, kubeconfig=apiserver_kubeconfig, retry_initial=0.01, retry_max=0.1
        )
        await publisher.start()
        try:
            publisher.update(snapshot)
            async with asyncio.timeout(10):
                await publisher.wait_synced()
        finally:
            await publisher.stop()
        slices = apiserver.resource_slices(driver=driver, node_name=NODE)
        published = [d["name"] for s in slices for d in s["spec"].get("devices", ())]
        names = device_names([(t, i) for t, ids in snapshot.items() for i in ids])
        assert sorted(published) == sorted(names.values())
        for one in slices:
            assert_schema_valid(one)
        total += count
    assert total >= 2, f"{plugin}: the fake tree gave {total} devices"
    assert not any(r.code == 422 for r in apiserver.requests)
