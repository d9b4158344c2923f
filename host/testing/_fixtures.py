"""The pytest plugin of :mod:`host.testing`: ``kubelet``, ``fake_sysfs``, ``run_host``, DRA ones.

``dra_kubelet`` (kubelet's DRA side, with the ``apiserver`` fixture as its API server)
and ``dra_claim`` (a claim allocated and prepared through both) give ``run_host`` its
DRA mode: ``run_host(dra=["color"])`` serves the plugin as a DRA driver against them.

Pulled in by ``pytest_plugins = ["host.testing"]`` (``host.testing`` names this module
in its own ``pytest_plugins``), so that importing :mod:`host.testing` never needs
pytest. :func:`start_host` and :class:`HostHandle` work without the fixtures too, in
any coroutine (a fixture of another scope, a script).

The async fixtures are ``pytest_asyncio.fixture`` functions: they work in pytest-asyncio's
strict mode (mark the tests ``@pytest.mark.asyncio``) and auto mode alike, and run in
the event loop ``asyncio_default_fixture_loop_scope`` gives them (function scope
unless configured otherwise), which must be the test's loop.

PYTEST_DONT_REWRITE: as :mod:`host.testing`, importable before the plugin is loaded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio

from host.testing._apiserver import FakeApiServer
from host.testing._dra_claims import DraClaim, allocate_claim
from host.testing._host_start import HostHandle, PluginModule, start_host
from host.testing._kubelet import FakeKubelet
from host.testing._kubelet_dra import FakeDraKubelet
from host.testing._kubelet_types import KubeletError
from host.testing._sysfs import build_tree

__all__ = [
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
]


# -- the fixtures ----------------------------------------------------------------------


class FakeSysfsFactory(Protocol):
    """The ``fake_sysfs`` fixture: ``fake_sysfs(spec, name=None) -> root``."""

    def __call__(self, spec: Mapping[str, Any], *, name: str | None = None) -> Path:
        """Build ``spec`` (see :func:`host.testing.build_tree`) under a root; return it.

        Each call makes a new root, unless ``name`` names one made before: then the
        entries are added to that tree.
        """


class RunHost(Protocol):
    """The ``run_host`` fixture: start the host against the ``kubelet`` fixture."""

    async def __call__(
        self,
        *,
        enable: Sequence[str] | None = None,
        disable: Sequence[str] = (),
        plugin_modules: Sequence[PluginModule] = (),
        plugins: Mapping[str, object] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        sysfs_root: str | os.PathLike[str] | None = None,
        devfs_root: str | os.PathLike[str] | None = None,
        cdi_dir: str | os.PathLike[str] | None = None,
        check: bool = True,
        metrics_address: str | None = None,
        dra: Sequence[str] = (),
    ) -> HostHandle:
        """Start the host in-process (see :func:`start_host`); stopped at teardown.

        ``sysfs_root`` and ``devfs_root`` default to empty directories (nothing of the
        machine leaks into a test), ``cdi_dir`` to a fresh one. ``dra`` names plugins
        served as DRA drivers (as ``--dra``) against the ``dra_kubelet`` fixture, its
        node and its API server; the test must request ``dra_kubelet`` (or
        ``dra_claim``, which needs it).
        """

    @property
    def hosts(self) -> Sequence[HostHandle]:
        """Every host started so far, oldest first."""


class ClaimMaker(Protocol):
    """The ``dra_claim`` fixture: a claim allocated, prepared and resolved to CDI edits."""

    async def __call__(
        self,
        resource: str,
        count: int = 1,
        *,
        namespace: str = "default",
        name: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - a timeout argument reads best in tests
    ) -> DraClaim:
        """Allocate ``count`` devices of ``resource`` (``DRIVER/TYPE``) and prepare them.

        First waits (up to ``timeout`` seconds) until a host of ``run_host`` serving
        ``DRIVER`` has published its ResourceSlices and kubelet has registered it; then
        :func:`~host.testing.allocate_claim`. Raises :class:`~host.testing.KubeletError`
        when the devices cannot be had (what is missing is said).
        """


@pytest_asyncio.fixture
async def kubelet() -> AsyncIterator[FakeKubelet]:
    """Serve a :class:`~host.testing.FakeKubelet` in a fresh, short directory under /tmp.

    Unix socket paths must stay under 108 bytes, hence /tmp and not ``tmp_path``.
    Stopped and its directory removed at teardown.
    """
    plugin_dir = tempfile.mkdtemp(prefix="dpk", dir="/tmp")
    fake = FakeKubelet(plugin_dir)
    try:
        await fake.start()
        yield fake
    finally:
        await fake.stop()
        shutil.rmtree(plugin_dir, ignore_errors=True)


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> FakeSysfsFactory:
    """Build sysfs/devfs trees (files, directories, :class:`~host.testing.Symlink`) from dicts.

    ``fake_sysfs({"null": ""})`` returns the root of a new tree under ``tmp_path``; pass
    it as ``sysfs_root`` or ``devfs_root``. ``name=`` picks the root's name and adds to
    that tree when called again.
    """
    counter = itertools.count()

    def build(spec: Mapping[str, Any], *, name: str | None = None) -> Path:
        if name is None:
            name = f"tree{next(counter)}"
            while (tmp_path / name).exists():
                name = f"tree{next(counter)}"
        elif not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"fake_sysfs: name must be a plain directory name, got {name!r}")
        return build_tree(tmp_path / name, spec)

    return build


DRA_NODE_NAME = "node-a"
"""The node of the ``dra_kubelet`` fixture: the pool of every DRA device in the tests."""


class _ShortDir:
    """A short directory under /tmp made on first use and removed at teardown."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._path: Path | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix=self._prefix, dir="/tmp"))
        return self._path

    def remove(self) -> None:
        if self._path is not None:
            shutil.rmtree(self._path, ignore_errors=True)


@pytest.fixture
def _devplugin_dra_root() -> Iterator[_ShortDir]:
    """Give the DRA kubelet a root directory, removed after both run_host and dra_kubelet."""
    root = _ShortDir("drk")
    try:
        yield root
    finally:
        root.remove()


@pytest_asyncio.fixture
async def dra_kubelet(
    apiserver: FakeApiServer, _devplugin_dra_root: _ShortDir
) -> AsyncIterator[FakeDraKubelet]:
    """Serve kubelet's DRA side: a :class:`~host.testing.FakeDraKubelet` of node ``node-a``.

    Its API server is the ``apiserver`` fixture (the Node is created there, and the
    node's ResourceSlices are wiped at every start, as kubelet does); it watches
    ``plugins_registry`` in a fresh short directory under /tmp, beside ``plugins``
    (:attr:`~host.testing.FakeDraKubelet.plugin_dir`) where drivers keep their sockets
    and checkpoints. Stopped at teardown.
    """
    root = _devplugin_dra_root.path
    fake = FakeDraKubelet(
        root / "plugins_registry",
        apiserver=apiserver,
        node_name=DRA_NODE_NAME,
        plugin_dir=root / "plugins",
    )
    try:
        await fake.start()
        yield fake
    finally:
        await fake.stop()


class _HostRunner:
    """The value of ``run_host``: starts hosts, remembers them for teardown and dra_claim."""

    def __init__(self, kubelet: FakeKubelet, tmp_path: Path, request: pytest.FixtureRequest):
        self._kubelet = kubelet
        self._tmp_path = tmp_path
        self._request = request
        self._runs = itertools.count()
        self.hosts: list[HostHandle] = []

    def dra_kubelet(self) -> FakeDraKubelet:
        """Return the ``dra_kubelet`` fixture of the test; a clear error if it has none."""
        if "dra_kubelet" not in self._request.fixturenames:
            raise RuntimeError(
                "run_host(dra=...) serves DRA drivers against the dra_kubelet fixture: add "
                "dra_kubelet (or dra_claim) to the test's arguments"
            )
        fake = self._request.getfixturevalue("dra_kubelet")
        if not isinstance(fake, FakeDraKubelet) or fake.apiserver is None:
            raise RuntimeError(
                f"run_host(dra=...) needs a dra_kubelet fixture with an API server and a node "
                f"name (FakeDraKubelet(..., apiserver=, node_name=)); this test's is {fake!r}"
            )
        return fake

    async def __call__(
        self,
        *,
        enable: Sequence[str] | None = None,
        disable: Sequence[str] = (),
        plugin_modules: Sequence[PluginModule] = (),
        plugins: Mapping[str, object] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        sysfs_root: str | os.PathLike[str] | None = None,
        devfs_root: str | os.PathLike[str] | None = None,
        cdi_dir: str | os.PathLike[str] | None = None,
        check: bool = True,
        metrics_address: str | None = None,
        dra: Sequence[str] = (),
    ) -> HostHandle:
        base = self._tmp_path / f"host{next(self._runs)}"
        roots: dict[str, Path] = {}
        for key, given in (("sys", sysfs_root), ("dev", devfs_root), ("cdi", cdi_dir)):
            if given is None:
                roots[key] = base / key
                roots[key].mkdir(parents=True)
            else:
                roots[key] = Path(given)
        dra_settings: dict[str, Any] = {}
        if dra:
            fake = self.dra_kubelet()
            assert fake.apiserver is not None  # checked by dra_kubelet()
            base.mkdir(parents=True, exist_ok=True)
            dra_settings = {
                "dra": dra,
                "node_name": fake.node_name,
                "kubeconfig": fake.apiserver.write_kubeconfig(base / "kubeconfig"),
                "dra_plugin_dir": fake.plugin_dir,
                "plugins_registry_dir": fake.registry_dir,
            }
        handle = await start_host(
            plugin_dir=self._kubelet.plugin_dir,
            enable=enable,
            disable=disable,
            plugin_modules=plugin_modules,
            plugins=plugins,
            options=options,
            sysfs_root=roots["sys"],
            devfs_root=roots["dev"],
            cdi_dir=roots["cdi"],
            check=check,
            metrics_address=metrics_address,
            **dra_settings,
        )
        self.hosts.append(handle)
        return handle


@pytest_asyncio.fixture
async def run_host(
    kubelet: FakeKubelet,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    _devplugin_dra_root: _ShortDir,
) -> AsyncIterator[RunHost]:
    """Start the host in-process against the ``kubelet`` fixture, stopped at teardown.

    ``await run_host(enable=[...], ...)`` returns a :class:`~host.testing.HostHandle`
    (arguments: see :class:`~host.testing.RunHost`). Every host started is stopped
    before the kubelet, its sockets and CDI specs removed. ``run_host(dra=[...])``
    serves those plugins as DRA drivers against the ``dra_kubelet`` fixture.
    """
    runner = _HostRunner(kubelet, tmp_path, request)
    try:
        yield runner
    finally:
        errors: list[BaseException] = []
        for handle in reversed(runner.hosts):
            try:
                await handle.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest_asyncio.fixture
async def dra_claim(run_host: RunHost, dra_kubelet: FakeDraKubelet) -> ClaimMaker:
    """Allocate and prepare ResourceClaims as the scheduler and kubelet would.

    ``await dra_claim("DRIVER/TYPE", n)``, against the host of ``run_host(dra=[...])``
    serving ``DRIVER``, the ``dra_kubelet`` fixture and its API server, returns a
    :class:`~host.testing.DraClaim` (devices, CDI IDs, the container edits each resolves
    to). See :class:`ClaimMaker`.
    """
    apiserver = dra_kubelet.apiserver
    node_name = dra_kubelet.node_name
    assert apiserver is not None
    assert node_name is not None

    async def claim(
        resource: str,
        count: int = 1,
        *,
        namespace: str = "default",
        name: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - as ClaimMaker
    ) -> DraClaim:
        driver = resource.partition("/")[0]
        serving = [h for h in run_host.hosts if h.running and driver in h.dra_plugins]
        if not serving:
            raise RuntimeError(
                f"dra_claim({resource!r}): no running host of run_host serves DRA driver "
                f"{driver!r}; start one with run_host(dra=[PLUGIN])"
            )
        host = serving[-1]
        plugin = host.dra_plugins[driver]
        try:
            async with asyncio.timeout(timeout):
                await plugin.publisher.wait_synced()
        except TimeoutError:
            raise KubeletError(
                f"dra_claim({resource!r}): DRA driver {driver} published no ResourceSlices "
                f"within {timeout:g} s ({plugin.publisher.status.last_error or 'no error'})"
            ) from None
        await dra_kubelet.wait_for_driver(driver, timeout=timeout)
        return await allocate_claim(
            apiserver,
            dra_kubelet,
            resource,
            count,
            node_name=node_name,
            cdi_dir=host.cdi_dir,
            namespace=namespace,
            name=name,
        )

    return claim
