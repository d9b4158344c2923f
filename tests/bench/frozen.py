"""Frozen device state at 100,000 devices: immutable values against a deep copy per notify.

The host must publish device state nobody can change behind its back. Two ways: make
every value immutable (what ``DeviceInfo`` does: frozen dataclasses, read-only maps,
a read-only CDI spec; the cost is paid once, when the scanner builds a device), or keep
mutable wire messages and deep-copy the whole tree at every notify (paid on every
notify, for every device, changed or not). This measures both, in-process.
"""

from __future__ import annotations

import time

from report import Row, ms

from host._api import api_pb2
from host.deviceplugin import DeviceInfo, DeviceSpec, DeviceTree

COUNT = 100_000


def _build_frozen() -> DeviceTree:
    tree = DeviceTree()
    for i in range(COUNT):
        path = f"/dev/bench/d{i}"
        node = DeviceSpec(host_path=path, container_path=path, permissions="rw")
        tree.add_device(f"t{i % 100}", f"d{i}", DeviceInfo(nodes=[node], envs={"I": str(i)}))
    return tree


def _build_messages() -> dict[str, tuple[list[api_pb2.DeviceSpec], dict[str, str]]]:
    devices = {}
    for i in range(COUNT):
        path = f"/dev/bench/d{i}"
        node = api_pb2.DeviceSpec(host_path=path, container_path=path, permissions="rw")
        devices[f"d{i}"] = ([node], {"I": str(i)})
    return devices


def _deep_copy(
    devices: dict[str, tuple[list[api_pb2.DeviceSpec], dict[str, str]]],
) -> dict[str, tuple[list[api_pb2.DeviceSpec], dict[str, str]]]:
    out = {}
    for dev_id, (nodes, envs) in devices.items():
        copies = []
        for node in nodes:
            copy = api_pb2.DeviceSpec()
            copy.CopyFrom(node)
            copies.append(copy)
        out[dev_id] = (copies, dict(envs))
    return out


def frozen_rows() -> list[Row]:
    """Rows of figure 3: building 100,000 frozen devices, against deep copies per notify."""
    start = time.perf_counter_ns()
    _build_frozen()
    build_frozen = time.perf_counter_ns() - start
    start = time.perf_counter_ns()
    messages = _build_messages()
    build_messages = time.perf_counter_ns() - start
    copies = []
    for _ in range(5):
        start = time.perf_counter_ns()
        _deep_copy(messages)
        copies.append(time.perf_counter_ns() - start)
    copy = sorted(copies)[len(copies) // 2]
    return [
        Row(
            "3",
            f"frozen state, {COUNT:,} devices: extra cost per notify, immutable values / "
            "deep copy of wire messages (median of 5)",
            f"0 / {ms(copy)}",
            "the cheaper",
            True,
        ),
        Row(
            "3",
            "  building them (once, in the scanner): immutable DeviceInfos / wire messages",
            f"{ms(build_frozen)} / {ms(build_messages)}",
            "-",
            None,
        ),
    ]
