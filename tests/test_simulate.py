from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner, Result

from host import _host
from host.cli import KUBELET_MODES, main
from host.testing import KubeletMode
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.fixtures import simulate_hooks

HOOKS = Path(simulate_hooks.__file__)
WIDGET = "sim.example.com/widget"
WITH_HOOKS = ("--enable", "simulate_hooks", "--plugin-module", str(HOOKS))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [key for key in os.environ if key.startswith("DEVPLUGIN_")]:
        monkeypatch.delenv(name)
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if isinstance(handler, _host._StderrHandler):
            root.removeHandler(handler)
    root.setLevel(level)
    sys.modules.pop("_devplugin_module_simulate_hooks", None)


@pytest.fixture
def devfs(tmp_path: Path) -> Path:
    """A devfs root holding the nodes the generic plugin serves by default.

    Links to /dev/null: character devices on any Linux box, no root needed.
    """
    root = tmp_path / "dev"
    (root / "net").mkdir(parents=True)
    for node in ("kvm", "fuse", "net/tun"):
        (root / node).symlink_to("/dev/null")
    return root


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["simulate", *args], catch_exceptions=False)


def once_json(*args: str, code: int = 0) -> dict[str, Any]:
    result = invoke("--once", "--json", *args)
    assert result.exit_code == code, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def workdir_of(events: list[dict[str, Any]]) -> Path:
    started = next(event for event in events if event["event"] == "kubelet-started")
    return Path(started["workdir"])


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0][len("Error: ") :]


class TestOnce:
    def test_json_document(self, devfs: Path) -> None:
        """--once --json: one document with every resource as kubelet saw it, then cleanup."""
        document = once_json(
            "--enable", "generic,simulate_hooks", "--plugin-module", str(HOOKS),
            "--devfs-root", str(devfs),
        )  # fmt: skip
        assert set(document) == {"resources", "allocations", "rejected", "events"}
        resources = document["resources"]
        assert sorted(resources) == [
            "devices.devplugin.io/fuse",
            "devices.devplugin.io/kvm",
            "devices.devplugin.io/tun",
            WIDGET,
        ]
        kvm = resources["devices.devplugin.io/kvm"]
        assert (kvm["capacity"], kvm["allocatable"], kvm["registrations"]) == (110, 110, 1)
        assert kvm["devices"][:2] == [
            {"id": "kvm-0", "health": "Healthy", "numa": []},
            {"id": "kvm-1", "health": "Healthy", "numa": []},
        ]
        assert kvm["devices"][10]["id"] == "kvm-10"  # natural order
        assert resources[WIDGET]["devices"][1] == {
            "id": "widget1",
            "health": "Healthy",
            "numa": [1],
        }
        assert document["allocations"] == []
        assert document["rejected"] == []
        kinds = [event["event"] for event in document["events"]]
        assert kinds[0] == "kubelet-started"
        assert kinds.count("registered") == 4
        assert kinds.count("devices") == 4
        assert "ready" in kinds
        registered = next(e for e in document["events"] if e.get("resource") == WIDGET)
        assert registered["event"] == "registered"
        assert registered["preferred_allocation"] is True
        assert not workdir_of(document["events"]).exists()  # sockets, CDI specs and all

    @pytest.mark.parametrize("mode", KUBELET_MODES)
    def test_kubelet_modes(self, mode: str) -> None:
        """Each kubelet generation sees the plugin register and report its devices."""
        document = once_json(*WITH_HOOKS, "--kubelet-mode", mode)
        assert document["resources"][WIDGET]["allocatable"] == 4
        assert document["events"][0]["mode"] == mode

    @pytest.mark.parametrize("mode", ["1.25", "1.36"])
    def test_plugins_registry(self, mode: str) -> None:
        """--registration plugins-registry: the fake kubelet's plugin watcher registers them."""
        document = once_json(
            *WITH_HOOKS, "--kubelet-mode", mode, "--registration", "plugins-registry"
        )
        started = document["events"][0]
        assert started["registration"] == "plugins-registry"
        registry = Path(started["registry_dir"])
        widget = document["resources"][WIDGET]
        assert (widget["allocatable"], widget["registrations"]) == (4, 1)
        registered = next(e for e in document["events"] if e["event"] == "registered")
        assert Path(registered["endpoint"]).parent == registry
        assert document["rejected"] == []

    def test_kubelet_modes_are_the_fake_kubelets(self) -> None:
        """--kubelet-mode offers exactly the generations FakeKubelet reproduces."""
        assert get_args(KubeletMode) == KUBELET_MODES

    def test_table(self) -> None:
        """Without --json: timestamped events, then each resource with its devices."""
        result = invoke(*WITH_HOOKS, "--once", "--set", "simulate_hooks.count=25")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert f"{WIDGET}: registered, endpoint sim.example.com-widget.sock, " in out
        assert f"{WIDGET}: first device list: capacity 25, allocatable 25" in out
        assert f"{WIDGET}  capacity 25  allocatable 25  registrations 1\n" in out
        lines = out.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split() == ["ID", "HEALTH", "NUMA"])
        assert lines[header + 1].split() == ["widget0", "Healthy", "0"]
        assert lines[header + 10].split() == ["widget9", "Healthy", "1"]
        assert lines[header + 11] == "    ... 15 more (all Healthy)"

    def test_real_dev_on_this_machine(self) -> None:
        """The README's command, as a process: the machine's own /dev nodes, exit 0."""
        process = subprocess.run(
            [sys.executable, "-m", "host.cli", "simulate", "--enable", "generic", "--once",
             "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert process.returncode == 0, process.stderr
        resources = json.loads(process.stdout)["resources"]
        for node, name in (("kvm", "kvm"), ("fuse", "fuse"), ("net/tun", "tun")):
            if Path("/dev", node).exists():
                assert resources[f"devices.devplugin.io/{name}"]["allocatable"] == 110

    def test_no_devices(self, tmp_path: Path) -> None:
        """A scanner that finds nothing is said so; nothing to wait for, exit 0."""
        document = once_json("--enable", "generic", "--devfs-root", str(tmp_path))
        assert document["resources"] == {}
        assert any(
            event["event"] == "no-devices" and event["namespace"] == "devices.devplugin.io"
            for event in document["events"]
        )

    def test_timeout_names_what_never_appeared(self, tmp_path: Path) -> None:
        """A scanner that never reports: exit 1 after --timeout, naming plugin and namespace."""
        module = tmp_path / "silent.py"
        module.write_text(
            "import asyncio\n"
            "from host import hookimpl\n"
            "class Silent:\n"
            "    async def scan(self, notifier):\n"
            "        await asyncio.Event().wait()\n"
            "@hookimpl\n"
            "def devplugin_scanners(config):\n"
            "    return [('silent.example.com', Silent())]\n",
            encoding="utf-8",
        )
        result = invoke(
            "--enable", "silent,simulate_hooks", "--plugin-module", str(module),
            "--plugin-module", str(HOOKS), "--once", "--json", "--timeout", "2",
        )  # fmt: skip
        assert result.exit_code == 1
        expected = (
            "timed out after 2 s waiting for: plugin 'silent' namespace silent.example.com "
            "to report"
        )
        assert expected in result.stderr
        document = json.loads(result.stdout)
        assert document["resources"][WIDGET]["registrations"] == 1  # the others are shown
        assert document["events"][-1]["event"] == "timeout"
        sys.modules.pop("_devplugin_module_silent", None)

    def test_failed_plugin_exits_1(self, tmp_path: Path) -> None:
        """A plugin that fails to load is reported; the others are simulated; exit 1."""
        module = tmp_path / "broken.py"
        module.write_text("raise RuntimeError('no license')\n", encoding="utf-8")
        result = invoke(
            "--enable", "broken,simulate_hooks", "--plugin-module", str(module),
            "--plugin-module", str(HOOKS), "--once", "--json",
        )  # fmt: skip
        assert result.exit_code == 1
        assert "plugin 'broken' (module " in result.stderr
        assert WIDGET in json.loads(result.stdout)["resources"]


class TestAllocate:
    def test_preferred_allocation_is_asked_first(self) -> None:
        """GetPreferredAllocation picks the devices; the whole response is printed."""
        document = once_json(*WITH_HOOKS, "--allocate", f"{WIDGET}=2")
        [allocation] = document["allocations"]
        assert allocation["devices"] == ["widget3", "widget2"]  # kubelet alone: widget0, 1
        assert allocation["preferred_allocation"] is True
        assert allocation["error"] is None
        response = allocation["response"]
        assert response["devices"] == [
            {"host_path": f"/dev/widget{i}", "container_path": f"/dev/widget{i}",
             "permissions": "rw"}
            for i in (3, 2)
        ]  # fmt: skip
        assert response["mounts"] == []
        assert response["envs"] == {"WIDGET_2": "widget2", "WIDGET_3": "widget3"}
        assert response["annotations"] == {
            simulate_hooks.POST_ALLOCATE_ANNOTATION: WIDGET,
            "sim.example.com/widget": "yes",
        }
        assert response["cdi_devices"] == [
            "sim.example.com/widget=widget3",
            "sim.example.com/widget=widget2",
        ]
        allocated = [e for e in document["events"] if e["event"] == "allocated"]
        assert allocated[0]["devices"] == ["widget3", "widget2"]

    def test_devices_in_use_come_from_pod_resources(self) -> None:
        """After the allocations: who holds which device, as PodResources List says."""
        document = once_json(*WITH_HOOKS, "--allocate", f"{WIDGET}=2", "--allocate", f"{WIDGET}=1")
        [in_use] = [e for e in document["events"] if e["event"] == "in-use"]
        assert in_use["resource"] == WIDGET
        held = {d for a in document["allocations"] for d in a["devices"]}
        assert set(in_use["devices"]) == held
        assert sorted(h for hs in in_use["devices"].values() for h in hs) == sorted(
            ["default/simulate-1/main"] * 2 + ["default/simulate-2/main"]
        )

    def test_text(self) -> None:
        """The text output shows the chosen devices and each part of the response."""
        result = invoke(*WITH_HOOKS, "--once", "--allocate", f"{WIDGET}=1")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert f"allocate {WIDGET}=1: widget3 (GetPreferredAllocation asked first)\n" in out
        assert "    devices      /dev/widget3 -> /dev/widget3 (rw)\n" in out
        assert "    envs         WIDGET_3=widget3\n" in out
        assert "    cdi devices  sim.example.com/widget=widget3" in out

    def test_too_few_healthy_devices(self) -> None:
        """An allocation that cannot be satisfied: why, in the output and on stderr; exit 1."""
        document = once_json(
            *WITH_HOOKS, "--set", "simulate_hooks.unhealthy=3", "--allocate", f"{WIDGET}=4",
            code=1,
        )  # fmt: skip
        expected = (
            f"cannot allocate 4 of {WIDGET}: only 1 healthy device(s) of 4 requested (capacity 4)"
        )
        assert document["allocations"] == [
            {
                "resource": WIDGET,
                "requested": 4,
                "devices": [],
                "preferred_allocation": False,
                "response": None,
                "error": expected,
            }
        ]
        result = invoke(
            *WITH_HOOKS, "--once", "--set", "simulate_hooks.unhealthy=3",
            "--allocate", f"{WIDGET}=4",
        )  # fmt: skip
        assert result.exit_code == 1
        assert f"allocate {WIDGET}=4: FAILED: {expected}" in result.stdout
        assert expected in result.stderr

    def test_devices_already_allocated(self) -> None:
        """A second container gets the devices left, then there are none."""
        document = once_json(
            *WITH_HOOKS, "--allocate", f"{WIDGET}=3", "--allocate", f"{WIDGET}=1",
            "--allocate", f"{WIDGET}=1",
            code=1,
        )  # fmt: skip
        first, second, third = document["allocations"]
        assert first["devices"] == ["widget3", "widget2", "widget1"]
        assert second["devices"] == ["widget0"]
        assert third["error"] == (
            f"cannot allocate 1 of {WIDGET}: only 0 healthy device(s) free of 1 requested "
            "(4 allocated before)"
        )

    def test_unknown_resource(self) -> None:
        """A resource no enabled plugin serves: exit 1, listing those served."""
        document = once_json(*WITH_HOOKS, "--allocate", "nosuch.example.com/x=1", code=1)
        assert document["allocations"][0]["error"] == (
            "cannot allocate 1 of nosuch.example.com/x: the enabled plugins serve no such "
            f"resource (they serve {WIDGET})"
        )

    def test_gpu_on_a_generated_tree(self, tmp_path: Path) -> None:
        """The gpu plugin on a 4-card fake tree: kubelet's allocation of one i915 card."""
        cards = [FakeGpu(driver="i915", numa_node=index // 2) for index in range(4)]
        write_gpu_tree(tmp_path, FakeGpuTree(cards=cards))
        document = once_json(
            "--enable", "gpu", "--sysfs-root", str(tmp_path / "sys"),
            "--devfs-root", str(tmp_path / "dev"), "--allocate", "gpu.intel.com/i915=1",
        )  # fmt: skip
        i915 = document["resources"]["gpu.intel.com/i915"]
        assert (i915["capacity"], i915["allocatable"], i915["registrations"]) == (4, 4, 1)
        assert [(d["id"], d["numa"]) for d in i915["devices"]] == [
            ("card0-0", [0]), ("card1-0", [0]), ("card2-0", [1]), ("card3-0", [1]),
        ]  # fmt: skip
        [allocation] = document["allocations"]
        assert allocation["preferred_allocation"] is True
        [device_id] = allocation["devices"]
        card = int(device_id.removeprefix("card").split("-")[0])
        response = allocation["response"]
        # Found under the devfs root, given to kubelet as the node's own paths.
        assert [d["host_path"] for d in response["devices"]] == [
            f"/dev/dri/card{card}",
            f"/dev/dri/renderD{128 + card}",
        ]
        assert all(d["permissions"] == "rw" for d in response["devices"])
        assert response["cdi_devices"] == [f"intel.cdi.k8s.io/gpu=card{card}"]
        assert not workdir_of(document["events"]).exists()


class TestLive:
    def test_restarts_show_re_registration(self) -> None:
        """--restart-kubelet-every with --duration: JSON lines, re-registrations counted."""
        result = invoke(
            *WITH_HOOKS, "--restart-kubelet-every", "0.2", "--duration", "1.5", "--json",
            "--allocate", f"{WIDGET}=1",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        lines = json_lines(result)
        kinds = [line["event"] for line in lines]
        assert kinds[-1] == "summary"
        summary = lines[-1]
        assert summary["resources"][WIDGET]["registrations"] > 1
        assert summary["allocations"][0]["devices"] == ["widget3"]
        assert "kubelet-restarted" in kinds
        assert "re-registered" in kinds
        assert "snapshot" in kinds
        re_registered = [
            line for line in lines if line["event"] == "registered" and line["registration"] > 1
        ]
        assert re_registered
        assert re_registered[0]["message"].startswith(f"{WIDGET}: re-registered (registration 2)")
        assert not workdir_of(lines).exists()

    def test_text(self) -> None:
        """Live text: events, the table once every resource is there, the final state."""
        result = invoke(*WITH_HOOKS, "--duration", "0.3", "--allocate", f"{WIDGET}=1")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "-- resources as kubelet sees them:\n" in out
        assert f"allocate {WIDGET}=1: widget3 (GetPreferredAllocation asked first)" in out
        assert "-- after " in out
        assert out.count(f"{WIDGET}  capacity 4  allocatable 4  registrations 1") == 2

    def test_sigterm_stops_cleanly(self) -> None:
        """Without --once/--duration it runs until SIGTERM, then cleans up and exits 0."""
        with subprocess.Popen(
            [sys.executable, "-m", "host.cli", "simulate", *WITH_HOOKS, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) as process:  # fmt: skip
            assert process.stdout is not None
            lines = []
            for line in process.stdout:  # blocks until the simulation has shown the resources
                lines.append(json.loads(line))
                if lines[-1]["event"] == "snapshot":
                    break
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        lines += [json.loads(line) for line in out.splitlines()]
        assert lines[-1]["event"] == "summary"
        assert lines[-1]["resources"][WIDGET]["allocatable"] == 4
        assert not workdir_of(lines).exists()


class TestUsageErrors:
    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (
                ["--allocate", "nonsense"],
                "--allocate expects RESOURCE=COUNT (e.g. devices.devplugin.io/kvm=1), "
                "got 'nonsense'",
            ),
            (
                ["--allocate", "x/y=0"],
                "--allocate x/y=0: COUNT must be a whole number >= 1, got '0'",
            ),
            (
                ["--allocate", "x/y=two"],
                "--allocate x/y=two: COUNT must be a whole number >= 1, got 'two'",
            ),
            (
                ["--allocate", "kvm=1"],
                "--allocate kvm=1: 'kvm' is not a resource name: it has no '/' separating",
            ),
            (
                ["--once", "--duration", "1"],
                "--once and --duration exclude each other: pick one way to stop",
            ),
            (
                ["--once", "--restart-kubelet-every", "1"],
                "--restart-kubelet-every needs a run that lasts",
            ),
            (["--enable", "nosuch"], "unknown plugin 'nosuch' in --enable; available plugins: "),
            (
                ["--set", "simulate_hooks.count=many"],
                "plugin 'simulate_hooks': option count (from --set): expected an integer, "
                "got 'many'",
            ),
        ],
    )
    def test_one_line_exit_2(self, args: list[str], expected: str) -> None:
        """A person's mistake: one line on stderr, exit 2, nothing simulated."""
        result = invoke("--plugin-module", str(HOOKS), *args)
        assert one_line_error(result).startswith(expected)
        assert result.stdout == ""

    def test_environment_variables(self) -> None:
        """DEVPLUGIN_ALLOCATE and DEVPLUGIN_ONCE work like the options."""
        result = CliRunner().invoke(
            main,
            ["simulate", *WITH_HOOKS, "--json"],
            env={"DEVPLUGIN_ONCE": "1", "DEVPLUGIN_ALLOCATE": f"{WIDGET}=1 {WIDGET}=1"},
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        allocations = json.loads(result.stdout)["allocations"]
        assert [a["devices"] for a in allocations] == [["widget3"], ["widget2"]]

    def test_help(self) -> None:
        """The help names the environment variables and the exit status."""
        out = invoke("--help").stdout
        for var in ("DEVPLUGIN_ALLOCATE", "DEVPLUGIN_RESTART_KUBELET_EVERY", "DEVPLUGIN_DURATION",
                    "DEVPLUGIN_ONCE", "DEVPLUGIN_KUBELET_MODE", "DEVPLUGIN_TIMEOUT"):  # fmt: skip
            assert var in out
        assert "Exit status: 0" in out


class TestDra:
    @pytest.fixture
    def gpu_root(self, tmp_path: Path) -> Path:
        cards = [FakeGpu(driver="i915", numa_node=0) for _ in range(2)]
        write_gpu_tree(tmp_path, FakeGpuTree(cards=cards))
        return tmp_path

    def roots(self, root: Path) -> tuple[str, ...]:
        return ("--sysfs-root", str(root / "sys"), "--devfs-root", str(root / "dev"))

    def test_claim_prepared_from_the_published_slices(self, gpu_root: Path) -> None:
        """--dra gpu: slices shown, a claim of one i915 device prepared, its CDI IDs resolved
        to spec files; generic beside it is still a device plugin."""
        (gpu_root / "dev" / "kvm").symlink_to("/dev/null")
        document = once_json(
            "--enable", "gpu,generic", "--dra", "gpu", *self.roots(gpu_root),
            "--allocate", "gpu.intel.com/i915=1",
        )  # fmt: skip
        assert "devices.devplugin.io/kvm" in document["resources"]
        assert not [name for name in document["resources"] if name.startswith("gpu.intel.com")]
        published = document["dra"]["gpu.intel.com"]
        assert published["slices"] == 1
        assert [(d["name"], d["type"], d["taints"]) for d in published["devices"]] == [
            ("i915-card0-0", "i915", []),
            ("i915-card1-0", "i915", []),
        ]
        [claim] = document["allocations"]
        assert claim["error"] is None
        # A pod written for the device plugin, served through the resource's DeviceClass
        # (KEP-5004): the scheduler's claim for the pod's extended resources.
        assert claim["pod"] == "default/simulate-1"
        assert claim["device_class"] == "i915.gpu.intel.com"
        assert claim["claim"].startswith("default/simulate-1-extended-resources-")
        assert claim["request_mappings"] == [
            {
                "containerName": "main",
                "resourceName": "gpu.intel.com/i915",
                "requestName": "container-0-request-0",
            }
        ]
        [device] = claim["devices"]
        card = device.removeprefix("i915-card").split("-")[0]
        ids = [cdi["id"] for cdi in claim["cdi"]]
        assert ids[0] == f"intel.cdi.k8s.io/gpu=card{card}"  # the plugin's own CDI device
        assert ids[1] == f"gpu.intel.com/dra=claim-{claim['uid']}-{device}"  # the claim's
        for cdi in claim["cdi"]:
            assert Path(cdi["spec_file"]).parent.name == "cdi"
            assert cdi["device_nodes"] == [
                f"/dev/dri/card{card}",
                f"/dev/dri/renderD{128 + int(card)}",
            ]
        view = published["driver"]  # the driver's own view, as /status shows it
        assert view["registration"]["state"] == "registered"
        assert view["pool"] == {"name": "simulated-node", "generation": 1}
        assert (view["device_count"], view["healthy"], view["prepared_claims"]) == (2, 2, 1)
        [prepared] = view["claims"]
        assert f"{prepared['namespace']}/{prepared['name']}" == claim["claim"]
        assert prepared["uid"] == claim["uid"]
        assert [pod["name"] for pod in prepared["reserved_for"]] == ["simulate-1"]
        assert prepared["devices"][0]["cdi_device_ids"] == ids
        kinds = [event["event"] for event in document["events"]]
        assert kinds.index("dra-started") < kinds.index("ready") < kinds.index("slices")
        assert "prepared" in kinds
        assert not workdir_of(document["events"]).exists()

    def test_text(self, gpu_root: Path) -> None:
        """As text: the slices as a table, then the claim with each CDI ID and its spec file."""
        result = invoke(
            "--once", "--enable", "gpu", "--dra", "gpu", *self.roots(gpu_root),
            "--allocate", "gpu.intel.com/i915=2",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "gpu.intel.com: 1 ResourceSlice(s), 2 device(s), 0 tainted" in out
        assert "gpu.intel.com  ResourceSlices 1  devices 2" in out
        assert "no resources registered" not in out
        assert "DRA driver gpu.intel.com  plugin gpu  registered" in out
        assert "devices 2 (2 healthy, 0 unhealthy)  prepared claims 1" in out
        [row] = [line.split() for line in out.splitlines() if line.startswith("    default/")]
        # The pod's extended-resource claim (KEP-5004), reserved for the pod.
        assert row[0].startswith("default/simulate-1-extended-resources-")
        assert row[2] == "simulate-1"
        assert (
            "allocate gpu.intel.com/i915=2 (pod default/simulate-1, DeviceClass "
            "i915.gpu.intel.com, claim default/simulate-1-extended-resources-"
        ) in out
        assert out.count("         spec file /tmp/dpsim-") == 4  # 2 devices x 2 CDI IDs

    def test_live_text_shows_the_slices(self, gpu_root: Path) -> None:
        """Live (--duration): the slices are shown beside what kubelet sees, then at the end."""
        result = invoke(
            "--enable", "gpu", "--dra", "gpu", *self.roots(gpu_root), "--duration", "0.3"
        )
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "-- ResourceSlices as the API server holds them:" in out
        assert out.count("gpu.intel.com  ResourceSlices 1  devices 2") == 2  # live, then the end
        assert "no resources registered" not in out  # a DRA driver only: nothing for kubelet

    def test_more_devices_than_published(self, gpu_root: Path) -> None:
        """Asking for more devices than published fails that claim: exit 1, the reason said."""
        document = once_json(
            "--enable", "gpu", "--dra", "gpu", *self.roots(gpu_root),
            "--allocate", "gpu.intel.com/i915=3", code=1,
        )  # fmt: skip
        [claim] = document["allocations"]
        assert claim["error"] == (
            "cannot allocate 3 of gpu.intel.com/i915: cannot allocate all claims: request "
            "container-0-request-0 wants 3 device(s) of DeviceClass i915.gpu.intel.com, 2 free "
            "on node simulated-node"
        )

    def test_plugin_not_enabled(self) -> None:
        """--dra naming a plugin that is not enabled: one line, exit 2."""
        message = one_line_error(invoke("--once", "--enable", "generic", "--dra", "gpu"))
        assert message.startswith("--dra names plugin 'gpu', which is not enabled")
