"""`devplugin-host run --metrics-address` as a subprocess; `devplugin-host status` reading it."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from host.testing import FakeKubelet
from host.testing._http import http_get
from tests.fixtures.plugin_dists import LOCAL_HOOKS
from tests.observe.helpers import value

pytest_plugins = ["host.testing"]

RESOURCE = "local.example.com/thing"
LOCAL_PLUGIN = ("--plugin-module", str(LOCAL_HOOKS), "--enable", "local_hooks")
LISTENING = re.compile(r"metrics, probes and status on http://(\S+)")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DEVPLUGIN_")}


async def cli(*args: str, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "host.cli", *args,
        env={**env(), **(extra_env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class Host:
    """A `devplugin-host run` subprocess; its stderr kept, its metrics address read from it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.address: str | None = None
        self._seen = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            found = LISTENING.search(line)
            if found:
                self.address = found.group(1)
                self._seen.set()
        self._seen.set()

    async def listening(self) -> str:
        async with asyncio.timeout(30):
            await self._seen.wait()
        assert self.address is not None, "\n".join(self.lines)
        return self.address

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
        assert self.process.returncode is not None
        return self.process.returncode


@pytest_asyncio.fixture
async def host(kubelet: FakeKubelet, tmp_path: Path) -> AsyncIterator[Host]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "host.cli", "run",
        "--plugin-module", str(LOCAL_HOOKS),
        "--enable", "local_hooks",
        "--set", "local_hooks.things=2",
        "--plugin-dir", str(kubelet.plugin_dir),
        "--cdi-dir", str(tmp_path / "cdi"),
        "--devfs-root", str(tmp_path),
        "--sysfs-root", str(tmp_path),
        "--metrics-address", "127.0.0.1:0",
        env=env(),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    running = Host(process)
    try:
        yield running
    finally:
        assert await running.stop() == 0, "\n".join(running.lines)


@pytest.mark.asyncio
class TestRunWithMetrics:
    async def test_scrape_a_subprocess_host(self, kubelet: FakeKubelet, host: Host) -> None:
        """The host serves /metrics, /healthz, /readyz, /status; readiness follows kubelet."""
        address = await host.listening()
        await kubelet.wait_for_resource(RESOURCE, count=2)
        await kubelet.allocate(RESOURCE, ["thing0"])

        text = (await http_get(address, "/metrics")).text
        labels = {"plugin": "local_hooks", "resource": RESOURCE}
        assert value(text, "devplugin_devices", **labels, health="Healthy") == 2
        assert (
            value(text, "devplugin_rpc_handled_total", **labels, method="Allocate", code="OK") == 1
        )
        assert (await http_get(address, "/healthz")).status == 200

        def ready_reply_is(expected: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return (await http_get(address, "/readyz")).status == expected

            return check

        await eventually(ready_reply_is(200), "ready")
        await kubelet.restart()
        await kubelet.wait_for_registrations(2, RESOURCE, timeout=15)
        await eventually(ready_reply_is(200), "ready again after the restart")

        def accepted() -> int:
            return len([r for r in kubelet.registrations if r.request.resource_name == RESOURCE])

        async def counted_as_kubelet_saw() -> bool:
            text = (await http_get(address, "/metrics")).text
            return value(text, "devplugin_registrations_total", **labels) == accepted()

        # Each Register kubelet accepted is counted once, when it returns to the host.
        await eventually(counted_as_kubelet_saw, "counting what kubelet accepted")
        text = (await http_get(address, "/metrics")).text
        assert value(text, "devplugin_kubelet_restarts_total") == 1
        assert value(text, "devplugin_reregistrations_total", **labels) == accepted() - 1

        await kubelet.stop()
        await eventually(ready_reply_is(503), "not ready without kubelet")
        reasons = (await http_get(address, "/readyz")).json()["not_ready"]
        assert [r["resource"] for r in reasons] == [RESOURCE]

    async def test_status_command_prints_a_live_host(
        self, kubelet: FakeKubelet, host: Host
    ) -> None:
        """`status` prints the host as `simulate` does; --json gives the document."""
        address = await host.listening()
        await kubelet.wait_for_resource(RESOURCE, count=2)
        await eventually(functools.partial(_ready, address), "ready")
        code, out, err = await cli("status", "--address", address)
        assert code == 0, err
        assert "plugin local_hooks  module " in out
        assert f"{RESOURCE}  capacity 2  allocatable 2  registrations 1" in out
        assert re.search(r"thing0\s+Healthy\s+-", out)
        assert "ready: every plugin loaded" in out

        code, out, err = await cli(
            "status", "--json", "--all-devices", extra_env={"DEVPLUGIN_METRICS_ADDRESS": address}
        )
        assert code == 0, err
        document = json.loads(out)
        assert document["ready"] is True
        assert [d["id"] for d in document["resources"][RESOURCE]["devices"]] == ["thing0", "thing1"]


async def _ready(address: str) -> bool:
    return (await http_get(address, "/readyz")).status == 200


async def eventually(
    check: Callable[[], Awaitable[bool]],
    what: str,
    timeout: float = 20.0,  # noqa: ASYNC109 - a deadline per wait reads best here
) -> None:
    """Ask the subprocess host ``check()`` until it holds; TimeoutError naming ``what``.

    The host lives in another process, so there is no event to wait on: the condition
    is polled, bounded by ``timeout``.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)  # another process: nothing to wait on but time
    except TimeoutError:
        raise TimeoutError(f"host not {what} within {timeout} s") from None


@pytest.mark.asyncio
class TestStatusErrors:
    async def test_unreachable_host(self) -> None:
        """Nobody listening: one line on stderr, exit 1."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        code, out, err = await cli("status", "--address", f"127.0.0.1:{port}")
        assert code == 1
        assert out == ""
        assert err.strip().splitlines() == [
            f"devplugin-host status: cannot reach a host at http://127.0.0.1:{port}"
            "/status?devices=10: Connection refused"
        ]

    async def test_bad_address(self) -> None:
        """A malformed address: one line naming the option, exit 2."""
        code, _, err = await cli("status", "--address", "localhost")
        assert code == 2
        assert err.strip().splitlines() == [
            "Error: --address expects HOST:PORT (e.g. 0.0.0.0:9464), got 'localhost'"
        ]

    async def test_run_with_bad_metrics_address_exits_2(self, tmp_path: Path) -> None:
        """`run --metrics-address` with a bad value stops before serving, exit 2."""
        code, _, err = await cli(
            "run", *LOCAL_PLUGIN, "--plugin-dir", str(tmp_path),
            "--metrics-address", "nohost",
        )  # fmt: skip
        assert code == 2
        assert "--metrics-address expects HOST:PORT" in err

    async def test_run_with_busy_metrics_address_exits_1(self, tmp_path: Path) -> None:
        """An address already in use: one error naming it, nothing served, exit 1."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            code, _, err = await cli(
                "run", *LOCAL_PLUGIN, "--plugin-dir", str(tmp_path),
                "--cdi-dir", str(tmp_path / "cdi"), "--metrics-address", f"127.0.0.1:{port}",
            )  # fmt: skip
        assert code == 1
        assert f"cannot serve metrics on 127.0.0.1:{port}" in err


class TestSettings:
    def test_config_file_key(self, tmp_path: Path) -> None:
        """`metrics-address` in the TOML file sets it; the command line wins."""
        from host._config import read_config_file, resolve_settings

        path = tmp_path / "host.toml"
        path.write_text('metrics-address = "0.0.0.0:9464"\n')
        config = read_config_file(path)
        assert resolve_settings({}, config).metrics_address == "0.0.0.0:9464"
        given = {"metrics_address": "127.0.0.1:1"}
        assert resolve_settings(given, config).metrics_address == "127.0.0.1:1"
        assert resolve_settings({}).metrics_address is None

    def test_config_file_wrong_type(self, tmp_path: Path) -> None:
        """A non-string value is a ConfigError naming the key."""
        from host._config import ConfigError, read_config_file

        path = tmp_path / "host.toml"
        path.write_text("metrics-address = 9464\n")
        with pytest.raises(ConfigError, match="metrics-address must be a string"):
            read_config_file(path)

    def test_help_names_the_variable(self) -> None:
        """`run --help` documents --metrics-address and DEVPLUGIN_METRICS_ADDRESS."""
        from click.testing import CliRunner

        from host.cli import main

        out = CliRunner().invoke(main, ["run", "--help"]).output
        assert "--metrics-address" in out
        assert "DEVPLUGIN_METRICS_ADDRESS" in out
        status_help = CliRunner().invoke(main, ["status", "--help"]).output
        assert "127.0.0.1:9464" in status_help

    def test_bad_address_from_the_environment_names_it(self) -> None:
        """A bad DEVPLUGIN_METRICS_ADDRESS is reported under that name, exit 2."""
        from click.testing import CliRunner

        from host.cli import main

        result = CliRunner().invoke(
            main,
            ["run", *LOCAL_PLUGIN],
            env={"DEVPLUGIN_METRICS_ADDRESS": "9464"},
        )
        assert result.exit_code == 2
        assert "DEVPLUGIN_METRICS_ADDRESS expects HOST:PORT" in result.output


class TestStatusText:
    def test_not_ready_and_disabled(self) -> None:
        """Failed plugins show their error, disabled ones share a line, reasons come last."""
        from host._status_client import status_text

        document = {
            "version": "9.9",
            "ready": False,
            "not_ready": [
                {"plugin": "gpu", "reason": "failed to load: boom"},
                {"plugin": "generic", "resource": "r.example.com/x", "reason": "waiting"},
            ],
            "plugins": [
                {"name": "generic", "source": "dist 1", "state": "serving", "error": None},
                {"name": "gpu", "source": "dist 1", "state": "failed", "error": "boom"},
                {"name": "qat", "source": "dist 1", "state": "disabled", "error": None},
                {"name": "sgx", "source": "dist 1", "state": "disabled", "error": None},
            ],
            "resources": {
                "r.example.com/x": {
                    "capacity": 1,
                    "allocatable": 0,
                    "registrations": 0,
                    "connected": False,
                    "devices": [{"id": "x0", "health": "Unhealthy", "numa": [1]}],
                }
            },
        }
        assert status_text(document).splitlines() == [
            "devplugin-host 9.9",
            "plugin generic  dist 1  serving",
            "plugin gpu  dist 1  failed: boom",
            "disabled: qat, sgx",
            "",
            "r.example.com/x  capacity 1  allocatable 0  registrations 0  (disconnected)",
            "    ID  HEALTH     NUMA",
            "    x0  Unhealthy  1",
            "",
            "NOT READY:",
            "    gpu: failed to load: boom",
            "    r.example.com/x: waiting",
        ]
