"""The device list a resource sends is byte for byte what protobuf itself encodes."""

from __future__ import annotations

import pytest

from host._api import api_pb2
from host.deviceplugin import UNHEALTHY, DeviceInfo, NUMANode, TopologyInfo
from host.deviceplugin._service import DevicePluginService


def devices(count: int, *, sick: int = -1) -> dict[str, DeviceInfo]:
    out = {}
    for i in range(count):
        topology = TopologyInfo(nodes=(NUMANode(ID=i % 3),)) if i % 2 else None
        state = UNHEALTHY if i == sick else "Healthy"
        out[f"dev-{i}" * (1 + i % 40)] = DeviceInfo(state=state, topology=topology)
    return out


def reference(table: dict[str, DeviceInfo], forced: bool) -> bytes:
    message = api_pb2.ListAndWatchResponse()
    for dev_id, info in table.items():
        health = UNHEALTHY if forced else info.state
        if info.topology_message is None:
            message.devices.add(ID=dev_id, health=health)
        else:
            message.devices.add(ID=dev_id, health=health, topology=info.topology_message)
    return message.SerializeToString()


class TestEncoding:
    @pytest.mark.parametrize("forced", [False, True])
    def test_same_bytes_as_protobuf(self, forced: bool) -> None:
        """IDs long and short (multi-byte lengths), topology or none, forced Unhealthy."""
        service = DevicePluginService("ex.com/a", object())
        table = devices(500)
        assert service._encode(table, forced) == reference(table, forced)

    def test_long_and_non_ascii_ids(self) -> None:
        """IDs whose entry needs a varint of three bytes, and IDs beyond ASCII."""
        service = DevicePluginService("ex.com/a", object())
        topology = TopologyInfo(nodes=(NUMANode(ID=1),))
        table = {
            "x" * 20_000: DeviceInfo(),
            "y" * 16_370: DeviceInfo(topology=topology),
            "gpu-\u00fc-\u4e00": DeviceInfo(state=UNHEALTHY),
        }
        assert service._encode(table, False) == reference(table, False)

    def test_reencoding_follows_changes(self) -> None:
        """Re-encoding after one device changes (same objects for the rest) stays exact."""
        service = DevicePluginService("ex.com/a", object())
        table = devices(300)
        service._encode(table, False)
        changed = dict(table)
        first = next(iter(changed))
        changed[first] = DeviceInfo(state=UNHEALTHY)
        del changed[list(changed)[-1]]
        assert service._encode(changed, False) == reference(changed, False)
        assert service._encode(changed, True) == reference(changed, True)
        assert service._encode(table, False) == reference(table, False)

    def test_snapshot_decodes_what_is_sent(self) -> None:
        """The snapshot property is the message the streams' bytes decode to."""
        service = DevicePluginService("ex.com/a", object())
        table = devices(20, sick=3)
        service.update(table)
        assert service.snapshot.SerializeToString() == reference(table, False)
        service.update(all_unhealthy=True)
        assert {d.health for d in service.snapshot.devices} == {UNHEALTHY}
