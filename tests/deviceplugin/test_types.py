"""DeviceInfo and DeviceTree: immutable values, clear errors, mapping access."""

from __future__ import annotations

import pytest

from host.deviceplugin import (
    HEALTHY,
    UNHEALTHY,
    DeviceInfo,
    DeviceSpec,
    DeviceTree,
    Mount,
    NUMANode,
    TopologyInfo,
    pluginapi,
)


class TestDeviceInfo:
    def test_defaults_and_equality(self) -> None:
        """Defaults are Healthy with nothing attached; equal content means equal values."""
        a = DeviceInfo(nodes=[DeviceSpec(host_path="/dev/a")])
        b = DeviceInfo(nodes=[DeviceSpec(host_path="/dev/a")])
        assert a.state == HEALTHY
        assert a == b
        assert a != DeviceInfo(nodes=[DeviceSpec(host_path="/dev/b")])

    def test_is_immutable_and_detached_from_inputs(self) -> None:
        """Changing the messages or dicts given to it later does not change the DeviceInfo."""
        node = pluginapi.DeviceSpec(host_path="/dev/a")
        envs = {"A": "1"}
        info = DeviceInfo(nodes=[node], envs=envs)  # type: ignore[list-item]
        node.host_path = "/dev/changed"
        envs["A"] = "2"
        assert info.nodes[0] == DeviceSpec(host_path="/dev/a")
        assert info.envs == {"A": "1"}
        with pytest.raises(AttributeError):
            info.state = UNHEALTHY  # type: ignore[misc]
        with pytest.raises(TypeError):
            info.envs["B"] = "x"  # type: ignore[index]

    def test_nothing_inside_can_be_changed(self) -> None:
        """Nodes, mounts, topology and the CDI spec refuse changes after notify."""
        info = DeviceInfo(
            nodes=[DeviceSpec(host_path="/dev/a", container_path="/dev/a")],
            mounts=[Mount(host_path="/a", container_path="/a")],
            topology=TopologyInfo(nodes=[NUMANode(ID=0)]),
            cdi_spec={
                "cdiVersion": "0.5.0",
                "kind": "ex.com/a",
                "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}}],
            },
        )
        with pytest.raises(AttributeError):
            info.nodes[0].host_path = "/dev/b"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            info.mounts[0].read_only = True  # type: ignore[misc]
        with pytest.raises(AttributeError):
            info.topology.nodes[0].ID = 3  # type: ignore[misc, union-attr]
        assert info.cdi_spec is not None
        with pytest.raises(TypeError, match="read-only"):
            info.cdi_spec["devices"][0]["name"] = "b"
        with pytest.raises(TypeError, match="read-only"):
            info.cdi_spec["devices"].append({})
        assert info.cdi_spec["devices"][0]["name"] == "a"
        assert info.topology_message is not None
        assert list(info.topology_message.nodes) == [pluginapi.NUMANode(ID=0)]

    def test_hash_follows_equality(self) -> None:
        """Equal DeviceInfos hash alike (trees compare devices by hash first)."""
        a = DeviceInfo(nodes=[DeviceSpec(host_path="/dev/a")], envs={"A": "1"})
        b = DeviceInfo(nodes=[pluginapi.DeviceSpec(host_path="/dev/a")], envs={"A": "1"})  # type: ignore[list-item]
        assert a == b
        assert hash(a) == hash(b)
        assert {a: 1}[b] == 1
        assert hash(DeviceInfo(state=UNHEALTHY)) != hash(DeviceInfo())

    @pytest.mark.parametrize(
        ("kwargs", "error", "needle"),
        [
            ({"state": "healthy"}, ValueError, "'healthy'"),
            ({"nodes": ["/dev/a"]}, TypeError, "DeviceSpec"),
            ({"envs": {"A": 1}}, TypeError, "envs"),
            ({"topology": [0]}, TypeError, "TopologyInfo"),
        ],
    )
    def test_bad_values_are_clear_errors(
        self, kwargs: dict[str, object], error: type[Exception], needle: str
    ) -> None:
        """A wrong state, node or mapping fails at construction, naming the culprit."""
        with pytest.raises(error, match=needle):
            DeviceInfo(**kwargs)  # type: ignore[arg-type]

    def test_numa_nodes(self) -> None:
        """numa_nodes reads the topology's node IDs."""
        info = DeviceInfo(topology=TopologyInfo(nodes=[NUMANode(ID=0), NUMANode(ID=1)]))
        assert info.numa_nodes == (0, 1)
        assert DeviceInfo().numa_nodes == ()


class TestHealthMessage:
    def test_part_of_the_value_and_its_fingerprint(self) -> None:
        """The message counts in equality, hash and the tree's per-type fingerprint."""
        quiet = DeviceInfo(state=UNHEALTHY)
        loud = DeviceInfo(state=UNHEALTHY, health_message="ECC: 3 uncorrectable")
        assert quiet != loud
        assert loud == DeviceInfo(state=UNHEALTHY, health_message="ECC: 3 uncorrectable")
        assert hash(loud) == hash(
            DeviceInfo(state=UNHEALTHY, health_message="ECC: 3 uncorrectable")
        )
        first, second = DeviceTree(), DeviceTree()
        first.add_device("gpu", "card0", quiet)
        second.add_device("gpu", "card0", loud)
        assert first._fingerprint("gpu") != second._fingerprint("gpu")
        with pytest.raises(AttributeError):
            loud.health_message = ""  # type: ignore[misc]

    def test_cut_as_kubelet_cuts_it_and_typed(self) -> None:
        """Over 1,024 characters: 1,021 kept and "..."; anything but a str is a TypeError."""
        info = DeviceInfo(health_message="x" * 5000)
        assert info.health_message == "x" * 1021 + "..."
        assert DeviceInfo(health_message="y" * 1024).health_message == "y" * 1024
        with pytest.raises(TypeError, match="health_message must be a str, got int: 3"):
            DeviceInfo(health_message=3)  # type: ignore[arg-type]

    def test_with_topology_carries_it(self) -> None:
        """with_topology takes the message as the constructor does."""
        assert DeviceInfo.with_topology(health_message="hot").health_message == "hot"


class TestDeviceTree:
    def test_add_and_read(self) -> None:
        """add_device groups by type; tree[type][id] and device_type_count read it back."""
        tree = DeviceTree()
        info = DeviceInfo()
        tree.add_device("gpu", "card0", info)
        tree.add_device("gpu", "card1", info)
        tree.add_device("fpga", "f0", info)
        assert tree["gpu"]["card1"] is info
        assert tree.device_type_count("gpu") == 2
        assert tree.device_type_count("none") == 0
        assert sorted(tree) == ["fpga", "gpu"]
        with pytest.raises(TypeError):
            tree["gpu"]["x"] = info  # type: ignore[index]

    @pytest.mark.parametrize(
        ("dev_type", "dev_id", "info"),
        [("", "a", DeviceInfo()), ("t", "", DeviceInfo()), ("t", "a", object())],
    )
    def test_add_rejects_bad_input(self, dev_type: str, dev_id: str, info: object) -> None:
        """Empty type or ID, or a non-DeviceInfo, fails at add_device."""
        with pytest.raises((ValueError, TypeError)):
            DeviceTree().add_device(dev_type, dev_id, info)  # type: ignore[arg-type]

    def test_tracks_the_devices_carrying_a_cdi_spec(self) -> None:
        """The tree knows which devices of a type carry a CDI spec, replacements included."""
        spec = {
            "cdiVersion": "0.5.0",
            "kind": "ex.com/dev",
            "devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}}],
        }
        tree = DeviceTree()
        tree.add_device("t", "a", DeviceInfo(cdi_spec=spec))
        tree.add_device("t", "b", DeviceInfo())
        tree.add_device("u", "c", DeviceInfo())
        assert tree._cdi_ids("t") == {"a"}
        assert tree._cdi_ids("u") == frozenset()
        tree.add_device("t", "b", DeviceInfo(cdi_spec=spec))
        tree.add_device("t", "a", DeviceInfo())
        assert tree._cdi_ids("t") == {"b"}
