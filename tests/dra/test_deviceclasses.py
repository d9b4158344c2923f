"""DeviceClasses for extended resources backed by DRA: the objects and `dra deviceclasses`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from click.testing import CliRunner

from host.cli import main
from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, DeviceSpec
from host.dra import build_slices
from host.dra._deviceclasses import (
    device_class,
    device_class_name,
    device_class_problems,
    device_class_selector,
)
from host.testing import FakeApiServer
from host.testing._apiserver_store import ApiFailure
from host.testing._selectors import SelectorError, Selectors, cel_device
from hostplugins.gpu.fakedev import FakeGpu, FakeGpuTree, write_gpu_tree
from tests.dra.schema import assert_schema_valid

GPU = "gpu.intel.com"


def selects(obj: dict[str, Any], driver: str, device: dict[str, Any]) -> bool:
    """Evaluate every selector of class ``obj`` (real CEL) on a published slice device."""
    environment = celpy.Environment()
    activation = {"device": celpy.json_to_cel(cel_device(driver, device))}
    return all(
        bool(environment.program(environment.compile(s["cel"]["expression"])).evaluate(activation))
        for s in obj["spec"]["selectors"]
    )


def published(driver: str, snapshot: dict[str, dict[str, DeviceInfo]]) -> list[dict[str, Any]]:
    result = build_slices(driver=driver, node_name="node-a", node_uid="uid-1", snapshot=snapshot)
    return [device for item in result.slices for device in item["spec"]["devices"]]


def card(index: int, state: str = HEALTHY) -> DeviceInfo:
    path = f"/dev/dri/card{index}"
    return DeviceInfo(state=state, nodes=[DeviceSpec(host_path=path, container_path=path)])


class TestDeviceClass:
    def test_shape(self) -> None:
        """Selector by driver and type attribute; the device plugin's resource name."""
        obj = device_class(GPU, "i915")
        assert obj["metadata"]["name"] == "i915.gpu.intel.com"
        assert obj["spec"] == {
            "selectors": [
                {
                    "cel": {
                        "expression": 'device.driver == "gpu.intel.com" && '
                        'device.attributes["gpu.intel.com"].type == "i915"'
                    }
                }
            ],
            "extendedResourceName": "gpu.intel.com/i915",
        }

    @pytest.mark.parametrize(
        ("driver", "dev_type"),
        [
            (GPU, "i915"),
            ("dsa.intel.com", "wq-user-dedicated"),
            ("fpga.intel.com", "af-AbC_1.x"),
            ("devices.devplugin.io", "Serial_Port"),
            ("qat.intel.com", "a" * 63),
        ],
    )
    def test_valid_for_the_api_server(self, driver: str, dev_type: str) -> None:
        """Official schemas (1.34 and newest, strict) and the server's own checks pass."""
        obj = device_class(driver, dev_type)
        assert_schema_valid(obj)
        assert device_class_problems(obj) == []
        environment = celpy.Environment()
        environment.compile(obj["spec"]["selectors"][0]["cel"]["expression"])

    def test_names_are_stable_and_distinct(self) -> None:
        """A non-label type gets a readable prefix and a hash of the exact type."""
        names = {
            device_class_name("fpga.intel.com", t) for t in ("af-AbC_1", "af-abc-1", "AF-ABC-1")
        }
        assert len(names) == 3
        name = device_class_name("fpga.intel.com", "af-AbC_1")
        assert name == device_class_name("fpga.intel.com", "af-AbC_1")
        label, _, driver = name.partition(".")
        assert driver == "fpga.intel.com"
        assert label.startswith("af-abc-1-")
        assert len(label) == len("af-abc-1-") + 8
        assert len(device_class_name("d.example.com", "x" * 63).partition(".")[0]) == 63

    def test_invalid_resource_name_is_refused(self) -> None:
        """A type no extended resource can have (too long) is a ValueError naming it."""
        with pytest.raises(ValueError, match="cannot be an extended resource name"):
            device_class(GPU, "x" * 64)

    def test_selector_quotes_its_strings(self) -> None:
        """A quote in a type stays inside its CEL string literal."""
        expression = device_class_selector("a.example.com", 'x"y')
        environment = celpy.Environment()
        environment.compile(expression)
        assert expression.endswith('.type == "x\\"y"')


class TestSelection:
    def test_each_class_selects_exactly_its_type(self) -> None:
        """Against the slices the host publishes: i915 class, i915 devices only."""
        devices = published(
            GPU,
            {"i915": {"card0-0": card(0), "card1-0": card(1)}, "xe": {"card2-0": card(2)}},
        )
        for dev_type, expected in (("i915", 2), ("xe", 1)):
            obj = device_class(GPU, dev_type)
            chosen = [d["name"] for d in devices if selects(obj, GPU, d)]
            assert len(chosen) == expected
            assert all(d["attributes"]["type"]["string"] == dev_type
                       for d in devices if d["name"] in chosen)  # fmt: skip

    def test_another_driver_is_never_selected(self) -> None:
        """A device of another driver with the same type is left alone."""
        (device,) = published("gpu.example.com", {"i915": {"card0-0": card(0)}})
        assert not selects(device_class(GPU, "i915"), "gpu.example.com", device)

    def test_unhealthy_devices_still_match(self) -> None:
        """Health is a taint, not the class's business: the scheduler skips tainted devices."""
        (device,) = published(GPU, {"i915": {"card0-0": card(0, UNHEALTHY)}})
        assert device["taints"]
        assert selects(device_class(GPU, "i915"), GPU, device)


class TestFakeSchedulerSelectors:
    @pytest.mark.parametrize("dev_type", ["i915", "xe", 'x"y\\z'])
    def test_generated_form_agrees_with_cel(self, dev_type: str) -> None:
        """The direct evaluation of the host's own form gives what real CEL gives."""
        devices = published(GPU, {"i915": {"c0": card(0)}, "xe": {"c1": card(1)}})
        devices += published("gpu.example.com", {"i915": {"c2": card(2)}})
        obj = device_class(GPU, dev_type) if '"' not in dev_type else _raw_class(dev_type)
        fast, slow = Selectors(obj), Selectors(obj, fast=False)
        for device in devices:
            driver = "gpu.example.com" if device["name"].endswith("c2") else GPU
            assert (
                fast.match(driver, device)
                == slow.match(driver, device)
                == (driver == GPU and device["attributes"]["type"]["string"] == dev_type)
            )

    def test_generated_form_needs_no_cel_library(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """simulate runs on a base install: the host's own selectors never import celpy."""
        monkeypatch.setitem(sys.modules, "celpy", None)
        (device,) = published(GPU, {"i915": {"c0": card(0)}})
        assert Selectors(device_class(GPU, "i915")).match(GPU, device)
        odd = device_class(GPU, "i915")
        odd["spec"]["selectors"][0]["cel"]["expression"] = "true"
        with pytest.raises(ImportError, match="needs cel-python"):
            Selectors(odd)

    def test_other_expressions_go_to_cel(self) -> None:
        """An administrator's own selector (not the host's form) is evaluated by cel-python."""
        obj = device_class(GPU, "i915")
        obj["spec"]["selectors"].append(
            {"cel": {"expression": 'device.attributes["gpu.intel.com"].id.startsWith("c0")'}}
        )
        devices = published(GPU, {"i915": {"c0": card(0), "c1": card(1)}})
        assert [Selectors(obj).match(GPU, d) for d in devices] == [True, False]

    def test_a_broken_expression_is_named(self) -> None:
        """An expression that does not compile: SelectorError naming the class."""
        obj = device_class(GPU, "i915")
        obj["spec"]["selectors"] = [{"cel": {"expression": "device.driver == "}}]
        with pytest.raises(SelectorError, match=r"i915\.gpu\.intel\.com"):
            Selectors(obj)


def _raw_class(dev_type: str) -> dict[str, Any]:
    """A class for a type no resource name allows (quotes): the selector alone matters."""
    obj = device_class(GPU, "i915")
    obj["spec"]["selectors"][0]["cel"]["expression"] = device_class_selector(GPU, dev_type)
    return obj


class TestServerChecks:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            (lambda o: o["metadata"].update(name="Not_A.Name"), "metadata.name"),
            (lambda o: o["spec"].update(extendedResourceName="gpu"), "spec.extendedResourceName"),
            (
                lambda o: o["spec"].update(extendedResourceName="kubernetes.io/gpu"),
                "spec.extendedResourceName",
            ),
            (
                lambda o: o["spec"].update(extendedResourceName="requests.example.com/gpu"),
                "spec.extendedResourceName",
            ),
            (lambda o: o["spec"].update(selectors=o["spec"]["selectors"] * 33), "spec.selectors"),
            (
                lambda o: o["spec"]["selectors"][0]["cel"].update(expression="x" * 10241),
                "spec.selectors[0].cel.expression",
            ),
        ],
    )
    def test_each_mistake_is_named(self, change: Any, field: str) -> None:
        """The hand check (from the API server's validation) names the field."""
        obj = device_class(GPU, "i915")
        change(obj)
        assert field in [where for where, _ in device_class_problems(obj)]

    @pytest.mark.asyncio
    async def test_fake_api_server_refuses_them(self) -> None:
        """The fake API server keeps valid classes and answers 422 for the others."""
        async with FakeApiServer() as api:
            api.add_device_class(device_class(GPU, "i915"))
            broken = device_class(GPU, "xe")
            broken["spec"]["extendedResourceName"] = "xe"
            with pytest.raises(ApiFailure) as failure:
                api.add_device_class(broken)
            assert failure.value.code == 422
            assert [obj["metadata"]["name"] for obj in api.device_classes()] == [
                "i915.gpu.intel.com"
            ]


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["dra", "deviceclasses", *args], env=env or {})


@pytest.fixture
def empty_roots(tmp_path: Path) -> list[str]:
    for name in ("sys", "dev"):
        (tmp_path / name).mkdir()
    return ["--sysfs-root", str(tmp_path / "sys"), "--devfs-root", str(tmp_path / "dev")]


class TestCommand:
    def test_declared_types_need_no_hardware(self, empty_roots: list[str]) -> None:
        """--types declared: gpu's i915 and xe, with a header saying where they came from."""
        result = invoke("--enable", "gpu", "--types", "declared", *empty_roots)
        assert result.exit_code == 0, result.output
        documents = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert documents == [device_class(GPU, "i915"), device_class(GPU, "xe")]
        assert "#   gpu.intel.com: declared i915, xe\n" in result.stdout

    def test_scanned_types_are_this_nodes(self, tmp_path: Path) -> None:
        """--types scanned: only what one scan finds (an xe card: the xe class)."""
        write_gpu_tree(tmp_path, FakeGpuTree(cards=[FakeGpu(driver="xe")]))
        roots = ["--sysfs-root", str(tmp_path / "sys"), "--devfs-root", str(tmp_path / "dev")]
        result = invoke("--enable", "gpu", "--types", "scanned", "--json", *roots)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [device_class(GPU, "xe")]

    def test_both_is_the_default(self, tmp_path: Path) -> None:
        """Declared and scanned together: a card on another driver gets its class too."""
        write_gpu_tree(tmp_path, FakeGpuTree(cards=[FakeGpu(driver="i915-ng")]))
        roots = ["--sysfs-root", str(tmp_path / "sys"), "--devfs-root", str(tmp_path / "dev")]
        result = invoke("--enable", "gpu", "--json", *roots)
        assert result.exit_code == 0, result.output
        resources = [obj["spec"]["extendedResourceName"] for obj in json.loads(result.stdout)]
        assert resources == ["gpu.intel.com/i915", "gpu.intel.com/i915-ng", "gpu.intel.com/xe"]

    def test_undeclared_types_without_hardware(self, empty_roots: list[str]) -> None:
        """fpga names its types after the hardware: no class here, said on stderr, exit 1."""
        result = invoke("--enable", "fpga,gpu", "--types", "declared", *empty_roots)
        assert result.exit_code == 1
        assert "plugin 'fpga' (fpga.intel.com): no DeviceClass: declares no device types" in (
            result.stderr
        )
        assert "i915.gpu.intel.com" in result.stdout

    def test_dra_selects_plugins(self, empty_roots: list[str]) -> None:
        """--dra gpu among several enabled plugins: gpu's classes only."""
        result = invoke("--enable", "gpu,npu", "--dra", "gpu", "--types", "declared", *empty_roots)
        assert result.exit_code == 0, result.output
        assert "npu.intel.com" not in result.stdout

    def test_dra_plugin_not_enabled(self, empty_roots: list[str]) -> None:
        """--dra naming a plugin that is not enabled: one line, exit 2."""
        result = invoke("--enable", "gpu", "--dra", "npu", *empty_roots)
        assert result.exit_code == 2
        assert "names plugin 'npu', which is not enabled" in result.stderr

    def test_failing_declaration_is_the_plugins_failure(
        self, tmp_path: Path, empty_roots: list[str]
    ) -> None:
        """device_types() raising is logged with the plugin's name; its scan still counts."""
        hooks = tmp_path / "boom.py"
        hooks.write_text(
            "from host import hookimpl\n"
            "from host.deviceplugin import DeviceInfo, DeviceTree\n"
            "class S:\n"
            "    def device_types(self):\n"
            "        raise RuntimeError('no idea')\n"
            "    async def scan(self, notifier):\n"
            "        tree = DeviceTree()\n"
            "        tree.add_device('w', 'w0', DeviceInfo())\n"
            "        notifier.notify(tree)\n"
            "@hookimpl\n"
            "def devplugin_scanners(config):\n"
            "    yield 'boom.example.com', S()\n"
        )
        result = invoke("--plugin-module", str(hooks), "--enable", "boom", "--json", *empty_roots)
        assert result.exit_code == 0, result.output
        assert "plugin 'boom': device_types raised RuntimeError: no idea" in result.stderr
        assert [o["metadata"]["name"] for o in json.loads(result.stdout)] == ["w.boom.example.com"]
