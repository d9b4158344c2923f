"""ResourceSlice building: names, devices, taints, splitting, limits, official schemas."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from host.deviceplugin import HEALTHY, UNHEALTHY, DeviceInfo, NUMANode, SemVer, TopologyInfo
from host.dra import build_slices, device_name, device_names, slice_name, unhealthy_taint_key
from tests.dra.schema import assert_schema_valid

DRIVER = "gpu.intel.com"
NODE = "node-1"
UID = "6a3c5a8e-0000-4000-8000-000000000001"
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def build(snapshot: Any, **kwargs: Any) -> Any:
    return build_slices(driver=DRIVER, node_name=NODE, node_uid=UID, snapshot=snapshot, **kwargs)


def devices_of(result: Any) -> list[dict[str, Any]]:
    return [d for s in result.slices for d in s["spec"].get("devices", ())]


def numa(*ids: int) -> TopologyInfo:
    return TopologyInfo(nodes=[NUMANode(ID=i) for i in ids])


def many(count: int, state: str = HEALTHY) -> dict[str, dict[str, DeviceInfo]]:
    return {"i915": {f"card{i}-0": DeviceInfo(state=state) for i in range(count)}}


class TestDeviceName:
    def test_plain_pair_stays_readable(self) -> None:
        """A type without '-' and an ID that already fits give '<type>-<id>'."""
        assert device_name("i915", "card0-0") == "i915-card0-0"

    def test_sanitized_pair_gets_a_hash(self) -> None:
        """Uppercase, ':' or '/' are replaced and a hash of the exact pair appended."""
        name = device_name("qat", "0000:3b:00.1")
        assert re.fullmatch(r"qat-0000-3b-00-1-[0-9a-f]{8}", name)
        assert device_name("dlb", "/dev/dlb0").startswith("dlb-dev-dlb0-")

    def test_ambiguous_split_gets_a_hash(self) -> None:
        """('a-b', 'c') and ('a', 'b-c') share '<type>-<id>': the dashed type is hashed."""
        assert device_name("a", "b-c") == "a-b-c"
        assert device_name("a-b", "c") != "a-b-c"

    def test_long_names_are_cut_to_63(self) -> None:
        """A long ID keeps a readable prefix and the hash, within 63 characters."""
        name = device_name("wq-user-shared", "x" * 200)
        assert len(name) <= 63
        assert DNS_LABEL.fullmatch(name)

    def test_nothing_printable_still_names(self) -> None:
        """A pair with no usable character still gets a valid name."""
        assert DNS_LABEL.fullmatch(device_name("_", "/"))

    @given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80))
    def test_always_a_dns_label_and_stable(self, dev_type: str, dev_id: str) -> None:
        """Any pair gives a DNS label, the same one every time."""
        name = device_name(dev_type, dev_id)
        assert DNS_LABEL.fullmatch(name), name
        assert device_name(dev_type, dev_id) == name

    @given(st.sets(st.tuples(st.sampled_from(["a", "a-b", "A", "x_y"]), st.text(max_size=6))))
    def test_names_are_collision_free(self, keys: set[tuple[str, str]]) -> None:
        """Distinct pairs always get distinct names."""
        keys = {k for k in keys if k[1]}
        names = device_names(keys)
        assert len(set(names.values())) == len(keys)

    def test_crafted_collision_uses_a_longer_hash(self) -> None:
        """An ID crafted to equal another device's hashed name pushes both to 16 hex digits."""
        hashed = device_name("qat", "0000:3b:00.1")
        crafted = ("qat", hashed.removeprefix("qat-"))
        assert device_name(*crafted) == hashed
        names = device_names([("qat", "0000:3b:00.1"), crafted])
        assert len(set(names.values())) == 2
        assert all(re.search(r"-[0-9a-f]{16}$", n) for n in names.values())


class TestSliceName:
    def test_node_driver_index(self) -> None:
        """'<node>-<driver>-<5 hex digits>', sorting in slice order."""
        assert slice_name(DRIVER, NODE, 10) == "node-1-gpu.intel.com-0000a"

    def test_long_node_names_fit_253(self) -> None:
        """A 253-character node name still gives distinct names of at most 253."""
        node = ".".join(["a" * 63] * 4)[:253]
        names = {slice_name(DRIVER, node, i) for i in range(3)}
        assert len(names) == 3
        assert all(len(n) <= 253 for n in names)
        assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n) for n in names)


class TestBuildSlices:
    def test_one_pool_per_node_owned_by_the_node(self) -> None:
        """Pool = node, nodeName set, controller owner reference to the Node."""
        (only,) = build(many(2)).slices
        assert only["apiVersion"] == "resource.k8s.io/v1"
        assert only["kind"] == "ResourceSlice"
        assert only["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": UID, "controller": True}
        ]
        spec = only["spec"]
        assert spec["driver"] == DRIVER
        assert spec["nodeName"] == NODE
        assert spec["pool"] == {"name": NODE, "generation": 0, "resourceSliceCount": 1}
        assert_schema_valid(only)

    def test_every_device_of_every_type(self) -> None:
        """Each (type, id) is one device carrying its type and id attributes."""
        snapshot = {"i915": {"card0-0": DeviceInfo()}, "xe": {"card1-0": DeviceInfo()}}
        devices = {d["name"]: d["attributes"] for d in devices_of(build(snapshot))}
        assert devices["i915-card0-0"]["type"] == {"string": "i915"}
        assert devices["xe-card1-0"]["id"] == {"string": "card1-0"}
        assert devices["xe-card1-0"]["healthy"] == {"bool": True}

    def test_numa_only_for_a_single_node(self) -> None:
        """One NUMA node is an int attribute; none or several publish no 'numa'."""
        snapshot = {
            "t": {
                "one": DeviceInfo(topology=numa(1)),
                "two": DeviceInfo(topology=numa(0, 1)),
                "none": DeviceInfo(),
            }
        }
        attrs = {
            d["attributes"]["id"]["string"]: d["attributes"] for d in devices_of(build(snapshot))
        }
        assert attrs["one"]["numa"] == {"int": 1}
        assert "numa" not in attrs["two"]
        assert "numa" not in attrs["none"]

    def test_scanner_attributes_and_capacity(self) -> None:
        """DeviceInfo.attributes map to typed attributes; capacity to quantities."""
        info = DeviceInfo(
            attributes={
                "model": "Arc A770",
                "memGB": 16,
                "sriov": False,
                "driverVersion": SemVer("1.2.3"),
                "resource.kubernetes.io/pciBusID": "0000:03:00.0",
            },
            capacity={"memory": "16Gi"},
        )
        (device,) = devices_of(build({"i915": {"card0-0": info}}))
        attrs = device["attributes"]
        assert attrs["model"] == {"string": "Arc A770"}
        assert attrs["memGB"] == {"int": 16}
        assert attrs["sriov"] == {"bool": False}
        assert attrs["driverVersion"] == {"version": "1.2.3"}
        assert attrs["resource.kubernetes.io/pciBusID"] == {"string": "0000:03:00.0"}
        assert device["capacity"] == {"memory": {"value": "16Gi"}}
        assert_schema_valid(build({"i915": {"card0-0": info}}).slices[0])

    def test_reserved_attributes_stay_the_hosts(self) -> None:
        """A scanner's 'type' (bare or in the driver's domain) cannot override the host's."""
        info = DeviceInfo(attributes={"type": "fake", f"{DRIVER}/id": "fake", "other.io/type": "x"})
        (device,) = devices_of(build({"i915": {"card0-0": info}}))
        assert device["attributes"]["type"] == {"string": "i915"}
        assert device["attributes"]["id"] == {"string": "card0-0"}
        assert f"{DRIVER}/id" not in device["attributes"]
        assert device["attributes"]["other.io/type"] == {"string": "x"}

    def test_unhealthy_device_is_tainted_not_dropped(self) -> None:
        """An Unhealthy device stays, with a NoSchedule taint and healthy=false."""
        snapshot = {"i915": {"card0-0": DeviceInfo(state=UNHEALTHY), "card1-0": DeviceInfo()}}
        devices = {d["name"]: d for d in devices_of(build(snapshot))}
        assert devices["i915-card0-0"]["taints"] == [
            {"key": unhealthy_taint_key(DRIVER), "effect": "NoSchedule"}
        ]
        assert devices["i915-card0-0"]["attributes"]["healthy"] == {"bool": False}
        assert "taints" not in devices["i915-card1-0"]
        assert unhealthy_taint_key(DRIVER) == "gpu.intel.com/unhealthy"

    def test_scan_failed_taints_everything(self) -> None:
        """A failed scan taints every device it last reported."""
        devices = devices_of(build(many(3), scan_failed=True))
        assert len(devices) == 3
        assert all("taints" in d for d in devices)

    def test_split_at_64_by_default(self) -> None:
        """300 devices: 64 a slice (a taint never re-splits the pool), each knowing the count."""
        result = build(many(300))
        assert [len(s["spec"]["devices"]) for s in result.slices] == [64, 64, 64, 64, 44]
        assert {s["spec"]["pool"]["resourceSliceCount"] for s in result.slices} == {5}
        tainted = build(many(300, UNHEALTHY))
        assert [len(s["spec"]["devices"]) for s in tainted.slices] == [64, 64, 64, 64, 44]

    def test_split_at_128_devices(self) -> None:
        """max_devices=128, 300 healthy devices: 128 + 128 + 44, each slice knowing the count."""
        result = build(many(300), max_devices=128)
        assert [len(s["spec"]["devices"]) for s in result.slices] == [128, 128, 44]
        assert {s["spec"]["pool"]["resourceSliceCount"] for s in result.slices} == {3}
        assert [s["metadata"]["name"] for s in result.slices] == [
            slice_name(DRIVER, NODE, i) for i in range(3)
        ]
        for one in result.slices:
            assert_schema_valid(one)

    def test_split_at_64_where_taints_are(self) -> None:
        """A slice holding a tainted device holds at most 64 devices."""
        result = build(many(200, UNHEALTHY), max_devices=128)
        assert [len(s["spec"]["devices"]) for s in result.slices] == [64, 64, 64, 8]

    def test_one_tainted_device_limits_only_its_slice(self) -> None:
        """A tainted device joining a slice of over 64 healthy ones starts a new slice."""
        snapshot = many(200)
        devices = dict(snapshot["i915"])
        last = sorted(devices, key=lambda i: device_name("i915", i))[-1]
        devices[last] = DeviceInfo(state=UNHEALTHY)
        sizes = [
            len(s["spec"]["devices"]) for s in build({"i915": devices}, max_devices=128).slices
        ]
        assert sizes == [128, 71, 1]

    def test_device_names_unique_across_slices(self) -> None:
        """No device name appears twice in the pool."""
        names = [d["name"] for d in devices_of(build(many(500)))]
        assert len(names) == len(set(names)) == 500

    @pytest.mark.parametrize("size", [0, 129])
    def test_slice_size_is_checked(self, size: int) -> None:
        """max_devices outside 1..128 is refused."""
        with pytest.raises(ValueError, match="max_devices"):
            build(many(1), max_devices=size)

    def test_no_devices_is_one_empty_slice(self) -> None:
        """An empty snapshot publishes one slice without devices: the pool is empty."""
        (only,) = build({}).slices
        assert "devices" not in only["spec"]
        assert only["spec"]["pool"]["resourceSliceCount"] == 1
        assert_schema_valid(only)

    def test_generation_is_stamped(self) -> None:
        """The given generation goes into every slice's pool."""
        assert {s["spec"]["pool"]["generation"] for s in build(many(200), generation=7).slices} == {
            7
        }

    def test_too_many_attributes_leaves_the_device_out(self) -> None:
        """Over 32 attributes+capacities: that device is reported by ID; the others publish."""
        crowded = DeviceInfo(attributes={f"a{i}": i for i in range(30)})
        result = build({"i915": {"card0-0": crowded, "card1-0": DeviceInfo()}})
        assert [d["name"] for d in devices_of(result)] == ["i915-card1-0"]
        (problem,) = result.problems
        assert "'card0-0'" in problem
        assert "32" in problem

    def test_overlong_type_leaves_the_device_out(self) -> None:
        """A type over 64 characters cannot be the 'type' attribute: reported, left out."""
        result = build({"t" * 65: {"x": DeviceInfo()}, "i915": {"card0-0": DeviceInfo()}})
        assert len(devices_of(result)) == 1
        assert "'x'" in result.problems[0]

    def test_overlong_id_is_published_without_id_attribute(self) -> None:
        """An ID over 64 characters still publishes; only the 'id' attribute is left off."""
        (device,) = devices_of(build({"i915": {"x" * 70: DeviceInfo()}}))
        assert "id" not in device["attributes"]

    def test_driver_that_cannot_form_a_taint_key_is_refused(self) -> None:
        """A driver name that is no DNS subdomain is a clear error."""
        with pytest.raises(ValueError, match="driver name"):
            build_slices(driver="Bad_Driver", node_name=NODE, node_uid=UID, snapshot={})

    def test_pure_and_deterministic(self) -> None:
        """Equal snapshots give equal slices, whatever the insertion order."""
        forward = {"a": {"1": DeviceInfo(), "2": DeviceInfo()}, "b": {"3": DeviceInfo()}}
        backward = {"b": {"3": DeviceInfo()}, "a": {"2": DeviceInfo(), "1": DeviceInfo()}}
        assert build(forward).slices == build(backward).slices


class TestAgainstServerRules:
    @given(
        st.dictionaries(
            st.text(min_size=1, max_size=70),
            st.dictionaries(
                st.text(min_size=1, max_size=90),
                st.tuples(st.booleans(), st.lists(st.integers(0, 7), max_size=2)),
                max_size=20,
            ),
            max_size=4,
        ),
        st.booleans(),
    )
    def test_any_snapshot_builds_slices_the_server_accepts(
        self, shape: dict[str, dict[str, tuple[bool, list[int]]]], scan_failed: bool
    ) -> None:
        """Whatever the types and IDs, every built slice passes the API server's v1 rules."""
        from host.testing._apiserver_validation import validate_resource_slice

        snapshot = {
            dev_type: {
                dev_id: DeviceInfo(state=HEALTHY if ok else UNHEALTHY, topology=numa(*nodes))
                for dev_id, (ok, nodes) in ids.items()
            }
            for dev_type, ids in shape.items()
        }
        result = build(snapshot, scan_failed=scan_failed)
        for one in result.slices:
            assert validate_resource_slice(one) == []
        published = sum(len(s["spec"].get("devices", ())) for s in result.slices)
        total = sum(len(ids) for ids in snapshot.values())
        assert published + len(result.problems) == total
