"""The host.testing pytest plugin: kubelet, fake_sysfs and run_host, in strict and auto mode."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import host.testing
import hostplugins.generic
from host import ConfigError, Option, PluginConfig, hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree, Notifier, pluginapi
from host.testing import FakeKubelet, FakeSysfsFactory, HostHandle, RunHost, Symlink

pytest_plugins = ["pytester", "host.testing"]

BRUSH = "paint.example.com/brush"


class PaintScanner:
    """Reports ``count`` brushes backed by ``<devfs>/brush``; a PostAllocator too."""

    def __init__(self, count: int, node: Path) -> None:
        self.count = count
        self.node = node

    async def scan(self, notifier: Notifier) -> None:
        tree = DeviceTree()
        for index in range(self.count):
            spec = DeviceSpec(host_path=str(self.node), container_path="/dev/brush")
            tree.add_device("brush", f"brush{index}", DeviceInfo(nodes=(spec,)))
        notifier.notify(tree)
        await asyncio.Event().wait()

    def post_allocate(self, response: pluginapi.AllocateResponse) -> None:
        for container in response.container_responses:
            container.annotations["paint.example.com/wet"] = "yes"


class PaintHooks:
    """A plugin given as an object: no entry point, no file."""

    @hookimpl
    def devplugin_options(self) -> list[Option]:
        return [Option("count", default=1)]

    @hookimpl
    def devplugin_scanners(self, config: PluginConfig) -> list[tuple[str, PaintScanner]]:
        if config.options["count"] < 1:
            raise ConfigError(f"option count must be >= 1, got {config.options['count']}")
        node = config.devfs_root / "brush"
        return [("paint.example.com", PaintScanner(config.options["count"], node))]

    @hookimpl
    async def devplugin_post_allocate(
        self, resource_name: str, response: pluginapi.AllocateResponse
    ) -> None:
        for container in response.container_responses:
            container.envs["PAINTED_BY"] = resource_name


class BrokenHooks:
    @hookimpl
    def devplugin_scanners(self, config: PluginConfig) -> list[tuple[str, PaintScanner]]:
        raise RuntimeError("no paint left")


LOCAL_MODULE = """
from host import hookimpl
from host.deviceplugin import DeviceInfo, DeviceTree


class Scanner:
    async def scan(self, notifier):
        tree = DeviceTree()
        tree.add_device("thing", "thing0", DeviceInfo())
        notifier.notify(tree)


@hookimpl
def devplugin_scanners(config):
    return [("local.example.com", Scanner())]
"""


def plugin_sockets(plugin_dir: str) -> list[str]:
    """The Unix sockets in ``plugin_dir`` but kubelet's."""
    return sorted(
        entry.name
        for entry in os.scandir(plugin_dir)
        if stat.S_ISSOCK(entry.stat().st_mode) and entry.name != "kubelet.sock"
    )


class TestPublicSurface:
    def test_all_is_pinned(self) -> None:
        """host.testing exports the fakes (kubelets, claims), the tree builders and the fixtures."""
        assert host.testing.__all__ == [
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

    def test_every_name_resolves(self) -> None:
        """Each exported name is importable from host.testing."""
        for name in host.testing.__all__:
            assert getattr(host.testing, name) is not None

    def test_unknown_name(self) -> None:
        """Other names are an AttributeError, as for any module."""
        with pytest.raises(AttributeError, match="no attribute 'nope'"):
            host.testing.nope  # noqa: B018 - the access is the test

    def test_import_without_pytest(self) -> None:
        """import host.testing needs no pytest; the fixture names then say what to install."""
        code = textwrap.dedent(
            """
            import sys
            sys.modules["pytest"] = None
            sys.modules["pytest_asyncio"] = None
            import host.testing
            assert host.testing.FakeKubelet and host.testing.build_tree
            assert "host.testing._fixtures" not in sys.modules
            try:
                host.testing.run_host
            except ImportError as exc:
                print(exc)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "host.testing.run_host needs pytest and pytest-asyncio" in result.stdout


class TestKubeletFixture:
    @pytest.mark.asyncio
    async def test_running_in_a_short_dir(self, kubelet: FakeKubelet) -> None:
        """The fake kubelet serves in a fresh directory under /tmp, short enough for sockets."""
        assert kubelet.running
        assert kubelet.plugin_dir.startswith("/tmp/")
        assert os.listdir(kubelet.plugin_dir) == ["kubelet.sock"]
        assert len(os.fsencode(kubelet.socket_path)) < 108


class TestFakeSysfs:
    def test_builds_files_dirs_and_links(self, fake_sysfs: FakeSysfsFactory) -> None:
        """A spec becomes files, directories and symlinks under a fresh root."""
        root = fake_sysfs(
            {
                "devices/virtual/mem/null": {"numa_node": "1\n"},
                "dev/char/1:3": Symlink("../../devices/virtual/mem/null"),
                "empty": None,
            }
        )
        assert (root / "devices/virtual/mem/null/numa_node").read_text() == "1\n"
        assert (root / "dev/char/1:3").resolve() == (root / "devices/virtual/mem/null").resolve()
        assert (root / "empty").is_dir()

    def test_each_call_makes_a_new_root(self, fake_sysfs: FakeSysfsFactory) -> None:
        """Two calls give two trees; a name given again adds to its tree."""
        first, second = fake_sysfs({"a": ""}), fake_sysfs({"b": ""})
        assert first != second
        assert not (second / "a").exists()
        dev = fake_sysfs({"null": ""}, name="dev")
        assert fake_sysfs({"zero": ""}, name="dev") == dev
        assert sorted(p.name for p in dev.iterdir()) == ["null", "zero"]

    @pytest.mark.parametrize("name", ["", "..", "a/b"])
    def test_bad_name(self, fake_sysfs: FakeSysfsFactory, name: str) -> None:
        """A root name must be a plain directory name."""
        with pytest.raises(ValueError, match="plain directory name"):
            fake_sysfs({}, name=name)


class TestRunHost:
    @pytest.mark.asyncio
    async def test_restart_and_allocation(
        self, kubelet: FakeKubelet, fake_sysfs: FakeSysfsFactory, run_host: RunHost
    ) -> None:
        """The host re-registers after a kubelet restart and answers kubelet's allocation."""
        devfs = fake_sysfs({"brush": ""})
        handle = await run_host(
            plugins={"paint": PaintHooks()}, options={"paint": {"count": 2}}, devfs_root=devfs
        )
        assert handle.plugins == ("paint",)
        assert handle.devfs_root == devfs
        await kubelet.wait_for_resource(BRUSH, count=2, healthy=2)

        await kubelet.restart()
        await kubelet.wait_for_registrations(2, BRUSH)
        state = await kubelet.wait_for_resource(BRUSH, count=2, healthy=2)
        assert state.connected
        assert handle.resources[BRUSH].registrations == 2

        allocation = await kubelet.allocate_like_kubelet(BRUSH, 1)
        response = allocation.response
        assert [d.host_path for d in response.devices] == [str(devfs / "brush")]
        assert response.annotations["paint.example.com/wet"] == "yes"
        assert response.envs["PAINTED_BY"] == BRUSH

    @pytest.mark.asyncio
    async def test_stop_cleans_up(self, kubelet: FakeKubelet, run_host: RunHost) -> None:
        """stop() ends every Manager: exit status 0, sockets removed, kubelet disconnected."""
        handle = await run_host(plugins={"paint": PaintHooks()})
        await kubelet.wait_for_resource(BRUSH, healthy=1)
        assert plugin_sockets(kubelet.plugin_dir) == ["paint.example.com-brush.sock"]
        assert handle.running
        assert await handle.stop() == 0
        assert await handle.stop() == 0
        assert not handle.running
        assert handle.exit_status == 0
        assert plugin_sockets(kubelet.plugin_dir) == []
        await kubelet.wait_for(lambda: not kubelet.resources[BRUSH].connected)

    @pytest.mark.asyncio
    async def test_second_host_after_the_first(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """A host restarted in the same test registers again with the same kubelet."""
        first = await run_host(plugins={"paint": PaintHooks()})
        await kubelet.wait_for_registrations(1, BRUSH)
        await first.stop()
        await run_host(plugins={"paint": PaintHooks()}, options={"paint": {"count": 3}})
        await kubelet.wait_for_registrations(2, BRUSH)
        await kubelet.wait_for_resource(BRUSH, count=3, healthy=3)

    @pytest.mark.asyncio
    async def test_plugin_module_file(
        self, kubelet: FakeKubelet, run_host: RunHost, tmp_path: Path
    ) -> None:
        """A .py file of hooks runs as --plugin-module does, named after the file."""
        path = tmp_path / "local_things.py"
        path.write_text(LOCAL_MODULE, encoding="utf-8")
        handle = await run_host(plugin_modules=[path])
        assert handle.plugins == ("local_things",)
        await kubelet.wait_for_resource("local.example.com/thing", healthy=1)

    @pytest.mark.asyncio
    async def test_module_object_hides_the_installed_entry_point(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """An imported hook module runs under its last name, instead of the entry point."""
        handle = await run_host(
            plugin_modules=[hostplugins.generic],
            options={"generic": {"devices": '[{"name": "null", "paths": ["/dev/null"]}]'}},
            devfs_root="/dev",
        )
        assert handle.plugins == ("generic",)
        assert list(handle.managers) == ["devices.devplugin.io"]
        await kubelet.wait_for_resource("devices.devplugin.io/null", healthy=1)

    @pytest.mark.asyncio
    async def test_enable_selects_among_given_plugins(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """enable picks among the given plugins; the others are not loaded."""
        handle = await run_host(
            enable=["paint"], plugins={"paint": PaintHooks(), "broken": BrokenHooks()}
        )
        assert handle.plugins == ("paint",)

    @pytest.mark.asyncio
    async def test_failing_plugin_fails_the_test(self, run_host: RunHost) -> None:
        """A plugin left out raises, naming it and its error."""
        with pytest.raises(RuntimeError, match=r"plugin 'broken'.*no paint left"):
            await run_host(plugins={"paint": PaintHooks(), "broken": BrokenHooks()})

    @pytest.mark.asyncio
    async def test_failing_plugin_with_check_off(
        self, kubelet: FakeKubelet, run_host: RunHost
    ) -> None:
        """With check=False the others run, as with `run`, and failures are reported."""
        handle = await run_host(
            plugins={"paint": PaintHooks(), "broken": BrokenHooks()}, check=False
        )
        assert handle.plugins == ("paint",)
        (failure,) = handle.failures
        assert "plugin 'broken'" in failure
        assert "no paint left" in failure
        await kubelet.wait_for_resource(BRUSH, healthy=1)

    @pytest.mark.asyncio
    async def test_nothing_to_serve(self, run_host: RunHost) -> None:
        """No plugin selected is an error, not a host idling silently."""
        with pytest.raises(RuntimeError, match="no scanners to run"):
            await run_host(enable=[], plugins={"paint": PaintHooks()})

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"paint": {"colour": 1}}, "plugin 'paint' has no option 'colour'"),
            ({"paint": {"count": "many"}}, "option count .*expected an integer"),
            ({"paint": {"count": 0}}, "plugin 'paint': option count must be >= 1, got 0"),
            ({"nobody": {"x": 1}}, "unknown plugin 'nobody'"),
            ({"paint": "count=2"}, "must be a mapping"),
        ],
    )
    async def test_bad_options(self, run_host: RunHost, options: Any, message: str) -> None:
        """Option mistakes raise ConfigError with the message `run` would print."""
        with pytest.raises(ConfigError, match=message):
            await run_host(plugins={"paint": PaintHooks()}, options=options)


class TestStartHost:
    @pytest.mark.asyncio
    async def test_as_context_manager(self, kubelet: FakeKubelet, short_dir: Path) -> None:
        """start_host works without the run_host fixture; leaving the block stops it."""
        async with await host.testing.start_host(
            plugin_dir=kubelet.plugin_dir, plugins={"paint": PaintHooks()}, devfs_root=short_dir
        ) as handle:
            assert isinstance(handle, HostHandle)
            await kubelet.wait_for_resource(BRUSH, healthy=1)
            assert handle.cdi_dir == Path(kubelet.plugin_dir) / "cdi"
            assert "paint.example.com" in repr(handle)
        assert not handle.running
        assert plugin_sockets(kubelet.plugin_dir) == []


# -- the plugin under pytest-asyncio's modes, in a pytest of its own --------------------

TINY_PLUGIN = """
import asyncio

from host import hookimpl
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree


class TinyScanner:
    def __init__(self, devfs_root):
        self.node = devfs_root / "tiny"

    async def scan(self, notifier):
        tree = DeviceTree()
        tree.add_device("thing", "t0", DeviceInfo(nodes=[DeviceSpec(host_path=str(self.node))]))
        notifier.notify(tree)
        await asyncio.Event().wait()


@hookimpl
def devplugin_scanners(config):
    return [("tiny.example.com", TinyScanner(config.devfs_root))]
"""

MODE_TEST = """
import pytest

import tiny_plugin


{marker}async def test_allocation(kubelet, fake_sysfs, run_host):
    devfs = fake_sysfs({{"tiny": ""}})
    await run_host(plugin_modules=[tiny_plugin], devfs_root=devfs)
    await kubelet.wait_for_resource("tiny.example.com/thing", healthy=1)
    allocation = await kubelet.allocate_like_kubelet("tiny.example.com/thing", 1)
    assert allocation.response.devices[0].host_path == str(devfs / "tiny")
"""


@pytest.fixture
def author_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A plugin author's project: the tiny plugin and a conftest opting in to host.testing."""
    pytester.makepyfile(tiny_plugin=TINY_PLUGIN)
    pytester.makeconftest('pytest_plugins = ["host.testing"]\n')
    return pytester


class TestAsyncioModes:
    @pytest.mark.parametrize(
        ("mode", "marker"), [("strict", "@pytest.mark.asyncio\n"), ("auto", "")]
    )
    def test_fixtures_work(self, author_project: pytest.Pytester, mode: str, marker: str) -> None:
        """The fixtures serve a test in strict mode (marked) and in auto mode (unmarked)."""
        author_project.makeini(
            f"""
            [pytest]
            asyncio_mode = {mode}
            asyncio_default_fixture_loop_scope = function
            filterwarnings = error
            """
        )
        author_project.makepyfile(test_tiny=MODE_TEST.format(marker=marker))
        result = author_project.runpytest_subprocess("-p", "no:cacheprovider")
        result.assert_outcomes(passed=1)
