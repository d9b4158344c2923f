from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from host import _host
from host._host import (
    JsonFormatter,
    TextFormatter,
    build_managers,
    configure_logging,
    device_json,
    return_large_buffers_to_the_os,
    scan_all,
    scan_report,
    serve_all,
    trim_memory_every,
)
from host._loader import ScannerRecord, activate_plugins, discover_plugins
from host.deviceplugin import (
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Mount,
    NUMANode,
    TopologyInfo,
)
from host.testing import FakeKubelet
from tests.fixtures.plugin_dists import LOCAL_HOOKS, build_and_install_acme
from tests.fixtures.plugin_site import PluginSite, make_plugin_site

ACME_ALL = "acme,broken-import,duplicate-ns,misspelt-hook,raising-hook"
BROKEN = ("broken-import", "duplicate-ns", "misspelt-hook", "raising-hook")


def tree_of(**types: dict[str, DeviceInfo]) -> DeviceTree:
    tree = DeviceTree()
    for dev_type, devices in types.items():
        for dev_id, info in devices.items():
            tree.add_device(dev_type, dev_id, info)
    return tree


def record(scanner: Any, namespace: str = "ex.example.com", plugin: str = "p") -> ScannerRecord:
    return ScannerRecord(plugin, namespace, scanner)


# -- scan ------------------------------------------------------------------------------


class ThreadScanner:
    """A plain scan: notifies twice from its worker thread, then returns."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None

    def scan(self, notifier: Any) -> None:
        self.thread = threading.current_thread()
        first = tree_of(a={"d0": DeviceInfo()})
        notifier.notify(first)
        first.add_device("a", "late", DeviceInfo())  # changes after notify are not seen
        notifier.notify(tree_of(b={"x": DeviceInfo()}))


class CoroutineScanner:
    async def scan(self, notifier: Any) -> None:
        notifier.notify(tree_of(c={"d1": DeviceInfo()}))
        await asyncio.Event().wait()  # a real scanner loops until cancelled


class RaisingScanner:
    def scan(self, notifier: Any) -> None:
        raise OSError("sysfs unreadable")


class SilentScanner:
    async def scan(self, notifier: Any) -> None:
        pass


class NeverScanner:
    async def scan(self, notifier: Any) -> None:
        await asyncio.Event().wait()


class WrongTreeScanner:
    async def scan(self, notifier: Any) -> None:
        notifier.notify({"a": {}})


class TestScanAll:
    @pytest.mark.asyncio
    async def test_first_tree_of_each_scanner(self) -> None:
        """Plain (threaded) and coroutine scans: the first tree each notifies is kept."""
        threaded = ThreadScanner()
        outcomes = await scan_all(
            [record(threaded, "t.example.com"), record(CoroutineScanner(), "c.example.com")], 5
        )
        assert threaded.thread is not threading.current_thread()
        assert [o.error for o in outcomes] == [None, None]
        assert {k: set(v) for k, v in (outcomes[0].tree or {}).items()} == {"a": {"d0"}}
        assert scan_report(outcomes) == {
            "c.example.com/c": [{"id": "d1", "health": "Healthy", "nodes": [], "topology": []}],
            "t.example.com/a": [{"id": "d0", "health": "Healthy", "nodes": [], "topology": []}],
        }

    @pytest.mark.parametrize(
        ("scanner", "error"),
        [
            (RaisingScanner(), "scan raised OSError: sysfs unreadable"),
            (SilentScanner(), "scan returned without calling notify"),
            (NeverScanner(), "no devices reported within 0.05 s"),
            (WrongTreeScanner(), "scan raised TypeError: notify() expects a DeviceTree, got dict"),
        ],
    )
    @pytest.mark.asyncio
    async def test_failures_are_reported_per_scanner(self, scanner: Any, error: str) -> None:
        """A scanner that raises, returns silently or times out is reported; others are not."""
        outcomes = await scan_all(
            [record(scanner), record(CoroutineScanner(), "ok.example.com")], 0.05
        )
        assert outcomes[0].tree is None
        assert outcomes[0].error == error
        assert outcomes[1].error is None

    def test_device_json_extras(self) -> None:
        """Mounts, envs, annotations and the CDI name appear only when set."""
        info = DeviceInfo(
            state="Unhealthy",
            nodes=[DeviceSpec(host_path="/dev/w0", container_path="/dev/w0", permissions="rw")],
            mounts=[Mount(host_path="/opt/lib", container_path="/lib/w", read_only=True)],
            envs={"W": "0"},
            annotations={"a/b": "c"},
            topology=TopologyInfo(nodes=[NUMANode(ID=1), NUMANode(ID=3)]),
            cdi_spec={
                "cdiVersion": "0.5.0",
                "kind": "acme.example.com/widget",
                "devices": [
                    {"name": "w0", "containerEdits": {"deviceNodes": [{"path": "/dev/w0"}]}}
                ],
            },
        )
        assert device_json("w0", info) == {
            "id": "w0",
            "health": "Unhealthy",
            "nodes": ["/dev/w0"],
            "topology": [1, 3],
            "mounts": [{"host_path": "/opt/lib", "container_path": "/lib/w", "read_only": True}],
            "envs": {"W": "0"},
            "annotations": {"a/b": "c"},
            "cdi": "acme.example.com/widget=w0",
        }

    @pytest.mark.asyncio
    async def test_report_sorts_ids_naturally(self) -> None:
        """card2 comes before card10."""
        tree = tree_of(gpu={name: DeviceInfo() for name in ("card10", "card2", "card1")})

        class Once:
            async def scan(self, notifier: Any) -> None:
                notifier.notify(tree)

        report = scan_report(await scan_all([record(Once())], 5))
        assert [d["id"] for d in report["ex.example.com/gpu"]] == ["card1", "card2", "card10"]


# -- run: serve_all --------------------------------------------------------------------


class FakeServer:
    def __init__(self, fail: BaseException | None = None, finish: bool = False) -> None:
        self.fail = fail
        self.finish = finish
        self.started = asyncio.Event()
        self.cleaned_up = False

    async def serve(self) -> None:
        self.started.set()
        if self.fail is not None:
            raise self.fail
        if self.finish:
            return
        try:
            await asyncio.Event().wait()
        finally:
            self.cleaned_up = True


class TestServeAll:
    @pytest.mark.asyncio
    async def test_crash_does_not_stop_the_others(self, caplog: pytest.LogCaptureFixture) -> None:
        """A crashing manager is logged; the rest serve until stop, then clean up; exit 0."""
        crashing, serving = FakeServer(fail=RuntimeError("bug")), FakeServer()
        stop = asyncio.Event()
        task = asyncio.create_task(serve_all([("bad", crashing), ("good", serving)], stop))
        await serving.started.wait()
        await crashing.started.wait()
        async with asyncio.timeout(5):  # wait until serve_all has seen the crash
            while "bad crashed" not in caplog.text:  # noqa: ASYNC110 - a log line is not awaitable
                await asyncio.sleep(0.01)
        assert not task.done()
        stop.set()
        assert await task == 0
        assert serving.cleaned_up
        assert "bad crashed; the other plugins go on" in caplog.text
        assert "RuntimeError: bug" in caplog.text

    @pytest.mark.asyncio
    async def test_every_manager_ended(self, caplog: pytest.LogCaptureFixture) -> None:
        """When every manager has ended by itself the host exits with 1."""
        servers = [("a", FakeServer(fail=ValueError("x"))), ("b", FakeServer(finish=True))]
        assert await serve_all(servers, asyncio.Event()) == 1
        assert "b stopped serving" in caplog.text
        assert "every manager has stopped" in caplog.text

    @pytest.mark.asyncio
    async def test_cancelled_from_outside_cleans_up(self) -> None:
        """Cancelling serve_all cancels and awaits every manager."""
        server = FakeServer()
        task = asyncio.create_task(serve_all([("a", server)], asyncio.Event()))
        await server.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.cleaned_up

    def test_nothing_to_serve(self, caplog: pytest.LogCaptureFixture) -> None:
        """run_host without scanners exits with 1 and says why."""
        assert _host.run_host([], plugin_dir=Path("/nonexistent"), cdi_dir=Path("/x")) == 1
        assert "no scanners to run" in caplog.text


class TestBuildManagers:
    @pytest.mark.asyncio
    async def test_one_manager_per_scanner_sharing_watcher_and_hooks(
        self, monkeypatch: pytest.MonkeyPatch, short_dir: Path
    ) -> None:
        """Each scanner gets a Manager; all share one watcher and every post-allocate hook."""
        made: list[dict[str, Any]] = []

        class RecordingManager:
            def __init__(self, namespace: str, scanner: Any, **kwargs: Any) -> None:
                made.append({"namespace": namespace, "scanner": scanner, **kwargs})

        monkeypatch.setattr("host.deviceplugin.Manager", RecordingManager)

        async def hook(resource_name: str, response: Any) -> None:
            pass

        scanners = [
            record(object(), "a.example.com", "one"),
            record(object(), "b.example.com", "two"),
        ]
        servers = build_managers(
            scanners, [hook], plugin_dir=short_dir, kubelet_socket=None, cdi_dir=short_dir / "cdi"
        )
        assert [label for label, _ in servers] == [
            "plugin 'one' namespace a.example.com",
            "plugin 'two' namespace b.example.com",
        ]
        assert [m["namespace"] for m in made] == ["a.example.com", "b.example.com"]
        assert [m["plugin_name"] for m in made] == ["one", "two"]
        assert made[0]["watcher"] is made[1]["watcher"]
        assert made[0]["watcher"].plugin_dir == short_dir
        assert all(list(m["post_allocators"]) == [hook] for m in made)
        assert all(m["cdi_dir"] == short_dir / "cdi" for m in made)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PluginSite]:
    yield from make_plugin_site(tmp_path, monkeypatch)


@pytest_asyncio.fixture
async def kubelet(short_dir: Path) -> AsyncIterator[FakeKubelet]:
    async with FakeKubelet(short_dir) as fake:
        yield fake


def socket_names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.is_socket())


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def make_devfs(root: Path, count: int = 3) -> Path:
    devfs = root / "dev"
    devfs.mkdir()
    for index in range(count):
        (devfs / f"acme{index}").touch()
    return devfs


class TestInProcessRun:
    @pytest.mark.asyncio
    async def test_plugins_serve_under_one_loop(
        self, plugin_site: PluginSite, kubelet: FakeKubelet, short_dir: Path, tmp_path: Path
    ) -> None:
        """Activated plugins serve through real Managers in this loop; broken ones are out."""
        plugin_site.add_acme()
        devfs = make_devfs(tmp_path)
        activation = activate_plugins(
            discover_plugins(enable=tuple(ACME_ALL.split(","))), devfs_root=devfs
        )
        assert sorted(p.name for p in activation.failures) == list(BROKEN)
        servers = build_managers(
            activation.scanners,
            activation.post_allocators,
            plugin_dir=short_dir,
            cdi_dir=short_dir / "cdi",
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve_all(servers, stop))
        try:
            await kubelet.wait_for_resource("acme.example.com/widget", count=2)
            await kubelet.wait_for_resource("gadgets.acme.example.com/gadget", count=1)
            response = await kubelet.allocate("acme.example.com/widget", ["acme1"])
            envs = response.container_responses[0].envs
            assert envs["ACME_WIDGET"] == "acme1"
            assert envs["ACME_POST_ALLOCATE"] == "acme.example.com/widget"
        finally:
            stop.set()
            assert await task == 0
        assert socket_names(short_dir) == ["kubelet.sock"]


# -- logging ---------------------------------------------------------------------------


class TestLogging:
    def test_text_formatter_escapes_control_characters(self) -> None:
        """Text logs: a newline inside a message (an ID, a plugin's text) cannot forge a line."""
        logger = logging.getLogger("host.test-text")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(TextFormatter())
        logger.addHandler(handler)
        try:
            logger.error("device %s gone", "x\n2026-01-01 INFO host: forged\x1b[2J")
        finally:
            logger.removeHandler(handler)
        (line,) = stream.getvalue().splitlines()
        assert line.endswith(
            "ERROR host.test-text: device x\\n2026-01-01 INFO host: forged\\x1b[2J gone"
        )

    def test_json_formatter_one_object_per_line(self) -> None:
        """JSON logs: time, level, logger, message and the exception, on one line."""
        logger = logging.getLogger("host.test-json")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        try:
            try:
                raise ValueError("bad\nthing")
            except ValueError:
                logger.error("plugin %r failed", "acme", exc_info=True)
        finally:
            logger.removeHandler(handler)
        (line,) = stream.getvalue().splitlines()
        entry = json.loads(line)
        assert entry["level"] == "error"
        assert entry["logger"] == "host.test-json"
        assert entry["message"] == "plugin 'acme' failed"
        assert entry["time"].endswith("+00:00")
        assert "ValueError: bad" in entry["exc_info"]

    def test_configure_logging_replaces_its_handler(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Configuring twice leaves one handler, writing to the current stderr."""
        root = logging.getLogger()
        level = root.level
        try:
            configure_logging("info", "text")
            configure_logging("warning", "json")
            ours = [h for h in root.handlers if isinstance(h, _host._StderrHandler)]
            assert len(ours) == 1
            logging.getLogger("host.x").warning("hello")
            logging.getLogger("host.x").info("hidden")
            lines = capsys.readouterr().err.splitlines()
            assert [json.loads(line)["message"] for line in lines] == ["hello"]
        finally:
            for handler in list(root.handlers):
                if isinstance(handler, _host._StderrHandler):
                    root.removeHandler(handler)
            root.setLevel(level)


# -- end to end: a real wheel, the CLI as a subprocess, the fake kubelet ---------------


@pytest.fixture(scope="session")
def acme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The acme fixture package, built as a real wheel and installed into a target dir."""
    return build_and_install_acme(tmp_path_factory.mktemp("acme-wheel"))


def cli_env(acme_site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUGIN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(acme_site), env.get("PYTHONPATH")]))
    return env


async def run_cli(acme_site: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "host.cli",
        *args,
        env=cli_env(acme_site),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class TestInstalledWheel:
    @pytest.mark.asyncio
    async def test_plugins_json(self, acme_site: Path) -> None:
        """`plugins --json` lists the wheel's plugins with version, options and load errors."""
        code, out, err = await run_cli(acme_site, "plugins", "--json", "--disable", "fpga")
        assert code == 0, err
        plugins = {p["name"]: p for p in json.loads(out)}
        acme = plugins["acme"]
        assert (acme["distribution"], acme["version"], acme["error"]) == (
            "devplugin-acme",
            "1.2.3",
            None,
        )
        assert acme["options"] == [
            {
                "name": "count",
                "type": "int",
                "default": 2,
                "help": "widgets to expose at most",
                "choices": None,
            },
            {
                "name": "label",
                "type": "str",
                "default": "plain",
                "help": "gadget label",
                "choices": ["plain", "shiny"],
            },
        ]
        assert plugins["broken-import"]["error"].startswith("failed to import: ModuleNotFoundError")
        assert "devplugin_scaners" in plugins["misspelt-hook"]["error"]
        assert plugins["fpga"]["enabled"] is False
        assert plugins["gpu"]["distribution"] == "devplugin-host"

    @pytest.mark.asyncio
    async def test_scan_json_with_broken_plugins(self, acme_site: Path, tmp_path: Path) -> None:
        """`scan --json`: the good plugin's devices; each broken plugin named; exit 1."""
        devfs = make_devfs(tmp_path)
        code, out, err = await run_cli(
            acme_site, "scan", "--json", "--enable", ACME_ALL, "--devfs-root", str(devfs),
            "--set", "acme.label=shiny",
        )  # fmt: skip
        assert code == 1
        assert json.loads(out) == {
            "acme.example.com/widget": [
                {
                    "id": f"acme{i}",
                    "health": "Healthy",
                    "nodes": [str(devfs / f"acme{i}")],
                    "topology": [0],
                    "envs": {"ACME_WIDGET": f"acme{i}"},
                }
                for i in (0, 1)
            ],
            "gadgets.acme.example.com/gadget": [
                {
                    "id": "gadget0",
                    "health": "Healthy",
                    "nodes": [],
                    "topology": [],
                    "annotations": {"acme/label": "shiny"},
                }
            ],
        }
        for name in BROKEN:
            assert f"plugin '{name}' (devplugin-acme 1.2.3) is left out" in err

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
    @pytest.mark.asyncio
    async def test_run_serves_and_stops_cleanly(
        self, acme_site: Path, kubelet: FakeKubelet, short_dir: Path, tmp_path: Path, signum: int
    ) -> None:
        """`run`: the good plugins register and allocate; broken ones are reported; a signal
        stops every server, removes the sockets and exits 0."""
        devfs = make_devfs(tmp_path)
        log_path = tmp_path / "host.log"
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "host.cli", "run",
                "--enable", ACME_ALL + ",local_hooks",
                "--plugin-module", str(LOCAL_HOOKS),
                "--set", "acme.count=3",
                "--plugin-dir", str(short_dir),
                "--cdi-dir", str(tmp_path / "cdi"),
                "--devfs-root", str(devfs),
                "--log-format", "json",
                env=cli_env(acme_site),
                stdout=log_file,
                stderr=log_file,
            )  # fmt: skip
            try:
                await kubelet.wait_for_resource("acme.example.com/widget", count=3, timeout=30)
                await kubelet.wait_for_resource("gadgets.acme.example.com/gadget", count=1)
                await kubelet.wait_for_resource("local.example.com/thing", count=1)
                response = await kubelet.allocate("gadgets.acme.example.com/gadget", ["gadget0"])
                assert response.container_responses[0].envs["ACME_POST_ALLOCATE"] == (
                    "gadgets.acme.example.com/gadget"
                )
                process.send_signal(signum)
                assert await asyncio.wait_for(process.wait(), 30) == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        assert socket_names(short_dir) == ["kubelet.sock"]
        entries = [json.loads(line) for line in read_lines(log_path)]
        errors = " ".join(e["message"] for e in entries if e["level"] == "error")
        for name in BROKEN:
            assert f"plugin '{name}' (devplugin-acme 1.2.3) is left out" in errors
        assert all(e["level"] != "error" or "left out" in e["message"] for e in entries)


class TestMemory:
    def test_glibc_returns_memory(self) -> None:
        """On glibc the host fixes the mmap threshold and gets a working trim function."""
        trim = return_large_buffers_to_the_os()
        assert trim is not None
        trim()

    @pytest.mark.asyncio
    async def test_trims_until_cancelled(self) -> None:
        """The trimmer calls trim again and again, and ends when cancelled."""
        calls = threading.Semaphore(0)
        task = asyncio.create_task(trim_memory_every(calls.release, interval=0.01))
        for _ in range(3):
            assert await asyncio.to_thread(calls.acquire, True, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
