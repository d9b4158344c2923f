"""The pytest plugin of :mod:`host.testing`: fixtures ``kubelet``, ``fake_sysfs``, ``run_host``.

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

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
import pytest_asyncio

from host.testing._host_start import HostHandle, PluginModule, start_host
from host.testing._kubelet import FakeKubelet
from host.testing._sysfs import build_tree

__all__ = [
    "FakeSysfsFactory",
    "HostHandle",
    "RunHost",
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
    ) -> HostHandle:
        """Start the host in-process (see :func:`start_host`); stopped at teardown.

        ``sysfs_root`` and ``devfs_root`` default to empty directories (nothing of the
        machine leaks into a test), ``cdi_dir`` to a fresh one.
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


@pytest_asyncio.fixture
async def run_host(kubelet: FakeKubelet, tmp_path: Path) -> AsyncIterator[RunHost]:
    """Start the host in-process against the ``kubelet`` fixture, stopped at teardown.

    ``await run_host(enable=[...], ...)`` returns a :class:`~host.testing.HostHandle`
    (arguments: see :class:`~host.testing.RunHost`). Every host started is stopped
    before the kubelet, its sockets and CDI specs removed.
    """
    handles: list[HostHandle] = []
    runs = itertools.count()

    async def run(
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
    ) -> HostHandle:
        base = tmp_path / f"host{next(runs)}"
        roots: dict[str, Path] = {}
        for key, given in (("sys", sysfs_root), ("dev", devfs_root), ("cdi", cdi_dir)):
            if given is None:
                roots[key] = base / key
                roots[key].mkdir(parents=True)
            else:
                roots[key] = Path(given)
        handle = await start_host(
            plugin_dir=kubelet.plugin_dir,
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
        )
        handles.append(handle)
        return handle

    try:
        yield run
    finally:
        errors: list[BaseException] = []
        for handle in reversed(handles):
            try:
                await handle.stop()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
