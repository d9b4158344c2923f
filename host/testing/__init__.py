"""Testing helpers for device plugin authors: a fake kubelet, fake sysfs trees, pytest fixtures.

:class:`FakeKubelet` plays kubelet's part of Device Plugin API v1beta1 on a Unix socket
directory of your choice; its observation API (:class:`ResourceState` and friends) and
condition waits let a test assert what kubelet would see, without sleeping.
:func:`build_tree` and :class:`FakeSysfs` build sysfs/devfs trees to scan.
:class:`FakeDraKubelet` plays kubelet's DRA side (plugin-watcher registration,
NodePrepareResources / NodeUnprepareResources, the device health stream and each
claim's resource health) against DRA drivers, and
:class:`FakeClaims` with :func:`allocated_claim` stands in for the API server's claims.
:class:`ExtendedResourceScheduler` and :func:`prepare_extended_resources` play the
scheduler's and kubelet's parts of KEP-5004 (a pod's extended resources served by a
DRA driver through a DeviceClass); :class:`ContainerDevices` is what a container gets,
from an Allocate answer or from CDI device IDs, to compare the two.

The pytest plugin is opt-in: put ``pytest_plugins = ["host.testing"]`` in your top-level
``conftest.py`` (or run ``pytest -p host.testing``) to get the fixtures

``kubelet``
    a started :class:`FakeKubelet` in a short temporary directory, stopped at teardown;
``fake_sysfs``
    ``fake_sysfs(spec) -> Path``: a tree built by :func:`build_tree` (a
    :class:`FakeSysfsFactory`);
``apiserver``
    a started :class:`FakeApiServer` (a fake Kubernetes API server on 127.0.0.1 for
    the DRA side: ResourceSlices, Nodes, ResourceClaims), stopped at teardown;
``apiserver_kubeconfig``
    a kubeconfig file pointing at ``apiserver``;
``run_host``
    ``await run_host(enable=[...], options={...}, ...) -> HostHandle``: the host started
    in-process against ``kubelet``, as ``devplugin-host run`` would, stopped at teardown
    (a :class:`RunHost`); ``run_host(dra=["color"])`` serves that plugin as a DRA
    driver against ``dra_kubelet`` instead;
``dra_kubelet``
    a started :class:`FakeDraKubelet` of node ``node-a`` (:data:`DRA_NODE_NAME`) whose
    API server is ``apiserver``: kubelet's DRA side;
``dra_claim``
    ``await dra_claim("DRIVER/TYPE", n) -> DraClaim``: a ResourceClaim allocated from
    the published slices and prepared through ``dra_kubelet``, with its CDI IDs and the
    container edits they resolve to (a :class:`ClaimMaker`).

Example, in strict mode (in auto mode the marker may go)::

    @pytest.mark.asyncio
    async def test_color(kubelet, fake_sysfs, run_host):
        await run_host(enable=["color"], devfs_root=fake_sysfs({"null": ""}))
        await kubelet.wait_for_resource("color.example.com/yellow", healthy=2)
        allocation = await kubelet.allocate_like_kubelet("color.example.com/yellow", 1)

The fixtures need pytest and pytest-asyncio (the ``test`` extra of devplugin-host);
importing this package does not: the fixtures live in a submodule that only the pytest
plugin loads. Their names (``kubelet``, ``run_host``, ``start_host``, ...) are also
importable from here, which then imports pytest.

PYTEST_DONT_REWRITE: pytest leaves this package's asserts alone, so a conftest may import
from it before (or without) loading the plugin, with warnings as errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from host.testing._apiserver import ApiRequest, FakeApiServer, OutageMode, write_kubeconfig
from host.testing._container import ContainerDevices
from host.testing._dra_claims import (
    DraClaim,
    FakeClaims,
    allocate_claim,
    allocated_claim,
)
from host.testing._extended import (
    ExtendedResourceScheduler,
    SchedulingError,
    allocate_extended_resource,
    prepare_extended_resources,
)
from host.testing._kubelet import FakeKubelet
from host.testing._kubelet_dra import (
    DraClaimResult,
    DraDevice,
    DraPluginRegistration,
    FakeDraKubelet,
)
from host.testing._kubelet_dra_health import (
    DraDeviceHealth,
    DraHealthClient,
    DraHealthStream,
    DraResourceHealth,
)
from host.testing._kubelet_types import (
    Allocation,
    DeviceState,
    KubeletError,
    KubeletMode,
    Registration,
    Rejection,
    ResourceState,
)
from host.testing._sysfs import FakeSysfs, Symlink, build_tree

if TYPE_CHECKING:
    from host.testing._apiserver_fixtures import apiserver, apiserver_kubeconfig
    from host.testing._fixtures import (
        DRA_NODE_NAME,
        ClaimMaker,
        FakeSysfsFactory,
        HostHandle,
        RunHost,
        dra_claim,
        dra_kubelet,
        fake_sysfs,
        kubelet,
        run_host,
        start_host,
    )

__all__ = [
    "DRA_NODE_NAME",
    "Allocation",
    "ApiRequest",
    "ClaimMaker",
    "ContainerDevices",
    "DeviceState",
    "DraClaim",
    "DraClaimResult",
    "DraDevice",
    "DraDeviceHealth",
    "DraHealthClient",
    "DraHealthStream",
    "DraPluginRegistration",
    "DraResourceHealth",
    "ExtendedResourceScheduler",
    "FakeApiServer",
    "FakeClaims",
    "FakeDraKubelet",
    "FakeKubelet",
    "FakeSysfs",
    "FakeSysfsFactory",
    "HostHandle",
    "KubeletError",
    "KubeletMode",
    "OutageMode",
    "Registration",
    "Rejection",
    "ResourceState",
    "RunHost",
    "SchedulingError",
    "Symlink",
    "allocate_claim",
    "allocate_extended_resource",
    "allocated_claim",
    "apiserver",
    "apiserver_kubeconfig",
    "build_tree",
    "dra_claim",
    "dra_kubelet",
    "fake_sysfs",
    "kubelet",
    "prepare_extended_resources",
    "run_host",
    "start_host",
    "write_kubeconfig",
]

pytest_plugins = ["host.testing._fixtures", "host.testing._apiserver_fixtures"]
"""Read by pytest when this package is a plugin: the fixtures come from that submodule."""

_FIXTURE_NAMES = frozenset(
    {
        "DRA_NODE_NAME",
        "ClaimMaker",
        "FakeSysfsFactory",
        "HostHandle",
        "RunHost",
        "dra_claim",
        "dra_kubelet",
        "fake_sysfs",
        "kubelet",
        "run_host",
        "start_host",
    }
)
_APISERVER_FIXTURE_NAMES = frozenset({"apiserver", "apiserver_kubeconfig"})


def __getattr__(name: str) -> Any:
    # Loaded on first use, so `import host.testing` works without pytest installed.
    if name not in _FIXTURE_NAMES | _APISERVER_FIXTURE_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "_apiserver_fixtures" if name in _APISERVER_FIXTURE_NAMES else "_fixtures"
    try:
        fixtures = importlib.import_module(f"host.testing.{module}")
    except ImportError as exc:
        raise ImportError(
            f"host.testing.{name} needs pytest and pytest-asyncio ({exc}); install them, "
            "e.g. pip install 'devplugin-host[test]'"
        ) from exc
    return getattr(fixtures, name)
